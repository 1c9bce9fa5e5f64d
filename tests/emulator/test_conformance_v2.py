"""The emulator's v2 UserService as the official, unmodified ``zitadel-client``
SDK sees it (Connect JSON, §4-§6, §8 of zitadel-api.md)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from zitadel_client import Zitadel
from zitadel_client.exceptions import ApiError
from zitadel_client.models import (
    UserServiceAddKeyRequest,
    UserServiceAddPersonalAccessTokenRequest,
    UserServiceDeleteUserMetadataRequest,
    UserServiceGetUserByIDRequest,
    UserServiceIDFilter,
    UserServiceKeysSearchFilter,
    UserServiceListKeysRequest,
    UserServiceListPersonalAccessTokensRequest,
    UserServiceListQuery,
    UserServiceListUserMetadataRequest,
    UserServiceListUsersRequest,
    UserServiceLoginNameQuery,
    UserServiceMetadata,
    UserServiceMetadataKeyFilter,
    UserServiceMetadataSearchFilter,
    UserServiceOrganizationIdQuery,
    UserServicePaginationRequest,
    UserServicePersonalAccessTokensSearchFilter,
    UserServiceRemoveKeyRequest,
    UserServiceRemovePersonalAccessTokenRequest,
    UserServiceSearchQuery,
    UserServiceSetUserMetadataRequest,
    UserServiceTimestampFilter,
    UserServiceTypeQuery,
)

from tests.emulator.support import (
    access_token,
    connect,
    in_days,
    key_file_for,
    local_rsa_key,
)
from tests.harness.emulator import Emulator

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# --- fixtures and helpers ----------------------------------------------------------


@pytest.fixture(scope="module")
def admin(emulator: Emulator) -> Zitadel:
    """rotator-admin (ORG_OWNER of acme) through its server-generated key file."""
    return Zitadel.with_private_key(emulator.issuer, str(emulator.admin_key_file))


@pytest.fixture
def ids(emulator: Emulator) -> dict[str, str]:
    return emulator.user_ids


@pytest.fixture(autouse=True)
def _clean_emulator(emulator: Emulator) -> Iterator[None]:
    yield
    emulator.reset()


def api_error(call: Callable[[], Any]) -> ApiError:
    with pytest.raises(ApiError) as info:
        call()
    return info.value


def pat_client(emulator: Emulator, admin: Zitadel, user_id: str, days: float = 30) -> Zitadel:
    pat = admin.users.add_personal_access_token(
        UserServiceAddPersonalAccessTokenRequest(userId=user_id, expirationDate=in_days(days)))
    return Zitadel.with_access_token(emulator.issuer, pat.token)


def add_key(client: Zitadel, user_id: str, days: float = 30, **extra: Any) -> Any:
    return client.users.add_key(
        UserServiceAddKeyRequest(userId=user_id, expirationDate=in_days(days), **extra))


def write_key_file(tmp_path: Path, content: dict[str, Any] | str) -> str:
    path = tmp_path / "key.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def error_detail_class() -> Any:
    """zitadel.v1.ErrorDetail built from its descriptor (id=1, message=2), to
    decode Connect error details independently of the emulator's encoder."""
    proto = descriptor_pb2.FileDescriptorProto(name="emu_test_message.proto",
                                               package="zitadel.v1", syntax="proto3")
    msg = proto.message_type.add(name="ErrorDetail")
    for number, name in ((1, "id"), (2, "message")):
        msg.field.add(name=name, number=number,
                      type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                      label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("zitadel.v1.ErrorDetail"))


# --- AddKey -------------------------------------------------------------------------


