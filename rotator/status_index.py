"""The status index: a summary of every target's state, kept in a few Vault
secrets, so that ``status`` and ``plan`` over 10,000 targets read a few dozen
secrets instead of 10,000 (as ``kubectl get certificates`` reads the CRDs'
status rather than every Secret).

It is a cache.  The state secret (:mod:`rotator.state`) stays the truth, and
nothing in the rotation protocol reads the index.  The rotator writes it in
batches, never per state write (a single document written on every state
change would make every rotation contend on its check-and-set): the daemon
after each reconcile pass, ``run --once`` and ``rotate`` at their end, for the
targets they saw.  What they saw is collected by :class:`RecordingStore`, a
:class:`~rotator.ports.SecretStore` wrapper that notes every state secret read
or written (its data and KV version) on the way through.

Layout: :data:`SHARDS` secrets ``<state_prefix>/index/NN``; a target lives in
shard ``crc32(name) % SHARDS`` (stable across processes and versions).  Each
holds ``{"schema", "shard", "written_at", "entries": "<JSON text>"}``, the
text of ``{name: summary}`` (one string: OpenBao refuses a request with more
than 1,000 JSON strings, keys included, ~100 summaries' worth); a
summary is an allow-list of the state's fields (ids, dates, phases, counters,
the last error's vetted message: never ``pending.secret``), plus
``state_version`` (the state's KV version it was taken from) and ``taken_at``.
Vault's integrated storage takes entries up to 1 MiB by default; a summary is
~300-500 bytes of JSON, so 64 shards hold ~130,000 targets.

Writers read-modify-write each shard with check-and-set and retry on a
conflict; entries of targets no longer configured are pruned then.
"""

from __future__ import annotations

import json
import logging
import threading
import zlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rotator.errors import CasConflict, RotatorError
from rotator.model import StoredSecret
from rotator.ports import Clock, SecretStore
from rotator.state import TargetState

log = logging.getLogger(__name__)

#: Fixed: changing it moves targets between shards (a reader would then find
#: them missing and read their state until the next writer re-filed them).
SHARDS = 64
SCHEMA = 1
#: Shards read at once by :meth:`StatusIndex.read`.
READS_AT_ONCE = 8
#: Check-and-set attempts per shard before the writer gives up on it (the next
#: writer files what this one could not).
_ATTEMPTS = 5

# The fields a summary keeps, per record.  An allow-list: a field added to the
# state later stays out of the index until it is named here.
_TOP = (
    "target", "kind", "user_id", "org_id", "user_ref", "failures", "permanent_failures",
    "stuck", "last_error", "last_error_class", "next_attempt_at", "last_success_at",
    "target_digest", "consumer_version",
)
_CURRENT = ("id", "expires_at", "created_at", "created_by_rotator", "user_id")
_PREVIOUS = ("id", "expires_at", "retire_at", "created_by_rotator", "user_id")
_PENDING = (
    "rotation_id", "trigger", "phase", "started_at", "expires_at", "credential_id", "owner",
    "deadline", "user_id",
)
_IDENTITY = ("id", "org_id", "username")
_REMOVING = ("user_id", "owner", "deadline")


def shard_of(name: str) -> int:
    """The shard of target ``name``: stable across processes (``hash()`` is not)."""
    return zlib.crc32(name.encode()) % SHARDS


def shard_path(state_prefix: str, shard: int) -> str:
    return f"{state_prefix.strip('/')}/index/{shard:02d}"


def _pick(record: Mapping[str, Any] | None, names: Sequence[str]) -> dict[str, Any] | None:
    if not isinstance(record, Mapping):
        return None
    return {k: record[k] for k in names if record.get(k) not in (None, "")}


def summarize(state_data: Mapping[str, Any], version: int, taken_at: datetime) -> dict[str, Any]:
    """The index entry for a state secret's data (as stored: JSON-ready)."""
    entry: dict[str, Any] = {
        k: state_data[k] for k in _TOP if state_data.get(k) not in (None, "", 0, False)
    }
    for key, names in (("current", _CURRENT), ("previous", _PREVIOUS),
                       ("pending", _PENDING), ("removing", _REMOVING)):
        picked = _pick(state_data.get(key), names)
        if picked:
            entry[key] = picked
    identities = [_pick(i, _IDENTITY) for i in state_data.get("identities") or ()]
    if identities:
        entry["identities"] = identities
    orphans = state_data.get("orphans") or ()
    if orphans:  # how many are left to clean up; their details stay in the state
        entry["orphans"] = len(orphans)
    entry["state_version"] = version
    entry["taken_at"] = taken_at.isoformat()
    return entry


@dataclass(frozen=True)
class Entry:
    """One target's summary as read from the index."""

    state: TargetState
    state_version: int
    taken_at: datetime


