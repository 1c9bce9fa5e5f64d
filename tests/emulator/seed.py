"""Initial state of a fresh emulator (format documented in README.md)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tests.emulator.domain import Domain

DEFAULT_SEED: dict[str, Any] = {
    "orgs": [
        {
            "name": "acme",
            "users": [
                {"username": "rotator-admin", "roles": ["ORG_OWNER"], "key_file": "admin-key.json"},
                {"username": "svc-billing"},
                {"username": "svc-reports"},
                {"username": "svc-noperm"},
            ],
        },
        {"name": "globex", "users": [{"username": "svc-ledger"}]},
    ],
    "apps": [{"name": "introspector", "file": "introspector.json"}],
}


class SeedError(ValueError):
    pass


def load_seed(path: Path | None) -> dict[str, Any]:
    if path is None:
        return DEFAULT_SEED
    import yaml  # only needed for custom seeds

    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("orgs"), list):
        raise SeedError(f"{path}: expected a mapping with an 'orgs' list")
    return data


def write_private(path: Path, data: bytes) -> None:
    """Atomically write a 0600 file (key files, client secrets)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def apply_seed(domain: Domain, seed: dict[str, Any], state_dir: Path) -> None:
    org_ids: dict[str, str] = {}
    pending_memberships: list[tuple[str, str, list[str]]] = []
    secrets_out: dict[str, str] = {}
    for org_spec in seed["orgs"]:
        org = domain.create_org(str(org_spec["name"]), org_spec.get("domain"))
        org_ids[org.name] = org.id
        for u in org_spec.get("users", []):
            roles = [str(r) for r in u.get("roles", [])]
            user = domain.create_user(
                org.id,
                str(u["username"]),
                type=str(u.get("type", "machine")),
                name=u.get("name"),
                description=str(u.get("description", "")),
                roles=roles,
                access_token_type=1 if u.get("access_token_type") == "JWT" else 0,
                state=str(u.get("state", "ACTIVE")),
                given_name=str(u.get("given_name", "")),
                family_name=str(u.get("family_name", "")),
                email=str(u.get("email", "")),
            )
            for m in u.get("memberships", []):
                pending_memberships.append((user.id, str(m["org"]), [str(r) for r in m["roles"]]))
            if u.get("key_file"):
                added = domain.create_machine_key(user.id)
                assert added.key_details is not None
                write_private(state_dir / str(u["key_file"]), added.key_details)
            if u.get("secret"):
                secrets_out[user.username] = domain.generate_machine_secret(user.id)
            for key, value in (u.get("metadata") or {}).items():
                domain.set_metadata_admin(user.id, str(key), str(value).encode())
    for user_id, org_name, roles in pending_memberships:
        if org_name not in org_ids:
            raise SeedError(f"membership names unknown org {org_name!r}")
        domain.grant_roles(user_id, org_ids[org_name], roles)
    if secrets_out:
        write_private(state_dir / "client-secrets.json", json.dumps(secrets_out).encode())
    for app_spec in seed.get("apps", []):
        app, secret = domain.create_app(str(app_spec["name"]))
        write_private(
            state_dir / str(app_spec.get("file", f"{app.name}.json")),
            json.dumps({"client_id": app.client_id, "client_secret": secret,
                        "project_id": app.project_id}).encode(),
        )
