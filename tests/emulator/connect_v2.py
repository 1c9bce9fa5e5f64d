"""``zitadel.user.v2.UserService`` (and ``zitadel.org.v2.OrganizationService``'s
``ListOrganizations``) over the Connect protocol (unary, JSON codec).

``handle()`` takes one HTTP request and returns (status, headers, body).
Processing order follows connect-go + ZITADEL's interceptors (§1): route ->
HTTP method -> content type -> unmarshal -> [fault injection] -> authentication
(token, org header) -> PGV validation -> handler (domain rules, §6.4).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tests.emulator import domain as dm
from tests.emulator import pgv, wire
from tests.emulator.errors import EmuError
from tests.emulator.faults import DropConnection
from tests.emulator.protojson import Enum, Msg, b64, clean, decode, enum_out, schema_of, ts, u64

SERVICE = "zitadel.user.v2.UserService"
ORG_SERVICE = "zitadel.org.v2.OrganizationService"
#: Every Connect service the emulator serves (one handler table, method names are unique).
SERVICES = (SERVICE, ORG_SERVICE)

#: Connect code -> HTTP status (connect-go protocol_connect.go).
HTTP_STATUS = {
    "canceled": 499, "unknown": 500, "invalid_argument": 400, "deadline_exceeded": 504,
    "not_found": 404, "already_exists": 409, "permission_denied": 403,
    "resource_exhausted": 429, "failed_precondition": 400, "aborted": 409,
    "out_of_range": 400, "unimplemented": 501, "internal": 500, "unavailable": 503,
    "data_loss": 500, "unauthenticated": 401,
}

#: Methods that exist only from ZITADEL v4 on (§4.3); ``--no-v2-keys`` hides them.
V4_ONLY = frozenset({
    "AddKey", "RemoveKey", "ListKeys", "AddPersonalAccessToken", "RemovePersonalAccessToken",
    "ListPersonalAccessTokens", "SetUserMetadata", "ListUserMetadata", "DeleteUserMetadata",
    # same change as the key and PAT methods (zitadel/zitadel PR 9763, §9)
    "AddSecret", "RemoveSecret",
})

Response = tuple[int, dict[str, str], bytes]

# --- schemas ----------------------------------------------------------------------

# output enums (names in responses); requests are read with the descriptors in wire.py
USER_FIELD_NAME = Enum("zitadel.user.v2.UserFieldName", {
    f"USER_FIELD_NAME_{n}": i for i, n in enumerate(
        ["UNSPECIFIED", "USER_NAME", "FIRST_NAME", "LAST_NAME", "NICK_NAME", "DISPLAY_NAME",
         "EMAIL", "STATE", "TYPE", "CREATION_DATE"])})
USER_STATE = Enum("zitadel.user.v2.UserState", {
    "USER_STATE_UNSPECIFIED": 0, "USER_STATE_ACTIVE": 1, "USER_STATE_INACTIVE": 2,
    "USER_STATE_DELETED": 3, "USER_STATE_LOCKED": 4, "USER_STATE_INITIAL": 5})
ACCESS_TOKEN_TYPE = Enum("zitadel.user.v2.AccessTokenType", {
    "ACCESS_TOKEN_TYPE_BEARER": 0, "ACCESS_TOKEN_TYPE_JWT": 1})


def request_schema(method: str) -> Msg:
    """The protojson schema of ``method``'s request, from the emulator's copy of
    ZITADEL's descriptors (tests/emulator/proto), so JSON, binary and gRPC read
    the same fields (query kinds included)."""
    return schema_of(wire.descriptor_of(input_type(method)))


def _method(method: str) -> Any:
    found = wire.service_method(SERVICE_OF.get(method, SERVICE), method)
    assert found is not None, method
    return found


def input_type(method: str) -> str:
    return str(_method(method).input_type.full_name)


def output_type(method: str) -> str:
    return str(_method(method).output_type.full_name)


def validate(method: str, req: dict[str, Any]) -> None:
    """PGV with the rules of ZITADEL's descriptors (``pgv.RULES``)."""
    pgv.validate(wire.descriptor_of(input_type(method)), req)


# --- conversion to domain arguments -------------------------------------------------

_FILTER_FIELDS = {"key_id_filter": "id", "token_id_filter": "id", "user_id_filter": "user_id",
                  "organization_id_filter": "organization_id",
                  "created_date_filter": "created", "expiration_date_filter": "expiration"}


def _resource_filters(req: dict[str, Any]) -> list[dm.ResourceFilter]:
    out = []
    for flt in req.get("filters", []):
        (name, value), = flt.items()
        field = _FILTER_FIELDS[name]
        if field in ("created", "expiration"):
            out.append(dm.ResourceFilter(field, timestamp=value.get("timestamp", 0),
                                         method=value.get("method", 0)))
        else:
            out.append(dm.ResourceFilter(field, id=value.get("id", "")))
    return out


def _pagination(req: dict[str, Any], key: str = "pagination") -> tuple[int, int, bool]:
    p = req.get(key, {})
    return p.get("offset", 0), p.get("limit", 0), p.get("asc", False)


_TEXT_QUERIES = {"user_name_query": ("user_name", None), "login_name_query": ("login_name", None),
                 "first_name_query": ("first_name", "given_name"),
                 "last_name_query": ("last_name", "family_name"),
                 "nick_name_query": ("nick_name", "nick_name"),
                 "display_name_query": ("display_name", "display_name"),
                 "email_query": ("email_address", "email")}
_STATE_NAMES = {v: k for k, v in dm.USER_STATES_V2.items()}


def user_query(q: dict[str, Any], states: Mapping[int, str] = _STATE_NAMES) -> Any:
    """A (validated) SearchQuery dict as a domain query; v1 shares the shape
    and passes its own state numbering."""
    if not q:
        raise EmuError("invalid_argument", "invalid SearchQuery.Query: value is required")
    (name, v), = q.items()
    if name in _TEXT_QUERIES:
        field, attr = _TEXT_QUERIES[name]
        method = v.get("method", 0)
        if name == "user_name_query":
            return dm.UserNameQ(v.get(field, ""), method)
        if name == "login_name_query":
            return dm.LoginNameQ(v.get(field, ""), method)
        return dm.FieldTextQ(str(attr), v.get(field, ""), method)
    if name == "type_query":
        return dm.TypeQ({1: "human", 2: "machine"}.get(v.get("type", 0), "unspecified"))
    if name == "state_query":
        return dm.StateQ(states.get(v.get("state", 0), "UNSPECIFIED"))
    if name == "in_user_ids_query":
        return dm.InIdsQ(tuple(v.get("user_ids", [])))
    if name == "in_user_emails_query":
        # email IN (...): exact addresses; machine users have none
        return dm.OrQ(tuple(dm.AndQ((dm.TypeQ("human"), dm.FieldTextQ("email", e, 0)))
                            for e in v.get("user_emails", [])))
    if name == "phone_query":
        # the emulator's humans have no phone numbers: nothing matches
        return dm.InIdsQ(())
    if name == "organization_id_query":
        return dm.OrgIdQ(v.get("organization_id", ""))
    if name in ("and_query", "or_query"):
        subs = tuple(user_query(s, states) for s in v.get("queries", []))
        return dm.AndQ(subs) if name == "and_query" else dm.OrQ(subs)
    if name == "not_query":
        return dm.NotQ(user_query(v.get("query", {}), states))
    raise AssertionError(name)


# --- response rendering ------------------------------------------------------------


def _resource(item: dm.MachineKey | dm.Pat) -> dict[str, Any]:
    return {"creationDate": ts(item.created), "changeDate": ts(item.changed), "id": item.id,
            "userId": item.user_id, "organizationId": item.org_id,
            "expirationDate": ts(item.expiration)}


def user_v2(user: dm.User) -> dict[str, Any]:
    out: dict[str, Any] = {
        "userId": user.id,
        "state": enum_out(USER_STATE, dm.user_state_v2(user.state)),
        "username": user.username,
        "loginNames": user.login_names,
        "preferredLoginName": user.preferred_login_name,
    }
    if user.type == "machine":
        out["machine"] = {"name": user.name, "description": user.description,
                          "hasSecret": user.has_secret,
                          "accessTokenType": enum_out(ACCESS_TOKEN_TYPE, user.access_token_type)}
    else:
        out["human"] = {"profile": {"givenName": user.given_name,
                                    "familyName": user.family_name,
                                    "displayName": user.display_name},
                        "email": {"email": user.email}}
    out["details"] = _details(user)
    return out


def _details(user: dm.User) -> dict[str, Any]:
    return {"sequence": u64(user.sequence), "changeDate": ts(user.changed),
            "resourceOwner": user.org_id, "creationDate": ts(user.created)}


# --- handlers ----------------------------------------------------------------------

Handler = Callable[[dm.Domain, dm.Caller, dict[str, Any]], dict[str, Any]]


def _add_key(d: dm.Domain, c: dm.Caller, r: dict[str, Any]) -> dict[str, Any]:
    added = d.add_key_v2(c, r["user_id"], r["expiration_date"], r.get("public_key"))
    return {"creationDate": ts(added.key.created), "keyId": added.key.id,
            "keyContent": b64(added.key_details)}


def _remove_key(d: dm.Domain, c: dm.Caller, r: dict[str, Any]) -> dict[str, Any]:
    return {"deletionDate": ts(d.remove_key_v2(c, r["user_id"], r["key_id"]))}


def _list_keys(d: dm.Domain, c: dm.Caller, r: dict[str, Any]) -> dict[str, Any]:
    offset, limit, asc = _pagination(r)
    total, applied, items = d.list_keys_v2(c, _resource_filters(r), r.get("sorting_column", 0),
                                           offset, limit, asc)
    return {"pagination": {"totalResult": u64(total), "appliedLimit": u64(applied)},
            "result": [_resource(k) for k in items]}


def _add_pat(d: dm.Domain, c: dm.Caller, r: dict[str, Any]) -> dict[str, Any]:
    added = d.add_pat_v2(c, r["user_id"], r["expiration_date"])
    return {"creationDate": ts(added.pat.created), "tokenId": added.pat.id, "token": added.token}


def _remove_pat(d: dm.Domain, c: dm.Caller, r: dict[str, Any]) -> dict[str, Any]:
    return {"deletionDate": ts(d.remove_pat_v2(c, r["user_id"], r["token_id"]))}


def _list_pats(d: dm.Domain, c: dm.Caller, r: dict[str, Any]) -> dict[str, Any]:
    offset, limit, asc = _pagination(r)
    total, applied, items = d.list_pats_v2(c, _resource_filters(r), r.get("sorting_column", 0),
                                           offset, limit, asc)
    return {"pagination": {"totalResult": u64(total), "appliedLimit": u64(applied)},
            "result": [_resource(p) for p in items]}


def _add_secret(d: dm.Domain, c: dm.Caller, r: dict[str, Any]) -> dict[str, Any]:
    added = d.add_secret_v2(c, r["user_id"])
    return {"creationDate": ts(added.details.creation_date), "clientSecret": added.secret}


def _remove_secret(d: dm.Domain, c: dm.Caller, r: dict[str, Any]) -> dict[str, Any]:
    return {"deletionDate": ts(d.remove_secret_v2(c, r["user_id"]))}


def _get_user(d: dm.Domain, c: dm.Caller, r: dict[str, Any]) -> dict[str, Any]:
    user = d.get_user_by_id_v2(c, r["user_id"])
    return {"details": _details(user), "user": user_v2(user)}


def _list_users(d: dm.Domain, c: dm.Caller, r: dict[str, Any]) -> dict[str, Any]:
    offset, limit, asc = _pagination(r, "query")
    queries = [user_query(q) for q in r.get("queries", [])]
    column = r.get("sorting_column", 0)
    total, users = d.list_users_v2(c, queries, offset, limit, asc, column)
    return {"details": {"totalResult": u64(total), "timestamp": ts(d.now())},
            "sortingColumn": enum_out(USER_FIELD_NAME, column),
            "result": [user_v2(u) for u in users]}


def _set_metadata(d: dm.Domain, c: dm.Caller, r: dict[str, Any]) -> dict[str, Any]:
    entries = [(m.get("key", ""), m.get("value", b"")) for m in r.get("metadata", [])]
    return {"setDate": ts(d.set_user_metadata_v2(c, r["user_id"], entries))}


def _list_metadata(d: dm.Domain, c: dm.Caller, r: dict[str, Any]) -> dict[str, Any]:
    offset, limit, asc = _pagination(r)
    key_filters = []
    for flt in r.get("filters", []):
        if "key_filter" not in flt:
            raise EmuError("invalid_argument",
                           "invalid MetadataSearchFilter.Filter: value is required")
        kf = flt["key_filter"]
        key_filters.append((kf.get("key", ""), kf.get("method", 0)))
    total, applied, items = d.list_user_metadata_v2(c, r["user_id"], key_filters, offset,
                                                    limit, asc)
    return {"pagination": {"totalResult": u64(total), "appliedLimit": u64(applied)},
            "metadata": [{"creationDate": ts(m.created), "changeDate": ts(m.changed),
                          "key": m.key, "value": b64(m.value)} for m in items]}


