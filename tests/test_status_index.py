"""The status index (rotator/status_index.py): a cache of every target's state
summary that ``status`` and ``plan`` read instead of one state per target.

Run on the fakes (tests/fakes, proven equal to OpenBao and the emulator by
tests/contract); the CLI path against a real OpenBao is in tests/test_cli.py.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any

from rotator.model import Target, Trigger
from rotator.state import Pending, Phase, TargetState
from rotator.status_index import SHARDS, StatusIndex, shard_of, shard_path
from tests.enginekit import TEST_POLICY, FastKit, build_fast_kit, key_target, pat_target
from tests.fakes.fixtures import kit as kit  # noqa: PLC0414 (fixtures)
from tests.fakes.fixtures import store as store  # noqa: PLC0414
from tests.fakes.fixtures import zitadel as zitadel  # noqa: PLC0414
from tests.fakes.store import MemoryStore
from tests.fakes.zitadel import FakeZitadel

PREFIX = "zitadel-rotator"


def index_documents(store: MemoryStore) -> dict[str, Any]:
    """Every shard of the index as stored."""
    found = {}
    for shard in range(SHARDS):
        secret = store.read(shard_path(PREFIX, shard))
        if secret is not None:
            found[secret.path] = {**secret.data, "entries": json.loads(secret.data["entries"])}
    return found


def reconcile_all(kit: FastKit, targets: Sequence[Target], **kw: Any) -> None:
    for target in targets:
        kit.engine.reconcile(target, trigger=Trigger.CLI, **kw)


def test_status_and_plan_from_the_index_equal_those_from_the_state(kit: FastKit) -> None:
    billing, reports = key_target(), pat_target()
    short_grace = replace(TEST_POLICY, grace=timedelta(days=2))
    payroll = key_target(name="payroll", policy=short_grace)
    targets = [billing, reports, payroll]
    reconcile_all(kit, targets)  # first credentials: ready
    # payroll rotates again: grace, with a previous credential and its retire time
    kit.engine.reconcile(payroll, trigger=Trigger.CLI, rotate_now=True)
    kit.advance(60)
    assert kit.engine.publish_index(targets) > 0

    snapshot = kit.engine.read_index(targets)
    assert set(snapshot.entries) == {"billing", "reports", "payroll"}
    for target in targets:
        state = snapshot.entries[target.name].state
        assert kit.engine.status_from(target, state) == kit.engine.status(target)
        assert kit.engine.plan_from(target, state) == kit.engine.plan(target)
    assert kit.engine.status(payroll).state == "grace"
    # as of: when the oldest summary was taken (a minute ago), not now
    assert snapshot.as_of is not None
    age = kit.clock.now() - snapshot.as_of
    assert timedelta(seconds=60) <= age < timedelta(seconds=70)


def test_a_failing_target_shows_the_same_from_the_index(kit: FastKit) -> None:
    target = key_target(user="nobody-by-this-name")
    kit.engine.reconcile(target, trigger=Trigger.CLI)
    kit.engine.publish_index([target])
    entry = kit.engine.read_index([target]).entries["billing"]
    from_index = kit.engine.status_from(target, entry.state)
    assert from_index == kit.engine.status(target)
    assert from_index.failures == 1
    assert from_index.last_error


def test_the_index_never_holds_a_secret(kit: FastKit, store: MemoryStore) -> None:
    targets = [key_target(), pat_target()]
    reconcile_all(kit, targets)
    # a rotation caught between creation and promotion: its secret is in the state
    path = kit.engine.state_path(targets[1])
    raw = store.read(path)
    assert raw is not None
    state = TargetState.from_dict(dict(raw.data))
    now = kit.clock.now()
    state.pending = Pending(
        rotation_id="r-1", trigger="cli", phase=Phase.CREATED, started_at=now,
        expires_at=now + timedelta(days=30), credential_id="pat-9",
        secret={"token": "pending-token-value-0123456789"}, owner="me",
        deadline=now + timedelta(seconds=30), secret_since=raw.version + 1,
    )
    kit.engine.store.write(path, state.to_dict(), cas=raw.version)
    kit.engine.publish_index(targets)

    documents = json.dumps(index_documents(store))
    secrets = ["pending-token-value-0123456789"]
    for target in targets:  # the consumer secrets' private key and token
        consumer = store.read(target.vault_path)
        assert consumer is not None
        secrets += [str(v) for k, v in consumer.data.items() if k in ("key", "token")]
    assert len(secrets) == 3
    for value in secrets:
        assert value not in documents
    assert "PRIVATE KEY" not in documents
    # what is there: the phase and owner of the rotation under way
    entry = kit.engine.read_index(targets).entries["reports"]
    assert entry.state.pending is not None
    assert entry.state.pending.phase is Phase.CREATED
    assert entry.state.pending.secret is None


def test_targets_spread_over_fixed_shards_and_unconfigured_ones_are_pruned(
    kit: FastKit, store: MemoryStore
) -> None:
    names = [f"t{i:03d}" for i in range(200)]
    index = StatusIndex(store, PREFIX, kit.clock)
    summary = {"target": "x", "kind": "key", "state_version": 1, "taken_at": "2030-01-01T00:00:00"}
    index.publish({n: {**summary, "target": n} for n in names}, names)
    documents = index_documents(store)
    assert len(documents) > SHARDS // 2  # spread, not one document
    for name in names:
        assert name in documents[shard_path(PREFIX, shard_of(name))]["entries"]
    # the next writer, with half of them still configured, prunes the rest
    kept = names[:100]
    index.publish({}, kept, every_shard=True)
    filed = {n for doc in index_documents(store).values() for n in doc["entries"]}
    assert filed == set(kept)
    assert set(index.read(names).entries) == set(kept)


class RacingStore(MemoryStore):
    """Before this writer's first write to a shard, another writer files its own."""

    def __init__(self, rival: StatusIndex, rival_seen: Mapping[str, dict[str, Any]],
                 names: Sequence[str]) -> None:
        super().__init__()
        self.rival, self.rival_seen, self.names, self.raced = rival, rival_seen, names, 0

    def write(self, path: str, data: Mapping[str, Any], *, cas: int,
              custom_metadata: Mapping[str, str] | None = None) -> int:
        if "/index/" in path and not self.raced:
            self.raced += 1
            self.rival.publish(self.rival_seen, self.names)
        return super().write(path, data, cas=cas, custom_metadata=custom_metadata)


