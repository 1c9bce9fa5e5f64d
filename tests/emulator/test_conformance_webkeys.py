"""Web keys (§12, §7.6): the emulator's ``zitadel.webkey.v2.WebKeyService`` as
the official ``zitadel-client`` SDK sees it, over Connect binary and gRPC on
the one port, and the tokens it signs as a relying party (PyJWT against the
served JWKS) sees them."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import httpx
import jwt
import pytest
from zitadel_client import Zitadel
from zitadel_client.exceptions import ApiError
from zitadel_client.models import (
    WebKeyServiceActivateWebKeyRequest,
    WebKeyServiceCreateWebKeyRequest,
    WebKeyServiceDeleteWebKeyRequest,
    WebKeyServiceECDSA,
    WebKeyServiceECDSACurve,
    WebKeyServiceRSA,
    WebKeyServiceRSABits,
    WebKeyServiceRSAHasher,
    WebKeyServiceState,
)

from tests.emulator import wire
from tests.emulator.support import sign_assertion, token_request
from tests.harness.emulator import Emulator

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SERVICE = "zitadel.webkey.v2.WebKeyService"


@pytest.fixture(scope="module")
def iam_owner(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    user = emulator.add_user("wk-iam-owner", roles=["IAM_OWNER"], key=True)
    path = tmp_path_factory.mktemp("wk") / "iam-owner.json"
    path.write_text(json.dumps(user["key_file"]))
    return {**user, "key_path": path}


@pytest.fixture(scope="module")
def sdk(emulator: Emulator, iam_owner: dict[str, Any]) -> Zitadel:
    return Zitadel.with_private_key(emulator.issuer, str(iam_owner["key_path"]))


@pytest.fixture(autouse=True)
def _clean(emulator: Emulator) -> Iterator[None]:
    yield
    emulator.reset()


def listed(sdk: Zitadel) -> dict[str, WebKeyServiceState]:
    keys = sdk.webkeys.list_web_keys({}).web_keys or []
    return {str(k.id): WebKeyServiceState(k.state) for k in keys}


def api_error(call: Callable[[], Any]) -> ApiError:
    with pytest.raises(ApiError) as info:
        call()
    return info.value


def jwks(issuer: str) -> httpx.Response:
    return httpx.get(f"{issuer}/oauth/v2/keys")


def id_token(issuer: str, key_file: dict[str, Any]) -> str:
    answer = token_request(issuer, sign_assertion(key_file, issuer),
                           scope="openid urn:zitadel:iam:org:project:id:zitadel:aud")
    assert answer.status_code == 200, answer.text
    return str(answer.json()["id_token"])


def verify(issuer: str, token: str, audience: str) -> dict[str, Any]:
    """What a relying party does: the kid's key from the JWKS, then PyJWT."""
    client = jwt.PyJWKClient(f"{issuer}/oauth/v2/keys", cache_jwk_set=False)
    key = client.get_signing_key_from_jwt(token)
    alg = jwt.get_unverified_header(token)["alg"]
    return dict(jwt.decode(token, key, algorithms=[alg], audience=audience, issuer=issuer))


def test_a_fresh_instance_has_two_keys_one_active(
    emulator_factory: Callable[..., Emulator],
) -> None:
    fresh = emulator_factory()
    owner = fresh.add_user("wk-fresh", roles=["IAM_OWNER"], key=True)
    keys = httpx.post(f"{fresh.issuer}/{SERVICE}/ListWebKeys", json={},
                      headers={"Authorization": "Bearer " + _token(fresh, owner)}).json()
    states = sorted(k["state"] for k in keys["webKeys"])
    assert states == ["STATE_ACTIVE", "STATE_INITIAL"]
    assert all(k["rsa"] == {"bits": "RSA_BITS_2048", "hasher": "RSA_HASHER_SHA256"}
               for k in keys["webKeys"])
    served = jwks(fresh.issuer)
    assert served.headers["cache-control"] == "max-age=300, must-revalidate"
    assert {k["kid"] for k in served.json()["keys"]} == {k["id"] for k in keys["webKeys"]}


def _token(emu: Emulator, user: dict[str, Any]) -> str:
    answer = token_request(emu.issuer, sign_assertion(user["key_file"], emu.issuer))
    return str(answer.json()["access_token"])


