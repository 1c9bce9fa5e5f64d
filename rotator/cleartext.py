"""Which configured connections would carry credentials in clear text.

``http://`` is fine on loopback (a sidecar, a port-forward, the test
emulator), but to any other host it sends the rotator's assertion, bearer
tokens, new PATs and private keys (Vault writes) readable on the wire.  That
is not refused (a service mesh may encrypt below us), only said at start.

Webhook URLs are secrets themselves (Slack's path is the credential): only
the field and host are named, never the URL.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from rotator.config import Config


@dataclass(frozen=True)
class CleartextUrl:
    field: str
    host: str

    @property
    def warning(self) -> str:
        return (
            f"{self.field} sends credentials unencrypted to {self.host} (http:// to a host "
            "that is not loopback): use https:// unless the network below encrypts it"
        )


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1."""
    name = host.strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _cleartext(field: str, url: str | None) -> CleartextUrl | None:
    if not url:
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme.lower() != "http" or is_loopback(host):
        return None
    return CleartextUrl(field, host)


def cleartext_urls(config: Config) -> list[CleartextUrl]:
    """The configured URLs that would talk ``http://`` to a non-loopback host."""
    found = [
        _cleartext("zitadel.url", config.zitadel.url),
        _cleartext("vault.url", config.vault.url),
        _cleartext("notify.webhook_url", config.notify.webhook_url),
    ]
    zitadel = config.zitadel
    if zitadel.api != "v2" and zitadel.grpc_plaintext and zitadel.grpc_target:
        # The v1 gRPC API follows zitadel.url's scheme but may live on another host.
        grpc = _cleartext("zitadel.grpc_target", f"http://{zitadel.grpc_target}")
        if grpc is not None and grpc.host != urlsplit(zitadel.url).hostname:
            found.append(grpc)
    return [item for item in found if item is not None]
