"""The soak's invariants, checked with the soak's own code (never the
rotator's): what ZITADEL (the emulator's state) and Vault hold, whether a
consumer's credential works at ZITADEL right now, and what every process wrote.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from tests.chaos.world import RETIRE_MARGIN_S, Target, World
from tests.emulator.support import JWT_BEARER, sign_assertion

#: What a consumer asks for with its key: an API token of the instance.
SCOPE = "openid urn:zitadel:iam:org:project:id:zitadel:aud"
#: How the emulator's state shows a client secret's (absent) expiry.
NEVER = "9999-12-31T23:59:59Z"
#: State-secret fields that are bookkeeping, not an operation in flight.
_IDLE_FIELDS = {"schema", "target", "kind", "user_id", "current", "previous", "failures",
                "permanent_failures", "stuck", "last_error", "last_error_class",
                "next_attempt_at", "last_success_at", "target_digest", "user_ref", "org_id",
                "consumer_version", "identities", "active_user_id", "next_user_id"}


@dataclass(frozen=True)
class Violation:
    kind: str  # a short class name: "orphan", "expired", "auth", "leak", ...
    target: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.kind}] {self.target}: {self.detail}"


def _instant(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def credentials_of(state: dict[str, Any], target: Target) -> list[dict[str, Any]]:
    """Every key or PAT ZITADEL holds (or held) for the target's users (one, or
    both identities of a two-identity target); a client secret as a credential
    whose id is its user's, for each user that ``has_secret`` (ZITADEL keeps no
    trace of a removed one)."""
    if target.kind == "secret":
        return [{"id": u["id"], "user_id": u["id"], "expiration": NEVER, "removed_at": None}
                for u in state["users"] if u["id"] in target.all_user_ids and u["has_secret"]]
    items = state["keys"] if target.kind == "key" else state["pats"]
    return [c for c in items if c["user_id"] in target.all_user_ids]


def in_flight(state_secret: dict[str, Any] | None) -> bool:
    """Whether the rotator's own record shows an operation under way (a pending
    rotation, an intent, a removal to retry...): read, not interpreted by the
    rotator's code; any non-empty field beyond the idle bookkeeping counts."""
    if not state_secret:
        return False
    return any(value not in (None, [], {}, "") for key, value in state_secret.items()
               if key not in _IDLE_FIELDS)


def consumer_ids(secret: dict[str, Any] | None, kind: str) -> tuple[str | None, str | None]:
    """(current id, previous id) as a consumer sees them at ``vault_path``."""
    if not secret:
        return None, None
    field = {"key": "keyId", "pat": "token_id", "secret": "user_id"}[kind]
    previous = secret.get("previous") or {}
    return secret.get(field), previous.get(field) if isinstance(previous, dict) else None


def authenticates(issuer: str, kind: str, secret: dict[str, Any]) -> str | None:
    """None if the consumer's credential works at ZITADEL now, else why not.
    Key: a real RFC 7523 jwt-bearer exchange; PAT: userinfo; secret: a
    client_credentials request."""
    with httpx.Client(timeout=10) as http:
        if kind == "secret":
            if not (secret.get("client_id") and secret.get("client_secret")):
                return "the secret holds no client credentials"
            response = http.post(f"{issuer}/oauth/v2/token",
                                 data={"grant_type": "client_credentials", "scope": SCOPE},
                                 auth=(secret["client_id"], secret["client_secret"]))
        elif kind == "key":
            key_file = {k: secret.get(k) for k in ("keyId", "key", "userId")}
            if not all(key_file.values()):
                return "the secret is not a key file"
            response = http.post(f"{issuer}/oauth/v2/token", data={
                "grant_type": JWT_BEARER, "scope": SCOPE,
                "assertion": sign_assertion(key_file, issuer)})
        else:
            token = secret.get("token")
            if not token:
                return "the secret holds no token"
            response = http.get(f"{issuer}/oidc/v1/userinfo",
                                headers={"Authorization": f"Bearer {token}"})
    if response.status_code == 200:
        return None
    return f"HTTP {response.status_code} {response.text[:120]!r}"


