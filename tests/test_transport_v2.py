"""The v2 UserService transport, through the official SDK, against the emulator:
what is the SDK transport's own (HTTP statuses on errors, non-Connect answers,
no SDK exception or token in any error).  The behaviour it shares with the
other transports is asserted in tests/contract/test_transport.py."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from zitadel_client.exceptions import ApiError

from rotator.errors import (
    ZitadelError,
    ZitadelRejected,
    ZitadelUnavailable,
)
from rotator.keys import generate_key_pair
from rotator.model import User
from rotator.zitadel.oidc import OidcClient, TokenSource
from rotator.zitadel.v2 import PAGES_AT_ONCE, UserServiceTransport, _paginate, api_error
from tests.harness.emulator import Emulator

IN_30_DAYS = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)


@pytest.fixture(scope="module")
def oidc(emulator: Emulator) -> Iterator[OidcClient]:
    with OidcClient(emulator.issuer) as client:
        yield client


@pytest.fixture(scope="module")
def admin_source(emulator: Emulator, oidc: OidcClient) -> TokenSource:
    admin_key = json.loads(emulator.admin_key_file.read_text())
    return TokenSource(oidc, lambda: admin_key)


@pytest.fixture(scope="module")
def transport(emulator: Emulator, admin_source: TokenSource) -> UserServiceTransport:
    return UserServiceTransport(emulator.issuer, admin_source, timeout=5)


@pytest.fixture(scope="module")
def billing(transport: UserServiceTransport) -> User:
    return transport.resolve_user("svc-billing")


@pytest.fixture
def reset(emulator: Emulator) -> Iterator[Emulator]:
    yield emulator
    emulator.reset()


def test_a_rejection_carries_the_http_status(
    transport: UserServiceTransport, billing: User
) -> None:
    ghost = User(id="404404404", org_id=billing.org_id, username="ghost")
    with pytest.raises(ZitadelRejected) as missing:
        transport.add_key(ghost, generate_key_pair().public_key_pem, IN_30_DAYS)
    assert (missing.value.code, missing.value.status) == ("failed_precondition", 400)


# -- failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status"),
    [("resource_exhausted", 429), ("unavailable", 503), ("internal", 500)],
)
def test_outages_carry_the_http_status(  # noqa: PLR0917 - fixtures
    transport: UserServiceTransport,
    billing: User,
    emulator: Emulator,
    reset: Emulator,
    code: str,
    status: int,
) -> None:
    # class, code and retryability of each outage: tests/contract/test_transport.py
    emulator.set_faults(rules=[{"method": "AddKey", "code": code, "count": 1}])
    with pytest.raises(ZitadelUnavailable) as caught:
        transport.add_key(billing, generate_key_pair().public_key_pem, IN_30_DAYS)
    assert (caught.value.code, caught.value.status) == (code, status)


def test_non_connect_answers_map_by_http_status() -> None:
    # What an edge proxy in front of ZITADEL sends: no Connect body.
    for status, expected in [
        (429, "resource_exhausted"),
        (502, "unavailable"),
        (503, "unavailable"),
        (504, "deadline_exceeded"),
    ]:
        error = api_error(ApiError(status, {}, "<html>busy</html>"), "UserService.AddKey", "add")
        assert isinstance(error, ZitadelUnavailable)
        assert (error.code, error.status) == (expected, status)
        assert "html" not in str(error)


def test_no_error_carries_the_callers_token_or_the_sdk_exception(
    emulator: Emulator, transport: UserServiceTransport, billing: User, reset: Emulator
) -> None:
    # The rotator authenticating with a PAT: the token is a plain string we can search for.
    admin = transport.resolve_user("rotator-admin")
    pat = transport.add_pat(admin, IN_30_DAYS).token
    with_pat = UserServiceTransport(emulator.issuer, lambda: pat)
    errors: list[ZitadelError] = []
    for action in (
        lambda: with_pat.remove_key(billing, "1"),
        lambda: with_pat.resolve_user("svc-nobody"),
        lambda: with_pat.add_key(billing, b"not a key", IN_30_DAYS),
        lambda: with_pat.add_pat(billing, datetime.now(UTC) - timedelta(days=1)),
    ):
        with pytest.raises(ZitadelError) as caught:
            action()
        errors.append(caught.value)
    emulator.set_faults(rules=[{"method": "*", "code": "unavailable"}])
    with pytest.raises(ZitadelError) as outage:
        with_pat.list_pats(billing)
    errors.append(outage.value)

    for error in errors:
        assert pat not in f"{error} {error!r} {error.args}"
        # raised "from None": a traceback shows no ApiError with headers and body
        assert error.__cause__ is None
        assert error.__context__ is None or error.__suppress_context__


class _Pages:
    """A listing of ``count`` items served a page at a time, as ZITADEL pages."""

    def __init__(self, count: int, size: int, *, grows_by: int = 0, delay: float = 0.02) -> None:
        self.items, self.size, self.grows_by, self.delay = list(range(count)), size, grows_by, delay
        self.asked: list[int] = []
        self.in_flight = self.most_in_flight = 0
        self._lock = threading.Lock()

    def __call__(self, offset: int) -> tuple[list[int], int | None]:
        with self._lock:
            self.asked.append(offset)
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            total = len(self.items)
            if offset == 0 and self.grows_by:  # created after the first page answered
                self.items += range(total, total + self.grows_by)
        time.sleep(self.delay)
        with self._lock:
            self.in_flight -= 1
            return self.items[offset : offset + self.size], total if offset == 0 else len(
                self.items
            )


@pytest.mark.parametrize(("count", "size"), [(0, 10), (7, 10), (10, 10), (95, 10), (100, 10)])
def test_a_listing_yields_every_item_once_in_order(count: int, size: int) -> None:
    pages = _Pages(count, size)
    assert list(_paginate(pages, size)) == list(range(count))
    assert sorted(pages.asked) == list(range(0, max(count, 1), size))  # no page asked twice


def test_pages_after_the_first_are_fetched_side_by_side() -> None:
    pages = _Pages(10_000, 1000, delay=0.05)
    assert list(_paginate(pages, 1000)) == list(range(10_000))
    # one page (which tells the total), then the nine others four at a time
    assert pages.asked[0] == 0
    assert pages.most_in_flight == PAGES_AT_ONCE


def test_a_listing_that_grew_after_the_first_page_is_read_to_its_end() -> None:
    pages = _Pages(3000, 1000, grows_by=1500)
    assert list(_paginate(pages, 1000)) == list(range(4500))


def test_a_failed_page_fails_the_listing_and_no_further_page_is_sent() -> None:
    def page(offset: int) -> tuple[list[int], int | None]:
        asked.append(offset)
        if offset == 1000:
            raise ZitadelUnavailable("list keys: unreachable")
        time.sleep(0.05)
        return list(range(offset, offset + 1000)), 20_000

    asked: list[int] = []
    with pytest.raises(ZitadelUnavailable, match="unreachable"):
        list(_paginate(page, 1000))
    time.sleep(0.2)
    # the first, those in flight and what freed workers took before the cut: not all twenty
    assert len(asked) <= 1 + 2 * PAGES_AT_ONCE
