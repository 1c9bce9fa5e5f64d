"""Request validation as ZITADEL's descriptors define it (protoc-gen-validate,
first violation wins, nested messages wrapped): each case is one that the
emulator used to answer differently (issue 11), checked over the wire -
v2 over Connect JSON, v1 over gRPC on the issuer's port."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from tests.emulator import wire
from tests.emulator.support import access_token, connect, load_key_file
from tests.harness.emulator import Emulator

WRAP = "embedded message failed validation | caused by: "
RUNES = "value length must be between 1 and 200 runes, inclusive"
ENUM = "value must be one of the defined enum values"


@pytest.fixture(scope="module")
def token(emulator: Emulator) -> str:
    return access_token(emulator.issuer, load_key_file(emulator.admin_key_file))


def v2(emulator: Emulator, token: str, method: str, body: dict[str, Any]) -> tuple[int, Any]:
    response = connect(emulator.issuer, method, body, token)
    return response.status_code, response.json()


def invalid(message: str) -> tuple[int, dict[str, str]]:
    """A PGV violation: 400 invalid_argument, no ZITADEL ErrorDetail."""
    return 400, {"code": "invalid_argument", "message": message}


# --- v2 ListUsers ------------------------------------------------------------------

@pytest.mark.parametrize(("query", "reason"), [
    ({"userNameQuery": {"userName": ""}},
     f"invalid SearchQuery.UserNameQuery: {WRAP}invalid UserNameQuery.UserName: {RUNES}"),
    ({"userNameQuery": {"userName": "u" * 201}},
     f"invalid SearchQuery.UserNameQuery: {WRAP}invalid UserNameQuery.UserName: {RUNES}"),
    ({"typeQuery": {"type": 99}},
     f"invalid SearchQuery.TypeQuery: {WRAP}invalid TypeQuery.Type: {ENUM}"),
    ({"stateQuery": {"state": 99}},
     f"invalid SearchQuery.StateQuery: {WRAP}invalid StateQuery.State: {ENUM}"),
    ({"loginNameQuery": {"loginName": "svc-billing", "method": 99}},
     f"invalid SearchQuery.LoginNameQuery: {WRAP}invalid LoginNameQuery.Method: {ENUM}"),
    ({}, "invalid SearchQuery.Query: value is required"),
    ({"notQuery": {"query": {"emailQuery": {"emailAddress": "e" * 201}}}},
     f"invalid SearchQuery.NotQuery: {WRAP}invalid NotQuery.Query: {WRAP}"
     f"invalid SearchQuery.EmailQuery: {WRAP}"
     "invalid EmailQuery.EmailAddress: value length must be at most 200 runes"),
])
def test_v2_list_users_validates_its_queries(
    emulator: Emulator, token: str, query: dict[str, Any], reason: str
) -> None:
    assert v2(emulator, token, "ListUsers", {"queries": [query]}) == \
        invalid(f"invalid ListUsersRequest.Queries[0]: {WRAP}{reason}")


@pytest.mark.parametrize("query", [
    {"inUserEmailsQuery": {"userEmails": ["nobody@example.com"]}},
    {"phoneQuery": {"number": "+41791234567"}},
])
def test_v2_list_users_accepts_email_list_and_phone_queries(
    emulator: Emulator, token: str, query: dict[str, Any]
) -> None:
    status, body = v2(emulator, token, "ListUsers", {"queries": [query]})
    assert status == 200, body
    assert body.get("result", []) == []  # no such human in the default seed


# --- v2 metadata -------------------------------------------------------------------

@pytest.mark.parametrize(("key_filter", "reason"), [
    ({"key": "k" * 201}, "invalid MetadataKeyFilter.Key: value length must be at most 200 runes"),
    ({"key": "k", "method": 99}, f"invalid MetadataKeyFilter.Method: {ENUM}"),
])
def test_v2_list_user_metadata_validates_its_key_filter(
    emulator: Emulator, token: str, key_filter: dict[str, Any], reason: str
) -> None:
    user = emulator.user_ids["svc-billing"]
    assert v2(emulator, token, "ListUserMetadata",
              {"userId": user, "filters": [{"keyFilter": key_filter}]}) == invalid(
        f"invalid ListUserMetadataRequest.Filters[0]: {WRAP}"
        f"invalid MetadataSearchFilter.KeyFilter: {WRAP}{reason}")


def test_v2_list_user_metadata_requires_a_filter_kind(emulator: Emulator, token: str) -> None:
    user = emulator.user_ids["svc-billing"]
    assert v2(emulator, token, "ListUserMetadata", {"userId": user, "filters": [{}]}) == invalid(
        f"invalid ListUserMetadataRequest.Filters[0]: {WRAP}"
        "invalid MetadataSearchFilter.Filter: value is required")


@pytest.mark.parametrize("user_id", ["", "9" * 201])
def test_v2_delete_user_metadata_has_no_rule_on_user_id(
    emulator: Emulator, token: str, user_id: str
) -> None:
    """ZITADEL's DeleteUserMetadataRequest.user_id has no PGV rule: the request
    reaches the handler, which does not find the user."""
    status, body = v2(emulator, token, "DeleteUserMetadata", {"userId": user_id, "keys": ["k"]})
    assert status != 400, body
    assert "DeleteUserMetadataRequest" not in body["message"]


def test_v2_delete_user_metadata_still_checks_each_key(emulator: Emulator, token: str) -> None:
    user = emulator.user_ids["svc-billing"]
    assert v2(emulator, token, "DeleteUserMetadata", {"userId": user, "keys": ["ok", ""]}) == \
        invalid(f"invalid DeleteUserMetadataRequest.Keys[1]: {RUNES}")


# --- v1 over gRPC on the issuer's port -----------------------------------------------

@pytest.fixture(scope="module")
def channel(emulator: Emulator) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(emulator.issuer_target) as ch:
        yield ch


def v1(channel: grpc.Channel, token: str, method: str, request: Any) -> bytes:
    """A v1 call with the emulator's full message classes (the rotator's stubs
    declare only the query kinds the rotator sends)."""
    call = channel.unary_unary(
        f"/zitadel.management.v1.ManagementService/{method}",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=lambda b: b)
    return bytes(call(request, metadata=[("authorization", f"Bearer {token}")], timeout=10))


def list_users(**query: Any) -> Any:
    request = wire.message_class("zitadel.management.v1.ListUsersRequest")()
    getattr(request.queries.add(), next(iter(query))).CopyFrom(next(iter(query.values())))
    return request


def msg(name: str, **fields: Any) -> Any:
    return wire.message_class(f"zitadel.management.v1.{name}")(**fields)


@pytest.mark.parametrize(("kind", "query"), [
    ("first_name_query", msg("FirstNameQuery", first_name="x")),
    ("last_name_query", msg("LastNameQuery", last_name="x")),
    ("nick_name_query", msg("NickNameQuery", nick_name="x")),
    ("display_name_query", msg("DisplayNameQuery", display_name="x")),
    ("email_query", msg("EmailQuery", email_address="x@example.com")),
    ("state_query", msg("StateQuery", state=2)),
    ("or_query", msg("OrQuery")),
    ("and_query", msg("AndQuery")),
    ("not_query", msg("NotQuery", query=msg("SearchQuery", type_query=msg("TypeQuery", type=1)))),
    ("in_user_emails_query", msg("InUserEmailsQuery", user_emails=["x@example.com"])),
])
def test_v1_list_users_accepts_every_zitadel_query_kind(
    channel: grpc.Channel, token: str, kind: str, query: Any
) -> None:
    from rotator.zitadel.v1.gen import zitadel_management_v1_pb2 as mgmt_pb

    found = mgmt_pb.ListUsersResponse.FromString(
        v1(channel, token, "ListUsers", list_users(**{kind: query})))
    assert found.details.total_result == len(found.result)


def test_v1_list_users_not_machine_finds_no_machine(
    channel: grpc.Channel, token: str, emulator: Emulator
) -> None:
    from rotator.zitadel.v1.gen import zitadel_management_v1_pb2 as mgmt_pb

    request = list_users(not_query=msg("NotQuery", query=msg(
        "SearchQuery", type_query=msg("TypeQuery", type=1))))  # NOT human
    found = mgmt_pb.ListUsersResponse.FromString(v1(channel, token, "ListUsers", request))
    names = {u.user_name for u in found.result}
    assert "svc-billing" in names
    assert all(u.HasField("machine") for u in found.result)


def test_v1_list_users_validates_nested_queries(channel: grpc.Channel, token: str) -> None:
    request = list_users(state_query=msg("StateQuery", state=99))
    with pytest.raises(grpc.RpcError) as info:
        v1(channel, token, "ListUsers", request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert info.value.details() == (  # type: ignore[attr-defined]
        f"invalid ListUsersRequest.Queries[0]: {WRAP}invalid SearchQuery.StateQuery: {WRAP}"
        f"invalid StateQuery.State: {ENUM}")


def test_v1_list_user_metadata_requires_a_query_kind(
    channel: grpc.Channel, token: str, emulator: Emulator
) -> None:
    request = msg("ListUserMetadataRequest", id=emulator.user_ids["svc-billing"])
    request.queries.add()
    with pytest.raises(grpc.RpcError) as info:
        v1(channel, token, "ListUserMetadata", request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert info.value.details() == (  # type: ignore[attr-defined]
        f"invalid ListUserMetadataRequest.Queries[0]: {WRAP}"
        "invalid MetadataQuery.Query: value is required")
