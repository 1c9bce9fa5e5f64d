"""Why a connection failed, in words an operator can act on.

HTTP clients (requests/urllib3 for Vault, httpx for ZITADEL's OIDC calls,
urllib3 for the v2 SDK) wrap the real failure several layers deep; this walks
the chain (``__cause__``, ``__context__``, urllib3's ``reason``, exceptions in
``args``) and names the first cause it recognises: connection refused, DNS,
TLS (with the certificate problem, or "is this an http server?"), timeout,
reset.  Messages quote no exception text that could carry a URL's query or a
header: only fixed phrases and the OS's reason.
"""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Iterator
from urllib.parse import urlsplit


def chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it wraps, each once, outermost first."""
    pending: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        reason = getattr(current, "reason", None)
        nested = [a for a in getattr(current, "args", ()) if isinstance(a, BaseException)]
        pending += [current.__cause__, current.__context__, *nested]
        if isinstance(reason, BaseException):
            pending.append(reason)


def _certificate(exc: BaseException) -> str | None:
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message or exc.reason or "certificate verify failed"
        return f"TLS certificate refused: {str(why).rstrip('.')}"
    return None


#: OpenSSL's reasons when the peer answered a TLS hello with something else.
_NOT_TLS = frozenset({"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "UNKNOWN_PROTOCOL"})


def _handshake(exc: BaseException) -> str | None:
    if not isinstance(exc, ssl.SSLError):
        return None
    reason = str(getattr(exc, "reason", "") or "")
    if reason in _NOT_TLS:
        return "TLS handshake failed: the server does not speak TLS (an http:// server?)"
    return f"TLS handshake failed ({reason or 'SSL error'})"


def _dns(exc: BaseException) -> str | None:
    if isinstance(exc, socket.gaierror):
        return f"DNS lookup failed ({exc.strerror or 'name not known'})"
    if type(exc).__name__ == "NameResolutionError":
        return "DNS lookup failed (name not known)"
    return None


def _refused(exc: BaseException) -> str | None:
    if isinstance(exc, OSError) and exc.errno == errno.ECONNREFUSED:
        return "connection refused (nothing listens on that port?)"
    return None


def _timeout(exc: BaseException) -> str | None:
    name = type(exc).__name__
    timed_out = isinstance(exc, TimeoutError) or ("Timeout" in name and "NewConnection" not in name)
    return "timed out" if timed_out else None


def _os_error(exc: BaseException) -> str | None:
    if isinstance(exc, ConnectionResetError):
        return "connection reset by the server"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return None


def _closed(exc: BaseException) -> str | None:
    name = type(exc).__name__
    if "RemoteDisconnected" in name or "RemoteProtocol" in name:
        return "the server closed the connection without an answer"
    return None


#: Most specific first: a TLS failure also shows up as a reset, a refused
#: connection also as a generic OSError.
_RULES = (_certificate, _handshake, _dns, _refused, _timeout, _os_error, _closed)


def cause(exc: BaseException) -> str:
    """The most specific reason in ``exc``'s chain, e.g. ``connection refused``."""
    found = list(chain(exc))
    for rule in _RULES:
        for current in found:
            reason = rule(current)
            if reason is not None:
                return reason
    return f"no answer ({type(exc).__name__})"


def address(url: str | None) -> str:
    """``scheme://host:port`` of ``url``: never its path, query or credentials."""
    if not url:
        return "?"
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = parts.port
    except ValueError:
        return "?"
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}.get(parts.scheme)
    shown_port = port if port is not None else default
    return f"{parts.scheme}://{host}" + (f":{shown_port}" if shown_port else "")
