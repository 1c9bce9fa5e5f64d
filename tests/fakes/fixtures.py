"""Pytest fixtures over the in-process fakes, shared by the test modules that
use them (import the fixture by name: ``from tests.fakes.fixtures import
zitadel as zitadel``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.enginekit import FastKit, build_fast_kit
from tests.fakes.store import MemoryStore
from tests.fakes.zitadel import FakeZitadel


@pytest.fixture
def zitadel(tmp_path: Path) -> Iterator[FakeZitadel]:
    """A fresh in-process ZITADEL per test, its state under ``tmp_path``."""
    fake = FakeZitadel(tmp_path / "zitadel")
    yield fake
    fake.close()


@pytest.fixture
def store() -> MemoryStore:
    """An empty in-memory KV v2 store."""
    return MemoryStore()


@pytest.fixture
def kit(zitadel: FakeZitadel, store: MemoryStore) -> Iterator[FastKit]:
    """The real Engine on the fakes (tests/enginekit.py ``build_fast_kit``)."""
    with build_fast_kit(zitadel, store) as kit:
        yield kit
