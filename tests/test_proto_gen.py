"""The committed v1 stubs are reproducible, and the .proto matches the wire facts.

FIELDS is transcribed by hand from zitadel-api.md sections 2 and 3 (not from
the .proto), so a typo in either place fails here instead of on the wire.
"""

from __future__ import annotations

import filecmp
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from rotator.zitadel.v1.gen import (
    GRPCIO_TOOLS_VERSION,
    zitadel_management_v1_pb2,
    zitadel_v1_pb2,
)

REPO = Path(__file__).resolve().parents[1]
GEN = REPO / "rotator" / "zitadel" / "v1" / "gen"

R = "repeated"
# message full name -> {field: (number, type, label)}; type is a scalar name or
# the full name of a message/enum type.
FIELDS: dict[str, dict[str, tuple[int, str] | tuple[int, str, str]]] = {
    "zitadel.v1.ObjectDetails": {
        "sequence": (1, "uint64"),
        "creation_date": (2, "google.protobuf.Timestamp"),
        "change_date": (3, "google.protobuf.Timestamp"),
        "resource_owner": (4, "string"),
    },
    "zitadel.v1.ListQuery": {"offset": (1, "uint64"), "limit": (2, "uint32"), "asc": (3, "bool")},
    "zitadel.v1.ListDetails": {
        "total_result": (1, "uint64"),
        "processed_sequence": (2, "uint64"),
        "view_timestamp": (3, "google.protobuf.Timestamp"),
    },
    "zitadel.v1.ErrorDetail": {"id": (1, "string"), "message": (2, "string")},
    "zitadel.authn.v1.Key": {
        "id": (1, "string"),
        "details": (2, "zitadel.v1.ObjectDetails"),
        "type": (3, "zitadel.authn.v1.KeyType"),
        "expiration_date": (4, "google.protobuf.Timestamp"),
    },
    "zitadel.user.v1.PersonalAccessToken": {
        "id": (1, "string"),
        "details": (2, "zitadel.v1.ObjectDetails"),
        "expiration_date": (3, "google.protobuf.Timestamp"),
        "scopes": (4, "string", R),
    },
    "zitadel.user.v1.User": {
        "id": (1, "string"),
        "details": (2, "zitadel.v1.ObjectDetails"),
        "state": (3, "zitadel.user.v1.UserState"),
        "user_name": (4, "string"),
        "login_names": (5, "string", R),
        "preferred_login_name": (6, "string"),
        "human": (7, "zitadel.user.v1.Human"),
        "machine": (8, "zitadel.user.v1.Machine"),
    },
    "zitadel.user.v1.Machine": {
        "name": (1, "string"),
        "description": (2, "string"),
        "has_secret": (3, "bool"),
        "access_token_type": (4, "zitadel.user.v1.AccessTokenType"),
    },
    "zitadel.user.v1.SearchQuery": {
        "user_name_query": (1, "zitadel.user.v1.UserNameQuery"),
        "type_query": (8, "zitadel.user.v1.TypeQuery"),
        "login_name_query": (9, "zitadel.user.v1.LoginNameQuery"),
        "in_user_ids_query": (10, "zitadel.user.v1.InUserIDQuery"),
    },
    "zitadel.user.v1.TypeQuery": {"type": (1, "zitadel.user.v1.Type")},
    "zitadel.user.v1.UserNameQuery": {
        "user_name": (1, "string"),
        "method": (2, "zitadel.v1.TextQueryMethod"),
    },
    "zitadel.user.v1.LoginNameQuery": {
        "login_name": (1, "string"),
        "method": (2, "zitadel.v1.TextQueryMethod"),
    },
    "zitadel.user.v1.InUserIDQuery": {"user_ids": (1, "string", R)},
    "zitadel.org.v1.Org": {
        "id": (1, "string"),
        "details": (2, "zitadel.v1.ObjectDetails"),
        "state": (3, "zitadel.org.v1.OrgState"),
        "name": (4, "string"),
        "primary_domain": (5, "string"),
    },
    "zitadel.metadata.v1.Metadata": {
        "details": (1, "zitadel.v1.ObjectDetails"),
        "key": (2, "string"),
        "value": (3, "bytes"),
    },
    "zitadel.metadata.v1.MetadataQuery": {"key_query": (1, "zitadel.metadata.v1.MetadataKeyQuery")},
    "zitadel.metadata.v1.MetadataKeyQuery": {
        "key": (1, "string"),
        "method": (2, "zitadel.v1.TextQueryMethod"),
    },
    # section 3
    "zitadel.management.v1.GetMyOrgRequest": {},
    "zitadel.management.v1.GetMyOrgResponse": {"org": (1, "zitadel.org.v1.Org")},
    "zitadel.management.v1.GetUserByIDRequest": {"id": (1, "string")},
    "zitadel.management.v1.GetUserByIDResponse": {"user": (1, "zitadel.user.v1.User")},
    "zitadel.management.v1.GetUserByLoginNameGlobalRequest": {"login_name": (1, "string")},
    "zitadel.management.v1.GetUserByLoginNameGlobalResponse": {"user": (1, "zitadel.user.v1.User")},
    "zitadel.management.v1.ListUsersRequest": {
        "query": (1, "zitadel.v1.ListQuery"),
        "sorting_column": (2, "zitadel.user.v1.UserFieldName"),
        "queries": (3, "zitadel.user.v1.SearchQuery", R),
    },
    "zitadel.management.v1.ListUsersResponse": {
        "details": (1, "zitadel.v1.ListDetails"),
        "sorting_column": (2, "zitadel.user.v1.UserFieldName"),
        "result": (3, "zitadel.user.v1.User", R),
    },
    "zitadel.management.v1.AddMachineKeyRequest": {
        "user_id": (1, "string"),
        "type": (2, "zitadel.authn.v1.KeyType"),
        "expiration_date": (3, "google.protobuf.Timestamp"),
        "public_key": (4, "bytes"),
    },
    "zitadel.management.v1.AddMachineKeyResponse": {
        "key_id": (1, "string"),
        "key_details": (2, "bytes"),
        "details": (3, "zitadel.v1.ObjectDetails"),
    },
    "zitadel.management.v1.ListMachineKeysRequest": {
        "user_id": (1, "string"),
        "query": (2, "zitadel.v1.ListQuery"),
    },
    "zitadel.management.v1.ListMachineKeysResponse": {
        "details": (1, "zitadel.v1.ListDetails"),
        "result": (2, "zitadel.authn.v1.Key", R),
    },
    "zitadel.management.v1.GetMachineKeyByIDsRequest": {
        "user_id": (1, "string"),
        "key_id": (2, "string"),
    },
    "zitadel.management.v1.GetMachineKeyByIDsResponse": {"key": (1, "zitadel.authn.v1.Key")},
    "zitadel.management.v1.RemoveMachineKeyRequest": {
        "user_id": (1, "string"),
        "key_id": (2, "string"),
    },
    "zitadel.management.v1.RemoveMachineKeyResponse": {"details": (1, "zitadel.v1.ObjectDetails")},
    "zitadel.management.v1.AddPersonalAccessTokenRequest": {
        "user_id": (1, "string"),
        "expiration_date": (2, "google.protobuf.Timestamp"),
    },
    "zitadel.management.v1.AddPersonalAccessTokenResponse": {
        "token_id": (1, "string"),
        "token": (2, "string"),
        "details": (3, "zitadel.v1.ObjectDetails"),
    },
    "zitadel.management.v1.ListPersonalAccessTokensRequest": {
        "user_id": (1, "string"),
        "query": (2, "zitadel.v1.ListQuery"),
    },
    "zitadel.management.v1.ListPersonalAccessTokensResponse": {
        "details": (1, "zitadel.v1.ListDetails"),
        "result": (2, "zitadel.user.v1.PersonalAccessToken", R),
    },
    "zitadel.management.v1.GetPersonalAccessTokenByIDsRequest": {
        "user_id": (1, "string"),
        "token_id": (2, "string"),
    },
    "zitadel.management.v1.GetPersonalAccessTokenByIDsResponse": {
        "token": (1, "zitadel.user.v1.PersonalAccessToken"),
    },
    "zitadel.management.v1.RemovePersonalAccessTokenRequest": {
        "user_id": (1, "string"),
        "token_id": (2, "string"),
    },
    "zitadel.management.v1.RemovePersonalAccessTokenResponse": {
        "details": (1, "zitadel.v1.ObjectDetails"),
    },
    "zitadel.management.v1.GenerateMachineSecretRequest": {"user_id": (1, "string")},
    "zitadel.management.v1.GenerateMachineSecretResponse": {
        "client_id": (1, "string"),
        "client_secret": (2, "string"),
        "details": (3, "zitadel.v1.ObjectDetails"),
    },
    "zitadel.management.v1.RemoveMachineSecretRequest": {"user_id": (1, "string")},
    "zitadel.management.v1.RemoveMachineSecretResponse": {
        "details": (1, "zitadel.v1.ObjectDetails"),
    },
    "zitadel.management.v1.SetUserMetadataRequest": {
        "id": (1, "string"),
        "key": (2, "string"),
        "value": (3, "bytes"),
    },
    "zitadel.management.v1.SetUserMetadataResponse": {
        "id": (1, "string"),
        "details": (2, "zitadel.v1.ObjectDetails"),
    },
    "zitadel.management.v1.ListUserMetadataRequest": {
        "id": (1, "string"),
        "query": (2, "zitadel.v1.ListQuery"),
        "queries": (3, "zitadel.metadata.v1.MetadataQuery", R),
    },
    "zitadel.management.v1.ListUserMetadataResponse": {
        "details": (1, "zitadel.v1.ListDetails"),
        "result": (2, "zitadel.metadata.v1.Metadata", R),
    },
    "zitadel.management.v1.RemoveUserMetadataRequest": {"id": (1, "string"), "key": (2, "string")},
    "zitadel.management.v1.RemoveUserMetadataResponse": {
        "details": (1, "zitadel.v1.ObjectDetails"),
    },
}

