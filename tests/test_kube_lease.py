"""The Kubernetes Lease backend against a local coordination.k8s.io/v1 Lease endpoint.

No API server binary is available to the suite, so ``LeaseAPI`` below serves
the part of the Kubernetes API the backend uses, with the API server's rules:
bearer-token authentication, 404 for a missing Lease, 409 AlreadyExists on a
second create, and 409 Conflict on an update whose ``resourceVersion`` is not
the current one (optimistic concurrency).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from rotator.clock import OffsetClock
from rotator.errors import ConfigError
from rotator.kube_lease import KubernetesLease, LeaseError

NS, NAME = "rotators", "zitadel-rotator"
PATH = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
TTL = timedelta(seconds=15)


@dataclass
class LeaseAPI:
    url: str = ""
    token: str = "sa-token-1"
    lease: dict[str, Any] | None = None
    version: int = 0
    #: While True every request is answered 503 (an API server outage).
    down: bool = False
    #: Called between a GET and the next PUT: lets a test interleave a rival write.
    before_put: list[Any] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, method: str, path: str, auth: str, body: Any) -> tuple[int, Any]:
        if self.down:
            return 503, {"kind": "Status", "reason": "ServiceUnavailable"}
        if auth != f"Bearer {self.token}":
            return 401, {"kind": "Status", "reason": "Unauthorized"}
        with self.lock:
            if method == "GET" and path == f"{PATH}/{NAME}":
                return (200, self.lease) if self.lease else (404, {"reason": "NotFound"})
            if method == "POST" and path == PATH:
                if self.lease is not None:
                    return 409, {"reason": "AlreadyExists"}
                return 201, self._store(body)
            if method == "PUT" and path == f"{PATH}/{NAME}":
                while self.before_put:
                    self.before_put.pop(0)(self)
                if self.lease is None:
                    return 404, {"reason": "NotFound"}
                if body["metadata"].get("resourceVersion") != str(self.version):
                    return 409, {"reason": "Conflict"}
                return 200, self._store(body)
        return 404, {"reason": "NotFound"}

    def _store(self, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        body["metadata"]["resourceVersion"] = str(self.version)
        self.lease = body
        return body

    @property
    def spec(self) -> dict[str, Any]:
        assert self.lease is not None
        return dict(self.lease["spec"])


@contextlib.contextmanager
def serve_lease_api() -> Iterator[LeaseAPI]:
    """The Lease endpoint on a free loopback port (also used by tests/contract/test_lease.py)."""
    state = LeaseAPI()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            status, answer = state.handle(
                self.command, self.path, self.headers.get("Authorization", ""), body
            )
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = _serve

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def api() -> Iterator[LeaseAPI]:
    with serve_lease_api() as state:
        yield state


@pytest.fixture
def token_file(tmp_path: Path, api: LeaseAPI) -> Path:
    path = tmp_path / "token"
    path.write_text(api.token + "\n")
    return path


def replica(api: LeaseAPI, token_file: Path, holder: str, clock: OffsetClock) -> KubernetesLease:
    return KubernetesLease(
        api.url, NS, NAME, holder, TTL, token_file=token_file, ca_file=None, clock=clock
    )


# What every lease does (one leader, expiry, release, races, skew) is asserted
# in tests/contract/test_lease.py; here only what is Kubernetes' own.


def test_the_lease_object_says_who_holds_it_for_how_long(api: LeaseAPI, token_file: Path) -> None:
    clock = OffsetClock()
    a = replica(api, token_file, "pod-a", clock)
    assert a.try_acquire()
    first_renewal = api.spec["renewTime"]
    clock.advance(timedelta(seconds=5))
    assert a.try_acquire()  # renew
    spec = api.spec
    assert spec["holderIdentity"] == "pod-a"
    assert spec["leaseDurationSeconds"] == 15
    assert spec["renewTime"] > first_renewal
    assert spec["leaseTransitions"] == 0


def test_a_takeover_counts_as_a_lease_transition(api: LeaseAPI, token_file: Path) -> None:
    clock = OffsetClock()
    a, b = replica(api, token_file, "pod-a", clock), replica(api, token_file, "pod-b", clock)
    assert a.try_acquire()
    clock.advance(TTL)
    assert b.try_acquire()
    assert api.spec["holderIdentity"] == "pod-b"
    assert api.spec["leaseTransitions"] == 1


def test_of_two_racing_writers_only_one_wins(api: LeaseAPI, token_file: Path) -> None:
    clock = OffsetClock()
    a = replica(api, token_file, "pod-a", clock)
    assert a.try_acquire()
    clock.advance(TTL + timedelta(seconds=1))  # a's lease lapsed: anyone may take it

    # b writes between a's read and a's write: a's resourceVersion is stale -> 409
    def rival(state: LeaseAPI) -> None:
        assert state.lease is not None
        state.lease["spec"]["holderIdentity"] = "pod-b"
        state.version += 1
        state.lease["metadata"]["resourceVersion"] = str(state.version)

    api.before_put[:] = [rival]
    assert not a.try_acquire()
    assert not a.is_held
    assert api.spec["holderIdentity"] == "pod-b"


def test_a_second_create_loses(api: LeaseAPI, token_file: Path) -> None:
    clock = OffsetClock()
    a = replica(api, token_file, "pod-a", clock)
    api.lease = None
    # another replica creates the Lease between a's GET (404) and a's POST
    original = api.handle

    def create_first(method: str, path: str, auth: str, body: Any) -> tuple[int, Any]:
        if method == "POST" and api.lease is None:
            rival = json.loads(json.dumps(body))
            rival["spec"]["holderIdentity"] = "pod-b"
            api._store(rival)
        return original(method, path, auth, body)

    api.handle = create_first  # type: ignore[method-assign]
    assert not a.try_acquire()
    assert api.spec["holderIdentity"] == "pod-b"


def test_the_token_is_read_at_every_request_and_never_shown(
    api: LeaseAPI, token_file: Path
) -> None:
    clock = OffsetClock()
    a = replica(api, token_file, "pod-a", clock)
    assert a.try_acquire()
    api.token = "sa-token-2"  # the kubelet rotated the projected token
    token_file.write_text("sa-token-2")
    assert a.try_acquire()
    token_file.write_text("stale-token-value")
    with pytest.raises(LeaseError, match="HTTP 401: the service-account token was refused") as exc:
        a.try_acquire()
    assert "stale-token-value" not in str(exc.value)


def test_an_unreachable_api_server_is_a_lease_error(token_file: Path) -> None:
    lease = KubernetesLease(
        "http://127.0.0.1:9",
        NS,
        NAME,
        "pod-a",
        TTL,
        token_file=token_file,
        ca_file=None,
        timeout=1,
    )
    with pytest.raises(LeaseError, match="unreachable"):
        lease.try_acquire()


def test_outside_a_pod_the_backend_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigError, match="KUBERNETES_SERVICE_HOST"):
        KubernetesLease.in_cluster(NAME, "pod-a", TTL)