def entry_state(raw: Mapping[str, Any]) -> Entry:
    """A summary back as a :class:`TargetState` (without secrets or orphan details),
    which :mod:`rotator.report` reads like any state."""
    data = {k: v for k, v in raw.items() if k not in ("state_version", "taken_at", "orphans")}
    data.setdefault("user_id", "")
    state = TargetState.from_dict(data)
    return Entry(state, int(raw["state_version"]), datetime.fromisoformat(raw["taken_at"]))


class Recorder:
    """What a process saw of its targets' state since the last publication:
    name -> (state version, summary as JSON; None: the state secret is gone).
    JSON text, not dicts: a daemon holds one per target until the pass ends
    (~0.4 KB each rather than ~2 KB)."""

    def __init__(self, state_prefix: str, clock: Clock) -> None:
        self._prefix = f"{state_prefix.strip('/')}/targets/"
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[int, str | None]] = {}

    def target_of(self, path: str) -> str | None:
        if path.startswith(self._prefix):
            name = path[len(self._prefix):]
            return name if name and "/" not in name else None
        return None

    def saw(self, name: str, data: Mapping[str, Any] | None, version: int) -> None:
        entry = None
        if data is not None:
            entry = json.dumps(summarize(data, version, self._clock.now()), separators=(",", ":"))
        with self._lock:
            current = self._seen.get(name)
            # threads may finish out of order: keep the newest version seen
            if entry is None or current is None or current[0] <= version:
                self._seen[name] = (version, entry)

    def take(self, names: Iterable[str] | None = None) -> dict[str, dict[str, Any] | None]:
        """The summaries seen (of ``names``, or all), forgetting them."""
        with self._lock:
            if names is None:
                taken, self._seen = self._seen, {}
            else:
                taken = {n: self._seen.pop(n) for n in names if n in self._seen}
        return {n: json.loads(text) if text else None for n, (_, text) in taken.items()}


class RecordingStore:
    """A :class:`~rotator.ports.SecretStore` that tells a :class:`Recorder` of
    every state secret read or written through it; it changes no call."""

    def __init__(self, store: SecretStore, recorder: Recorder) -> None:
        self.inner, self.recorder = store, recorder

    def read(self, path: str) -> StoredSecret | None:
        secret = self.inner.read(path)
        name = self.recorder.target_of(path)
        if name is not None:
            if secret is None:
                self.recorder.saw(name, None, 0)
            else:
                self.recorder.saw(name, secret.data, secret.version)
        return secret

    def write(
        self,
        path: str,
        data: Mapping[str, Any],
        *,
        cas: int,
        custom_metadata: Mapping[str, str] | None = None,
    ) -> int:
        version = self.inner.write(path, data, cas=cas, custom_metadata=custom_metadata)
        name = self.recorder.target_of(path)
        if name is not None:
            self.recorder.saw(name, data, version)
        return version

    def destroy_versions(self, path: str, versions: Sequence[int]) -> None:
        self.inner.destroy_versions(path, versions)

    def delete_all(self, path: str) -> None:
        self.inner.delete_all(path)

    def check(self) -> None:
        self.inner.check()


@dataclass(frozen=True)
class Snapshot:
    """The index as read for some targets."""

    entries: dict[str, Entry]
    #: When the oldest summary used was taken (None: no entry found).
    as_of: datetime | None