def test_add_key_returns_a_zitadel_key_file_that_works_at_the_token_endpoint(
    emulator: Emulator, admin: Zitadel, ids: dict[str, str], tmp_path: Path
) -> None:
    expiration = datetime(2031, 2, 3, 4, 5, 6, 789000, tzinfo=UTC)
    response = admin.users.add_key(
        UserServiceAddKeyRequest(userId=ids["svc-billing"], expirationDate=expiration))

    content = base64.b64decode(response.key_content).decode()
    key_file = json.loads(content)
    assert list(key_file) == ["type", "keyId", "key", "expirationDate", "userId"]
    assert key_file["type"] == "serviceaccount"
    assert key_file["keyId"] == response.key_id
    assert key_file["userId"] == ids["svc-billing"]
    assert key_file["expirationDate"] == "2031-02-03T04:05:06.789Z"
    assert key_file["key"].startswith("-----BEGIN RSA PRIVATE KEY-----\n")
    private = serialization.load_pem_private_key(key_file["key"].encode(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    assert private.key_size == 2048
    assert response.creation_date is not None

    as_billing = Zitadel.with_private_key(emulator.issuer, write_key_file(tmp_path, content))
    me = as_billing.users.get_user_by_id(UserServiceGetUserByIDRequest(userId=ids["svc-billing"]))
    assert me.user.username == "svc-billing"


def test_add_key_with_a_local_public_key_returns_no_key_content(
    emulator: Emulator, admin: Zitadel, ids: dict[str, str], tmp_path: Path
) -> None:
    private, public_pem = local_rsa_key()
    response = add_key(admin, ids["svc-reports"],
                       publicKey=base64.b64encode(public_pem.encode()).decode())
    assert response.key_content is None
    assert response.key_id

    key_file = key_file_for(private, response.key_id, ids["svc-reports"])
    client = Zitadel.with_private_key(emulator.issuer, write_key_file(tmp_path, key_file))
    me = client.users.get_user_by_id(UserServiceGetUserByIDRequest(userId=ids["svc-reports"]))
    assert me.user.user_id == ids["svc-reports"]


@pytest.mark.parametrize(
    "public_key",
    [
        pytest.param("pkcs1", id="PKCS#1 RSA PUBLIC KEY"),
        pytest.param("der", id="raw DER"),
        pytest.param("garbage", id="garbage"),
    ],
)
def test_add_key_rejects_a_public_key_that_is_not_pem_pkix(
    admin: Zitadel, ids: dict[str, str], public_key: str
) -> None:
    key, _ = local_rsa_key()
    material = {
        "pkcs1": key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.PKCS1),
        "der": key.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo),
        "garbage": b"not a key",
    }[public_key]
    err = api_error(lambda: add_key(admin, ids["svc-billing"],
                                    publicKey=base64.b64encode(material).decode()))
    assert err.code == 400
    assert err.response_body["code"] == "invalid_argument"
    assert err.response_body["message"] == (
        "Public key is not a valid RSA public key in PKIX format with PEM encoding "
        "(COMMAND-5F3h1)")


def test_add_key_without_expiration_is_rejected_by_validation(
    admin: Zitadel, ids: dict[str, str]
) -> None:
    err = api_error(
        lambda: admin.users.add_key(UserServiceAddKeyRequest(userId=ids["svc-billing"])))
    assert err.code == 400
    assert err.response_body == {
        "code": "invalid_argument",
        "message": "invalid AddKeyRequest.ExpirationDate: value is required",
    }


def test_add_key_with_past_expiration_is_rejected(admin: Zitadel, ids: dict[str, str]) -> None:
    err = api_error(lambda: add_key(admin, ids["svc-billing"], days=-1))
    assert err.code == 400
    assert err.response_body["code"] == "invalid_argument"
    assert err.response_body["message"] == "Errors.AuthNKey.ExpireBeforeNow (DOMAIN-dv3t5)"


def test_a_naive_datetime_is_rejected_as_invalid_argument(
    admin: Zitadel, ids: dict[str, str]
) -> None:
    naive = datetime.now() + timedelta(days=3)  # naive on purpose
    err = api_error(lambda: admin.users.add_key(
        UserServiceAddKeyRequest(userId=ids["svc-billing"], expirationDate=naive)))
    assert err.code == 400
    assert err.response_body["code"] == "invalid_argument"


def test_expiration_is_stored_exactly_to_the_nanosecond(
    emulator: Emulator, ids: dict[str, str]
) -> None:
    token = access_token(emulator.issuer, json.loads(emulator.admin_key_file.read_text()))
    added = connect(emulator.issuer, "AddKey", {
        "user_id": ids["svc-billing"],  # proto names are accepted too
        "expirationDate": "2032-06-07T08:09:10.123456789+02:00",
    }, token)
    assert added.status_code == 200, added.text
    listed = connect(emulator.issuer, "ListKeys", {
        "filters": [{"keyIdFilter": {"id": added.json()["keyId"]}}]}, token)
    (key,) = listed.json()["result"]
    assert key["expirationDate"] == "2032-06-07T06:09:10.123456789Z"
    assert listed.json()["pagination"]["totalResult"] == "1"


