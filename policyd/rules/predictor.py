"""One state generation's predictor: which tenant, which route, then the relay rule.

``Predictor.predict(sender, recipient, final, now)`` is what ``serve``, ``check``, ``doctor``
and the other tools call, so they can never disagree. It picks the tenant (README: tenants):

- with ``[postfix]`` (a ``Router``), per final address, by the next hop of its route: the tenant
  whose ``endpoints`` globs match the host, else the only tenant, else the default tenant; a
  Microsoft 365 endpoint of no tenant is refused ``no-connector`` naming the endpoint;
- without it, per message, by the P1 sender domain: the tenant whose ``sender_domains`` list
  it (or a parent of it), else the only tenant, else the default tenant.

Each tenant is predicted with its own accepted domains and connectors and the certificate and
egress addresses that reach it (a ``[tenants.NAME] certificate`` without ``[postfix]``; the
route's service with it). Attributions are memoised per tenant until a certificate boundary.
Pure: ``now`` is passed in.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from policyd.constants import ACCEPT
from policyd.rules import predict
from policyd.rules.model import NamedTenant, OnPrem, normalize_domain, split_address
from policyd.rules.predict import RecipientPrediction
from policyd.rules.reasons import OTHER_ROUTE
from policyd.rules.relay import Router


def by_sender(tenants: Sequence[NamedTenant], sender: str) -> NamedTenant | None:
    """The tenant for mail from ``sender`` without ``[postfix]`` (see the module docstring)."""
    if len(tenants) == 1:
        return tenants[0]
    _, domain = split_address(sender) if sender else ("", "")
    name = normalize_domain(domain) if domain else ""
    while name:
        for tenant in tenants:
            if name in tenant.sender_domains:
                return tenant
        _, dot, name = name.partition(".")
        if not dot:
            break
    return default_of(tenants)


def by_host(tenants: Sequence[NamedTenant], host: str) -> NamedTenant | None:
    """The tenant a next-hop host reaches (see the module docstring)."""
    if len(tenants) == 1:
        return tenants[0]
    name = host.lower().rstrip(".")
    for tenant in tenants:
        if any(fnmatch.fnmatchcase(name, glob.lower()) for glob in tenant.endpoints):
            return tenant
    return default_of(tenants)


def default_of(tenants: Sequence[NamedTenant]) -> NamedTenant | None:
    """``default = true``, else the one tenant that claims nothing, else None."""
    marked = [t for t in tenants if t.default]
    if marked:
        return marked[0]
    unclaimed = [t for t in tenants if t.claims_nothing]
    return unclaimed[0] if len(unclaimed) == 1 else None


class Predictor:
    """Tenants, the on-premises picture and (with ``[postfix]``) the router of one state."""

    def __init__(
        self,
        tenants: Sequence[NamedTenant],
        onprem: OnPrem,
        router: Router | None = None,
    ) -> None:
        self.tenants = tuple(tenants)
        self.onprem = onprem
        self.router = router
        if router is not None:
            router.select = lambda host: by_host(self.tenants, host)
        self._attributions: dict[str, tuple[predict.Attribution, float]] = {}

    def onprem_for(self, tenant: NamedTenant) -> OnPrem:
        """What Postfix shows ``tenant`` without ``[postfix]``: its own certificate if it has
        one, else ``onprem.certificate``."""
        if tenant.certificate_path:
            return replace(self.onprem, certificate=tenant.certificate)
        return self.onprem

    def attribution(self, tenant: NamedTenant, now: datetime) -> predict.Attribution:
        """Steps 3 and 4 for ``tenant`` (without ``[postfix]``), memoised until a boundary."""
        cached = self._attributions.get(tenant.name)
        if cached is not None and now.timestamp() < cached[1]:
            return cached[0]
        attribution = predict.attribute(tenant.tenant, self.onprem_for(tenant), now)
        until = attribution.valid_until
        self._attributions[tenant.name] = (attribution, math.inf if until is None else until)
        return attribution

    def valid_until(self) -> float:
        """When the earliest memoised attribution expires (Unix time; inf when none)."""
        own = min((until for _, until in self._attributions.values()), default=math.inf)
        routed = self.router.valid_until() if self.router is not None else math.inf
        return min(own, routed)

    def predict(
        self, sender: str, recipient: str, final: Sequence[str], now: datetime
    ) -> tuple[RecipientPrediction, bool]:
        """(prediction, sender accepted or null) for one RCPT whose expansion is ``final``.

        Raises ``RouteLookupError`` when a routing table fails, ``RewriteLookupError`` when a
        table that rewrites the sender does.
        """
        tenant = by_sender(self.tenants, sender)
        if tenant is None and self.router is not None:
            tenant = self.tenants[0]  # each final address's route picks its own tenant
        if tenant is None:
            return _unclaimed(recipient, final, sender), True
        onprem = self.onprem_for(tenant)
        router = self.router
        # With [postfix]: cleanup(8)'s rewrite of the sender, once per request (routes and the
        # relay rule use the queued sender; each route adds its service's smtp_generic_maps).
        queued = router.queued(sender) if router is not None else None
        routed = router.for_queued(sender, queued, now) if router and queued else None
        view = predict.sender_view(sender, tenant.tenant, onprem, queued)
        prediction = predict.predict_recipient(
            recipient,
            final,
            sender=view,
            tenant=tenant.tenant,
            onprem=onprem,
            attribution=self.attribution(tenant, now),
            router=routed,
            tenant_name=tenant.name,
        )
        return prediction, view.null or bool(view.accepted_domain)


def _unclaimed(recipient: str, final: Sequence[str], sender: str) -> RecipientPrediction:
    """Several tenants, none claims the sender's domain and none is the default: the daemon
    cannot tell which tenant Postfix relays to, so it predicts no refusal and says why."""
    _, domain = split_address(sender) if sender else ("", "")
    addresses = tuple(
        predict.AddressPrediction(
            address,
            address.casefold() != recipient.casefold(),
            ACCEPT,
            OTHER_ROUTE,
            None,
            None,
            f"No [tenants.NAME] table claims the sender domain {domain or '(none)'} "
            "(sender_domains) and none is the default, so the daemon cannot tell which tenant "
            "Postfix relays this to: add the domain to a tenant's sender_domains.",
            relayed=False,
        )
        for address in (final or (recipient,))
    )
    return RecipientPrediction(recipient, addresses)
