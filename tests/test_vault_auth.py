"""Vault authentication against a real OpenBao: token (env or file, renewal,
re-read), AppRole, Kubernetes (with a small TokenReview server standing in
for the Kubernetes API), and replacement of a token that expired or was
revoked, without a failed operation."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from rotator.clock import OffsetClock
from rotator.config import VaultAuthConfig, VaultConfig
from rotator.errors import ConfigError, VaultPermissionDenied
from rotator.ports import VaultAuthMethod
from rotator.vault import RetryPolicy, VaultStore
from rotator.vault_auth import (
    AppRoleMethod,
    Authenticator,
    KubernetesMethod,
    SecretSource,
    TokenMethod,
    connect,
    method_from_config,
)
from tests.harness.openbao import OpenBao, kv_policy
from tests.harness.pki import make_pki

FAST = RetryPolicy(attempts=2, initial_delay=0.01)


def authed_store(
    openbao: OpenBao, mount: str, method: VaultAuthMethod, clock: OffsetClock | None = None
) -> tuple[VaultStore, Authenticator]:
    auth = Authenticator(method, clock=clock or OffsetClock())
    store = VaultStore.connect(openbao.url, mount, auth=auth, retry=FAST, clock=clock)
    return store, auth


@pytest.fixture
def kv_policy_name(openbao: OpenBao, kv_mount: str) -> str:
    name = f"rotator-{kv_mount}"
    openbao.create_policy(name, kv_policy(kv_mount, ["create", "read", "update", "delete"]))
    return name


def lookup(openbao: OpenBao, token: str) -> dict[str, Any]:
    data: dict[str, Any] = openbao.client().auth.token.lookup(token)["data"]
    return data


# -- token ------------------------------------------------------------------------------------


def test_token_from_the_environment(openbao: OpenBao, kv_mount: str, kv_policy_name: str) -> None:
    token = openbao.create_token([kv_policy_name])
    method = TokenMethod(SecretSource(env="VAULT_TOKEN", environ={"VAULT_TOKEN": token}))
    store, auth = authed_store(openbao, kv_mount, method)

    store.write("p", {"n": 1}, cas=0)
    store.check()

    assert auth.logins == 1
    assert store.read("p").data == {"n": 1}  # type: ignore[union-attr]


def test_the_start_check_looks_a_token_up_once(
    openbao: OpenBao, kv_mount: str, kv_policy_name: str
) -> None:
    """The token method's login is a lookup-self: the check that follows it does
    not send another (a token with limited uses counts every lookup-self)."""
    created = openbao.client().auth.token.create(
        policies=[kv_policy_name, "default"], num_uses=10
    )
    token = created["auth"]["client_token"]
    method = TokenMethod(SecretSource(env="VAULT_TOKEN", environ={"VAULT_TOKEN": token}))
    store, auth = authed_store(openbao, kv_mount, method)

    store.check()

    assert auth.logins == 1
    assert lookup(openbao, token)["num_uses"] == 9


def test_token_is_renewed_once_past_half_its_ttl(
    openbao: OpenBao, kv_mount: str, kv_policy_name: str
) -> None:
    token = openbao.create_token([kv_policy_name], ttl="1h")
    clock = OffsetClock()
    store, auth = authed_store(
        openbao, kv_mount, TokenMethod(SecretSource(value=token)), clock=clock
    )
    store.write("p", {"n": 1}, cas=0)
    clock.advance(timedelta(minutes=20))
    store.read("p")
    assert auth.renewals == 0
    assert not lookup(openbao, token).get("last_renewal_time")

    clock.advance(timedelta(minutes=11))  # 31 of 60 minutes gone
    store.read("p")

    assert auth.renewals == 1
    assert auth.logins == 1
    assert lookup(openbao, token)["last_renewal_time"]


def test_token_file_is_reread_when_vault_refuses_the_old_token(
    openbao: OpenBao, kv_mount: str, kv_policy_name: str, tmp_path: Path
) -> None:
    # Like a Vault Agent sink: the file gets a new token, the old one is revoked.
    token_file = tmp_path / "token"
    old = openbao.create_token([kv_policy_name])
    token_file.write_text(old + "\n")
    store, auth = authed_store(openbao, kv_mount, TokenMethod(SecretSource(file=str(token_file))))
    store.write("p", {"n": 1}, cas=0)

    new = openbao.create_token([kv_policy_name])
    token_file.write_text(new)
    openbao.client().auth.token.revoke(old)
    version = store.write("p", {"n": 2}, cas=1)

    assert version == 2
    assert auth.logins == 2
    assert store.client.token == new


def test_a_refused_token_is_reported_naming_its_source_not_its_value(
    openbao: OpenBao, kv_mount: str
) -> None:
    method = TokenMethod(SecretSource(env="MY_TOKEN", environ={"MY_TOKEN": "s.revoked-token"}))
    store, _ = authed_store(openbao, kv_mount, method)

    with pytest.raises(VaultPermissionDenied) as caught:
        store.read("p")

    assert "token lookup-self refused (403): the token is invalid or expired" in str(caught.value)
    assert "environment variable MY_TOKEN" in str(caught.value)
    assert "s.revoked-token" not in str(caught.value)


def test_a_missing_token_variable_is_a_config_error(openbao: OpenBao, kv_mount: str) -> None:
    store, _ = authed_store(openbao, kv_mount, TokenMethod(SecretSource(env="NOPE", environ={})))

    with pytest.raises(ConfigError, match="environment variable NOPE is empty or not set"):
        store.read("p")


def test_a_limited_token_still_gets_permission_denied_after_one_relogin(
    openbao: OpenBao, kv_mount: str
) -> None:
    token = openbao.create_kv_token(kv_mount, capabilities=["read"])
    store, auth = authed_store(openbao, kv_mount, TokenMethod(SecretSource(value=token)))

    with pytest.raises(VaultPermissionDenied, match=r"write: permission denied \(403\)"):
        store.write("p", {"n": 1}, cas=0)

    assert auth.logins == 2  # the first one, and exactly one retry


# -- AppRole ----------------------------------------------------------------------------------


def test_approle_login_from_files(
    openbao: OpenBao, kv_mount: str, kv_policy_name: str, tmp_path: Path
) -> None:
    creds = openbao.create_approle("rotator", [kv_policy_name])
    (tmp_path / "role_id").write_text(creds.role_id)
    (tmp_path / "secret_id").write_text(creds.secret_id)
    method = AppRoleMethod(
        role_id=SecretSource(file=str(tmp_path / "role_id")),
        secret_id=SecretSource(file=str(tmp_path / "secret_id")),
    )
    store, auth = authed_store(openbao, kv_mount, method)

    store.write("p", {"n": 1}, cas=0)

    assert auth.logins == 1
    assert lookup(openbao, store.client.token)["path"] == "auth/approle/login"


def test_an_expired_approle_token_is_replaced_between_two_writes(
    openbao: OpenBao, kv_mount: str, kv_policy_name: str
) -> None:
    creds = openbao.create_approle(
        "short-lived", [kv_policy_name], token_ttl="2s", token_max_ttl="2s"
    )
    method = AppRoleMethod(
        role_id=SecretSource(value=creds.role_id),
        secret_id=SecretSource(env="SECRET_ID", environ={"SECRET_ID": creds.secret_id}),
    )
    # A clock an hour slow: the authenticator believes the token is fresh, so
    # only Vault's 403 can reveal that it expired: the reactive path.
    store, auth = authed_store(openbao, kv_mount, method, clock=OffsetClock(-timedelta(hours=1)))
    store.write("p", {"n": 1}, cas=0)
    first = store.client.token

    time.sleep(2.5)
    with pytest.raises(Exception, match=r"permission denied|bad token|invalid token"):
        openbao.client(first).auth.token.lookup_self()  # really expired
    version = store.write("p", {"n": 2}, cas=1)

    assert version == 2
    assert auth.logins == 2
    assert store.client.token != first


def test_an_approle_token_past_half_its_ttl_is_replaced_before_it_fails(
    openbao: OpenBao, kv_mount: str, kv_policy_name: str
) -> None:
    creds = openbao.create_approle(
        "not-renewable", [kv_policy_name], token_ttl="1h", token_max_ttl="1h"
    )
    method = AppRoleMethod(SecretSource(value=creds.role_id), SecretSource(value=creds.secret_id))
    openbao.client().auth.approle.create_or_update_approle(
        "not-renewable", token_policies=[kv_policy_name], token_ttl="1h", token_type="batch"
    )
    clock = OffsetClock()
    store, auth = authed_store(openbao, kv_mount, method, clock=clock)
    store.write("p", {"n": 1}, cas=0)
    first = store.client.token

    clock.advance(timedelta(minutes=40))  # batch tokens are not renewable: log in again
    store.write("p", {"n": 2}, cas=1)

    assert auth.logins == 2
    assert auth.renewals == 0
    assert store.client.token != first


def test_a_token_at_its_max_ttl_is_replaced_by_a_fresh_login_not_a_short_renewal(
    openbao: OpenBao, kv_mount: str, kv_policy_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rotator")
    creds = openbao.create_approle("capped", [kv_policy_name], token_ttl="2s", token_max_ttl="2s")
    method = AppRoleMethod(SecretSource(value=creds.role_id), SecretSource(value=creds.secret_id))
    store, auth = authed_store(openbao, kv_mount, method)
    store.write("p", {"n": 1}, cas=0)
    first = store.client.token

    time.sleep(1.1)  # past half the TTL; Vault can renew for < 1 s at most
    store.write("p", {"n": 2}, cas=1)

    assert auth.logins == 2
    assert store.client.token != first
    assert "vault refused the token" not in caplog.text  # replaced before it failed


def test_a_wrong_secret_id_is_refused_without_echoing_it(
    openbao: OpenBao, kv_mount: str, kv_policy_name: str
) -> None:
    creds = openbao.create_approle("rotator", [kv_policy_name])
    method = AppRoleMethod(
        role_id=SecretSource(value=creds.role_id),
        secret_id=SecretSource(env="SECRET_ID", environ={"SECRET_ID": "wrong-secret-id-123"}),
    )
    store, _ = authed_store(openbao, kv_mount, method)

    with pytest.raises(VaultPermissionDenied) as caught:
        store.read("p")

    message = str(caught.value)
    assert "approle login refused (400)" in message
    assert "environment variable SECRET_ID" in message
    assert "wrong-secret-id-123" not in message
    assert creds.role_id not in message


# -- Kubernetes -------------------------------------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def service_account_jwt(namespace: str, name: str, uid: str) -> str:
    """A projected service-account token as the kubelet mounts it (RS256)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    header = {"alg": "RS256", "kid": "test", "typ": "JWT"}
    now = int(time.time())
    claims = {
        "iss": "https://kubernetes.default.svc.cluster.local",
        "sub": f"system:serviceaccount:{namespace}:{name}",
        "aud": ["https://kubernetes.default.svc.cluster.local"],
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": uid}},
    }
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64(signature)}"



