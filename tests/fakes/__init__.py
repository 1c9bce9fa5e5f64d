"""In-process stand-ins for the engine's ports, for fast protocol tests.

Each fake passes the same contract suite (tests/contract/) as the real
backend it replaces, so it cannot drift from it."""
