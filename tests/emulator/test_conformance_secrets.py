"""Machine secrets (zitadel-api.md §11, §7.3) as ZITADEL's own clients see them:
v2 ``AddSecret`` / ``RemoveSecret`` and ``machine.hasSecret`` through the
official, unmodified ``zitadel-client`` SDK; v1 ``GenerateMachineSecret`` /
``RemoveMachineSecret`` through a raw grpcio client; the ``client_credentials``
grant through the SDK's own ``with_client_credentials`` and plain HTTP, with
the projection lag of ``--lag-ms``."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import httpx
import pytest
from zitadel_client import Zitadel
from zitadel_client.exceptions import ApiError
from zitadel_client.models import (
    UserServiceAddSecretRequest,
    UserServiceGetUserByIDRequest,
    UserServiceRemoveSecretRequest,
)

from rotator.zitadel.v1.gen import zitadel_management_v1_pb2 as m
from rotator.zitadel.v1.gen import zitadel_management_v1_pb2_grpc as mgmt_grpc
from tests.emulator.support import API_SCOPE, access_token, load_key_file
from tests.emulator.test_conformance_v1 import error_detail
from tests.harness.emulator import Emulator

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SECRET_SHAPE = re.compile(r"[A-Za-z0-9]{64}")
#: Projection lag of the lagging emulator; its clock is moved past it, not waited for.
LAG_S = 30


@pytest.fixture(scope="module")
def admin(emulator: Emulator) -> Zitadel:
    return Zitadel.with_private_key(emulator.issuer, str(emulator.admin_key_file))


@pytest.fixture(autouse=True)
def _clean_emulator(emulator: Emulator) -> Iterator[None]:
    yield
    emulator.reset()


@pytest.fixture(scope="module")
def grpc_call(emulator: Emulator) -> Iterator[Callable[..., Any]]:
    channel = grpc.insecure_channel(emulator.grpc_target)
    stub = mgmt_grpc.ManagementServiceStub(channel)
    token = access_token(emulator.issuer, load_key_file(emulator.admin_key_file))

    def call(method: str, request: Any) -> Any:
        return getattr(stub, method)(request, metadata=[("authorization", f"Bearer {token}")],
                                     timeout=10)

    yield call
    channel.close()


def has_secret(admin: Zitadel, user_id: str) -> bool:
    user = admin.users.get_user_by_id(UserServiceGetUserByIDRequest(userId=user_id)).user
    return bool(user.machine.has_secret)  # proto3 JSON omits false


def token_status(issuer: str, client_id: str, secret: str) -> tuple[int, str]:
    """(HTTP status, error_description or "") of a client_credentials request
    (client_secret_basic, as the rotator sends it)."""
    response = httpx.post(f"{issuer}/oauth/v2/token",
                          data={"grant_type": "client_credentials", "scope": API_SCOPE},
                          auth=(client_id, secret))
    return response.status_code, response.json().get("error_description", "")


def sdk_works(issuer: str, client_id: str, secret: str, user_id: str) -> bool:
    """Whether the SDK, signed in with client credentials, can call the API."""
    sdk = Zitadel.with_client_credentials(issuer, client_id, secret)
    try:
        sdk.users.get_user_by_id(UserServiceGetUserByIDRequest(userId=user_id))
    except Exception:  # the SDK's token exchange raises its own types
        return False
    return True


# --- v2 through the SDK ----------------------------------------------------------------


def test_add_secret_regenerates_the_one_secret(emulator: Emulator, admin: Zitadel) -> None:
    user = emulator.add_user("svc-secret-v2")
    assert has_secret(admin, user["id"]) is False
    first = admin.users.add_secret(UserServiceAddSecretRequest(userId=user["id"]))
    assert SECRET_SHAPE.fullmatch(first.client_secret)
    assert first.creation_date is not None
    assert has_secret(admin, user["id"]) is True
    second = admin.users.add_secret(UserServiceAddSecretRequest(userId=user["id"]))
    assert second.client_secret != first.client_secret
    # the user name and the login name are both client ids (§7.3)
    assert token_status(emulator.issuer, "svc-secret-v2", second.client_secret)[0] == 200
    assert token_status(emulator.issuer, user["login_name"], second.client_secret)[0] == 200
    assert token_status(emulator.issuer, "svc-secret-v2", first.client_secret) == (
        400, "Errors.User.Machine.Secret.Invalid")
    assert sdk_works(emulator.issuer, "svc-secret-v2", second.client_secret, user["id"])


def test_remove_secret_then_removing_again_is_a_failed_precondition(
    emulator: Emulator, admin: Zitadel
) -> None:
    user = emulator.add_user("svc-secret-rm")
    added = admin.users.add_secret(UserServiceAddSecretRequest(userId=user["id"]))
    removed = admin.users.remove_secret(UserServiceRemoveSecretRequest(userId=user["id"]))
    assert removed.deletion_date is not None
    assert has_secret(admin, user["id"]) is False
    assert token_status(emulator.issuer, "svc-secret-rm", added.client_secret) == (
        400, "Errors.User.Machine.Secret.NotExisting")
    with pytest.raises(ApiError) as again:
        admin.users.remove_secret(UserServiceRemoveSecretRequest(userId=user["id"]))
    assert again.value.code == 400
    assert again.value.response_body["code"] == "failed_precondition"
    assert "COMMAND-coi82n" in again.value.response_body["message"]
    assert again.value.response_body["details"][0]["debug"]["id"] == "COMMAND-coi82n"


def test_secrets_are_for_machine_users_only(emulator: Emulator, admin: Zitadel) -> None:
    human = emulator.add_user("jane-secret", type="human")
    for call in (lambda: admin.users.add_secret(UserServiceAddSecretRequest(userId=human["id"])),
                 lambda: admin.users.remove_secret(
                     UserServiceRemoveSecretRequest(userId=human["id"]))):
        with pytest.raises(ApiError) as refused:
            call()
        assert refused.value.response_body["code"] == "failed_precondition"


def test_secret_requests_are_validated_after_authentication(
    emulator: Emulator, admin: Zitadel
) -> None:
    with pytest.raises(ApiError) as empty:
        admin.users.add_secret(UserServiceAddSecretRequest(userId=""))
    assert empty.value.response_body == {
        "code": "invalid_argument",
        "message": "invalid AddSecretRequest.UserId: value length must be between 1 and 200 "
                   "runes, inclusive"}
    anonymous = httpx.post(f"{emulator.issuer}/zitadel.user.v2.UserService/AddSecret",
                           json={"userId": ""})
    assert anonymous.status_code == 401


def test_a_caller_without_rights_cannot_regenerate_anothers_secret(
    emulator: Emulator, admin: Zitadel
) -> None:
    target = emulator.add_user("svc-secret-target")
    stranger = emulator.add_user("svc-secret-stranger", key=True)
    sdk = Zitadel.with_access_token(emulator.issuer,
                                    access_token(emulator.issuer, stranger["key_file"]))
    with pytest.raises(ApiError) as refused:
        sdk.users.add_secret(UserServiceAddSecretRequest(userId=target["id"]))
    assert refused.value.code in (403, 404)  # no membership at all is NotFound (§8)
    assert has_secret(admin, target["id"]) is False
    # a machine user may regenerate its own secret (v2: self is always allowed)
    own = sdk.users.add_secret(UserServiceAddSecretRequest(userId=stranger["id"]))
    assert SECRET_SHAPE.fullmatch(own.client_secret)


def test_secret_calls_take_fault_rules_by_their_names(emulator: Emulator, admin: Zitadel) -> None:
    user = emulator.add_user("svc-secret-fault")
    emulator.set_faults(rules=[{"method": "AddSecret", "code": "unavailable", "count": 1}])
    with pytest.raises(ApiError) as failed:
        admin.users.add_secret(UserServiceAddSecretRequest(userId=user["id"]))
    assert failed.value.code == 503
    assert has_secret(admin, user["id"]) is False


# --- v1 over gRPC --------------------------------------------------------------------


def test_generate_machine_secret_answers_client_id_and_secret(
    emulator: Emulator, admin: Zitadel, grpc_call: Callable[..., Any]
) -> None:
    user = emulator.add_user("svc-secret-v1")
    first = grpc_call("GenerateMachineSecret", m.GenerateMachineSecretRequest(user_id=user["id"]))
    assert first.client_id == "svc-secret-v1"
    assert SECRET_SHAPE.fullmatch(first.client_secret)
    assert first.details.HasField("creation_date")
    assert first.details.resource_owner
    second = grpc_call("GenerateMachineSecret", m.GenerateMachineSecretRequest(user_id=user["id"]))
    assert token_status(emulator.issuer, second.client_id, second.client_secret)[0] == 200
    assert token_status(emulator.issuer, first.client_id, first.client_secret)[0] == 400
    assert has_secret(admin, user["id"]) is True

    removed = grpc_call("RemoveMachineSecret", m.RemoveMachineSecretRequest(user_id=user["id"]))
    assert removed.details.HasField("change_date")
    with pytest.raises(grpc.RpcError) as again:
        grpc_call("RemoveMachineSecret", m.RemoveMachineSecretRequest(user_id=user["id"]))
    call = again.value
    assert isinstance(call, grpc.Call)
    assert call.code() == grpc.StatusCode.FAILED_PRECONDITION
    detail = error_detail(call)
    assert detail is not None
    assert detail[2] == "COMMAND-coi82n"


def test_v1_secret_calls_are_scoped_to_the_ctx_org(
    emulator: Emulator, grpc_call: Callable[..., Any]
) -> None:
    ledger = emulator.user_ids["svc-ledger"]  # globex; the admin's ctx org is acme
    with pytest.raises(grpc.RpcError) as refused:
        grpc_call("GenerateMachineSecret", m.GenerateMachineSecretRequest(user_id=ledger))
    assert isinstance(refused.value, grpc.Call)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as empty:
        grpc_call("RemoveMachineSecret", m.RemoveMachineSecretRequest(user_id=""))
    assert isinstance(empty.value, grpc.Call)
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# --- the client_credentials grant with projection lag ----------------------------------


def test_within_the_lag_the_old_secret_passes_and_the_new_one_fails(
    emulator_factory: Callable[..., Emulator]
) -> None:
    lagging = emulator_factory(lag_ms=LAG_S * 1000)
    admin = Zitadel.with_private_key(lagging.issuer, str(lagging.admin_key_file))
    user = lagging.add_user("svc-lagging")
    old = admin.users.add_secret(UserServiceAddSecretRequest(userId=user["id"])).client_secret
    lagging.advance(LAG_S + 1)
    # a token issued with the old secret before the regeneration
    before = httpx.post(f"{lagging.issuer}/oauth/v2/token", auth=("svc-lagging", old),
                        data={"grant_type": "client_credentials", "scope": API_SCOPE})
    token = before.json()["access_token"]

    new = admin.users.add_secret(UserServiceAddSecretRequest(userId=user["id"])).client_secret
    assert token_status(lagging.issuer, "svc-lagging", old)[0] == 200
    assert token_status(lagging.issuer, "svc-lagging", new) == (
        400, "Errors.User.Machine.Secret.Invalid")
    assert sdk_works(lagging.issuer, "svc-lagging", old, user["id"])
    assert not sdk_works(lagging.issuer, "svc-lagging", new, user["id"])

    lagging.advance(LAG_S + 1)  # the projection caught up: both flip
    assert token_status(lagging.issuer, "svc-lagging", new)[0] == 200
    assert token_status(lagging.issuer, "svc-lagging", old)[0] == 400
    assert sdk_works(lagging.issuer, "svc-lagging", new, user["id"])

    # the token issued before the regeneration stays valid (until its 12 h are over)
    info = httpx.get(f"{lagging.issuer}/oidc/v1/userinfo",
                     headers={"Authorization": f"Bearer {token}"})
    assert (info.status_code, info.json()["sub"]) == (200, user["id"])
