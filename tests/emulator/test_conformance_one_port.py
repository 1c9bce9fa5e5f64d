"""The issuer's one port, protocol by protocol, with Python clients (the
TypeScript clients in tests/test_ts_clients.py check the same from outside):
gRPC for v2 beside v1, Connect's binary codec, and what an older ZITADEL
answers gRPC clients for a v2 method it does not have."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import httpx
import pytest

from tests.emulator import wire
from tests.emulator.support import access_token, in_days, load_key_file
from tests.harness.emulator import Emulator

V2 = "zitadel.user.v2."


def v2_call(channel: grpc.Channel, method: str) -> Callable[..., Any]:
    return channel.unary_unary(
        f"/{V2}UserService/{method}",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=wire.message_class(f"{V2}{method}Response").FromString)


@pytest.fixture(scope="module")
def token(emulator: Emulator) -> str:
    return access_token(emulator.issuer, load_key_file(emulator.admin_key_file))


@pytest.fixture(scope="module")
def channel(emulator: Emulator) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(emulator.issuer_target) as ch:
        yield ch


def test_v2_over_grpc_adds_lists_and_removes_a_pat(
    emulator: Emulator, channel: grpc.Channel, token: str
) -> None:
    md = [("authorization", f"Bearer {token}")]
    user = emulator.user_ids["svc-reports"]
    expiry = wire.message_class("google.protobuf.Timestamp")()
    expiry.FromDatetime(in_days(3))
    added = v2_call(channel, "AddPersonalAccessToken")(wire.message_class(
        f"{V2}AddPersonalAccessTokenRequest")(user_id=user, expiration_date=expiry), metadata=md)
    assert added.token
    request = wire.message_class(f"{V2}ListPersonalAccessTokensRequest")()
    request.filters.add().user_id_filter.id = user
    listed = v2_call(channel, "ListPersonalAccessTokens")(request, metadata=md)
    assert added.token_id in [p.id for p in listed.result]
    v2_call(channel, "RemovePersonalAccessToken")(wire.message_class(
        f"{V2}RemovePersonalAccessTokenRequest")(user_id=user, token_id=added.token_id),
        metadata=md)
    with pytest.raises(grpc.RpcError) as again:
        v2_call(channel, "RemovePersonalAccessToken")(wire.message_class(
            f"{V2}RemovePersonalAccessTokenRequest")(user_id=user, token_id=added.token_id),
            metadata=md)
    assert again.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    trailers = dict(again.value.trailing_metadata())  # type: ignore[attr-defined]
    assert b"zitadel.v1.ErrorDetail" in trailers["grpc-status-details-bin"]


def test_v2_over_grpc_regenerates_and_removes_a_secret(
    emulator: Emulator, channel: grpc.Channel, token: str
) -> None:
    md = [("authorization", f"Bearer {token}")]
    user = emulator.add_user("svc-secret-grpc")["id"]
    add = wire.message_class(f"{V2}AddSecretRequest")(user_id=user)
    first = v2_call(channel, "AddSecret")(add, metadata=md)
    second = v2_call(channel, "AddSecret")(add, metadata=md)
    assert first.client_secret != second.client_secret
    assert second.creation_date.seconds > 0
    url = f"{emulator.issuer}/oauth/v2/token"
    form = {"grant_type": "client_credentials", "scope": "openid"}
    assert httpx.post(url, data=form, auth=("svc-secret-grpc", second.client_secret)
                      ).status_code == 200
    assert httpx.post(url, data=form, auth=("svc-secret-grpc", first.client_secret)
                      ).status_code == 400
    remove = wire.message_class(f"{V2}RemoveSecretRequest")(user_id=user)
    assert v2_call(channel, "RemoveSecret")(remove, metadata=md).deletion_date.seconds > 0
    with pytest.raises(grpc.RpcError) as again:
        v2_call(channel, "RemoveSecret")(remove, metadata=md)
    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    trailers = dict(again.value.trailing_metadata())  # type: ignore[attr-defined]
    assert b"COMMAND-coi82n" in trailers["grpc-status-details-bin"]


def test_v2_over_grpc_without_a_token_is_unauthenticated(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as info:
        v2_call(channel, "ListKeys")(wire.message_class(f"{V2}ListKeysRequest")())
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]


def test_connect_binary_answers_binary_and_errors_in_json(emulator: Emulator, token: str) -> None:
    url = f"{emulator.issuer}/{V2}UserService/GetUserByID"
    headers = {"Content-Type": "application/proto", "Authorization": f"Bearer {token}"}
    user = emulator.user_ids["svc-billing"]
    request = wire.message_class(f"{V2}GetUserByIDRequest")(user_id=user)
    ok = httpx.post(url, content=request.SerializeToString(), headers=headers)
    assert ok.headers["content-type"] == "application/proto"
    assert wire.message_class(f"{V2}GetUserByIDResponse").FromString(ok.content).user.user_id \
        == user
    missing = httpx.post(url, content=b"", headers=headers)  # user_id "" -> PGV
    assert (missing.status_code, missing.headers["content-type"]) == (400, "application/json")
    assert missing.json()["message"].startswith("invalid GetUserByIDRequest.UserId: ")


def test_an_unknown_codec_is_415_naming_both(emulator: Emulator, token: str) -> None:
    response = httpx.post(f"{emulator.issuer}/{V2}UserService/ListKeys", content=b"{}",
                          headers={"Content-Type": "text/plain"})
    assert response.status_code == 415
    assert response.headers["accept-post"] == "application/json, application/proto"


def test_a_zitadel_without_v2_keys_is_unimplemented_for_grpc_clients(
    emulator_factory: Callable[..., Emulator],
) -> None:
    old = emulator_factory(no_v2_keys=True, grpc_port=False)
    with grpc.insecure_channel(old.issuer_target) as ch, pytest.raises(grpc.RpcError) as info:
        v2_call(ch, "ListKeys")(wire.message_class(f"{V2}ListKeysRequest")())
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]
