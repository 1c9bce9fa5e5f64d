"""protoc-gen-validate as ZITADEL's validation interceptor runs it
(``Validate()``: the first violation wins), driven by the rules of ZITADEL's
own descriptors (copied from @zitadel/proto 1.3.1; the TypeScript conformance
suite checks the copy) over the request dicts of ``wire``/``protojson``.

Order and wording are PGV's Go templates: the fields outside oneofs in
declaration order, each embedded message validated in turn (wrapped as
``invalid <Msg>.<Field>: embedded message failed validation | caused by: ...``),
then the oneofs (``value is required`` when a required one is unset).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor

from tests.emulator.errors import EmuError
from tests.emulator.wire import TIMESTAMP, is_repeated


@dataclass(frozen=True)
class Str:
    lo: int | None = None
    hi: int | None = None
    unit: str = "runes"


@dataclass(frozen=True)
class Items:
    rule: Str


ENUM_DEFINED = "enum.defined_only"
TS_REQUIRED = "timestamp.required"
Rule = Str | Items | str

_TEXT = Str(1, 200)
_V2 = "zitadel.user.v2."
_V1 = "zitadel.management.v1."

#: full field name -> rule (only fields with a PGV rule in ZITADEL's descriptors)
RULES: dict[str, Rule] = {
    _V2 + "AddKeyRequest.user_id": _TEXT, _V2 + "AddKeyRequest.expiration_date": TS_REQUIRED,
    _V2 + "RemoveKeyRequest.user_id": _TEXT, _V2 + "RemoveKeyRequest.key_id": _TEXT,
    _V2 + "ListKeysRequest.sorting_column": ENUM_DEFINED,
    _V2 + "AddPersonalAccessTokenRequest.user_id": _TEXT,
    _V2 + "AddPersonalAccessTokenRequest.expiration_date": TS_REQUIRED,
    _V2 + "RemovePersonalAccessTokenRequest.user_id": _TEXT,
    _V2 + "RemovePersonalAccessTokenRequest.token_id": _TEXT,
    _V2 + "ListPersonalAccessTokensRequest.sorting_column": ENUM_DEFINED,
    _V2 + "AddSecretRequest.user_id": _TEXT, _V2 + "RemoveSecretRequest.user_id": _TEXT,
    "zitadel.filter.v2.IDFilter.id": Str(hi=200),
    "zitadel.filter.v2.TimestampFilter.method": ENUM_DEFINED,
    _V2 + "GetUserByIDRequest.user_id": _TEXT,
    _V2 + "SetUserMetadataRequest.user_id": _TEXT,
    _V2 + "Metadata.key": _TEXT, _V2 + "Metadata.value": Str(1, 500000, "bytes"),
    _V2 + "ListUserMetadataRequest.user_id": _TEXT,
    "zitadel.metadata.v2.MetadataKeyFilter.key": Str(hi=200),
    "zitadel.metadata.v2.MetadataKeyFilter.method": ENUM_DEFINED,
    _V2 + "DeleteUserMetadataRequest.keys": Items(_TEXT),
    **{_V2 + f"{m}.{f}": _TEXT for m, f in (
        ("UserNameQuery", "user_name"), ("FirstNameQuery", "first_name"),
        ("LastNameQuery", "last_name"), ("NickNameQuery", "nick_name"),
        ("DisplayNameQuery", "display_name"), ("LoginNameQuery", "login_name"),
        ("OrganizationIdQuery", "organization_id"))},
    _V2 + "EmailQuery.email_address": Str(hi=200),
    _V2 + "PhoneQuery.number": Str(hi=20),
    **{_V2 + f"{m}.method": ENUM_DEFINED for m in (
        "UserNameQuery", "FirstNameQuery", "LastNameQuery", "NickNameQuery",
        "DisplayNameQuery", "EmailQuery", "LoginNameQuery", "PhoneQuery")},
    _V2 + "StateQuery.state": ENUM_DEFINED, _V2 + "TypeQuery.type": ENUM_DEFINED,
    # v1 (the emulator reads these two requests with its own full descriptors)
    **{_V1 + f"{m}.{f}": Str(hi=200) for m, f in (
        ("UserNameQuery", "user_name"), ("FirstNameQuery", "first_name"),
        ("LastNameQuery", "last_name"), ("NickNameQuery", "nick_name"),
        ("DisplayNameQuery", "display_name"), ("EmailQuery", "email_address"),
        ("LoginNameQuery", "login_name"), ("MetadataKeyQuery", "key"))},
    **{_V1 + f"{m}.method": ENUM_DEFINED for m in (
        "UserNameQuery", "FirstNameQuery", "LastNameQuery", "NickNameQuery",
        "DisplayNameQuery", "EmailQuery", "LoginNameQuery", "MetadataKeyQuery")},
    _V1 + "StateQuery.state": ENUM_DEFINED, _V1 + "TypeQuery.type": ENUM_DEFINED,
    _V1 + "ListUserMetadataRequest.id": _TEXT,
}

#: oneofs marked ``(validate.required) = true``
REQUIRED_ONEOFS = frozenset({
    _V2 + "KeysSearchFilter.filter", _V2 + "PersonalAccessTokensSearchFilter.filter",
    _V2 + "SearchQuery.query", "zitadel.metadata.v2.MetadataSearchFilter.filter",
    _V1 + "SearchQuery.query", _V1 + "MetadataQuery.query",
})


def pascal(name: str) -> str:
    """Go's field name for a proto name (``user_id`` -> ``UserId``)."""
    return "".join(p[:1].upper() + p[1:] for p in name.split("_"))


