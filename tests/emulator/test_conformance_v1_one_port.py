"""Every v1 conformance test again, with the gRPC client on the issuer's port
(HTTP/2 beside HTTP/1.1, as ZITADEL serves it) instead of grpcio's own
listener: the same answers, byte for byte, from the emulator's HTTP/2 server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.emulator.test_conformance_v1 import *  # noqa: F403 - the same tests
from tests.emulator.test_conformance_v1 import Raw, _no_faults  # noqa: F401 - autouse
from tests.harness.emulator import Emulator


@pytest.fixture(scope="module")
def raw(emulator: Emulator) -> Iterator[Raw]:
    client = Raw(emulator.issuer_target)
    yield client
    client.channel.close()
