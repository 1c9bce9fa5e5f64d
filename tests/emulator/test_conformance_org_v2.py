"""The emulator's ``zitadel.org.v2.OrganizationService/ListOrganizations`` as
the unmodified ``zitadel-client`` SDK and raw Connect JSON see it: results
filtered to the orgs the caller may read (``org.read``), name and domain
queries with ZITADEL's text methods, PGV on the queries."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import httpx
import pytest
from zitadel_client import Zitadel
from zitadel_client.models import (
    OrganizationServiceListOrganizationsRequest,
    OrganizationServiceOrganizationDomainQuery,
    OrganizationServiceOrganizationNameQuery,
    OrganizationServiceSearchQuery,
    OrganizationServiceTextQueryMethod,
)

from tests.emulator.support import access_token
from tests.harness.emulator import Emulator

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

URL = "/zitadel.org.v2.OrganizationService/ListOrganizations"


@pytest.fixture(autouse=True)
def _clean(emulator: Emulator) -> Iterator[None]:
    yield
    emulator.reset()


def by_name(name: str, method: str = "TEXT_QUERY_METHOD_EQUALS") -> OrganizationServiceSearchQuery:
    return OrganizationServiceSearchQuery(
        nameQuery=OrganizationServiceOrganizationNameQuery(
            name=name, method=OrganizationServiceTextQueryMethod(method)
        )
    )


def test_the_sdk_finds_an_org_by_name_and_by_domain(emulator: Emulator) -> None:
    sdk = Zitadel.with_private_key(emulator.issuer, str(emulator.admin_key_file))
    acme = emulator.org_ids["acme"]
    found = sdk.organizations.list_organizations(
        OrganizationServiceListOrganizationsRequest(queries=[by_name("acme")])
    )
    assert [(o.id, o.name, o.primary_domain) for o in found.result or []] == [
        (acme, "acme", "acme.localhost")
    ]
    assert found.details is not None
    assert found.details.total_result == "1"
    domain = OrganizationServiceSearchQuery(
        domainQuery=OrganizationServiceOrganizationDomainQuery(
            domain="ACME.localhost",
            method=OrganizationServiceTextQueryMethod("TEXT_QUERY_METHOD_EQUALS_IGNORE_CASE"),
        )
    )
    found = sdk.organizations.list_organizations(
        OrganizationServiceListOrganizationsRequest(queries=[domain])
    )
    assert [o.id for o in found.result or []] == [acme]


def test_only_orgs_the_caller_may_read_are_listed(emulator: Emulator) -> None:
    """The acme admin (ORG_OWNER of acme) does not see globex, by name or at all."""
    token = access_token(emulator.issuer, json.loads(emulator.admin_key_file.read_text()))
    headers = {"Authorization": f"Bearer {token}"}
    everything = httpx.post(emulator.issuer + URL, json={}, headers=headers)
    assert everything.status_code == 200
    assert [o["name"] for o in everything.json()["result"]] == ["acme"]
    globex = httpx.post(
        emulator.issuer + URL,
        json={"queries": [{"nameQuery": {"name": "globex"}}]},
        headers=headers,
    )
    assert globex.status_code == 200
    # protojson leaves out empty repeated fields and zero numbers
    assert "result" not in globex.json()
    assert "totalResult" not in globex.json()["details"]
    member = emulator.add_user(
        f"svc-both-{uuid.uuid4().hex[:6]}",
        roles=["ORG_USER_MANAGER"],
        key=True,
        memberships=[{"org": "globex", "roles": ["ORG_USER_MANAGER"]}],
    )
    both = access_token(emulator.issuer, member["key_file"])
    seen = httpx.post(
        emulator.issuer + URL, json={}, headers={"Authorization": f"Bearer {both}"}
    )
    assert sorted(o["name"] for o in seen.json()["result"]) == ["acme", "globex"]


def test_an_empty_name_query_fails_validation(emulator: Emulator) -> None:
    token = access_token(emulator.issuer, json.loads(emulator.admin_key_file.read_text()))
    response = httpx.post(
        emulator.issuer + URL,
        json={"queries": [{"nameQuery": {"name": ""}}]},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_argument"
    assert response.json()["message"] == (
        "invalid ListOrganizationsRequest.Queries[0]: embedded message failed validation | "
        "caused by: invalid SearchQuery.NameQuery: embedded message failed validation | "
        "caused by: invalid OrganizationNameQuery.Name: value length must be between 1 and "
        "200 runes, inclusive"
    )


def test_without_a_token_it_is_unauthenticated(emulator: Emulator) -> None:
    response = httpx.post(emulator.issuer + URL, json={})
    assert response.status_code == 401
