"""The consumer secret: what a consumer reads at a target's ``vault_path``.

Layout (KV v2)::

    data             the current credential's payload (key file, PAT record,
                     or client_id / client_secret / user_id for a secret)
      previous       during grace: the previous payload, so a consumer that
                     pins the old credential can still find it (never for a
                     client secret: see :mod:`rotator.rotation`)
    custom_metadata  managed-by, credential_id, kind, expires_at, rotation_id,
                     rotated_at, previous_credential_id

``managed-by`` is how the rotator recognises its own secret after its state
was lost; a secret without it is someone else's and is only taken over with
``adopt: true``.  Every write is check-and-set.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from rotator import policy as rules
from rotator.errors import VaultError
from rotator.kinds import ops_for
from rotator.model import Credential, StoredSecret, Target
from rotator.ports import SecretStore
from rotator.state import CredentialRef, Pending

MANAGED_BY = "zitadel-rotator"


def credential_id(target: Target, secret: StoredSecret) -> str | None:
    """The id of the credential the consumer secret holds."""
    return ops_for(target.kind).credential_id(secret.data) or (
        secret.custom_metadata.get("credential_id") or None
    )


def is_ours(secret: StoredSecret) -> bool:
    return secret.custom_metadata.get("managed-by") == MANAGED_BY


def adopt(
    target: Target, secret: StoredSecret, listed: Iterable[Credential], now: datetime
) -> CredentialRef | None:
    """The current credential of a secret we have no state for: ours (state
    lost) or someone else's that the target adopts.  None when ZITADEL no
    longer lists it (the target then rotates at once).  A foreign secret
    without ``adopt: true`` is refused."""
    if not (is_ours(secret) or target.adopt):
        raise VaultError(
            "holds a credential the rotator did not create; "
            "set `adopt: true` on the target to take it over",
            path=target.vault_path,
        )
    wanted = credential_id(target, secret)
    match = next((c for c in listed if c.id == wanted), None)
    if match is None:
        return None
    expires_at = match.expires_at
    if ops_for(target.kind).replaces_in_place:
        # A secret never expires: it is due by the instant the rotation that
        # wrote it chose, or, written by someone else, as if issued now.
        chosen = _instant(secret.custom_metadata.get("expires_at")) if is_ours(secret) else None
        expires_at = chosen or rules.new_expiry(now, target.policy.lifetime)
    return CredentialRef(
        id=match.id,
        expires_at=expires_at,
        created_at=match.created_at,
        created_by_rotator=is_ours(secret),
        user_id=match.user_id,
    )


def _instant(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def holds(store: SecretStore, target: Target, payload: dict[str, str]) -> bool:
    """Whether the consumer secret already is ``payload`` (promoted, maybe before a crash)."""
    existing = store.read(target.vault_path)
    return existing is not None and ops_for(target.kind).same(existing.data, payload)


def promote(
    store: SecretStore,
    target: Target,
    pending: Pending,
    old: CredentialRef | None,
    now: datetime,
) -> int:
    """Write the new credential as the consumer secret, the old one as ``previous``.

    Idempotent: a promotion found done (before a crash) is not repeated, only
    its metadata repaired.  Returns the secret's version.
    """
    assert pending.secret is not None
    assert pending.credential_id is not None
    ops = ops_for(target.kind)
    existing = store.read(target.vault_path)
    metadata = {
        "managed-by": MANAGED_BY,
        "credential_id": pending.credential_id,
        "kind": target.kind.value,
        "expires_at": pending.expires_at.isoformat(),
        "rotation_id": pending.rotation_id,
        "rotated_at": now.isoformat(),
        "previous_credential_id": old.id if old else "",
    }
    if existing is not None and ops.same(existing.data, pending.secret):
        # Promoted before a crash.  The data is right; the metadata (a
        # separate write in KV v2) may not have made it, and without
        # `managed-by` a later state loss would look like a foreign secret.
        if existing.custom_metadata.get("rotation_id") == pending.rotation_id:
            return existing.version
        return store.write(
            target.vault_path, existing.data, cas=existing.version, custom_metadata=metadata
        )
    data: dict[str, Any] = dict(pending.secret)
    # a secret replaced in place has no previous: the old one is dead, or
    # (two identities) still valid on the other user but not offered here
    keeps_previous = not ops.replaces_in_place
    if (
        keeps_previous
        and existing is not None
        and old is not None
        and credential_id(target, existing) == old.id
    ):
        data["previous"] = {k: v for k, v in existing.data.items() if k != "previous"}
    return store.write(
        target.vault_path,
        data,
        cas=existing.version if existing else 0,
        custom_metadata=metadata,
    )


def drop_previous(store: SecretStore, target: Target) -> int | None:
    """Remove ``previous`` from the consumer secret (the credential is retired).
    Returns the secret's version (None: there is no secret)."""
    existing = store.read(target.vault_path)
    if existing is None or "previous" not in existing.data:
        return existing.version if existing else None
    data = {k: v for k, v in existing.data.items() if k != "previous"}
    metadata = {**existing.custom_metadata, "previous_credential_id": ""}
    return store.write(target.vault_path, data, cas=existing.version, custom_metadata=metadata)
