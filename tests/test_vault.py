"""VaultStore against a real OpenBao dev server: the SecretStore contract,
check-and-set, error translation, retries, and that nothing secret leaks."""

from __future__ import annotations

import logging
import socket
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import UTC, datetime

import pytest
import requests

from rotator.errors import CasConflict, VaultError, VaultPermissionDenied, VaultUnavailable
from rotator.ports import SecretStore
from rotator.vault import NO_RETRY, RetryPolicy, VaultStore
from rotator.vault_auth import Authenticator, SecretSource, TokenMethod
from tests.harness.openbao import ROTATOR_POLICY_FILE, OpenBao, free_port

FAST = RetryPolicy(attempts=3, initial_delay=0.01, max_delay=0.02)
PRIVATE_KEY = (
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEsecretsecretsecret\n-----END RSA PRIVATE KEY-----"
)


def store_for(openbao: OpenBao, mount: str, token: str | None = None, **kw: object) -> VaultStore:
    kw.setdefault("retry", FAST)
    return VaultStore(openbao.client(token), mount, **kw)  # type: ignore[arg-type]


@pytest.fixture
def store(openbao: OpenBao, kv_mount: str) -> VaultStore:
    return store_for(openbao, kv_mount)


def test_vault_store_satisfies_the_secret_store_protocol(store: VaultStore) -> None:
    contract: SecretStore = store
    assert contract is store


# -- read / write / delete ---------------------------------------------------------------


def test_read_of_a_path_never_written_is_none(store: VaultStore) -> None:
    assert store.read("zitadel/nothing-here") is None


def test_write_with_cas_zero_creates_version_one_and_reads_back(store: VaultStore) -> None:
    version = store.write(
        "zitadel/billing",
        {"keyId": "k1", "key": PRIVATE_KEY, "nested": {"a": [1, 2]}},
        cas=0,
        custom_metadata={"credential-id": "k1", "managed-by": "zitadel-rotator"},
    )

    secret = store.read("zitadel/billing")

    assert version == 1
    assert secret is not None
    assert secret.version == 1
    assert secret.data == {"keyId": "k1", "key": PRIVATE_KEY, "nested": {"a": [1, 2]}}
    assert secret.custom_metadata == {"credential-id": "k1", "managed-by": "zitadel-rotator"}
    assert PRIVATE_KEY not in repr(secret)


def test_each_cas_write_adds_a_version(store: VaultStore) -> None:
    v1 = store.write("p", {"n": 1}, cas=0)
    v2 = store.write("p", {"n": 2}, cas=v1)
    v3 = store.write("p", {"n": 3}, cas=v2)

    secret = store.read("p")
    assert (v1, v2, v3) == (1, 2, 3)
    assert secret is not None
    assert secret.version == 3
    assert secret.data == {"n": 3}


def test_cas_zero_on_an_existing_secret_is_a_conflict(store: VaultStore) -> None:
    store.write("zitadel/billing", {"n": 1}, cas=0)

    with pytest.raises(CasConflict) as caught:
        store.write("zitadel/billing", {"key": PRIVATE_KEY}, cas=0)

    message = str(caught.value)
    assert f"{store.mount}/zitadel/billing" in message
    assert "check-and-set" in message
    assert "(400)" in message
    assert PRIVATE_KEY not in message
    assert caught.value.status == 400
    assert not caught.value.retryable
    assert store.read("zitadel/billing").data == {"n": 1}  # type: ignore[union-attr]


def test_a_stale_cas_version_loses_and_leaves_the_winner_in_place(store: VaultStore) -> None:
    v1 = store.write("p", {"who": "first"}, cas=0)
    store.write("p", {"who": "winner"}, cas=v1)

    with pytest.raises(CasConflict):
        store.write("p", {"who": "loser"}, cas=v1)

    assert store.read("p").data == {"who": "winner"}  # type: ignore[union-attr]


def test_two_concurrent_writers_with_the_same_cas_one_wins(store: VaultStore) -> None:
    store.write("race", {"v": 0}, cas=0)
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def contender(i: int) -> None:
        barrier.wait()
        try:
            store.write("race", {"v": i}, cas=1)
            outcomes.append("won")
        except CasConflict:
            outcomes.append("lost")

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(outcomes) == ["lost"] * 7 + ["won"]
    assert store.read("race").version == 2  # type: ignore[union-attr]