def test_add_key_for_an_unknown_or_human_user_fails_precondition(
    emulator: Emulator, admin: Zitadel
) -> None:
    human = emulator.add_user("jane", type="human", given_name="Jane", family_name="Doe")
    for user_id in ("123456789", human["id"]):
        err = api_error(lambda uid=user_id: add_key(admin, uid))
        assert err.code == 400
        assert err.response_body["code"] == "failed_precondition"
        assert err.response_body["message"] == "User could not be found (COMMAND-bnipwm1)"


def test_error_details_carry_a_zitadel_error_detail(admin: Zitadel) -> None:
    err = api_error(lambda: add_key(admin, "123456789"))
    (detail,) = err.response_body["details"]
    assert detail["type"] == "zitadel.v1.ErrorDetail"
    assert detail["debug"] == {"id": "COMMAND-bnipwm1", "message": "User could not be found"}
    raw = base64.b64decode(detail["value"] + "=" * (-len(detail["value"]) % 4))
    decoded = error_detail_class().FromString(raw)
    assert (decoded.id, decoded.message) == ("COMMAND-bnipwm1", "User could not be found")


# --- authorization (§3, §6.4) -------------------------------------------------------


def test_a_machine_user_manages_its_own_keys_without_any_role(
    emulator: Emulator, admin: Zitadel, ids: dict[str, str]
) -> None:
    noperm = pat_client(emulator, admin, ids["svc-noperm"])
    own = add_key(noperm, ids["svc-noperm"])
    listed = noperm.users.list_keys(UserServiceListKeysRequest())
    assert {k.user_id for k in listed.result} == {ids["svc-noperm"]}
    assert own.key_id in {k.id for k in listed.result}
    noperm.users.remove_key(UserServiceRemoveKeyRequest(userId=ids["svc-noperm"],
                                                        keyId=own.key_id))


def test_a_caller_without_memberships_gets_membership_not_found(
    emulator: Emulator, admin: Zitadel, ids: dict[str, str]
) -> None:
    noperm = pat_client(emulator, admin, ids["svc-noperm"])
    for call in (
        lambda: add_key(noperm, ids["svc-billing"]),
        lambda: noperm.users.add_personal_access_token(UserServiceAddPersonalAccessTokenRequest(
            userId=ids["svc-billing"], expirationDate=in_days(1))),
        lambda: noperm.users.get_user_by_id(UserServiceGetUserByIDRequest(
            userId=ids["svc-billing"])),
    ):
        err = api_error(call)
        assert err.code == 404
        assert err.response_body["code"] == "not_found"
        assert err.response_body["message"] == "membership not found (AUTHZ-cdgFk)"
    # lists are filtered instead of refused
    assert noperm.users.list_keys(UserServiceListKeysRequest(filters=[
        UserServiceKeysSearchFilter(userIdFilter=UserServiceIDFilter(id=ids["svc-billing"]))
    ])).result is None


def test_a_role_without_user_write_is_permission_denied(
    emulator: Emulator, admin: Zitadel, ids: dict[str, str]
) -> None:
    viewer = emulator.add_user("svc-viewer", roles=["ORG_OWNER_VIEWER"])
    client = pat_client(emulator, admin, viewer["id"])
    err = api_error(lambda: add_key(client, ids["svc-billing"]))
    assert err.code == 403
    assert err.response_body["code"] == "permission_denied"
    assert err.response_body["message"] == "No matching permissions found (AUTH-AWfge)"
    # ... but user.read lets it see other users' keys
    add_key(admin, ids["svc-billing"])
    seen = client.users.list_keys(UserServiceListKeysRequest()).result or []
    assert ids["svc-billing"] in {k.user_id for k in seen}


def test_an_org_owner_cannot_touch_another_orgs_users(
    emulator: Emulator, admin: Zitadel, ids: dict[str, str]
) -> None:
    err = api_error(lambda: add_key(admin, ids["svc-ledger"]))
    assert err.code == 404
    assert err.response_body["message"] == "membership not found (AUTHZ-cdgFk)"