@pytest.mark.parametrize("request_", [
    pytest.param(WebKeyServiceCreateWebKeyRequest(), id="default RSA-2048/SHA256"),
    pytest.param(WebKeyServiceCreateWebKeyRequest(rsa=WebKeyServiceRSA(
        bits=WebKeyServiceRSABits.RSA_BITS_3072, hasher=WebKeyServiceRSAHasher.RSA_HASHER_SHA384)),
        id="RSA-3072/SHA384"),
    pytest.param(WebKeyServiceCreateWebKeyRequest(rsa=WebKeyServiceRSA(
        bits=WebKeyServiceRSABits.RSA_BITS_4096, hasher=WebKeyServiceRSAHasher.RSA_HASHER_SHA512)),
        id="RSA-4096/SHA512"),
    pytest.param(WebKeyServiceCreateWebKeyRequest(ecdsa=WebKeyServiceECDSA(
        curve=WebKeyServiceECDSACurve.ECDSA_CURVE_P256)), id="ECDSA P-256"),
    pytest.param(WebKeyServiceCreateWebKeyRequest(ecdsa=WebKeyServiceECDSA(
        curve=WebKeyServiceECDSACurve.ECDSA_CURVE_P384)), id="ECDSA P-384"),
    pytest.param(WebKeyServiceCreateWebKeyRequest(ecdsa=WebKeyServiceECDSA(
        curve=WebKeyServiceECDSACurve.ECDSA_CURVE_P512)), id="ECDSA P-521"),
    pytest.param(WebKeyServiceCreateWebKeyRequest(ed25519={}), id="Ed25519"),
])
def test_every_algorithm_signs_tokens_a_relying_party_verifies(
    emulator: Emulator, sdk: Zitadel, iam_owner: dict[str, Any],
    request_: WebKeyServiceCreateWebKeyRequest,
) -> None:
    created = sdk.webkeys.create_web_key(request_)
    assert listed(sdk)[str(created.id)] is WebKeyServiceState.STATE_INITIAL
    # published before it signs: a relying party can fetch it already
    assert str(created.id) in {k["kid"] for k in jwks(emulator.issuer).json()["keys"]}
    sdk.webkeys.activate_web_key(WebKeyServiceActivateWebKeyRequest(id=created.id))

    token = id_token(emulator.issuer, iam_owner["key_file"])
    assert jwt.get_unverified_header(token)["kid"] == created.id
    claims = verify(emulator.issuer, token, iam_owner["id"])
    assert claims["sub"] == iam_owner["id"]

    # a JWT access token is signed by the same key
    jwt_user = emulator.add_user(f"wk-jwt-{created.id}", key=True, access_token_type="JWT")
    access = _token(emulator, jwt_user)
    assert jwt.get_unverified_header(access)["kid"] == created.id
    assert verify(emulator.issuer, access, jwt_user["id"])["sub"] == jwt_user["id"]


def test_activation_deactivates_the_previous_key_and_can_be_undone(sdk: Zitadel) -> None:
    (before,) = [k for k, s in listed(sdk).items() if s is WebKeyServiceState.STATE_ACTIVE]
    new = str(sdk.webkeys.create_web_key(WebKeyServiceCreateWebKeyRequest()).id)
    sdk.webkeys.activate_web_key(WebKeyServiceActivateWebKeyRequest(id=new))
    states = listed(sdk)
    assert states[new] is WebKeyServiceState.STATE_ACTIVE
    assert states[before] is WebKeyServiceState.STATE_INACTIVE
    assert list(states.values()).count(WebKeyServiceState.STATE_ACTIVE) == 1
    # activating the active key is a successful no-op
    sdk.webkeys.activate_web_key(WebKeyServiceActivateWebKeyRequest(id=new))
    assert listed(sdk) == states
    # an INACTIVE key can be activated again (rollback)
    sdk.webkeys.activate_web_key(WebKeyServiceActivateWebKeyRequest(id=before))
    assert listed(sdk)[before] is WebKeyServiceState.STATE_ACTIVE
    assert listed(sdk)[new] is WebKeyServiceState.STATE_INACTIVE