def test_custom_metadata_is_replaced_on_write_and_kept_when_not_given(store: VaultStore) -> None:
    store.write("p", {"n": 1}, cas=0, custom_metadata={"a": "1", "b": "2"})
    store.write("p", {"n": 2}, cas=1, custom_metadata={"a": "changed"})
    assert store.read("p").custom_metadata == {"a": "changed"}  # type: ignore[union-attr]

    store.write("p", {"n": 3}, cas=2)
    assert store.read("p").custom_metadata == {"a": "changed"}  # type: ignore[union-attr]


def test_an_empty_custom_metadata_value_removes_the_key(store: VaultStore) -> None:
    store.write("p", {"n": 1}, cas=0, custom_metadata={"credential_id": "k1", "previous": "k0"})

    store.write("p", {"n": 2}, cas=1, custom_metadata={"credential_id": "k2", "previous": ""})

    assert store.read("p").custom_metadata == {"credential_id": "k2"}  # type: ignore[union-attr]


def test_invalid_custom_metadata_is_refused_after_the_data_write_and_says_so(
    store: VaultStore,
) -> None:
    with pytest.raises(VaultError) as caught:
        store.write("p", {"n": 1}, cas=0, custom_metadata={"k": "x" * 600})

    assert str(caught.value) == (
        f"Vault at {store.mount}/p: data written as version 1 but custom_metadata not updated: "
        "write custom_metadata: custom_metadata validation failed (400)"
    )
    assert store.read("p").version == 1  # type: ignore[union-attr]


def test_custom_metadata_update_keeps_the_operators_max_versions(
    store: VaultStore, openbao: OpenBao
) -> None:
    store.write("p", {"n": 1}, cas=0)
    kv = openbao.client().secrets.kv.v2
    kv.update_metadata("p", max_versions=7, delete_version_after="1h", mount_point=store.mount)

    store.write("p", {"n": 2}, cas=1, custom_metadata={"rotation-id": "r1"})

    meta = kv.read_secret_metadata("p", mount_point=store.mount)["data"]
    assert meta["max_versions"] == 7
    assert meta["delete_version_after"] == "1h0m0s"
    assert meta["custom_metadata"] == {"rotation-id": "r1"}


def test_a_soft_deleted_secret_reads_as_none_and_cas_zero_writes_over_it(
    store: VaultStore, openbao: OpenBao
) -> None:
    store.write("p", {"n": 1}, cas=0)
    store.write("p", {"n": 2}, cas=1)
    openbao.client().secrets.kv.v2.delete_latest_version_of_secret("p", mount_point=store.mount)
    assert store.read("p") is None

    version = store.write("p", {"n": 3}, cas=0)

    assert version == 3
    assert store.read("p").data == {"n": 3}  # type: ignore[union-attr]


def test_delete_all_removes_every_version_and_is_fine_when_absent(store: VaultStore) -> None:
    store.write("p", {"n": 1}, cas=0, custom_metadata={"a": "1"})
    store.write("p", {"n": 2}, cas=1)

    store.delete_all("p")
    store.delete_all("p")
    store.delete_all("never-existed")

    assert store.read("p") is None
    assert store.write("p", {"n": "fresh"}, cas=0) == 1


@pytest.mark.parametrize("bad", ["", "/", "a//b", "../escape", "a/./b"])
def test_malformed_paths_are_refused_before_any_request(store: VaultStore, bad: str) -> None:
    with pytest.raises(ValueError, match="invalid Vault secret path"):
        store.read(bad)


# -- check() ------------------------------------------------------------------------------


def test_check_passes_for_a_reachable_unsealed_vault_and_kv2_mount(store: VaultStore) -> None:
    store.check()


def test_check_fails_for_a_mount_that_is_not_kv2(openbao: OpenBao, kv_mount: str) -> None:
    with pytest.raises(VaultError, match="not a KV v2"):
        store_for(openbao, "cubbyhole").check()
    with pytest.raises(VaultError, match="no-such-mount"):
        store_for(openbao, "no-such-mount").check()


def test_check_fails_for_an_invalid_token(openbao: OpenBao, kv_mount: str) -> None:
    with pytest.raises(VaultPermissionDenied, match=r"lookup-self refused \(403\): the token is"):
        store_for(openbao, kv_mount, token="hvs.not-a-real-token").check()


def test_a_token_that_may_not_look_itself_up_is_told_so(openbao: OpenBao, kv_mount: str) -> None:
    """Without `default` and without the shipped policy's lookup-self grant, Vault
    answers 403 exactly as for a bad token: the message gives both causes."""
    token = openbao.create_kv_token(kv_mount, default_policy=False)
    with pytest.raises(VaultPermissionDenied) as caught:
        store_for(openbao, kv_mount, token).check()
    assert str(caught.value) == (
        "Vault at auth/token/lookup-self: token lookup-self refused (403): the token is invalid "
        "or expired, or its policies do not grant `read` on auth/token/lookup-self (Vault's "
        "`default` policy and config/vault/rotator.hcl do)"
    )
    with pytest.raises(VaultPermissionDenied, match="its policies do not grant `read` on"):
        TokenMethod(SecretSource(value=token)).login(openbao.client(None), datetime.now(UTC))