def test_an_instance_owner_manages_every_org(
    emulator: Emulator, admin: Zitadel, ids: dict[str, str]
) -> None:
    iam = emulator.add_user("svc-iam", roles=["IAM_OWNER"])
    client = pat_client(emulator, admin, iam["id"])
    added = add_key(client, ids["svc-ledger"])
    listed = client.users.list_keys(UserServiceListKeysRequest(filters=[
        UserServiceKeysSearchFilter(keyIdFilter=UserServiceIDFilter(id=added.key_id))]))
    (key,) = listed.result
    assert key.organization_id == emulator.org_ids["globex"]


def test_a_nonexistent_user_fails_precondition_even_without_permission(
    emulator: Emulator, admin: Zitadel, ids: dict[str, str]
) -> None:
    noperm = pat_client(emulator, admin, ids["svc-noperm"])
    err = api_error(lambda: add_key(noperm, "999999"))
    assert err.response_body["code"] == "failed_precondition"


# --- authentication and audience -----------------------------------------------------


def test_missing_garbled_and_unknown_credentials_are_unauthenticated(
    emulator: Emulator, ids: dict[str, str]
) -> None:
    body = {"userId": ids["svc-billing"]}
    missing = connect(emulator.issuer, "GetUserByID", body)
    assert (missing.status_code, missing.json()) == (
        401, {"code": "unauthenticated", "message": "auth header missing"})
    garbled = connect(emulator.issuer, "GetUserByID", body,
                      headers={"Authorization": "bearer abc"})
    assert garbled.status_code == 401
    assert garbled.json()["message"] == "invalid auth header (AUTH-toLo1)"
    unknown = connect(emulator.issuer, "GetUserByID", body, token="abc")
    assert unknown.status_code == 401
    assert unknown.json()["message"] == "Errors.Token.Invalid (AUTH-7fs1e)"


def test_a_token_without_the_zitadel_audience_is_refused_by_the_api(
    emulator: Emulator, ids: dict[str, str]
) -> None:
    key_file = json.loads(emulator.admin_key_file.read_text())
    token = access_token(emulator.issuer, key_file, scope="openid profile")
    refused = connect(emulator.issuer, "GetUserByID", {"userId": ids["svc-billing"]}, token)
    assert refused.status_code == 401
    assert refused.json()["message"] == "Errors.Token.Invalid (AUTH-7fs1e)"


def test_an_unknown_org_header_is_permission_denied(
    emulator: Emulator, ids: dict[str, str]
) -> None:
    token = access_token(emulator.issuer, json.loads(emulator.admin_key_file.read_text()))
    response = connect(emulator.issuer, "GetUserByID", {"userId": ids["svc-billing"]}, token,
                       headers={"x-zitadel-orgid": "42"})
    assert response.status_code == 403
    assert response.json()["message"] == "Organisation doesn't exist (AUTH-Bs7Ds)"


def test_authentication_comes_before_validation(emulator: Emulator) -> None:
    response = connect(emulator.issuer, "AddKey", {"userId": ""})
    assert response.status_code == 401


# --- RemoveKey / ListKeys -----------------------------------------------------------


def test_remove_key_then_removing_again_is_not_found(
    admin: Zitadel, ids: dict[str, str]
) -> None:
    added = add_key(admin, ids["svc-billing"])
    removed = admin.users.remove_key(UserServiceRemoveKeyRequest(userId=ids["svc-billing"],
                                                                 keyId=added.key_id))
    assert removed.deletion_date is not None
    err = api_error(lambda: admin.users.remove_key(
        UserServiceRemoveKeyRequest(userId=ids["svc-billing"], keyId=added.key_id)))
    assert err.code == 404
    assert err.response_body["message"] == "Machine key not found (COMMAND-4m77G)"
    listed = admin.users.list_keys(UserServiceListKeysRequest(filters=[
        UserServiceKeysSearchFilter(keyIdFilter=UserServiceIDFilter(id=added.key_id))]))
    assert listed.result is None
    assert listed.pagination.total_result is None  # zero is omitted on the wire


