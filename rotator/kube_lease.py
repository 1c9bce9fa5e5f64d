"""The leader lease as a Kubernetes ``coordination.k8s.io/v1`` Lease.

For replicas running in a cluster (``daemon.ha.backend: kubernetes``): the
same object ``kubectl get lease`` shows and client-go's leader election uses,
spoken to over plain HTTPS with the pod's service-account token, so no
Kubernetes client library is needed.  The RBAC it needs: ``get``, ``create``
and ``update`` on ``leases`` in the release namespace (the Helm chart's Role).

Semantics match :class:`rotator.lease.VaultLease`:

* a replica takes the Lease when it has no holder, or its holder's
  ``renewTime + leaseDurationSeconds`` has passed, or it is already ours;
* every write carries ``metadata.resourceVersion``, so of two contenders the
  API server accepts one and answers the other 409 Conflict (optimistic
  concurrency, the same check-and-set idea as KV v2 ``cas``);
* ``release()`` clears ``holderIdentity`` so a standby takes over at its next
  poll; takeover after a crash is bounded by ``ttl + poll interval``.

The token file is read on every request: projected service-account tokens
are rotated by the kubelet.  The token is never logged or put in a message.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from rotator.clock import Clock, SystemClock
from rotator.errors import ConfigError, LeaseError

log = logging.getLogger(__name__)

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True)
class LeaseSpec:
    holder: str
    duration: timedelta
    acquired_at: datetime | None
    renewed_at: datetime | None
    transitions: int

    def expired(self, now: datetime) -> bool:
        return self.renewed_at is None or self.renewed_at + self.duration <= now

    @classmethod
    def parse(cls, spec: dict[str, Any]) -> LeaseSpec:
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            duration=timedelta(seconds=int(spec.get("leaseDurationSeconds") or 0)),
            acquired_at=_parse_time(spec.get("acquireTime")),
            renewed_at=_parse_time(spec.get("renewTime")),
            transitions=int(spec.get("leaseTransitions") or 0),
        )


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _micro_time(value: datetime) -> str:
    """Kubernetes MicroTime: RFC 3339 with microseconds, UTC."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class KubernetesLease:
    """A TTL lease on one ``Lease`` object; see the module docstring."""

    def __init__(
        self,
        api_url: str,
        namespace: str,
        name: str,
        holder_id: str,
        ttl: timedelta,
        *,
        token_file: str | os.PathLike[str] = SA_DIR / "token",
        ca_file: str | os.PathLike[str] | None = SA_DIR / "ca.crt",
        timeout: float = 5.0,
        clock: Clock | None = None,
        skew: timedelta = timedelta(0),
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if ttl < timedelta(seconds=1):
            raise ValueError("lease ttl must be at least 1s (Kubernetes counts whole seconds)")
        if not holder_id:
            raise ValueError("holder_id must not be empty")
        self.namespace = namespace
        self.name = name
        self.holder_id = holder_id
        self.ttl = ttl
        self.skew = skew
        self.clock: Clock = clock or SystemClock()
        self._token_file = Path(token_file)
        self._collection = (
            f"{api_url.rstrip('/')}/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        )
        verify: bool | str = str(ca_file) if ca_file and Path(ca_file).exists() else True
        self._http = httpx.Client(timeout=timeout, verify=verify, transport=transport)
        self._lock = threading.Lock()
        self._resource_version: str | None = None
        self._expires_at: datetime | None = None
        self._acquired_at: datetime | None = None

    @classmethod
    def in_cluster(
        cls,
        name: str,
        holder_id: str,
        ttl: timedelta,
        *,
        namespace: str | None = None,
        skew: timedelta = timedelta(0),
    ) -> KubernetesLease:
        """The API server, token, CA and namespace a pod is given."""
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise ConfigError(
                "the kubernetes lease needs to run in a pod (KUBERNETES_SERVICE_HOST is not set)",
                field="daemon.ha.backend",
            )
        if namespace is None:
            try:
                namespace = (SA_DIR / "namespace").read_text(encoding="utf-8").strip()
            except OSError:
                raise ConfigError(
                    f"cannot read {SA_DIR / 'namespace'}: set daemon.ha.lease_namespace",
                    field="daemon.ha.lease_namespace",
                ) from None
        if ":" in host:  # IPv6
            host = f"[{host}]"
        return cls(f"https://{host}:{port}", namespace, name, holder_id, ttl, skew=skew)

    # ---------------------------------------------------------------- the lease

    @property
    def is_held(self) -> bool:
        expires = self._expires_at
        return expires is not None and self.clock.now() < expires - self.skew

    def try_acquire(self) -> bool:
        """Take the Lease if free, expired or ours (renewing it); True if we hold it."""
        with self._lock:
            now = self.clock.now()
            current = self._get()
            if current is None:
                return self._create(now)
            metadata, spec = current.get("metadata") or {}, LeaseSpec.parse(
                current.get("spec") or {}
            )
            ours = spec.holder == self.holder_id
            if not (ours or not spec.holder or spec.expired(now)):
                self._forget()
                return False
            acquired = spec.acquired_at if ours and spec.acquired_at else now
            transitions = spec.transitions if ours else spec.transitions + 1
            if not ours:
                log.info(
                    "kubernetes lease acquired",
                    extra={"holder": self.holder_id, "previous_holder": spec.holder or None},
                )
            return self._replace(metadata, self.holder_id, acquired, now, transitions)

    def release(self) -> None:
        """Clear the holder so a standby takes over at its next poll."""
        with self._lock:
            if self._resource_version is None or self._acquired_at is None:
                return
            try:
                current = self._get()
                if current is None:
                    return
                spec = LeaseSpec.parse(current.get("spec") or {})
                if spec.holder == self.holder_id:
                    now = self.clock.now()
                    self._replace(
                        current.get("metadata") or {}, "", self._acquired_at, now,
                        spec.transitions,
                    )
                    log.info("kubernetes lease released", extra={"holder": self.holder_id})
            finally:
                self._forget()

    def close(self) -> None:
        self._http.close()

    # ---------------------------------------------------------------- HTTP

    def _body(
        self, holder: str, acquired: datetime, renewed: datetime, transitions: int
    ) -> dict[str, Any]:
        return {
            "holderIdentity": holder,
            "leaseDurationSeconds": max(1, int(self.ttl.total_seconds())),
            "acquireTime": _micro_time(acquired),
            "renewTime": _micro_time(renewed),
            "leaseTransitions": transitions,
        }

    def _create(self, now: datetime) -> bool:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": self._body(self.holder_id, now, now, 0),
        }
        response = self._request("POST", self._collection, body)
        if response.status_code == 409:  # another replica created it first
            self._forget()
            return False
        self._check(response, "create")
        self._remember(response.json(), now)
        return True

    def _replace(
        self,
        metadata: dict[str, Any],
        holder: str,
        acquired: datetime,
        renewed: datetime,
        transitions: int,
    ) -> bool:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "resourceVersion": metadata.get("resourceVersion"),
            },
            "spec": self._body(holder, acquired, renewed, transitions),
        }
        response = self._request("PUT", f"{self._collection}/{self.name}", body)
        if response.status_code == 409:  # someone wrote it since we read it
            if self._expires_at is not None:
                log.warning("kubernetes lease lost", extra={"holder": self.holder_id})
            self._forget()
            return False
        self._check(response, "update")
        if holder:
            self._remember(response.json(), renewed)
        return True

    def _get(self) -> dict[str, Any] | None:
        response = self._request("GET", f"{self._collection}/{self.name}")
        if response.status_code == 404:
            return None
        self._check(response, "get")
        data: dict[str, Any] = response.json()
        return data

    def _request(self, method: str, url: str, body: object = None) -> httpx.Response:
        try:
            token = self._token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise LeaseError(
                f"cannot read the service-account token {self._token_file} "
                f"({exc.strerror or type(exc).__name__})"
            ) from None
        try:
            return self._http.request(
                method, url, json=body, headers={"Authorization": f"Bearer {token}"}
            )
        except httpx.HTTPError as exc:
            raise LeaseError(
                f"Kubernetes API unreachable for lease {self.namespace}/{self.name} "
                f"({type(exc).__name__})"
            ) from None

    def _check(self, response: httpx.Response, action: str) -> None:
        if response.status_code >= 300:
            hint = {
                401: "the service-account token was refused",
                403: "RBAC: the service account may not get/create/update leases here",
            }.get(response.status_code, "")
            raise LeaseError(
                f"Kubernetes API: {action} lease {self.namespace}/{self.name}: "
                f"HTTP {response.status_code}{': ' + hint if hint else ''}"
            )

    def _remember(self, lease: dict[str, Any], renewed: datetime) -> None:
        spec = LeaseSpec.parse(lease.get("spec") or {})
        self._resource_version = str((lease.get("metadata") or {}).get("resourceVersion"))
        self._acquired_at = spec.acquired_at or renewed
        self._expires_at = renewed + self.ttl

    def _forget(self) -> None:
        self._resource_version = None
        self._expires_at = None
        self._acquired_at = None
