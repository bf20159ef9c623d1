"""The relay rule (SPEC §5), table-driven: every reason id reached, every boundary crossed."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from policyd.rules import predict, reasons
from policyd.rules.model import (
    PARTNER,
    AcceptedDomain,
    CertificateFacts,
    InboundConnector,
    OnPrem,
    Tenant,
    normalize_domain,
)
from policyd.rules.relay import Router, ServicePicture
from policyd.rules.routing import PostfixView, Service
from policyd.sources.pem import read_certificate
from policyd.sources.tables import load_alias_maps
from tests.pki import Issued, TestPKI

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)

IP_CONNECTOR = InboundConnector(
    "From on-premises",
    sender_ip_addresses=(ipaddress.IPv4Network("203.0.113.0/28"),),
)
CERT_CONNECTOR = InboundConnector("By certificate", tls_sender_certificate_name="*.contoso.com")
#: A filtering service that locks the tenant down to its own addresses (RestrictDomainsTo*).
PARTNER_BY_IP = InboundConnector(
    "Mail from the filtering service",
    connector_type=PARTNER,
    sender_ip_addresses=(ipaddress.IPv4Network("192.0.2.128/25"),),
    sender_domains=("*",),
    restrict_domains_to_ip_addresses=True,
)
PARTNER_BY_CERT = InboundConnector(
    "Filtering service by certificate",
    connector_type=PARTNER,
    tls_sender_certificate_name="*.filter.example",
    sender_domains=("*",),
    restrict_domains_to_certificate=True,
)
#: MC1093237's advice: authenticate a scanner's Direct Send with a (non-restricting) Partner
#: connector for its address.
PARTNER_SCANNER = InboundConnector(
    "Scanners",
    connector_type=PARTNER,
    sender_ip_addresses=(ipaddress.IPv4Network("203.0.113.71/32"),),
)


def cert(
    *names: str,
    cn: str = "",
    not_before: datetime = NOW - 30 * DAY,
    not_after: datetime = NOW + 60 * DAY,
    self_signed: bool = False,
    chain_complete: bool = True,
    chain_problem: str = "",
    error: str = "",
) -> CertificateFacts:
    """Certificate facts as ``policyd.sources.pem`` would report them."""
    return CertificateFacts(
        path="/etc/postfix/client.pem",
        error=error,
        common_name=cn,
        dns_names=tuple(names),
        not_before=not_before,
        not_after=not_after,
        self_signed=self_signed,
        chain_complete=chain_complete,
        chain_problem=chain_problem,
    )


def tenant(
    *accepted: str,
    subdomains: tuple[str, ...] = (),
    connectors: tuple[InboundConnector, ...] = (IP_CONNECTOR,),
    reject_direct_send: bool = False,
) -> Tenant:
    domains = tuple(AcceptedDomain(normalize_domain(d)) for d in accepted or ("contoso.com",))
    domains += tuple(AcceptedDomain(normalize_domain(d), match_subdomains=True) for d in subdomains)
    return Tenant(domains, connectors, reject_direct_send)


def onprem(
    *egress: str,
    certificate: CertificateFacts | None = None,
    srs_domain: str = "",
    local_domains: tuple[str, ...] = (),
) -> OnPrem:
    return OnPrem(
        egress_addresses=tuple(ipaddress.ip_address(a) for a in egress or ("203.0.113.10",)),
        certificate=certificate,
        srs_domain=srs_domain,
        local_domains=frozenset(local_domains),
    )


def run(
    sender: str,
    recipient: str = "kate@tailspintoys.com",
    *,
    t: Tenant | None = None,
    o: OnPrem | None = None,
    final: tuple[str, ...] = (),
    now: datetime = NOW,
) -> predict.RecipientPrediction:
    t = t or tenant()
    o = o or onprem()
    attribution = predict.attribute(t, o, now)
    return predict.predict_recipient(
        recipient,
        final or (recipient,),
        sender=predict.sender_view(sender, t, o),
        tenant=t,
        onprem=o,
        attribution=attribution,
    )


CERT_ONLY = tenant(connectors=(CERT_CONNECTOR,))
GOOD_CERT = cert("mail.contoso.com", cn="mail.contoso.com")
FAR_EGRESS = "198.51.100.7"  # in no connector


# (id, sender, recipient, tenant, onprem, final, expected reason)
CASES = [
    # step 1: local_domains
    (
        "local",
        "john@fabrikam.com",
        "kate@mail.local",
        None,
        onprem(local_domains=("mail.local",)),
        (),
        predict.LOCAL,
    ),
    (
        "local: other domain is relayed",
        "john@fabrikam.com",
        "kate@mail.example",
        None,
        onprem(local_domains=("mail.local",)),
        (),
        predict.SENDER_NOT_ACCEPTED,
    ),
    (
        "local: bare alias result is local",
        "john@fabrikam.com",
        "kate@contoso.com",
        None,
        None,
        ("kate",),
        predict.LOCAL,
    ),
    # step 2: recipient in the tenant
    (
        "in tenant",
        "john@fabrikam.com",
        "kate@contoso.com",
        None,
        None,
        (),
        predict.RECIPIENT_IN_TENANT,
    ),
    (
        "in tenant: upper case and trailing dot",
        "john@fabrikam.com",
        "Kate@CONTOSO.COM.",
        None,
        None,
        (),
        predict.RECIPIENT_IN_TENANT,
    ),
    (
        "in tenant: subdomain without MatchSubDomains is a relay",
        "john@fabrikam.com",
        "kate@eu.contoso.com",
        None,
        None,
        (),
        predict.SENDER_NOT_ACCEPTED,
    ),
    (
        "in tenant: subdomain with MatchSubDomains",
        "john@fabrikam.com",
        "kate@eu.contoso.com",
        tenant("fabrikam.org", subdomains=("contoso.com",)),
        None,
        (),
        predict.RECIPIENT_IN_TENANT,
    ),
    (
        "in tenant: lookalike suffix is not a subdomain",
        "john@fabrikam.com",
        "kate@notcontoso.com",
        tenant("fabrikam.org", subdomains=("contoso.com",)),
        None,
        (),
        predict.SENDER_NOT_ACCEPTED,
    ),
    (
        "in tenant: IDN accepted domain",
        "john@fabrikam.com",
        "kate@BÜCHER.example",
        tenant("bücher.example"),
        None,
        (),
        predict.RECIPIENT_IN_TENANT,
    ),
    (
        "in tenant: IDN in ASCII form",
        "john@fabrikam.com",
        "kate@xn--bcher-kva.example",
        tenant("bücher.example"),
        None,
        (),
        predict.RECIPIENT_IN_TENANT,
    ),
    # step 2: RejectDirectSend
    (
        "direct send rejected",
        "john@contoso.com",
        "kate@contoso.com",
        tenant(reject_direct_send=True),
        onprem(FAR_EGRESS),
        (),
        predict.DIRECT_SEND_REJECTED,
    ),
    (
        "direct send: connector matches",
        "john@contoso.com",
        "kate@contoso.com",
        tenant(reject_direct_send=True),
        None,
        (),
        predict.RECIPIENT_IN_TENANT,
    ),
    (
        "direct send: sender not accepted",
        "john@fabrikam.com",
        "kate@contoso.com",
        tenant(reject_direct_send=True),
        onprem(FAR_EGRESS),
        (),
        predict.RECIPIENT_IN_TENANT,
    ),
    (
        "direct send: null sender",
        "",
        "kate@contoso.com",
        tenant(reject_direct_send=True),
        onprem(FAR_EGRESS),
        (),
        predict.RECIPIENT_IN_TENANT,
    ),
    (
        "direct send: setting off",
        "john@contoso.com",
        "kate@contoso.com",
        None,
        onprem(FAR_EGRESS),
        (),
        predict.RECIPIENT_IN_TENANT,
    ),
    # step 2 (a): restricting Partner connectors, 5.7.51
    (
        "partner: restricted by IP, unmatched address, no OnPremises connector",
        "john@contoso.com",
        "kate@contoso.com",
        tenant(connectors=(IP_CONNECTOR, PARTNER_BY_IP)),
        onprem(FAR_EGRESS),
        (),
        predict.PARTNER_RESTRICTED,
    ),
    (
        "partner: restricted by IP, address in the Partner connector",
        "john@contoso.com",
        "kate@contoso.com",
        tenant(connectors=(IP_CONNECTOR, PARTNER_BY_IP)),
        onprem("192.0.2.130"),
        (),
        predict.RECIPIENT_IN_TENANT,
    ),
    (
        "partner: restricted by IP, but an OnPremises connector attributes",
        "john@contoso.com",
        "kate@contoso.com",
        tenant(connectors=(IP_CONNECTOR, PARTNER_BY_IP)),
        None,
        (),
        predict.RECIPIENT_IN_TENANT,
    ),
    (
        "partner: restricted by certificate, renewed certificate matches nothing",
        "alerts@contoso.com",
        "kate@contoso.com",
        tenant(connectors=(CERT_CONNECTOR, PARTNER_BY_CERT)),
        onprem(FAR_EGRESS, certificate=cert("relay.contoso.net")),
        (),
        predict.PARTNER_RESTRICTED,
    ),
    (
        "partner: restricted by certificate, certificate matches the Partner connector",
        "alerts@contoso.com",
        "kate@contoso.com",
        tenant(connectors=(CERT_CONNECTOR, PARTNER_BY_CERT)),
        onprem(FAR_EGRESS, certificate=cert("mx1.filter.example")),
        (),
        predict.RECIPIENT_IN_TENANT,
    ),
    (
        "partner: restricted by certificate, no certificate presented",
        "alerts@contoso.com",
        "kate@contoso.com",
        tenant(connectors=(IP_CONNECTOR, PARTNER_BY_CERT)),
        onprem(FAR_EGRESS),
        (),
        predict.PARTNER_RESTRICTED,
    ),
    (
        "partner: both restrictions, only the address satisfied",
        "alerts@contoso.com",
        "kate@contoso.com",
        tenant(
            connectors=(
                replace(
                    PARTNER_BY_IP,
                    restrict_domains_to_certificate=True,
                    tls_sender_certificate_name="*.filter.example",
                ),
            )
        ),
        onprem("192.0.2.130", certificate=cert("relay.contoso.net")),
        (),
        predict.PARTNER_RESTRICTED,
    ),
    (
        "partner: SenderDomains list covers the sender",
        "john@contoso.com",
        "kate@contoso.com",
        tenant(
            connectors=(replace(PARTNER_BY_IP, sender_domains=("fabrikam.com", "contoso.com")),)
        ),
        onprem(FAR_EGRESS),
        (),
        predict.PARTNER_RESTRICTED,
    ),
    (
        "partner: SenderDomains list does not cover the sender",
        "john@tailspintoys.com",
        "kate@contoso.com",
        tenant(
            connectors=(replace(PARTNER_BY_IP, sender_domains=("fabrikam.com", "contoso.com")),)
        ),
        onprem(FAR_EGRESS),
        (),
        predict.RECIPIENT_IN_TENANT,
    ),
    (
        "partner: SenderDomains *.contoso.com covers a subdomain",
        "app@apps.contoso.com",
        "kate@contoso.com",
        tenant(connectors=(replace(PARTNER_BY_IP, sender_domains=("*.contoso.com",)),)),
        onprem(FAR_EGRESS),
        (),
        predict.PARTNER_RESTRICTED,
    ),
    (
        "partner: SenderDomains * covers the null sender",
        "",
        "kate@contoso.com",
        tenant(connectors=(PARTNER_BY_IP,)),
        onprem(FAR_EGRESS),
        (),
        predict.PARTNER_RESTRICTED,
    ),
    (
        "partner: a SenderDomains list does not cover the null sender",
        "",
        "kate@contoso.com",
        tenant(connectors=(replace(PARTNER_BY_IP, sender_domains=("contoso.com",)),)),
        onprem(FAR_EGRESS),
        (),
        predict.RECIPIENT_IN_TENANT,
    ),
    (
        "partner: empty SenderDomains covers nobody",
        "john@contoso.com",
        "kate@contoso.com",
        tenant(connectors=(replace(PARTNER_BY_IP, sender_domains=()),)),
        onprem(FAR_EGRESS),
        (),
        predict.RECIPIENT_IN_TENANT,
    ),
    (
        "partner: disabled restricting connector",
        "john@contoso.com",
        "kate@contoso.com",
        tenant(connectors=(replace(PARTNER_BY_IP, enabled=False),)),
        onprem(FAR_EGRESS),
        (),
        predict.RECIPIENT_IN_TENANT,
    ),
    (
        "partner: RestrictDomainsTo* on an OnPremises connector is ignored",
        "john@contoso.com",
        "kate@contoso.com",
        tenant(connectors=(replace(PARTNER_BY_IP, connector_type="OnPremises"),)),
        onprem(FAR_EGRESS),
        (),
        predict.RECIPIENT_IN_TENANT,
    ),
    (
        "partner: a matching Partner connector never grants relay outside",
        "john@contoso.com",
        "x@tailspintoys.com",
        tenant(connectors=(PARTNER_BY_IP,)),
        onprem("192.0.2.130"),
        (),
        predict.NO_CONNECTOR,
    ),
    (
        "partner: restricted, but the recipient is outside the tenant",
        "john@contoso.com",
        "x@tailspintoys.com",
        tenant(connectors=(IP_CONNECTOR, PARTNER_BY_IP)),
        onprem(FAR_EGRESS),
        (),
        predict.NO_CONNECTOR,
    ),
    # step 2 (b): a matching Partner connector authenticates against RejectDirectSend
    (
        "direct send: Partner connector matches the egress address",
        "scanner@contoso.com",
        "kate@contoso.com",
        tenant(connectors=(PARTNER_SCANNER,), reject_direct_send=True),
        onprem("203.0.113.71"),
        (),
        predict.RECIPIENT_IN_TENANT,
    ),
    (
        "direct send: Partner connector for another address",
        "scanner@contoso.com",
        "kate@contoso.com",
        tenant(connectors=(PARTNER_SCANNER,), reject_direct_send=True),
        onprem(FAR_EGRESS),
        (),
        predict.DIRECT_SEND_REJECTED,
    ),
    (
        "direct send: disabled Partner connector authenticates nothing",
        "scanner@contoso.com",
        "kate@contoso.com",
        tenant(connectors=(replace(PARTNER_SCANNER, enabled=False),), reject_direct_send=True),
        onprem("203.0.113.71"),
        (),
        predict.DIRECT_SEND_REJECTED,
    ),
    (
        "direct send: Partner connector matches the certificate",
        "scanner@contoso.com",
        "kate@contoso.com",
        tenant(
            connectors=(replace(PARTNER_SCANNER, tls_sender_certificate_name="*.filter.example"),),
            reject_direct_send=True,
        ),
        onprem(FAR_EGRESS, certificate=cert("mx1.filter.example")),
        (),
        predict.RECIPIENT_IN_TENANT,
    ),
    (
        "direct send: Partner connector matches, RejectDirectSend off",
        "scanner@contoso.com",
        "kate@contoso.com",
        tenant(connectors=(PARTNER_SCANNER,)),
        onprem("203.0.113.71"),
        (),
        predict.RECIPIENT_IN_TENANT,
    ),
    # step 3: IP attribution, CIDR edges
    (
        "ip: first address of the range",
        "john@contoso.com",
        "x@tailspintoys.com",
        None,
        onprem("203.0.113.0"),
        (),
        predict.SENDER_ACCEPTED_DOMAIN,
    ),
    (
        "ip: last address of the range",
        "john@contoso.com",
        "x@tailspintoys.com",
        None,
        onprem("203.0.113.15"),
        (),
        predict.SENDER_ACCEPTED_DOMAIN,
    ),
    (
        "ip: one past the range",
        "john@contoso.com",
        "x@tailspintoys.com",
        None,
        onprem("203.0.113.16"),
        (),
        predict.NO_CONNECTOR,
    ),
    (
        "ip: one before the range",
        "john@contoso.com",
        "x@tailspintoys.com",
        None,
        onprem("203.0.112.255"),
        (),
        predict.NO_CONNECTOR,
    ),
    (
        "ip: IPv6 egress against IPv4 connector",
        "john@contoso.com",
        "x@tailspintoys.com",
        None,
        onprem("2001:db8::10"),
        (),
        predict.NO_CONNECTOR,
    ),
    (
        "ip: IPv6 then a matching IPv4 egress",
        "john@contoso.com",
        "x@tailspintoys.com",
        None,
        onprem("2001:db8::10", "203.0.113.10"),
        (),
        predict.SENDER_ACCEPTED_DOMAIN,
    ),
    (
        "ip: disabled connector",
        "john@contoso.com",
        "x@tailspintoys.com",
        tenant(connectors=(replace(IP_CONNECTOR, enabled=False),)),
        None,
        (),
        predict.NO_CONNECTOR,
    ),
    (
        "ip: Partner connector",
        "john@contoso.com",
        "x@tailspintoys.com",
        tenant(connectors=(replace(IP_CONNECTOR, connector_type=PARTNER),)),
        None,
        (),
        predict.NO_CONNECTOR,
    ),
    (
        "ip: no connectors at all",
        "john@contoso.com",
        "x@tailspintoys.com",
        tenant(connectors=()),
        None,
        (),
        predict.NO_CONNECTOR,
    ),
    # step 3 + 4: certificate attribution
    (
        "cert: SAN under accepted domain",
        "john@fabrikam.com",
        "x@tailspintoys.com",
        CERT_ONLY,
        onprem(FAR_EGRESS, certificate=GOOD_CERT),
        (),
        predict.CERTIFICATE_CONNECTOR,
    ),
    (
        "cert: CN only",
        "john@fabrikam.com",
        "x@tailspintoys.com",
        CERT_ONLY,
        onprem(FAR_EGRESS, certificate=cert(cn="mail.contoso.com")),
        (),
        predict.CERTIFICATE_CONNECTOR,
    ),
    (
        "cert: SAN only, CN not a host name",
        "john@fabrikam.com",
        "x@tailspintoys.com",
        CERT_ONLY,
        onprem(FAR_EGRESS, certificate=cert("relay.contoso.com", cn="contoso relay")),
        (),
        predict.CERTIFICATE_CONNECTOR,
    ),
    (
        "cert: apex name against *.contoso.com",
        "john@fabrikam.com",
        "x@tailspintoys.com",
        CERT_ONLY,
        onprem(FAR_EGRESS, certificate=cert("contoso.com")),
        (),
        predict.CERTIFICATE_CONNECTOR,
    ),
    (
        "cert: wildcard certificate name",
        "john@fabrikam.com",
        "x@tailspintoys.com",
        CERT_ONLY,
        onprem(FAR_EGRESS, certificate=cert("*.contoso.com")),
        (),
        predict.CERTIFICATE_CONNECTOR,
    ),
    (
        "cert: wildcard certificate covers exact connector name",
        "",
        "x@tailspintoys.com",
        tenant(
            connectors=(replace(CERT_CONNECTOR, tls_sender_certificate_name="mail.contoso.com"),)
        ),
        onprem(FAR_EGRESS, certificate=cert("*.contoso.com")),
        (),
        predict.CERTIFICATE_CONNECTOR,
    ),
    (
        "cert: exact connector name, other host",
        "",
        "x@tailspintoys.com",
        tenant(
            connectors=(replace(CERT_CONNECTOR, tls_sender_certificate_name="smtp.contoso.com"),)
        ),
        onprem(FAR_EGRESS, certificate=GOOD_CERT),
        (),
        predict.NO_CONNECTOR,
    ),
    (
        "cert: unrelated name",
        "john@fabrikam.com",
        "x@tailspintoys.com",
        CERT_ONLY,
        onprem(FAR_EGRESS, certificate=cert("mail.fabrikam.com")),
        (),
        predict.NO_CONNECTOR,
    ),
    (
        "cert: upper-case connector name",
        "john@fabrikam.com",
        "x@tailspintoys.com",
        tenant(
            connectors=(
                replace(
                    CERT_CONNECTOR, tls_sender_certificate_name=normalize_domain("*.CONTOSO.COM.")
                ),
            )
        ),
        onprem(FAR_EGRESS, certificate=GOOD_CERT),
        (),
        predict.CERTIFICATE_CONNECTOR,
    ),
    (
        "cert: two labels deep fails the depth rule",
        "john@fabrikam.com",
        "x@tailspintoys.com",
        CERT_ONLY,
        onprem(FAR_EGRESS, certificate=cert("mail.eu.contoso.com")),
        (),
        predict.SENDER_NOT_ACCEPTED,
    ),
    (
        "cert: two labels deep passes with the subdomain accepted",
        "john@fabrikam.com",
        "x@tailspintoys.com",
        tenant("contoso.com", "eu.contoso.com", connectors=(CERT_CONNECTOR,)),
        onprem(FAR_EGRESS, certificate=cert("mail.eu.contoso.com")),
        (),
        predict.CERTIFICATE_CONNECTOR,
    ),
    (
        "cert: depth rule failed, sender accepted still passes",
        "john@contoso.com",
        "x@tailspintoys.com",
        CERT_ONLY,
        onprem(FAR_EGRESS, certificate=cert("mail.eu.contoso.com")),
        (),
        predict.SENDER_ACCEPTED_DOMAIN,
    ),
    (
        "cert: expired",
        "john@fabrikam.com",
        "x@tailspintoys.com",
        CERT_ONLY,
        onprem(FAR_EGRESS, certificate=cert("mail.contoso.com", not_after=NOW - DAY)),
        (),
        predict.NO_CONNECTOR,
    ),
    (
        "cert: last valid day",
        "john@fabrikam.com",
        "x@tailspintoys.com",
        CERT_ONLY,
        onprem(FAR_EGRESS, certificate=cert("mail.contoso.com", not_after=NOW)),
        (),
        predict.CERTIFICATE_CONNECTOR,
    ),
    (
        "cert: not yet valid",
        "john@fabrikam.com",
        "x@tailspintoys.com",
        CERT_ONLY,
        onprem(FAR_EGRESS, certificate=cert("mail.contoso.com", not_before=NOW + DAY)),
        (),
        predict.NO_CONNECTOR,
    ),
    (
        "cert: first valid second",
        "john@fabrikam.com",
        "x@tailspintoys.com",
        CERT_ONLY,
        onprem(FAR_EGRESS, certificate=cert("mail.contoso.com", not_before=NOW)),
        (),
        predict.CERTIFICATE_CONNECTOR,
    ),
    (
        "cert: self-signed",
        "john@fabrikam.com",
        "x@tailspintoys.com",
        CERT_ONLY,
        onprem(FAR_EGRESS, certificate=cert("mail.contoso.com", self_signed=True)),
        (),
        predict.NO_CONNECTOR,
    ),
    (
        "cert: chain incomplete",
        "john@fabrikam.com",
        "x@tailspintoys.com",
        CERT_ONLY,
        onprem(FAR_EGRESS, certificate=cert("mail.contoso.com", chain_complete=False)),
        (),
        predict.NO_CONNECTOR,
    ),
    (
        "cert: unreadable",
        "john@fabrikam.com",
        "x@tailspintoys.com",
        CERT_ONLY,
        onprem(FAR_EGRESS, certificate=cert(error="unreadable: no such file")),
        (),
        predict.NO_CONNECTOR,
    ),
    (
        "cert: expired falls back to IP",
        "john@contoso.com",
        "x@tailspintoys.com",
        tenant(connectors=(CERT_CONNECTOR, IP_CONNECTOR)),
        onprem(certificate=cert("mail.contoso.com", not_after=NOW - DAY)),
        (),
        predict.SENDER_ACCEPTED_DOMAIN,
    ),
    (
        "cert: disabled certificate connector",
        "john@fabrikam.com",
        "x@tailspintoys.com",
        tenant(connectors=(replace(CERT_CONNECTOR, enabled=False),)),
        onprem(FAR_EGRESS, certificate=GOOD_CERT),
        (),
        predict.NO_CONNECTOR,
    ),
    (
        "cert: Partner certificate connector",
        "john@fabrikam.com",
        "x@tailspintoys.com",
        tenant(connectors=(replace(CERT_CONNECTOR, connector_type=PARTNER),)),
        onprem(FAR_EGRESS, certificate=GOOD_CERT),
        (),
        predict.NO_CONNECTOR,
    ),
    # step 5: sender domain
    (
        "sender accepted",
        "john@contoso.com",
        "x@tailspintoys.com",
        None,
        None,
        (),
        predict.SENDER_ACCEPTED_DOMAIN,
    ),
    (
        "sender accepted: upper case, trailing dot",
        "John@CONTOSO.com.",
        "x@tailspintoys.com",
        None,
        None,
        (),
        predict.SENDER_ACCEPTED_DOMAIN,
    ),
    (
        "sender accepted: IDN",
        "jörg@bücher.example",
        "x@tailspintoys.com",
        tenant("bücher.example"),
        None,
        (),
        predict.SENDER_ACCEPTED_DOMAIN,
    ),
    (
        "sender subdomain with MatchSubDomains",
        "app@apps.contoso.com",
        "x@tailspintoys.com",
        tenant(subdomains=("contoso.com",)),
        None,
        (),
        predict.SENDER_ACCEPTED_DOMAIN,
    ),
    (
        "sender subdomain without MatchSubDomains",
        "app@apps.contoso.com",
        "x@tailspintoys.com",
        None,
        None,
        (),
        predict.SENDER_NOT_ACCEPTED,
    ),
    (
        "sender without domain",
        "root",
        "x@tailspintoys.com",
        None,
        None,
        (),
        predict.SENDER_NOT_ACCEPTED,
    ),
    # step 5: SRS
    (
        "srs rewrites a foreign sender into an accepted domain",
        "john@fabrikam.com",
        "x@tailspintoys.com",
        None,
        onprem(srs_domain="contoso.com"),
        (),
        predict.SRS_REWRITTEN,
    ),
    (
        "srs into a domain that is not accepted",
        "john@fabrikam.com",
        "x@tailspintoys.com",
        None,
        onprem(srs_domain="srs.example.net"),
        (),
        predict.SENDER_NOT_ACCEPTED,
    ),
    (
        "srs leaves an accepted sender alone",
        "john@contoso.com",
        "x@tailspintoys.com",
        None,
        onprem(srs_domain="contoso.com"),
        (),
        predict.SENDER_ACCEPTED_DOMAIN,
    ),
    (
        "srs never rewrites the null sender",
        "",
        "x@tailspintoys.com",
        None,
        onprem(srs_domain="contoso.com"),
        (),
        predict.NULL_SENDER,
    ),
    # step 6: refusals
    (
        "null sender through an IP connector",
        "",
        "x@tailspintoys.com",
        None,
        None,
        (),
        predict.NULL_SENDER,
    ),
    (
        "null sender through a certificate connector",
        "",
        "x@tailspintoys.com",
        CERT_ONLY,
        onprem(FAR_EGRESS, certificate=GOOD_CERT),
        (),
        predict.CERTIFICATE_CONNECTOR,
    ),
    (
        "forwarded from a foreign sender",
        "john@fabrikam.com",
        "kate@contoso.com",
        None,
        None,
        ("kate@tailspintoys.com",),
        predict.FORWARDED,
    ),
    (
        "forwarded from an own-domain sender",
        "john@contoso.com",
        "kate@contoso.com",
        None,
        None,
        ("kate@tailspintoys.com",),
        predict.SENDER_ACCEPTED_DOMAIN,
    ),
    (
        "forwarded through a certificate connector",
        "john@fabrikam.com",
        "kate@contoso.com",
        CERT_ONLY,
        onprem(FAR_EGRESS, certificate=GOOD_CERT),
        ("kate@tailspintoys.com",),
        predict.CERTIFICATE_CONNECTOR,
    ),
    (
        "forwarded via SRS",
        "john@fabrikam.com",
        "kate@contoso.com",
        None,
        onprem(srs_domain="contoso.com"),
        ("kate@tailspintoys.com",),
        predict.SRS_REWRITTEN,
    ),
    (
        "forwarded null sender is null-sender",
        "",
        "kate@contoso.com",
        None,
        None,
        ("kate@tailspintoys.com",),
        predict.NULL_SENDER,
    ),
    (
        "address mapped to itself is not a forward",
        "john@fabrikam.com",
        "kate@tailspintoys.com",
        None,
        None,
        ("KATE@tailspintoys.com",),
        predict.SENDER_NOT_ACCEPTED,
    ),
    (
        "one refused final address refuses the recipient",
        "john@fabrikam.com",
        "kate@contoso.com",
        None,
        None,
        ("kate@contoso.com", "kate@tailspintoys.com"),
        predict.FORWARDED,
    ),
    (
        "all final addresses in the tenant",
        "john@fabrikam.com",
        "team@contoso.com",
        None,
        None,
        ("a@contoso.com", "b@contoso.com"),
        predict.RECIPIENT_IN_TENANT,
    ),
    (
        "sender not accepted",
        "john@fabrikam.com",
        "x@tailspintoys.com",
        None,
        None,
        (),
        predict.SENDER_NOT_ACCEPTED,
    ),
]


@pytest.mark.parametrize(
    ("sender", "recipient", "t", "o", "final", "reason"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_rule(
    sender: str,
    recipient: str,
    t: Tenant | None,
    o: OnPrem | None,
    final: tuple[str, ...],
    reason: str,
) -> None:
    """Each row lands on the reason id SPEC §5 prescribes, with its verdict, code and reply."""
    prediction = run(sender, recipient, t=t, o=o, final=final)
    assert prediction.reason == reason
    expected_verdict = predict.ACCEPT if reason in reasons.ACCEPT_REASONS else predict.REJECT
    assert prediction.verdict == expected_verdict
    replies = {
        predict.NO_CONNECTOR: ("5.7.64", "550 5.7.64 TenantAttribution; Relay Access Denied"),
        predict.NULL_SENDER: ("5.7.64", "550 5.7.64 Relay Access Denied ATTR36"),
        predict.FORWARDED: ("5.7.64", "550 5.7.64 Relay Access Denied ATTR36"),
        predict.SENDER_NOT_ACCEPTED: ("5.7.64", "550 5.7.64 Relay Access Denied ATTR36"),
        predict.DIRECT_SEND_REJECTED: (
            "5.7.68",
            "550 5.7.68 TenantInboundAttribution; Direct Send not allowed for this organization "
            "from unauthorized sources",
        ),
        predict.PARTNER_RESTRICTED: (
            "5.7.51",
            "550 5.7.51 TenantInboundAttribution; There is a partner connector configured that "
            "matched the message's recipient domain. The connector had either the "
            "RestrictDomainsToIPAddresses or RestrictDomainsToCertificate set",
        ),
    }
    assert (prediction.code, prediction.reply) == replies.get(reason, (None, None))
    assert prediction.explanation.endswith(".")


def test_every_reason_is_reached() -> None:
    """The tables reach every reason id the spec defines, and no other."""
    reached = {case[-1] for case in CASES} | {case[-1] for case in ROUTE_CASES}
    assert reached == set(reasons.REASON_IDS)


# --- step 1 with [postfix]: the route Postfix takes ---------------------------------------------


class DictTables:
    """routing.Tables over in-memory tables: {table: {key: value}}."""

    def __init__(self, tables: dict[str, dict[str, str]]) -> None:
        self.tables = tables

    def find(self, table: str, key: str, *, partial: bool) -> str | None:
        return self.tables[table].get(key.lower())


M365 = "[contoso-com.mail.protection.outlook.com]:25"
VIEW = PostfixView(
    parameters={
        "myhostname": "mta.contoso.com",
        "mydestination": "mta.contoso.com, localhost",
        "relayhost": M365,
        "default_transport": "smtp",
        "relay_transport": "relay",
        "local_transport": "local:mta.contoso.com",
        "transport_maps": "texthash:/etc/postfix/transport",
        "inet_interfaces": "loopback-only",
        # TLS is on, so the pictures' certificates are presented (the Router drops them for a
        # next hop whose level is none).
        "smtp_tls_security_level": "may",
    },
    services={
        "smtp": Service("smtp", "smtp"),
        "relay-cert": Service("relay-cert", "smtp"),
        "local": Service("local", "local"),
        "submit-auth": Service(
            "submit-auth",
            "smtp",
            {
                "smtp_sasl_auth_enable": "yes",
                "smtp_sasl_password_maps": "texthash:/etc/postfix/sasl_passwd",
                "smtp_sender_dependent_authentication": "yes",
            },
        ),
    },
    tables=DictTables(
        {
            "texthash:/etc/postfix/transport": {
                "partner.example": "smtp:[mx.partner.example]",
                "submit.example": "smtp:[smtp.office365.com]:587",
                "cert.example": f"relay-cert:{M365}",
                "legacy.example": "smtp:[mail.messaging.microsoft.com]",
                "sasl.example": "submit-auth:[smtp.office365.com]:587",
            },
            # The next hop's entry logs every sender in as app@; bob@ has his own login.
            "texthash:/etc/postfix/sasl_passwd": {
                "[smtp.office365.com]:587": "app@contoso.com:secret",
                "bob@contoso.com": "bob@contoso.com:secret",
            },
        }
    ),
)
#: The plain smtp service presents nothing and has an egress address in no connector; the
#: relay-cert service presents a good certificate.
PLAIN = ServicePicture(
    OnPrem(
        egress_addresses=(ipaddress.ip_address(FAR_EGRESS),),
        certificate_absent="not presented by Postfix: service smtp has no smtp_tls_cert_file",
    ),
    "main.cf: smtp_tls_security_level",
    "main.cf: smtp_bind_address",
)
CERTIFIED = ServicePicture(
    OnPrem(certificate=GOOD_CERT), "master.cf: relay-cert/unix -o smtp_tls_chain_files", ""
)
ROUTER = Router(
    VIEW,
    {"smtp": PLAIN, "relay-cert": CERTIFIED},
    PLAIN,
    tenant(connectors=(CERT_CONNECTOR,)),
    send_as={"app@contoso.com": ("*@fabrikam.com", "alerts@contoso.com")},
)

ROUTE_CASES = [
    ("local class", "john@fabrikam.com", "root@mta.contoso.com", predict.LOCAL),
    ("around Microsoft 365", "john@fabrikam.com", "kate@partner.example", predict.OTHER_ROUTE),
    (
        "client submission, SASL off",
        "john@fabrikam.com",
        "kate@submit.example",
        predict.SUBMISSION_NO_CREDENTIALS,
    ),
    (
        "submission, next-hop login",
        "app@contoso.com",
        "kate@sasl.example",
        predict.SUBMISSION_ACCEPTED,
    ),
    ("submission, send_as", "john@fabrikam.com", "kate@sasl.example", predict.SUBMISSION_ACCEPTED),
    (
        "submission, sender login",
        "bob@contoso.com",
        "kate@sasl.example",
        predict.SUBMISSION_ACCEPTED,
    ),
    (
        "submission, not in send_as",
        "carol@contoso.com",
        "kate@sasl.example",
        predict.SUBMISSION_SENDER_NOT_LOGIN,
    ),
    ("relayhost, no certificate", "", "kate@tailspintoys.com", predict.NO_CONNECTOR),
    ("service with certificate", "", "kate@cert.example", predict.CERTIFICATE_CONNECTOR),
    ("legacy host still predicted", "", "kate@legacy.example", predict.NO_CONNECTOR),
    ("in tenant", "", "kate@contoso.com", predict.RECIPIENT_IN_TENANT),
]


@pytest.mark.parametrize(
    ("sender", "recipient", "reason"),
    [case[1:] for case in ROUTE_CASES],
    ids=[case[0] for case in ROUTE_CASES],
)
def test_route_decides_step_one(sender: str, recipient: str, reason: str) -> None:
    """With a route, local delivery and other next hops are not relayed, and the service's
    own certificate and egress decide attribution."""
    t = ROUTER.tenant
    prediction = predict.predict_recipient(
        recipient,
        (recipient,),
        sender=predict.sender_view(sender, t, onprem()),
        tenant=t,
        onprem=onprem(),
        attribution=predict.attribute(t, onprem(), NOW),
        router=ROUTER.for_sender(sender, NOW),
    )
    assert prediction.reason == reason
    address = prediction.addresses[0]
    if reason in (predict.LOCAL, predict.OTHER_ROUTE):
        assert (prediction.verdict, address.relayed) == (predict.ACCEPT, False)


def test_certificate_not_presented_is_named() -> None:
    """A route whose service presents no certificate says so, even when the configuration
    names one (issue: firewall appliance with only an inbound certificate)."""
    t = ROUTER.tenant
    prediction = predict.predict_recipient(
        "kate@tailspintoys.com",
        ("kate@tailspintoys.com",),
        sender=predict.sender_view("", t, onprem()),
        tenant=t,
        onprem=onprem(certificate=GOOD_CERT),  # the hand-written picture is overruled
        attribution=predict.attribute(t, onprem(certificate=GOOD_CERT), NOW),
        router=ROUTER.for_sender("", NOW),
    )
    assert prediction.reason == predict.NO_CONNECTOR
    assert "not presented by Postfix" in prediction.explanation


def test_other_route_names_the_next_hop() -> None:
    """The other-route explanation names the next hop and the table entry that chose it."""
    context = ROUTER.context("a@contoso.com", "kate@partner.example", NOW)
    assert context.kind == "other"
    prediction = predict.predict_address(
        "kate@partner.example",
        forwarded=False,
        sender=predict.sender_view("a@contoso.com", ROUTER.tenant, onprem()),
        tenant=ROUTER.tenant,
        onprem=onprem(),
        attribution=context.attribution,
        route=context,
    )
    assert "[mx.partner.example]" in prediction.explanation
    assert "transport_maps: partner.example" in prediction.explanation


@pytest.mark.parametrize(
    ("certificate", "phrase"),
    [
        (
            cert("mail.contoso.com", not_after=datetime(2026, 10, 1, tzinfo=UTC)),
            "expired on 2026-10-01",
        ),
        (cert("mail.contoso.com", not_before=NOW + DAY), "not yet valid"),
        (cert("mail.contoso.com", self_signed=True), "self-signed"),
        (
            cert("mail.contoso.com", chain_complete=False, chain_problem="intermediate missing"),
            "chain is incomplete (intermediate missing)",
        ),
        (cert("mail.fabrikam.com"), "no name matches connector"),
        (cert("mail.eu.contoso.com"), "name not under an accepted domain"),
        (cert(error="unreadable: [Errno 2] No such file or directory"), "unreadable"),
    ],
)
def test_certificate_failure_is_explained(certificate: CertificateFacts, phrase: str) -> None:
    """When the certificate path fails, the explanation says why in the spec's words."""
    prediction = run(
        "john@fabrikam.com", t=CERT_ONLY, o=onprem(FAR_EGRESS, certificate=certificate)
    )
    assert prediction.verdict == predict.REJECT
    assert phrase in prediction.explanation