def test_list_keys_sorts_newest_first_and_paginates(
    emulator: Emulator, admin: Zitadel
) -> None:
    user = emulator.add_user("svc-many")
    key_ids = [add_key(admin, user["id"], days=10 + i).key_id for i in range(5)]
    only_user = [UserServiceKeysSearchFilter(userIdFilter=UserServiceIDFilter(id=user["id"]))]

    newest_first = admin.users.list_keys(UserServiceListKeysRequest(filters=only_user))
    assert [k.id for k in newest_first.result] == key_ids[::-1]
    assert newest_first.pagination.total_result == "5"
    assert newest_first.pagination.applied_limit == "100"

    page = admin.users.list_keys(UserServiceListKeysRequest(
        filters=only_user, pagination=UserServicePaginationRequest(offset=1, limit=2, asc=True)))
    assert [k.id for k in page.result] == key_ids[1:3]
    assert page.pagination.total_result == "5"
    assert page.pagination.applied_limit == "2"

    before = admin.users.list_keys(UserServiceListKeysRequest(filters=[
        *only_user,
        UserServiceKeysSearchFilter(expirationDateFilter=UserServiceTimestampFilter(
            timestamp=in_days(12.5), method="TIMESTAMP_FILTER_METHOD_BEFORE")),
    ], sortingColumn="KEY_FIELD_NAME_KEY_EXPIRATION_DATE",
        pagination=UserServicePaginationRequest(asc=True)))
    assert [k.id for k in before.result] == key_ids[:3]


def test_list_limit_above_1000_is_invalid(admin: Zitadel) -> None:
    err = api_error(lambda: admin.users.list_keys(UserServiceListKeysRequest(
        pagination=UserServicePaginationRequest(limit=1001))))
    assert err.code == 400
    assert err.response_body["message"] == "Limit exceeded (QUERY-4M0fs)"


def test_an_empty_filter_is_invalid(emulator: Emulator) -> None:
    token = access_token(emulator.issuer, json.loads(emulator.admin_key_file.read_text()))
    response = connect(emulator.issuer, "ListKeys", {"filters": [{}]}, token)
    assert response.status_code == 400
    assert response.json()["message"] == (
        "invalid ListKeysRequest.Filters[0]: embedded message failed validation | "
        "caused by: invalid KeysSearchFilter.Filter: value is required")


def test_expired_keys_are_still_listed(
    emulator: Emulator, admin: Zitadel, ids: dict[str, str]
) -> None:
    added = add_key(admin, ids["svc-billing"], days=1)
    emulator.advance(2 * 86400)
    fresh_admin = Zitadel.with_private_key(emulator.issuer, str(emulator.admin_key_file))
    listed = fresh_admin.users.list_keys(UserServiceListKeysRequest(filters=[
        UserServiceKeysSearchFilter(keyIdFilter=UserServiceIDFilter(id=added.key_id))]))
    assert [k.id for k in listed.result] == [added.key_id]


# --- PATs ----------------------------------------------------------------------------


def test_pat_lifecycle_and_immediate_revocation(
    emulator: Emulator, admin: Zitadel, ids: dict[str, str]
) -> None:
    pat = admin.users.add_personal_access_token(UserServiceAddPersonalAccessTokenRequest(
        userId=ids["svc-billing"], expirationDate=in_days(30)))
    assert pat.token
    assert pat.token_id
    assert pat.creation_date
    as_billing = Zitadel.with_access_token(emulator.issuer, pat.token)
    assert as_billing.users.get_user_by_id(
        UserServiceGetUserByIDRequest(userId=ids["svc-billing"])).user.username == "svc-billing"

    listed = admin.users.list_personal_access_tokens(UserServiceListPersonalAccessTokensRequest(
        filters=[UserServicePersonalAccessTokensSearchFilter(
            tokenIdFilter=UserServiceIDFilter(id=pat.token_id))]))
    (entry,) = listed.result
    assert (entry.user_id, entry.organization_id) == (ids["svc-billing"],
                                                      emulator.org_ids["acme"])

    admin.users.remove_personal_access_token(UserServiceRemovePersonalAccessTokenRequest(
        userId=ids["svc-billing"], tokenId=pat.token_id))
    err = api_error(lambda: as_billing.users.get_user_by_id(
        UserServiceGetUserByIDRequest(userId=ids["svc-billing"])))
    assert err.code == 401
    assert err.response_body["message"] == "Errors.Token.Invalid (AUTH-7fs1e)"
    again = api_error(lambda: admin.users.remove_personal_access_token(
        UserServiceRemovePersonalAccessTokenRequest(userId=ids["svc-billing"],
                                                    tokenId=pat.token_id)))
    assert again.code == 404
    assert again.response_body["message"] == "Personal Access Token not found (COMMAND-4m77G)"