def test_writers_that_race_on_a_shard_both_get_filed(kit: FastKit) -> None:
    ours = "a"
    theirs = next(n for n in (f"b{i}" for i in range(999)) if shard_of(n) == shard_of(ours))
    entry = {"kind": "key", "state_version": 3, "taken_at": "2030-01-01T00:00:00"}
    racing = RacingStore(StatusIndex(MemoryStore(), PREFIX, kit.clock),
                         {theirs: {**entry, "target": theirs}}, [ours, theirs])
    racing.rival.store = racing  # the rival writes to the same store, first
    index = StatusIndex(racing, PREFIX, kit.clock)
    assert index.publish({ours: {**entry, "target": ours}}, [ours, theirs]) == 1
    assert racing.raced == 1
    assert set(index.read([ours, theirs]).entries) == {ours, theirs}


def test_an_older_summary_does_not_replace_a_newer_one(kit: FastKit, store: MemoryStore) -> None:
    index = StatusIndex(store, PREFIX, kit.clock)
    new = {"target": "a", "kind": "key", "failures": 2, "state_version": 7,
           "taken_at": "2030-01-01T00:00:00"}
    old = {**new, "failures": 0, "state_version": 5, "taken_at": "2030-01-02T00:00:00"}
    index.publish({"a": new}, ["a"])
    index.publish({"a": old}, ["a"])
    assert index.read(["a"]).entries["a"].state_version == 7


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    def read(self, path: str) -> Any:
        self.paths.append(path)
        return super().read(path)


