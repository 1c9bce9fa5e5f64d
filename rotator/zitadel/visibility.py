"""Not found, or not visible: what a failed user look-up means.

ZITADEL answers a lookup by what the caller may read: v2 ``ListUsers``
silently leaves out users of orgs where the caller has no ``user.read``
(§4, ``userCheckPermission``), so a user the rotator's identity may not see
reads exactly like one that does not exist; v1 refuses the whole call
(``membership not found (AUTHZ-cdgFk)`` without any role, ``No matching
permissions`` with the wrong one).  Neither names the role or the org.

Both transports turn such an answer into one error that says what to do.
Where the API allows, the permission is probed first: can the identity list
any *other* user in that org?  If it can, the user does not exist there; if
it cannot, the grant is the likely fix; if the probe itself fails, both
possibilities are named.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from rotator.errors import ZitadelError, ZitadelNotFound, ZitadelPermissionDenied

#: The smallest predefined org role that may read and write users' keys and PATs.
ROLE = "ORG_USER_MANAGER"

#: What a probe found: how many users other than the identity itself it can
#: list in the org (``None``: could not tell), or the refusal it got.
Probe = Callable[[], "int | ZitadelPermissionDenied | None"]


def identity_of(token_source: Any) -> str | None:
    """The rotator's own user id, when its token comes from a key file."""
    provider = getattr(token_source, "key_file", None)
    if not callable(provider):
        return None
    try:
        key_file: Mapping[str, Any] = provider()
    except Exception:  # only for wording an error: never mask the real one
        return None
    user_id = key_file.get("userId")
    return str(user_id) if user_id else None


def _who(identity: str | None) -> str:
    return f"the rotator's identity (user {identity})" if identity else "the rotator's identity"


def _org(org_id: str | None) -> str:
    return f"org {org_id}" if org_id else "the user's org"


def _grant(org_id: str | None) -> str:
    return f"grant it {ROLE} in {_org(org_id)}"


def not_found(
    user: str,
    org_id: str | None,
    *,
    identity: str | None,
    probe: Probe | None,
    method: str,
) -> ZitadelError:
    """The error for a lookup that found nothing."""
    where = f" in org {org_id}" if org_id else ""
    found = probe() if probe is not None else None
    head = f"user {user!r} not found{where}"
    if isinstance(found, ZitadelPermissionDenied):
        return ZitadelPermissionDenied(
            f"{head}: {_who(identity)} may not list users{where}; {_grant(org_id)}",
            code="permission_denied",
            method=method,
        )
    if found:
        message = f"{head}: it does not exist ({_who(identity)} may list users{where})"
    elif found == 0:
        message = (
            f"{head}: {_who(identity)} sees no user{where}, so it may exist unseen; "
            f"{_grant(org_id)} (or check the name)"
        )
    else:
        message = f"{head}: it does not exist, or {_who(identity)} may not see it; {_grant(org_id)}"
    return ZitadelNotFound(message, code="not_found", method=method)


def refused(
    user: str, org_id: str | None, exc: ZitadelPermissionDenied, *, identity: str | None
) -> ZitadelPermissionDenied:
    """The error for a lookup the server refused (v1's interceptor, any API's
    ``membership not found``): the identity lacks a role there."""
    where = f" in org {org_id}" if org_id else ""
    reason = str(exc).removeprefix(f"ZITADEL {exc.method}: " if exc.method else "ZITADEL: ")
    return ZitadelPermissionDenied(
        f"cannot look up user {user!r}{where}: {_who(identity)} was refused "
        f"({reason}); {_grant(org_id)}",
        code="permission_denied",
        method=exc.method,
    )
