"""Binary protobuf for the emulator: the v2 UserService subset and the v1
requests it reads in full (``proto/*.proto``), compiled with grpcio-tools at
first use into a private descriptor pool (no clash with the rotator's v1 stubs
in the default pool), and the conversions between those messages and the
``{proto_name: value}`` dicts the Connect JSON path already produces.

Dict values follow ``protojson.decode``: strings, bytes, ints (enums as
numbers, 64-bit ints as ints), Timestamps as instants (``times`` units),
sub-messages as dicts, repeated fields as lists; absent fields are absent.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

from google.protobuf import descriptor, descriptor_pb2, descriptor_pool, message_factory

from tests.emulator import times

PROTO_DIR = Path(__file__).resolve().parent / "proto"
FILES = ("zitadel_v2.proto", "zitadel_v1_requests.proto", "zitadel_webkey_v2.proto",
         "zitadel_org_v2.proto")
TIMESTAMP = "google.protobuf.Timestamp"


@functools.cache
def pool() -> descriptor_pool.DescriptorPool:
    from grpc_tools import protoc  # test dependency; only binary requests need it

    include = Path(protoc.__file__).resolve().parent / "_proto"
    with tempfile.TemporaryDirectory(prefix="emu-proto-") as tmp:
        out = Path(tmp) / "set.binpb"
        rc = protoc.main(["protoc", f"-I{PROTO_DIR}", f"-I{include}", "--include_imports",
                          f"--descriptor_set_out={out}", *(str(PROTO_DIR / f) for f in FILES)])
        if rc != 0:
            raise RuntimeError(f"protoc failed on {FILES} (exit {rc})")
        fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    p = descriptor_pool.DescriptorPool()
    for fdp in fds.file:
        p.Add(fdp)
    return p


def message_class(full_name: str) -> Any:
    return message_factory.GetMessageClass(pool().FindMessageTypeByName(full_name))


def descriptor_of(full_name: str) -> descriptor.Descriptor:
    return pool().FindMessageTypeByName(full_name)


def service_method(service: str, method: str) -> descriptor.MethodDescriptor | None:
    try:
        return pool().FindServiceByName(service).methods_by_name.get(method)
    except KeyError:
        return None


# --- message <-> dict ---------------------------------------------------------------

def to_dict(message: Any) -> dict[str, Any]:
    """A parsed message as the dict ``protojson.decode`` would give (set fields only)."""
    out: dict[str, Any] = {}
    for field, value in message.ListFields():
        if is_repeated(field):
            out[field.name] = [_value_out(field, v) for v in value]
        else:
            out[field.name] = _value_out(field, value)
    return out


def is_repeated(field: descriptor.FieldDescriptor) -> bool:
    flag = getattr(field, "is_repeated", None)  # protobuf >= 6.32; .label is deprecated
    if flag is None:
        return bool(field.label == field.LABEL_REPEATED)
    return bool(flag)


def _value_out(field: descriptor.FieldDescriptor, value: Any) -> Any:
    if field.type == field.TYPE_MESSAGE:
        if field.message_type.full_name == TIMESTAMP:
            return times.from_seconds_nanos(value.seconds, value.nanos)
        return to_dict(value)
    return value


def from_json_dict(full_name: str, obj: dict[str, Any]) -> bytes:
    """A protojson-style response dict (lowerCamelCase keys, enum names, 64-bit
    ints as strings, RFC 3339 timestamps, base64 bytes) as binary protobuf."""
    from google.protobuf import json_format

    message = message_class(full_name)()
    json_format.ParseDict(obj, message, ignore_unknown_fields=False)
    return bytes(message.SerializeToString())


def parse(full_name: str, data: bytes) -> dict[str, Any]:
    message = message_class(full_name)()
    message.ParseFromString(data)
    return to_dict(message)