def test_delete_rules(emulator: Emulator, sdk: Zitadel) -> None:
    (active,) = [k for k, s in listed(sdk).items() if s is WebKeyServiceState.STATE_ACTIVE]
    err = api_error(lambda: sdk.webkeys.delete_web_key(
        WebKeyServiceDeleteWebKeyRequest(id=active)))
    assert err.code == 400
    body = err.response_body
    assert body["code"] == "failed_precondition"
    assert body["message"] == "Errors.WebKey.ActiveDelete (COMMAND-Chai1)"

    doomed = str(sdk.webkeys.create_web_key(WebKeyServiceCreateWebKeyRequest()).id)
    deleted = sdk.webkeys.delete_web_key(WebKeyServiceDeleteWebKeyRequest(id=doomed))
    assert deleted.deletion_date is not None
    assert doomed not in listed(sdk)
    assert doomed not in {k["kid"] for k in jwks(emulator.issuer).json()["keys"]}
    # deleting a removed or unknown key succeeds, without a date
    again = sdk.webkeys.delete_web_key(WebKeyServiceDeleteWebKeyRequest(id=doomed))
    assert again.deletion_date is None
    sdk.webkeys.delete_web_key(WebKeyServiceDeleteWebKeyRequest(id="404404404"))
    # a removed key cannot come back
    err = api_error(lambda: sdk.webkeys.activate_web_key(
        WebKeyServiceActivateWebKeyRequest(id=doomed)))
    assert err.code == 404
    assert err.response_body["message"] == "Errors.WebKey.NotFound (COMMAND-teiG3)"


def test_web_keys_are_for_iam_owners_only(emulator: Emulator) -> None:
    org_owner = Zitadel.with_private_key(emulator.issuer, str(emulator.admin_key_file))
    err = api_error(lambda: org_owner.webkeys.list_web_keys({}))
    assert err.code == 403
    err = api_error(lambda: org_owner.webkeys.create_web_key(
        WebKeyServiceCreateWebKeyRequest()))
    assert err.code == 403


def test_an_ecdsa_key_needs_a_curve(emulator: Emulator, iam_owner: dict[str, Any]) -> None:
    answer = httpx.post(f"{emulator.issuer}/{SERVICE}/CreateWebKey", json={"ecdsa": {}},
                        headers={"Authorization": "Bearer " + _token(emulator, iam_owner)})
    assert answer.status_code == 400
    assert answer.json() == {
        "code": "invalid_argument",
        "message": "invalid CreateWebKeyRequest.Ecdsa: embedded message failed validation | "
                   "caused by: invalid ECDSA.Curve: value must not be in list [0]"}


def test_connect_binary_and_grpc_on_the_one_port(
    emulator: Emulator, iam_owner: dict[str, Any]
) -> None:
    token = _token(emulator, iam_owner)
    request = wire.message_class("zitadel.webkey.v2.ListWebKeysRequest")()
    response_class = wire.message_class("zitadel.webkey.v2.ListWebKeysResponse")
    binary = httpx.post(f"{emulator.issuer}/{SERVICE}/ListWebKeys",
                        content=request.SerializeToString(),
                        headers={"Authorization": "Bearer " + token,
                                 "Content-Type": "application/proto"})
    assert binary.status_code == 200
    over_connect = response_class.FromString(binary.content)
    with grpc.insecure_channel(emulator.issuer_target) as channel:
        call = channel.unary_unary(f"/{SERVICE}/ListWebKeys",
                                   request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=response_class.FromString)
        over_grpc = call(request, metadata=[("authorization", "Bearer " + token)])
        active = [k.id for k in over_grpc.web_keys if k.state == 2]
        assert len(active) == 1
        assert {k.id for k in over_grpc.web_keys} == {k.id for k in over_connect.web_keys}
        delete = channel.unary_unary(
            f"/{SERVICE}/DeleteWebKey", request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=wire.message_class(
                "zitadel.webkey.v2.DeleteWebKeyResponse").FromString)
        with pytest.raises(grpc.RpcError) as info:
            delete(wire.message_class("zitadel.webkey.v2.DeleteWebKeyRequest")(id=active[0]),
                   metadata=[("authorization", "Bearer " + token)])
        assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION

