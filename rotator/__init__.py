"""zitadel-rotator: credential lifecycle daemon for ZITADEL service users."""

from typing import Any

__all__ = ["__version__"]


def __getattr__(name: str) -> Any:
    # Looked up on first use (the daemon's metrics): importlib.metadata costs
    # every command ~50 ms of start-up, and only `run` reports the version.
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        found = version("zitadel-rotator")
    except PackageNotFoundError:  # running from a source tree without install
        found = "0.0.0"
    globals()["__version__"] = found
    return found
