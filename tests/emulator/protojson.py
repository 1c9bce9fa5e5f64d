"""Just enough protojson for the v2 request messages the emulator serves.

Input rules (Go protojson with ``DiscardUnknown: true``): a field may be
spelled in lowerCamelCase or by its proto name; unknown fields are dropped;
``null`` means unset; 64-bit integers as numbers or strings; bytes as
standard or URL-safe base64, padded or not; enums as names or numbers;
Timestamps as RFC 3339 strings *with* a zone.  Output helpers produce
lowerCamelCase, omit zero values, 64-bit ints as strings, padded base64 and
``Z`` timestamps.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

from tests.emulator import times
from tests.emulator.errors import EmuError


@dataclass(frozen=True)
class Enum:
    name: str
    values: dict[str, int]

    def name_of(self, number: int) -> str | None:
        for k, v in self.values.items():
            if v == number:
                return k
        return None


@dataclass(frozen=True)
class F:
    """A field: proto name, kind ("string", "bytes", "bool", "uint64", "uint32",
    "timestamp", "enum", "message"), sub-schema and repetition."""

    name: str
    kind: str
    sub: Any = None
    repeated: bool = False
    oneof: str | None = None


@dataclass(frozen=True)
class Msg:
    name: str
    fields: tuple[F, ...]
    by_json: dict[str, F] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for f in self.fields:
            self.by_json[camel(f.name)] = f
            self.by_json[f.name] = f


_KINDS = {9: "string", 12: "bytes", 8: "bool", 4: "uint64", 13: "uint32", 5: "int32",
          14: "enum", 11: "message"}  # FieldDescriptor.TYPE_* numbers
_SCHEMAS: dict[str, Msg] = {}


def schema_of(desc: Any) -> Msg:
    """The schema of a protobuf message descriptor (memoised; recursion-safe)."""
    found = _SCHEMAS.get(desc.full_name)
    if found is not None:
        return found
    msg = Msg(desc.name, ())
    _SCHEMAS[desc.full_name] = msg
    fields = []
    for fd in desc.fields:
        kind = _KINDS[fd.type]
        sub: Any = None
        if kind == "enum":
            sub = Enum(fd.enum_type.full_name, {v.name: v.number for v in fd.enum_type.values})
        elif kind == "message":
            if fd.message_type.full_name == "google.protobuf.Timestamp":
                kind = "timestamp"
            else:
                sub = schema_of(fd.message_type)
        oneof = fd.containing_oneof
        real_oneof = oneof is not None and not (len(oneof.fields) == 1
                                                 and oneof.name == "_" + fd.name)
        fields.append(F(fd.name, kind, sub, repeated=_repeated(fd),
                        oneof=oneof.name if real_oneof else None))
    object.__setattr__(msg, "fields", tuple(fields))
    msg.__post_init__()
    return msg


def _repeated(fd: Any) -> bool:
    flag = getattr(fd, "is_repeated", None)  # protobuf >= 6.32; .label is deprecated
    return bool(fd.label == 3) if flag is None else bool(flag)


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _bad(detail: str) -> EmuError:
    # connect-go wraps protojson errors as invalid_argument "unmarshal message: ..."
    return EmuError("invalid_argument", f"unmarshal message: proto: {detail}")


def decode(msg: Msg, obj: Any) -> dict[str, Any]:
    """JSON object -> {proto_name: python value}; absent fields are absent."""
    if not isinstance(obj, dict):
        raise _bad(f"unexpected token {_short(obj)}, expected object for {msg.name}")
    out: dict[str, Any] = {}
    oneofs: dict[str, str] = {}
    for key, raw in obj.items():
        f = msg.by_json.get(key)
        if f is None or raw is None:
            continue
        if f.name in out:
            raise _bad(f"duplicate field {key!r}")
        if f.oneof is not None:
            if f.oneof in oneofs:
                raise _bad(f"error parsing {key!r}, oneof {msg.name}.{f.oneof} is already set")
            oneofs[f.oneof] = f.name
        if f.repeated:
            if not isinstance(raw, list):
                raise _bad(f"invalid value for repeated field {key}: {_short(raw)}")
            out[f.name] = [_value(f, item) for item in raw]
        else:
            out[f.name] = _value(f, raw)
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 60 else text[:57] + "..."


def _value(f: F, raw: Any) -> Any:
    kind = f.kind
    if kind == "string":
        if not isinstance(raw, str):
            raise _bad(f"invalid value for string field {camel(f.name)}: {_short(raw)}")
        return raw
    if kind == "bool":
        if not isinstance(raw, bool):
            raise _bad(f"invalid value for bool field {camel(f.name)}: {_short(raw)}")
        return raw
    if kind in ("uint64", "uint32", "int32"):
        value: int
        if isinstance(raw, bool):
            raise _bad(f"invalid value for {kind} field {camel(f.name)}: {raw}")
        integral_float = isinstance(raw, float) and raw.is_integer()
        if isinstance(raw, int) or integral_float or (isinstance(raw, str) and raw.isdigit()):
            value = int(raw)
        else:
            raise _bad(f"invalid value for {kind} field {camel(f.name)}: {_short(raw)}")
        low, limit = {"int32": (-(2**31), 2**31), "uint32": (0, 2**32)}.get(kind, (0, 2**64))
        if not low <= value < limit:
            raise _bad(f"invalid value for {kind} field {camel(f.name)}: {raw}")
        return value
    if kind == "bytes":
        if not isinstance(raw, str):
            raise _bad(f"invalid value for bytes field {camel(f.name)}: {_short(raw)}")
        text = raw.replace("-", "+").replace("_", "/")
        try:
            return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _bad(f"invalid value for bytes field {camel(f.name)}: {_short(raw)}") from exc
    if kind == "timestamp":
        if not isinstance(raw, str):
            raise _bad(f"invalid google.protobuf.Timestamp value {_short(raw)}")
        try:
            return times.parse_rfc3339(raw)
        except times.TimestampError as exc:
            raise _bad(f"invalid google.protobuf.Timestamp value {raw!r}") from exc
    if kind == "enum":
        enum: Enum = f.sub
        if isinstance(raw, str):
            if raw not in enum.values:
                raise _bad(f"invalid value for enum field {camel(f.name)}: {raw!r}")
            return enum.values[raw]
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw  # unknown numbers pass protojson; PGV defined_only may reject
        raise _bad(f"invalid value for enum field {camel(f.name)}: {_short(raw)}")
    if kind == "message":
        return decode(f.sub, raw)
    raise AssertionError(kind)


# --- output ---------------------------------------------------------------------


def ts(instant: int | None) -> str | None:
    return None if instant is None else times.format_protojson(instant)


def u64(value: int) -> str | None:
    return None if value == 0 else str(value)


def b64(data: bytes | None) -> str | None:
    return base64.b64encode(data).decode("ascii") if data else None


def enum_out(enum: Enum, number: int) -> str | int | None:
    if number == 0:
        return None
    return enum.name_of(number) or number


def clean(value: Any) -> Any:
    """Drop zero scalars (None, "", 0, False, []) like protojson; keep set
    sub-messages even when empty."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if v is None or v == "" or v is False or v == [] or (type(v) is int and v == 0):
                continue
            out[k] = clean(v)
        return out
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value
