"""A ZITADEL v4 emulator: OIDC/OAuth, v2 UserService (Connect JSON), v1
ManagementService (gRPC).  Run it with ``python -m tests.emulator``."""
