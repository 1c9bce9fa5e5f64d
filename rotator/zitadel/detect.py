"""``zitadel.api: auto``: does this ZITADEL serve the v2 key and PAT methods?

They exist only from ZITADEL v4.0 (zitadel-api.md §4.3).  The probe is one
harmless read: ``POST /zitadel.user.v2.UserService/ListKeys`` (Connect JSON)
filtered on a key id that cannot exist, so it never returns data.

* 200, or a Connect error that proves the method exists (``invalid_argument``,
  ``failed_precondition``, ``not_found`` with a Connect body) -> ``"v2"``.
* 404 without a Connect body (grpc-gateway's ``{"code":5}`` included), 405, 501,
  a redirect, or Connect ``unimplemented`` -> ``"v1"``.
* anything that says nothing about the version (401, 403, 429, 5xx, timeouts,
  refused connections) raises the mapped :mod:`rotator.errors` type: falling
  back to v1 on a transient failure would silently pick the wrong API.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Protocol

import httpx

from rotator import netcause
from rotator.errors import ConfigError
from rotator.zitadel.codes import error_for, http_status_code_name
from rotator.zitadel.oidc import tls_verify

ApiVersion = Literal["v1", "v2"]

PROBE_PATH = "/zitadel.user.v2.UserService/ListKeys"
#: Snowflake ids are decimal; "0" is never issued, so the probe lists nothing.
_PROBE_BODY: dict[str, Any] = {
    "pagination": {"limit": 1},
    "filters": [{"keyIdFilter": {"id": "0"}}],
}
_METHOD = "ListKeys (api detection)"
#: Connect codes only a served method can answer with.
_METHOD_EXISTS = frozenset({"invalid_argument", "failed_precondition", "not_found", "out_of_range"})


def _connect_code(response: httpx.Response) -> str | None:
    """The ``code`` of a Connect error body, or None if the body is not one."""
    if "json" not in response.headers.get("content-type", ""):
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    code = body.get("code") if isinstance(body, dict) else None
    return code if isinstance(code, str) else None


def classify(response: httpx.Response) -> ApiVersion:
    """Decide from the probe's response; raise when it does not tell."""
    status = response.status_code
    code = _connect_code(response)
    if status == 200:
        if "json" in response.headers.get("content-type", ""):
            return "v2"
        # e.g. a console/login catch-all page on an old instance
        return "v1"
    if code == "unimplemented" or status in (405, 501) or (status == 404 and code is None):
        return "v1"
    if 300 <= status < 400:  # an old instance redirecting an unknown path to its UI
        return "v1"
    if code in _METHOD_EXISTS:
        return "v2"
    name = code or http_status_code_name(status)
    message = f"API detection probe answered HTTP {status}"
    raise error_for(name, message, status=status, method=_METHOD)


def detect_api(
    issuer: str,
    token: str,
    *,
    timeout: float = 10.0,
    verify: bool | str = True,
    client: httpx.Client | None = None,
) -> ApiVersion:
    """``"v2"`` if ``issuer`` serves the v2 UserService key methods, else ``"v1"``.

    ``token`` is the rotator's own access token; ``verify`` is httpx's TLS
    setting (True, False or a CA bundle path).  Raises ZitadelError subtypes
    when the instance cannot be asked (see the module docstring).
    """
    url = issuer.rstrip("/") + PROBE_PATH
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    own_client = client is None
    http = client or httpx.Client(timeout=timeout, verify=tls_verify(verify))
    try:
        response = http.post(url, json=_PROBE_BODY, headers=headers)
    except httpx.TimeoutException as exc:
        message = "API detection probe timed out"
        raise error_for("deadline_exceeded", message, method=_METHOD) from exc
    except httpx.HTTPError as exc:
        # the address and the cause, never httpx's message (it repeats the URL)
        message = (
            f"API detection probe failed at {netcause.address(url)}: {netcause.cause(exc)}"
        )
        raise error_for("unavailable", message, method=_METHOD) from exc  # --debug shows it
    finally:
        if own_client:
            http.close()
    return classify(response)



class _Emitter(Protocol):
    def emit(self, event: str, **fields: Any) -> Any: ...


def choose_api(
    setting: str,
    issuer: str,
    token_source: Callable[[], str],
    *,
    audit: _Emitter | None = None,
    timeout: float = 10.0,
    verify: bool | str = True,
) -> ApiVersion:
    """The API for the ``zitadel.api`` setting: ``v1``/``v2`` as given, ``auto``
    probed with :func:`detect_api` and reported as a ``zitadel.api_detected`` event."""
    if setting == "v1":
        return "v1"
    if setting == "v2":
        return "v2"
    if setting != "auto":
        raise ConfigError(f"must be v1, v2 or auto, not {setting!r}", field="zitadel.api")
    api = detect_api(issuer, token_source(), timeout=timeout, verify=verify)
    if audit is not None:
        audit.emit("zitadel.api_detected", api=api, issuer=issuer, probe=PROBE_PATH)
    return api
