"""The KV v2 semantics the engine relies on, held once against both stores:
rotator.vault.VaultStore on a real OpenBao and the in-memory MemoryStore
(tests/fakes/store.py) the fast protocol tests use.  Whatever passes here for
one must pass for the other, so the fake cannot drift from OpenBao."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import hvac
import pytest

from rotator.errors import CasConflict, VaultError, VaultUnavailable
from rotator.ports import SecretStore
from rotator.vault import RetryPolicy, VaultStore
from tests.fakes.store import MemoryStore

PATH = "zitadel/billing"


class Backend(Protocol):
    store: SecretStore

    def soft_delete(self, path: str) -> None:
        """KV v2 ``DELETE data/<path>``: the latest version is deleted, not destroyed."""

    def version_data(self, path: str, version: int) -> dict[str, Any] | None:
        """One version's data (None when deleted or destroyed)."""

    def sealed(self) -> contextlib.AbstractContextManager[None]: ...


@dataclass
class OpenBaoBackend:
    store: VaultStore
    openbao: Any
    mount: str

    def soft_delete(self, path: str) -> None:
        self.openbao.client().secrets.kv.v2.delete_latest_version_of_secret(
            path, mount_point=self.mount
        )

    def version_data(self, path: str, version: int) -> dict[str, Any] | None:
        try:
            answer = self.openbao.client().secrets.kv.v2.read_secret_version(
                path, version=version, mount_point=self.mount, raise_on_deleted_version=False
            )
        except hvac.exceptions.InvalidPath:
            return None
        data: dict[str, Any] | None = answer["data"]["data"]
        return data

    def sealed(self) -> contextlib.AbstractContextManager[None]:
        sealed: contextlib.AbstractContextManager[None] = self.openbao.sealed()
        return sealed


@dataclass
class MemoryBackend:
    store: MemoryStore

    def soft_delete(self, path: str) -> None:
        self.store.soft_delete(path)

    def version_data(self, path: str, version: int) -> dict[str, Any] | None:
        return self.store.version_data(path, version)

    @contextlib.contextmanager
    def sealed(self) -> Iterator[None]:
        self.store.sealed = True
        try:
            yield
        finally:
            self.store.sealed = False