def _fail(msg: descriptor.Descriptor, field: str, reason: str) -> EmuError:
    return EmuError("invalid_argument", f"invalid {msg.name}.{field}: {reason}")


def _embedded(msg: descriptor.Descriptor, field: str, inner: EmuError) -> EmuError:
    return _fail(msg, field, f"embedded message failed validation | caused by: {inner.message}")


def _length_reason(rule: Str, n: int) -> str | None:
    lo, hi, unit = rule.lo, rule.hi, rule.unit
    if lo is not None and hi is not None:
        if not lo <= n <= hi:
            return f"value length must be between {lo} and {hi} {unit}, inclusive"
    elif lo is not None and n < lo:
        return f"value length must be at least {lo} {unit}"
    elif hi is not None and n > hi:
        return f"value length must be at most {hi} {unit}"
    return None


def _check(msg: descriptor.Descriptor, field: descriptor.FieldDescriptor,
           value: Any, present: bool) -> None:
    rule = RULES.get(field.full_name)
    name = pascal(field.name)
    if isinstance(rule, Str):
        reason = _length_reason(rule, len(value) if present else 0)
        if reason:
            raise _fail(msg, name, reason)
    elif isinstance(rule, Items):
        for i, item in enumerate(value if present else []):
            reason = _length_reason(rule.rule, len(item))
            if reason:
                raise _fail(msg, f"{name}[{i}]", reason)
    elif rule == TS_REQUIRED:
        if not present:
            raise _fail(msg, name, "value is required")
    elif rule == ENUM_DEFINED and present \
            and field.enum_type.values_by_number.get(int(value)) is None:
        raise _fail(msg, name, "value must be one of the defined enum values")
    if field.type == field.TYPE_MESSAGE and present \
            and field.message_type.full_name != TIMESTAMP:
        items = value if is_repeated(field) else [value]
        for i, item in enumerate(items):
            where = f"{name}[{i}]" if is_repeated(field) else name
            try:
                validate(field.message_type, item)
            except EmuError as inner:
                raise _embedded(msg, where, inner) from None


def validate(msg: descriptor.Descriptor, value: dict[str, Any]) -> None:
    """Raise the first PGV violation of ``value`` (a request dict) as ZITADEL words it."""
    real_oneofs = [o for o in msg.oneofs if not _synthetic(o)]
    in_oneof = {f.name for o in real_oneofs for f in o.fields}
    for field in msg.fields:
        if field.name not in in_oneof:
            _check(msg, field, value.get(field.name), field.name in value)
    for oneof in real_oneofs:
        chosen = [f for f in oneof.fields if f.name in value]
        if not chosen:
            if oneof.full_name in REQUIRED_ONEOFS:
                raise _fail(msg, pascal(oneof.name), "value is required")
            continue
        _check(msg, chosen[0], value[chosen[0].name], True)


def _synthetic(oneof: descriptor.OneofDescriptor) -> bool:
    """proto3 ``optional`` fields live in a one-field oneof named ``_<field>``."""
    return len(oneof.fields) == 1 and oneof.name == "_" + oneof.fields[0].name
