"""The emulator's v1 ManagementService as a raw grpcio client sees it
(zitadel-api.md §1-§3, §6, §8): every method, the error codes and messages,
ErrorDetail trailers, x-zitadel-orgid scoping, v1 default expiry, and token
exchange with a key added over v1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import timestamp_pb2

from rotator.zitadel.v1.gen import zitadel_authn_v1_pb2 as authn_pb
from rotator.zitadel.v1.gen import zitadel_management_v1_pb2 as m
from rotator.zitadel.v1.gen import zitadel_management_v1_pb2_grpc as mgmt_grpc
from rotator.zitadel.v1.gen import zitadel_metadata_v1_pb2 as metadata_pb
from rotator.zitadel.v1.gen import zitadel_org_v1_pb2 as org_pb
from rotator.zitadel.v1.gen import zitadel_user_v1_pb2 as user_pb
from rotator.zitadel.v1.gen import zitadel_v1_pb2 as object_pb
from tests.emulator.support import (
    access_token,
    in_days,
    key_file_for,
    load_key_file,
    local_rsa_key,
    sign_assertion,
    token_request,
)
from tests.harness.emulator import Emulator

SERVICE = "zitadel.management.v1.ManagementService"
DEFAULT_EXPIRY = timestamp_pb2.Timestamp()
DEFAULT_EXPIRY.FromJsonString("9999-12-31T23:59:59Z")


# --- a raw client ------------------------------------------------------------------------


class Raw:
    """One gRPC channel; ``call(method, request, token=..., org=...)``."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.stub = mgmt_grpc.ManagementServiceStub(self.channel)

    def call(self, method: str, request: Any, token: str | None = None, org: str | None = None,
             metadata: list[tuple[str, str]] | None = None) -> Any:
        md = list(metadata or [])
        if token is not None:
            md.append(("authorization", f"Bearer {token}"))
        if org is not None:
            md.append(("x-zitadel-orgid", org))
        return getattr(self.stub, method)(request, metadata=md, timeout=10)

    def fails(self, method: str, request: Any, **kwargs: Any) -> grpc.Call:
        with pytest.raises(grpc.RpcError) as info:
            self.call(method, request, **kwargs)
        assert isinstance(info.value, grpc.Call)
        return info.value


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """A protobuf message as [(field number, varint or bytes)] (wire types 0 and 2):
    an independent decoder, so the emulator's own Status encoding is checked."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        tag, pos = _varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            out.append((number, value))
        elif wire == 2:
            length, pos = _varint(data, pos)
            out.append((number, data[pos:pos + length]))
            pos += length
        else:
            raise AssertionError(f"unexpected wire type {wire}")
    return out


def error_detail(call: grpc.Call) -> tuple[int, str, str, str] | None:
    """(status code, status message, ErrorDetail.id, ErrorDetail.message) from
    ``grpc-status-details-bin`` (google.rpc.Status), or None without the trailer."""
    trailers = dict(call.trailing_metadata() or ())
    raw = trailers.get("grpc-status-details-bin")
    if raw is None:
        return None
    status = _fields(raw)
    code = next(v for n, v in status if n == 1)
    message = next(v for n, v in status if n == 2)
    anys = [v for n, v in status if n == 3]
    assert len(anys) == 1
    any_fields = dict(_fields(anys[0]))  # type: ignore[arg-type]
    assert any_fields[1] == b"type.googleapis.com/zitadel.v1.ErrorDetail"
    detail = object_pb.ErrorDetail.FromString(any_fields[2])
    assert isinstance(code, int)
    assert isinstance(message, bytes)
    return code, message.decode(), detail.id, detail.message


def expect(call: grpc.Call, code: grpc.StatusCode, message: str,
           detail: tuple[str, str] | None) -> None:
    assert call.code() == code
    assert call.details() == message
    got = error_detail(call)
    if detail is None:
        assert got is None
    else:
        assert got == (code.value[0], message, *detail)


def ts(text: str) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromJsonString(text)
    return t


def future(days: float) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromDatetime(in_days(days))
    return t


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw(emulator: Emulator) -> Iterator[Raw]:
    client = Raw(emulator.grpc_target)
    yield client
    client.channel.close()


@pytest.fixture(scope="module")
def admin_token(emulator: Emulator) -> str:
    return access_token(emulator.issuer, load_key_file(emulator.admin_key_file))


@pytest.fixture(scope="module")
def ids(emulator: Emulator) -> dict[str, str]:
    return {**emulator.user_ids, **{f"org:{k}": v for k, v in emulator.org_ids.items()}}


@pytest.fixture(autouse=True)
def _no_faults(emulator: Emulator) -> Iterator[None]:
    yield
    emulator.reset()


# --- authentication and org context (§1, §8) ------------------------------------------


def test_get_my_org_is_the_callers_org(raw: Raw, admin_token: str, ids: dict[str, str]) -> None:
    org = raw.call("GetMyOrg", m.GetMyOrgRequest(), token=admin_token).org
    assert (org.id, org.name, org.primary_domain) == (ids["org:acme"], "acme", "acme.localhost")
    assert org.state == org_pb.ORG_STATE_ACTIVE
    assert org.details.resource_owner == ids["org:acme"]


def test_missing_and_garbled_auth_headers(raw: Raw) -> None:
    expect(raw.fails("GetMyOrg", m.GetMyOrgRequest()),
           grpc.StatusCode.UNAUTHENTICATED, "auth header missing", None)
    expect(raw.fails("GetMyOrg", m.GetMyOrgRequest(), metadata=[("authorization", "Basic x")]),
           grpc.StatusCode.UNAUTHENTICATED, "invalid auth header (AUTH-toLo1)",
           ("AUTH-toLo1", "invalid auth header"))
    expect(raw.fails("GetMyOrg", m.GetMyOrgRequest(), token="not-a-token"),
           grpc.StatusCode.UNAUTHENTICATED, "Errors.Token.Invalid (AUTH-7fs1e)",
           ("AUTH-7fs1e", "Errors.Token.Invalid"))


def test_token_without_zitadel_audience_is_refused(raw: Raw, emulator: Emulator) -> None:
    token = access_token(emulator.issuer, load_key_file(emulator.admin_key_file), scope="openid")
    call = raw.fails("GetMyOrg", m.GetMyOrgRequest(), token=token)
    assert (call.code(), call.details()) == (
        grpc.StatusCode.UNAUTHENTICATED, "Errors.Token.Invalid (AUTH-7fs1e)")


def test_unknown_org_header(raw: Raw, admin_token: str) -> None:
    expect(raw.fails("GetMyOrg", m.GetMyOrgRequest(), token=admin_token, org="424242"),
           grpc.StatusCode.PERMISSION_DENIED, "Organisation doesn't exist (AUTH-Bs7Ds)",
           ("AUTH-Bs7Ds", "Organisation doesn't exist"))


def test_org_header_without_membership_there(raw: Raw, admin_token: str,
                                             ids: dict[str, str]) -> None:
    expect(raw.fails("GetMyOrg", m.GetMyOrgRequest(), token=admin_token, org=ids["org:globex"]),
           grpc.StatusCode.NOT_FOUND, "membership not found (AUTHZ-cdgFk)",
           ("AUTHZ-cdgFk", "membership not found"))


def test_org_header_selects_the_ctx_org(raw: Raw, emulator: Emulator,
                                        ids: dict[str, str]) -> None:
    multi = emulator.add_user("svc-multi-v1", roles=["ORG_OWNER"], key=True,
                              memberships=[{"org": "globex", "roles": ["ORG_USER_MANAGER"]}])
    token = access_token(emulator.issuer, multi["key_file"])
    org = raw.call("GetMyOrg", m.GetMyOrgRequest(), token=token, org=ids["org:globex"]).org
    assert org.name == "globex"
    user = raw.call("GetUserByID", m.GetUserByIDRequest(id=ids["svc-ledger"]), token=token,
                    org=ids["org:globex"]).user
    assert user.user_name == "svc-ledger"


# --- users ---------------------------------------------------------------------------------


def test_get_user_by_id(raw: Raw, admin_token: str, ids: dict[str, str]) -> None:
    user = raw.call("GetUserByID", m.GetUserByIDRequest(id=ids["svc-billing"]),
                    token=admin_token).user
    assert user.id == ids["svc-billing"]
    assert user.user_name == "svc-billing"
    assert list(user.login_names) == ["svc-billing@acme.localhost"]
    assert user.preferred_login_name == "svc-billing@acme.localhost"
    assert user.state == user_pb.USER_STATE_ACTIVE
    assert user.WhichOneof("type") == "machine"
    assert user.machine.access_token_type == user_pb.ACCESS_TOKEN_TYPE_BEARER
    assert user.details.resource_owner == ids["org:acme"]
    assert user.details.HasField("creation_date")


def test_user_of_another_org_is_not_found(raw: Raw, admin_token: str,
                                          ids: dict[str, str]) -> None:
    expect(raw.fails("GetUserByID", m.GetUserByIDRequest(id=ids["svc-ledger"]), token=admin_token),
           grpc.StatusCode.NOT_FOUND, "User could not be found (MANAG-fpo4B)",
           ("MANAG-fpo4B", "User could not be found"))


def test_get_user_by_login_name_global_crosses_orgs(raw: Raw, admin_token: str,
                                                    ids: dict[str, str]) -> None:
    request = m.GetUserByLoginNameGlobalRequest(login_name="svc-ledger@globex.localhost")
    user = raw.call("GetUserByLoginNameGlobal", request, token=admin_token).user
    assert (user.id, user.details.resource_owner) == (ids["svc-ledger"], ids["org:globex"])
    call = raw.fails("GetUserByLoginNameGlobal",
                     m.GetUserByLoginNameGlobalRequest(login_name="nobody@acme.localhost"),
                     token=admin_token)
    assert call.code() == grpc.StatusCode.NOT_FOUND


def test_list_users_by_user_name_and_type(raw: Raw, admin_token: str,
                                          ids: dict[str, str]) -> None:
    by_name = user_pb.SearchQuery(user_name_query=user_pb.UserNameQuery(
        user_name="svc-billing", method=object_pb.TEXT_QUERY_METHOD_EQUALS))
    response = raw.call("ListUsers", m.ListUsersRequest(queries=[by_name]), token=admin_token)
    assert [u.id for u in response.result] == [ids["svc-billing"]]
    assert response.details.total_result == 1

    machines = user_pb.SearchQuery(type_query=user_pb.TypeQuery(type=user_pb.TYPE_MACHINE))
    everyone = raw.call("ListUsers", m.ListUsersRequest(queries=[machines]), token=admin_token)
    names = {u.user_name for u in everyone.result}
    assert {"rotator-admin", "svc-billing", "svc-reports", "svc-noperm"} <= names
    assert "svc-ledger" not in names  # ctx org only

    page = raw.call("ListUsers", m.ListUsersRequest(
        query=object_pb.ListQuery(offset=1, limit=2), queries=[machines]), token=admin_token)
    assert len(page.result) == 2
    assert page.details.total_result == everyone.details.total_result
    assert [u.id for u in page.result] == [u.id for u in everyone.result][1:3]


def test_list_users_rejects_an_empty_query(raw: Raw, admin_token: str) -> None:
    expect(raw.fails("ListUsers", m.ListUsersRequest(queries=[user_pb.SearchQuery()]),
                     token=admin_token),
           grpc.StatusCode.INVALID_ARGUMENT,
           "invalid ListUsersRequest.Queries[0]: embedded message failed validation | "
           "caused by: invalid SearchQuery.Query: value is required", None)


def test_validation_runs_after_authentication(raw: Raw, admin_token: str) -> None:
    assert raw.fails("GetUserByID", m.GetUserByIDRequest(id="")).code() == \
        grpc.StatusCode.UNAUTHENTICATED
    expect(raw.fails("GetUserByID", m.GetUserByIDRequest(id=""), token=admin_token),
           grpc.StatusCode.INVALID_ARGUMENT,
           "invalid GetUserByIDRequest.Id: value length must be between 1 and 200 runes, "
           "inclusive", None)


# --- machine keys ------------------------------------------------------------------------


def test_server_generated_key_defaults_to_year_9999(raw: Raw, admin_token: str,
                                                   ids: dict[str, str], emulator: Emulator) -> None:
    user_id = ids["svc-reports"]
    added = raw.call("AddMachineKey", m.AddMachineKeyRequest(
        user_id=user_id, type=authn_pb.KEY_TYPE_JSON), token=admin_token)
    key_file = json.loads(added.key_details)
    assert list(key_file) == ["type", "keyId", "key", "expirationDate", "userId"]
    assert key_file["type"] == "serviceaccount"
    assert (key_file["keyId"], key_file["userId"]) == (added.key_id, user_id)
    assert key_file["expirationDate"] == "9999-12-31T23:59:59Z"
    assert key_file["key"].startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert added.details.resource_owner == ids["org:acme"]
    assert added.details.HasField("creation_date")
    assert not added.details.HasField("change_date")

    got = raw.call("GetMachineKeyByIDs", m.GetMachineKeyByIDsRequest(
        user_id=user_id, key_id=added.key_id), token=admin_token).key
    assert got.expiration_date == DEFAULT_EXPIRY
    assert got.type == authn_pb.KEY_TYPE_JSON
    # the server-generated key works at the token endpoint
    assert access_token(emulator.issuer, key_file)


def test_locally_generated_key_round_trip_and_token_exchange(
        raw: Raw, admin_token: str, ids: dict[str, str], emulator: Emulator) -> None:
    user_id = ids["svc-billing"]
    private, public_pem = local_rsa_key()
    expiry = ts("2031-05-06T07:08:09.123456789Z")
    added = raw.call("AddMachineKey", m.AddMachineKeyRequest(
        user_id=user_id, type=authn_pb.KEY_TYPE_JSON, expiration_date=expiry,
        public_key=public_pem.encode()), token=admin_token)
    assert added.key_details == b""  # §6.2: no key content for a supplied public key

    listed = raw.call("ListMachineKeys", m.ListMachineKeysRequest(user_id=user_id),
                      token=admin_token)
    mine = [k for k in listed.result if k.id == added.key_id]
    assert len(mine) == 1
    assert mine[0].expiration_date == expiry  # stored exactly, nanoseconds included
    assert listed.details.total_result == len(listed.result)

    token = access_token(emulator.issuer, key_file_for(private, added.key_id, user_id))
    claims = httpx.get(f"{emulator.issuer}/oidc/v1/userinfo",
                       headers={"Authorization": f"Bearer {token}"}).json()
    assert claims["sub"] == user_id

    removed = raw.call("RemoveMachineKey", m.RemoveMachineKeyRequest(
        user_id=user_id, key_id=added.key_id), token=admin_token)
    assert removed.details.HasField("change_date")
    assert removed.details.resource_owner == ids["org:acme"]
    response = token_request(emulator.issuer,
                             sign_assertion(key_file_for(private, added.key_id, user_id),
                                            emulator.issuer))
    assert (response.status_code, response.json()["error"]) == (500, "server_error")


def test_list_machine_keys_pages(raw: Raw, admin_token: str, emulator: Emulator) -> None:
    user = emulator.add_user("svc-pages-v1")
    added = [raw.call("AddMachineKey", m.AddMachineKeyRequest(
        user_id=user["id"], type=authn_pb.KEY_TYPE_JSON, expiration_date=future(30),
        public_key=local_rsa_key()[1].encode()), token=admin_token).key_id for _ in range(3)]
    page = raw.call("ListMachineKeys", m.ListMachineKeysRequest(
        user_id=user["id"], query=object_pb.ListQuery(offset=1, limit=1)), token=admin_token)
    assert [k.id for k in page.result] == added[1:2]
    assert page.details.total_result == 3


def test_expired_keys_and_pats_are_still_listed(raw: Raw, admin_token: str,
                                                emulator: Emulator) -> None:
    """§3: v1 lists filter removed credentials only, not expired ones; an expired
    key no longer works at the token endpoint and an expired PAT not at all."""
    user = emulator.add_user("svc-expiring-v1")
    private, public_pem = local_rsa_key()
    key = raw.call("AddMachineKey", m.AddMachineKeyRequest(
        user_id=user["id"], type=authn_pb.KEY_TYPE_JSON, expiration_date=future(1),
        public_key=public_pem.encode()), token=admin_token)
    pat = raw.call("AddPersonalAccessToken", m.AddPersonalAccessTokenRequest(
        user_id=user["id"], expiration_date=future(1)), token=admin_token)
    key_file = key_file_for(private, key.key_id, user["id"])
    assert access_token(emulator.issuer, key_file)

    emulator.advance(2 * 86400)
    token = access_token(emulator.issuer, load_key_file(emulator.admin_key_file))
    keys = raw.call("ListMachineKeys", m.ListMachineKeysRequest(user_id=user["id"]), token=token)
    pats = raw.call("ListPersonalAccessTokens", m.ListPersonalAccessTokensRequest(
        user_id=user["id"]), token=token)
    assert [k.id for k in keys.result] == [key.key_id]
    assert [p.id for p in pats.result] == [pat.token_id]
    assert token_request(emulator.issuer, sign_assertion(key_file, emulator.issuer)
                         ).status_code == 500
    assert httpx.get(f"{emulator.issuer}/oidc/v1/userinfo",
                     headers={"Authorization": f"Bearer {pat.token}"}).status_code == 401


@pytest.mark.parametrize(
    "case",
    [
        ({"type": authn_pb.KEY_TYPE_UNSPECIFIED}, grpc.StatusCode.INVALID_ARGUMENT,
         "invalid AddMachineKeyRequest.Type: value must not be in list [0]", None),
        ({"user_id": ""}, grpc.StatusCode.INVALID_ARGUMENT,
         "invalid AddMachineKeyRequest.UserId: value length must be at least 1 runes", None),
        ({"expiration_date": ts("2001-01-01T00:00:00Z")}, grpc.StatusCode.INVALID_ARGUMENT,
         "Errors.AuthNKey.ExpireBeforeNow (DOMAIN-dv3t5)",
         ("DOMAIN-dv3t5", "Errors.AuthNKey.ExpireBeforeNow")),
        ({"public_key": b"-----BEGIN RSA PUBLIC KEY-----\nAAAA\n-----END RSA PUBLIC KEY-----\n"},
         grpc.StatusCode.INVALID_ARGUMENT,
         "Public key is not a valid RSA public key in PKIX format with PEM encoding "
         "(COMMAND-5F3h1)",
         ("COMMAND-5F3h1",
          "Public key is not a valid RSA public key in PKIX format with PEM encoding")),
        ({"user_id": "svc-ledger"}, grpc.StatusCode.FAILED_PRECONDITION,
         "User could not be found (COMMAND-bnipwm1)",
         ("COMMAND-bnipwm1", "User could not be found")),
    ],
)
def test_add_machine_key_errors(raw: Raw, admin_token: str, ids: dict[str, str],
                                case: tuple[dict[str, Any], grpc.StatusCode, str,
                                            tuple[str, str] | None]) -> None:
    change, code, message, detail = case
    fields: dict[str, Any] = {"user_id": ids["svc-billing"], "type": authn_pb.KEY_TYPE_JSON,
                              "expiration_date": future(10)}
    fields.update(change)
    if fields["user_id"] in ids:  # a name: the user of another org (§1)
        fields["user_id"] = ids[fields["user_id"]]
    expect(raw.fails("AddMachineKey", m.AddMachineKeyRequest(**fields), token=admin_token),
           code, message, detail)


def test_remove_missing_key(raw: Raw, admin_token: str, ids: dict[str, str]) -> None:
    expect(raw.fails("RemoveMachineKey", m.RemoveMachineKeyRequest(
        user_id=ids["svc-billing"], key_id="123"), token=admin_token),
        grpc.StatusCode.NOT_FOUND, "Machine key not found (COMMAND-4m77G)",
        ("COMMAND-4m77G", "Machine key not found"))
    call = raw.fails("GetMachineKeyByIDs", m.GetMachineKeyByIDsRequest(
        user_id=ids["svc-billing"], key_id="123"), token=admin_token)
    assert call.code() == grpc.StatusCode.NOT_FOUND


def test_no_permission(raw: Raw, emulator: Emulator, ids: dict[str, str]) -> None:
    noperm_key = emulator.add_user("svc-noperm-v1", key=True)["key_file"]
    viewer_key = emulator.add_user("svc-viewer-v1", roles=["ORG_OWNER_VIEWER"],
                                   key=True)["key_file"]
    request = m.AddMachineKeyRequest(user_id=ids["svc-billing"], type=authn_pb.KEY_TYPE_JSON)
    expect(raw.fails("AddMachineKey", request,
                     token=access_token(emulator.issuer, noperm_key)),
           grpc.StatusCode.NOT_FOUND, "membership not found (AUTHZ-cdgFk)",
           ("AUTHZ-cdgFk", "membership not found"))
    viewer = access_token(emulator.issuer, viewer_key)
    expect(raw.fails("AddMachineKey", request, token=viewer),
           grpc.StatusCode.PERMISSION_DENIED, "No matching permissions found (AUTH-5mWD2)",
           ("AUTH-5mWD2", "No matching permissions found"))
    # user.read is enough for listing
    assert raw.call("ListMachineKeys", m.ListMachineKeysRequest(user_id=ids["svc-billing"]),
                    token=viewer) is not None


# --- personal access tokens ----------------------------------------------------------


def test_pat_lifecycle(raw: Raw, admin_token: str, ids: dict[str, str],
                       emulator: Emulator) -> None:
    user_id = ids["svc-billing"]
    added = raw.call("AddPersonalAccessToken", m.AddPersonalAccessTokenRequest(user_id=user_id),
                     token=admin_token)
    assert added.token
    assert added.token_id
    assert added.details.resource_owner == ids["org:acme"]

    got = raw.call("GetPersonalAccessTokenByIDs", m.GetPersonalAccessTokenByIDsRequest(
        user_id=user_id, token_id=added.token_id), token=admin_token).token
    assert got.expiration_date == DEFAULT_EXPIRY  # v1 default (§6.1)
    assert list(got.scopes) == ["openid", "profile", "urn:zitadel:iam:user:metadata",
                                "urn:zitadel:iam:user:resourceowner"]
    listed = raw.call("ListPersonalAccessTokens", m.ListPersonalAccessTokensRequest(
        user_id=user_id), token=admin_token)
    assert added.token_id in [p.id for p in listed.result]

    userinfo = f"{emulator.issuer}/oidc/v1/userinfo"
    bearer = {"Authorization": f"Bearer {added.token}"}
    assert httpx.get(userinfo, headers=bearer).json()["sub"] == user_id
    # the management API accepts a PAT without the audience scope (§7.7); svc-billing
    # holds no role, so it gets past authentication only to fail authorization
    call = raw.fails("GetMyOrg", m.GetMyOrgRequest(), token=added.token)
    assert call.details() == "membership not found (AUTHZ-cdgFk)"

    raw.call("RemovePersonalAccessToken", m.RemovePersonalAccessTokenRequest(
        user_id=user_id, token_id=added.token_id), token=admin_token)
    assert httpx.get(userinfo, headers=bearer).status_code == 401  # at once (§6.3)
    expect(raw.fails("RemovePersonalAccessToken", m.RemovePersonalAccessTokenRequest(
        user_id=user_id, token_id=added.token_id), token=admin_token),
        grpc.StatusCode.NOT_FOUND, "Personal Access Token not found (COMMAND-4m77G)",
        ("COMMAND-4m77G", "Personal Access Token not found"))


def test_pat_with_explicit_expiry_and_errors(raw: Raw, admin_token: str, ids: dict[str, str],
                                            emulator: Emulator) -> None:
    expiry = ts("2030-01-02T03:04:05.5Z")
    added = raw.call("AddPersonalAccessToken", m.AddPersonalAccessTokenRequest(
        user_id=ids["svc-reports"], expiration_date=expiry), token=admin_token)
    got = raw.call("GetPersonalAccessTokenByIDs", m.GetPersonalAccessTokenByIDsRequest(
        user_id=ids["svc-reports"], token_id=added.token_id), token=admin_token).token
    assert got.expiration_date == expiry

    expect(raw.fails("AddPersonalAccessToken", m.AddPersonalAccessTokenRequest(
        user_id=ids["svc-ledger"]), token=admin_token),
        grpc.StatusCode.FAILED_PRECONDITION, "User could not be found (COMMAND-Dggw2)",
        ("COMMAND-Dggw2", "User could not be found"))
    human = emulator.add_user("jane-v1", type="human", given_name="Jane", family_name="Doe",
                              email="jane@acme.localhost")
    expect(raw.fails("AddPersonalAccessToken", m.AddPersonalAccessTokenRequest(
        user_id=human["id"]), token=admin_token),
        grpc.StatusCode.FAILED_PRECONDITION, "Not allowed for this user type (COMMAND-Df2f1)",
        ("COMMAND-Df2f1", "Not allowed for this user type"))
    user = raw.call("GetUserByID", m.GetUserByIDRequest(id=human["id"]), token=admin_token).user
    assert user.WhichOneof("type") == "human"


# --- metadata ---------------------------------------------------------------------------


def test_metadata_set_list_remove(raw: Raw, admin_token: str, ids: dict[str, str]) -> None:
    user_id = ids["svc-reports"]
    set_response = raw.call("SetUserMetadata", m.SetUserMetadataRequest(
        id=user_id, key="rotator.v1/state", value=b"{\"phase\":\"idle\"}"), token=admin_token)
    assert set_response.details.resource_owner == ids["org:acme"]
    raw.call("SetUserMetadata", m.SetUserMetadataRequest(id=user_id, key="other", value=b"x"),
             token=admin_token)

    query = metadata_pb.MetadataQuery(key_query=metadata_pb.MetadataKeyQuery(
        key="rotator.v1/", method=object_pb.TEXT_QUERY_METHOD_STARTS_WITH))
    listed = raw.call("ListUserMetadata", m.ListUserMetadataRequest(id=user_id, queries=[query]),
                      token=admin_token)
    assert [(md.key, md.value) for md in listed.result] == [
        ("rotator.v1/state", b"{\"phase\":\"idle\"}")]

    raw.call("RemoveUserMetadata", m.RemoveUserMetadataRequest(id=user_id, key="other"),
             token=admin_token)
    call = raw.fails("RemoveUserMetadata", m.RemoveUserMetadataRequest(id=user_id, key="other"),
                     token=admin_token)
    assert call.code() == grpc.StatusCode.NOT_FOUND
    expect(raw.fails("SetUserMetadata", m.SetUserMetadataRequest(id=user_id, key="k", value=b""),
                     token=admin_token),
           grpc.StatusCode.INVALID_ARGUMENT,
           "invalid SetUserMetadataRequest.Value: value length must be between 1 and 500000 "
           "bytes, inclusive", None)


# --- faults -------------------------------------------------------------------------------


def test_injected_faults_become_grpc_statuses(raw: Raw, admin_token: str,
                                              emulator: Emulator) -> None:
    emulator.set_faults(rules=[{"method": "GetMyOrg", "code": "unavailable", "count": 1},
                               {"method": "ListUsers", "code": "resource_exhausted"}])
    assert raw.fails("GetMyOrg", m.GetMyOrgRequest(), token=admin_token).code() == \
        grpc.StatusCode.UNAVAILABLE
    assert raw.call("GetMyOrg", m.GetMyOrgRequest(), token=admin_token).org.name == "acme"
    call = raw.fails("ListUsers", m.ListUsersRequest(), token=admin_token)
    assert (call.code(), call.details()) == (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                             "Quota.Access.Exhausted (QUERY-vjAy8)")


def test_service_name_on_the_wire(emulator: Emulator, admin_token: str) -> None:
    """A client built without our stubs reaches the method by its full name."""
    with grpc.insecure_channel(emulator.grpc_target) as channel:
        call = channel.unary_unary(f"/{SERVICE}/GetMyOrg",
                                   request_serializer=lambda b: b,
                                   response_deserializer=lambda b: b)
        raw_response = call(b"", metadata=[("authorization", f"Bearer {admin_token}")], timeout=10)
    assert m.GetMyOrgResponse.FromString(raw_response).org.name == "acme"
