"""Running the emulator: fault injection, clock, propagation lag (§6.3),
persistence across kill -9, the ZITADEL < v4 mode, seeding and start-up."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from zitadel_client import Zitadel
from zitadel_client.exceptions import ApiError
from zitadel_client.models import (
    UserServiceAddKeyRequest,
    UserServiceAddPersonalAccessTokenRequest,
    UserServiceGetUserByIDRequest,
    UserServiceListKeysRequest,
    UserServiceMetadata,
    UserServiceRemoveKeyRequest,
    UserServiceSetUserMetadataRequest,
)

from tests.emulator.support import access_token, connect, in_days, sign_assertion, token_request
from tests.harness.emulator import REPO_ROOT, Emulator, EmulatorError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(autouse=True)
def _clean_emulator(emulator: Emulator) -> Iterator[None]:
    yield
    if emulator.alive:
        emulator.reset()


def admin_token(emu: Emulator) -> str:
    return access_token(emu.issuer, json.loads(emu.admin_key_file.read_text()))


def add_key(emu: Emulator, token: str, user_id: str) -> httpx.Response:
    return connect(emu.issuer, "AddKey",
                   {"userId": user_id, "expirationDate": in_days(30).isoformat()}, token)


# --- faults ----------------------------------------------------------------------------


def test_a_counted_fault_fails_exactly_the_next_calls(emulator: Emulator) -> None:
    token = admin_token(emulator)
    user = emulator.user_ids["svc-billing"]
    emulator.set_faults(rules=[{"method": "AddKey", "code": "unavailable", "count": 2}])
    first, second, third = (add_key(emulator, token, user) for _ in range(3))
    assert (first.status_code, second.status_code, third.status_code) == (503, 503, 200)
    assert first.json()["code"] == "unavailable"
    other = connect(emulator.issuer, "ListKeys", {}, token)
    assert other.status_code == 200  # other methods are untouched
    assert emulator.faults()["rules"][0]["fired"] == 2


@pytest.mark.parametrize(
    ("code", "status"),
    [("resource_exhausted", 429), ("internal", 500), ("deadline_exceeded", 504),
     ("unavailable", 503)],
)
def test_fault_codes_map_to_connect_http_statuses(
    emulator: Emulator, code: str, status: int
) -> None:
    token = admin_token(emulator)
    emulator.set_faults(rules=[{"method": "ListKeys", "code": code}])
    response = connect(emulator.issuer, "ListKeys", {}, token)
    assert response.status_code == status
    assert response.json()["code"] == code


def test_sdk_sees_injected_faults_as_api_errors(emulator: Emulator) -> None:
    sdk = Zitadel.with_private_key(emulator.issuer, str(emulator.admin_key_file))
    emulator.set_faults(rules=[{"method": "ListKeys", "code": "resource_exhausted"}])
    with pytest.raises(ApiError) as info:
        sdk.users.list_keys(UserServiceListKeysRequest())
    assert info.value.code == 429
    assert info.value.response_body["message"] == "Quota.Access.Exhausted (QUERY-vjAy8)"


def test_the_token_endpoint_can_fail_too(emulator: Emulator) -> None:
    key_file = json.loads(emulator.admin_key_file.read_text())
    emulator.set_faults(rules=[{"method": "token", "code": "unavailable", "count": 1}])
    failed = token_request(emulator.issuer, sign_assertion(key_file, emulator.issuer))
    assert failed.status_code == 503
    assert failed.json()["error"] == "server_error"
    assert token_request(emulator.issuer,
                         sign_assertion(key_file, emulator.issuer)).status_code == 200


def test_latency_delays_every_call(emulator: Emulator) -> None:
    token = admin_token(emulator)
    emulator.set_faults(latency_ms=300)
    started = time.monotonic()
    assert connect(emulator.issuer, "ListKeys", {}, token).status_code == 200
    assert time.monotonic() - started >= 0.3


def test_a_failure_rate_fails_a_share_of_calls(emulator: Emulator) -> None:
    token = admin_token(emulator)
    emulator.set_faults(rules=[{"method": "ListKeys", "code": "unavailable", "rate": 0.5}],
                        seed=7)
    statuses = [connect(emulator.issuer, "ListKeys", {}, token).status_code for _ in range(40)]
    assert 5 <= statuses.count(503) <= 35
    assert statuses.count(200) == 40 - statuses.count(503)


# --- clock -----------------------------------------------------------------------------


def test_the_clock_offset_is_settable_and_persisted(emulator: Emulator) -> None:
    emulator.set_clock_offset(3600)
    emulator.advance(60)
    assert emulator.clock()["offset_seconds"] == 3660
    emulator.restart()
    assert emulator.clock()["offset_seconds"] == 3660


def test_a_key_with_the_default_expiry_outlives_a_century(emulator: Emulator) -> None:
    user = emulator.add_user("svc-clock", key=True)  # default expiry 9999-12-31T23:59:59Z
    assert user["key_file"]["expirationDate"] == "9999-12-31T23:59:59Z"
    emulator.set_clock_offset(86400 * 365 * 100)
    assertion = sign_assertion(user["key_file"], emulator.issuer)
    assert token_request(emulator.issuer, assertion).status_code == 200


def test_the_clock_cannot_leave_the_timestamp_range(emulator: Emulator) -> None:
    with pytest.raises(EmulatorError):
        emulator.set_clock_offset(86400 * 365 * 9000)
    assert emulator.clock()["offset_seconds"] == 0


# --- persistence -----------------------------------------------------------------------


def test_kill_9_and_restart_keeps_users_keys_pats_metadata_and_tokens(
    emulator: Emulator,
) -> None:
    sdk = Zitadel.with_private_key(emulator.issuer, str(emulator.admin_key_file))
    ids = emulator.user_ids
    key = sdk.users.add_key(UserServiceAddKeyRequest(userId=ids["svc-billing"],
                                                     expirationDate=in_days(10)))
    pat = sdk.users.add_personal_access_token(UserServiceAddPersonalAccessTokenRequest(
        userId=ids["svc-reports"], expirationDate=in_days(10)))
    sdk.users.set_user_metadata(UserServiceSetUserMetadataRequest(
        userId=ids["svc-reports"], metadata=[UserServiceMetadata(key="k", value="dg==")]))
    extra = emulator.add_user("svc-late", roles=["ORG_USER_MANAGER"])
    token = admin_token(emulator)
    before = emulator.state()

    emulator.kill()
    emulator.start()

    assert emulator.state() == before
    assert emulator.user_ids["svc-late"] == extra["id"]
    # the PAT, an access token and the old SDK client all still work
    as_reports = Zitadel.with_access_token(emulator.issuer, pat.token)
    assert as_reports.users.get_user_by_id(
        UserServiceGetUserByIDRequest(userId=ids["svc-reports"])).user is not None
    assert connect(emulator.issuer, "ListKeys", {}, token).status_code == 200
    sdk.users.remove_key(UserServiceRemoveKeyRequest(userId=ids["svc-billing"],
                                                     keyId=key.key_id))
    state_keys = {k["id"]: k for k in emulator.state()["keys"]}
    assert state_keys[key.key_id]["removed_at"] is not None


def test_every_answered_write_survives_a_kill_9_under_concurrent_load(
    emulator: Emulator,
) -> None:
    token = admin_token(emulator)
    user = emulator.user_ids["svc-billing"]
    answered: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        with httpx.Client(timeout=5) as client:
            while not stop.is_set():
                try:
                    response = client.post(
                        f"{emulator.issuer}/zitadel.user.v2.UserService/AddPersonalAccessToken",
                        json={"userId": user, "expirationDate": in_days(1).isoformat()},
                        headers={"Authorization": f"Bearer {token}"})
                except httpx.HTTPError:
                    return  # the server died under us
                if response.status_code == 200:
                    answered.append(response.json()["tokenId"])

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while len(answered) < 40 and time.monotonic() < deadline:
        time.sleep(0.01)
    emulator.kill()
    stop.set()
    for t in threads:
        t.join(timeout=10)
    emulator.start()

    stored = {p["id"] for p in emulator.state()["pats"]}
    assert len(answered) >= 40
    assert set(answered) <= stored


def test_the_state_dump_holds_no_secret_values(emulator: Emulator) -> None:
    sdk = Zitadel.with_private_key(emulator.issuer, str(emulator.admin_key_file))
    pat = sdk.users.add_personal_access_token(UserServiceAddPersonalAccessTokenRequest(
        userId=emulator.user_ids["svc-billing"], expirationDate=in_days(1)))
    key_file = json.loads(emulator.admin_key_file.read_text())
    token = admin_token(emulator)
    dump = json.dumps(emulator.state(tokens=True))
    for secret in (pat.token, token, key_file["key"].splitlines()[1]):
        assert secret not in dump
    database = b"".join(p.read_bytes() for p in emulator.state_dir.glob("zitadel.sqlite*"))
    for secret in (pat.token, token):
        assert secret.encode() not in database


def test_the_admin_key_file_is_private(emulator: Emulator) -> None:
    assert emulator.admin_key_file.stat().st_mode & 0o777 == 0o600


# --- propagation lag (§6.3) ----------------------------------------------------------


def test_lag_delays_new_keys_and_prolongs_removed_ones_but_not_pats(
    emulator_factory: Callable[..., Emulator],
) -> None:
    emu = emulator_factory(lag_ms=5000)
    token = admin_token(emu)
    user = emu.add_user("svc-lagged")
    created = add_key(emu, token, user["id"]).json()
    from base64 import b64decode

    key_file = json.loads(b64decode(created["keyContent"]))
    assertion = lambda: sign_assertion(key_file, emu.issuer)  # noqa: E731
    assert token_request(emu.issuer, assertion()).status_code == 500  # not yet visible
    emu.advance(6)
    assert token_request(emu.issuer, assertion()).status_code == 200

    removed = connect(emu.issuer, "RemoveKey", {"userId": user["id"], "keyId": key_file["keyId"]},
                      token)
    assert removed.status_code == 200
    assert token_request(emu.issuer, assertion()).status_code == 200  # still visible
    emu.advance(6)
    assert token_request(emu.issuer, assertion()).status_code == 500

    pat = connect(emu.issuer, "AddPersonalAccessToken",
                  {"userId": user["id"], "expirationDate": in_days(1).isoformat()}, token).json()
    me = {"userId": user["id"]}
    assert connect(emu.issuer, "GetUserByID", me, pat["token"]).status_code == 200
    connect(emu.issuer, "RemovePersonalAccessToken",
            {"userId": user["id"], "tokenId": pat["tokenId"]}, token)
    assert connect(emu.issuer, "GetUserByID", me, pat["token"]).status_code == 401


# --- ZITADEL < v4 -----------------------------------------------------------------------


def test_without_v2_keys_the_methods_do_not_exist(
    emulator_factory: Callable[..., Emulator],
) -> None:
    emu = emulator_factory(no_v2_keys=True)
    token = admin_token(emu)
    missing = add_key(emu, token, emu.user_ids["svc-billing"])
    assert missing.status_code == 404
    assert missing.text == "404 page not found\n"
    for method in ("ListKeys", "AddPersonalAccessToken", "SetUserMetadata"):
        assert connect(emu.issuer, method, {}, token).status_code == 404
    assert connect(emu.issuer, "GetUserByID", {"userId": emu.user_ids["svc-billing"]},
                   token).status_code == 200


# --- seeding and start-up ---------------------------------------------------------------


def test_a_yaml_seed_describes_orgs_users_and_roles(
    emulator_factory: Callable[..., Emulator], tmp_path: Path
) -> None:
    seed = tmp_path / "seed.yaml"
    seed.write_text(
        "orgs:\n"
        "  - name: initech\n"
        "    users:\n"
        "      - username: boss\n"
        "        roles: [ORG_USER_MANAGER]\n"
        "        key_file: admin-key.json\n"
        "        memberships: [{org: hooli, roles: [ORG_OWNER]}]\n"
        "      - username: milton\n"
        "        type: human\n"
        "        given_name: Milton\n"
        "  - name: hooli\n"
        "    domain: hooli.example\n"
        "    users:\n"
        "      - username: gavin\n"
        "        metadata: {team: core}\n"
    )
    emu = emulator_factory(seed=seed)
    assert set(emu.org_ids) == {"initech", "hooli"}
    state = emu.state()
    gavin = next(u for u in state["users"] if u["username"] == "gavin")
    assert gavin["login_names"] == ["gavin@hooli.example"]
    assert gavin["metadata"] == {"team": "core"}
    token = admin_token(emu)  # boss, through the seeded key file
    assert add_key(emu, token, emu.user_ids["gavin"]).status_code == 200


def test_port_zero_picks_free_ports_and_reports_them(tmp_path: Path) -> None:
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.emulator", "--port", "0", "--grpc-port", "0",
         "--state-dir", str(tmp_path / "state")],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        elapsed = time.monotonic() - started
        endpoints: dict[str, Any] = json.loads((tmp_path / "state" / "endpoints.json").read_text())
        assert line == f"ready {endpoints['issuer']}\n"
        assert not endpoints["issuer"].endswith(":0")
        assert httpx.get(endpoints["issuer"] + "/.well-known/openid-configuration") \
            .json()["issuer"] == endpoints["issuer"]
        assert set(endpoints["users"]) == {"rotator-admin", "svc-billing", "svc-reports",
                                           "svc-noperm", "svc-ledger"}
        assert elapsed < 5  # typically ~0.3 s
    finally:
        process.terminate()
        process.wait(timeout=5)


# --- list lag and answers lost after the action -------------------------------------------


def _user_keys(emu: Emulator, user_id: str) -> list[dict[str, Any]]:
    return [k for k in emu.state()["keys"] if k["user_id"] == user_id]


def _user_pats(emu: Emulator, user_id: str) -> list[dict[str, Any]]:
    return [p for p in emu.state()["pats"] if p["user_id"] == user_id]


def _listed_ids(emu: Emulator, token: str, method: str, user_id: str) -> list[str]:
    response = connect(emu.issuer, method, {"filters": [{"userIdFilter": {"id": user_id}}]},
                       token)
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json().get("result", [])]


def test_list_lag_hides_new_keys_and_pats_from_v2_lists_for_a_while(
    emulator: Emulator,
) -> None:
    token = admin_token(emulator)
    user = emulator.add_user("svc-listlag-v2")["id"]
    emulator.set_faults(list_lag_ms=60_000)
    key_id = add_key(emulator, token, user).json()["keyId"]
    pat_id = connect(emulator.issuer, "AddPersonalAccessToken",
                     {"userId": user, "expirationDate": in_days(3).isoformat()},
                     token).json()["tokenId"]
    assert _listed_ids(emulator, token, "ListKeys", user) == []
    assert _listed_ids(emulator, token, "ListPersonalAccessTokens", user) == []
    assert [k["id"] for k in _user_keys(emulator, user)] == [key_id]  # it exists all the same
    emulator.advance(61)  # the projection catches up (emulator time)
    assert _listed_ids(emulator, token, "ListKeys", user) == [key_id]
    assert _listed_ids(emulator, token, "ListPersonalAccessTokens", user) == [pat_id]
    assert emulator.faults()["list_lag_ms"] == 60_000


def test_list_lag_applies_to_v1_lists_too(emulator: Emulator) -> None:
    import grpc

    from rotator.zitadel.v1.gen import zitadel_authn_v1_pb2 as authn_pb
    from rotator.zitadel.v1.gen import zitadel_management_v1_pb2 as m
    from rotator.zitadel.v1.gen import zitadel_management_v1_pb2_grpc as mgmt_grpc

    token = admin_token(emulator)
    user = emulator.add_user("svc-listlag-v1")["id"]
    md = [("authorization", f"Bearer {token}")]
    with grpc.insecure_channel(emulator.grpc_target) as channel:
        stub = mgmt_grpc.ManagementServiceStub(channel)
        emulator.set_faults(list_lag_ms=60_000)
        stub.AddMachineKey(m.AddMachineKeyRequest(user_id=user, type=authn_pb.KEY_TYPE_JSON),
                           metadata=md, timeout=10)
        stub.AddPersonalAccessToken(m.AddPersonalAccessTokenRequest(user_id=user),
                                    metadata=md, timeout=10)
        keys = stub.ListMachineKeys(m.ListMachineKeysRequest(user_id=user), metadata=md, timeout=10)
        pats = stub.ListPersonalAccessTokens(m.ListPersonalAccessTokensRequest(user_id=user),
                                             metadata=md, timeout=10)
        assert (len(keys.result), len(pats.result)) == (0, 0)
        emulator.set_faults()  # no lag: the projection has caught up
        keys = stub.ListMachineKeys(m.ListMachineKeysRequest(user_id=user), metadata=md, timeout=10)
        pats = stub.ListPersonalAccessTokens(m.ListPersonalAccessTokensRequest(user_id=user),
                                             metadata=md, timeout=10)
        assert (len(keys.result), len(pats.result)) == (1, 1)


def test_a_slow_answer_comes_after_the_client_gave_up_but_the_key_exists(
    emulator: Emulator,
) -> None:
    token = admin_token(emulator)
    user = emulator.add_user("svc-slow")["id"]
    emulator.set_faults(rules=[{"method": "AddKey", "mode": "slow", "latency_ms": 1500,
                                "count": 1}])
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{emulator.issuer}/zitadel.user.v2.UserService/AddKey",
                   json={"userId": user, "expirationDate": in_days(30).isoformat()},
                   headers={"Authorization": f"Bearer {token}"}, timeout=0.5)
    # committed before the answer was delayed (a loaded machine may still be committing)
    deadline = time.monotonic() + 1.4
    while not _user_keys(emulator, user) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(_user_keys(emulator, user)) == 1
    assert add_key(emulator, token, user).status_code == 200  # count: 1, the next is normal


def test_a_lost_answer_is_a_503_after_the_pat_was_created(emulator: Emulator) -> None:
    token = admin_token(emulator)
    user = emulator.add_user("svc-lost")["id"]
    emulator.set_faults(rules=[{"method": "AddPersonalAccessToken", "mode": "lost",
                                "code": "unavailable", "count": 1}])
    response = connect(emulator.issuer, "AddPersonalAccessToken",
                       {"userId": user, "expirationDate": in_days(3).isoformat()}, token)
    assert response.status_code == 503
    assert "token" not in response.json()
    assert len(_user_pats(emulator, user)) == 1


def test_a_dropped_answer_resets_the_connection_after_the_removal(emulator: Emulator) -> None:
    token = admin_token(emulator)
    user = emulator.add_user("svc-drop")["id"]
    key_id = add_key(emulator, token, user).json()["keyId"]
    emulator.set_faults(rules=[{"method": "RemoveKey", "mode": "drop", "count": 1}])
    with pytest.raises(httpx.TransportError):
        httpx.post(f"{emulator.issuer}/zitadel.user.v2.UserService/RemoveKey",
                   json={"userId": user, "keyId": key_id},
                   headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert _user_keys(emulator, user)[0]["removed_at"] is not None


def test_a_lost_v1_answer_is_unavailable_after_the_key_was_created(emulator: Emulator) -> None:
    import grpc

    from rotator.zitadel.v1.gen import zitadel_authn_v1_pb2 as authn_pb
    from rotator.zitadel.v1.gen import zitadel_management_v1_pb2 as m
    from rotator.zitadel.v1.gen import zitadel_management_v1_pb2_grpc as mgmt_grpc

    token = admin_token(emulator)
    user = emulator.add_user("svc-lost-v1")["id"]
    emulator.set_faults(rules=[{"method": "AddMachineKey", "mode": "drop", "count": 1}])
    with grpc.insecure_channel(emulator.grpc_target) as channel:
        stub = mgmt_grpc.ManagementServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.AddMachineKey(m.AddMachineKeyRequest(user_id=user, type=authn_pb.KEY_TYPE_JSON),
                               metadata=[("authorization", f"Bearer {token}")], timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert len(_user_keys(emulator, user)) == 1


def test_a_seed_makes_the_fault_sequence_reproducible(emulator: Emulator) -> None:
    token = admin_token(emulator)

    def run() -> list[int]:
        emulator.set_faults(rules=[{"method": "ListKeys", "code": "unavailable", "rate": 0.3},
                                   {"method": "ListKeys", "mode": "lost", "rate": 0.3}], seed=42)
        return [connect(emulator.issuer, "ListKeys", {}, token).status_code for _ in range(30)]

    first = run()
    assert first == run()
    assert 503 in first
    assert 200 in first


def test_an_unknown_fault_mode_is_refused(emulator: Emulator) -> None:
    with pytest.raises(EmulatorError, match="unsupported fault mode"):
        emulator.set_faults(rules=[{"method": "AddKey", "mode": "sometimes"}])


# --- scale: indexed lists, bulk seeding, rate limit, overlapping latency ------------------


@pytest.fixture(scope="module")
def fleet() -> Iterator[tuple[Emulator, dict[str, Any], dict[str, Any]]]:
    """An emulator of its own with 60 bulk users in acme (2 keys, 1 PAT each), 4 in
    globex, plus keys added one by one (distinct creation dates and expiries)."""
    with Emulator.running() as emu:
        acme = emu.bulk(60, keys_per_user=2, pats_per_user=1, prefix="fleet-")
        globex = emu.bulk(4, org="globex", keys_per_user=1, pats_per_user=2, prefix="gx-",
                          expiration=in_days(20).isoformat())
        token = admin_token(emu)
        for user in acme["users"][:3]:
            for days in (3, 9):
                assert connect(emu.issuer, "AddKey", {"userId": user["id"], "expirationDate":
                               in_days(days).isoformat()}, token).status_code == 200
        yield emu, acme, globex


def _instant(text: str) -> int:
    from tests.emulator import times

    return times.parse_rfc3339(text)


def _all_pages(emu: Emulator, token: str, method: str, body: dict[str, Any],
               limit: int) -> tuple[list[str], set[int]]:
    ids: list[str] = []
    totals: set[int] = set()
    while True:
        page = {**body, "pagination": {"offset": len(ids), "limit": limit,
                                       "asc": body.get("asc", False)}}
        response = connect(emu.issuer, method, page, token)
        assert response.status_code == 200, response.text
        data = response.json()
        assert int(data["pagination"]["appliedLimit"]) == limit
        totals.add(int(data["pagination"].get("totalResult", 0)))
        got = [item["id"] for item in data.get("result", [])]
        ids += got
        if len(got) < limit:
            return ids, totals


@pytest.mark.parametrize("method", ["ListKeys", "ListPersonalAccessTokens"])
@pytest.mark.parametrize(("column", "attr"), [  # KeyFieldName / PersonalAccessTokenFieldName
    (None, "created"), (1, "created"), (2, "id"), (3, "user_id"), (4, "org_id"),
    (5, "expiration")])
def test_v2_lists_by_user_and_org_page_and_sort_exactly_like_a_full_scan(
    fleet: tuple[Emulator, dict[str, Any], dict[str, Any]], method: str, column: int | None,
    attr: str,
) -> None:
    emu, acme, _ = fleet
    token = admin_token(emu)
    kind = "keys" if method == "ListKeys" else "pats"
    everything = [k for k in emu.state()[kind] if k["removed_at"] is None]
    user = acme["users"][2]["id"]

    def reference(pred: Callable[[dict[str, Any]], bool], asc: bool) -> list[str]:
        def key(item: dict[str, Any]) -> tuple[Any, ...]:
            by_id = (len(item["id"]), item["id"])
            if attr == "id":
                return by_id
            if attr in ("created", "expiration"):
                return (_instant(item[attr]), *by_id)
            return (item[attr], *by_id)
        return [i["id"] for i in sorted(filter(pred, everything), key=key, reverse=not asc)]

    base: dict[str, Any] = {} if column is None else {"sortingColumn": column}
    cases: list[tuple[list[dict[str, Any]], Callable[[dict[str, Any]], bool]]] = [
        ([{"organizationIdFilter": {"id": acme["org_id"]}}],
         lambda i: i["org_id"] == acme["org_id"]),
        ([{"userIdFilter": {"id": user}}], lambda i: i["user_id"] == user),
        ([{"organizationIdFilter": {"id": acme["org_id"]}}, {"userIdFilter": {"id": user}}],
         lambda i: i["user_id"] == user),
        ([{"organizationIdFilter": {"id": emu.org_ids["globex"]}},
          {"userIdFilter": {"id": user}}], lambda i: False),  # ANDed: nothing
        # no filter: what the caller may read (ORG_OWNER of acme: not globex)
        ([], lambda i: i["org_id"] == acme["org_id"]),
    ]
    for (filters, pred), asc in itertools.product(cases, (False, True)):
        wanted = reference(pred, asc)
        ids, totals = _all_pages(emu, token, method, {**base, "filters": filters, "asc": asc},
                                 limit=20)
        assert ids == wanted, (filters, asc)
        assert totals == {len(wanted)}


def test_v2_lists_apply_timestamp_filters_and_the_documented_limits(
    fleet: tuple[Emulator, dict[str, Any], dict[str, Any]],
) -> None:
    emu, acme, _ = fleet
    token = admin_token(emu)
    keys = [k for k in emu.state()["keys"] if k["org_id"] == acme["org_id"]]
    cutoff = in_days(10).isoformat()
    soon = {k["id"] for k in keys if _instant(k["expiration"]) < _instant(cutoff)}
    assert len(soon) == 6  # the keys added one by one, 3 and 9 days
    body = {"filters": [{"organizationIdFilter": {"id": acme["org_id"]}},
                        {"expirationDateFilter": {"timestamp": cutoff,
                                                  "method": "TIMESTAMP_FILTER_METHOD_BEFORE"}}]}
    ids, _ = _all_pages(emu, token, "ListKeys", body, limit=1000)
    assert set(ids) == soon
    default = connect(emu.issuer, "ListKeys", {}, token).json()
    assert int(default["pagination"]["appliedLimit"]) == 100
    assert len(default["result"]) == 100 < int(default["pagination"]["totalResult"])
    too_many = connect(emu.issuer, "ListKeys", {"pagination": {"limit": 1001}}, token)
    assert too_many.status_code == 400
    assert too_many.json()["code"] == "invalid_argument"


def test_a_caller_without_roles_lists_only_its_own_credentials(
    fleet: tuple[Emulator, dict[str, Any], dict[str, Any]],
) -> None:
    emu, acme, _ = fleet
    me = acme["users"][4]
    pat = me["pats"][0]["token"]
    for method, own in (("ListKeys", set(me["keys"])),
                        ("ListPersonalAccessTokens", {me["pats"][0]["id"]})):
        listed = connect(emu.issuer, method, {"pagination": {"limit": 1000}}, pat).json()
        assert {i["id"] for i in listed["result"]} >= own
        assert {i["userId"] for i in listed["result"]} == {me["id"]}
    users = connect(emu.issuer, "ListUsers", {}, pat).json()
    assert [u["userId"] for u in users["result"]] == [me["id"]]


def test_v2_list_users_narrows_by_ids_and_name_with_the_same_answer(
    fleet: tuple[Emulator, dict[str, Any], dict[str, Any]],
) -> None:
    emu, acme, globex = fleet
    token = admin_token(emu)  # ORG_OWNER of acme only: globex users are not readable
    wanted = [acme["users"][7]["id"], acme["users"][3]["id"], globex["users"][0]["id"]]
    by_ids = connect(emu.issuer, "ListUsers", {"queries": [{"inUserIdsQuery": {
        "userIds": wanted}}]}, token).json()
    assert [u["userId"] for u in by_ids["result"]] == sorted(wanted[:2], key=int, reverse=True)
    by_name = connect(emu.issuer, "ListUsers", {"queries": [{"userNameQuery": {
        "userName": "FLEET-00011", "method": "TEXT_QUERY_METHOD_EQUALS_IGNORE_CASE"}}]},
        token).json()
    assert [u["userId"] for u in by_name["result"]] == [acme["users"][11]["id"]]


def test_v2_list_users_by_exact_login_name_finds_that_user_only(
    fleet: tuple[Emulator, dict[str, Any], dict[str, Any]],
) -> None:
    emu, acme, _ = fleet
    token = admin_token(emu)
    user = acme["users"][5]
    username, domain = user["login_name"].rsplit("@", 1)

    def found(login_name: str) -> list[str]:
        answer = connect(emu.issuer, "ListUsers", {"queries": [{"loginNameQuery": {
            "loginName": login_name, "method": "TEXT_QUERY_METHOD_EQUALS"}}]}, token)
        assert answer.status_code == 200, answer.text
        return [u["userId"] for u in answer.json().get("result", [])]

    assert found(user["login_name"]) == [user["id"]]
    assert found(f"{username}@other.{domain}") == []  # the user name, in no org of that domain


def test_bulk_seeding_is_one_transaction_with_working_credentials(
    fleet: tuple[Emulator, dict[str, Any], dict[str, Any]],
) -> None:
    emu, acme, _ = fleet
    before = len(emu.state()["users"])
    with pytest.raises(EmulatorError, match="already exists"):
        emu.bulk(80, prefix="fleet-")  # fleet-00060.. would be new, fleet-00000 is taken
    assert len(emu.state()["users"]) == before  # nothing of it was written
    user = acme["users"][0]
    key_file = {"type": "serviceaccount", "keyId": user["keys"][1], "key": acme["private_key"],
                "userId": user["id"]}
    assert token_request(emu.issuer, sign_assertion(key_file, emu.issuer)).status_code == 200
    whoami = connect(emu.issuer, "GetUserByID", {"userId": user["id"]},
                     user["pats"][0]["token"])
    assert whoami.json()["user"]["username"] == "fleet-00000"


def test_a_rate_limit_answers_the_quota_error_past_n_requests_per_second(
    fleet: tuple[Emulator, dict[str, Any], dict[str, Any]],
) -> None:
    emu, acme, _ = fleet
    pat = acme["users"][0]["pats"][0]["token"]
    emu.reset_counters()
    emu.set_faults(rate_limit=3)
    try:
        started = time.monotonic()
        statuses = [connect(emu.issuer, "ListKeys", {}, pat).status_code for _ in range(8)]
        oauth = token_request(emu.issuer, "not-even-a-jwt")
        elapsed = time.monotonic() - started
        limited = connect(emu.issuer, "ListKeys", {}, pat)
    finally:
        emu.set_faults()
    assert statuses[:3] == [200, 200, 200]
    if elapsed < 1.0:  # all within one window: only 3 of 10 admitted
        assert statuses[3:] == [429] * 5
        assert oauth.status_code == 429
    assert limited.status_code == 429
    assert limited.json() == {"code": "resource_exhausted",
                              "message": "Quota.Access.Exhausted (QUERY-vjAy8)"}
    counters = emu.counters()
    rejected = statuses.count(429) + (oauth.status_code == 429) + 1
    assert counters["rate_limited"] == rejected
    assert counters["calls"]["ListKeys"] == 9
    assert counters["calls"]["token"] == 1
    assert connect(emu.issuer, "ListKeys", {}, pat).status_code == 200  # limit lifted


def test_injected_latency_lets_concurrent_requests_overlap(emulator: Emulator) -> None:
    emulator.set_faults(latency_ms=400)
    emulator.reset_counters()
    barrier = threading.Barrier(16)

    def call() -> None:
        barrier.wait()
        httpx.get(f"{emulator.issuer}/.well-known/openid-configuration", timeout=10)

    threads = [threading.Thread(target=call) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counters = emulator.counters()
    assert counters["calls"]["discovery"] == 16
    # a lock held across the sleep would keep this at 1
    assert counters["peak_concurrent_delays"] >= 8
