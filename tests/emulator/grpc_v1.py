"""``zitadel.management.v1.ManagementService`` over real gRPC (grpcio).

Per call, in ZITADEL's interceptor order (zitadel-api.md §1): fault injection
-> authentication (``authorization`` + ``x-zitadel-orgid``) -> the method's
v1 permission in the ctx org (§3) -> PGV validation -> the domain handler.
Every :class:`EmuError` becomes a gRPC status with ZITADEL's message
(``"<msg> (<ID>)"``) and, when ZITADEL attaches one, a
``grpc-status-details-bin`` trailer holding ``google.rpc.Status`` with a
``type.googleapis.com/zitadel.v1.ErrorDetail`` (§8).

Messages come from the project's own stubs in ``rotator.zitadel.v1.gen``, so
client and emulator share one wire description, checked field by field
against the reference in tests/test_proto_gen.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent import futures
from typing import Any

import grpc
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

from rotator.zitadel.v1.gen import zitadel_authn_v1_pb2 as authn_pb
from rotator.zitadel.v1.gen import zitadel_management_v1_pb2 as mgmt_pb
from rotator.zitadel.v1.gen import zitadel_management_v1_pb2_grpc as mgmt_grpc
from rotator.zitadel.v1.gen import zitadel_metadata_v1_pb2 as metadata_pb
from rotator.zitadel.v1.gen import zitadel_org_v1_pb2 as org_pb
from rotator.zitadel.v1.gen import zitadel_user_v1_pb2 as user_pb
from rotator.zitadel.v1.gen import zitadel_v1_pb2 as object_pb
from tests.emulator import connect_v2, pgv, times, wire
from tests.emulator import domain as dm
from tests.emulator.errors import EmuError
from tests.emulator.faults import DropConnection

SERVICE = "zitadel.management.v1.ManagementService"
STATUS_DETAILS_KEY = "grpc-status-details-bin"
ERROR_DETAIL_TYPE_URL = "type.googleapis.com/zitadel.v1.ErrorDetail"

_CODES: dict[str, grpc.StatusCode] = {c.name.lower(): c for c in grpc.StatusCode}
_ORG_STATES = {"ACTIVE": org_pb.ORG_STATE_ACTIVE, "INACTIVE": org_pb.ORG_STATE_INACTIVE,
               "REMOVED": org_pb.ORG_STATE_REMOVED}


# --- google.rpc.Status without the googleapis-common-protos dependency ------------------

def _status_class() -> Any:
    """``google.rpc.Status`` (code=1 int32, message=2 string, details=3 repeated Any),
    built in a private descriptor pool so it cannot clash with an installed copy."""
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(any_pb2.DESCRIPTOR.serialized_pb)
    fdp = descriptor_pb2.FileDescriptorProto(
        name="tests/emulator/google_rpc_status.proto", package="google.rpc", syntax="proto3",
        dependency=["google/protobuf/any.proto"],
    )
    msg = fdp.message_type.add(name="Status")
    f = descriptor_pb2.FieldDescriptorProto
    msg.field.add(name="code", number=1, type=f.TYPE_INT32, label=f.LABEL_OPTIONAL)
    msg.field.add(name="message", number=2, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    msg.field.add(name="details", number=3, type=f.TYPE_MESSAGE, label=f.LABEL_REPEATED,
                  type_name=".google.protobuf.Any")
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("google.rpc.Status"))


RpcStatus = _status_class()


def grpc_code(name: str) -> grpc.StatusCode:
    """An EmuError code name (``not_found``) as a gRPC status code."""
    return _CODES.get(name, grpc.StatusCode.UNKNOWN)


def status_details(code: grpc.StatusCode, error: EmuError) -> bytes:
    """The ``grpc-status-details-bin`` value ZITADEL sends for this error."""
    status = RpcStatus(code=code.value[0], message=error.message)
    detail = object_pb.ErrorDetail(id=error.detail_id or "", message=error.detail_message or "")
    status.details.add(type_url=ERROR_DETAIL_TYPE_URL, value=detail.SerializeToString())
    return bytes(status.SerializeToString())


# --- conversions ----------------------------------------------------------------------

def _ts(instant: int) -> timestamp_pb2.Timestamp:
    seconds, nanos = times.to_seconds_nanos(instant)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def _instant(ts: timestamp_pb2.Timestamp) -> int:
    return times.from_seconds_nanos(ts.seconds, ts.nanos)


def _view_details(sequence: int, created: int, changed: int, owner: str) -> Any:
    """object.ToViewDetailsPb: read models carry all four fields."""
    return object_pb.ObjectDetails(sequence=sequence, creation_date=_ts(created),
                                   change_date=_ts(changed), resource_owner=owner)


def _add_details(d: dm.Details) -> Any:
    return object_pb.ObjectDetails(sequence=d.sequence, creation_date=_ts(d.creation_date),
                                   resource_owner=d.resource_owner)


def _change_details(d: dm.Details) -> Any:
    return object_pb.ObjectDetails(sequence=d.sequence, change_date=_ts(d.change_date),
                                   resource_owner=d.resource_owner)


def _list_details(domain: dm.Domain, total: int, items: Sequence[Any]) -> Any:
    return object_pb.ListDetails(
        total_result=total,
        processed_sequence=max((i.sequence for i in items), default=0),
        view_timestamp=_ts(domain.now()),
    )


def user_v1(user: dm.User) -> Any:
    message = user_pb.User(
        id=user.id,
        details=_view_details(user.sequence, user.created, user.changed, user.org_id),
        state=dm.user_state_v1(user.state),
        user_name=user.username,
        login_names=user.login_names,
        preferred_login_name=user.preferred_login_name,
    )
    if user.type == "machine":
        message.machine.CopyFrom(user_pb.Machine(
            name=user.name, description=user.description, has_secret=user.has_secret,
            access_token_type=user.access_token_type,
        ))
    else:
        message.human.SetInParent()
    return message


def _key_v1(key: dm.MachineKey) -> Any:
    return authn_pb.Key(
        id=key.id,
        details=_view_details(key.sequence, key.created, key.changed, key.org_id),
        type=key.type,
        expiration_date=_ts(key.expiration),
    )


def _pat_v1(pat: dm.Pat) -> Any:
    return user_pb.PersonalAccessToken(
        id=pat.id,
        details=_view_details(pat.sequence, pat.created, pat.changed, pat.org_id),
        expiration_date=_ts(pat.expiration),
        scopes=list(pat.scopes),
    )


def _metadata_v1(md: dm.Metadata) -> Any:
    return metadata_pb.Metadata(
        details=_view_details(md.sequence, md.created, md.changed, md.org_id),
        key=md.key, value=md.value,
    )


def _org_v1(org: dm.Org) -> Any:
    return org_pb.Org(
        id=org.id,
        details=_view_details(org.sequence, org.created, org.changed, org.id),
        state=_ORG_STATES.get(org.state, org_pb.ORG_STATE_UNSPECIFIED),
        name=org.name,
        primary_domain=org.primary_domain,
    )


def _page(query: Any) -> tuple[int, int, bool]:
    """v1 ListQuery: absent -> offset 0, no limit (0), descending flag false."""
    return int(query.offset), int(query.limit), bool(query.asc)


# --- PGV (protoc-gen-validate): first violation wins, no ErrorDetail --------------------

def _pgv(msg: str, field: str, reason: str) -> EmuError:
    return EmuError("invalid_argument", f"invalid {msg}.{field}: {reason}")


def _min1(msg: str, field: str, value: str) -> None:
    if len(value) < 1:
        raise _pgv(msg, field, "value length must be at least 1 runes")


def _len(msg: str, field: str, value: str, lo: int = 1, hi: int = 200) -> None:
    if not lo <= len(value) <= hi:
        raise _pgv(msg, field, f"value length must be between {lo} and {hi} runes, inclusive")


def _defined(msg: str, field: str, value: int, enum: Any) -> None:
    if value not in enum.values():
        raise _pgv(msg, field, "value must be one of the defined enum values")


#: The emulator's full copies of these two requests (tests/emulator/proto): the
#: rotator's own stubs declare 4 of ZITADEL's 14 user query kinds and no
#: metadata query rules, and the servicer gets the rotator's message class.
V1_LIST_USERS = "zitadel.management.v1.ListUsersRequest"
V1_LIST_METADATA = "zitadel.management.v1.ListUserMetadataRequest"
_V1_STATE_NAMES = {v: k for k, v in dm.USER_STATES_V1.items()}


def _full(name: str, request: Any) -> dict[str, Any]:
    """Re-read ``request`` with the full descriptor (protobuf keeps the fields
    the rotator's class does not know as unknown fields and re-serialises them)."""
    return wire.parse(name, request.SerializeToString())


def _user_queries(request: Any) -> list[Any]:
    """ListUsersRequest.queries -> domain query objects (validated by PGV first)."""
    full = _full(V1_LIST_USERS, request)
    pgv.validate(wire.descriptor_of(V1_LIST_USERS), full)
    return [connect_v2.user_query(q, _V1_STATE_NAMES) for q in full.get("queries", [])]


def _metadata_queries(request: Any) -> list[tuple[str, int]]:
    full = _full(V1_LIST_METADATA, request)
    pgv.validate(wire.descriptor_of(V1_LIST_METADATA), full)
    return [(q["key_query"].get("key", ""), q["key_query"].get("method", 0))
            for q in full.get("queries", [])]


# --- the servicer -------------------------------------------------------------------------

Handler = Callable[[dm.Caller, Any], Any]


class ManagementServicer(mgmt_grpc.ManagementServiceServicer):
    def __init__(self, domain: dm.Domain) -> None:
        self.d = domain

    def _run(self, method: str, request: Any, context: grpc.ServicerContext,
             validate: Callable[[Any], None], handler: Handler) -> Any:
        try:
            after = self.d.faults.check(method)
            headers = {k.lower(): v for k, v in context.invocation_metadata()
                       if isinstance(v, str)}
            caller = self.d.authenticate(headers.get("authorization"),
                                         headers.get("x-zitadel-orgid"))
            self.d.authorize_v1(caller, dm.V1_PERMISSIONS[method])
            validate(request)
            answer = handler(caller, request)
            if after is not None:
                try:
                    after.apply()  # ZITADEL acted; the answer is late, lost or dropped
                except DropConnection:
                    # what a client sees when the connection is reset mid-call
                    raise EmuError("unavailable", "emulator: connection dropped") from None
            return answer
        except EmuError as error:
            code = _CODES.get(error.code, grpc.StatusCode.UNKNOWN)
            if error.detail_id:
                context.set_trailing_metadata(
                    ((STATUS_DETAILS_KEY, status_details(code, error)),)
                )
            context.abort(code, error.message)

    # -- org and users --

    def GetMyOrg(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._run("GetMyOrg", request, context, lambda r: None,
                         lambda c, r: mgmt_pb.GetMyOrgResponse(org=_org_v1(self.d.get_my_org(c))))

    def GetUserByID(self, request: Any, context: grpc.ServicerContext) -> Any:
        def validate(r: Any) -> None:
            _len("GetUserByIDRequest", "Id", r.id)

        return self._run("GetUserByID", request, context, validate, lambda c, r: (
            mgmt_pb.GetUserByIDResponse(user=user_v1(self.d.get_user_by_id_v1(c, r.id)))))

    def GetUserByLoginNameGlobal(self, request: Any, context: grpc.ServicerContext) -> Any:
        def validate(r: Any) -> None:
            _len("GetUserByLoginNameGlobalRequest", "LoginName", r.login_name)

        def handle(c: dm.Caller, r: Any) -> Any:
            user = self.d.get_user_by_login_name_global(c, r.login_name)
            return mgmt_pb.GetUserByLoginNameGlobalResponse(user=user_v1(user))

        return self._run("GetUserByLoginNameGlobal", request, context, validate, handle)

    def ListUsers(self, request: Any, context: grpc.ServicerContext) -> Any:
        queries: list[Any] = []

        def validate(r: Any) -> None:
            queries.extend(_user_queries(r))

        def handle(c: dm.Caller, r: Any) -> Any:
            offset, limit, asc = _page(r.query)
            total, users = self.d.list_users_v1(c, queries, offset, limit, asc, r.sorting_column)
            return mgmt_pb.ListUsersResponse(
                details=_list_details(self.d, total, users),
                sorting_column=r.sorting_column,
                result=[user_v1(u) for u in users],
            )

        return self._run("ListUsers", request, context, validate, handle)

    # -- machine keys --

    def AddMachineKey(self, request: Any, context: grpc.ServicerContext) -> Any:
        def validate(r: Any) -> None:
            _min1("AddMachineKeyRequest", "UserId", r.user_id)
            _defined("AddMachineKeyRequest", "Type", r.type, authn_pb.KeyType)
            if r.type == authn_pb.KEY_TYPE_UNSPECIFIED:
                raise _pgv("AddMachineKeyRequest", "Type", "value must not be in list [0]")

        def handle(c: dm.Caller, r: Any) -> Any:
            expiration = _instant(r.expiration_date) if r.HasField("expiration_date") else None
            added = self.d.add_machine_key_v1(c, r.user_id, expiration, r.public_key or None)
            return mgmt_pb.AddMachineKeyResponse(
                key_id=added.key.id,
                key_details=added.key_details or b"",
                details=_add_details(added.details),
            )

        return self._run("AddMachineKey", request, context, validate, handle)

    def ListMachineKeys(self, request: Any, context: grpc.ServicerContext) -> Any:
        def validate(r: Any) -> None:
            _len("ListMachineKeysRequest", "UserId", r.user_id)

        def handle(c: dm.Caller, r: Any) -> Any:
            offset, limit, _ = _page(r.query)
            total, keys = self.d.list_machine_keys_v1(c, r.user_id, offset, limit)
            return mgmt_pb.ListMachineKeysResponse(
                details=_list_details(self.d, total, keys), result=[_key_v1(k) for k in keys]
            )

        return self._run("ListMachineKeys", request, context, validate, handle)

    def GetMachineKeyByIDs(self, request: Any, context: grpc.ServicerContext) -> Any:
        def validate(r: Any) -> None:
            _len("GetMachineKeyByIDsRequest", "UserId", r.user_id)
            _len("GetMachineKeyByIDsRequest", "KeyId", r.key_id)

        return self._run("GetMachineKeyByIDs", request, context, validate, lambda c, r: (
            mgmt_pb.GetMachineKeyByIDsResponse(
                key=_key_v1(self.d.get_machine_key_v1(c, r.user_id, r.key_id)))))

    def RemoveMachineKey(self, request: Any, context: grpc.ServicerContext) -> Any:
        def validate(r: Any) -> None:
            _len("RemoveMachineKeyRequest", "UserId", r.user_id)
            _len("RemoveMachineKeyRequest", "KeyId", r.key_id)

        return self._run("RemoveMachineKey", request, context, validate, lambda c, r: (
            mgmt_pb.RemoveMachineKeyResponse(details=_change_details(
                self.d.remove_machine_key_v1(c, r.user_id, r.key_id)))))

    # -- personal access tokens --

    def AddPersonalAccessToken(self, request: Any, context: grpc.ServicerContext) -> Any:
        def validate(r: Any) -> None:
            _min1("AddPersonalAccessTokenRequest", "UserId", r.user_id)

        def handle(c: dm.Caller, r: Any) -> Any:
            expiration = _instant(r.expiration_date) if r.HasField("expiration_date") else None
            added = self.d.add_pat_v1(c, r.user_id, expiration)
            return mgmt_pb.AddPersonalAccessTokenResponse(
                token_id=added.pat.id, token=added.token, details=_add_details(added.details)
            )

        return self._run("AddPersonalAccessToken", request, context, validate, handle)

    def ListPersonalAccessTokens(self, request: Any, context: grpc.ServicerContext) -> Any:
        def validate(r: Any) -> None:
            _len("ListPersonalAccessTokensRequest", "UserId", r.user_id)

        def handle(c: dm.Caller, r: Any) -> Any:
            offset, limit, _ = _page(r.query)
            total, pats = self.d.list_pats_v1(c, r.user_id, offset, limit)
            return mgmt_pb.ListPersonalAccessTokensResponse(
                details=_list_details(self.d, total, pats), result=[_pat_v1(p) for p in pats]
            )

        return self._run("ListPersonalAccessTokens", request, context, validate, handle)

    def GetPersonalAccessTokenByIDs(self, request: Any, context: grpc.ServicerContext) -> Any:
        def validate(r: Any) -> None:
            _len("GetPersonalAccessTokenByIDsRequest", "UserId", r.user_id)
            _len("GetPersonalAccessTokenByIDsRequest", "TokenId", r.token_id)

        return self._run("GetPersonalAccessTokenByIDs", request, context, validate, lambda c, r: (
            mgmt_pb.GetPersonalAccessTokenByIDsResponse(
                token=_pat_v1(self.d.get_pat_v1(c, r.user_id, r.token_id)))))

    def RemovePersonalAccessToken(self, request: Any, context: grpc.ServicerContext) -> Any:
        def validate(r: Any) -> None:
            _len("RemovePersonalAccessTokenRequest", "UserId", r.user_id)
            _len("RemovePersonalAccessTokenRequest", "TokenId", r.token_id)

        return self._run("RemovePersonalAccessToken", request, context, validate, lambda c, r: (
            mgmt_pb.RemovePersonalAccessTokenResponse(details=_change_details(
                self.d.remove_pat_v1(c, r.user_id, r.token_id)))))

    # -- machine secret --

    def GenerateMachineSecret(self, request: Any, context: grpc.ServicerContext) -> Any:
        def validate(r: Any) -> None:
            _min1("GenerateMachineSecretRequest", "UserId", r.user_id)

        def handle(c: dm.Caller, r: Any) -> Any:
            added = self.d.generate_machine_secret_v1(c, r.user_id)
            return mgmt_pb.GenerateMachineSecretResponse(
                client_id=added.client_id, client_secret=added.secret,
                details=_add_details(added.details),
            )

        return self._run("GenerateMachineSecret", request, context, validate, handle)

    def RemoveMachineSecret(self, request: Any, context: grpc.ServicerContext) -> Any:
        def validate(r: Any) -> None:
            _len("RemoveMachineSecretRequest", "UserId", r.user_id)

        return self._run("RemoveMachineSecret", request, context, validate, lambda c, r: (
            mgmt_pb.RemoveMachineSecretResponse(details=_change_details(
                self.d.remove_machine_secret_v1(c, r.user_id)))))

    # -- metadata --

    def SetUserMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        def validate(r: Any) -> None:
            _len("SetUserMetadataRequest", "Id", r.id)
            _len("SetUserMetadataRequest", "Key", r.key)
            if not 1 <= len(r.value) <= 500_000:
                raise _pgv("SetUserMetadataRequest", "Value",
                           "value length must be between 1 and 500000 bytes, inclusive")

        def handle(c: dm.Caller, r: Any) -> Any:
            md = self.d.set_user_metadata_v1(c, r.id, r.key, r.value)
            return mgmt_pb.SetUserMetadataResponse(
                id=r.id,
                details=object_pb.ObjectDetails(sequence=md.sequence, change_date=_ts(md.changed),
                                                resource_owner=md.org_id),
            )

        return self._run("SetUserMetadata", request, context, validate, handle)

    def ListUserMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        key_queries: list[tuple[str, int]] = []

        def validate(r: Any) -> None:
            key_queries.extend(_metadata_queries(r))

        def handle(c: dm.Caller, r: Any) -> Any:
            offset, limit, _ = _page(r.query)
            total, found = self.d.list_user_metadata_v1(c, r.id, offset, limit, key_queries)
            return mgmt_pb.ListUserMetadataResponse(
                details=_list_details(self.d, total, found),
                result=[_metadata_v1(m) for m in found],
            )

        return self._run("ListUserMetadata", request, context, validate, handle)

    def RemoveUserMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        def validate(r: Any) -> None:
            _len("RemoveUserMetadataRequest", "Id", r.id)
            _len("RemoveUserMetadataRequest", "Key", r.key)

        return self._run("RemoveUserMetadata", request, context, validate, lambda c, r: (
            mgmt_pb.RemoveUserMetadataResponse(details=_change_details(
                self.d.remove_user_metadata_v1(c, r.id, r.key)))))


# --- server ---------------------------------------------------------------------------------

#: Go gRPC's default keepalive enforcement (MinTime 5 min, no pings without
#: streams) as ZITADEL runs it, so a client that pings too often notices here.
SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.http2.min_ping_interval_without_data_ms", 300_000),
    ("grpc.keepalive_permit_without_calls", 0),
)


def start_grpc(
    domain: dm.Domain,
    port: int = 0,
    *,
    tls: tuple[bytes, bytes] | None = None,
    max_workers: int = 16,
) -> tuple[grpc.Server, int]:
    """Start the ManagementService on 127.0.0.1:``port`` (0 = any free port);
    ``tls`` = (certificate chain PEM, private key PEM) serves TLS instead of
    plaintext.  Returns the started server and the bound port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers,
                                                    thread_name_prefix="grpc-v1"),
                         options=list(SERVER_OPTIONS))
    mgmt_grpc.add_ManagementServiceServicer_to_server(ManagementServicer(domain), server)
    address = f"127.0.0.1:{port}"
    if tls is None:
        bound = server.add_insecure_port(address)
    else:
        chain, key = tls
        bound = server.add_secure_port(address, grpc.ssl_server_credentials([(key, chain)]))
    if bound == 0:
        raise OSError(f"cannot bind gRPC port {address}")
    server.start()
    return server, bound


def serve_grpc(domain: dm.Domain, port: int) -> grpc.Server:
    """The emulator's v1 gRPC endpoint, started and bound on 127.0.0.1:``port``."""
    server, _ = start_grpc(domain, port)
    return server
