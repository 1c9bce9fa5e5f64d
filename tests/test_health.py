"""/healthz, /readyz and /metrics against a real OpenBao and the ZITADEL emulator."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from rotator import vault_auth
from rotator.config import VaultAuthConfig, VaultConfig
from rotator.health import HealthServer, Readiness, discovery_probe, run_check
from rotator.metrics import Metrics
from rotator.vault import NO_RETRY, VaultStore


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def store(openbao: Any, kv_mount: str) -> VaultStore:
    config = VaultConfig(url=openbao.url, mount=kv_mount, auth=VaultAuthConfig(token_env="T"))
    return vault_auth.connect(config, environ={"T": openbao.root_token}, retry=NO_RETRY)


@pytest.fixture
def server(store: VaultStore, emulator: Any) -> Iterator[HealthServer]:
    metrics = Metrics(version="9.9.9")
    zitadel = discovery_probe(emulator.issuer, timeout=2)

    def readiness() -> Readiness:
        return Readiness(
            checks=(
                run_check("vault", store.check),
                run_check("zitadel", zitadel),
                run_check("scheduler", lambda: True),
            ),
            role="standby",
        )

    with HealthServer("127.0.0.1", 0, readiness=readiness, metrics=metrics) as srv:
        yield srv


def get(server: HealthServer, path: str) -> httpx.Response:
    return httpx.get(server.url + path, timeout=10)


def test_healthz_answers_while_the_process_runs(server: HealthServer) -> None:
    response = get(server, "/healthz")
    assert response.status_code == 200
    assert response.text == "ok\n"


def test_readyz_is_ready_with_every_check_passing_and_names_the_role(
    server: HealthServer,
) -> None:
    response = get(server, "/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "role": "standby",
        "checks": {"vault": "ok", "zitadel": "ok", "scheduler": "ok"},
    }


def test_readyz_is_unready_while_vault_is_sealed_and_ready_again_after_unseal(
    server: HealthServer, openbao: Any
) -> None:
    with openbao.sealed():
        response = get(server, "/readyz")
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "unready"
        assert body["checks"]["vault"].startswith("VaultUnavailable")
        assert body["checks"]["zitadel"] == "ok"
    response = get(server, "/readyz")
    assert response.status_code == 200
    assert response.json()["checks"]["vault"] == "ok"


def test_readyz_is_unready_when_zitadel_is_unreachable(store: VaultStore) -> None:
    dead = discovery_probe(f"http://127.0.0.1:{closed_port()}", timeout=1)

    def readiness() -> Readiness:
        return Readiness(
            checks=(run_check("vault", store.check), run_check("zitadel", dead)), role="active"
        )

    with HealthServer("127.0.0.1", 0, readiness=readiness) as srv:
        response = get(srv, "/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["role"] == "active"
    assert body["checks"]["vault"] == "ok"
    assert "discovery unreachable" in body["checks"]["zitadel"]


def test_a_stopped_scheduler_makes_the_replica_unready() -> None:
    readiness = Readiness(checks=(run_check("scheduler", lambda: False),), role="stopping")
    with HealthServer("127.0.0.1", 0, readiness=lambda: readiness) as srv:
        response = get(srv, "/readyz")
    assert response.status_code == 503
    assert json.loads(response.text)["checks"] == {"scheduler": "not running"}


def test_metrics_are_served_in_prometheus_text_format(server: HealthServer) -> None:
    response = get(server, "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    assert 'rotator_build_info{version="9.9.9"} 1.0' in response.text


def test_unknown_paths_are_not_found(server: HealthServer) -> None:
    assert get(server, "/").status_code == 404
    assert get(server, "/metricsz").status_code == 404
