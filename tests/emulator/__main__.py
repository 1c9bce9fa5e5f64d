"""``python -m tests.emulator --port P [--grpc-port G] --state-dir DIR
[--seed FILE] [--lag-ms N] [--rate-limit N] [--no-v2-keys]
[--tls-cert FILE --tls-key FILE] [--verbose]``

Serves everything on 127.0.0.1:P, like ZITADEL's one external port: HTTP/1.1
(OIDC, Connect v2, /_emulator admin) and HTTP/2 (gRPC for the v1
ManagementService and the v2 UserService, Connect).  ``--grpc-port`` adds a
second, gRPC-only listener for the v1 ManagementService (grpcio's own server).
Port 0 picks a free port.  Writes DIR/endpoints.json and prints one line
``ready <issuer>`` once the listeners accept connections.

With ``--tls-cert`` (PEM chain, leaf first) and ``--tls-key`` (PEM) both
listeners speak TLS only, and the issuer is ``https://127.0.0.1:P``.  The
certificate must name ``IP:127.0.0.1`` in its subjectAltName: clients connect
by that address (``localhost`` may resolve to ::1 first, where nothing listens).
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from tests.emulator.domain import Domain
from tests.emulator.seed import apply_seed, load_seed, write_private
from tests.emulator.server import EmulatorHTTPServer, server_tls_context


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.emulator", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True, help="HTTP port (0 = any free port)")
    p.add_argument("--grpc-port", type=int,
                   help="an extra gRPC-only port for v1 (0 = any free port; default: none)")
    p.add_argument("--state-dir", type=Path, required=True)
    p.add_argument("--seed", type=Path, help="YAML seed (used only on a fresh state dir)")
    p.add_argument("--lag-ms", type=int, default=0,
                   help="projection lag at the token endpoint: new keys and regenerated "
                        "client secrets are refused, removed ones still pass (§6.3, §11)")
    p.add_argument("--rate-limit", type=int, default=0,
                   help="answer 429 / RESOURCE_EXHAUSTED past N requests/s (0 = no limit)")
    p.add_argument("--no-v2-keys", action="store_true",
                   help="behave like ZITADEL < v4: no v2 key/PAT/metadata methods")
    p.add_argument("--tls-cert", type=Path,
                   help="serve HTTPS and gRPC over TLS with this PEM certificate chain")
    p.add_argument("--tls-key", type=Path, help="the PEM private key of --tls-cert")
    p.add_argument("--verbose", action="store_true", help="log every HTTP request to stderr")
    args = p.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        p.error("--tls-cert and --tls-key go together")
    return args


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_grpc(domain: Domain, port: int,
                tls: tuple[bytes, bytes] | None = None) -> tuple[Any, int | None]:
    try:
        from tests.emulator.grpc_v1 import start_grpc
    except ImportError as exc:
        print(f"emulator: v1 gRPC server not available ({exc})", file=sys.stderr, flush=True)
        return None, None
    if port == 0:
        port = _free_port()
    server, bound = start_grpc(domain, port, tls=tls)
    return server, bound


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    state_dir: Path = args.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    domain = Domain(state_dir, lag_ms=args.lag_ms, rate_limit=args.rate_limit)
    if domain.fresh:
        apply_seed(domain, load_seed(args.seed), state_dir)
    domain.mark_started()

    tls_context = None
    grpc_tls = None
    if args.tls_cert is not None:
        tls_context = server_tls_context(str(args.tls_cert), str(args.tls_key))
        grpc_tls = (args.tls_cert.read_bytes(), args.tls_key.read_bytes())
    http_server = EmulatorHTTPServer(args.port, domain, no_v2_keys=args.no_v2_keys,
                                     verbose=args.verbose, tls=tls_context)
    port = http_server.server_address[1]
    issuer = f"{'https' if tls_context else 'http'}://127.0.0.1:{port}"
    domain.issuer = issuer
    grpc_server, grpc_port = (None, None) if args.grpc_port is None \
        else _start_grpc(domain, args.grpc_port, grpc_tls)

    users = {u.username: u.id for u in domain.all_users()}
    orgs = {o.name: o.id for o in domain.list_orgs()}
    endpoints = {"issuer": issuer,
                 "grpc": f"127.0.0.1:{grpc_port}" if grpc_port else None,
                 "tls": tls_context is not None,
                 "orgs": orgs, "users": users}
    write_private(state_dir / "endpoints.json", json.dumps(endpoints, indent=2).encode())

    stop = threading.Event()

    def _terminate(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    thread = threading.Thread(target=http_server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="http", daemon=True)
    thread.start()
    print(f"ready {issuer}", flush=True)
    stop.wait()
    http_server.shutdown()
    if grpc_server is not None:
        grpc_server.stop(grace=0.1).wait()
    domain.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
