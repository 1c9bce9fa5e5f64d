"""From a gRPC/Connect status name to the project's own exception type.

Both transports (v1 gRPC, v2 Connect JSON) meet ZITADEL's errors as a status
*name*; this module is the single place that decides what each one means to
the engine, so retry behaviour cannot drift between the two.
"""

from __future__ import annotations

from rotator.errors import (
    ZitadelError,
    ZitadelNotFound,
    ZitadelPermissionDenied,
    ZitadelRejected,
    ZitadelUnauthenticated,
    ZitadelUnavailable,
)

#: Every gRPC status, by its canonical number, as the snake-case name
#: Connect uses on the wire (``code`` in a Connect error body).
GRPC_CODE_NAMES: dict[int, str] = {
    0: "ok",
    1: "canceled",
    2: "unknown",
    3: "invalid_argument",
    4: "deadline_exceeded",
    5: "not_found",
    6: "already_exists",
    7: "permission_denied",
    8: "resource_exhausted",
    9: "failed_precondition",
    10: "aborted",
    11: "out_of_range",
    12: "unimplemented",
    13: "internal",
    14: "unavailable",
    15: "data_loss",
    16: "unauthenticated",
}

#: An HTTP status *without* a Connect error body (an edge proxy, an OAuth/OIDC
#: endpoint, grpc-gateway) as a status name.  Where Connect maps several codes
#: to one status, the entry is the one that status means on its own:
#: 409 -> ``aborted`` (a conflict with a concurrent change: worth retrying,
#: unlike ``already_exists``); 500 -> ``internal`` (Connect's ``internal``,
#: ``unknown`` and ``data_loss`` share it; all three are retryable here);
#: 501 -> ``unimplemented`` (the method or endpoint does not exist: retrying
#: cannot help).  See :func:`http_status_code_name` for unlisted statuses.
HTTP_STATUS_CODES: dict[int, str] = {
    400: "invalid_argument",
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    408: "deadline_exceeded",
    409: "aborted",
    429: "resource_exhausted",
    499: "canceled",
    500: "internal",
    501: "unimplemented",
    502: "unavailable",
    503: "unavailable",
    504: "deadline_exceeded",
}

#: Status names worth retrying: the server or the path to it failed, not the request.
RETRYABLE_CODES: frozenset[str] = frozenset(
    {"unavailable", "resource_exhausted", "deadline_exceeded", "internal", "unknown", "aborted"}
)

_CLASS_BY_CODE: dict[str, type[ZitadelError]] = {
    "not_found": ZitadelNotFound,
    "permission_denied": ZitadelPermissionDenied,
    "unauthenticated": ZitadelUnauthenticated,
    **{code: ZitadelUnavailable for code in RETRYABLE_CODES},
}


#: Error id of ZITADEL's "membership not found (AUTHZ-cdgFk)".
MEMBERSHIP_NOT_FOUND = "AUTHZ-cdgFk"

#: Error id of ZITADEL's "Errors.User.Machine.Secret.NotExisting (COMMAND-coi82n)":
#: RemoveSecret / RemoveMachineSecret on a user without a secret (§11).
SECRET_NOT_EXISTING = "COMMAND-coi82n"  # noqa: S105 (an error id)

#: grpcio spells one name the British way (``StatusCode.CANCELLED``).
_ALIASES = {"cancelled": "canceled"}


def normalise(code: str) -> str:
    """``"NOT_FOUND"`` (grpc ``StatusCode.name``) or ``"not_found"`` -> ``"not_found"``."""
    name = code.strip().lower()
    return _ALIASES.get(name, name)


def error_class(code: str) -> type[ZitadelError]:
    """The exception class for a snake-case status name; unknown names are rejections."""
    return _CLASS_BY_CODE.get(code, ZitadelRejected)


def error_for(
    code: str,
    message: str,
    *,
    status: int | None = None,
    method: str | None = None,
) -> ZitadelError:
    """Build the exception for a failed call.

    ``message`` must already be free of secrets (server messages are; callers
    must never pass request content).  ``code`` is normalised (:func:`normalise`)
    so grpc's ``StatusCode.name`` and Connect's code name agree.
    """
    normalised = normalise(code)
    if normalised == "not_found" and MEMBERSHIP_NOT_FOUND in message:
        # ZITADEL answers a caller without any membership with NotFound (§6.4).
        # Read as "the key is gone", a removal would look done when nothing
        # was removed: it is a permission problem.
        normalised = "permission_denied"
    return error_class(normalised)(message, code=normalised, status=status, method=method)


def is_secret_not_existing(exc: ZitadelError) -> bool:
    """Whether ``exc`` is ZITADEL saying the user has no client secret to remove.

    Decided by the error id (the message text is translated to the instance's
    language) or, failing that, the untranslated i18n key."""
    text = str(exc)
    return exc.code == "failed_precondition" and (
        SECRET_NOT_EXISTING in text or "Errors.User.Machine.Secret.NotExisting" in text
    )


def code_name(number: int) -> str:
    """The snake-case name of a numeric gRPC status (``unknown`` if out of range)."""
    return GRPC_CODE_NAMES.get(number, "unknown")


def http_status_code_name(status: int) -> str:
    """The status name an HTTP status stands for (:data:`HTTP_STATUS_CODES`);
    any other 5xx is ``unavailable`` (retry), any other status ``failed_precondition``
    (the request cannot succeed as it is)."""
    if status in HTTP_STATUS_CODES:
        return HTTP_STATUS_CODES[status]
    return "unavailable" if status >= 500 else "failed_precondition"