# enum full name -> {value name: number}
ENUMS: dict[str, dict[str, int]] = {
    "zitadel.authn.v1.KeyType": {"KEY_TYPE_UNSPECIFIED": 0, "KEY_TYPE_JSON": 1},
    "zitadel.user.v1.AccessTokenType": {"ACCESS_TOKEN_TYPE_BEARER": 0, "ACCESS_TOKEN_TYPE_JWT": 1},
    "zitadel.user.v1.Type": {"TYPE_UNSPECIFIED": 0, "TYPE_HUMAN": 1, "TYPE_MACHINE": 2},
    "zitadel.user.v1.UserState": {
        f"USER_STATE_{n}": i
        for i, n in enumerate(
            ["UNSPECIFIED", "ACTIVE", "INACTIVE", "DELETED", "LOCKED", "SUSPEND", "INITIAL"]
        )
    },
    "zitadel.user.v1.UserFieldName": {
        f"USER_FIELD_NAME_{n}": i
        for i, n in enumerate(
            [
                "UNSPECIFIED", "USER_NAME", "FIRST_NAME", "LAST_NAME", "NICK_NAME",
                "DISPLAY_NAME", "EMAIL", "STATE", "TYPE", "CREATION_DATE",
            ]
        )
    },
    "zitadel.org.v1.OrgState": {
        "ORG_STATE_UNSPECIFIED": 0, "ORG_STATE_ACTIVE": 1,
        "ORG_STATE_INACTIVE": 2, "ORG_STATE_REMOVED": 3,
    },
    "zitadel.v1.TextQueryMethod": {
        f"TEXT_QUERY_METHOD_{n}": i
        for i, n in enumerate(
            [
                "EQUALS", "EQUALS_IGNORE_CASE", "STARTS_WITH", "STARTS_WITH_IGNORE_CASE",
                "CONTAINS", "CONTAINS_IGNORE_CASE", "ENDS_WITH", "ENDS_WITH_IGNORE_CASE",
            ]
        )
    },
}

