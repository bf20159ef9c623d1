"""Step 1 with ``[postfix]``: from a final address to its route and the attribution of the
service that carries it. Pure (the ``now`` is injected); memoises per service.

``Router.context(sender, address, now)`` rewrites the sender as cleanup(8) queues it
(``policyd.rules.rewrite``), resolves the route with that queued sender
(``policyd.rules.routing``), classifies its next hop (``policyd.rules.endpoints``) and, for a
route to Microsoft 365, attaches the on-premises picture of the delivering master.cf service (its
certificate and egress addresses, built by ``policyd.sources.state``) with that service's
connector attribution, and the sender that service writes in MAIL FROM (``smtp_generic_maps``).
The TLS level for the route's next hop (``smtp_tls_policy_maps``, else the service's
``smtp_tls_security_level``) decides whether that certificate is presented at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from policyd.rules import endpoints, predict, submission
from policyd.rules.model import DEFAULT_TENANT, NamedTenant, OnPrem, Tenant
from policyd.rules.rewrite import Listener, SenderRewrite, cleanup_sender, generic_sender
from policyd.rules.routing import NO_TLS_LEVELS, ClientTls, PostfixView, client_tls, resolve

#: Next hops whose TLS level a Router remembers before it starts over (a bound, not a tuning).
TLS_MEMO_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class ServicePicture:
    """What one smtp(8) service shows Microsoft 365, with where each value came from."""

    onprem: OnPrem
    certificate_from: str
    egress_from: str

    def without_tls(self, tls: ClientTls) -> ServicePicture:
        """The same service towards a next hop where ``tls.level`` is ``none`` (or empty):
        smtp(8) never starts TLS there, so no certificate is presented (smtp(8))."""
        absent = tls.not_presented_because
        onprem = replace(self.onprem, certificate=None, certificate_absent=absent)
        return ServicePicture(onprem, tls.level_from, self.egress_from)


class Router:
    """Routes final addresses of one state generation; see the module docstring.

    ``services`` maps master.cf service names to their picture; a service that is missing
    (not an smtp service at load time) is predicted with ``fallback``. ``listener`` is the smtpd
    listener whose cleanup settings rewrite the sender (None: main.cf's).
    """

    def __init__(
        self,
        view: PostfixView,
        services: Mapping[str, ServicePicture],
        fallback: ServicePicture,
        tenant: Tenant,
        *,
        endpoint_globs: tuple[str, ...] = (),
        uses_subprocess: bool = False,
        send_as: submission.SendAs | None = None,
        listener: Listener | None = None,
    ) -> None:
        self.view = view
        #: ``[submission] send_as`` for client-submission routes (SPEC §5.4).
        self.send_as: submission.SendAs = send_as or {}
        self.listener = listener
        self.services = dict(services)
        self.fallback = fallback
        self.tenant = tenant
        self.endpoint_globs = endpoint_globs
        only = NamedTenant(DEFAULT_TENANT, tenant, endpoint_globs, default=True)
        #: Which tenant a next-hop host reaches; ``policyd.rules.predictor`` sets it for
        #: several tenants (None: a Microsoft 365 endpoint of no configured tenant).
        self.select: Callable[[str], NamedTenant | None] = lambda host: only
        #: Lookups may block on ``postmap -q``: run ``context`` off the reactor thread then.
        self.uses_subprocess = uses_subprocess
        self._attributions: dict[tuple[str, str, bool], tuple[predict.Attribution, float]] = {}
        self._tls: dict[tuple[str, str], ClientTls] = {}

    def retuned(self, change: Callable[[Tenant], Tenant]) -> Router:
        """The same routes and services with every tenant passed through ``change`` (``doctor
        --probe`` predicts under another assumption with it); its own empty memo."""
        other = Router(
            self.view,
            self.services,
            self.fallback,
            change(self.tenant),
            endpoint_globs=self.endpoint_globs,
            uses_subprocess=self.uses_subprocess,
            send_as=self.send_as,
            listener=self.listener,
        )
        select = self.select

        def changed(host: str) -> NamedTenant | None:
            named = select(host)
            return None if named is None else replace(named, tenant=change(named.tenant))

        other.select = changed
        return other

    def picture(self, service: str) -> ServicePicture:
        return self.services.get(service, self.fallback)

    def client_tls(self, service: str, nexthop: str) -> ClientTls:
        """``policyd.rules.routing.client_tls`` for ``service`` towards ``nexthop``, memoised
        for this generation. Raises ``RouteLookupError`` when ``smtp_tls_policy_maps`` fails."""
        key = (service, nexthop)
        found = self._tls.get(key)
        if found is None:
            if len(self._tls) >= TLS_MEMO_LIMIT:
                self._tls.clear()
            found = self._tls[key] = client_tls(self.view, service, nexthop)
        return found

    def route_picture(self, service: str, nexthop: str) -> tuple[ServicePicture, bool]:
        """(picture, uses TLS) of ``service`` towards ``nexthop``: without TLS (level ``none``
        for that next hop) the service presents no certificate."""
        picture = self.picture(service)
        if service not in self.services:
            return picture, True
        tls = self.client_tls(service, nexthop)
        if tls.level in NO_TLS_LEVELS:
            return picture.without_tls(tls), False
        return picture, True

    def attribution(
        self,
        service: str,
        now: datetime,
        tenant: NamedTenant | None = None,
        *,
        nexthop: str = "",
    ) -> predict.Attribution:
        """Steps 3 and 4 for ``service`` towards ``tenant`` (default: the single tenant) over
        ``nexthop`` ("" = the service's own TLS level), recomputed when a certificate boundary
        passes."""
        picture, uses_tls = self.route_picture(service, nexthop)
        key = (service, tenant.name if tenant is not None else "", uses_tls)
        cached = self._attributions.get(key)
        stamp = now.timestamp()
        if cached is not None and stamp < cached[1]:
            return cached[0]
        target = tenant.tenant if tenant is not None else self.tenant
        attribution = predict.attribute(target, picture.onprem, now)
        until = attribution.valid_until
        self._attributions[key] = (attribution, math.inf if until is None else until)
        return attribution

    def valid_until(self) -> float:
        """The earliest instant a memoised attribution expires (Unix time; inf when none)."""
        return min((until for _, until in self._attributions.values()), default=math.inf)

    def queued(self, sender: str) -> SenderRewrite:
        """The sender as cleanup(8) queues it; raises ``RewriteLookupError``."""
        return cleanup_sender(self.view, sender, self.listener)

    def context(
        self, sender: str, address: str, now: datetime, queued: SenderRewrite | None = None
    ) -> predict.RouteContext:
        """The route of ``address`` for mail from ``sender`` with its service's attribution and
        the sender that service writes. ``queued``: ``self.queued(sender)`` when known.

        Raises ``RouteLookupError`` when a routing table fails, ``RewriteLookupError`` when a
        rewriting table does.
        """
        if queued is None:
            queued = self.queued(sender)
        route = resolve(self.view, queued.after, address)
        kind = (
            endpoints.classify_nexthop(route.nexthop, self.endpoint_globs)
            if route.relays
            else endpoints.OTHER
        )
        hops = endpoints.parse_nexthop(route.nexthop)
        tenant = self.select(hops[0].host) if hops and kind != endpoints.OTHER else None
        # The TLS level matters only towards Microsoft 365: other next hops are not asked.
        nexthop = route.nexthop if kind != endpoints.OTHER else ""
        picture, _ = self.route_picture(route.transport, nexthop)
        seen = queued.then(generic_sender(self.view, route.transport, queued.after))
        return predict.RouteContext(
            route,
            kind,
            picture.onprem,
            self.attribution(route.transport, now, tenant, nexthop=nexthop),
            picture.certificate_from,
            picture.egress_from,
            tenant,
            self._submission(route.transport, route.nexthop)
            if kind == endpoints.SUBMISSION
            else None,
            seen,
        )

    def _submission(self, service: str, nexthop: str) -> submission.SubmissionRoute:
        """What SPEC §5.4 needs for a route to a client-submission endpoint."""
        sasl = submission.sasl_settings(self.view, service)
        return submission.SubmissionRoute(self.view, sasl, nexthop, self.send_as)

    def for_sender(self, sender: str, now: datetime) -> Callable[[str], predict.RouteContext]:
        """``predict.predict_recipient``'s ``router`` argument for one sender."""
        return self.for_queued(sender, self.queued(sender), now)

    def for_queued(
        self, sender: str, queued: SenderRewrite, now: datetime
    ) -> Callable[[str], predict.RouteContext]:
        """``for_sender`` with cleanup's rewrite of ``sender`` already made (``queued``)."""

        def route(address: str) -> predict.RouteContext:
            return self.context(sender, address, now, queued)

        return route
