"""The emulator's listener on the issuer's port: HTTP/1.1 (OIDC/OAuth,
Connect for the v2 UserService, the emulator-only admin API under
``/_emulator/``) and, on the same port, HTTP/2 (gRPC for v1 and v2, Connect
over h2c / h2; see http2.py), told apart by the client preface (cleartext)
or ALPN (TLS)."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import sys
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.emulator import connect_v2, http2, oidc, webkeys
from tests.emulator.domain import Domain
from tests.emulator.errors import EmuError
from tests.emulator.faults import DropConnection

Response = tuple[int, dict[str, str], bytes]
CONNECT_PREFIX = f"/{connect_v2.SERVICE}/"
WEBKEY_PREFIX = f"/{webkeys.SERVICE}/"
ORG_PREFIX = f"/{connect_v2.ORG_SERVICE}/"


def _json(status: int, payload: Any) -> Response:
    return status, {"Content-Type": "application/json"}, json.dumps(payload).encode()


def admin(domain: Domain, path: str, query: str, method: str, body: bytes) -> Response:
    """Test controls; not part of ZITADEL."""
    try:
        data = json.loads(body) if body.strip() else {}
    except ValueError:
        return _json(400, {"error": "body is not JSON"})
    try:
        if path == "/_emulator/faults":
            if method == "POST":
                domain.faults.configure(data)
            elif method == "DELETE":
                domain.faults.clear()
            return _json(200, domain.faults.describe())
        if path == "/_emulator/clock":
            if method == "POST":
                if "offset_seconds" in data:
                    domain.set_clock_offset(float(data["offset_seconds"]))
                if "advance_seconds" in data:
                    domain.advance_clock(float(data["advance_seconds"]))
            return _json(200, _clock(domain))
        if path == "/_emulator/state" and method == "GET":
            tokens = parse_qs(query).get("tokens", ["0"])[0] in ("1", "true")
            return _json(200, domain.dump_state(include_tokens=tokens))
        if path == "/_emulator/counters":
            if method == "DELETE":
                domain.faults.reset_counters()
            return _json(200, domain.faults.counters())
        if path == "/_emulator/bulk" and method == "POST":
            return _json(200, _bulk(domain, data))
        if path == "/_emulator/users" and method == "POST":
            return _json(200, _create_user(domain, data))
        parts = path.split("/")
        if len(parts) == 5 and parts[2] == "users" and parts[4] == "state" and method == "POST":
            domain.set_user_state(parts[3], str(data["state"]))
            return _json(200, {"id": parts[3], "state": data["state"]})
    except (ValueError, KeyError, TypeError, EmuError) as exc:
        return _json(400, {"error": f"{type(exc).__name__}: {exc}"})
    return _json(404, {"error": f"no admin route {method} {path}"})


def _clock(domain: Domain) -> dict[str, Any]:
    from tests.emulator import times

    return {"offset_seconds": domain.clock_offset_seconds,
            "now": times.format_protojson(domain.now())}


def _create_user(domain: Domain, data: dict[str, Any]) -> dict[str, Any]:
    """``{"username": "svc-x", "org": "acme", "roles": [...], "type": "machine",
    "key": false, "secret": false, "memberships": [{"org": "globex", "roles": [...]}]}``
    -> ``{"id", "org_id", "login_name", ["key_file"], ["client_secret"]}``."""
    org_ref = str(data.get("org", "acme"))
    org = domain.org_by_name(org_ref) or domain.get_org(org_ref)
    if org is None:
        raise ValueError(f"unknown org {org_ref!r}")
    username = str(data.get("username") or data["name"])
    user = domain.create_user(
        org.id, username, type=str(data.get("type", "machine")),
        name=data.get("display_name"), roles=[str(r) for r in data.get("roles", [])],
        state=str(data.get("state", "ACTIVE")),
        given_name=str(data.get("given_name", "")), family_name=str(data.get("family_name", "")),
        email=str(data.get("email", "")),
        access_token_type=1 if data.get("access_token_type") == "JWT" else 0,
    )
    for m in data.get("memberships", []):
        target = domain.org_by_name(str(m["org"])) or domain.get_org(str(m["org"]))
        if target is None:
            raise ValueError(f"unknown org {m['org']!r}")
        domain.grant_roles(user.id, target.id, [str(r) for r in m["roles"]])
    out: dict[str, Any] = {"id": user.id, "org_id": org.id, "login_name": user.preferred_login_name}
    if data.get("key"):
        added = domain.create_machine_key(user.id)
        assert added.key_details is not None
        out["key_file"] = json.loads(added.key_details)
    if data.get("secret"):
        out["client_secret"] = domain.generate_machine_secret(user.id)
    return out


def _bulk(domain: Domain, data: dict[str, Any]) -> dict[str, Any]:
    """``{"users": N, "keys_per_user": 0, "pats_per_user": 0, "org": "acme",
    "prefix": "bulk-", "expiration": RFC 3339 | null, "roles": [...]}``: see
    ``Domain.bulk_create`` (one transaction)."""
    from tests.emulator import times

    org_ref = str(data.get("org", "acme"))
    org = domain.org_by_name(org_ref) or domain.get_org(org_ref)
    if org is None:
        raise ValueError(f"unknown org {org_ref!r}")
    expiration = data.get("expiration")
    return domain.bulk_create(
        org.id, int(data["users"]), prefix=str(data.get("prefix", "bulk-")),
        keys_per_user=int(data.get("keys_per_user", 0)),
        pats_per_user=int(data.get("pats_per_user", 0)),
        expiration=None if expiration is None else times.parse_rfc3339(str(expiration)),
        roles=[str(r) for r in data.get("roles", [])])


#: How long a client may take to finish the TLS handshake.
HANDSHAKE_TIMEOUT = 5.0


def server_tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context for ``cert_file`` (PEM chain, leaf first) and ``key_file``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    # gRPC clients insist on h2 by ALPN; HTTP/1.1 clients offer only http/1.1
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


class EmulatorHTTPServer(ThreadingHTTPServer):
    """HTTP, or HTTPS when given ``tls`` (a server :class:`ssl.SSLContext`)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, domain: Domain, *, no_v2_keys: bool = False,
                 verbose: bool = False, tls: ssl.SSLContext | None = None) -> None:
        self.domain = domain
        self.no_v2_keys = no_v2_keys
        self.verbose = verbose
        self.tls = tls
        super().__init__(("127.0.0.1", port), _Handler)

    def get_request(self) -> tuple[Any, Any]:
        sock, address = super().get_request()
        if self.tls is None:
            return sock, address
        # The handshake happens in the request's own thread (finish_request):
        # a slow or refusing client must not stall the accept loop.
        return self.tls.wrap_socket(sock, server_side=True,
                                    do_handshake_on_connect=False), address

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.settimeout(HANDSHAKE_TIMEOUT)
                request.do_handshake()
                request.settimeout(None)
            except OSError as exc:  # ssl.SSLError included
                # A client that does not trust our certificate hangs up here:
                # expected in TLS tests, so one line instead of a traceback.
                sys.stderr.write(f"TLS handshake with {client_address} failed: {exc}\n")
                return
            speaks_h2 = request.selected_alpn_protocol() == "h2"
        else:
            speaks_h2 = http2.starts_with_preface(request)
        if speaks_h2:
            http2.Connection(request, self.domain, self.route, no_v2_keys=self.no_v2_keys,
                             verbose=self.verbose).serve()
            return
        super().finish_request(request, client_address)

    def route(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Response:
        """One request, whatever the HTTP version; ``headers`` lower-cased."""
        url = urlsplit(target)
        domain = self.domain
        try:
            response: Response | None
            if url.path.startswith("/_emulator/"):
                response = admin(domain, url.path, url.query, method, body)
            elif url.path.startswith(CONNECT_PREFIX):
                response = connect_v2.handle(
                    domain, url.path[len(CONNECT_PREFIX):], method, headers, body,
                    no_v2_keys=self.no_v2_keys)
            elif url.path.startswith(WEBKEY_PREFIX):
                response = webkeys.handle(domain, url.path[len(WEBKEY_PREFIX):], method,
                                          headers, body)
            elif url.path.startswith(ORG_PREFIX):
                response = connect_v2.handle(
                    domain, url.path[len(ORG_PREFIX):], method, headers, body,
                    service=connect_v2.ORG_SERVICE)
            else:
                response = oidc.handle(domain, url.path, method, headers, body)
            if response is None:
                response = 404, {"Content-Type": "text/plain; charset=utf-8"}, \
                    b"404 page not found\n"
        except DropConnection:
            raise  # the transport closes the connection
        except Exception:
            traceback.print_exc()
            response = _json(500, {"error": "server_error", "error_description": "Errors.Internal"})
        return response


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # headers and body go out in separate writes: without TCP_NODELAY, Nagle plus
    # the client's delayed ACK add ~40 ms to every keep-alive request
    disable_nagle_algorithm = True
    server: EmulatorHTTPServer
    server_version = "zitadel-emulator"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            sys.stderr.write(f"{self.log_date_time_string()} {format % args}\n")

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        body = self._read_body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            response = self.server.route(self.command, self.path, headers, body)
        except DropConnection:
            # an injected lost answer: the action is committed, the client gets
            # a reset connection instead of a response
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        status, resp_headers, payload = response
        self.send_response(status)
        for name, value in resp_headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
