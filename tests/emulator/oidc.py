"""OIDC / OAuth 2 endpoints (§7): discovery, token (jwt-bearer, client
credentials), introspection, userinfo, JWKS."""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.parse
from collections.abc import Mapping
from typing import Any

from tests.emulator import domain as dm
from tests.emulator import keys as keymat
from tests.emulator import times
from tests.emulator.errors import EmuError
from tests.emulator.faults import After

Response = tuple[int, dict[str, str], bytes]

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLIENT_CREDENTIALS = "client_credentials"
SCOPE_MISSING = ("The scope of your request is missing. Please ensure some scopes are requested. "
                 "If you have further questions, you may contact the administrator of the "
                 "application.")
ALLOWED_ALGS = ("RS256", "ES256", "PS256")  # go-jose default list; only RSA keys can match
PATHS = {
    "authorization_endpoint": "/oauth/v2/authorize",
    "token_endpoint": "/oauth/v2/token",
    "introspection_endpoint": "/oauth/v2/introspect",
    "userinfo_endpoint": "/oidc/v1/userinfo",
    "revocation_endpoint": "/oauth/v2/revoke",
    "end_session_endpoint": "/oidc/v1/end_session",
    "device_authorization_endpoint": "/oauth/v2/device_authorization",
    "jwks_uri": "/oauth/v2/keys",
}
FAULT_NAMES = {"/oauth/v2/token": "token", "/oauth/v2/introspect": "introspect",
               "/oidc/v1/userinfo": "userinfo", "/oauth/v2/keys": "keys",
               "/.well-known/openid-configuration": "discovery"}


class OAuthError(Exception):
    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(f"{status} {error}: {description}")
        self.status = status
        self.error = error
        self.description = description


def _internal() -> OAuthError:
    # zitadel/oidc's verifier returns plain Go errors -> oidcError maps them to Internal (§7.2)
    return OAuthError(500, "server_error", "Errors.Internal")


def _json(status: int, payload: Any, extra: Mapping[str, str] | None = None) -> Response:
    headers = {"Content-Type": "application/json"}
    headers.update(extra or {})
    return status, headers, json.dumps(payload).encode()


def _oauth_error(err: OAuthError) -> Response:
    return _json(err.status, {"error": err.error, "error_description": err.description},
                 {"Cache-Control": "no-store", "Pragma": "no-cache"})


#: fault code -> HTTP status at the OAuth endpoints (as a proxy/ZITADEL would answer)
FAULT_STATUS = {"unavailable": 503, "resource_exhausted": 429, "internal": 500,
                "deadline_exceeded": 504, "unknown": 500, "aborted": 409}


