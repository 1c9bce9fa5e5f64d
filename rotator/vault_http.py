"""The HTTP session hvac talks to Vault through: requests' API, cheaper calls.

A rotation makes about nine Vault calls and an idle pass one per target, so
the client's own cost per call counts: through :class:`requests.Session` a
call costs ~1.5 ms of CPU, most of it spent merging per-request settings
that a Vault client never uses (cookies, auth hooks, environment lookups,
runtime protocol checks), against ~0.6 ms for urllib3, which requests itself
sends through.  :class:`VaultSession` is a ``requests.Session`` whose plain
requests -- a JSON body or none, no proxy, no redirect -- go to urllib3
directly and come back as ``requests.Response`` objects, with connection
failures raised as the same ``requests`` exceptions (wrapping the same
urllib3 causes) that ``requests`` raises.  Anything else (a proxy, files,
auth, cookies, a redirect answer such as a standby node's 307) takes
requests' own path, so its behaviour is requests' exactly.

Settings come from the environment once, with requests' functions and
precedence: ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` for the Vault URL,
``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` unless a CA file is configured,
else certifi's bundle, as requests uses.  (With ``trust_env`` requests would
re-read the whole environment twice per request; ``.netrc`` credentials,
which it would also add, have no use with Vault's token header.)
"""

from __future__ import annotations

import json as jsonlib
import os
from collections.abc import Mapping
from typing import Any

import requests
import requests.adapters
import requests.exceptions
import requests.utils
import urllib3
import urllib3.exceptions
from requests.structures import CaseInsensitiveDict

#: Connections kept open to Vault: one per worker thread (``daemon.concurrency``
#: is at most 256), so none is reopened per request (requests keeps 10).
POOL_SIZE = 256

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: Arguments of ``Session.request`` only requests' own path handles (when set).
_REQUESTS_ONLY = (
    "params",
    "data",
    "cookies",
    "files",
    "auth",
    "hooks",
    "stream",
    "cert",
    "proxies",
)
_FAST_ARGUMENTS = frozenset(
    {"headers", "json", "timeout", "allow_redirects", "verify", *_REQUESTS_ONLY}
)


def _ca_bundle(ca_file: str | None) -> str | bool:
    env_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    return ca_file or env_bundle or True


class VaultSession(requests.Session):
    """A :class:`requests.Session` for one Vault address (see the module docstring)."""

    def __init__(self, url: str, ca_file: str | None = None) -> None:
        super().__init__()
        self.trust_env = False
        self.proxies = requests.utils.get_environ_proxies(url)
        self.verify = _ca_bundle(ca_file)
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE)
        self.mount("https://", adapter)
        self.mount("http://", adapter)
        self._fast: urllib3.PoolManager | None = None
        if not self.proxies:  # through a proxy: requests' path
            tls: dict[str, Any] = {"cert_reqs": "CERT_NONE"}
            if self.verify is not False:
                verify = self.verify
                where = requests.utils.DEFAULT_CA_BUNDLE_PATH if verify is True else str(verify)
                tls = {"cert_reqs": "CERT_REQUIRED"}
                tls["ca_cert_dir" if os.path.isdir(where) else "ca_certs"] = where
            self._fast = urllib3.PoolManager(num_pools=4, maxsize=POOL_SIZE, **tls)

    # the same call as requests': every argument past ``url`` is passed on as given
    def request(
        self, method: str, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:
        """:meth:`requests.Session.request`; a plain call goes through urllib3."""
        if isinstance(url, str) and not args and self._plain(kwargs):
            response = self._send_fast(
                method,
                url,
                kwargs.get("headers"),
                kwargs.get("json"),
                kwargs.get("timeout"),
            )
            if response is not None:
                return response
        return super().request(method, url, *args, **kwargs)

    def close(self) -> None:
        super().close()
        if self._fast is not None:
            self._fast.clear()

    def _plain(self, kwargs: Mapping[str, Any]) -> bool:
        """Nothing in the call or the session that requests' own path must handle."""
        if self._fast is None or any(kwargs.get(name) for name in _REQUESTS_ONLY):
            return False
        if set(kwargs) - _FAST_ARGUMENTS:
            return False
        return kwargs.get("verify") in (None, self.verify) and not (
            self.cookies or self.auth or self.cert
        )

    def _send_fast(
        self, method: str, url: str, headers: Mapping[str, str] | None, json: Any, timeout: Any
    ) -> requests.Response | None:
        """The answer through urllib3, or None for one requests must handle (a redirect)."""
        assert self._fast is not None
        sent: dict[str, str] = {
            "User-Agent": str(self.headers.get("User-Agent", "")),
            "Accept": "*/*",
        }
        sent.update(headers or {})
        body: bytes | None = None
        if json is not None:
            body = jsonlib.dumps(json, allow_nan=False).encode("utf-8")
            sent.setdefault("Content-Type", "application/json")
        method = method.upper()
        try:
            raw = self._fast.urlopen(
                method,
                url,
                body=body,
                headers=sent,
                timeout=_timeout(timeout),
                retries=urllib3.Retry(total=0, read=False, redirect=False),
                redirect=False,
                preload_content=True,
            )
        except urllib3.exceptions.HTTPError as exc:
            raise _as_requests_error(exc, method, url) from exc
        if raw.status in _REDIRECTS:
            return None  # requests follows it (and strips what it should on the way)
        response = requests.Response()
        response.status_code = raw.status
        response.headers = CaseInsensitiveDict(raw.headers)
        response._content = raw.data
        response.url = url
        response.reason = raw.reason or ""
        response.encoding = requests.utils.get_encoding_from_headers(response.headers) or "utf-8"
        return response


def _timeout(timeout: Any) -> urllib3.Timeout:
    """requests' ``timeout`` (seconds, or a (connect, read) pair) for urllib3."""
    if isinstance(timeout, tuple):
        connect, read = timeout
        return urllib3.Timeout(connect=connect, read=read)
    return urllib3.Timeout(connect=timeout, read=timeout)


def _as_requests_error(
    exc: urllib3.exceptions.HTTPError, method: str, url: str
) -> requests.exceptions.RequestException:
    """What :meth:`requests.adapters.HTTPAdapter.send` raises for ``exc``, wrapping it."""
    errors = requests.exceptions
    kind: type[requests.exceptions.RequestException] = errors.ConnectionError
    if isinstance(exc, urllib3.exceptions.MaxRetryError):
        reason = exc.reason
        if isinstance(reason, urllib3.exceptions.ConnectTimeoutError) and not isinstance(
            reason, urllib3.exceptions.NewConnectionError
        ):
            kind = errors.ConnectTimeout
        elif isinstance(reason, urllib3.exceptions.ProxyError):
            kind = errors.ProxyError
        elif isinstance(reason, urllib3.exceptions.SSLError):
            kind = errors.SSLError
    elif isinstance(exc, urllib3.exceptions.SSLError):
        kind = errors.SSLError
    elif isinstance(exc, urllib3.exceptions.ReadTimeoutError):
        kind = errors.ReadTimeout
    # else a ProtocolError (the server closed the connection), a closed pool...
    return kind(exc, request=requests.Request(method, url))
