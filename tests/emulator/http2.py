"""HTTP/2 on the issuer's port, as ZITADEL serves it: gRPC (the v1
ManagementService and the v2 UserService), Connect over HTTP/2, and every
HTTP/1.1 route (OIDC, admin) on the same listener.

The HTTP/1.1 listener (server.py) hands a connection here when it starts with
the HTTP/2 client preface (cleartext, "prior knowledge" as gRPC clients
speak it) or negotiated ``h2`` by ALPN (TLS).  One connection carries many
streams; each request runs in its own thread, so a slow call (injected
latency) does not hold up the others, as on ZITADEL's Go server.  Routing is
per request, by path and ``content-type``: ``application/grpc*`` -> gRPC,
anything else -> the same router as HTTP/1.1 (Connect JSON/proto, OIDC, admin).
"""

from __future__ import annotations

import base64
import contextlib
import socket
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from tests.emulator import connect_v2, webkeys
from tests.emulator.domain import Domain
from tests.emulator.errors import EmuError
from tests.emulator.faults import DropConnection

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
V1_SERVICE = "zitadel.management.v1.ManagementService"

Response = tuple[int, dict[str, str], bytes]
#: (method, path with query, lower-cased headers, body) -> the HTTP/1.1 router's answer
Router = Callable[[str, str, dict[str, str], bytes], Response]

#: gRPC status numbers by the code names EmuError uses
GRPC_CODES = {name: number for number, name in enumerate((
    "ok", "canceled", "unknown", "invalid_argument", "deadline_exceeded", "not_found",
    "already_exists", "permission_denied", "resource_exhausted", "failed_precondition",
    "aborted", "out_of_range", "unimplemented", "internal", "unavailable", "data_loss",
    "unauthenticated"))}


def starts_with_preface(sock: socket.socket, timeout: float = 5.0) -> bool:
    """Peek (without consuming) whether a cleartext client opens with the HTTP/2
    preface; decided at the first byte that differs ("POST" vs "PRI ...")."""
    sock.settimeout(timeout)
    try:
        seen = b""
        while len(seen) < len(PREFACE):
            seen = sock.recv(len(PREFACE), socket.MSG_PEEK)
            if not seen or not PREFACE.startswith(seen):
                return False
            if len(seen) < len(PREFACE):
                threading.Event().wait(0.001)  # the rest of the preface is in flight
        return True
    except OSError:
        return False
    finally:
        sock.settimeout(None)


