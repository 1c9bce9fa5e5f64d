"""Fixtures shared by the whole suite live in tests/harness/: a real OpenBao
dev server and the ZITADEL emulator, each started as a real process."""

pytest_plugins = ["tests.harness.openbao", "tests.harness.emulator"]