def test_depth_rule_names_the_domain_to_add() -> None:
    """The one-label depth rule's explanation names the accepted domain to add."""
    prediction = run(
        "john@fabrikam.com", t=CERT_ONLY, o=onprem(certificate=cert("mail.eu.contoso.com"))
    )
    assert "add eu.contoso.com as an accepted domain" in prediction.explanation


def test_no_connector_explains_ipv6() -> None:
    """An IPv6 egress address is explained as unmatchable, not silently ignored."""
    prediction = run("john@contoso.com", o=onprem("2001:db8::10"))
    assert prediction.reason == predict.NO_CONNECTOR
    assert "IPv6" in prediction.explanation


def test_disabled_connector_is_named_in_the_explanation() -> None:
    """A connector that would match but is disabled is named, so the fix is obvious."""
    t = tenant(connectors=(replace(IP_CONNECTOR, enabled=False),))
    prediction = run("john@contoso.com", t=t)
    assert "'From on-premises' lists it but is disabled" in prediction.explanation


def test_attribution_prefers_the_certificate() -> None:
    """Certificate and IP both match: the certificate wins (first match)."""
    t = tenant(connectors=(IP_CONNECTOR, CERT_CONNECTOR))
    attribution = predict.attribute(t, onprem(certificate=GOOD_CERT), NOW)
    assert attribution.method == predict.BY_CERTIFICATE
    assert attribution.connector == CERT_CONNECTOR