class TokenReviewServer:
    """The one Kubernetes API call Vault's kubernetes auth makes: TokenReview.

    It authenticates exactly the tokens in ``valid`` (token -> (namespace,
    name, uid)) and records the reviews it answered.
    """

    def __init__(self) -> None:
        self.valid: dict[str, tuple[str, str, str]] = {}
        self.reviews: list[bool] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                review = json.loads(self.rfile.read(length))
                token = review["spec"]["token"]
                identity = outer.valid.get(token)
                outer.reviews.append(identity is not None)
                status: dict[str, Any] = {"authenticated": False, "error": "invalid token"}
                if identity is not None:
                    namespace, name, uid = identity
                    status = {
                        "authenticated": True,
                        "user": {
                            "username": f"system:serviceaccount:{namespace}:{name}",
                            "uid": uid,
                            "groups": ["system:serviceaccounts"],
                        },
                        "audiences": review["spec"].get("audiences") or [],
                    }
                body = json.dumps(
                    {
                        "apiVersion": "authentication.k8s.io/v1",
                        "kind": "TokenReview",
                        "status": status,
                    }
                ).encode()
                self.send_response(201)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def kubernetes_api() -> Iterator[TokenReviewServer]:
    server = TokenReviewServer()
    yield server
    server.close()


@pytest.fixture
def kubernetes_auth(
    openbao: OpenBao, kubernetes_api: TokenReviewServer, kv_policy_name: str, tmp_path: Path
) -> str:
    """OpenBao's kubernetes auth method pointed at the TokenReview server; its mount path."""
    mount = openbao.enable_kubernetes(f"k8s-{kv_policy_name}")
    client = openbao.client()
    client.auth.kubernetes.configure(
        kubernetes_host=kubernetes_api.url,
        token_reviewer_jwt=service_account_jwt("kube-system", "reviewer", "uid-reviewer"),
        disable_local_ca_jwt=True,
        # required by OpenBao; unused over http
        kubernetes_ca_cert=make_pki(tmp_path).ca_file.read_text(),
        mount_point=mount,
    )
    client.auth.kubernetes.create_role(
        "zitadel-rotator",
        bound_service_account_names=["zitadel-rotator"],
        bound_service_account_namespaces=["rotator"],
        policies=[kv_policy_name],
        ttl="1h",
        mount_point=mount,
    )
    return mount


