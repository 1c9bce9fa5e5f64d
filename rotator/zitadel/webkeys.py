"""ZITADEL's web keys (zitadel-api.md §12, §7.6) as the web key protocol
(:mod:`rotator.webkeys`) needs them: the v2 ``WebKeyService`` over Connect
JSON, the published JWKS, and the ``kid`` ZITADEL signs tokens with now.

Connect JSON is spoken directly (httpx, like the OIDC client): four unary
calls with flat messages, so the SDK's model layer buys nothing here.  The
rotator's bearer token comes from its :class:`~rotator.zitadel.oidc.TokenSource`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import httpx

from rotator.errors import ZitadelError
from rotator.keys import sign_assertion
from rotator.model import Algorithm, WebKeyInfo
from rotator.redact import server_text
from rotator.zitadel.codes import error_for, http_status_code_name
from rotator.zitadel.oidc import JWT_BEARER_GRANT, OidcClient, connection_error

SERVICE = "zitadel.webkey.v2.WebKeyService"
#: ZITADEL's (or a front's) error text kept in an error, after redaction
_MAX_SERVER_TEXT = 300
JWKS_PATH = "/oauth/v2/keys"


def _state(raw: object) -> str:
    text = str(raw or "STATE_UNSPECIFIED")
    return text[len("STATE_"):] if text.startswith("STATE_") else text


def _b64_json(segment: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


class WebKeyClient:
    """One instance's web keys, with the rotator's identity."""

    def __init__(self, oidc: OidcClient, token: Callable[[], str],
                 key_file: Callable[[], Mapping[str, Any]]) -> None:
        self.oidc = oidc
        self._token = token
        self._key_file = key_file

    @property
    def _http(self) -> httpx.Client:
        return self.oidc._http

    def _call(self, method: str, body: Mapping[str, Any]) -> dict[str, Any]:
        what = f"{SERVICE}/{method}"
        token = self._token()
        try:
            response = self._http.post(
                f"{self.oidc.issuer}/{SERVICE}/{method}", json=dict(body),
                headers={"Authorization": f"Bearer {token}",
                         "Content-Type": "application/json"})
        except httpx.HTTPError as exc:
            raise connection_error(exc, what) from exc
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if response.status_code != 200:
            code = http_status_code_name(response.status_code)
            message = f"HTTP {response.status_code}"
            if isinstance(payload, dict):
                # a front that echoes the request could quote the bearer token
                code = server_text(str(payload.get("code") or code), (token,), limit=40)
                message = server_text(str(payload.get("message") or message), (token,),
                                      limit=_MAX_SERVER_TEXT)
            raise error_for(code, message, status=response.status_code, method=method)
        if not isinstance(payload, dict):
            raise error_for("unknown", f"{method} answered 200 with a body that is not a "
                            "JSON object", method=method)
        return payload

    def list(self) -> list[WebKeyInfo]:
        out = []
        keys = self._call("ListWebKeys", {}).get("webKeys", [])
        if not isinstance(keys, list):
            raise error_for("unknown", "ListWebKeys answered webKeys that is not a list",
                            method="ListWebKeys")
        for raw in keys:
            if not isinstance(raw, dict) or not raw.get("id"):
                raise error_for("unknown", "ListWebKeys answered a web key without an id",
                                method="ListWebKeys")
            created = raw.get("creationDate")
            try:
                when = (datetime.fromisoformat(str(created).replace("Z", "+00:00"))
                        if created else None)
            except ValueError as exc:
                raise error_for("unknown", f"ListWebKeys answered web key {raw['id']} with "
                                "a creationDate that is not a timestamp",
                                method="ListWebKeys") from exc
            out.append(WebKeyInfo(str(raw["id"]), _state(raw.get("state")), when))
        return out

    def create(self, algorithm: Algorithm) -> str:
        key_id = self._call("CreateWebKey", algorithm.request()).get("id")
        if not key_id:
            raise error_for("unknown", "CreateWebKey answered without an id",
                            method="CreateWebKey")
        return str(key_id)

    def activate(self, key_id: str) -> None:
        self._call("ActivateWebKey", {"id": key_id})

    def delete(self, key_id: str) -> None:
        """Deleting an unknown or removed key succeeds (§12)."""
        self._call("DeleteWebKey", {"id": key_id})

    def published(self) -> set[str]:
        """The kids served at ``/oauth/v2/keys`` now (past any HTTP cache)."""
        url = f"{self.oidc.issuer}{JWKS_PATH}"
        try:
            response = self._http.get(url, headers={"Cache-Control": "no-cache"})
        except httpx.HTTPError as exc:
            raise connection_error(exc, "JWKS") from exc
        if response.status_code != 200:
            raise error_for(http_status_code_name(response.status_code),
                            f"HTTP {response.status_code}", status=response.status_code,
                            method="JWKS")
        try:
            keys = response.json().get("keys", [])
            return {str(k["kid"]) for k in keys if isinstance(k, dict) and k.get("kid")}
        except (ValueError, AttributeError) as exc:
            raise error_for("unknown", "JWKS is not a JSON key set", method="JWKS") from exc

    def signing_kid(self) -> str:
        """The ``kid`` in the header of a fresh id_token: a real token from the
        token endpoint (the rotator's own jwt-bearer exchange, scope ``openid``)."""
        endpoints = self.oidc.endpoints()
        key_file = self._key_file()
        assertion = sign_assertion(key_file, endpoints.issuer, self.oidc.clock.now())
        what = "token exchange for an id_token"
        try:
            response = self._http.post(endpoints.token_endpoint, data={
                "grant_type": JWT_BEARER_GRANT, "assertion": assertion, "scope": "openid"})
        except httpx.HTTPError as exc:
            raise connection_error(exc, what) from exc
        if response.status_code != 200:
            raise error_for(http_status_code_name(response.status_code),
                            f"HTTP {response.status_code}", status=response.status_code,
                            method=what)
        try:
            answer = response.json()
        except ValueError:
            answer = None
        token = answer.get("id_token") if isinstance(answer, dict) else None
        if not isinstance(token, str) or token.count(".") != 2:
            raise error_for("unknown", "token response without an id_token", method=what)
        try:
            header = _b64_json(token.split(".")[0])
        except ValueError as exc:
            raise error_for("unknown", "id_token header is not JSON", method=what) from exc
        if not isinstance(header, dict):
            raise error_for("unknown", "id_token header is not a JSON object", method=what)
        return str(header.get("kid") or "")


__all__ = ["Algorithm", "WebKeyClient", "WebKeyInfo", "ZitadelError"]
