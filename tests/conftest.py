"""Fixtures shared by the whole suite live in tests/harness/: a real OpenBao
dev server and the ZITADEL emulator, each started as a real process.

Every audit event any test emits in this process is also validated against
the published schema (config/audit.schema.json); the session fails at the end
if one did not validate (see :mod:`tests.harness.audit_schema`)."""

pytest_plugins = [
    "tests.harness.openbao",
    "tests.harness.emulator",
    "tests.harness.audit_schema",
]