def test_pat_errors_follow_the_check_order(emulator: Emulator, admin: Zitadel) -> None:
    human = emulator.add_user("john", type="human")
    missing_exp = api_error(lambda: admin.users.add_personal_access_token(
        UserServiceAddPersonalAccessTokenRequest(userId=human["id"])))
    assert missing_exp.response_body["message"] == (
        "invalid AddPersonalAccessTokenRequest.ExpirationDate: value is required")
    wrong_type = api_error(lambda: admin.users.add_personal_access_token(
        UserServiceAddPersonalAccessTokenRequest(userId=human["id"], expirationDate=in_days(1))))
    assert wrong_type.response_body["message"] == "Not allowed for this user type (COMMAND-Df2f1)"
    unknown = api_error(lambda: admin.users.add_personal_access_token(
        UserServiceAddPersonalAccessTokenRequest(userId="4711", expirationDate=in_days(1))))
    assert unknown.response_body["message"] == "User could not be found (COMMAND-Dggw2)"


def test_a_pat_expires_with_the_emulator_clock(
    emulator: Emulator, admin: Zitadel, ids: dict[str, str]
) -> None:
    client = pat_client(emulator, admin, ids["svc-reports"], days=1)
    request = UserServiceGetUserByIDRequest(userId=ids["svc-reports"])
    assert client.users.get_user_by_id(request).user is not None
    emulator.advance(86400 + 1)
    assert api_error(lambda: client.users.get_user_by_id(request)).code == 401


# --- users -----------------------------------------------------------------------------


def test_get_user_by_id_describes_a_machine_user(
    emulator: Emulator, admin: Zitadel, ids: dict[str, str]
) -> None:
    got = admin.users.get_user_by_id(UserServiceGetUserByIDRequest(userId=ids["svc-billing"]))
    assert got.user.user_id == ids["svc-billing"]
    assert got.user.state == "USER_STATE_ACTIVE"
    assert got.user.login_names == ["svc-billing@acme.localhost"]
    assert got.user.preferred_login_name == "svc-billing@acme.localhost"
    assert got.user.machine.name == "svc-billing"
    assert got.user.machine.access_token_type is None  # BEARER = 0 is omitted
    assert got.details.resource_owner == emulator.org_ids["acme"]
    err = api_error(lambda: admin.users.get_user_by_id(UserServiceGetUserByIDRequest(userId="1")))
    assert err.code == 404


def test_list_users_shows_what_the_caller_may_read(
    emulator: Emulator, admin: Zitadel, ids: dict[str, str]
) -> None:
    machines = admin.users.list_users(UserServiceListUsersRequest(queries=[
        UserServiceSearchQuery(typeQuery=UserServiceTypeQuery(type="TYPE_MACHINE"))]))
    names = {u.username for u in machines.result}
    assert {"rotator-admin", "svc-billing", "svc-noperm"} <= names
    assert "svc-ledger" not in names  # other org
    by_login = admin.users.list_users(UserServiceListUsersRequest(queries=[
        UserServiceSearchQuery(loginNameQuery=UserServiceLoginNameQuery(
            loginName="svc-billing@acme.localhost"))]))
    assert [u.user_id for u in by_login.result] == [ids["svc-billing"]]
    assert by_login.details.total_result == "1"


def test_inventory_listings_page_machine_users_and_filter_unreadable_orgs_to_nothing(
    emulator: Emulator, admin: Zitadel, ids: dict[str, str]
) -> None:
    """What ``rotator inventory`` relies on (§4.2): a type + org query pages with
    ``total_result`` and reports ``has_secret``; an org the caller may not read
    answers an empty list (ZITADEL filters, never refuses), for users and keys."""
    acme, globex = emulator.org_ids["acme"], emulator.org_ids["globex"]
    emulator.add_user("inv-secretive", secret=True)

    def machines(org: str, offset: int, limit: int) -> Any:
        return admin.users.list_users(UserServiceListUsersRequest(
            query=UserServiceListQuery(offset=offset, limit=limit, asc=True),
            queries=[UserServiceSearchQuery(typeQuery=UserServiceTypeQuery(type="TYPE_MACHINE")),
                     UserServiceSearchQuery(organizationIdQuery=UserServiceOrganizationIdQuery(
                         organizationId=org))]))

    first, rest = machines(acme, 0, 2), machines(acme, 2, 1000)
    total = int(first.details.total_result)
    assert total == len(first.result) + len(rest.result) >= 5
    assert len(first.result) == 2
    paged = [u.user_id for u in first.result + rest.result]
    assert len(set(paged)) == total  # no user twice, none lost across pages
    secrets = {u.username: bool(u.machine.has_secret) for u in first.result + rest.result}
    assert secrets["inv-secretive"] is True
    assert secrets["svc-billing"] is False

    hidden = machines(globex, 0, 1000)  # rotator-admin has no role in globex
    assert hidden.result in (None, [])
    assert int(hidden.details.total_result or 0) == 0
    keys = admin.users.list_keys(UserServiceListKeysRequest(
        pagination=UserServicePaginationRequest(limit=1000),
        filters=[UserServiceKeysSearchFilter(organizationIdFilter=UserServiceIDFilter(id=globex))]))
    assert keys.result in (None, [])


