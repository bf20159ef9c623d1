"""Who Microsoft 365 thinks is sending: step 3, the certificate half of step 4, and the
Partner connectors that step 2 asks about. Pure; the time is an argument.

``attribute(tenant, onprem, now)`` depends only on the tenant, the on-premises side (the
certificate and egress addresses a route presents) and the time, so callers compute it once and
reuse it for every recipient until ``valid_until`` (a certificate boundary) passes. It answers:

- which enabled **OnPremises** connector attributes the connection (certificate first, then the
  egress IPv4 address: "first match wins"; Microsoft's attribution order MC1226222 puts the
  certificate domain first), and whether the certificate name passes step 4;
- which enabled **Partner** connector the connection matches (by IP or certificate: such mail is
  authenticated, not Direct Send; MC1093237), and which restricting Partner connectors
  (``RestrictDomainsToIPAddresses`` / ``RestrictDomainsToCertificate``) it does not satisfy;
- which named assumptions (``policyd.rules.assumptions``) it passed on the way, with
  the attribution under each one's other setting, so the prediction can tell whether its answer
  depends on them.

A restricting connector that sets both restrictions is satisfied only when both hold (our
reading: each restriction rejects on its own). Partner connectors are matched by certificate
name with the same rules as OnPremises ones, except the host-name assumption, which concerns
the OnPremises relay connector (KB 3169958's note to Hybrid Configuration Wizard users).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from policyd.rules.assumptions import (
    HOST_CONNECTOR_NAME_MUST_BE_ACCEPTED,
    MATCH_SUBDOMAINS_COVERS_SENDERS,
    SAN_NAMES_COUNT,
    WILDCARD_CONNECTOR_COVERS_APEX,
    ordered,
)
from policyd.rules.certnames import APEX, NO_MATCH, name_match, san_only, validity_problem
from policyd.rules.model import CertificateFacts, InboundConnector, OnPrem, Tenant

# How the connection was attributed to a connector.
BY_CERTIFICATE = "certificate"
BY_IP = "ip"


@dataclass(frozen=True, slots=True)
class PartnerRestriction:
    """A restricting Partner connector this server does not satisfy, and why."""

    connector: InboundConnector
    unmet: str  # "the egress address 203.0.113.71 is not in its SenderIPAddresses (...)"


@dataclass(frozen=True, slots=True)
class Attribution:
    """Step 3 and the certificate half of step 4, with the Partner facts step 2 needs.

    It depends only on the tenant, the on-premises side and the time, so it is computed once
    and reused for every recipient until ``valid_until`` (a certificate boundary) passes.
    """

    connector: InboundConnector | None  # None: no OnPremises connector matches
    method: str  # BY_CERTIFICATE, BY_IP or ""
    certificate_name: str = ""  # the certificate name that matched the connector
    certificate_domain: str = ""  # accepted domain that makes the certificate name pass step 4
    certificate_problem: str = ""  # why the certificate does not grant relay ("" when it does)
    ip_problem: str = ""  # why no egress address matched ("" when one did or it was not needed)
    egress_address: str = ""  # the egress address that matched, for method BY_IP
    valid_until: float | None = None  # Unix time after which this must be recomputed
    #: The first enabled Partner connector this server matches, and how ("the egress address
    #: 203.0.113.71", "the certificate name mail.contoso.com").
    partner: InboundConnector | None = None
    partner_match: str = ""
    #: Enabled Partner connectors with RestrictDomainsTo* that this server does not satisfy.
    restrictions: tuple[PartnerRestriction, ...] = ()
    #: The assumption keys this attribution passed on the way (docs/relay-rules.md).
    doubts: frozenset[str] = frozenset()
    #: The attribution under each key of ``doubts`` set the other way.
    flips: tuple[tuple[str, Attribution], ...] = ()

    @property
    def certificate_grants_relay(self) -> bool:
        """Step 4: attributed by certificate, and the name is under an accepted domain."""
        return self.method == BY_CERTIFICATE and bool(self.certificate_domain)

    def flipped(self, key: str) -> Attribution:
        """This attribution with assumption ``key`` set the other way (itself if it does not
        depend on ``key``)."""
        for flipped_key, other in self.flips:
            if flipped_key == key:
                return other
        return self


def attribute(tenant: Tenant, onprem: OnPrem, now: datetime, *, flips: bool = True) -> Attribution:
    """Decide which connectors, if any, Microsoft 365 attributes our connections to.

    The certificate is tried first, then the egress addresses: "first match wins" (step 3
    step 3). With ``flips`` the attribution under each passed assumption's other setting is
    computed too (``Attribution.flips``).
    """
    doubts: set[str] = set()
    valid_until = _certificate_boundary(onprem, now)
    certificate_problem = _certificate_problem(onprem, now)
    certificate = onprem.certificate if not certificate_problem else None
    partner, partner_match, restrictions = _partners(tenant, onprem, certificate, doubts)
    attribution: Attribution
    matched_connector: InboundConnector | None = None
    matched_names: tuple[str, ...] = ()
    if certificate is not None:
        certificate_problem, matched_connector, matched_names = _certificate_match(
            tenant, certificate, doubts
        )
    if matched_connector is not None:
        name, domain, depth_problem = _certificate_domain(tenant, matched_names, doubts)
        attribution = Attribution(
            connector=matched_connector,
            method=BY_CERTIFICATE,
            certificate_name=name,
            certificate_domain=domain,
            certificate_problem=depth_problem,
        )
    else:
        connector, egress, ip_problem = _ip_match(tenant, onprem)
        attribution = Attribution(
            connector=connector,
            method=BY_IP if connector is not None else "",
            certificate_problem=certificate_problem,
            ip_problem=ip_problem,
            egress_address=egress,
        )
    frozen = frozenset(doubts)
    other: tuple[tuple[str, Attribution], ...] = ()
    if flips and frozen:
        other = tuple(
            (key, attribute(tenant.flipped(key), onprem, now, flips=False))
            for key in ordered(frozen)
        )
    return replace(
        attribution,
        valid_until=valid_until,
        partner=partner,
        partner_match=partner_match,
        restrictions=restrictions,
        doubts=frozen,
        flips=other,
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


def _certificate_problem(onprem: OnPrem, now: datetime) -> str:
    """Why the certificate cannot attribute anything ("" when it is usable)."""
    cert = onprem.certificate
    if cert is None:
        if onprem.certificate_absent:
            return f"the certificate is {onprem.certificate_absent}"
        return "no certificate is configured (onprem.certificate)"
    if not cert.readable:
        return f"the certificate {cert.path} is {cert.error}"
    problem = validity_problem(cert, now)
    if problem:
        return f"the certificate {problem}"
    if cert.self_signed:
        return "the certificate is self-signed; Microsoft 365 needs one issued by a public CA"
    if not cert.chain_complete:
        detail = f" ({cert.chain_problem})" if cert.chain_problem else ""
        return (
            "the certificate's chain is incomplete"
            f"{detail}; put the intermediate certificates in the PEM after the leaf"
        )
    return ""


def connector_names(
    tenant: Tenant,
    connector: InboundConnector,
    cert: CertificateFacts,
    doubts: set[str],
    *,
    host_rule: bool = True,
) -> tuple[str, ...]:
    """The certificate names that make ``connector`` match under the tenant's assumptions.

    Adds to ``doubts`` every assumption key passed on the way: a wildcard connector's apex
    (``wildcard_connector_covers_apex``), a name that is only a SAN (``san_names_count``), and
    with ``host_rule`` (OnPremises connectors) a host-name connector value that is not itself an
    accepted domain (``host_connector_name_must_be_accepted``).
    """
    wanted = connector.tls_sender_certificate_name
    if not wanted:
        return ()
    settings = tenant.assumptions
    matched: list[str] = []
    potential = False
    for name in cert.names:
        kind = name_match(wanted, name)
        if kind == NO_MATCH:
            continue
        potential = True
        counts = True
        if kind == APEX:
            doubts.add(WILDCARD_CONNECTOR_COVERS_APEX)
            counts = counts and settings.wildcard_connector_covers_apex
        if san_only(cert, name):
            doubts.add(SAN_NAMES_COUNT)
            counts = counts and settings.san_names_count
        if counts:
            matched.append(name)
    if potential and host_rule and not wanted.startswith("*."):
        accepted, doubtful = tenant.domain_for_sender(wanted)
        if doubtful:
            doubts.add(MATCH_SUBDOMAINS_COVERS_SENDERS)
        if not accepted:
            doubts.add(HOST_CONNECTOR_NAME_MUST_BE_ACCEPTED)
            if settings.host_connector_name_must_be_accepted:
                return ()
    return tuple(matched)


def _certificate_match(
    tenant: Tenant, cert: CertificateFacts, doubts: set[str]
) -> tuple[str, InboundConnector | None, tuple[str, ...]]:
    """Step 3, certificate path: (problem, matching connector, matching certificate names)."""
    connectors = tenant.relay_connectors
    for connector in connectors:
        matched = connector_names(tenant, connector, cert, doubts)
        if matched:
            return "", connector, matched
    expected = sorted({c.tls_sender_certificate_name for c in connectors} - {""})
    shown = ", ".join(cert.names) or "none"
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


def _certificate_domain(
    tenant: Tenant, names: Sequence[str], doubts: set[str]
) -> tuple[str, str, str]:
    """Step 4: (name, accepted domain it sits under, problem) for the matching names.

    A name passes when it is an accepted domain or exactly one label below one
    (``mail.contoso.com`` passes with ``contoso.com`` accepted, ``mail.eu.contoso.com`` does not;
    Microsoft's ATTR36 article). For a wildcard certificate name the ``*`` counts as the host
    label (relay-rules.md step 4), so ``*.contoso.com`` passes with ``contoso.com`` accepted and
    ``*.eu.contoso.com`` needs ``eu.contoso.com``.
    """
    for name in names:
        domain, doubtful = certificate_name_acceptance(tenant, name)
        if doubtful:
            doubts.add(MATCH_SUBDOMAINS_COVERS_SENDERS)
        if domain:
            return name, domain, ""
    name = names[0]
    base = name[2:] if name.startswith("*.") else parent(name)
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


def certificate_name_acceptance(tenant: Tenant, name: str) -> tuple[str, bool]:
    """(accepted domain that makes certificate ``name`` pass step 4 or "", doubtful): doubtful
    when a ``MatchSubDomains`` parent decides (``match_subdomains_covers_senders``)."""
    if name.startswith("*."):
        return tenant.domain_for_sender(name[2:])
    own, own_doubt = tenant.domain_for_sender(name)
    if own:
        return own, own_doubt
    above = parent(name)
    if not above:
        return "", own_doubt
    domain, doubt = tenant.domain_for_sender(above)
    return domain, own_doubt or doubt


def certificate_name_domain(tenant: Tenant, name: str) -> str:
    """The accepted domain that makes certificate ``name`` pass step 4, or ""."""
    return certificate_name_acceptance(tenant, name)[0]


def parent(name: str) -> str:
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


# --- Partner connectors (step 2) -------------------------------------------------------------


def _partners(
    tenant: Tenant, onprem: OnPrem, certificate: CertificateFacts | None, doubts: set[str]
) -> tuple[InboundConnector | None, str, tuple[PartnerRestriction, ...]]:
    """(first Partner connector this server matches, how, restrictions it does not satisfy)."""
    partner: InboundConnector | None = None
    how = ""
    restrictions: list[PartnerRestriction] = []
    for connector in tenant.partner_connectors:
        address = egress_in(connector, onprem)
        names = (
            connector_names(tenant, connector, certificate, doubts, host_rule=False)
            if certificate is not None
            else ()
        )
        if partner is None and (address or names):
            partner = connector
            how = f"the egress address {address}" if address else f"the certificate name {names[0]}"
        if connector.restricts:
            unmet = _unmet(connector, onprem, certificate, address, names)
            if unmet:
                restrictions.append(PartnerRestriction(connector, unmet))
    return partner, how, tuple(restrictions)


def egress_in(connector: InboundConnector, onprem: OnPrem) -> str:
    """The first IPv4 egress address inside the connector's ``SenderIPAddresses``, or ""."""
    for address in onprem.egress_addresses:
        if isinstance(address, ipaddress.IPv4Address) and any(
            address in network for network in connector.sender_ip_addresses
        ):
            return str(address)
    return ""


def _unmet(
    connector: InboundConnector,
    onprem: OnPrem,
    certificate: CertificateFacts | None,
    address: str,
    names: tuple[str, ...],
) -> str:
    """Why this server does not satisfy a restricting Partner connector ("" when it does)."""
    unmet: list[str] = []
    if connector.restrict_domains_to_ip_addresses and not address:
        egress = ", ".join(str(a) for a in onprem.egress_addresses) or "unknown"
        allowed = ", ".join(str(n) for n in connector.sender_ip_addresses) or "none"
        unmet.append(
            f"the egress address {egress} is not in its SenderIPAddresses ({allowed}) "
            "(RestrictDomainsToIPAddresses)"
        )
    if connector.restrict_domains_to_certificate and not names:
        wanted = connector.tls_sender_certificate_name or "none"
        if certificate is None:
            presented = "no usable certificate is presented"
        else:
            presented = f"the certificate names {', '.join(certificate.names) or 'none'}"
        unmet.append(
            f"{presented}, not its TlsSenderCertificateName {wanted} (RestrictDomainsToCertificate)"
        )
    return "; ".join(unmet)