def check_step(world: World, *, final: bool = False) -> list[Violation]:
    """Every consumer secret authenticates now; no current credential expired or
    inside its retire margin; at most two live credentials per target outside an
    in-flight operation.  ``final`` (after a fault-free convergence pass) adds: no
    orphan, and every credential ever on a target user appears in an audit event."""
    found: list[Violation] = []
    # Vault first, ZITADEL second: a running daemon may rotate meanwhile, and
    # every credential Vault names was created before Vault was read.
    records = {t.name: world.vault_read(t.state_path) for t in world.targets}
    secrets_ = {t.name: world.vault_read(t.vault_path) for t in world.targets}
    zitadel = world.emulator.state()
    now = world.now_s()
    audit_text = "".join(p.read_text(errors="replace") for p in world.audit_files.values()
                         if p.exists()) if final else ""
    for target in world.targets:
        secret = secrets_[target.name]
        record = records[target.name]
        again = world.vault_read(target.state_path)
        # an operation that started or ended between the reads was in flight
        busy = in_flight(record) or in_flight(again) or again != record
        creds = credentials_of(zitadel, target)
        by_id = {c["id"]: c for c in creds}
        live = [c for c in creds if c["removed_at"] is None and _instant(c["expiration"]) > now]
        current, previous = consumer_ids(secret, target.kind)
        if secret is None:
            found.append(Violation("no-secret", target.name, "nothing at vault_path"))
        else:
            why = authenticates(world.emulator.issuer, target.kind, secret)
            if why is not None and target.kind == "secret" and not target.users:
                # one identity: between regenerating and promoting, Vault holds a dead
                # secret (the documented gap), so only a target at rest must authenticate
                after = world.vault_read(target.state_path)
                if busy or in_flight(after) or after != record:
                    why = None
            if why is not None:
                found.append(Violation("auth", target.name,
                                       f"consumer credential {current} does not work: {why}"
                                       f"{_history(world, by_id.get(current or ''), current)}"))
            cred = by_id.get(current or "")
            if cred is None:
                found.append(Violation("auth", target.name, f"current {current} unknown"))
            elif cred["removed_at"] is not None and not busy:
                found.append(Violation("auth", target.name,
                                       f"current {current} removed at {cred['removed_at']}"))
            else:
                left = _instant(cred["expiration"]) - now
                if left <= RETIRE_MARGIN_S:
                    found.append(Violation(
                        "expiry", target.name,
                        f"current {current} expires in {left / 3600:.1f} h "
                        f"(retire margin 2 h); stuck={bool(record and record.get('stuck'))}"))
        if len(live) > 2 and not busy:
            found.append(Violation("too-many", target.name,
                                   f"{len(live)} live credentials, none in flight: "
                                   f"{sorted(c['id'] for c in live)}"))
        if target.users and not busy:
            # two identities: a rotation creates on the identity not in use, and the
            # other's credential is retired after grace: one live credential each
            for user_id in target.user_ids:
                mine = sorted(c["id"] for c in live if c["user_id"] == user_id)
                if len(mine) > 1:
                    found.append(Violation("identity", target.name,
                                           f"user {user_id} holds {len(mine)} live "
                                           f"credentials, none in flight: {mine}"))
        if final:
            known = {current, previous}
            if record:
                for slot in ("current", "previous"):
                    ref = record.get(slot)
                    if isinstance(ref, dict):
                        known.add(ref.get("id"))
            for cred in creds:
                if cred["removed_at"] is None and cred["id"] not in known:
                    found.append(Violation("orphan", target.name,
                                           f"{cred['id']} (expires {cred['expiration']}) is "
                                           "neither current nor previous"))
                if cred["id"] not in audit_text:
                    found.append(Violation("unaudited", target.name,
                                           f"{cred['id']} appears in no audit event"))
    return found


def _history(world: World, cred: dict[str, Any] | None, credential_id: str | None) -> str:
    """For a violation's detail: what ZITADEL holds of the credential and which
    audit events (of which process) name it, so a soak failure can be diagnosed
    from its log."""
    if not credential_id:
        return ""
    held = ("; zitadel: unknown" if cred is None else
            f"; zitadel: expires {cred['expiration']}, removed_at {cred['removed_at']}")
    seen = []
    for name, path in world.audit_files.items():
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            if credential_id in line:
                with_event = re.search(r'"event": ?"([^"]+)"', line)
                at = re.search(r'"timestamp": ?"([^"]+)"', line)
                seen.append(f"{name}:{with_event[1] if with_event else '?'}"
                            f"@{at[1][11:23] if at else '?'}")
    return f"{held}; audit: {', '.join(seen[-12:]) or 'none'}"


# -- secrets in outputs ---------------------------------------------------------------------


def secret_needles(world: World) -> dict[str, str]:
    """Distinctive fragments of every secret the soak can see: PEM body lines of
    key files in Vault (consumer and state secrets, the rotator's own key), PATs,
    the Vault token.  name -> fragment."""
    needles = {"vault token": world.bao.root_token}
    own = json.loads(world.emulator.admin_key_file.read_text())
    needles.update(_pem_lines("rotator key", own["key"]))
    for target in world.targets:
        for path in (target.vault_path, target.state_path):
            for holder in _dicts(world.vault_read(path)):
                if isinstance(holder.get("key"), str):
                    needles.update(_pem_lines(f"{target.name} key {holder.get('keyId')}",
                                              holder["key"]))
                if isinstance(holder.get("client_secret"), str):
                    needles[f"{target.name} secret of {holder.get('user_id')}"] = (
                        holder["client_secret"])
                if isinstance(holder.get("token"), str) and len(holder["token"]) >= 16:
                    needles[f"{target.name} PAT {holder.get('token_id')}"] = holder["token"]
    return needles


def _dicts(value: Any) -> Iterable[dict[str, Any]]:
    if isinstance(value, dict):
        yield value
        for inner in value.values():
            yield from _dicts(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _dicts(inner)


def _pem_lines(name: str, pem: str) -> dict[str, str]:
    body = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    # full 64-character lines only: long enough to be unique, short enough to
    # survive JSON escaping of the newlines around them
    return {f"{name} line {i}": line for i, line in enumerate(body) if len(line) == 64}


def check_leaks(texts: Iterable[tuple[str, str]], needles: dict[str, str],
                seen: set[tuple[str, str]]) -> list[Violation]:
    """Secret fragments, and tracebacks (the CLI promises one-line errors), in
    ``texts``; each (source, finding) reported once across calls via ``seen``."""
    found = []
    for source, text in texts:
        for name, needle in needles.items():
            if needle in text and (source, name) not in seen:
                seen.add((source, name))
                found.append(Violation("leak", source, f"contains {name}"))
        if "Traceback (most recent call last)" in text and (source, "tb") not in seen:
            seen.add((source, "tb"))
            found.append(Violation("traceback", source, _traceback_tail(text)))
    return found


def _traceback_tail(text: str) -> str:
    lines = text[text.index("Traceback (most recent call last)"):].splitlines()
    errors = [ln for ln in lines if re.match(r"^[A-Za-z_.]+(Error|Exception)\b", ln)]
    return (errors[0] if errors else lines[-1])[:200]


def summarize(violations: Sequence[Violation]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for v in violations:
        counts[v.kind] = counts.get(v.kind, 0) + 1
    return counts
