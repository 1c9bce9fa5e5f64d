"""``zitadel.user.v2.UserService`` over the Connect protocol (unary, JSON codec).

``handle()`` takes one HTTP request and returns (status, headers, body).
Processing order follows connect-go + ZITADEL's interceptors (§1): route ->
HTTP method -> content type -> unmarshal -> [fault injection] -> authentication
(token, org header) -> PGV validation -> handler (domain rules, §6.4).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from typing import Any

from tests.emulator import domain as dm
from tests.emulator.errors import EmuError
from tests.emulator.faults import DropConnection
from tests.emulator.protojson import Enum, F, Msg, b64, camel, clean, decode, enum_out, ts, u64

SERVICE = "zitadel.user.v2.UserService"

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
})

Response = tuple[int, dict[str, str], bytes]

# --- schemas ----------------------------------------------------------------------

TEXT_QUERY_METHOD = Enum("zitadel.object.v2.TextQueryMethod", {
    f"TEXT_QUERY_METHOD_{n}": i for i, n in enumerate(
        ["EQUALS", "EQUALS_IGNORE_CASE", "STARTS_WITH", "STARTS_WITH_IGNORE_CASE", "CONTAINS",
         "CONTAINS_IGNORE_CASE", "ENDS_WITH", "ENDS_WITH_IGNORE_CASE"])})
TEXT_FILTER_METHOD = Enum("zitadel.filter.v2.TextFilterMethod", {
    k.replace("TEXT_QUERY_METHOD_", "TEXT_FILTER_METHOD_"): v
    for k, v in TEXT_QUERY_METHOD.values.items()})
TIMESTAMP_FILTER_METHOD = Enum("zitadel.filter.v2.TimestampFilterMethod", {
    "TIMESTAMP_FILTER_METHOD_EQUALS": 0, "TIMESTAMP_FILTER_METHOD_AFTER": 1,
    "TIMESTAMP_FILTER_METHOD_AFTER_OR_EQUALS": 2, "TIMESTAMP_FILTER_METHOD_BEFORE": 3,
    "TIMESTAMP_FILTER_METHOD_BEFORE_OR_EQUALS": 4})
KEY_FIELD_NAME = Enum("zitadel.user.v2.KeyFieldName", {
    "KEY_FIELD_NAME_UNSPECIFIED": 0, "KEY_FIELD_NAME_CREATED_DATE": 1, "KEY_FIELD_NAME_ID": 2,
    "KEY_FIELD_NAME_USER_ID": 3, "KEY_FIELD_NAME_ORGANIZATION_ID": 4,
    "KEY_FIELD_NAME_KEY_EXPIRATION_DATE": 5})
PAT_FIELD_NAME = Enum("zitadel.user.v2.PersonalAccessTokenFieldName", {
    f"PERSONAL_ACCESS_TOKEN_FIELD_NAME_{n}": i for i, n in enumerate(
        ["UNSPECIFIED", "CREATED_DATE", "ID", "USER_ID", "ORGANIZATION_ID", "EXPIRATION_DATE"])})
USER_FIELD_NAME = Enum("zitadel.user.v2.UserFieldName", {
    f"USER_FIELD_NAME_{n}": i for i, n in enumerate(
        ["UNSPECIFIED", "USER_NAME", "FIRST_NAME", "LAST_NAME", "NICK_NAME", "DISPLAY_NAME",
         "EMAIL", "STATE", "TYPE", "CREATION_DATE"])})
USER_STATE = Enum("zitadel.user.v2.UserState", {
    "USER_STATE_UNSPECIFIED": 0, "USER_STATE_ACTIVE": 1, "USER_STATE_INACTIVE": 2,
    "USER_STATE_DELETED": 3, "USER_STATE_LOCKED": 4, "USER_STATE_INITIAL": 5})
USER_TYPE = Enum("zitadel.user.v2.Type", {"TYPE_UNSPECIFIED": 0, "TYPE_HUMAN": 1,
                                          "TYPE_MACHINE": 2})
ACCESS_TOKEN_TYPE = Enum("zitadel.user.v2.AccessTokenType", {
    "ACCESS_TOKEN_TYPE_BEARER": 0, "ACCESS_TOKEN_TYPE_JWT": 1})

PAGINATION = Msg("PaginationRequest", (F("offset", "uint64"), F("limit", "uint32"),
                                       F("asc", "bool")))
LIST_QUERY = Msg("ListQuery", (F("offset", "uint64"), F("limit", "uint32"), F("asc", "bool")))
ID_FILTER = Msg("IDFilter", (F("id", "string"),))
TIMESTAMP_FILTER = Msg("TimestampFilter", (F("timestamp", "timestamp"),
                                           F("method", "enum", TIMESTAMP_FILTER_METHOD)))


def _resource_filter(name: str, id_field: str) -> Msg:
    return Msg(name, (
        F(id_field, "message", ID_FILTER, oneof="filter"),
        F("user_id_filter", "message", ID_FILTER, oneof="filter"),
        F("organization_id_filter", "message", ID_FILTER, oneof="filter"),
        F("created_date_filter", "message", TIMESTAMP_FILTER, oneof="filter"),
        F("expiration_date_filter", "message", TIMESTAMP_FILTER, oneof="filter"),
    ))


KEYS_FILTER = _resource_filter("KeysSearchFilter", "key_id_filter")
PATS_FILTER = _resource_filter("PersonalAccessTokensSearchFilter", "token_id_filter")


def _text_query(name: str, field: str) -> Msg:
    return Msg(name, (F(field, "string"), F("method", "enum", TEXT_QUERY_METHOD)))


_SEARCH_QUERY_FIELDS: list[F] = [
    F("user_name_query", "message", _text_query("UserNameQuery", "user_name"), oneof="query"),
    F("first_name_query", "message", _text_query("FirstNameQuery", "first_name"), oneof="query"),
    F("last_name_query", "message", _text_query("LastNameQuery", "last_name"), oneof="query"),
    F("nick_name_query", "message", _text_query("NickNameQuery", "nick_name"), oneof="query"),
    F("display_name_query", "message", _text_query("DisplayNameQuery", "display_name"),
      oneof="query"),
    F("email_query", "message", _text_query("EmailQuery", "email_address"), oneof="query"),
    F("state_query", "message", Msg("StateQuery", (F("state", "enum", USER_STATE),)),
      oneof="query"),
    F("type_query", "message", Msg("TypeQuery", (F("type", "enum", USER_TYPE),)), oneof="query"),
    F("login_name_query", "message", _text_query("LoginNameQuery", "login_name"), oneof="query"),
    F("in_user_ids_query", "message",
      Msg("InUserIDQuery", (F("user_ids", "string", repeated=True),)), oneof="query"),
    F("organization_id_query", "message",
      Msg("OrganizationIdQuery", (F("organization_id", "string"),)), oneof="query"),
]
SEARCH_QUERY = Msg("SearchQuery", ())  # fields completed below (recursive)
_AND = Msg("AndQuery", (F("queries", "message", SEARCH_QUERY, repeated=True),))
_OR = Msg("OrQuery", (F("queries", "message", SEARCH_QUERY, repeated=True),))
_NOT = Msg("NotQuery", (F("query", "message", SEARCH_QUERY),))
_SEARCH_QUERY_FIELDS += [F("or_query", "message", _OR, oneof="query"),
                         F("and_query", "message", _AND, oneof="query"),
                         F("not_query", "message", _NOT, oneof="query")]
object.__setattr__(SEARCH_QUERY, "fields", tuple(_SEARCH_QUERY_FIELDS))
SEARCH_QUERY.__post_init__()

METADATA = Msg("Metadata", (F("key", "string"), F("value", "bytes")))
METADATA_FILTER = Msg("MetadataSearchFilter", (
    F("key_filter", "message", Msg("MetadataKeyFilter", (
        F("key", "string"), F("method", "enum", TEXT_FILTER_METHOD))), oneof="filter"),
))

REQUESTS: dict[str, Msg] = {
    "AddKey": Msg("AddKeyRequest", (F("user_id", "string"), F("expiration_date", "timestamp"),
                                    F("public_key", "bytes"))),
    "RemoveKey": Msg("RemoveKeyRequest", (F("user_id", "string"), F("key_id", "string"))),
    "ListKeys": Msg("ListKeysRequest", (
        F("pagination", "message", PAGINATION), F("sorting_column", "enum", KEY_FIELD_NAME),
        F("filters", "message", KEYS_FILTER, repeated=True))),
    "AddPersonalAccessToken": Msg("AddPersonalAccessTokenRequest", (
        F("user_id", "string"), F("expiration_date", "timestamp"))),
    "RemovePersonalAccessToken": Msg("RemovePersonalAccessTokenRequest", (
        F("user_id", "string"), F("token_id", "string"))),
    "ListPersonalAccessTokens": Msg("ListPersonalAccessTokensRequest", (
        F("pagination", "message", PAGINATION), F("sorting_column", "enum", PAT_FIELD_NAME),
        F("filters", "message", PATS_FILTER, repeated=True))),
    "GetUserByID": Msg("GetUserByIDRequest", (F("user_id", "string"),)),
    "ListUsers": Msg("ListUsersRequest", (
        F("query", "message", LIST_QUERY), F("sorting_column", "enum", USER_FIELD_NAME),
        F("queries", "message", SEARCH_QUERY, repeated=True))),
    "SetUserMetadata": Msg("SetUserMetadataRequest", (
        F("user_id", "string"), F("metadata", "message", METADATA, repeated=True))),
    "ListUserMetadata": Msg("ListUserMetadataRequest", (
        F("user_id", "string"), F("pagination", "message", PAGINATION),
        F("filters", "message", METADATA_FILTER, repeated=True))),
    "DeleteUserMetadata": Msg("DeleteUserMetadataRequest", (
        F("user_id", "string"), F("keys", "string", repeated=True))),
}

# --- PGV (protoc-gen-validate) rules, first violation wins -------------------------


def _pgv(msg: str, field: str, reason: str) -> EmuError:
    # PGV errors are neither translated nor carry a ZITADEL ErrorDetail.
    return EmuError("invalid_argument", f"invalid {msg}.{_pascal(field)}: {reason}")


def _pascal(name: str) -> str:
    c = camel(name)
    return c[:1].upper() + c[1:]


def _len_between(msg: str, req: dict[str, Any], field: str, lo: int = 1, hi: int = 200) -> None:
    n = len(req.get(field, ""))
    if not lo <= n <= hi:
        raise _pgv(msg, field, f"value length must be between {lo} and {hi} runes, inclusive")


def _required(msg: str, req: dict[str, Any], field: str) -> None:
    if field not in req:
        raise _pgv(msg, field, "value is required")


def _defined(msg: str, req: dict[str, Any], field: str, enum: Enum) -> None:
    if field in req and enum.name_of(req[field]) is None:
        raise _pgv(msg, field, "value must be one of the defined enum values")


def _embedded(msg: str, field: str, index: int | None, inner: EmuError) -> EmuError:
    where = _pascal(field) + (f"[{index}]" if index is not None else "")
    return EmuError("invalid_argument",
                    f"invalid {msg}.{where}: embedded message failed validation | "
                    f"caused by: {inner.message}")


def _validate_resource_filters(msg: str, req: dict[str, Any], fmsg: Msg) -> None:
    for i, flt in enumerate(req.get("filters", [])):
        try:
            if not flt:
                raise EmuError("invalid_argument",
                               f"invalid {fmsg.name}.Filter: value is required")
            (name, value), = flt.items()
            try:
                if name.endswith("date_filter"):
                    _defined("TimestampFilter", value, "method", TIMESTAMP_FILTER_METHOD)
                elif len(value.get("id", "")) > 200:
                    raise _pgv("IDFilter", "id", "value length must be at most 200 runes")
            except EmuError as inner:
                raise _embedded(fmsg.name, name, None, inner) from None
        except EmuError as inner:
            raise _embedded(msg, "filters", i, inner) from None


def validate(method: str, req: dict[str, Any]) -> None:
    msg = REQUESTS[method].name
    if method in ("AddKey", "AddPersonalAccessToken"):
        _len_between(msg, req, "user_id")
        _required(msg, req, "expiration_date")
    elif method == "RemoveKey":
        _len_between(msg, req, "user_id")
        _len_between(msg, req, "key_id")
    elif method == "RemovePersonalAccessToken":
        _len_between(msg, req, "user_id")
        _len_between(msg, req, "token_id")
    elif method == "ListKeys":
        _defined(msg, req, "sorting_column", KEY_FIELD_NAME)
        _validate_resource_filters(msg, req, KEYS_FILTER)
    elif method == "ListPersonalAccessTokens":
        _defined(msg, req, "sorting_column", PAT_FIELD_NAME)
        _validate_resource_filters(msg, req, PATS_FILTER)
    elif method in ("GetUserByID", "ListUserMetadata"):
        _len_between(msg, req, "user_id")
    elif method == "SetUserMetadata":
        _len_between(msg, req, "user_id")
        for i, md in enumerate(req.get("metadata", [])):
            try:
                _len_between("Metadata", md, "key")
                if not 1 <= len(md.get("value", b"")) <= 500000:
                    raise _pgv("Metadata", "value",
                               "value length must be between 1 and 500000 bytes, inclusive")
            except EmuError as inner:
                raise _embedded(msg, "metadata", i, inner) from None
    elif method == "DeleteUserMetadata":
        _len_between(msg, req, "user_id")
        for i, key in enumerate(req.get("keys", [])):
            if not 1 <= len(key) <= 200:
                raise EmuError("invalid_argument",
                               f"invalid {msg}.Keys[{i}]: value length must be between 1 and "
                               "200 runes, inclusive")
    elif method == "ListUsers":
        _defined(msg, req, "sorting_column", USER_FIELD_NAME)


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


def user_query(q: dict[str, Any]) -> Any:
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
        return dm.StateQ(_STATE_NAMES.get(v.get("state", 0), "UNSPECIFIED"))
    if name == "in_user_ids_query":
        return dm.InIdsQ(tuple(v.get("user_ids", [])))
    if name == "organization_id_query":
        return dm.OrgIdQ(v.get("organization_id", ""))
    if name in ("and_query", "or_query"):
        subs = tuple(user_query(s) for s in v.get("queries", []))
        return dm.AndQ(subs) if name == "and_query" else dm.OrQ(subs)
    if name == "not_query":
        return dm.NotQ(user_query(v.get("query", {})))
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


HANDLERS: dict[str, Handler] = {
    "AddKey": _add_key, "RemoveKey": _remove_key, "ListKeys": _list_keys,
    "AddPersonalAccessToken": _add_pat, "RemovePersonalAccessToken": _remove_pat,
    "ListPersonalAccessTokens": _list_pats, "GetUserByID": _get_user, "ListUsers": _list_users,
    "SetUserMetadata": _set_metadata, "ListUserMetadata": _list_metadata,
    "DeleteUserMetadata": _delete_metadata,
}

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


def _not_found() -> Response:
    # Go's http.NotFound, as connect-go's generated service mux answers unknown procedures.
    return 404, {"Content-Type": "text/plain; charset=utf-8",
                 "X-Content-Type-Options": "nosniff"}, b"404 page not found\n"


def handle(domain: dm.Domain, method: str, http_method: str, headers: Mapping[str, str],
           body: bytes, *, no_v2_keys: bool = False) -> Response:
    """``headers``: lower-cased names."""
    if method not in HANDLERS or (no_v2_keys and method in V4_ONLY):
        return _not_found()
    try:
        after = domain.faults.check(method)
    except EmuError as err:
        return error_response(err)
    if http_method != "POST":
        return 405, {"Allow": "POST", "Content-Type": "text/plain"}, b"405 method not allowed\n"
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        return 415, {"Accept-Post": "application/json, application/proto"}, b""
    try:
        try:
            raw = json.loads(body or b"{}")
        except ValueError as exc:
            raise EmuError("invalid_argument", f"unmarshal message: proto: syntax error ({exc})") \
                from exc
        req = decode(REQUESTS[method], raw)
        caller = domain.authenticate(headers.get("authorization"), headers.get("x-zitadel-orgid"))
        validate(method, req)
        result = HANDLERS[method](domain, caller, req)
        if after is not None:
            after.apply()  # ZITADEL acted; the answer is late, lost or dropped
    except EmuError as err:
        return error_response(err)
    except DropConnection:
        raise  # an injected lost answer: the server closes the connection
    except Exception:  # a bug in the emulator: answer like ZITADEL's internal errors
        import traceback

        traceback.print_exc()
        return error_response(EmuError("internal", "Errors.Internal"))
    return 200, {"Content-Type": "application/json"}, json.dumps(clean(result)).encode()