METHODS = [
    "GetMyOrg", "GetUserByID", "GetUserByLoginNameGlobal", "ListUsers",
    "AddMachineKey", "ListMachineKeys", "GetMachineKeyByIDs", "RemoveMachineKey",
    "AddPersonalAccessToken", "ListPersonalAccessTokens", "GetPersonalAccessTokenByIDs",
    "RemovePersonalAccessToken", "SetUserMetadata", "ListUserMetadata", "RemoveUserMetadata",
    "GenerateMachineSecret", "RemoveMachineSecret",
]

_SCALARS = {
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_UINT32: "uint32",
}


def _pool_message(full_name: str) -> Descriptor:
    # Importing the management module loads every dependency into the pool.
    pool = zitadel_management_v1_pb2.DESCRIPTOR.pool
    return pool.FindMessageTypeByName(full_name)


def _type_name(field: FieldDescriptor) -> str:
    if field.message_type is not None:
        return str(field.message_type.full_name)
    if field.enum_type is not None:
        return str(field.enum_type.full_name)
    return _SCALARS[field.type]


@pytest.mark.parametrize("message", sorted(FIELDS))
def test_message_fields_match_the_wire_reference(message: str) -> None:
    descriptor = _pool_message(message)
    actual = {
        f.name: (f.number, _type_name(f), *((R,) if f.is_repeated else ()))
        for f in descriptor.fields
    }
    assert actual == FIELDS[message]