def _delete_metadata(d: dm.Domain, c: dm.Caller, r: dict[str, Any]) -> dict[str, Any]:
    return {"deletionDate": ts(d.delete_user_metadata_v2(c, r["user_id"], r.get("keys", [])))}


ORG_STATE = Enum("zitadel.org.v2.OrganizationState", {
    "ORGANIZATION_STATE_UNSPECIFIED": 0, "ORGANIZATION_STATE_ACTIVE": 1,
    "ORGANIZATION_STATE_INACTIVE": 2, "ORGANIZATION_STATE_REMOVED": 3})
ORG_FIELD_NAME = Enum("zitadel.org.v2.OrganizationFieldName", {
    "ORGANIZATION_FIELD_NAME_UNSPECIFIED": 0, "ORGANIZATION_FIELD_NAME_NAME": 1,
    "ORGANIZATION_FIELD_NAME_CREATION_DATE": 2})
_ORG_STATES = {v: k.removeprefix("ORGANIZATION_STATE_") for k, v in ORG_STATE.values.items()}


def _org_query(q: dict[str, Any]) -> dm.OrgQ:
    (name, value), = q.items()
    if name == "name_query":
        return dm.OrgQ("name", value.get("name", ""), value.get("method", 0))
    if name == "domain_query":
        return dm.OrgQ("domain", value.get("domain", ""), value.get("method", 0))
    if name == "id_query":
        return dm.OrgQ("id", value.get("id", ""))
    if name == "state_query":
        return dm.OrgQ("state", _ORG_STATES.get(value.get("state", 0), ""))
    return dm.OrgQ("default")


def _list_orgs(d: dm.Domain, c: dm.Caller, r: dict[str, Any]) -> dict[str, Any]:
    offset, limit, asc = _pagination(r, "query")
    column = r.get("sorting_column", 0)
    queries = [_org_query(q) for q in r.get("queries", [])]
    total, orgs = d.list_orgs_v2(c, queries, offset, limit, asc, column)
    return {"details": {"totalResult": u64(total), "timestamp": ts(d.now())},
            "sortingColumn": enum_out(ORG_FIELD_NAME, column),
            "result": [{"id": o.id,
                        "details": {"sequence": u64(o.sequence), "changeDate": ts(o.changed),
                                    "resourceOwner": o.id, "creationDate": ts(o.created)},
                        "state": enum_out(ORG_STATE, 1 if o.state == "ACTIVE" else 2),
                        "name": o.name, "primaryDomain": o.primary_domain} for o in orgs]}


HANDLERS: dict[str, Handler] = {
    "ListOrganizations": _list_orgs,
    "AddKey": _add_key, "RemoveKey": _remove_key, "ListKeys": _list_keys,
    "AddPersonalAccessToken": _add_pat, "RemovePersonalAccessToken": _remove_pat,
    "ListPersonalAccessTokens": _list_pats, "GetUserByID": _get_user, "ListUsers": _list_users,
    "SetUserMetadata": _set_metadata, "ListUserMetadata": _list_metadata,
    "DeleteUserMetadata": _delete_metadata, "AddSecret": _add_secret,
    "RemoveSecret": _remove_secret,
}

#: The service of each method (UserService unless listed).
SERVICE_OF: dict[str, str] = {"ListOrganizations": ORG_SERVICE}

# --- wire ---------------------------------------------------------------------------


def _error_detail_bytes(detail_id: str, message: str) -> bytes:
    """zitadel.v1.ErrorDetail{id=1, message=2} encoded by hand (two string fields)."""
    out = b""
    for number, text in ((1, detail_id), (2, message)):
        data = text.encode()
        if data:
            out += bytes([(number << 3) | 2]) + _varint(len(data)) + data
    return out


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def error_response(err: EmuError) -> Response:
    body: dict[str, Any] = {"code": err.code, "message": err.message}
    if err.detail_id:
        detail_msg = err.detail_message or ""
        raw = _error_detail_bytes(err.detail_id, detail_msg)
        body["details"] = [{
            "type": "zitadel.v1.ErrorDetail",
            "value": base64.b64encode(raw).decode().rstrip("="),
            "debug": {"id": err.detail_id, "message": detail_msg},
        }]
    return (HTTP_STATUS.get(err.code, 500), {"Content-Type": "application/json"},
            json.dumps(body).encode())


