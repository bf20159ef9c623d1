"""The relay rule: what Microsoft 365 will answer for each recipient (550 5.7.64 lives here).

This module is SPEC §5 as pure functions over plain data: no reactor, no clock reads, no I/O.
The order of the checks below is the order of the spec; the reason ids, their enhanced status
codes and Microsoft's reply texts come from the one table in ``policyd.rules.reasons``.

Since November 2023 Exchange Online relays a message to a recipient outside the tenant only
when (a) the connection is attributed to an enabled OnPremises inbound connector, by the TLS
client certificate name or by the sending IPv4 address, and (b) the certificate's domain or the
envelope sender (P1 MAIL FROM) domain is an accepted domain. Sources and the open questions we
had to decide are in ``shared/reference/m365-relay-rules.md``; the decisions are marked
"Uncertain:" below.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from policyd.constants import ACCEPT, REJECT
from policyd.rules import endpoints
from policyd.rules.certnames import connector_name_matches, validity_problem
from policyd.rules.model import (
    DEFAULT_TENANT,
    InboundConnector,
    NamedTenant,
    OnPrem,
    Tenant,
    split_address,
)
from policyd.rules.reasons import (
    BY_ID,
    CERTIFICATE_CONNECTOR,
    DIRECT_SEND_REJECTED,
    FORWARDED,
    LOCAL,
    NO_CONNECTOR,
    NULL_SENDER,
    OTHER_ROUTE,
    RECIPIENT_IN_TENANT,
    SENDER_ACCEPTED_DOMAIN,
    SENDER_NOT_ACCEPTED,
    SRS_REWRITTEN,
)
from policyd.rules.routing import Route

# How the connection was attributed to a connector.
BY_CERTIFICATE = "certificate"
BY_IP = "ip"


@dataclass(frozen=True, slots=True)
class Attribution:
    """Step 3 and the certificate half of step 4: who Microsoft 365 thinks is sending.

    It depends only on the tenant, the on-premises side and the time, so it is computed once
    and reused for every recipient until ``valid_until`` (a certificate boundary) passes.
    """

    connector: InboundConnector | None  # None: no connector matches (5.7.64 TenantAttribution)
    method: str  # BY_CERTIFICATE, BY_IP or ""
    certificate_name: str = ""  # the certificate name that matched the connector
    certificate_domain: str = ""  # accepted domain that makes the certificate name pass step 4
    certificate_problem: str = ""  # why the certificate does not grant relay ("" when it does)
    ip_problem: str = ""  # why no egress address matched ("" when one did or it was not needed)
    egress_address: str = ""  # the egress address that matched, for method BY_IP
    valid_until: float | None = None  # Unix time after which this must be recomputed

    @property
    def certificate_grants_relay(self) -> bool:
        """Step 4: attributed by certificate, and the name is under an accepted domain."""
        return self.method == BY_CERTIFICATE and bool(self.certificate_domain)


@dataclass(frozen=True, slots=True)
class RouteContext:
    """Step 1 with ``[postfix]``: how Postfix delivers one final address, and what the
    delivering service presents to Microsoft 365 (``policyd.rules.relay.Router`` builds it)."""

    route: Route
    kind: str  # policyd.rules.endpoints kind of the next hop (RELAY, LEGACY, SUBMISSION, OTHER)
    onprem: OnPrem  # the certificate and egress addresses of the route's service
    attribution: Attribution  # steps 3 and 4 for that service
    certificate_from: str = ""  # where the certificate came from (main.cf / master.cf / toml)
    egress_from: str = ""  # where the egress addresses came from
    #: The tenant this next hop reaches; None for a Microsoft 365 endpoint of no tenant.
    tenant: NamedTenant | None = None

    @property
    def reaches_microsoft(self) -> bool:
        return self.route.relays and self.kind in (endpoints.RELAY, endpoints.LEGACY)


@dataclass(frozen=True, slots=True)
class Sender:
    """The envelope sender as Microsoft 365 will see it (P1 MAIL FROM)."""

    address: str  # as given; "" is the null sender
    domain: str  # normalised domain of ``address``, "" for the null sender or a bare local part
    p1_domain: str  # the domain Microsoft 365 sees, after SRS rewriting
    accepted_domain: str  # the accepted domain covering p1_domain, or ""
    srs_rewritten: bool  # SRS replaced the domain with ``srs_domain``

    @property
    def null(self) -> bool:
        return not self.address


@dataclass(frozen=True, slots=True)
class AddressPrediction:
    """The prediction for one final address (after alias expansion)."""

    address: str
    forwarded: bool  # the address came from alias expansion
    verdict: str  # ACCEPT or REJECT
    reason: str  # a reason id of policyd.rules.reasons
    code: str | None  # the reason's enhanced status code, None when Microsoft 365 accepts
    reply: str | None  # the SMTP reply Microsoft 365 would give, None when it accepts
    explanation: str  # one sentence: why, and what to change
    relayed: bool  # leaves through Microsoft 365 to a recipient outside the tenant
    #: The tenant's name (``default`` for a single [tenant]); None when the address does not
    #: go through Microsoft 365 (``local``, ``other-route``).
    tenant: str | None = None


@dataclass(frozen=True, slots=True)
class RecipientPrediction:
    """The prediction for one RCPT: refused if any of its final addresses is refused."""

    recipient: str
    addresses: tuple[AddressPrediction, ...]

    @property
    def final(self) -> tuple[str, ...]:
        return tuple(a.address for a in self.addresses)

    @property
    def deciding(self) -> AddressPrediction:
        """The first refused final address, else the first final address."""
        for address in self.addresses:
            if address.verdict == REJECT:
                return address
        return self.addresses[0]

    @property
    def verdict(self) -> str:
        return self.deciding.verdict

    @property
    def reason(self) -> str:
        return self.deciding.reason

    @property
    def code(self) -> str | None:
        return self.deciding.code

    @property
    def reply(self) -> str | None:
        return self.deciding.reply

    @property
    def explanation(self) -> str:
        return self.deciding.explanation

    @property
    def relayed(self) -> bool:
        """Some final address is relayed through Microsoft 365 to the internet."""
        return any(a.relayed for a in self.addresses)


# --- step 3 and 4: attribution -------------------------------------------------------------


def attribute(tenant: Tenant, onprem: OnPrem, now: datetime) -> Attribution:
    """Decide which connector, if any, Microsoft 365 attributes our connections to.

    The certificate is tried first, then the egress addresses: "first match wins" (SPEC §5
    step 3; Microsoft's attribution order MC1226222 puts the certificate domain first).
    """
    connectors = tenant.relay_connectors
    valid_until = _certificate_boundary(onprem, now)
    certificate_problem, matched_connector, matched_names = _certificate_match(
        connectors, onprem, now
    )
    if matched_connector is not None:
        name, domain, depth_problem = _certificate_domain(tenant, matched_names)
        return Attribution(
            connector=matched_connector,
            method=BY_CERTIFICATE,
            certificate_name=name,
            certificate_domain=domain,
            certificate_problem=depth_problem,
            valid_until=valid_until,
        )
    connector, egress, ip_problem = _ip_match(tenant, onprem)
    if connector is not None:
        return Attribution(
            connector=connector,
            method=BY_IP,
            certificate_problem=certificate_problem,
            egress_address=egress,
            valid_until=valid_until,
        )
    return Attribution(
        connector=None,
        method="",
        certificate_problem=certificate_problem,
        ip_problem=ip_problem,
        valid_until=valid_until,
    )


def _certificate_boundary(onprem: OnPrem, now: datetime) -> float | None:
    """The next instant at which the certificate's validity changes, as Unix time."""
    cert = onprem.certificate
    if cert is None or not cert.readable or cert.not_before is None or cert.not_after is None:
        return None
    if now < cert.not_before:
        return cert.not_before.timestamp()
    if now <= cert.not_after:
        # X.509 validity includes notAfter itself; it is invalid from the next second on.
        return cert.not_after.timestamp() + 1.0
    return None


def _certificate_match(
    connectors: Sequence[InboundConnector], onprem: OnPrem, now: datetime
) -> tuple[str, InboundConnector | None, tuple[str, ...]]:
    """Step 3, certificate path: (problem, matching connector, matching certificate names)."""
    cert = onprem.certificate
    if cert is None:
        if onprem.certificate_absent:
            return f"the certificate is {onprem.certificate_absent}", None, ()
        return "no certificate is configured (onprem.certificate)", None, ()
    if not cert.readable:
        return f"the certificate {cert.path} is {cert.error}", None, ()
    problem = validity_problem(cert, now)
    if problem:
        return f"the certificate {problem}", None, ()
    if cert.self_signed:
        return (
            "the certificate is self-signed; Microsoft 365 needs one issued by a public CA",
            None,
            (),
        )
    if not cert.chain_complete:
        detail = f" ({cert.chain_problem})" if cert.chain_problem else ""
        return (
            "the certificate's chain is incomplete"
            f"{detail}; put the intermediate certificates in the PEM after the leaf",
            None,
            (),
        )
    names = cert.names
    for connector in connectors:
        wanted = connector.tls_sender_certificate_name
        if not wanted:
            continue
        matched = tuple(n for n in names if connector_name_matches(wanted, n))
        if matched:
            return "", connector, matched
    expected = sorted({c.tls_sender_certificate_name for c in connectors} - {""})
    shown = ", ".join(names) or "none"
    if expected:
        return (
            f"no name matches connector: the certificate names {shown}, while enabled "
            f"OnPremises connectors expect {', '.join(expected)}",
            None,
            (),
        )
    return (
        f"no name matches connector: no enabled OnPremises connector has a "
        f"TlsSenderCertificateName (certificate names: {shown})",
        None,
        (),
    )


def _certificate_domain(tenant: Tenant, names: Sequence[str]) -> tuple[str, str, str]:
    """Step 4: (name, accepted domain it sits under, problem) for the matching names.

    A name passes when it is an accepted domain or exactly one label below one
    (``mail.contoso.com`` passes with ``contoso.com`` accepted, ``mail.eu.contoso.com`` does not;
    Microsoft's ATTR36 article). Uncertain: for a wildcard certificate name we count the ``*``
    as the host label, so ``*.contoso.com`` passes with ``contoso.com`` accepted and
    ``*.eu.contoso.com`` needs ``eu.contoso.com``.
    """
    for name in names:
        domain = certificate_name_domain(tenant, name)
        if domain:
            return name, domain, ""
    name = names[0]
    base = name[2:] if name.startswith("*.") else _parent(name)
    under = next((d.domain for d in tenant.accepted_domains if base.endswith("." + d.domain)), "")
    if under:
        detail = (
            f"{name} is more than one label below the accepted domain {under} "
            f"(add {base} as an accepted domain)"
        )
    else:
        detail = (
            f"{name} is not under any accepted domain (add {base or name} to the tenant, or use "
            "a certificate named under an accepted domain)"
        )
    return (
        name,
        "",
        f"the certificate does not qualify, name not under an accepted domain: {detail}",
    )


def certificate_name_domain(tenant: Tenant, name: str) -> str:
    """The accepted domain that makes certificate ``name`` pass step 4, or ""."""
    if name.startswith("*."):
        return tenant.accepted_domain_for(name[2:]) or ""
    own = tenant.accepted_domain_for(name)
    if own:
        return own
    parent = _parent(name)
    return (tenant.accepted_domain_for(parent) or "") if parent else ""


def _parent(name: str) -> str:
    """``mail.contoso.com`` → ``contoso.com``; a single label has no parent."""
    _, dot, rest = name.partition(".")
    return rest if dot else ""


def _ip_match(tenant: Tenant, onprem: OnPrem) -> tuple[InboundConnector | None, str, str]:
    """Step 3, IP path: (connector, egress address, problem)."""
    if not onprem.egress_addresses:
        return None, "", "no egress address is configured (onprem.egress_addresses)"
    problems: list[str] = []
    for address in onprem.egress_addresses:
        if not isinstance(address, ipaddress.IPv4Address):
            problems.append(
                f"egress address {address} is IPv6, and connectors match IPv4 addresses only"
            )
            continue
        for connector in tenant.relay_connectors:
            if any(address in network for network in connector.sender_ip_addresses):
                return connector, str(address), ""
        near = [
            c
            for c in tenant.connectors
            if not c.grants_relay and any(address in n for n in c.sender_ip_addresses)
        ]
        hint = "".join(f"; connector '{c.name}' lists it but {_why_inert(c)}" for c in near)
        problems.append(
            f"egress address {address} is in no enabled OnPremises connector's "
            f"SenderIPAddresses{hint}"
        )
    return None, "", "; ".join(problems)


def _why_inert(connector: InboundConnector) -> str:
    if not connector.enabled:
        return "is disabled"
    return f"is a {connector.connector_type} connector, which never grants relay"


# --- the sender ----------------------------------------------------------------------------


def sender_view(sender: str, tenant: Tenant, onprem: OnPrem) -> Sender:
    """What Microsoft 365 sees as P1 MAIL FROM, SRS included (SPEC §5 step 5).

    Uncertain: postsrsd rewrites every sender outside its excluded domains. We assume the
    administrator excludes the accepted domains (the usual setup), so a sender already in an
    accepted domain keeps it; any other non-null sender is rewritten into ``srs_domain``.
    """
    _, domain = split_address(sender) if sender else ("", "")
    accepted = tenant.accepted_domain_for(domain) if domain else None
    if accepted or not sender or not onprem.srs_domain:
        return Sender(sender, domain, domain, accepted or "", False)
    srs = onprem.srs_domain
    return Sender(sender, domain, srs, tenant.accepted_domain_for(srs) or "", True)


# --- steps 1 to 6 for one address -----------------------------------------------------------


def predict_address(
    address: str,
    *,
    forwarded: bool,
    sender: Sender,
    tenant: Tenant,
    onprem: OnPrem,
    attribution: Attribution,
    route: RouteContext | None = None,
    tenant_name: str = DEFAULT_TENANT,
) -> AddressPrediction:
    """Apply SPEC §5 steps 1-6 to one final address.

    ``route`` (with ``[postfix]``) is how Postfix delivers it; its tenant, and its service's
    certificate and egress addresses, then replace ``tenant``, ``onprem`` and ``attribution``.
    ``tenant_name`` names ``tenant`` in the result.
    """
    if route is not None:
        routed = _routed_elsewhere(address, forwarded, route)
        if routed is not None:
            return routed
        chosen = route.tenant
        if chosen is None:
            return _unknown_endpoint(address, forwarded, route)
        tenant, onprem, attribution = chosen.tenant, route.onprem, route.attribution
        sender = sender_view(sender.address, tenant, onprem)
        tenant_name = chosen.name
    found = _steps(address, forwarded, sender, tenant, onprem, attribution)
    if found.reason == LOCAL:
        return found
    return replace(found, tenant=tenant_name)


def _steps(  # noqa: PLR0917 - the inputs of the rule, in the order of its steps
    address: str,
    forwarded: bool,
    sender: Sender,
    tenant: Tenant,
    onprem: OnPrem,
    attribution: Attribution,
) -> AddressPrediction:
    """SPEC §5 steps 1 (local_domains) and 2-6 for one final address."""
    _, domain = split_address(address)

    # 1. Delivered by Postfix itself. A bare local name (an alias result without "@") gets
    #    "@$myorigin" appended by Postfix, which is a local domain in practice.
    if not domain or domain in onprem.local_domains:
        return AddressPrediction(
            address,
            forwarded,
            ACCEPT,
            LOCAL,
            None,
            None,
            f"{address} is delivered by Postfix itself (onprem.local_domains), "
            "not relayed through Microsoft 365.",
            relayed=False,
        )

    # 2. Delivered into the tenant: not a relay, except under RejectDirectSend.
    tenant_domain = tenant.accepted_domain_for(domain)
    if tenant_domain:
        if tenant.reject_direct_send and attribution.connector is None and sender.accepted_domain:
            return _refused(
                address,
                forwarded,
                DIRECT_SEND_REJECTED,
                f"The tenant rejects Direct Send and no connector matches this server while the "
                f"sender's domain {sender.p1_domain} is accepted: fix the connector "
                f"({_attribution_problem(attribution)}) or turn RejectDirectSend off.",
                relayed=False,
            )
        return AddressPrediction(
            address,
            forwarded,
            ACCEPT,
            RECIPIENT_IN_TENANT,
            None,
            None,
            f"{domain} is an accepted domain ({tenant_domain}), so Microsoft 365 delivers to "
            f"{address} inside the tenant; the relay rule does not apply.",
            relayed=False,
        )

    # 3. No connector attributes the connection.
    if attribution.connector is None:
        return _refused(
            address,
            forwarded,
            NO_CONNECTOR,
            f"No enabled OnPremises connector matches this server: "
            f"{_attribution_problem(attribution)}. {BY_ID[NO_CONNECTOR].fix}",
            relayed=True,
        )
    connector = attribution.connector.name

    # 4. Certificate connector whose name sits under an accepted domain: any sender relays.
    if attribution.certificate_grants_relay:
        return AddressPrediction(
            address,
            forwarded,
            ACCEPT,
            CERTIFICATE_CONNECTOR,
            None,
            None,
            f"Connector '{connector}' matches the certificate name "
            f"{attribution.certificate_name}, which is under the accepted domain "
            f"{attribution.certificate_domain}, so every sender may relay.",
            relayed=True,
        )

    matched = _matched_by(attribution)

    # 5. The P1 sender domain (after SRS) is accepted.
    if sender.accepted_domain:
        if sender.srs_rewritten:
            return AddressPrediction(
                address,
                forwarded,
                ACCEPT,
                SRS_REWRITTEN,
                None,
                None,
                f"Connector '{connector}' matches {matched}, and SRS rewrites the sender "
                f"domain {sender.domain} into {sender.p1_domain}, an accepted domain.",
                relayed=True,
            )
        return AddressPrediction(
            address,
            forwarded,
            ACCEPT,
            SENDER_ACCEPTED_DOMAIN,
            None,
            None,
            f"Connector '{connector}' matches {matched}, and the sender's domain "
            f"{sender.p1_domain} is an accepted domain.",
            relayed=True,
        )

    # 6. Attributed, but neither the certificate domain nor the sender domain is accepted.
    cert_problem = attribution.certificate_problem or "no certificate grants relay"
    if sender.null:
        reason = NULL_SENDER
        why = (
            f"Connector '{connector}' matches {matched}, but a null-sender message (bounce or "
            "auto-reply) relays only through a certificate connector whose certificate name is "
            f"under an accepted domain; here {cert_problem}."
        )
    elif forwarded:
        reason = FORWARDED
        why = (
            f"{address} is a forward and the original sender's domain {_p1_text(sender)} is "
            f"not accepted, while {cert_problem}; present a certificate named under an accepted "
            "domain, or rewrite forwarded senders with SRS into an accepted domain "
            "(onprem.srs_domain)."
        )
    else:
        reason = SENDER_NOT_ACCEPTED
        why = (
            f"Connector '{connector}' matches {matched}, but the sender's domain "
            f"{_p1_text(sender)} is not an accepted domain, while {cert_problem}; send as an "
            "accepted domain, add the domain to the tenant, or present a certificate named "
            "under an accepted domain."
        )
    return _refused(address, forwarded, reason, why, relayed=True)


def _refused(
    address: str, forwarded: bool, reason: str, explanation: str, *, relayed: bool
) -> AddressPrediction:
    """A refusal with ``reason``'s code and Microsoft's reply text from the reasons table."""
    words = BY_ID[reason]
    return AddressPrediction(
        address, forwarded, REJECT, reason, words.code, words.reply, explanation, relayed
    )


def _attribution_problem(attribution: Attribution) -> str:
    parts = [p for p in (attribution.certificate_problem, attribution.ip_problem) if p]
    return "; ".join(parts) or "no connector matches"


def _matched_by(attribution: Attribution) -> str:
    if attribution.method == BY_CERTIFICATE:
        return f"the certificate name {attribution.certificate_name}"
    return f"the egress address {attribution.egress_address}"


def _p1_text(sender: Sender) -> str:
    if sender.srs_rewritten:
        return f"{sender.p1_domain} (SRS rewrite of {sender.domain})"
    return sender.p1_domain or f"of <{sender.address}>"


# --- a whole recipient ------------------------------------------------------------------------


def _unknown_endpoint(address: str, forwarded: bool, context: RouteContext) -> AddressPrediction:
    """With several tenants, a Microsoft 365 endpoint that no tenant's endpoints name."""
    words = BY_ID[NO_CONNECTOR]
    route = context.route
    return AddressPrediction(
        address,
        forwarded,
        REJECT,
        NO_CONNECTOR,
        words.code,
        words.reply,
        f"Postfix sends {address} to the Microsoft 365 endpoint {route.nexthop} (master.cf "
        f"service {route.transport}), which no [tenants.NAME] table lists in endpoints: no "
        "configured tenant has a connector for it. Add the endpoint to its tenant's endpoints.",
        relayed=True,
    )


def _routed_elsewhere(
    address: str, forwarded: bool, context: RouteContext
) -> AddressPrediction | None:
    """Step 1 with a route: delivered by Postfix itself, or sent around Microsoft 365."""
    route = context.route
    decided = f" ({route.steps[-1]})" if route.steps else ""
    if not route.relays:
        return AddressPrediction(
            address,
            forwarded,
            ACCEPT,
            LOCAL,
            None,
            None,
            f"{address} is delivered by Postfix itself through master.cf service "
            f"{route.transport} ({route.command or 'not in master.cf'}, address class "
            f"{route.address_class}){decided}, not relayed through Microsoft 365.",
            relayed=False,
        )
    if context.kind == endpoints.SUBMISSION:
        return AddressPrediction(
            address,
            forwarded,
            ACCEPT,
            OTHER_ROUTE,
            None,
            None,
            f"Postfix sends {address} to {route.nexthop}, Microsoft 365's client-submission "
            f"endpoint{decided}: SMTP AUTH decides there, not connectors, so the relay rule "
            "does not apply.",
            relayed=False,
        )
    if context.kind == endpoints.OTHER:
        return AddressPrediction(
            address,
            forwarded,
            ACCEPT,
            OTHER_ROUTE,
            None,
            None,
            f"Postfix sends {address} to {route.nexthop} through master.cf service "
            f"{route.transport}{decided}, which is not a Microsoft 365 endpoint: not relayed "
            "through Microsoft 365.",
            relayed=False,
        )
    return None


def predict_recipient(
    recipient: str,
    final: Sequence[str],
    *,
    sender: Sender,
    tenant: Tenant,
    onprem: OnPrem,
    attribution: Attribution,
    router: Callable[[str], RouteContext] | None = None,
    tenant_name: str = DEFAULT_TENANT,
) -> RecipientPrediction:
    """Predict one RCPT from its final addresses (the alias expansion of ``recipient``).

    ``router`` (with ``[postfix]``) gives each final address's route; see ``predict_address``.

    A final address counts as forwarded when it is not the recipient itself (compared without
    regard to case); an address that the alias maps expand into itself is therefore not a forward.
    """
    original = recipient.casefold()
    addresses = tuple(
        predict_address(
            address,
            forwarded=address.casefold() != original,
            sender=sender,
            tenant=tenant,
            onprem=onprem,
            attribution=attribution,
            route=router(address) if router is not None else None,
            tenant_name=tenant_name,
        )
        for address in (final or (recipient,))
    )
    return RecipientPrediction(recipient, addresses)