class StatusIndex:
    """Reads and writes the shards under ``<state_prefix>/index/``."""

    def __init__(self, store: SecretStore, state_prefix: str, clock: Clock) -> None:
        self.store, self.state_prefix, self.clock = store, state_prefix.strip("/"), clock

    def path(self, shard: int) -> str:
        return shard_path(self.state_prefix, shard)

    def read(self, names: Collection[str]) -> Snapshot:
        """The entries of ``names`` (those the index has), reading only their shards.
        An unreadable entry counts as missing (its state is read instead)."""
        wanted: dict[int, list[str]] = {}
        for name in names:
            wanted.setdefault(shard_of(name), []).append(name)
        entries: dict[str, Entry] = {}
        shards = sorted(wanted)
        # side by side: 65 reads one after another were a fifth of `plan` at 10,000 targets
        with ThreadPoolExecutor(READS_AT_ONCE, thread_name_prefix="index-read") as pool:
            vouching = pool.submit(self.vouched_at)
            read = pool.map(lambda shard: self.store.read(self.path(shard)), shards)
            for shard, secret in zip(shards, read, strict=True):
                entries.update(_take(_entries(secret), wanted[shard]))
        as_of = min((e.taken_at for e in entries.values()), default=None)
        vouched = vouching.result() if entries else None
        if as_of is not None and vouched is not None:
            as_of = max(as_of, vouched)  # unchanged since, as the last full pass found
        return Snapshot(entries, as_of)

    def publish(
        self,
        seen: Mapping[str, dict[str, Any] | None],
        configured: Collection[str],
        *,
        every_shard: bool = False,
    ) -> int:
        """File ``seen`` (name -> summary, None to drop) into the shards, pruning
        names not in ``configured``; ``every_shard`` also prunes shards nothing
        was seen in.  Returns the number of shards written.  Never raises: the
        index is a cache, and a shard left behind is filed by the next writer."""
        by_shard: dict[int, dict[str, dict[str, Any] | None]] = {}
        for name, entry in seen.items():
            by_shard.setdefault(shard_of(name), {})[name] = entry
        shards = range(SHARDS) if every_shard else sorted(by_shard)
        keep = set(configured)
        written, filed = 0, True
        for shard in shards:
            try:
                done = self._file(shard, by_shard.get(shard, {}), keep, refresh=every_shard)
            except RotatorError as exc:
                log.warning("status index: shard %02d not written: %s", shard, exc)
                done = None
            filed = filed and done is not None
            written += done or 0
        taken = [e["taken_at"] for e in seen.values() if e is not None]
        if every_shard and filed and taken:
            # Unchanged summaries are not rewritten (a shard per pass would be ~5 MB
            # into Vault every 5 minutes at 10,000 targets): this one small document
            # says every one of them was true when the pass began.
            self._vouch(min(taken))
        return written

    def _vouch(self, at: str) -> None:
        try:
            old = self.store.read(self.pass_path)
            self.store.write(self.pass_path, {"schema": SCHEMA, "at": at},
                             cas=old.version if old else 0)
        except RotatorError as exc:  # CasConflict: another pass vouched at the same time
            log.warning("status index: the pass was not recorded: %s", exc)

    @property
    def pass_path(self) -> str:
        return f"{self.state_prefix}/index/pass"

    def vouched_at(self) -> datetime | None:
        """When the last pass over every target began, whose summaries all hold."""
        document = self.store.read(self.pass_path)
        at = document.data.get("at") if document is not None else None
        try:
            return datetime.fromisoformat(at) if isinstance(at, str) else None
        except ValueError:
            return None

    def _file(self, shard: int, updates: Mapping[str, dict[str, Any] | None],
              keep: set[str], *, refresh: bool) -> int | None:
        path = self.path(shard)
        for _ in range(_ATTEMPTS):
            secret = self.store.read(path)
            entries = _entries(secret)
            before = dict(entries)
            for name, entry in updates.items():
                current = entries.get(name)
                if entry is None:
                    entries.pop(name, None)
                elif _same(current, entry):
                    continue  # unchanged: the pass document vouches for its age
                elif refresh or _later_version(current, entry):
                    # a pass read the state just now (even a state lost and begun
                    # again at version 1); a rotate must not file an older version
                    # over one another writer filed meanwhile
                    entries[name] = entry
            entries = {k: v for k, v in entries.items() if k in keep}
            if entries == before and secret is not None:
                return 0
            document = {"schema": SCHEMA, "shard": shard,
                        "written_at": self.clock.now().isoformat(),
                        "entries": json.dumps(entries, separators=(",", ":"))}
            try:
                self.store.write(path, document, cas=secret.version if secret else 0)
            except CasConflict:
                continue  # another writer filed its own: merge into theirs
            return 1
        log.warning("status index: shard %02d kept changing; left to the next writer", shard)
        return None


def _take(stored: Mapping[str, Any], names: Sequence[str]) -> dict[str, Entry]:
    """The readable entries of ``names`` in one shard's ``stored``."""
    entries: dict[str, Entry] = {}
    for name in names:
        raw = stored.get(name)
        if not isinstance(raw, Mapping):
            continue
        try:
            entries[name] = entry_state(raw)
        except (KeyError, TypeError, ValueError):
            log.warning("status index: unreadable entry for %s: reading its state", name)
    return entries


def _entries(secret: StoredSecret | None) -> dict[str, Any]:
    """A shard's ``{name: summary}`` ({} for a missing or unreadable shard)."""
    text = secret.data.get("entries") if secret is not None else None
    if not isinstance(text, str):
        return {}
    try:
        entries = json.loads(text)
    except ValueError:
        log.warning("status index: a shard is unreadable: its targets' states are read")
        return {}
    return entries if isinstance(entries, dict) else {}


def _same(current: Any, entry: Mapping[str, Any]) -> bool:
    """The same summary, whenever it was taken."""
    if not isinstance(current, Mapping):
        return False
    return {k: v for k, v in current.items() if k != "taken_at"} == {
        k: v for k, v in entry.items() if k != "taken_at"
    }


def _later_version(current: Any, entry: Mapping[str, Any]) -> bool:
    if not isinstance(current, Mapping):
        return True
    try:
        return int(entry["state_version"]) > int(current["state_version"])
    except (KeyError, TypeError, ValueError):
        return True