class GrpcError(Exception):
    def __init__(self, code: int, message: str, details: bytes | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.details = code, message, details


class Connection:
    """One HTTP/2 connection (server side)."""

    def __init__(self, sock: socket.socket, domain: Domain, router: Router, *,
                 no_v2_keys: bool, verbose: bool) -> None:
        self.sock = sock
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle delay per frame
        self.domain = domain
        self.router = router
        self.no_v2_keys = no_v2_keys
        self.verbose = verbose
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding="utf-8", validate_inbound_headers=False))
        self.lock = threading.Condition()
        self.streams: dict[int, tuple[dict[str, str], bytearray]] = {}
        self.closed = False

    # -- I/O -----------------------------------------------------------------------

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.sock.sendall(data)

    def serve(self) -> None:
        with self.lock:
            self.h2.initiate_connection()
            self._flush()
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
                with self.lock:
                    events = self.h2.receive_data(data)
                    for event in events:
                        self._event(event)
                    self._flush()
                    self.lock.notify_all()
        except (OSError, h2.exceptions.ProtocolError) as exc:
            if self.verbose:
                sys.stderr.write(f"HTTP/2 connection ended: {exc}\n")
        finally:
            with self.lock:
                self.closed = True
                self.lock.notify_all()
            with contextlib.suppress(OSError):
                self.sock.close()

    def _event(self, event: Any) -> None:
        if isinstance(event, h2.events.RequestReceived):
            headers = {k.lower(): v for k, v in event.headers}
            self.streams[event.stream_id] = (headers, bytearray())
        elif isinstance(event, h2.events.DataReceived):
            if event.stream_id in self.streams:
                self.streams[event.stream_id][1].extend(event.data)
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            request = self.streams.pop(event.stream_id, None)
            if request is not None:
                threading.Thread(target=self._answer, args=(event.stream_id, *request),
                                 name=f"h2-stream-{event.stream_id}", daemon=True).start()
        elif isinstance(event, h2.events.StreamReset):
            self.streams.pop(event.stream_id, None)

    def _send(self, stream_id: int, headers: list[tuple[str, str]], body: bytes,
              trailers: list[tuple[str, str]] | None = None) -> None:
        """Headers, body within the peer's flow-control window, trailers."""
        with self.lock:
            if self.closed:
                return
            end_now = not body and trailers is None
            self.h2.send_headers(stream_id, headers, end_stream=end_now)
            self._flush()
            view = memoryview(body)
            while view:
                window = min(self.h2.local_flow_control_window(stream_id),
                             self.h2.max_outbound_frame_size)
                if window <= 0:
                    if self.closed or not self.lock.wait(timeout=10):
                        return  # the peer stopped reading
                    continue
                chunk, view = view[:window], view[window:]
                self.h2.send_data(stream_id, bytes(chunk),
                                  end_stream=not view and trailers is None)
                self._flush()
            if trailers is not None:
                self.h2.send_headers(stream_id, trailers, end_stream=True)
                self._flush()

    # -- requests ------------------------------------------------------------------

    def _answer(self, stream_id: int, headers: dict[str, str], body: bytearray) -> None:
        try:
            content_type = headers.get("content-type", "")
            if content_type.startswith("application/grpc") and \
                    not content_type.startswith("application/grpc-web"):
                self._grpc(stream_id, headers, bytes(body))
                return
            method, path = headers.get(":method", "GET"), headers.get(":path", "/")
            plain = {k: v for k, v in headers.items() if not k.startswith(":")}
            status, resp_headers, payload = self.router(method, path, plain, bytes(body))
            out = [(":status", str(status))] + [(k.lower(), v) for k, v in resp_headers.items()]
            out.append(("content-length", str(len(payload))))
            self._send(stream_id, out, b"" if method == "HEAD" else payload)
        except (OSError, h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
            pass  # the client went away
        except Exception:
            traceback.print_exc()

    def _grpc(self, stream_id: int, headers: dict[str, str], body: bytes) -> None:
        start = [(":status", "200"), ("content-type", "application/grpc")]
        path = headers.get(":path", "")
        _, service, method = ([*path.split("/", 2), "", ""])[:3]
        if service in connect_v2.SERVICES and \
                not connect_v2.exists(method, no_v2_keys=self.no_v2_keys, service=service):
            # connect-go's mux: unknown procedures are HTTP 404 whatever the protocol
            # (gRPC clients read that as UNIMPLEMENTED)
            self._send(stream_id, [(":status", "404"),
                                   ("content-type", "text/plain; charset=utf-8")],
                       b"404 page not found\n")
            return
        try:
            message = _unframe(body)
            if service == V1_SERVICE:
                answer = self._v1(method, headers, message)
            elif service in connect_v2.SERVICES:
                answer = self._v2(method, headers, message)
            elif service == webkeys.SERVICE and webkeys.exists(method):
                answer = self._v2(method, headers, message, webkeys)
            else:
                raise GrpcError(GRPC_CODES["unimplemented"],
                                f"unknown service {service}")
        except GrpcError as err:
            trailers = [("grpc-status", str(err.code)),
                        ("grpc-message", percent_encode(err.message))]
            if err.details:
                trailers.append(("grpc-status-details-bin",
                                 base64.b64encode(err.details).decode().rstrip("=")))
            self._send(stream_id, start + trailers, b"")
            return
        frame = b"\x00" + len(answer).to_bytes(4, "big") + answer
        self._send(stream_id, start, frame, [("grpc-status", "0")])

    def _v1(self, method: str, headers: dict[str, str], message: bytes) -> bytes:
        from tests.emulator import grpc_v1

        servicer = grpc_v1.ManagementServicer(self.domain)
        request_class = getattr(grpc_v1.mgmt_pb, f"{method}Request", None)
        handler = getattr(servicer, method, None)
        if request_class is None or handler is None:
            raise GrpcError(GRPC_CODES["unimplemented"],
                            f"unknown method {method} for service {V1_SERVICE}")
        context = _Context(headers)
        try:
            response = handler(request_class.FromString(message), context)
        except _Abort as abort:
            details = next((v for k, v in context.trailing if k == grpc_v1.STATUS_DETAILS_KEY),
                           None)
            raise GrpcError(abort.code, abort.details,
                            details if isinstance(details, bytes) else None) from None
        return bytes(response.SerializeToString())

    def _v2(self, method: str, headers: dict[str, str], message: bytes,
            service: Any = connect_v2) -> bytes:
        """A v2 unary call over gRPC; ``service``: the module with its
        decode_proto / invoke / encode_proto (connect_v2 or webkeys)."""
        from tests.emulator import grpc_v1

        try:
            after = self.domain.faults.check(method)
            req = service.decode_proto(method, message)
            result = service.invoke(self.domain, method, headers, req)
            if after is not None:
                try:
                    after.apply()  # ZITADEL acted; the answer is late, lost or dropped
                except DropConnection:
                    raise EmuError("unavailable", "emulator: connection dropped") from None
            return bytes(service.encode_proto(method, result))
        except EmuError as err:
            code = GRPC_CODES.get(err.code, GRPC_CODES["unknown"])
            details = None
            if err.detail_id:
                details = grpc_v1.status_details(grpc_v1.grpc_code(err.code), err)
            raise GrpcError(code, err.message, details) from None


def percent_encode(message: str) -> str:
    """grpc-message: bytes outside printable ASCII, and '%', as %XX (gRPC spec)."""
    return "".join(chr(b) if 0x20 <= b <= 0x7E and b != 0x25 else f"%{b:02X}"
                   for b in message.encode())


def _unframe(body: bytes) -> bytes:
    """The one message of a unary gRPC request (5-byte prefix: flag, length)."""
    if len(body) < 5:
        raise GrpcError(GRPC_CODES["internal"], "grpc: request has no message")
    if body[0] != 0:
        raise GrpcError(GRPC_CODES["unimplemented"],
                        "grpc: compressed messages are not supported by this server")
    length = int.from_bytes(body[1:5], "big")
    return body[5:5 + length]


class _Abort(Exception):
    def __init__(self, code: int, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class _Context:
    """The part of ``grpc.ServicerContext`` the v1 servicer uses."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.metadata = [(k, v) for k, v in headers.items() if not k.startswith(":")]
        self.trailing: tuple[tuple[str, Any], ...] = ()

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return self.metadata

    def set_trailing_metadata(self, metadata: tuple[tuple[str, Any], ...]) -> None:
        self.trailing = tuple(metadata)

    def abort(self, code: Any, details: str) -> None:
        raise _Abort(int(code.value[0]), details)