def test_kubernetes_login_with_the_service_account_token(
    openbao: OpenBao,
    kv_mount: str,
    kubernetes_api: TokenReviewServer,
    kubernetes_auth: str,
    tmp_path: Path,
) -> None:
    jwt = service_account_jwt("rotator", "zitadel-rotator", "uid-1")
    kubernetes_api.valid[jwt] = ("rotator", "zitadel-rotator", "uid-1")
    jwt_file = tmp_path / "token"
    jwt_file.write_text(jwt)
    method = KubernetesMethod(
        role="zitadel-rotator", jwt_file=str(jwt_file), mount_path=kubernetes_auth
    )
    store, auth = authed_store(openbao, kv_mount, method)

    store.write("p", {"n": 1}, cas=0)

    assert auth.logins == 1
    assert kubernetes_api.reviews == [True]
    info = lookup(openbao, store.client.token)
    assert info["path"] == f"auth/{kubernetes_auth}/login"
    assert info["meta"]["service_account_name"] == "zitadel-rotator"


def test_kubernetes_login_rereads_the_rotated_service_account_token(
    openbao: OpenBao,
    kv_mount: str,
    kubernetes_api: TokenReviewServer,
    kubernetes_auth: str,
    tmp_path: Path,
) -> None:
    jwt_file = tmp_path / "token"
    first = service_account_jwt("rotator", "zitadel-rotator", "uid-1")
    kubernetes_api.valid[first] = ("rotator", "zitadel-rotator", "uid-1")
    jwt_file.write_text(first)
    method = KubernetesMethod(
        role="zitadel-rotator", jwt_file=str(jwt_file), mount_path=kubernetes_auth
    )
    store, auth = authed_store(openbao, kv_mount, method)
    store.write("p", {"n": 1}, cas=0)

    # The kubelet rotated the projected token; the old one no longer passes review.
    second = service_account_jwt("rotator", "zitadel-rotator", "uid-1")
    kubernetes_api.valid = {second: ("rotator", "zitadel-rotator", "uid-1")}
    jwt_file.write_text(second)
    openbao.client().auth.token.revoke(store.client.token)
    store.write("p", {"n": 2}, cas=1)

    assert auth.logins == 2
    assert kubernetes_api.reviews == [True, True]