def not_found() -> Response:
    # Go's http.NotFound, as connect-go's generated service mux answers unknown procedures.
    return 404, {"Content-Type": "text/plain; charset=utf-8",
                 "X-Content-Type-Options": "nosniff"}, b"404 page not found\n"


def exists(method: str, *, no_v2_keys: bool = False, service: str = SERVICE) -> bool:
    return (method in HANDLERS and SERVICE_OF.get(method, SERVICE) == service
            and not (no_v2_keys and method in V4_ONLY))


def invoke(domain: dm.Domain, method: str, headers: Mapping[str, str],
           req: dict[str, Any]) -> dict[str, Any]:
    """After unmarshal, whatever the protocol: authentication (token, org
    header) -> PGV -> the handler.  Returns the protojson response dict."""
    caller = domain.authenticate(headers.get("authorization"), headers.get("x-zitadel-orgid"))
    validate(method, req)
    return dict(clean(HANDLERS[method](domain, caller, req)))


def encode_proto(method: str, result: dict[str, Any]) -> bytes:
    return wire.from_json_dict(output_type(method), result)


def decode_proto(method: str, body: bytes) -> dict[str, Any]:
    from google.protobuf.message import DecodeError

    try:
        return wire.parse(input_type(method), body)
    except DecodeError as exc:
        raise EmuError("invalid_argument",
                       "unmarshal message: proto: cannot parse invalid wire-format data") \
            from exc


#: Connect codecs (connect-go's defaults): "json" and "proto".
CODECS = {"application/json": "json", "application/proto": "proto"}


def handle(domain: dm.Domain, method: str, http_method: str, headers: Mapping[str, str],
           body: bytes, *, no_v2_keys: bool = False, service: str = SERVICE) -> Response:
    """Connect unary over HTTP/1.1 or HTTP/2.  ``headers``: lower-cased names."""
    if not exists(method, no_v2_keys=no_v2_keys, service=service):
        return not_found()
    return serve_unary(domain, method, http_method, headers, body, codec=Codec(
        decode_proto=decode_proto, json_schema=request_schema, invoke=invoke,
        encode_proto=encode_proto))


@dataclass(frozen=True)
class Codec:
    """One Connect service's message handling (the UserService here, the
    WebKeyService in tests/emulator/webkeys.py): what :func:`serve_unary` needs."""

    decode_proto: Callable[[str, bytes], dict[str, Any]]
    json_schema: Callable[[str], Msg]
    invoke: Callable[[Any, str, Mapping[str, str], dict[str, Any]], dict[str, Any]]
    encode_proto: Callable[[str, dict[str, Any]], bytes]


def serve_unary(domain: dm.Domain, method: str, http_method: str, headers: Mapping[str, str],
                body: bytes, *, codec: Codec) -> Response:
    """A known procedure's Connect unary call: faults, method, codec, decode,
    invoke, encode, errors (as connect-go answers them)."""
    try:
        after = domain.faults.check(method)
    except EmuError as err:
        return error_response(err)
    if http_method != "POST":
        return 405, {"Allow": "POST", "Content-Type": "text/plain"}, b"405 method not allowed\n"
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    kind = CODECS.get(content_type)
    if kind is None:
        return 415, {"Accept-Post": "application/json, application/proto"}, b""
    try:
        if kind == "proto":
            req = codec.decode_proto(method, body)
        else:
            try:
                raw = json.loads(body or b"{}")
            except ValueError as exc:
                raise EmuError("invalid_argument",
                               f"unmarshal message: proto: syntax error ({exc})") from exc
            req = decode(codec.json_schema(method), raw)
        result = codec.invoke(domain, method, headers, req)
        if after is not None:
            after.apply()  # ZITADEL acted; the answer is late, lost or dropped
        if kind == "proto":
            return 200, {"Content-Type": "application/proto"}, codec.encode_proto(method, result)
    except EmuError as err:
        return error_response(err)
    except DropConnection:
        raise  # an injected lost answer: the server closes the connection
    except Exception:  # a bug in the emulator: answer like ZITADEL's internal errors
        import traceback

        traceback.print_exc()
        return error_response(EmuError("internal", "Errors.Internal"))
    return 200, {"Content-Type": "application/json"}, json.dumps(result).encode()