# -- the shipped policy (config/vault/rotator.hcl) ----------------------------------------------


def test_the_shipped_rotator_policy_alone_is_enough(openbao: OpenBao, kv_mount: str) -> None:
    token = openbao.create_rotator_token(kv_mount)
    assert "default" not in openbao.client(token).auth.token.lookup_self()["data"]["policies"]
    auth = Authenticator(TokenMethod(SecretSource(value=token)), renew_fraction=0.999999)
    store = store_for(openbao, kv_mount, token, auth=auth)

    store.check()
    for path in ("zitadel-rotator/billing", "zitadel-rotator/leader", "zitadel/billing"):
        version = store.write(path, {"n": 1}, cas=0, custom_metadata={"rotation_id": "r1"})
        store.write(path, {"n": 2}, cas=version)
        assert store.read(path).data == {"n": 2}  # type: ignore[union-attr]
        store.destroy_versions(path, [1])
    assert auth.renewals >= 1  # every call was past the (tiny) renew point: renew-self granted

    for outside in ("elsewhere/x", "zitadel-rotator-other/x"):
        with pytest.raises(VaultPermissionDenied):
            store.write(outside, {"n": 1}, cas=0)


def test_the_shipped_consumer_policy_reads_one_path_only(openbao: OpenBao, kv_mount: str) -> None:
    hcl = (ROTATOR_POLICY_FILE.parent / "consumer.hcl").read_text()
    openbao.create_policy(f"consumer-{kv_mount}", hcl.replace('"secret/', f'"{kv_mount}/'))
    consumer = store_for(openbao, kv_mount, openbao.create_token([f"consumer-{kv_mount}"]))
    root = store_for(openbao, kv_mount)
    root.write("zitadel/billing", {"n": 1}, cas=0)
    root.write("zitadel/reports", {"n": 1}, cas=0)

    assert consumer.read("zitadel/billing").data == {"n": 1}  # type: ignore[union-attr]
    for denied in (
        lambda: consumer.read("zitadel/reports"),
        lambda: consumer.write("zitadel/billing", {"n": 2}, cas=1),
    ):
        with pytest.raises(VaultPermissionDenied):
            denied()


# -- destroy_versions() -----------------------------------------------------------------------


def test_destroy_versions_removes_their_data_for_good_and_keeps_the_metadata(
    openbao: OpenBao, store: VaultStore, kv_mount: str
) -> None:
    store.write("s", {"pending_key": PRIVATE_KEY}, cas=0, custom_metadata={"rotation_id": "r1"})
    store.write("s", {"pending_key": PRIVATE_KEY, "phase": "verified"}, cas=1)
    store.write("s", {"phase": "promoted"}, cas=2)

    store.destroy_versions("s", [1, 2])

    kv = openbao.client().secrets.kv.v2
    meta = kv.read_secret_metadata(path="s", mount_point=kv_mount)["data"]
    assert {v: meta["versions"][v]["destroyed"] for v in ("1", "2", "3")} == {
        "1": True,
        "2": True,
        "3": False,
    }
    assert meta["custom_metadata"] == {"rotation_id": "r1"}
    for version in (1, 2):
        old = requests.get(
            f"{openbao.url}/v1/{kv_mount}/data/s?version={version}",
            headers={"X-Vault-Token": openbao.root_token},
            timeout=5,
        )
        assert old.status_code == 404  # KV v2's answer for a destroyed version
        assert old.json()["data"]["data"] is None
        assert old.json()["data"]["metadata"]["destroyed"] is True
    assert store.read("s").data == {"phase": "promoted"}  # type: ignore[union-attr]
    assert store.write("s", {"phase": "next"}, cas=3) == 4  # check-and-set goes on


def test_destroy_versions_is_idempotent_and_sends_nothing_for_nothing(
    openbao: OpenBao, kv_mount: str
) -> None:
    store = store_for(openbao, kv_mount)
    store.write("s", {"n": 1}, cas=0)
    store.destroy_versions("s", [1])
    store.destroy_versions("s", [1, 7])  # already destroyed, never existed: fine
    store.destroy_versions("never-written", [1])
    store_for(openbao, kv_mount, "hvs.not-a-real-token").destroy_versions("s", [])
    with pytest.raises(ValueError, match="start at 1"):
        store.destroy_versions("s", [0])