def test_attribution_expires_at_the_certificate_boundary() -> None:
    """The attribution says until when it holds: one second after notAfter."""
    not_after = NOW + DAY
    attribution = predict.attribute(
        CERT_ONLY, onprem(certificate=cert("mail.contoso.com", not_after=not_after)), NOW
    )
    assert attribution.valid_until == not_after.timestamp() + 1
    later = predict.attribute(
        CERT_ONLY,
        onprem(certificate=cert("mail.contoso.com", not_after=not_after)),
        not_after + timedelta(seconds=1),
    )
    assert later.connector is None


def test_deciding_address_is_the_first_refused() -> None:
    """A recipient with several final addresses reports the first refused one."""
    prediction = run(
        "john@fabrikam.com",
        "list@contoso.com",
        final=("a@contoso.com", "b@tailspintoys.com", "c@fabrikam.net"),
    )
    assert prediction.deciding.address == "b@tailspintoys.com"
    assert prediction.final == ("a@contoso.com", "b@tailspintoys.com", "c@fabrikam.net")
    assert prediction.relayed


# --- the same rule over real certificates, read the way the daemon reads them ----------------


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI(NOW)


@pytest.mark.parametrize(
    ("make", "include_intermediate", "reason", "phrase"),
    [
        (
            lambda p: p.leaf("mail.contoso.com", ["mail.contoso.com"]),
            True,
            predict.CERTIFICATE_CONNECTOR,
            "under the accepted domain contoso.com",
        ),
        (
            lambda p: p.leaf("Contoso relay", ["relay.contoso.com"]),
            True,
            predict.CERTIFICATE_CONNECTOR,
            "relay.contoso.com",
        ),
        (
            lambda p: p.leaf("mail.contoso.com", not_after=NOW - DAY),
            True,
            predict.NO_CONNECTOR,
            "expired on 2026-11-26",
        ),
        (
            lambda p: p.leaf("mail.contoso.com", not_before=NOW + DAY),
            True,
            predict.NO_CONNECTOR,
            "not yet valid",
        ),
        (
            lambda p: p.self_signed("mail.contoso.com", ["mail.contoso.com"]),
            True,
            predict.NO_CONNECTOR,
            "self-signed",
        ),
        (lambda p: p.leaf("mail.contoso.com"), False, predict.NO_CONNECTOR, "chain is incomplete"),
        (
            lambda p: p.leaf("mail.eu.contoso.com"),
            True,
            predict.SENDER_NOT_ACCEPTED,
            "add eu.contoso.com as an accepted domain",
        ),
        (
            lambda p: p.leaf("mail.fabrikam.com"),
            True,
            predict.NO_CONNECTOR,
            "no name matches connector",
        ),
    ],
    ids=[
        "valid",
        "san-only",
        "expired",
        "not-yet-valid",
        "self-signed",
        "chain-incomplete",
        "too-deep",
        "other-name",
    ],
)
def test_rule_with_generated_certificates(
    tmp_path: Path,
    pki: TestPKI,
    make: Callable[[TestPKI], Issued],
    include_intermediate: bool,
    reason: str,
    phrase: str,
) -> None:
    """Certificates made with cryptography and read from PEM land on the expected reason."""
    cert_path, _ = pki.write(tmp_path, make(pki), include_intermediate=include_intermediate)
    facts = read_certificate(str(cert_path), ca_bundle=str(pki.write_ca_bundle(tmp_path)))
    prediction = run("john@fabrikam.com", t=CERT_ONLY, o=onprem(FAR_EGRESS, certificate=facts))
    assert prediction.reason == reason
    assert phrase in prediction.explanation


