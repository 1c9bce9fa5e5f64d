"""An in-memory :class:`rotator.ports.SecretStore` with KV v2 semantics.

What the engine relies on, as OpenBao does it (tests/contract/test_store.py
holds both to the same rules):

- every write makes a new version, numbered 1, 2, ...; ``read`` returns the
  latest one, or None when it is soft-deleted or destroyed;
- ``cas=N`` writes only if the current version is N; ``cas=0`` only if there is
  no *live* version (never written, or the latest soft-deleted/destroyed:
  VaultStore retries such a write on the dead version, so the contract is the
  same);
- ``custom_metadata`` replaces the secret's custom metadata after the data write
  (empty values mean "no such key", as KV v2 refuses them);
- ``delete_all`` drops every version and the metadata; ``destroy_versions``
  wipes the data of those versions for good, metadata and numbering stay.

``sealed = True`` makes every call fail like a sealed Vault; ``calls`` counts
calls per method (for cost tests); ``fail_next`` injects errors.
"""

from __future__ import annotations

import copy
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rotator.errors import CasConflict, VaultError, VaultUnavailable
from rotator.model import StoredSecret


@dataclass
class _Version:
    data: dict[str, Any] | None  # None once destroyed
    deleted: bool = False

    @property
    def live(self) -> bool:
        return self.data is not None and not self.deleted


@dataclass
class _Secret:
    versions: dict[int, _Version] = field(default_factory=dict)
    custom_metadata: dict[str, str] = field(default_factory=dict)

    @property
    def current(self) -> int:
        return max(self.versions, default=0)


# the same paths VaultStore accepts, and data as it reads back from Vault
from rotator.vault import _as_json, _normalise  # noqa: E402

#: OpenBao refuses a request body with more than this many JSON strings (keys
#: included): "refused JSON input due to high complexity".
MAX_JSON_STRINGS = 1000


def _json_strings(value: Any) -> int:
    if isinstance(value, str):
        return 1
    if isinstance(value, dict):
        return sum(1 + _json_strings(v) for v in value.values())
    if isinstance(value, list):
        return sum(_json_strings(v) for v in value)
    return 0


class MemoryStore:
    """:class:`rotator.ports.SecretStore` in a dict; thread-safe."""

    def __init__(self, mount: str = "secret") -> None:
        self.mount = mount
        #: While True every call raises VaultUnavailable, like a sealed Vault.
        self.sealed = False
        #: Calls per method name ("read", "write", ...), failed ones included.
        self.calls: Counter[str] = Counter()
        self._secrets: dict[str, _Secret] = {}
        self._faults: dict[str, list[Exception]] = {}
        self._lock = threading.RLock()

    # -- test hooks -------------------------------------------------------------------

    def fail_next(self, method: str, error: Exception, times: int = 1) -> None:
        """The next ``times`` calls of ``method`` raise ``error`` (before doing anything)."""
        with self._lock:
            self._faults.setdefault(method, []).extend([error] * times)

    def version_data(self, path: str, version: int) -> dict[str, Any] | None:
        """The data of one version (None when deleted, destroyed or absent)."""
        with self._lock:
            secret = self._secrets.get(_normalise(path))
            found = secret.versions.get(version) if secret else None
            return copy.deepcopy(found.data) if found and found.live else None

    def soft_delete(self, path: str) -> None:
        """KV v2 ``DELETE data/<path>``: the latest version reads as absent."""
        with self._lock:
            secret = self._secrets.get(_normalise(path))
            if secret and secret.versions:
                secret.versions[secret.current].deleted = True

    # -- SecretStore ----------------------------------------------------------------------

    def _enter(self, method: str, path: str | None) -> None:
        self.calls[method] += 1
        pending = self._faults.get(method)
        if pending:
            raise pending.pop(0)
        if self.sealed:
            where = f"{self.mount}/{path}" if path else None
            raise VaultUnavailable(f"{method}: Vault is sealed (503)", path=where, status=503)

    def read(self, path: str) -> StoredSecret | None:
        path = _normalise(path)
        with self._lock:
            self._enter("read", path)
            secret = self._secrets.get(path)
            if secret is None or not secret.versions:
                return None
            latest = secret.versions[secret.current]
            if not latest.live:
                return None
            return StoredSecret(
                path=path,
                version=secret.current,
                data=copy.deepcopy(latest.data),  # type: ignore[arg-type]
                custom_metadata=dict(secret.custom_metadata),
            )

    def write(
        self,
        path: str,
        data: Mapping[str, Any],
        *,
        cas: int,
        custom_metadata: Mapping[str, str] | None = None,
    ) -> int:
        path = _normalise(path)
        if cas < 0:
            raise ValueError("cas must be >= 0")
        payload = _as_json(data)
        # the request hvac sends: {"options": {"cas": N}, "data": ...}
        if 3 + _json_strings(payload) > MAX_JSON_STRINGS:
            raise VaultError(
                "write: refused JSON input due to high complexity (400)",
                path=f"{self.mount}/{path}",
                status=400,
            )
        with self._lock:
            self._enter("write", path)
            secret = self._secrets.setdefault(path, _Secret())
            current = secret.current
            live = current > 0 and secret.versions[current].live
            if (cas == 0 and live) or cas not in (0, current):
                raise CasConflict(
                    "write: check-and-set parameter did not match the current version (400)",
                    path=f"{self.mount}/{path}",
                    status=400,
                )
            version = current + 1
            secret.versions[version] = _Version(payload)
            if custom_metadata is not None:
                secret.custom_metadata = {
                    k: str(v) for k, v in custom_metadata.items() if v not in ("", None)
                }
            return version

    def delete_all(self, path: str) -> None:
        path = _normalise(path)
        with self._lock:
            self._enter("delete_all", path)
            self._secrets.pop(path, None)

    def destroy_versions(self, path: str, versions: Sequence[int]) -> None:
        path = _normalise(path)
        with self._lock:
            self._enter("destroy_versions", path)
            secret = self._secrets.get(path)
            for number in versions:
                found = secret.versions.get(number) if secret else None
                if found is not None:
                    found.data = None

    def check(self) -> None:
        with self._lock:
            self._enter("check", None)

    # -- for assertions ---------------------------------------------------------------

    def paths(self) -> list[str]:
        with self._lock:
            return sorted(p for p, s in self._secrets.items() if s.versions)