def test_destroy_versions_is_translated_like_every_call(openbao: OpenBao, kv_mount: str) -> None:
    store_for(openbao, kv_mount).write("s", {"key": PRIVATE_KEY}, cas=0)
    reader = store_for(openbao, kv_mount, openbao.create_kv_token(kv_mount, capabilities=["read"]))
    with pytest.raises(VaultPermissionDenied) as caught:
        reader.destroy_versions("s", [1, 1])
    assert str(caught.value) == (
        f"Vault at {kv_mount}/s: destroy versions 1: permission denied (403)"
    )
    with openbao.sealed(), pytest.raises(VaultUnavailable, match="sealed"):
        store_for(openbao, kv_mount, retry=NO_RETRY).destroy_versions("s", [1])


# -- sealed, unreachable, slow --------------------------------------------------------------


def test_a_sealed_vault_is_unavailable_with_a_clear_message(
    openbao: OpenBao, store: VaultStore
) -> None:
    store.write("p", {"n": 1}, cas=0)

    with openbao.sealed():
        for operation in (
            lambda: store.read("p"),
            lambda: store.write("p", {"n": 2}, cas=1),
            store.check,
        ):
            with pytest.raises(VaultUnavailable) as caught:
                operation()
            assert "Vault is sealed (503)" in str(caught.value)
            assert caught.value.retryable
            assert caught.value.status == 503

    assert openbao.health()["sealed"] is False
    assert store.read("p").data == {"n": 1}  # type: ignore[union-attr]


def test_reads_ride_out_a_short_outage_thanks_to_the_retry(openbao: OpenBao, kv_mount: str) -> None:
    patient = store_for(openbao, kv_mount, retry=RetryPolicy(attempts=8, initial_delay=0.1))
    patient.write("p", {"n": 1}, cas=0)
    openbao.seal()
    unsealer = threading.Timer(0.3, openbao.unseal)
    unsealer.start()
    try:
        secret = patient.read("p")
    finally:
        unsealer.join()
        openbao.unseal()

    assert secret is not None
    assert secret.data == {"n": 1}


