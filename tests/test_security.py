"""Leaks and trust (issue 10, item 6), tried against servers that misbehave on purpose.

- Server text is redacted of whatever the rotator sent: a front that echoes
  the request (body, headers) into its error answer must not put the
  assertion, the access token, the PAT being verified, the Vault token, an
  AppRole secret_id or a PEM into an exception, stderr, the audit file or a
  webhook payload.
- Nothing is signed for an issuer other than ``zitadel.url``.
- The audit file is private (0600) and an existing one is never widened.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlencode

import grpc
import hvac
import pytest

from rotator.audit import AuditLog
from rotator.cleartext import cleartext_urls
from rotator.config import load_config
from rotator.errors import (
    VaultError,
    VerificationError,
    ZitadelError,
    ZitadelRejected,
    ZitadelUnauthenticated,
)
from rotator.keys import build_key_file, generate_key_pair
from rotator.notify import from_audit, generic_payload, slack_payload
from rotator.redact import REDACTED, redact, server_text
from rotator.vault import NO_RETRY, VaultStore
from rotator.vault_auth import (
    AppRoleMethod,
    Authenticator,
    KubernetesMethod,
    SecretSource,
    TokenMethod,
)
from rotator.zitadel.oidc import OidcClient, TokenSource
from tests.harness.emulator import Emulator
from tests.harness.openbao import OpenBao
from tests.test_cli import offline_config, rotator, write_config

ACCESS_TOKEN = "at-" + os.urandom(24).hex()
PAT = "pat-" + os.urandom(24).hex()
VAULT_TOKEN = "hvs.vt-" + os.urandom(16).hex()
SECRET_ID = "sid-" + os.urandom(16).hex()


def leaked(text: str, secret: str, window: int = 20) -> bool:
    """Whether ``text`` holds ``secret`` or any ``window`` characters of it in a row."""
    if len(secret) <= window:
        return secret in text
    return any(secret[i : i + window] in text for i in range(len(secret) - window + 1))


def pem_body(pem: str) -> str:
    """The base64 lines of a PEM (its header is not secret)."""
    return "".join(line for line in pem.splitlines() if not line.startswith("-----"))


def assert_clean(text: str, secrets: Sequence[str]) -> None:
    for secret in secrets:
        assert not leaked(text, secret), f"secret leaked into: {text}"


def new_key_file() -> dict[str, Any]:
    pair = generate_key_pair()
    key_file: dict[str, Any] = build_key_file(
        "key-1", "user-1", pair.private_key_pem, datetime.now(UTC) + timedelta(days=30)
    )
    return key_file


# --------------------------------------------------------------------------- redact()


def test_redact_replaces_what_was_sent_as_is_encoded_and_cut_short() -> None:
    secret = "s3cr3t/with+odd=chars&more-" + os.urandom(16).hex()
    echoes = [
        f"bad request: {secret}",
        f"body was {urlencode({'assertion': secret, 'scope': 'openid'})}",
        json.dumps({"echo": secret + '"quoted"'}),
        f"got {secret[:30]}... (truncated)",
        f"tail {secret[-20:]}",
    ]
    for echo in echoes:
        clean = redact(echo, [secret])
        assert REDACTED in clean, echo
        assert not leaked(clean, secret, window=16), clean


def test_redact_keeps_ordinary_text_and_ignores_empty_or_tiny_values() -> None:
    text = "user 3012 not found (AUTHZ-cdgFk)"
    assert redact(text, [None, "", "3012"]) == text
    assert redact(text) == text


def test_redact_removes_secret_shapes_whatever_was_sent() -> None:
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJ4In0.c2lnbmF0dXJl"
    pem = new_key_file()["key"]
    assert redact(f"assertion {jwt} refused") == f"assertion {REDACTED} refused"
    assert redact(f"header Authorization: Bearer {ACCESS_TOKEN}") == (
        f"header Authorization: Bearer {REDACTED}"
    )
    for echoed in (pem, json.dumps(pem), pem[:120], pem.replace("\n", "%0A").replace(" ", "+")):
        assert_clean(redact(f"data: {echoed}"), [pem_body(pem)])


def test_server_text_redacts_before_cutting() -> None:
    """Cut first, and a secret split at the limit would escape the exact match."""
    secret = "x" * 150 + os.urandom(16).hex()
    clean = server_text("y" * 100 + secret, [secret], limit=180)
    assert not leaked(clean, secret, window=16)
    assert len(server_text("z" * 500, limit=200)) == 203


# --------------------------------------------------------------------------- a lying ZITADEL


@dataclass
class Front:
    """A ZITADEL stand-in that echoes every request into its error answers.

    ``issuer``: what discovery announces (default: its own URL).
    ``refuse_tokens``: the token endpoint answers ``token_status`` with the echo;
    otherwise it hands out ``ACCESS_TOKEN``.  Userinfo and every Connect call
    fail with the echo.
    """

    server: ThreadingHTTPServer
    issuer: str | None = None
    refuse_tokens: bool = False
    token_status: int = 400
    #: a raw body answered with 200 to Connect calls (and the token endpoint) instead
    #: of the echoed refusal: a front that says OK with something that is not the answer
    ok_body: str | None = None
    requests: list[tuple[str, str, dict[str, str], str]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def assertions(self) -> list[str]:
        return [
            parse_qs(body)["assertion"][0]
            for method, path, _, body in self.requests
            if method == "POST" and path == "/oauth/v2/token"
        ]


def _echo(handler: BaseHTTPRequestHandler, body: str) -> str:
    auth, headers = handler.headers.get("Authorization"), dict(handler.headers)
    return f"you sent {auth} body={body} headers={headers} ({handler.command} {handler.path})"


@pytest.fixture
def front() -> Iterator[Front]:
    state: list[Front] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, document: dict[str, Any]) -> None:
            data = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self) -> None:
            f = state[0]
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode(errors="replace")
            f.requests.append((self.command, self.path, dict(self.headers), body))
            echo = _echo(self, body)
            if f.ok_body is not None and self.path != "/.well-known/openid-configuration":
                data = f.ok_body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            elif self.path == "/.well-known/openid-configuration":
                self._answer(
                    200,
                    {
                        "issuer": f.issuer or f.url,
                        "token_endpoint": f"{f.url}/oauth/v2/token",
                        "userinfo_endpoint": f"{f.url}/oidc/v1/userinfo",
                    },
                )
            elif self.path == "/oauth/v2/token":
                if f.refuse_tokens:
                    error = "server_error" if f.token_status == 500 else "invalid_grant"
                    self._answer(f.token_status, {"error": error, "error_description": echo})
                else:
                    self._answer(
                        200,
                        {"access_token": ACCESS_TOKEN, "token_type": "Bearer", "expires_in": 3600},
                    )
            elif self.path.startswith("/oidc/v1/userinfo"):
                self._answer(401, {"error": "invalid_token", "error_description": echo})
            else:  # a Connect call
                self._answer(403, {"code": "permission_denied", "message": echo})

        do_GET = do_POST = _handle

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.append(Front(server))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield state[0]
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- the issuer


def test_discovery_naming_another_issuer_stops_before_anything_is_signed(front: Front) -> None:
    front.issuer = "https://zitadel.example.com"
    with OidcClient(front.url) as oidc:
        with pytest.raises(ZitadelRejected) as caught:
            oidc.exchange_jwt_bearer(new_key_file())
        with pytest.raises(ZitadelRejected):
            oidc.verify_pat(PAT)
    message = str(caught.value)
    assert "'https://zitadel.example.com'" in message
    assert f"zitadel.url is '{front.url}'" in message
    assert front.assertions() == []
    # Only discovery was asked (once per try): no assertion, no PAT went out.
    assert {path for _, path, _, _ in front.requests} == {"/.well-known/openid-configuration"}


def test_a_trailing_slash_is_the_only_difference_allowed(front: Front) -> None:
    front.issuer = front.url + "/"
    with OidcClient(front.url + "/") as oidc:
        assert oidc.endpoints().issuer == front.url + "/"  # aud is the issuer, verbatim
    front.issuer = front.url + "/zitadel"
    with OidcClient(front.url) as oidc, pytest.raises(ZitadelRejected, match="must be equal"):
        oidc.endpoints()


def test_the_emulator_announces_the_configured_url_as_issuer(emulator: Emulator) -> None:
    for configured in (emulator.issuer, emulator.issuer + "/"):
        with OidcClient(configured, timeout=5) as oidc:
            assert oidc.endpoints().issuer == emulator.issuer


# --------------------------------------------------------------------------- echoed requests


@pytest.mark.parametrize("status", [400, 500])
def test_an_echoed_assertion_and_key_stay_out_of_the_token_error(front: Front, status: int) -> None:
    front.refuse_tokens, front.token_status = True, status
    key_file = new_key_file()
    with OidcClient(front.url) as oidc, pytest.raises(ZitadelUnauthenticated) as caught:
        oidc.exchange_jwt_bearer(key_file)
    (assertion,) = front.assertions()
    message = str(caught.value)
    assert REDACTED in message  # the server's text is there, scrubbed
    assert_clean(message, [assertion, pem_body(key_file["key"])])


def test_an_echoed_pat_stays_out_of_userinfo_errors(front: Front) -> None:
    with OidcClient(front.url) as oidc:
        with pytest.raises(ZitadelUnauthenticated) as raw:
            oidc.userinfo(PAT)
        with pytest.raises(VerificationError) as verified:
            oidc.verify_pat(PAT, "user-1")
    assert "invalid_token" in str(raw.value)
    assert REDACTED in str(raw.value)
    assert_clean(str(raw.value) + str(verified.value), [PAT])


def test_an_echoed_bearer_token_stays_out_of_v2_errors(front: Front) -> None:
    from rotator.zitadel.v2 import UserServiceTransport

    transport = UserServiceTransport(front.url, lambda: ACCESS_TOKEN, timeout=5)
    with pytest.raises(ZitadelError) as caught:
        transport.resolve_user("123456")
    assert caught.value.code == "permission_denied"
    assert "you sent" in str(caught.value)
    assert REDACTED in str(caught.value)
    assert_clean(str(caught.value), [ACCESS_TOKEN])


def test_an_echoed_bearer_token_stays_out_of_v1_errors() -> None:
    from rotator.zitadel.v1 import ManagementTransport

    class Echo(grpc.GenericRpcHandler):
        def service(self, handler_call_details: Any) -> grpc.RpcMethodHandler:
            def deny(request: bytes, context: grpc.ServicerContext) -> bytes:
                metadata = dict(context.invocation_metadata())
                context.abort(grpc.StatusCode.PERMISSION_DENIED, f"you sent {metadata}")
                raise AssertionError("unreachable")

            return grpc.unary_unary_rpc_method_handler(deny)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((Echo(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        transport = ManagementTransport(
            f"http://127.0.0.1:{port}", cast(TokenSource, lambda: ACCESS_TOKEN), timeout=5
        )
        with pytest.raises(ZitadelError) as caught:
            transport.resolve_user("123456", "org-1")
        transport.close()
    finally:
        server.stop(None)
    assert caught.value.code == "permission_denied"
    assert "you sent" in str(caught.value)
    assert REDACTED in str(caught.value)
    assert_clean(str(caught.value), [ACCESS_TOKEN])


def test_an_echoed_bearer_token_stays_out_of_web_key_errors(front: Front) -> None:
    from rotator.zitadel.webkeys import WebKeyClient

    with OidcClient(front.url) as oidc:
        client = WebKeyClient(oidc, lambda: ACCESS_TOKEN, new_key_file)
        with pytest.raises(ZitadelError) as caught:
            client.list()
    assert caught.value.code == "permission_denied"
    assert "you sent" in str(caught.value)
    assert REDACTED in str(caught.value)
    assert_clean(str(caught.value), [ACCESS_TOKEN])
    assert len(str(caught.value)) < 400, "server text is cut to length"


_NOT_AN_OBJECT = ["<html>OK</html>", "[1, 2]", '"text"']


@pytest.mark.parametrize(("call", "body"), [
    *[(call, body) for body in _NOT_AN_OBJECT
      for call in ("list", "signing_kid", "published")],
    ("list", '{"webKeys": [{"state": "STATE_ACTIVE"}]}'),
    ("list", '{"webKeys": "none"}'),
    ("list", '{"webKeys": [{"id": "k1", "creationDate": "yesterday"}]}'),
    ("signing_kid", '{"id_token": 5}'),
    ("signing_kid", '{"id_token": "WzFd.e30.sig"}'),  # header [1]
])
def test_a_malformed_ok_answer_to_a_web_key_call_is_a_zitadel_error(
    front: Front, call: str, body: str
) -> None:
    """Not ValueError or AttributeError: those would escape the web key pass."""
    from rotator.zitadel.webkeys import WebKeyClient

    front.ok_body = body
    with OidcClient(front.url) as oidc:
        client = WebKeyClient(oidc, lambda: ACCESS_TOKEN, new_key_file)
        with pytest.raises(ZitadelError, match=r"not|without"):
            getattr(client, call)()


# --------------------------------------------------------------------------- a lying Vault


@pytest.fixture(params=[400, 403, 500])
def echo_vault(request: pytest.FixtureRequest) -> Iterator[str]:
    """A "Vault" that answers every request with ``{"errors": [<the request>]}``."""
    status: int = request.param

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode(errors="replace")
            data = json.dumps({"errors": [_echo(self, body), "permission denied"]}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_LIST = _handle

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_echoing_vault_never_gets_its_token_or_our_data_into_errors(
    echo_vault: str, tmp_path: Path
) -> None:
    key_file = new_key_file()
    sa_jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2EifQ." + os.urandom(32).hex()
    (tmp_path / "sa-token").write_text(sa_jwt)
    messages: list[str] = []
    authed = VaultStore.connect(
        echo_vault,
        "secret",
        auth=Authenticator(TokenMethod(SecretSource(value=VAULT_TOKEN))),
        retry=NO_RETRY,
    )
    plain = VaultStore(hvac.Client(url=echo_vault, token=VAULT_TOKEN), "secret", retry=NO_RETRY)
    attempts = [
        authed.check,
        lambda: plain.read("zitadel/billing"),
        lambda: plain.write("zitadel/billing", {"key": key_file["key"], "token": PAT}, cas=0),
        lambda: plain.write(
            "zitadel/billing", {"token": PAT}, cas=3, custom_metadata={"note": PAT}
        ),
        lambda: AppRoleMethod(
            role_id=SecretSource(value="role-1"), secret_id=SecretSource(value=SECRET_ID)
        ).login(hvac.Client(url=echo_vault), datetime.now(UTC)),
        lambda: KubernetesMethod(role="rotator", jwt_file=str(tmp_path / "sa-token")).login(
            hvac.Client(url=echo_vault), datetime.now(UTC)
        ),
    ]
    for attempt in attempts:
        with pytest.raises(VaultError) as caught:
            attempt()
        messages.append(str(caught.value))
    assert len(messages) == len(attempts)
    assert_clean(
        "\n".join(messages), [VAULT_TOKEN, PAT, SECRET_ID, sa_jwt, pem_body(key_file["key"])]
    )


# --------------------------------------------------------------------------- the audit file


def test_the_audit_file_is_created_private(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "audit.jsonl"
    old_umask = os.umask(0o022)
    try:
        AuditLog(stream=open(os.devnull, "w"), file=path).emit("credential.stored", target="t")  # noqa: SIM115
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["event"] == "credential.stored"


def test_an_existing_audit_file_keeps_its_mode(tmp_path: Path) -> None:
    for mode in (0o600, 0o640):
        path = tmp_path / f"audit-{mode:o}.jsonl"
        path.write_text("")
        path.chmod(mode)
        AuditLog(stream=open(os.devnull, "w"), file=path).emit("credential.stored", target="t")  # noqa: SIM115
        assert stat.S_IMODE(path.stat().st_mode) == mode


def test_the_start_up_check_creates_the_audit_file_private(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from rotator.app import check_audit_file

    path = tmp_path / "audit.jsonl"
    config = SimpleNamespace(audit=SimpleNamespace(file=str(path)), source="c.yaml")
    check_audit_file(cast(Any, config))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# --------------------------------------------------------------------------- http:// at start


def _config(tmp_path: Path, zitadel: str, vault: str, webhook: str | None = None) -> Path:
    raw = offline_config(tmp_path, vault)
    raw["zitadel"]["url"] = zitadel
    if webhook:
        raw["notify"] = {"webhook_url": webhook}
    return write_config(tmp_path / "c.yaml", raw)


def test_cleartext_urls_are_those_to_non_loopback_hosts(tmp_path: Path) -> None:
    local = _config(tmp_path, "http://localhost:8080", "http://127.0.0.2:8200", "http://[::1]:9/x")
    assert cleartext_urls(load_config(str(local))) == []

    remote = _config(
        tmp_path,
        "http://zitadel.internal:8080",
        "http://10.0.0.7:8200",
        "http://hooks.example.com/services/T000/B000/XXXX",
    )
    found = cleartext_urls(load_config(str(remote)))
    assert [(c.field, c.host) for c in found] == [
        ("zitadel.url", "zitadel.internal"),
        ("vault.url", "10.0.0.7"),
        ("notify.webhook_url", "hooks.example.com"),
    ]
    assert all("/services/" not in c.warning for c in found)  # a webhook URL is a secret

    secure = _config(tmp_path, "https://zitadel.internal", "https://vault.internal")
    assert cleartext_urls(load_config(str(secure))) == []


def test_start_warns_once_per_cleartext_url_and_carries_on(
    tmp_path: Path, openbao: OpenBao, kv_mount: str
) -> None:
    raw = offline_config(tmp_path, openbao.url, mount=kv_mount)
    raw["zitadel"]["url"] = "http://zitadel.invalid:8080"
    raw["notify"] = {"webhook_url": "http://hooks.invalid/services/T000/B000/SECRETPATH"}
    path = write_config(tmp_path / "c.yaml", raw)
    token = openbao.create_rotator_token(kv_mount)

    run = rotator("--config", str(path), "status", env=openbao.env(token))

    assert run.code == 0, run.output  # a warning, not an error
    events = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    warned = [(e["field"], e["host"]) for e in events if e["event"] == "config.cleartext_url"]
    assert warned == [("zitadel.url", "zitadel.invalid"), ("notify.webhook_url", "hooks.invalid")]
    assert "SECRETPATH" not in run.output


# --------------------------------------------------------------------------- the CLI, end to end


@pytest.fixture
def webhook() -> Iterator[list[str]]:
    """A webhook receiver; yields the bodies it received."""
    bodies: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            bodies.append(self.rfile.read(length).decode(errors="replace"))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    bodies.append(f"http://127.0.0.1:{server.server_port}/hook")  # [0]: its URL
    try:
        yield bodies
    finally:
        server.shutdown()
        server.server_close()


def test_an_echoing_zitadel_leaks_nothing_into_stderr_audit_or_webhooks(
    tmp_path: Path, front: Front, webhook: list[str], openbao: OpenBao, kv_mount: str
) -> None:
    admin = new_key_file()
    (tmp_path / "admin.json").write_text(json.dumps(admin))
    raw = {
        "zitadel": {
            "url": front.url,
            "api": "v2",
            "credentials": {"key_file": "admin.json"},
            "timeout": "5s",
        },
        "vault": {"url": openbao.url, "mount": kv_mount},
        "targets": [
            {"name": "billing", "user": "svc-billing", "kind": "key"},
            {"name": "reports", "user": "svc-reports", "kind": "pat"},
        ],
        "notify": {"webhook_url": webhook[0]},
        "audit": {"file": "audit.jsonl"},
    }
    path = write_config(tmp_path / "c.yaml", raw)
    vault_token = openbao.create_rotator_token(kv_mount)
    env = openbao.env(vault_token)

    # One daemon pass (audit on stdout and in the file, webhooks), then a start
    # refused at the token endpoint (stderr).
    runs = [rotator("--config", str(path), "run", "--once", env=env)]
    front.refuse_tokens = True  # now the token endpoint echoes the assertion
    runs.append(rotator("--config", str(path), "rotate", "--all", env=env))

    audit_file = (tmp_path / "audit.jsonl").read_text()
    assert [run.code for run in runs] == [1, 3], [run.output for run in runs]
    assert "you sent Bearer [redacted]" in audit_file  # the echo arrived, scrubbed
    assert "rotation.failed" in "".join(webhook[1:])
    assert "cannot start" in runs[1].stderr
    assert REDACTED in runs[1].stderr
    said = "\n".join([*(run.output for run in runs), audit_file, *webhook[1:]])
    assert front.assertions()
    assert_clean(said, [ACCESS_TOKEN, vault_token, pem_body(admin["key"]), *front.assertions()])


def test_webhook_payloads_are_scrubbed_of_secret_shapes_once_more() -> None:
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJ4In0.c2lnbmF0dXJl"
    event = {
        "event": "rotation.failed",
        "target": "billing",
        "error": f"ZITADEL said: bad assertion {jwt}; header Bearer {ACCESS_TOKEN}",
    }
    notification = from_audit(event)
    assert notification is not None
    sent = json.dumps([generic_payload(notification), slack_payload(notification)])
    assert_clean(sent, [jwt, ACCESS_TOKEN])
    assert "bad assertion [redacted]" in sent


# --------------------------------------------------------------------------- KV history


@pytest.mark.parametrize("kind", ["key", "pat"])
def test_the_state_history_keeps_no_pending_secret_after_promotion(
    emulator: Emulator, openbao: OpenBao, kv_mount: str, kind: str
) -> None:
    """KV v2 keeps every version readable: the versions of the state secret that
    held the new credential between creation and promotion are destroyed."""
    from rotator.model import Trigger
    from tests.enginekit import KitSpec, build_kit

    spec = KitSpec.for_emulator(
        emulator,
        openbao,
        kv_mount,
        key_user=emulator.add_user(f"svc-hist-key-{kind}")["login_name"],
        pat_user=emulator.add_user(f"svc-hist-pat-{kind}")["login_name"],
    )
    with build_kit(spec) as kit:
        target = spec.key_target() if kind == "key" else spec.pat_target()
        kit.engine.reconcile(target, trigger=Trigger.CLI)
        kit.engine.reconcile(target, trigger=Trigger.CLI, rotate_now=True)
        current = kit.store.read(target.vault_path)
        assert current is not None
        secrets = [str(v) for k, v in current.data.items() if k in ("key", "token")]
        client = hvac.Client(url=openbao.url, token=openbao.root_token)
        path = kit.engine.state_path(target)
        meta = client.secrets.kv.v2.read_secret_metadata(path=path, mount_point=kv_mount)
        versions = meta["data"]["versions"]
        destroyed = [int(v) for v, m in versions.items() if m["destroyed"]]
        assert len(destroyed) >= 2  # one per rotation at least
        for version in map(int, versions):
            if version in destroyed:
                continue
            data = client.secrets.kv.v2.read_secret_version(
                path=path, version=version, mount_point=kv_mount, raise_on_deleted_version=False
            )["data"]["data"]
            assert data.get("pending") is None or data["pending"].get("secret") is None
            assert_clean(json.dumps(data), secrets)