def test_kubernetes_login_refused_for_a_token_the_cluster_rejects(
    openbao: OpenBao,
    kv_mount: str,
    kubernetes_api: TokenReviewServer,
    kubernetes_auth: str,
    tmp_path: Path,
) -> None:
    jwt = service_account_jwt("rotator", "zitadel-rotator", "uid-1")  # not in valid
    (tmp_path / "token").write_text(jwt)
    method = KubernetesMethod(
        role="zitadel-rotator", jwt_file=str(tmp_path / "token"), mount_path=kubernetes_auth
    )
    store, _ = authed_store(openbao, kv_mount, method)

    with pytest.raises(VaultPermissionDenied) as caught:
        store.read("p")

    assert "kubernetes login refused" in str(caught.value)
    assert "role 'zitadel-rotator'" in str(caught.value)
    assert jwt not in str(caught.value)
    assert kubernetes_api.reviews == [False]


def test_a_missing_service_account_token_file_is_a_config_error(
    openbao: OpenBao, kv_mount: str, tmp_path: Path
) -> None:
    method = KubernetesMethod(role="r", jwt_file=str(tmp_path / "absent"))
    store, _ = authed_store(openbao, kv_mount, method)

    with pytest.raises(ConfigError, match=r"cannot read service-account token from .*absent"):
        store.read("p")