def test_an_unreachable_vault_is_unavailable(kv_mount: str) -> None:
    store = VaultStore.connect(f"http://127.0.0.1:{free_port()}", kv_mount, retry=FAST)

    with pytest.raises(VaultUnavailable, match="cannot connect to Vault") as caught:
        store.read("p")

    assert f"{kv_mount}/p" in str(caught.value)
    assert caught.value.retryable


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP server that accepts connections and never answers."""
    with closing(socket.socket()) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


def test_every_request_has_a_timeout(silent_server: str) -> None:
    store = VaultStore.connect(silent_server, "secret", timeout=0.3, retry=NO_RETRY)

    with pytest.raises(VaultUnavailable, match="timed out"):
        store.write("p", {"n": 1}, cas=0)


# -- the unknown outcome of a write -----------------------------------------------------------


class ResponseDroppingProxy:
    """A TCP proxy to OpenBao that can swallow the response to the next request.

    The request reaches OpenBao and takes effect; the client only sees the
    connection close, as after a network failure or a proxy timeout.
    """

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.drop_next = threading.Event()
        self.dropped = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.upstream)
        with client, upstream:
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            while chunk := upstream.recv(65536):
                if self.drop_next.is_set():
                    self.drop_next.clear()
                    self.dropped += 1
                    # shutdown, not just close: the pump thread still blocks in recv()
                    client.shutdown(socket.SHUT_RDWR)
                    return  # the answer is lost
                client.sendall(chunk)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def proxy(openbao: OpenBao) -> Iterator[ResponseDroppingProxy]:
    proxy = ResponseDroppingProxy(openbao.url)
    yield proxy
    proxy.close()


class HookClock:
    """A real clock whose sleep first runs a hook: lets a test act between two retries."""

    def __init__(self, hook: Callable[[], None]) -> None:
        self.hook = hook

    def now(self):  # type: ignore[no-untyped-def]
        from datetime import UTC, datetime

        return datetime.now(UTC)

    def sleep(self, seconds: float) -> None:
        self.hook()


def test_a_write_whose_answer_was_lost_is_confirmed_not_repeated(
    openbao: OpenBao, kv_mount: str, proxy: ResponseDroppingProxy
) -> None:
    store = VaultStore(
        openbao.client().__class__(url=proxy.url, token=openbao.root_token, timeout=5),
        kv_mount,
        retry=FAST,
    )
    store.write("p", {"n": 1}, cas=0)

    proxy.drop_next.set()
    version = store.write("p", {"key": PRIVATE_KEY}, cas=1, custom_metadata={"c": "2"})

    assert proxy.dropped == 1
    assert version == 2
    secret = store.read("p")
    assert secret is not None
    assert (secret.version, secret.data, secret.custom_metadata) == (
        2,
        {"key": PRIVATE_KEY},
        {"c": "2"},
    )


def test_a_lost_answer_followed_by_another_writer_is_still_a_conflict(
    openbao: OpenBao, kv_mount: str, proxy: ResponseDroppingProxy
) -> None:
    other = store_for(openbao, kv_mount)
    other.write("p", {"n": 1}, cas=0)
    competing = []

    def another_writer_wins() -> None:
        # Our first write (version 2) landed, its answer was lost; now someone
        # else writes version 3 before we retry.
        if not competing:
            competing.append(other.write("p", {"who": "other"}, cas=2))

    store = VaultStore(
        openbao.client().__class__(url=proxy.url, token=openbao.root_token, timeout=5),
        kv_mount,
        retry=FAST,
        clock=HookClock(another_writer_wins),
    )

    proxy.drop_next.set()
    with pytest.raises(CasConflict):
        store.write("p", {"who": "us"}, cas=1)

    assert competing == [3]
    assert store.read("p").data == {"who": "other"}  # type: ignore[union-attr]


# -- permissions ------------------------------------------------------------------------------


def test_a_read_only_token_may_read_but_not_write(openbao: OpenBao, kv_mount: str) -> None:
    store_for(openbao, kv_mount).write("p", {"n": 1}, cas=0)
    reader = store_for(openbao, kv_mount, openbao.create_kv_token(kv_mount, capabilities=["read"]))

    assert reader.read("p").data == {"n": 1}  # type: ignore[union-attr]
    with pytest.raises(VaultPermissionDenied) as caught:
        reader.write("p", {"key": PRIVATE_KEY}, cas=1)

    assert str(caught.value) == f"Vault at {kv_mount}/p: write: permission denied (403)"
    assert caught.value.status == 403
    assert not caught.value.retryable


def test_a_token_without_access_to_the_mount_is_denied_everywhere(
    openbao: OpenBao, kv_mount: str
) -> None:
    outsider = store_for(openbao, kv_mount, openbao.create_token())

    for operation in (lambda: outsider.read("p"), lambda: outsider.delete_all("p"), outsider.check):
        with pytest.raises(VaultPermissionDenied):
            operation()


# -- nothing secret leaks ---------------------------------------------------------------------


def _everything_said(exc: BaseException) -> str:
    """Every text a caller could print about an exception, chained ones included."""
    parts = ["".join(traceback.format_exception(exc)), repr(exc), repr(exc.args)]
    cause = exc.__cause__ or exc.__context__
    while cause is not None:
        parts += [str(cause), repr(cause)]
        cause = cause.__cause__ or cause.__context__
    return "\n".join(parts)


def test_no_secret_value_or_token_in_errors_or_logs(
    openbao: OpenBao,
    kv_mount: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    limited_token = openbao.create_kv_token(kv_mount, capabilities=["read"])
    root = store_for(openbao, kv_mount)
    reader = store_for(openbao, kv_mount, limited_token)
    root.write("p", {"key": PRIVATE_KEY}, cas=0, custom_metadata={"credential-id": "k1"})

    failures: list[BaseException] = []
    for operation in (
        lambda: root.write("p", {"key": PRIVATE_KEY}, cas=0),  # conflict
        lambda: reader.write("p", {"key": PRIVATE_KEY}, cas=1),  # denied
        lambda: store_for(openbao, kv_mount, "s.bogus-" + limited_token).read("p"),
        lambda: root.write("p", {"key": PRIVATE_KEY, "bad": object()}, cas=1),  # not JSON
    ):
        with pytest.raises((VaultError, TypeError)) as caught:
            operation()
        failures.append(caught.value)
    with openbao.sealed():
        with pytest.raises(VaultUnavailable) as sealed:
            root.write("p", {"key": PRIVATE_KEY}, cas=1)
        failures.append(sealed.value)

    said = "\n".join(_everything_said(exc) for exc in failures)
    out, err = capsys.readouterr()
    logged = "\n".join(f"{record.getMessage()} {record.__dict__}" for record in caplog.records)
    for secret in (PRIVATE_KEY, "MIIEsecret", limited_token, openbao.root_token):
        assert secret not in said
        assert secret not in out + err
        assert secret not in logged
    assert "vault unavailable, retrying" in logged  # the log was captured at all