# --- metadata ---------------------------------------------------------------------------


def test_metadata_set_list_delete(admin: Zitadel, ids: dict[str, str]) -> None:
    user = ids["svc-reports"]
    admin.users.set_user_metadata(UserServiceSetUserMetadataRequest(userId=user, metadata=[
        UserServiceMetadata(key="rotated-by", value=base64.b64encode(b"rotator").decode()),
        UserServiceMetadata(key="owner", value=base64.b64encode(b"team-a").decode()),
    ]))
    listed = admin.users.list_user_metadata(UserServiceListUserMetadataRequest(
        userId=user, filters=[UserServiceMetadataSearchFilter(
            keyFilter=UserServiceMetadataKeyFilter(
                key="rotated", method="TEXT_FILTER_METHOD_STARTS_WITH"))]))
    (entry,) = listed.metadata
    assert entry.key == "rotated-by"
    assert base64.b64decode(entry.value) == b"rotator"

    admin.users.delete_user_metadata(UserServiceDeleteUserMetadataRequest(
        userId=user, keys=["rotated-by"]))
    remaining = admin.users.list_user_metadata(UserServiceListUserMetadataRequest(userId=user))
    assert [m.key for m in remaining.metadata] == ["owner"]
    err = api_error(lambda: admin.users.delete_user_metadata(
        UserServiceDeleteUserMetadataRequest(userId=user, keys=["rotated-by"])))
    assert err.code == 404


def test_responses_follow_protojson_conventions(emulator: Emulator, ids: dict[str, str]) -> None:
    token = access_token(emulator.issuer, json.loads(emulator.admin_key_file.read_text()))
    response = connect(emulator.issuer, "ListKeys", {
        "filters": [{"userIdFilter": {"id": ids["svc-noperm"]}}]}, token)
    assert response.headers["content-type"] == "application/json"
    # nothing listed: zero values omitted, uint64 as string
    assert response.json() == {"pagination": {"appliedLimit": "100"}}


def test_a_non_rsa_pkix_key_is_accepted_but_never_verifies(
    emulator: Emulator, ids: dict[str, str]
) -> None:
    """ZITADEL quirk (§6.2): BytesToPublicKey returns nil for EC keys without error."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from tests.emulator.support import sign_assertion, token_request

    ec_pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    token = access_token(emulator.issuer, json.loads(emulator.admin_key_file.read_text()))
    added = connect(emulator.issuer, "AddKey", {
        "userId": ids["svc-reports"], "expirationDate": in_days(1).isoformat(),
        "publicKey": base64.b64encode(ec_pem).decode()}, token)
    assert added.status_code == 200
    assert "keyContent" not in added.json()
    # even a correctly signed assertion cannot match: use an RSA key under that key id
    rsa_key, _ = local_rsa_key()
    key_file = key_file_for(rsa_key, added.json()["keyId"], ids["svc-reports"])
    assert token_request(emulator.issuer, sign_assertion(key_file, emulator.issuer)) \
        .status_code == 500


def test_a_chunked_request_body_is_read(emulator: Emulator, ids: dict[str, str]) -> None:
    import httpx

    token = access_token(emulator.issuer, json.loads(emulator.admin_key_file.read_text()))
    body = json.dumps({"userId": ids["svc-billing"]}).encode()
    response = httpx.post(
        f"{emulator.issuer}/zitadel.user.v2.UserService/GetUserByID",
        content=iter([body[:5], body[5:]]),  # a generator body is sent chunked
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert response.json()["user"]["userId"] == ids["svc-billing"]
