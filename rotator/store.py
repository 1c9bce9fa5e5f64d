"""The narrow interface between the rotation engine and the secret store.

:mod:`rotator.vault` implements it on HashiCorp Vault / OpenBao KV v2.
Paths are relative to the configured KV v2 mount.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class StoredSecret:
    """One KV v2 secret as read.  ``data`` may hold secret material: never log it."""

    path: str
    version: int
    data: Mapping[str, Any] = field(repr=False)
    custom_metadata: Mapping[str, str] = field(default_factory=dict)


class SecretStore(Protocol):
    def read(self, path: str) -> StoredSecret | None:
        """The latest version, or None when the path has no live version."""
        ...

    def write(
        self,
        path: str,
        data: Mapping[str, Any],
        *,
        cas: int,
        custom_metadata: Mapping[str, str] | None = None,
    ) -> int:
        """Write a new version if the current version is ``cas`` (0: must not exist).

        Returns the new version number.  Raises CasConflict when another writer
        won.  ``custom_metadata`` replaces the secret's custom metadata after the
        data write succeeded.
        """
        ...

    def delete_all(self, path: str) -> None:
        """Remove every version and the metadata of ``path`` (absent is fine)."""
        ...

    def check(self) -> None:
        """Raise VaultError unless Vault is reachable, unsealed and our token is valid."""
        ...
