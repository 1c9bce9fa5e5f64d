"""``/healthz``, ``/readyz`` and ``/metrics`` on a small threaded HTTP server.

* ``/healthz``: 200 while the process serves requests (liveness).
* ``/readyz``: 200 when Vault accepts our token, ZITADEL answers its OIDC
  discovery and the scheduler runs; 503 otherwise.  The JSON body names the
  failing check and says whether this replica is ``active`` (holds the lease)
  or ``standby``.  A healthy standby is ready: it can take over at once.
* ``/metrics``: Prometheus text format from the daemon's own registry.

Check details are built from error messages of :mod:`rotator.errors`, which
never carry secrets.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from rotator.errors import RotatorError, ZitadelUnavailable
from rotator.metrics import Metrics
from rotator.zitadel.oidc import tls_verify

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = "ok"


@dataclass(frozen=True)
class Readiness:
    checks: tuple[Check, ...]
    #: "active" (holds the lease), "standby" or "stopping".
    role: str

    @property
    def ready(self) -> bool:
        return all(c.ok for c in self.checks)

    def body(self) -> dict[str, object]:
        return {
            "status": "ready" if self.ready else "unready",
            "role": self.role,
            "checks": {c.name: c.detail for c in self.checks},
        }


def run_check(name: str, probe: Callable[[], object]) -> Check:
    """Run ``probe``; any exception makes the check fail with its one-line message."""
    try:
        result = probe()
    except RotatorError as exc:  # messages of our own errors are built to be safe to show
        return Check(name, False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
    except Exception as exc:  # any other failure is "not ready" too; its text is not shown
        return Check(name, False, type(exc).__name__)
    if result is False:
        return Check(name, False, "not running")
    return Check(name, True)


def discovery_probe(
    issuer: str, *, verify: bool | str = True, timeout: float = 2.0
) -> Callable[[], None]:
    """A probe that fetches ZITADEL's OIDC discovery document."""
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"

    def probe() -> None:
        try:
            response = httpx.get(url, timeout=timeout, verify=tls_verify(verify))
        except httpx.HTTPError as exc:
            raise ZitadelUnavailable(
                f"discovery unreachable ({type(exc).__name__})", code="unavailable"
            ) from None
        if response.status_code != 200:
            raise ZitadelUnavailable(
                f"discovery answered HTTP {response.status_code}",
                code="unavailable", status=response.status_code,
            )

    return probe


class HealthServer:
    """Serves the three endpoints on ``host:port`` (port 0: any free port)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        readiness: Callable[[], Readiness],
        metrics: Metrics | None = None,
    ) -> None:
        self._readiness = readiness
        self._metrics = metrics
        handler = self._handler_class()
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = str(self._server.server_address[0])
        return f"http://{host}:{self.port}"

    def start(self) -> HealthServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.1,), name="rotator-health", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> HealthServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    self._send(200, b"ok\n", "text/plain; charset=utf-8")
                elif path == "/readyz":
                    readiness = server._readiness()
                    body = json.dumps(readiness.body(), sort_keys=True).encode() + b"\n"
                    self._send(200 if readiness.ready else 503, body, "application/json")
                elif path == "/metrics" and server._metrics is not None:
                    body, content_type = server._metrics.render()
                    self._send(200, body, content_type)
                else:
                    self._send(404, b"not found\n", "text/plain; charset=utf-8")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("health %s", format % args)

        return Handler
