"""zitadel-rotator: credential lifecycle daemon for ZITADEL service users."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("zitadel-rotator")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["__version__"]