# -- from the configuration -------------------------------------------------------------------


def test_connect_builds_an_authenticated_store_from_the_config(
    openbao: OpenBao, kv_mount: str, kv_policy_name: str
) -> None:
    creds = openbao.create_approle("from-config", [kv_policy_name])
    config = VaultConfig(
        url=openbao.url,
        mount=kv_mount,
        timeout=timedelta(seconds=3),
        auth=VaultAuthConfig(
            method="approle", mount_path="approle", role_id=creds.role_id, secret_id_env="SID"
        ),
    )

    store = connect(config, environ={"SID": creds.secret_id})
    store.check()
    store.write("p", {"n": 1}, cas=0)

    assert store.read("p").version == 1  # type: ignore[union-attr]
    assert store.client.adapter._kwargs["timeout"] == 3


def test_method_from_config_for_each_method() -> None:
    token = method_from_config(VaultAuthConfig(method="token", token_file="/run/token"))
    kube = method_from_config(VaultAuthConfig(method="kubernetes", role="r", mount_path="k8s"))

    assert isinstance(token, TokenMethod)
    assert token.source.file == "/run/token"
    assert isinstance(kube, KubernetesMethod)
    assert (kube.role, kube.mount_path) == ("r", "k8s")
    assert kube.jwt_file == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    with pytest.raises(ConfigError, match=r"vault\.auth\.method"):
        method_from_config(VaultAuthConfig(method="ldap"))


# -- nothing secret leaks ---------------------------------------------------------------------


def test_no_credential_in_logs_or_output(
    openbao: OpenBao,
    kv_mount: str,
    kv_policy_name: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    creds = openbao.create_approle("leaky", [kv_policy_name])
    method = AppRoleMethod(SecretSource(value=creds.role_id), SecretSource(value=creds.secret_id))
    clock = OffsetClock()
    store, auth = authed_store(openbao, kv_mount, method, clock=clock)
    store.write("p", {"n": 1}, cas=0)
    tokens = {store.client.token}
    clock.advance(timedelta(minutes=45))
    store.write("p", {"n": 2}, cas=1)  # renewal
    openbao.client().auth.token.revoke(store.client.token)
    store.write("p", {"n": 3}, cas=2)  # re-login
    tokens.add(store.client.token)
    assert len(tokens) == 2
    errors = [repr(auth), repr(method), repr(SecretSource(value=creds.secret_id))]

    out, err = capsys.readouterr()
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "vault token renewed" in logged
    assert auth.renewals == 1
    assert auth.logins == 2
    for secret in (creds.secret_id, openbao.root_token, *tokens):
        assert secret not in logged
        assert secret not in out + err
        assert all(secret not in text for text in errors)