@pytest.mark.parametrize("enum", sorted(ENUMS))
def test_enum_values_match_the_wire_reference(enum: str) -> None:
    descriptor = zitadel_management_v1_pb2.DESCRIPTOR.pool.FindEnumTypeByName(enum)
    assert {v.name: v.number for v in descriptor.values} == ENUMS[enum]


def test_user_type_is_a_oneof_of_human_and_machine() -> None:
    user = _pool_message("zitadel.user.v1.User")
    assert [f.name for f in user.oneofs_by_name["type"].fields] == ["human", "machine"]


def test_service_full_name_and_methods() -> None:
    service = zitadel_management_v1_pb2.DESCRIPTOR.services_by_name["ManagementService"]
    assert service.full_name == "zitadel.management.v1.ManagementService"
    assert sorted(m.name for m in service.methods) == sorted(METHODS)
    for method in service.methods:
        assert method.input_type.full_name == f"zitadel.management.v1.{method.name}Request"
        assert method.output_type.full_name == f"zitadel.management.v1.{method.name}Response"


def test_error_detail_any_type_url() -> None:
    from google.protobuf import any_pb2

    packed = any_pb2.Any()
    packed.Pack(zitadel_v1_pb2.ErrorDetail(id="COMMAND-4m77G", message="Machine key not found"))
    assert packed.type_url == "type.googleapis.com/zitadel.v1.ErrorDetail"


def test_committed_stubs_are_what_gen_proto_produces(tmp_path: Path) -> None:
    installed = importlib.metadata.version("grpcio-tools")
    assert installed == GRPCIO_TOOLS_VERSION, (
        f"stubs were generated with grpcio-tools {GRPCIO_TOOLS_VERSION} but {installed} is "
        "installed: install that version, or run scripts/gen-proto and commit the result"
    )
    env = {**os.environ, "PYTHON": sys.executable}
    gen = [str(REPO / "scripts" / "gen-proto"), str(tmp_path)]
    subprocess.run(gen, check=True, cwd=REPO, env=env)
    committed = sorted(p.name for p in GEN.glob("*.py"))
    regenerated = sorted(p.name for p in tmp_path.glob("*.py"))
    assert regenerated == committed
    match, mismatch, errors = filecmp.cmpfiles(GEN, tmp_path, committed, shallow=False)
    assert (mismatch, errors) == ([], [])
    assert match == committed
