"""Per-kind operations: how a key, a PAT or a client secret is created,
listed, removed and proven to work.  The rotation protocol calls these and never asks which kind
it holds; a new kind of credential is one new class here.

The *payload* is what a consumer reads from Vault: the key file for a key
(byte-for-byte the JSON ZITADEL's console hands out), the token record for a
PAT.  It is secret material: never logged.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Protocol

from rotator.errors import RotatorError, VerificationError, VerificationReason, ZitadelNotFound
from rotator.keys import KeyPair, build_key_file, generate_key_pair
from rotator.model import NEVER_EXPIRES, Credential, CredentialKind, User
from rotator.ports import Verifier, ZitadelTransport

Payload = dict[str, str]


class CredentialOps(Protocol):
    kind: CredentialKind
    #: How people call it, and how :meth:`verify` proves it works (for messages).
    label: str
    proof: str
    #: A user has one of these and :meth:`create` overwrites it (client
    #: secrets): the old one dies at once, so there is no overlap on one
    #: identity, no ``previous`` for consumers, and nothing to roll back to.
    replaces_in_place: bool

    def create(
        self, transport: ZitadelTransport, user: User, expires_at: datetime
    ) -> tuple[Credential, Payload]:
        """Create a credential expiring at exactly ``expires_at``; return it and its payload."""
        ...

    def list(self, transport: ZitadelTransport, user: User) -> list[Credential]: ...

    def remove(self, transport: ZitadelTransport, user: User, credential_id: str) -> None:
        """Raises ZitadelNotFound when it does not exist."""
        ...

    def verify(self, verifier: Verifier, payload: Mapping[str, Any]) -> None:
        """Raise VerificationError unless the payload authenticates at ZITADEL."""
        ...

    def credential_id(self, payload: Mapping[str, Any]) -> str | None:
        """The id of the credential a consumer payload holds."""
        ...

    def same(self, stored: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
        """Whether the consumer payload ``stored`` already is ``new``."""
        ...


class KeyOps:
    kind = CredentialKind.KEY
    label = "key"
    proof = "jwt-bearer token exchange and userinfo"
    replaces_in_place = False

    def __init__(self, generate: Callable[[], KeyPair] = generate_key_pair) -> None:
        #: Where new key pairs come from (tests hand out a pre-made pool).
        self.generate = generate

    def create(
        self, transport: ZitadelTransport, user: User, expires_at: datetime
    ) -> tuple[Credential, Payload]:
        pair = self.generate()
        credential = transport.add_key(user, pair.public_key_pem, expires_at)
        key_file = build_key_file(credential.id, user.id, pair.private_key_pem, expires_at)
        return credential, dict(key_file)

    def list(self, transport: ZitadelTransport, user: User) -> list[Credential]:
        return transport.list_keys(user)

    def remove(self, transport: ZitadelTransport, user: User, credential_id: str) -> None:
        transport.remove_key(user, credential_id)

    def verify(self, verifier: Verifier, payload: Mapping[str, Any]) -> None:
        verifier.verify_key(payload)

    def credential_id(self, payload: Mapping[str, Any]) -> str | None:
        value = payload.get("keyId")
        return str(value) if value else None

    def same(self, stored: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
        return _same_id(self, stored, new)


class PatOps:
    kind = CredentialKind.PAT
    label = "PAT"
    proof = "userinfo"
    replaces_in_place = False

    def create(
        self, transport: ZitadelTransport, user: User, expires_at: datetime
    ) -> tuple[Credential, Payload]:
        issued = transport.add_pat(user, expires_at)
        payload = {
            "token": issued.token,
            "token_id": issued.credential.id,
            "user_id": user.id,
            "expires_at": expires_at.isoformat(),
        }
        return issued.credential, payload

    def list(self, transport: ZitadelTransport, user: User) -> list[Credential]:
        return transport.list_pats(user)

    def remove(self, transport: ZitadelTransport, user: User, credential_id: str) -> None:
        transport.remove_pat(user, credential_id)

    def verify(self, verifier: Verifier, payload: Mapping[str, Any]) -> None:
        token = payload.get("token")
        if not isinstance(token, str) or not token:
            raise VerificationError(
                "the secret holds no PAT (no `token` field)", reason=VerificationReason.MALFORMED
            )
        user_id, pat_id = payload.get("user_id"), payload.get("token_id")
        verifier.verify_pat(
            token, str(user_id) if user_id else None, pat_id=str(pat_id) if pat_id else None
        )

    def credential_id(self, payload: Mapping[str, Any]) -> str | None:
        value = payload.get("token_id")
        return str(value) if value else None

    def same(self, stored: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
        return _same_id(self, stored, new)


def _same_id(ops: CredentialOps, stored: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    wanted = ops.credential_id(new)
    return wanted is not None and ops.credential_id(stored) == wanted


class SecretOps:
    """A machine user's client secret (client credentials grant).

    A user has one secret, so the user id identifies it, and creating one
    regenerates it: the old secret dies at once (``replaces_in_place``).  It
    never expires in ZITADEL; the rotation's expiry instant is only when the
    rotator replaces it.
    """

    kind = CredentialKind.SECRET
    label = "client secret"
    proof = "client_credentials token request and userinfo"
    replaces_in_place = True

    def create(
        self, transport: ZitadelTransport, user: User, expires_at: datetime
    ) -> tuple[Credential, Payload]:
        issued = transport.add_secret(user)
        credential = Credential(
            id=user.id,
            kind=self.kind,
            user_id=user.id,
            expires_at=NEVER_EXPIRES,
            created_at=issued.created_at,
        )
        payload = {
            "client_id": issued.client_id,
            "client_secret": issued.secret,
            "user_id": user.id,
        }
        return credential, payload

    def list(self, transport: ZitadelTransport, user: User) -> list[Credential]:
        fresh = transport.resolve_user(user.id, user.org_id)
        if fresh.has_secret is False:
            return []
        # has_secret unknown (None): counted as present, so that an API that
        # does not say never starts a rotation by itself
        return [Credential(id=user.id, kind=self.kind, user_id=user.id, expires_at=NEVER_EXPIRES)]

    def remove(self, transport: ZitadelTransport, user: User, credential_id: str) -> None:
        if credential_id != user.id:  # a secret's id is its user's: anything else is a bug
            raise RotatorError(f"secret {credential_id} does not belong to user {user.id}")
        if not transport.remove_secret(user):
            raise ZitadelNotFound(f"user {user.id} has no client secret", code="not_found")

    def verify(self, verifier: Verifier, payload: Mapping[str, Any]) -> None:
        client_id, secret = payload.get("client_id"), payload.get("client_secret")
        user_id = payload.get("user_id")
        if not (isinstance(client_id, str) and isinstance(secret, str) and client_id and secret):
            raise VerificationError(
                "the secret holds no client credentials (`client_id`, `client_secret`)",
                reason=VerificationReason.MALFORMED,
            )
        verifier.verify_secret(client_id, secret, user_id=str(user_id or ""))

    def credential_id(self, payload: Mapping[str, Any]) -> str | None:
        value = payload.get("user_id")
        return str(value) if value else None

    def same(self, stored: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
        # the id (the user's) stays across regenerations: compare the secret itself
        mine, theirs = stored.get("client_secret"), new.get("client_secret")
        return (
            isinstance(mine, str)
            and isinstance(theirs, str)
            and hmac.compare_digest(mine.encode(), theirs.encode())
            and stored.get("user_id") == new.get("user_id")
        )


_OPS: dict[CredentialKind, CredentialOps] = {
    ops.kind: ops for ops in (KeyOps(), PatOps(), SecretOps())
}


def ops_for(kind: CredentialKind) -> CredentialOps:
    return _OPS[kind]
