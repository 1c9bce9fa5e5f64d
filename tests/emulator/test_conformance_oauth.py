"""The emulator's OIDC/OAuth endpoints (§7 of zitadel-api.md): discovery, the
jwt-bearer and client_credentials grants, userinfo, introspection, JWKS."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from zitadel_client import Zitadel
from zitadel_client.models import (
    UserServiceAddPersonalAccessTokenRequest,
    UserServiceGetUserByIDRequest,
    UserServiceMetadata,
    UserServiceRemoveKeyRequest,
    UserServiceSetUserMetadataRequest,
)

from tests.emulator.support import (
    API_SCOPE,
    JWT_BEARER,
    access_token,
    connect,
    in_days,
    key_file_for,
    local_rsa_key,
    sign_assertion,
    token_request,
)
from tests.harness.emulator import Emulator

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SERVER_ERROR = {"error": "server_error", "error_description": "Errors.Internal"}


@pytest.fixture(autouse=True)
def _clean_emulator(emulator: Emulator) -> Iterator[None]:
    yield
    emulator.reset()


@pytest.fixture(scope="module")
def admin_key(emulator: Emulator) -> dict[str, Any]:
    return dict(json.loads(emulator.admin_key_file.read_text()))


@pytest.fixture(scope="module")
def admin(emulator: Emulator) -> Zitadel:
    return Zitadel.with_private_key(emulator.issuer, str(emulator.admin_key_file))


def b64url_json(segment: str) -> dict[str, Any]:
    return dict(json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))))


def test_discovery_names_the_issuer_without_trailing_slash_and_all_endpoints(
    emulator: Emulator,
) -> None:
    doc = httpx.get(f"{emulator.issuer}/.well-known/openid-configuration").json()
    assert doc["issuer"] == emulator.issuer
    assert not doc["issuer"].endswith("/")
    assert doc["token_endpoint"] == f"{emulator.issuer}/oauth/v2/token"
    assert doc["introspection_endpoint"] == f"{emulator.issuer}/oauth/v2/introspect"
    assert doc["userinfo_endpoint"] == f"{emulator.issuer}/oidc/v1/userinfo"
    assert doc["jwks_uri"] == f"{emulator.issuer}/oauth/v2/keys"
    assert "urn:ietf:params:oauth:grant-type:jwt-bearer" in doc["grant_types_supported"]


def test_jwt_bearer_success_response(emulator: Emulator, admin_key: dict[str, Any]) -> None:
    response = token_request(emulator.issuer, sign_assertion(admin_key, emulator.issuer))
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert 43190 <= body["expires_in"] <= 43200  # 12 h
    assert set(body) == {"access_token", "token_type", "expires_in", "id_token"}
    no_openid = token_request(emulator.issuer, sign_assertion(admin_key, emulator.issuer),
                              scope="urn:zitadel:iam:org:project:id:zitadel:aud").json()
    assert "id_token" not in no_openid


def test_id_token_verifies_against_the_jwks(emulator: Emulator, admin_key: dict[str, Any]) -> None:
    id_token = token_request(emulator.issuer,
                             sign_assertion(admin_key, emulator.issuer)).json()["id_token"]
    header_b64, payload_b64, sig_b64 = id_token.split(".")
    jwks = httpx.get(f"{emulator.issuer}/oauth/v2/keys").json()
    (jwk,) = [k for k in jwks["keys"] if k["kid"] == b64url_json(header_b64)["kid"]]

    def as_int(text: str) -> int:
        return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")

    public = rsa.RSAPublicNumbers(as_int(jwk["e"]), as_int(jwk["n"])).public_key()
    public.verify(base64.urlsafe_b64decode(sig_b64 + "=" * (-len(sig_b64) % 4)),
                  f"{header_b64}.{payload_b64}".encode(), padding.PKCS1v15(), hashes.SHA256())
    claims = b64url_json(payload_b64)
    assert claims["iss"] == emulator.issuer
    assert claims["sub"] == admin_key["userId"]


@pytest.mark.parametrize(
    "defect",
    [
        pytest.param({"aud": "http://elsewhere"}, id="aud without issuer"),
        pytest.param({"aud": "ISSUER/"}, id="aud with trailing slash"),
        pytest.param({"exp": "NOW-10"}, id="expired"),
        pytest.param({"iat": "NOW-3700"}, id="iat older than 1h"),
        pytest.param({"iat": "NOW+60"}, id="iat in the future"),
        pytest.param({"iat": None}, id="no iat"),
        pytest.param({"sub": "someone-else"}, id="sub != iss"),
        pytest.param({"kid": "4711"}, id="unknown kid"),
        pytest.param({"alg": "PS256"}, id="PS256 is verified too (bad here: signed below)"),
    ],
)
def test_every_bad_assertion_is_a_500_server_error(
    emulator: Emulator, admin_key: dict[str, Any], defect: dict[str, Any]
) -> None:
    now = int(time.time())
    claims: dict[str, Any] = {}
    for name, raw in defect.items():
        value = raw
        if isinstance(raw, str) and raw.startswith("NOW"):
            value = now + int(raw[3:])
        if raw == "ISSUER/":
            value = emulator.issuer + "/"
        claims[name] = value
    aud = claims.pop("aud", emulator.issuer)
    if claims.get("alg") == "PS256":
        # a valid PS256 signature is accepted; a corrupt one is not
        ok = token_request(emulator.issuer, sign_assertion(admin_key, aud, **claims))
        assert ok.status_code == 200
        assertion = sign_assertion(admin_key, aud, **claims)[:-4] + "AAAA"
    else:
        assertion = sign_assertion(admin_key, aud, **claims)
    response = token_request(emulator.issuer, assertion)
    assert response.status_code == 500
    assert response.json() == SERVER_ERROR


def test_a_jwt_access_token_user_gets_a_signed_jwt_that_the_api_accepts(
    emulator: Emulator,
) -> None:
    user = emulator.add_user("svc-jwt", key=True, access_token_type="JWT")
    token = access_token(emulator.issuer, user["key_file"])
    header, claims = (b64url_json(part) for part in token.split(".")[:2])
    assert header["alg"] == "RS256"
    assert claims["iss"] == emulator.issuer
    assert claims["sub"] == user["id"]
    assert claims["exp"] - claims["iat"] == 12 * 3600
    got = connect(emulator.issuer, "GetUserByID", {"userId": user["id"]}, token)
    assert got.json()["user"]["machine"]["accessTokenType"] == "ACCESS_TOKEN_TYPE_JWT"


def test_a_signature_by_another_key_is_a_500(emulator: Emulator, admin_key: dict[str, Any]) -> None:
    other, _ = local_rsa_key()
    forged = dict(admin_key, key=other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()).decode())
    response = token_request(emulator.issuer, sign_assertion(forged, emulator.issuer))
    assert (response.status_code, response.json()) == (500, SERVER_ERROR)


def test_garbage_assertions_are_500_and_missing_parameters_are_400(emulator: Emulator) -> None:
    garbage = token_request(emulator.issuer, "not.a.jwt")
    assert (garbage.status_code, garbage.json()) == (500, SERVER_ERROR)
    url = f"{emulator.issuer}/oauth/v2/token"
    no_assertion = httpx.post(url, data={"grant_type": JWT_BEARER})
    assert no_assertion.status_code == 400
    assert no_assertion.json() == {"error": "invalid_request",
                                   "error_description": "assertion missing"}
    no_grant = httpx.post(url, data={"assertion": "x"})
    assert no_grant.status_code == 400
    assert no_grant.json()["error_description"] == "grant_type missing"


def test_an_empty_scope_is_invalid_request(emulator: Emulator, admin_key: dict[str, Any]) -> None:
    response = token_request(emulator.issuer, sign_assertion(admin_key, emulator.issuer), scope="")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


def test_aud_may_be_an_array_containing_the_issuer(
    emulator: Emulator, admin_key: dict[str, Any]
) -> None:
    assertion = sign_assertion(admin_key, ["https://other", emulator.issuer])
    assert token_request(emulator.issuer, assertion).status_code == 200


def test_an_inactive_user_gets_no_token(emulator: Emulator, admin: Zitadel) -> None:
    user = emulator.add_user("svc-inactive", key=True)
    emulator.set_user_state(user["id"], "INACTIVE")
    response = token_request(emulator.issuer, sign_assertion(user["key_file"], emulator.issuer))
    assert response.status_code == 400
    assert response.json() == {"error": "invalid_request",
                               "error_description": "Errors.User.NotActive"}


def test_a_removed_key_stops_minting_but_its_tokens_stay_valid(
    emulator: Emulator, admin: Zitadel
) -> None:
    user = emulator.add_user("svc-removal", key=True)
    key_file = user["key_file"]
    token = access_token(emulator.issuer, key_file)
    admin.users.remove_key(UserServiceRemoveKeyRequest(userId=user["id"],
                                                       keyId=key_file["keyId"]))
    refused = token_request(emulator.issuer, sign_assertion(key_file, emulator.issuer))
    assert (refused.status_code, refused.json()) == (500, SERVER_ERROR)
    still = connect(emulator.issuer, "GetUserByID", {"userId": user["id"]}, token)
    assert still.status_code == 200


def test_an_expired_key_mints_no_token(emulator: Emulator, admin: Zitadel) -> None:
    user = emulator.add_user("svc-expiring")
    private, public_pem = local_rsa_key()
    added = connect(emulator.issuer, "AddKey", {
        "userId": user["id"], "expirationDate": in_days(1).isoformat(),
        "publicKey": base64.b64encode(public_pem.encode()).decode()},
        access_token(emulator.issuer, json.loads(emulator.admin_key_file.read_text())))
    key_file = key_file_for(private, added.json()["keyId"], user["id"])
    assert token_request(emulator.issuer, sign_assertion(key_file, emulator.issuer)) \
        .status_code == 200
    emulator.advance(86400 + 5)
    expired = token_request(emulator.issuer, sign_assertion(key_file, emulator.issuer))
    assert (expired.status_code, expired.json()) == (500, SERVER_ERROR)


def test_access_tokens_expire_after_12_hours(emulator: Emulator, admin_key: dict[str, Any]) -> None:
    token = access_token(emulator.issuer, admin_key)
    user_id = admin_key["userId"]
    assert connect(emulator.issuer, "GetUserByID", {"userId": user_id}, token).status_code == 200
    emulator.advance(12 * 3600 + 1)
    assert connect(emulator.issuer, "GetUserByID", {"userId": user_id}, token).status_code == 401


def test_client_credentials_grant(emulator: Emulator) -> None:
    user = emulator.add_user("svc-secret", secret=True)
    login = user["login_name"]
    url = f"{emulator.issuer}/oauth/v2/token"
    ok = httpx.post(url, data={"grant_type": "client_credentials", "scope": API_SCOPE},
                    auth=(login, user["client_secret"]))
    assert ok.status_code == 200
    wrong = httpx.post(url, data={"grant_type": "client_credentials", "scope": API_SCOPE},
                       auth=(login, "nope"))
    assert (wrong.status_code, wrong.json()["error_description"]) == (
        400, "Errors.User.Machine.Secret.Invalid")
    no_secret = httpx.post(url, data={"grant_type": "client_credentials", "scope": API_SCOPE,
                                      "client_id": "svc-noperm@acme.localhost",
                                      "client_secret": "x"})
    assert no_secret.json()["error_description"] == "Errors.User.Machine.Secret.NotExisting"
    unknown = httpx.post(url, data={"grant_type": "client_credentials", "scope": API_SCOPE},
                         auth=("nobody", "x"))
    assert (unknown.status_code, unknown.json()) == (
        400, {"error": "invalid_client", "error_description": "client not found"})
    sdk = Zitadel.with_client_credentials(emulator.issuer, login, user["client_secret"])
    got = sdk.users.get_user_by_id(UserServiceGetUserByIDRequest(userId=user["id"]))
    assert got.user.machine.has_secret is True


def test_userinfo_with_a_pat(emulator: Emulator, admin: Zitadel) -> None:
    ids = emulator.user_ids
    admin.users.set_user_metadata(UserServiceSetUserMetadataRequest(
        userId=ids["svc-billing"], metadata=[UserServiceMetadata(
            key="cost-center", value=base64.b64encode(b"\xfb\xff?").decode())]))
    pat = admin.users.add_personal_access_token(UserServiceAddPersonalAccessTokenRequest(
        userId=ids["svc-billing"], expirationDate=in_days(3)))
    response = httpx.get(f"{emulator.issuer}/oidc/v1/userinfo",
                         headers={"Authorization": f"Bearer {pat.token}"})
    assert response.status_code == 200
    claims = response.json()
    assert claims["sub"] == ids["svc-billing"]
    assert claims["preferred_username"] == "svc-billing@acme.localhost"
    assert claims["urn:zitadel:iam:user:resourceowner:id"] == emulator.org_ids["acme"]
    assert claims["urn:zitadel:iam:user:resourceowner:name"] == "acme"
    # metadata values are base64url without padding (setUserInfoMetadata)
    assert claims["urn:zitadel:iam:user:metadata"] == {"cost-center": "-_8_"}


def test_userinfo_refusals(emulator: Emulator) -> None:
    url = f"{emulator.issuer}/oidc/v1/userinfo"
    missing = httpx.get(url)
    assert (missing.status_code, missing.json()["error"]) == (401, "invalid_request")
    invalid = httpx.get(url, headers={"Authorization": "Bearer nope"})
    assert (invalid.status_code, invalid.json()) == (
        401, {"error": "access_denied", "error_description": "access token invalid"})


def test_userinfo_accepts_tokens_without_the_zitadel_audience(
    emulator: Emulator, admin_key: dict[str, Any]
) -> None:
    token = access_token(emulator.issuer, admin_key, scope="openid profile")
    response = httpx.get(f"{emulator.issuer}/oidc/v1/userinfo",
                         headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert response.json()["sub"] == admin_key["userId"]


def test_introspection(emulator: Emulator, admin_key: dict[str, Any], admin: Zitadel) -> None:
    app = emulator.introspection_client
    url = f"{emulator.issuer}/oauth/v2/introspect"
    auth = (app["client_id"], app["client_secret"])
    scoped = access_token(emulator.issuer, admin_key,
                          scope=f"openid urn:zitadel:iam:org:project:id:{app['project_id']}:aud")
    active = httpx.post(url, data={"token": scoped}, auth=auth).json()
    assert active["active"] is True
    assert active["sub"] == admin_key["userId"]
    assert app["project_id"] in active["aud"]

    other_audience = access_token(emulator.issuer, admin_key)
    assert httpx.post(url, data={"token": other_audience}, auth=auth).json() == {"active": False}
    pat = admin.users.add_personal_access_token(UserServiceAddPersonalAccessTokenRequest(
        userId=emulator.user_ids["svc-reports"], expirationDate=in_days(3)))
    assert httpx.post(url, data={"token": pat.token}, auth=auth).json()["active"] is True
    assert httpx.post(url, data={"token": "bogus"}, auth=auth).json() == {"active": False}

    anonymous = httpx.post(url, data={"token": scoped})
    assert (anonymous.status_code, anonymous.json()["error"]) == (400, "invalid_client")
    wrong = httpx.post(url, data={"token": scoped}, auth=(app["client_id"], "nope"))
    assert (wrong.status_code, wrong.json()["error"]) == (400, "unauthorized_client")
