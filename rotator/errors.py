"""The exceptions zitadel-rotator raises.

Every error the engine sees is one of these; backends translate their
library's exceptions (hvac, grpc, httpx, zitadel-client) at the edge, so the
rotation protocol never depends on a transport.

    RotatorError
    ├── ConfigError                 malformed or inconsistent configuration (names file and field)
    ├── ZitadelError                anything ZITADEL answered or failed to answer
    │   ├── ZitadelUnavailable      timeout, connection refused, 5xx, 429: worth retrying
    │   ├── ZitadelNotFound         the user / key / PAT does not exist
    │   ├── ZitadelPermissionDenied the rotator's identity may not do this
    │   ├── ZitadelUnauthenticated  the rotator's own credential was refused
    │   └── ZitadelRejected         any other 4xx: the request itself is wrong
    ├── VaultError                  anything Vault answered or failed to answer
    │   ├── VaultUnavailable        unreachable, sealed, 5xx, 429: worth retrying
    │   ├── VaultPermissionDenied   the token's policy does not allow this path
    │   └── CasConflict             someone else wrote the secret since we read it
    │       └── RotationInFlight    another rotator owns the target's rotation until its deadline
    ├── VerificationError           the new credential did not work at ZITADEL
    └── RotationStuck               too many failed attempts; a person must look

Messages never contain secret material: no private key, PAT, token or
Vault token.  Backends must build messages from ids, paths and status codes
only.
"""

from __future__ import annotations


class RotatorError(Exception):
    """Base class of every error raised by zitadel-rotator."""

    #: Whether the operation may succeed if tried again later.
    retryable: bool = False


class ConfigError(RotatorError):
    """The configuration is malformed; ``str()`` names the file and the field."""

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None) -> None:
        self.file = file
        self.field = field
        where = ": ".join(part for part in (file, field) if part)
        super().__init__(f"{where}: {message}" if where else message)


class ZitadelError(RotatorError):
    """ZITADEL refused or failed a call.

    ``code`` is the gRPC/Connect status name in snake case (``not_found``,
    ``unavailable``, ...); ``status`` the HTTP status where there was one.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "unknown",
        status: int | None = None,
        method: str | None = None,
    ) -> None:
        self.code = code
        self.status = status
        self.method = method
        prefix = f"ZITADEL {method}: " if method else "ZITADEL: "
        super().__init__(f"{prefix}{message} ({code})")


class ZitadelUnavailable(ZitadelError):
    retryable = True


class ZitadelNotFound(ZitadelError):
    pass


class ZitadelPermissionDenied(ZitadelError):
    pass


class ZitadelUnauthenticated(ZitadelError):
    pass


class ZitadelRejected(ZitadelError):
    pass


class VaultError(RotatorError):
    """Vault refused or failed a call.  ``path`` is the secret path, never its data."""

    def __init__(self, message: str, *, path: str | None = None, status: int | None = None) -> None:
        self.path = path
        self.status = status
        where = f" at {path}" if path else ""
        super().__init__(f"Vault{where}: {message}")


class VaultUnavailable(VaultError):
    retryable = True


class VaultPermissionDenied(VaultError):
    pass


class CasConflict(VaultError):
    """A check-and-set write lost: the secret changed since it was read."""


class RotationInFlight(CasConflict):
    """Another rotator runs this target's rotation and may until its deadline."""


class VerificationError(RotatorError):
    """The freshly created credential could not be used at ZITADEL."""

    retryable = True


class RotationStuck(RotatorError):
    """A target failed too often; it waits for ``rotator rotate --force``."""