def discovery(issuer: str) -> dict[str, Any]:
    doc: dict[str, Any] = {"issuer": issuer}
    doc.update({k: issuer + v for k, v in PATHS.items()})
    doc.update({
        "scopes_supported": ["openid", "profile", "email", "phone", "address", "offline_access"],
        "response_types_supported": ["code", "id_token", "id_token token"],
        "response_modes_supported": ["query", "fragment", "form_post"],
        "grant_types_supported": [
            "authorization_code", "implicit", "refresh_token", "client_credentials",
            "urn:ietf:params:oauth:grant-type:token-exchange", JWT_BEARER,
            "urn:ietf:params:oauth:grant-type:device_code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "request_object_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_basic",
                                                  "client_secret_post", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS256"],
        "revocation_endpoint_auth_methods_supported": ["none", "client_secret_basic",
                                                       "client_secret_post", "private_key_jwt"],
        "revocation_endpoint_auth_signing_alg_values_supported": ["RS256"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic",
                                                          "private_key_jwt"],
        "introspection_endpoint_auth_signing_alg_values_supported": ["RS256"],
        "claims_supported": ["sub", "aud", "exp", "iat", "iss", "auth_time", "nonce", "acr",
                             "amr", "c_hash", "at_hash", "act", "scopes", "client_id", "azp",
                             "preferred_username", "name", "family_name", "given_name",
                             "locale", "email", "email_verified", "phone_number",
                             "phone_number_verified"],
        "code_challenge_methods_supported": ["S256"],
        "ui_locales_supported": ["en"],
        "request_parameter_supported": True,
        "request_uri_parameter_supported": False,
        "backchannel_logout_supported": False,
        "backchannel_logout_session_supported": False,
    })
    return doc


# --- jwt-bearer assertion (§7.2 steps 1-6) -----------------------------------------


def _round_s(ns: int) -> int:
    """Go time.Round(time.Second) -> whole seconds."""
    return (ns + times.NS // 2) // times.NS


def _numeric(claims: dict[str, Any], name: str) -> int:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _internal()
    return int(value)


def _fresh(now: int, exp: int, iat: int) -> bool:
    if now + times.NS >= exp * times.NS:
        return False
    if iat > _round_s(now + times.NS):
        return False
    return iat >= _round_s(now - 3600 * times.NS)


def verify_assertion(domain: dm.Domain, assertion: str) -> tuple[dm.User, str]:
    """-> (user, key id) or OAuthError 500 for any defect."""
    parts = assertion.split(".")
    if len(parts) != 3:
        raise _internal()
    try:
        header = json.loads(keymat.b64url_decode(parts[0]))
        claims = json.loads(keymat.b64url_decode(parts[1]))
        signature = keymat.b64url_decode(parts[2])
    except (ValueError, UnicodeDecodeError) as exc:
        raise _internal() from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise _internal()
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if domain.issuer not in audiences:
        raise _internal()
    exp = _numeric(claims, "exp")
    iat = _numeric(claims, "iat")
    # The emulator's clock offset moves *server* time; an unmodified client signs
    # with the real clock.  An assertion is fresh if it is fresh against either.
    real_now = domain.now() - int(domain.clock_offset_seconds * times.NS)
    if not (_fresh(domain.now(), exp, iat) or _fresh(real_now, exp, iat)):
        raise _internal()
    iss, sub = claims.get("iss"), claims.get("sub")
    if not isinstance(iss, str) or not iss or iss != sub:
        raise _internal()
    kid, alg = header.get("kid"), header.get("alg")
    if not isinstance(kid, str) or alg not in ALLOWED_ALGS:
        raise _internal()
    found = domain.jwt_profile_key(kid, iss)
    if found is None:
        raise _internal()
    user, spki = found
    signing_input = (parts[0] + "." + parts[1]).encode("ascii")
    if not keymat.verify_jws(signing_input, signature, str(alg), spki):
        raise _internal()
    return user, kid


# --- scopes and token response ----------------------------------------------------


def process_scopes(domain: dm.Domain, user: dm.User, scope: str) -> tuple[list[str], list[str]]:
    """-> (granted scopes, extra audiences); unknown scopes are silently dropped."""
    requested = scope.split()
    if not requested:
        raise OAuthError(400, "invalid_request", SCOPE_MISSING)
    org = domain.get_org(user.org_id)
    granted: list[str] = []
    audience: list[str] = []
    plain = {"openid", "profile", "email", "phone", "address", "offline_access",
             "urn:zitadel:iam:user:metadata", "urn:zitadel:iam:user:resourceowner",
             "urn:zitadel:iam:org:projects:roles", "urn:iam:org:project:roles"}
    for s in requested:
        if s in plain or s.startswith("urn:zitadel:iam:org:project:role:"):
            granted.append(s)
        elif s == dm.ZITADEL_AUD_SCOPE:
            granted.append(s)
            audience.append(domain.zitadel_project_id)
        elif s.startswith("urn:zitadel:iam:org:project:id:") and s.endswith(":aud"):
            granted.append(s)
            audience.append(s[len("urn:zitadel:iam:org:project:id:"):-len(":aud")])
        elif org is not None and s in (f"urn:zitadel:iam:org:id:{org.id}",
                                       f"urn:zitadel:iam:org:domain:primary:{org.primary_domain}"):
            granted.append(s)  # org scopes of another org are dropped
    return granted, audience


def _token_response(domain: dm.Domain, user: dm.User, scope: str,
                    key_id: str | None) -> Response:
    granted, extra_aud = process_scopes(domain, user, scope)
    if user.state != "ACTIVE":
        raise OAuthError(400, "invalid_request", "Errors.User.NotActive")
    audience = [user.id, *[a for a in extra_aud if a != user.id]]
    token, expiration = domain.issue_access_token(user, granted, audience, key_id)
    now = domain.now()
    body: dict[str, Any] = {"access_token": token, "token_type": "Bearer",
                            "expires_in": max(0, (expiration - now) // times.NS)}
    if "openid" in granted:
        digest = hashlib.sha256(token.encode()).digest()
        body["id_token"] = keymat.sign_jwt(domain.signing_key, domain.signing_key_id, {
            "iss": domain.issuer, "sub": user.id, "aud": audience,
            "exp": expiration // times.NS, "iat": now // times.NS,
            "auth_time": now // times.NS, "azp": user.id, "client_id": user.id,
            "at_hash": keymat.b64url(digest[:16]),
        })
    return _json(200, body, {"Cache-Control": "no-store", "Pragma": "no-cache"})


def _client_credentials(domain: dm.Domain, headers: Mapping[str, str],
                        form: Mapping[str, str]) -> Response:
    client_id, secret = _client_auth(headers, form)
    if client_id is None:
        raise OAuthError(400, "invalid_client", "client not found")
    user = domain.user_by_login_name(client_id)
    if user is None:
        matches = [u for u in domain.all_users() if u.username == client_id]
        user = matches[0] if len(matches) == 1 else None
    if user is None or user.type != "machine":
        raise OAuthError(400, "invalid_client", "client not found")
    # the projection's view: within the lag of a regeneration the old secret passes
    checked = domain.check_client_secret(user, secret or "")
    if checked == "missing":
        raise OAuthError(400, "invalid_request", "Errors.User.Machine.Secret.NotExisting")
    if checked != "ok":
        raise OAuthError(400, "invalid_request", "Errors.User.Machine.Secret.Invalid")
    return _token_response(domain, user, form.get("scope", ""), None)


def _client_auth(headers: Mapping[str, str],
                 form: Mapping[str, str]) -> tuple[str | None, str | None]:
    auth = headers.get("authorization", "")
    if auth.startswith("Basic "):
        try:
            decoded = base64.b64decode(auth[6:]).decode()
        except ValueError:
            return None, None
        cid, _, secret = decoded.partition(":")
        return urllib.parse.unquote(cid), urllib.parse.unquote(secret)
    if form.get("client_id"):
        return form["client_id"], form.get("client_secret")
    return None, None


def token(domain: dm.Domain, headers: Mapping[str, str], form: Mapping[str, str]) -> Response:
    try:
        grant = form.get("grant_type", "")
        if not grant:
            raise OAuthError(400, "invalid_request", "grant_type missing")
        if grant == JWT_BEARER:
            assertion = form.get("assertion", "")
            if not assertion:
                raise OAuthError(400, "invalid_request", "assertion missing")
            user, key_id = verify_assertion(domain, assertion)
            return _token_response(domain, user, form.get("scope", ""), key_id)
        if grant == CLIENT_CREDENTIALS:
            return _client_credentials(domain, headers, form)
        raise OAuthError(400, "unsupported_grant_type", f"{grant} not supported")
    except OAuthError as err:
        return _oauth_error(err)


# --- introspection, userinfo, keys ----------------------------------------------------


def _claims(domain: dm.Domain, user: dm.User, scopes: tuple[str, ...]) -> dict[str, Any]:
    claims: dict[str, Any] = {"sub": user.id}
    if "profile" in scopes:
        claims.update({"name": user.display_name, "preferred_username":
                       user.preferred_login_name, "updated_at": user.changed // times.NS})
        if user.type == "human":
            claims.update({"given_name": user.given_name, "family_name": user.family_name})
    if "email" in scopes and user.type == "human":
        claims.update({"email": user.email, "email_verified": True})
    if "urn:zitadel:iam:user:resourceowner" in scopes:
        org = domain.get_org(user.org_id)
        if org is not None:
            claims["urn:zitadel:iam:user:resourceowner:id"] = org.id
            claims["urn:zitadel:iam:user:resourceowner:name"] = org.name
            claims["urn:zitadel:iam:user:resourceowner:primary_domain"] = org.primary_domain
    if "urn:zitadel:iam:user:metadata" in scopes:
        md = domain.metadata_of(user.id)
        if md:
            # internal/api/oidc/userinfo.go setUserInfoMetadata: RawURLEncoding
            claims["urn:zitadel:iam:user:metadata"] = {m.key: keymat.b64url(m.value) for m in md}
    return claims


def userinfo(domain: dm.Domain, headers: Mapping[str, str], form: Mapping[str, str]) -> Response:
    auth = headers.get("authorization", "")
    token_value = auth[len("Bearer "):] if auth.startswith("Bearer ") else form.get(
        "access_token", "")
    if not token_value:
        return _oauth_error(OAuthError(401, "invalid_request", "access token missing"))
    info = domain.token_info(token_value)
    if info is None:
        return _oauth_error(OAuthError(401, "access_denied", "access token invalid"))
    user, _kind, record = info
    return _json(200, _claims(domain, user, record.scopes))


def introspect(domain: dm.Domain, headers: Mapping[str, str],
               form: Mapping[str, str]) -> Response:
    client_id, secret = _client_auth(headers, form)
    if client_id is None:
        return _oauth_error(OAuthError(400, "invalid_client", "client must be authenticated"))
    app = domain.verify_app(client_id, secret or "")
    if app is None:
        return _oauth_error(OAuthError(400, "unauthorized_client", "client not found"))
    token_value = form.get("token", "")
    if not token_value:
        return _oauth_error(OAuthError(400, "invalid_request", "token missing"))
    info = domain.token_info(token_value)
    if info is None:
        return _json(200, {"active": False})
    user, _kind, record = info
    if isinstance(record, dm.AccessToken):
        if app.client_id not in record.audience and app.project_id not in record.audience:
            return _json(200, {"active": False})
        aud, client, jti = list(record.audience), user.id, record.id
    else:
        aud, client, jti = [user.id], user.id, record.id
    body = {"active": True, "scope": " ".join(record.scopes), "client_id": client,
            "token_type": "Bearer", "exp": record.expiration // times.NS,
            "iat": record.created // times.NS, "auth_time": record.created // times.NS,
            "nbf": record.created // times.NS, "aud": aud, "iss": domain.issuer, "jti": jti,
            "username": user.preferred_login_name}
    body.update(_claims(domain, user, record.scopes))
    return _json(200, body)


def jwks(domain: dm.Domain) -> Response:
    return _json(200, {"keys": [keymat.jwk(domain.signing_key, domain.signing_key_id)]},
                 {"Cache-Control": "max-age=300, must-revalidate"})


def handle(domain: dm.Domain, path: str, http_method: str, headers: Mapping[str, str],
           body: bytes) -> Response | None:
    """The OIDC routes; None when ``path`` is not one of them."""
    if path not in FAULT_NAMES and path not in PATHS.values():
        return None
    fault = FAULT_NAMES.get(path)
    after: After | None = None
    if fault is not None:
        try:
            after = domain.faults.check(fault)
        except EmuError as err:
            return _fault_response(err)
    answer = _route(domain, path, http_method, headers, body)
    if after is not None:
        try:
            after.apply()  # the endpoint acted (a token was issued); the answer is late or lost
        except EmuError as err:
            return _fault_response(err)
    return answer


def _fault_response(err: EmuError) -> Response:
    status = FAULT_STATUS.get(err.code, 500)
    return _json(status, {"error": "server_error", "error_description": err.message})


def _route(domain: dm.Domain, path: str, http_method: str, headers: Mapping[str, str],
           body: bytes) -> Response:
    if path == "/.well-known/openid-configuration":
        return _json(200, discovery(domain.issuer))
    if path == "/oauth/v2/keys":
        return jwks(domain)
    form: dict[str, str] = {}
    if http_method == "POST":
        parsed = urllib.parse.parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        form = {k: v[0] for k, v in parsed.items()}
    if path == "/oauth/v2/token":
        return token(domain, headers, form)
    if path == "/oidc/v1/userinfo":
        return userinfo(domain, headers, form)
    if path == "/oauth/v2/introspect":
        return introspect(domain, headers, form)
    return _json(501, {"error": "server_error",
                       "error_description": "not implemented by the emulator"})
