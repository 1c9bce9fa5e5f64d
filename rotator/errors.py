"""The exceptions zitadel-rotator raises.

Every error the engine sees is one of these; backends translate their
library's exceptions (hvac, grpc, httpx, zitadel-client) at the edge, so the
rotation protocol never depends on a transport.

    RotatorError
    ├── ConfigError                 malformed or inconsistent configuration (names file and field)
    ├── InvalidKeyFile              a ZITADEL key file lacks a field or holds no usable RSA key
                                    (also a ValueError)
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
    ├── ClaimLapsed                 a request not sent: the rotation's claim had lapsed
    ├── VerificationError           the new credential did not work at ZITADEL
    │                               (carries credential_id and a short reason code)
    └── LeaseError                  the Kubernetes API refused or failed a Lease call (retryable)

A target that failed ``max_attempts`` times is reported as ``stuck`` in its
state and result, not raised: there is no exception for it.

``retryable`` says whether the same call may succeed later; the engine and the
daemon decide from it (and from the class) whether to back off or give up.

Messages never contain secret material: no private key, PAT, token or
Vault token.  Backends must build messages from ids, paths and status codes
only.
"""

from __future__ import annotations

from enum import StrEnum


class RotatorError(Exception):
    """Base class of every error raised by zitadel-rotator."""

    #: Whether the operation may succeed if tried again later.
    retryable: bool = False


class InvalidKeyFile(RotatorError, ValueError):
    """A key file lacks a field or holds an unusable key.  Never quotes the key."""


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


class ClaimLapsed(RotatorError):
    """A request was not sent: the rotation's claim on the target lapsed
    before it could go out (see :mod:`rotator.fence`).  A failure like any
    other (it backs off and alerts when it persists), not a lost race."""

    retryable = True


class GraceNotOver(RotatorError):
    """A rotation would remove a previous credential still in its grace
    period (consumers may still use it); ``rotate --force`` does it anyway."""


class VerificationReason(StrEnum):
    """Why a new credential did not verify (``VerificationError.reason``)."""

    #: ZITADEL's token endpoint refused the key's jwt-bearer assertion
    #: (also what a key not yet propagated looks like: retry).
    TOKEN_REFUSED = "token_refused"  # noqa: S105 - a reason code, not a token
    #: userinfo refused the PAT, or the access token obtained with the key.
    USERINFO_REFUSED = "userinfo_refused"
    #: userinfo answered for another user than the credential's owner.
    SUBJECT_MISMATCH = "subject_mismatch"
    #: the stored secret lacks a field verification needs (e.g. a PAT without ``token``).
    MALFORMED = "malformed"
    #: verification kept failing until the policy's ``verify_timeout``.
    TIMEOUT = "timeout"


class VerificationError(RotatorError):
    """The freshly created credential could not be used at ZITADEL.

    ``credential_id`` names the credential (key id or PAT id) when known;
    ``reason`` is a short code, one of :class:`VerificationReason`, for
    audit events, metrics labels and tests (the message is for people).
    """

    retryable = True

    def __init__(self, message: str, *, credential_id: str | None = None, reason: str) -> None:
        self.credential_id = credential_id
        self.reason = reason
        super().__init__(message)


class SecretNotVerified(RotatorError):
    """A regenerated client secret did not verify within ``verify_timeout``.

    Not a VerificationError: a secret is replaced in place, so there is nothing
    to roll back to and the target must never be given up as stuck.  It stays
    pending and is verified again at every retry (transient: backoff, alerts).
    """

    retryable = True


class LeaseError(RotatorError):
    """The Kubernetes API refused or failed a Lease call (status code, never a body)."""

    retryable = True