@pytest.fixture(params=["openbao", "memory"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "memory":
        return MemoryBackend(MemoryStore())
    openbao = request.getfixturevalue("openbao")
    mount = request.getfixturevalue("kv_mount")
    # no retries: a sealed Vault should answer at once here
    store = VaultStore(openbao.client(), mount, retry=RetryPolicy(attempts=1))
    return OpenBaoBackend(store, openbao, mount)


# -- read and write -----------------------------------------------------------------------


def test_a_path_never_written_reads_as_none(backend: Backend) -> None:
    assert backend.store.read(PATH) is None


def test_cas_zero_creates_version_one_and_the_data_reads_back(backend: Backend) -> None:
    store = backend.store
    assert store.write(PATH, {"keyId": "1", "nested": {"a": [1, 2]}, "pair": (1, 2)}, cas=0) == 1
    read = store.read(PATH)
    assert read is not None
    assert (read.path, read.version) == (PATH, 1)
    # as JSON: a tuple reads back as a list
    assert dict(read.data) == {"keyId": "1", "nested": {"a": [1, 2]}, "pair": [1, 2]}
    assert dict(read.custom_metadata) == {}


def test_cas_zero_is_create_only(backend: Backend) -> None:
    store = backend.store
    store.write(PATH, {"v": "first"}, cas=0)
    with pytest.raises(CasConflict):
        store.write(PATH, {"v": "second"}, cas=0)
    read = store.read(PATH)
    assert read is not None
    assert (read.version, read.data["v"]) == (1, "first")


def test_cas_n_writes_only_on_version_n_and_numbers_go_up_by_one(backend: Backend) -> None:
    store = backend.store
    assert store.write(PATH, {"v": 1}, cas=0) == 1
    assert store.write(PATH, {"v": 2}, cas=1) == 2
    assert store.write(PATH, {"v": 3}, cas=2) == 3
    for stale in (1, 2, 4):
        with pytest.raises(CasConflict) as caught:
            store.write(PATH, {"v": "lost"}, cas=stale)
        assert not caught.value.retryable
    read = store.read(PATH)
    assert read is not None
    assert (read.version, read.data["v"]) == (3, 3)
    assert backend.version_data(PATH, 2) == {"v": 2}  # older versions are kept


def test_of_two_writers_on_one_version_exactly_one_wins(backend: Backend) -> None:
    store = backend.store
    store.write(PATH, {"v": 0}, cas=0)
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def write(n: int) -> None:
        barrier.wait()
        try:
            store.write(PATH, {"v": n}, cas=1)
            outcomes.append("won")
        except CasConflict:
            outcomes.append("lost")

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["lost", "lost", "lost", "won"]
    read = store.read(PATH)
    assert read is not None
    assert read.version == 2


def test_a_negative_cas_is_a_programming_error(backend: Backend) -> None:
    with pytest.raises(ValueError, match="cas"):
        backend.store.write(PATH, {"v": 1}, cas=-1)


# -- custom metadata ---------------------------------------------------------------------


def test_custom_metadata_is_replaced_as_a_whole_or_kept_when_not_given(backend: Backend) -> None:
    store = backend.store
    store.write(PATH, {"v": 1}, cas=0, custom_metadata={"managed-by": "zitadel-rotator", "a": "1"})
    read = store.read(PATH)
    assert read is not None
    assert dict(read.custom_metadata) == {"managed-by": "zitadel-rotator", "a": "1"}

    store.write(PATH, {"v": 2}, cas=1)  # None: left alone
    read = store.read(PATH)
    assert read is not None
    assert dict(read.custom_metadata) == {"managed-by": "zitadel-rotator", "a": "1"}

    store.write(PATH, {"v": 3}, cas=2, custom_metadata={"b": "2", "empty": ""})
    read = store.read(PATH)
    assert read is not None
    # replaced, not merged; an empty value means "no such key" (KV v2 refuses them)
    assert dict(read.custom_metadata) == {"b": "2"}


# -- deleting ------------------------------------------------------------------------------


def test_delete_all_forgets_every_version_and_the_metadata(backend: Backend) -> None:
    store = backend.store
    store.write(PATH, {"v": 1}, cas=0, custom_metadata={"a": "1"})
    store.write(PATH, {"v": 2}, cas=1)
    store.delete_all(PATH)
    assert store.read(PATH) is None
    assert backend.version_data(PATH, 1) is None
    # a fresh start: numbering begins again, no metadata left
    assert store.write(PATH, {"v": "new"}, cas=0) == 1
    read = store.read(PATH)
    assert read is not None
    assert dict(read.custom_metadata) == {}
    store.delete_all("zitadel/never-written")  # absent is fine


def test_a_soft_deleted_latest_version_reads_as_none_and_cas_zero_writes_again(
    backend: Backend,
) -> None:
    store = backend.store
    store.write(PATH, {"v": 1}, cas=0)
    store.write(PATH, {"v": 2}, cas=1)
    backend.soft_delete(PATH)
    assert store.read(PATH) is None
    assert backend.version_data(PATH, 1) == {"v": 1}  # only the latest is deleted
    # "no live version" is what cas=0 asks for: the next write is version 3
    assert store.write(PATH, {"v": 3}, cas=0) == 3
    read = store.read(PATH)
    assert read is not None
    assert (read.version, read.data["v"]) == (3, 3)


def _destroy(backend: Backend, versions: list[int]) -> None:
    destroy = getattr(backend.store, "destroy_versions", None)
    if destroy is None:
        # VaultStore.destroy_versions arrives with the security branch
        pytest.skip(f"{type(backend.store).__name__} has no destroy_versions yet")
    destroy(PATH, versions)


def test_destroyed_versions_are_gone_for_good_and_the_rest_stays(backend: Backend) -> None:
    store = backend.store
    for version in range(3):
        store.write(PATH, {"v": version + 1}, cas=version)
    _destroy(backend, [1, 2])
    assert backend.version_data(PATH, 1) is None
    assert backend.version_data(PATH, 2) is None
    read = store.read(PATH)
    assert read is not None
    assert (read.version, read.data["v"]) == (3, 3)

    _destroy(backend, [3])
    assert store.read(PATH) is None
    # the numbering (metadata) stays: the next create is version 4
    assert store.write(PATH, {"v": 4}, cas=0) == 4


# -- health ---------------------------------------------------------------------------------


def test_check_passes_on_a_usable_store(backend: Backend) -> None:
    backend.store.check()


def test_a_sealed_store_refuses_every_call_as_retryable_unavailability(backend: Backend) -> None:
    store = backend.store
    store.write(PATH, {"v": 1}, cas=0)
    with backend.sealed():
        calls = [
            store.check,
            lambda: store.read(PATH),
            lambda: store.write(PATH, {"v": 2}, cas=1),
            lambda: store.delete_all(PATH),
        ]
        for call in calls:
            with pytest.raises(VaultUnavailable, match="sealed") as caught:
                call()
            assert caught.value.retryable
    read = store.read(PATH)  # nothing was changed while sealed
    assert read is not None
    assert read.version == 1


def test_a_document_of_more_than_1000_json_strings_is_refused_and_nothing_is_written(
    backend: Backend,
) -> None:
    """OpenBao's JSON limit counts every string of the request, keys included
    (``data``, ``options`` and ``cas`` among them): 997 of the document's own fit."""
    fits = {f"k{i}": i for i in range(997)}
    backend.store.write(PATH, fits, cas=0)
    with pytest.raises(VaultError, match="high complexity") as refused:
        backend.store.write(PATH, {**fits, "one more": 1}, cas=1)
    assert refused.value.status == 400
    stored = backend.store.read(PATH)
    assert stored is not None
    assert (stored.version, len(stored.data)) == (1, 997)