@pytest.mark.parametrize(
    ("table", "sender", "recipient", "final", "reason"),
    [
        (
            "@contoso.com  desk@tailspintoys.com\n",
            "john@fabrikam.com",
            "anyone@contoso.com",
            ("desk@tailspintoys.com",),
            predict.FORWARDED,
        ),
        (
            "@contoso.com  desk@tailspintoys.com\nkate@contoso.com  kate@contoso.com\n",
            "john@fabrikam.com",
            "kate@contoso.com",
            ("kate@contoso.com",),
            predict.RECIPIENT_IN_TENANT,
        ),
        (
            "sales@contoso.com  team@contoso.com\n"
            "team@contoso.com  bob@fabrikam.net, kim@contoso.com\n",
            "john@fabrikam.com",
            "sales@contoso.com",
            ("bob@fabrikam.net", "kim@contoso.com"),
            predict.FORWARDED,
        ),
        (
            "sales@contoso.com  team@contoso.com\nteam@contoso.com  bob@fabrikam.net\n",
            "alerts@contoso.com",
            "sales@contoso.com",
            ("bob@fabrikam.net",),
            predict.SENDER_ACCEPTED_DOMAIN,
        ),
        (
            "sales@contoso.com  team@contoso.com\nteam@contoso.com  bob@fabrikam.net\n",
            "",
            "sales@contoso.com",
            ("bob@fabrikam.net",),
            predict.NULL_SENDER,
        ),
    ],
    ids=[
        "catch-all",
        "exact-key-beats-catch-all",
        "recursion",
        "recursion-own-sender",
        "recursion-null-sender",
    ],
)
def test_forwarding_through_real_alias_tables(
    tmp_path: Path,
    table: str,
    sender: str,
    recipient: str,
    final: tuple[str, ...],
    reason: str,
) -> None:
    """Forwards found through a catch-all or through recursive aliases decide the verdict."""
    path = tmp_path / "virtual"
    path.write_text(table)
    expanded = load_alias_maps([f"texthash:{path}"]).expand(recipient)
    assert expanded == final
    prediction = run(sender, recipient, final=expanded)
    assert prediction.reason == reason