def test_the_rotation_protocol_never_reads_the_index(zitadel: FakeZitadel) -> None:
    store = CountingStore()
    with build_fast_kit(zitadel, store) as kit:
        targets = [key_target(), pat_target()]
        reconcile_all(kit, targets)
        kit.engine.publish_index(targets)
        # an index that says something else entirely changes nothing either
        for path, doc in index_documents(store).items():
            lies = {n: {**e, "stuck": True, "failures": 9} for n, e in doc["entries"].items()}
            filed = store.read(path)
            assert filed is not None
            store.write(path, {**doc, "entries": json.dumps(lies)}, cas=filed.version)
        store.paths.clear()
        reconcile_all(kit, targets, rotate_now=True)
        assert [kit.engine.status(t).state for t in targets] == ["grace", "grace"]
        kit.advance(3 * 86400)  # past the grace: the previous credentials retire
        reconcile_all(kit, targets)
        assert [kit.engine.status(t).state for t in targets] == ["ready", "ready"]
        assert store.paths
        assert not [p for p in store.paths if "/index/" in p]


def test_run_once_daemon_pass_files_every_target(kit: FastKit, store: MemoryStore) -> None:
    """The recorder sees every state read and write through the engine: one pass
    (nothing rotated, only reads) is enough to file every target."""
    targets = [key_target(), pat_target()]
    reconcile_all(kit, targets)
    kit.engine.recorder.take()  # forget: as if a fresh process
    reconcile_all(kit, targets)  # idle: reads only
    kit.engine.publish_index(targets)
    assert set(kit.engine.read_index(targets).entries) == {"billing", "reports"}


def test_after_a_state_loss_the_index_shows_the_new_state_not_the_lost_one(
    kit: FastKit, store: MemoryStore
) -> None:
    """A state secret lost and written anew restarts at KV version 1: a pass over
    every target must still replace the summary of the lost state (whose
    version was higher), or status shows the lost state until the new one's
    version catches up (weeks of rotations)."""
    target = key_target()
    kit.engine.reconcile(target, trigger=Trigger.CLI)
    kit.engine.reconcile(target, trigger=Trigger.CLI, rotate_now=True)  # grace: a previous
    kit.engine.publish_index([target])
    assert kit.engine.status(target).state == "grace"

    store.delete_all(kit.engine.state_path(target))  # the state is lost
    kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)  # adopted from the consumer secret
    fresh = kit.engine.status(target)
    assert fresh.state == "ready"
    kit.engine.publish_index([target])  # the daemon's pass: every shard

    entry = kit.engine.read_index([target]).entries[target.name]
    assert kit.engine.status_from(target, entry.state) == fresh


def test_a_pass_that_changed_nothing_writes_only_its_date_and_status_says_as_of_then(
    kit: FastKit, store: MemoryStore
) -> None:
    """Unchanged summaries are not written again (a shard per pass at 10,000
    targets was ~5 MB into Vault every 5 minutes); one small document says
    when the last pass over every target began, and the index's age is that."""
    targets = [key_target(), pat_target()]
    reconcile_all(kit, targets)
    kit.advance(3600)
    reconcile_all(kit, targets)  # the rotations' twin watches end: the states settle
    kit.engine.publish_index(targets)
    shards = {p: store.read(p).version for p in index_documents(store)}  # type: ignore[union-attr]

    kit.advance(3600)
    began = kit.clock.now()
    reconcile_all(kit, targets)  # idle: nothing changed
    kit.engine.publish_index(targets)

    assert {p: store.read(p).version for p in index_documents(store)} == shards  # type: ignore[union-attr]
    snapshot = kit.engine.read_index(targets)
    assert snapshot.as_of is not None
    assert began <= snapshot.as_of < began + timedelta(seconds=5)  # vouched by this pass
    # a rotate of one target (not a pass over all) vouches for nothing else
    kit.advance(3600)
    kit.engine.reconcile(targets[0], trigger=Trigger.CLI, rotate_now=True)
    kit.engine.publish_index(targets, [targets[0]])
    assert kit.engine.read_index(targets).as_of == snapshot.as_of
