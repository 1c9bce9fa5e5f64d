"""``targets[].org``: an organization by name or domain instead of its id.

Resolved through ZITADEL's v2 ``OrganizationService/ListOrganizations``
(the SDK's generated client), whatever ``zitadel.api`` the user calls go
through: the v1 Management API has no org search by name for an org-level
role.  ListOrganizations answers only orgs where the caller has ``org.read``
(every org role the rotator can work with has it), so "not found" also means
"not visible", and the error says both.

A reference is looked up once per process and cached: by name (exact; names
are unique in an instance), and by domain (case-insensitive; ZITADEL matches
any of the org's domains).  Both answers that name different orgs make the
reference ambiguous: the error lists them and asks for ``org_id``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rotator.errors import ZitadelNotFound, ZitadelRejected
from rotator.zitadel.visibility import ROLE, identity_of

METHOD = "OrganizationService.ListOrganizations"


@dataclass(frozen=True)
class Org:
    id: str
    name: str
    primary_domain: str


#: ``(name_matches, domain_matches)`` for a reference.
Lookup = Callable[[str], tuple[list[Org], list[Org]]]


class OrgDirectory:
    """Organization references to ids, each asked once (thread-safe)."""

    def __init__(self, lookup: Lookup, *, identity: Callable[[], str | None] = lambda: None):
        self._lookup = lookup
        self._identity = identity
        self._ids: dict[str, str] = {}
        self._lock = threading.Lock()

    def org_id(self, ref: str) -> str:
        with self._lock:
            if ref in self._ids:
                return self._ids[ref]
        found = decide(ref, *self._lookup(ref), identity=self._identity())
        with self._lock:
            self._ids[ref] = found.id
        return found.id


def decide(ref: str, by_name: list[Org], by_domain: list[Org], *, identity: str | None) -> Org:
    """The one org ``ref`` names, or an error that says why not and what to do."""
    candidates = {o.id: o for o in [*by_name, *by_domain]}
    if len(candidates) == 1:
        return next(iter(candidates.values()))
    if not candidates:
        who = f"the rotator's identity (user {identity})" if identity else "the rotator's identity"
        raise ZitadelNotFound(
            f"no organization named {ref!r} or with that domain is visible to {who}: it "
            f"does not exist, or the identity has no role there (grant it {ROLE} in that "
            "org), or give the target's org_id",
            code="not_found",
            method=METHOD,
        )
    shown = ", ".join(
        f"{o.id} (name {o.name!r}, domain {o.primary_domain!r})"
        for o in sorted(candidates.values(), key=lambda o: o.id)
    )
    raise ZitadelRejected(
        f"organization {ref!r} is ambiguous: it is the name or a domain of {len(candidates)} "
        f"orgs: {shown}; give the target's org_id",
        code="failed_precondition",
        method=METHOD,
    )


def sdk_lookup(
    issuer: str,
    token: Callable[[], str],
    *,
    timeout: float,
    options: Any = None,
    call: Callable[[Callable[[], Any]], Any] = lambda fn: fn(),
) -> Lookup:
    """A :data:`Lookup` over the SDK's OrganizationService client; ``call``
    wraps each request (the rotator's shared rate limiter)."""
    # Only when a target names an org, and only these modules (after the SDK slice).
    import urllib3  # noqa: PLC0415

    # The slice first (rotator/zitadel/sdk.py): the modules below load alone.
    from rotator.zitadel import sdk  # noqa: PLC0415
    from rotator.zitadel.v2 import api_error, no_answer  # noqa: PLC0415

    # isort: split
    from zitadel_client.api.organization_service_api import (  # noqa: PLC0415
        OrganizationServiceApi,
    )
    from zitadel_client.models.organization_service_list_organizations_request import (  # noqa: PLC0415
        OrganizationServiceListOrganizationsRequest,
    )
    from zitadel_client.models.organization_service_list_query import (  # noqa: PLC0415
        OrganizationServiceListQuery,
    )
    from zitadel_client.models.organization_service_organization_domain_query import (  # noqa: PLC0415
        OrganizationServiceOrganizationDomainQuery,
    )
    from zitadel_client.models.organization_service_organization_name_query import (  # noqa: PLC0415
        OrganizationServiceOrganizationNameQuery,
    )
    from zitadel_client.models.organization_service_search_query import (  # noqa: PLC0415
        OrganizationServiceSearchQuery,
    )
    from zitadel_client.models.organization_service_text_query_method import (  # noqa: PLC0415
        OrganizationServiceTextQueryMethod,
    )

    def client() -> tuple[Any, str]:
        current = token()
        config = sdk.Configuration(sdk.PersonalAccessTokenAuthenticator(issuer, current))
        if options is not None:
            config.default_headers = dict(options.default_headers)
            if options.ca_cert_path:
                config.ssl_ca_cert = options.ca_cert_path
            if options.insecure:
                config.verify_ssl = False
        return OrganizationServiceApi(sdk.ApiClient(configuration=config)), current

    def ask(query: Any, what: str) -> list[Org]:
        api, current = client()
        request = OrganizationServiceListOrganizationsRequest(
            query=OrganizationServiceListQuery(offset=0, limit=10, asc=True),
            queries=[query],
        )


        def once() -> Any:
            # converted here, inside ``call``: the limiter retries (and slows
            # down for) a 429 only when it sees ZitadelUnavailable
            try:
                return api.list_organizations(
                    request, _request_timeout=(min(5.0, timeout), timeout)
                )
            except sdk.ApiError as exc:
                raise api_error(exc, METHOD, what, current) from None
            except urllib3.exceptions.HTTPError as exc:
                raise no_answer(exc, METHOD, what) from exc

        response = call(once)
        return [
            Org(o.id, o.name or "", o.primary_domain or "") for o in response.result or [] if o.id
        ]

    def lookup(ref: str) -> tuple[list[Org], list[Org]]:
        equals = OrganizationServiceTextQueryMethod("TEXT_QUERY_METHOD_EQUALS")
        ignore_case = OrganizationServiceTextQueryMethod("TEXT_QUERY_METHOD_EQUALS_IGNORE_CASE")
        by_name = ask(
            OrganizationServiceSearchQuery(
                nameQuery=OrganizationServiceOrganizationNameQuery(name=ref, method=equals)
            ),
            f"find organization {ref!r} by name",
        )
        by_domain = ask(
            OrganizationServiceSearchQuery(
                domainQuery=OrganizationServiceOrganizationDomainQuery(
                    domain=ref, method=ignore_case
                )
            ),
            f"find organization {ref!r} by domain",
        )
        return by_name, by_domain

    return lookup


def directory(token_source: Any, lookup: Lookup) -> OrgDirectory:
    """An :class:`OrgDirectory` that names the rotator's identity in its errors."""
    return OrgDirectory(lookup, identity=lambda: identity_of(token_source))
