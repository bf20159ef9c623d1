"""doctor's tenant checks and the closing table of mail classes.

Pure: the connectors, accepted domains and egress addresses of the configuration, and the
attribution the real predictor (``policyd.rules.predict``) computes; the closing table predicts
one envelope per mail class with that same predictor, so it can never disagree with ``check``.
Partner connectors get two checks of their own: a restricting one this server does not satisfy
(mail into the tenant refused with 5.7.51), and RejectDirectSend with or without a connector
that authenticates this server (5.7.68).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime

from policyd.constants import ACCEPT
from policyd.engine.policy import lookup_problem
from policyd.errors import LookupFailureError
from policyd.rules import predict, reasons
from policyd.rules.certnames import connector_name_matches
from policyd.rules.model import InboundConnector, NamedTenant, OnPrem, Tenant
from policyd.rules.relay import Router
from policyd.rules.rewrite import SenderRewrite
from policyd.sources.config import Config
from policyd.tools.doctor.certificate import domain_to_add
from policyd.tools.doctor.report import (
    CERTIFICATE,
    ERROR,
    NOTE,
    OK,
    POSTFIX,
    SUMMARY,
    TENANT,
    WARNING,
    Check,
    MailClass,
)

#: Envelope addresses of the closing table.
FOREIGN_SENDER = "john@fabrikam.example"


OUTSIDE_RECIPIENT = "kate@tailspintoys.example"


PLACEHOLDER_DOMAIN = "contoso.example"


#: Reasons of mail that does not reach Microsoft 365 at all.
_NOT_TO_MICROSOFT = frozenset((reasons.LOCAL, reasons.OTHER_ROUTE))


#: Checks about connector attribution besides the certificate area: they concern only mail
#: that reaches a connector endpoint (the tenant's MX).
CONNECTOR_CHECKS = frozenset(
    (
        "tenant-onprem-connector",
        "tenant-inert-connectors",
        "tenant-attribution",
        "tenant-partner-restriction",
        "tenant-direct-send",
        "tenant-egress-addresses",
        "tenant-ipv6-egress",
        "postfix-cert-file",
    )
)


def tenant_checks(config: Config, attribution: predict.Attribution) -> list[Check]:
    tenant = config.tenant
    checks: list[Check] = []
    if tenant.accepted_domains:
        domains = ", ".join(d.domain for d in tenant.accepted_domains)
        checks.append(Check("tenant-accepted-domains", TENANT, OK, f"Accepted domains: {domains}."))
    else:
        checks.append(
            Check(
                "tenant-accepted-domains",
                TENANT,
                ERROR,
                "The tenant has no accepted domain, so no sender and no certificate can qualify "
                "for relay.",
                "List the tenant's domains in tenant.accepted_domains or export them to "
                "tenant.accepted_domains_file (Get-AcceptedDomain).",
            )
        )
    disabled = [d.domain for d in tenant.accepted_domains if d.sending_from_domain_disabled]
    if disabled:
        checks.append(
            Check(
                "tenant-sending-disabled",
                TENANT,
                NOTE,
                f"SendingFromDomainDisabled is set on {', '.join(disabled)}: Microsoft 365 "
                "blocks sending from these domains (the predictor still treats them as accepted).",
                "Send from another accepted domain, or Set-AcceptedDomain "
                "-SendingFromDomainDisabled $false.",
            )
        )
    else:
        checks.append(
            Check(
                "tenant-sending-disabled",
                TENANT,
                OK,
                "No accepted domain has SendingFromDomainDisabled.",
            )
        )
    relay = tenant.relay_connectors
    if relay:
        names = ", ".join(f"'{c.name}'" for c in relay)
        checks.append(
            Check("tenant-onprem-connector", TENANT, OK, f"Enabled OnPremises connectors: {names}.")
        )
    else:
        checks.append(
            Check(
                "tenant-onprem-connector",
                TENANT,
                ERROR,
                "No enabled OnPremises inbound connector: Microsoft 365 relays nothing from this "
                "server (550 5.7.64 TenantAttribution).",
                "Create an OnPremises inbound connector (New-InboundConnector -ConnectorType "
                "OnPremises) naming the certificate or the egress address, and export it again.",
            )
        )
    checks.append(_inert_connector_check(tenant, config))
    checks.append(_attribution_check(attribution))
    checks.append(_partner_restriction_check(config, attribution))
    checks.append(_direct_send_check(config, attribution))
    checks.append(_egress_check(config, attribution))
    checks.append(_ipv6_check(config, attribution))
    return checks


def _looks_meant(connector: InboundConnector, config: Config) -> str:
    """Why an inert connector looks meant for this server ("" when it does not)."""
    cert = config.onprem.certificate
    if cert is not None and cert.readable and connector.tls_sender_certificate_name:
        covers_apex = config.tenant.assumptions.wildcard_connector_covers_apex
        hits = [
            n
            for n in cert.names
            if connector_name_matches(
                connector.tls_sender_certificate_name, n, covers_apex=covers_apex
            )
        ]
        if hits:
            wanted = connector.tls_sender_certificate_name
            return f"its TlsSenderCertificateName {wanted} matches {hits[0]}"
    for address in config.onprem.egress_addresses:
        if isinstance(address, ipaddress.IPv4Address) and any(
            address in n for n in connector.sender_ip_addresses
        ):
            return f"its SenderIPAddresses contain the egress address {address}"
    return ""


def _inert_connector_check(tenant: Tenant, config: Config) -> Check:
    found: list[str] = []
    fixes: list[str] = []
    for connector in tenant.connectors:
        if connector.grants_relay or connector.restricts:
            continue  # a restricting Partner connector is tenant-partner-restriction's business
        why = _looks_meant(connector, config)
        if not why:
            continue
        if not connector.enabled:
            found.append(f"'{connector.name}' is disabled, yet {why}")
            fixes.append(f"Enable-InboundConnector '{connector.name}'")
        else:
            found.append(
                f"'{connector.name}' is a {connector.connector_type} connector (never grants "
                f"relay), yet {why}"
            )
            fixes.append(f"Set-InboundConnector '{connector.name}' -ConnectorType OnPremises")
    if not found:
        return Check(
            "tenant-inert-connectors",
            TENANT,
            OK,
            "No disabled or Partner connector looks meant for this server.",
        )
    return Check(
        "tenant-inert-connectors",
        TENANT,
        WARNING,
        "Connectors that look meant for this server but cannot grant relay: "
        + "; ".join(found)
        + ".",
        f"{'; '.join(fixes)} (or remove it), so this server is attributed to an enabled "
        "OnPremises connector.",
    )


def _attribution_check(attribution: predict.Attribution) -> Check:
    connector = attribution.connector
    if connector is not None:
        how = (
            f"by the certificate name {attribution.certificate_name}"
            if attribution.method == predict.BY_CERTIFICATE
            else f"by the egress address {attribution.egress_address}"
        )
        return Check(
            "tenant-attribution",
            TENANT,
            OK,
            f"Microsoft 365 attributes this server to connector '{connector.name}' {how}.",
        )
    problems = "; ".join(p for p in (attribution.certificate_problem, attribution.ip_problem) if p)
    return Check(
        "tenant-attribution",
        TENANT,
        ERROR,
        f"No connector attributes this server ({problems}): every outside recipient gets "
        "550 5.7.64 TenantAttribution.",
        reasons.BY_ID[reasons.NO_CONNECTOR].fix,
    )


def _own_domain(tenant: Tenant) -> str:
    return tenant.accepted_domains[0].domain if tenant.accepted_domains else PLACEHOLDER_DOMAIN


def _partner_restriction_check(config: Config, attribution: predict.Attribution) -> Check:
    """A restricting Partner connector (RestrictDomainsTo*) that this server does not satisfy
    refuses mail into the tenant with 5.7.51 once no OnPremises connector attributes it."""
    tenant = config.tenant
    restricting = [c for c in tenant.partner_connectors if c.restricts]
    if not restricting:
        return Check(
            "tenant-partner-restriction",
            TENANT,
            OK,
            "No enabled Partner connector restricts its sender domains to IP addresses or a "
            "certificate (RestrictDomainsTo*).",
        )
    names = ", ".join(f"'{c.name}'" for c in restricting)
    if not attribution.restrictions:
        return Check(
            "tenant-partner-restriction",
            TENANT,
            OK,
            f"This server satisfies every restricting Partner connector ({names}).",
        )
    if attribution.connector is not None:
        unmet = attribution.restrictions[0]
        return Check(
            "tenant-partner-restriction",
            TENANT,
            NOTE,
            f"Partner connector '{unmet.connector.name}' restricts mail from "
            f"{_domains_text(unmet.connector)} and this server does not "
            f"satisfy it ({unmet.unmet}); mail into the tenant passes only because OnPremises "
            f"connector '{attribution.connector.name}' attributes it: if that stops matching "
            "(a renewed certificate, a new egress address), Microsoft 365 refuses it with "
            f"{reasons.BY_ID[reasons.PARTNER_RESTRICTED].code}.",
            _restriction_fix(unmet.connector, config),
        )
    own = _own_domain(tenant)
    covered = [
        r
        for r in attribution.restrictions
        if r.connector.covers_sender(own) or r.connector.covers_sender("")
    ]
    if not covered:
        shown = "; ".join(
            f"'{r.connector.name}' (SenderDomains {_domains_text(r.connector)})"
            for r in attribution.restrictions
        )
        return Check(
            "tenant-partner-restriction",
            TENANT,
            WARNING,
            f"Restricting Partner connectors this server does not satisfy: {shown}; mail into "
            "the tenant from the senders they cover is refused with 550 "
            f"{reasons.BY_ID[reasons.PARTNER_RESTRICTED].code}.",
            _restriction_fix(attribution.restrictions[0].connector, config),
        )
    unmet = covered[0]
    return Check(
        "tenant-partner-restriction",
        TENANT,
        ERROR,
        f"Partner connector '{unmet.connector.name}' restricts mail from "
        f"{_domains_text(unmet.connector)} and no OnPremises connector attributes "
        f"this server, which does not satisfy it ({unmet.unmet}): mail from {own} into the tenant "
        f"is refused with 550 {reasons.BY_ID[reasons.PARTNER_RESTRICTED].code} "
        "TenantInboundAttribution.",
        _restriction_fix(unmet.connector, config),
    )


def _domains_text(connector: InboundConnector) -> str:
    return ", ".join(connector.sender_domains) or "none"


def _restriction_fix(connector: InboundConnector, config: Config) -> str:
    egress = ", ".join(
        str(a) for a in config.onprem.egress_addresses if isinstance(a, ipaddress.IPv4Address)
    )
    parts = [
        "Make the OnPremises connector match this server again (its certificate or egress address)"
    ]
    if connector.restrict_domains_to_ip_addresses and egress:
        parts.append(
            f"add {egress} to Partner connector '{connector.name}' "
            "(Set-InboundConnector -SenderIPAddresses)"
        )
    if connector.restrict_domains_to_certificate:
        parts.append(
            f"present a certificate that Partner connector '{connector.name}''s "
            f"TlsSenderCertificateName {connector.tls_sender_certificate_name or '(none)'} matches"
        )
    parts.append("narrow its SenderDomains to the partner's own domains")
    return ", or ".join(parts) + "."


def _direct_send_check(config: Config, attribution: predict.Attribution) -> Check:
    """RejectDirectSend refuses own-domain mail into the tenant (5.7.68) from a server that no
    OnPremises or Partner connector matches; a matching Partner connector authenticates it."""
    tenant = config.tenant
    if not tenant.reject_direct_send:
        return Check(
            "tenant-direct-send",
            TENANT,
            OK,
            "RejectDirectSend is off: mail into the tenant needs no connector.",
        )
    if attribution.connector is not None:
        return Check(
            "tenant-direct-send",
            TENANT,
            OK,
            f"RejectDirectSend is on; OnPremises connector '{attribution.connector.name}' "
            "attributes this server, so its mail into the tenant is not Direct Send.",
        )
    if attribution.partner is not None:
        return Check(
            "tenant-direct-send",
            TENANT,
            OK,
            f"RejectDirectSend is on and no OnPremises connector matches, but Partner connector "
            f"'{attribution.partner.name}' matches {attribution.partner_match}, which "
            "authenticates this server's mail into the tenant (MC1093237).",
        )
    own = _own_domain(tenant)
    return Check(
        "tenant-direct-send",
        TENANT,
        ERROR,
        f"RejectDirectSend is on and neither an OnPremises nor a Partner connector matches this "
        f"server: mail from {own} into the tenant is refused with 550 "
        f"{reasons.BY_ID[reasons.DIRECT_SEND_REJECTED].code} (Direct Send).",
        "Create a Partner connector for this server's egress address or certificate "
        "(New-InboundConnector -ConnectorType Partner, as MC1093237 advises), make an OnPremises "
        "connector match it, or turn RejectDirectSend off.",
    )


def _egress_check(config: Config, attribution: predict.Attribution) -> Check:
    tenant, onprem = config.tenant, config.onprem
    by_certificate = attribution.method == predict.BY_CERTIFICATE
    ipv4 = [a for a in onprem.egress_addresses if isinstance(a, ipaddress.IPv4Address)]
    if not onprem.egress_addresses:
        return Check(
            "tenant-egress-addresses",
            TENANT,
            NOTE if by_certificate else WARNING,
            "No egress address is configured (onprem.egress_addresses), so the IP path cannot "
            "be predicted.",
            "List the public address(es) Microsoft 365 sees this server connect from in "
            "onprem.egress_addresses.",
        )
    if not ipv4:
        return Check(
            "tenant-egress-addresses",
            TENANT,
            NOTE,
            "No IPv4 egress address is configured; connectors match IPv4 addresses only.",
            "Add the IPv4 address Microsoft 365 sees, if Postfix has one, to "
            "onprem.egress_addresses.",
        )
    uncovered = [
        a
        for a in ipv4
        if not any(a in n for c in tenant.relay_connectors for n in c.sender_ip_addresses)
    ]
    if not uncovered:
        return Check(
            "tenant-egress-addresses",
            TENANT,
            OK,
            f"Every IPv4 egress address ({', '.join(map(str, ipv4))}) is in an enabled "
            "OnPremises connector's SenderIPAddresses.",
        )
    missing = ", ".join(map(str, uncovered))
    fix = (
        "Add the address(es) to the OnPremises connector's SenderIPAddresses "
        "(Set-InboundConnector), or stop Postfix from sending from them (smtp_bind_address)."
    )
    if by_certificate:
        return Check(
            "tenant-egress-addresses",
            TENANT,
            NOTE,
            f"Egress address(es) {missing} are in no OnPremises connector; the certificate "
            "attributes the mail, so this matters only if the certificate stops matching.",
            fix,
        )
    if len(uncovered) == len(ipv4):
        return Check(
            "tenant-egress-addresses",
            TENANT,
            ERROR,
            f"No egress address ({missing}) is in an enabled OnPremises connector's "
            "SenderIPAddresses.",
            fix,
        )
    return Check(
        "tenant-egress-addresses",
        TENANT,
        WARNING,
        f"Egress address(es) {missing} are in no enabled OnPremises connector: mail that "
        "leaves from them is refused with 5.7.64 TenantAttribution.",
        fix,
    )


def _ipv6_check(config: Config, attribution: predict.Attribution) -> Check:
    ipv6 = [a for a in config.onprem.egress_addresses if isinstance(a, ipaddress.IPv6Address)]
    if not ipv6:
        return Check("tenant-ipv6-egress", TENANT, OK, "No IPv6 egress address.")
    shown = ", ".join(map(str, ipv6))
    if attribution.method == predict.BY_CERTIFICATE:
        return Check(
            "tenant-ipv6-egress",
            TENANT,
            OK,
            f"IPv6 egress ({shown}) is attributed by the certificate, which does not depend "
            "on the address.",
        )
    return Check(
        "tenant-ipv6-egress",
        TENANT,
        WARNING,
        f"IPv6 egress ({shown}) with an IP-only connector: SenderIPAddresses match IPv4 only, "
        "so mail sent over IPv6 is refused with 5.7.64 TenantAttribution.",
        "Make Postfix reach Microsoft 365 over IPv4 (smtp_address_preference = ipv4, or "
        "inet_protocols = ipv4), or present a certificate a connector matches.",
    )


#: Refusals that a certificate under an accepted domain would turn into relays.
_CERTIFICATE_FIXABLE = (reasons.NULL_SENDER, reasons.FORWARDED, reasons.SENDER_NOT_ACCEPTED)


def route_samples(config: Config) -> tuple[tuple[str, str, str], ...]:
    """(label, sender, recipient) envelopes whose routes doctor checks: mail to the internet
    from an own-domain sender, a foreign sender and the null sender."""
    own = _own_domain(config.tenant)
    return (
        ("own-domain senders", f"alerts@{own}", OUTSIDE_RECIPIENT),
        ("foreign senders", FOREIGN_SENDER, OUTSIDE_RECIPIENT),
        ("null-sender bounces", "", OUTSIDE_RECIPIENT),
    )


def sender_routes(
    router: Router | None, now: datetime, problems: list[str] | None = None
) -> Callable[[str], Callable[[str], predict.RouteContext]] | None:
    """Per sender, the route function the daemon uses at ``now`` (None without [postfix]):
    the ``router`` argument of ``mail_classes``. A table that rewrites the sender and fails
    (postsrsd not answering) is added to ``problems``, and that sender is routed unrewritten."""
    if router is None:
        return None
    active = router

    def routes(sender: str) -> Callable[[str], predict.RouteContext]:
        try:
            return active.for_sender(sender, now)
        except LookupFailureError as error:
            said = f"<{sender}>: "
            if problems is not None and not any(p.startswith(said) for p in problems):
                problems.append(said + lookup_problem(error))
            return active.for_queued(sender, SenderRewrite(sender, sender), now)

    return routes


def rewriting_check(problems: Sequence[str]) -> Check:
    """Tables that rewrite the sender (canonical maps, postsrsd) could not be asked."""
    return Check(
        "postfix-sender-rewriting",
        POSTFIX,
        ERROR,
        "The sender Microsoft 365 sees could not be computed: "
        + "; ".join(dict.fromkeys(problems))
        + ". The table below judges these senders as given; the daemon answers on_error for them.",
        "Start the rewriting service (postsrsd) or fix the table; Postfix itself does not accept "
        "mail while a canonical map fails.",
    )


def mail_classes(
    config: Config,
    attribution: predict.Attribution,
    router: Callable[[str], Callable[[str], predict.RouteContext]] | None = None,
) -> tuple[MailClass, ...]:
    """Run the real predictor for each class of mail and say whether it relays.

    ``router`` (with ``[postfix]``) gives, per sender, the route function the daemon uses, so
    the table predicts with the certificate and egress Postfix really presents.
    """
    tenant, onprem = config.tenant, config.onprem
    own = _own_domain(tenant)
    rows = (
        ("own-domain", "own-domain senders", f"alerts@{own}", OUTSIDE_RECIPIENT, ()),
        ("foreign-sender", "foreign senders", FOREIGN_SENDER, OUTSIDE_RECIPIENT, ()),
        (
            "forwarded",
            "forwarded mail",
            FOREIGN_SENDER,
            f"user@{own}",
            (OUTSIDE_RECIPIENT,),
        ),
        ("null-sender-bounce", "null-sender bounces", "", OUTSIDE_RECIPIENT, ()),
        ("out-of-office", "out-of-office replies", "", OUTSIDE_RECIPIENT, ()),
        ("into-tenant", "mail into the tenant", f"alerts@{own}", f"user@{own}", ()),
    )
    classes: list[MailClass] = []
    for class_id, label, sender, recipient, final in rows:
        prediction = predict.predict_recipient(
            recipient,
            final,
            sender=predict.sender_view(sender, tenant, onprem),
            tenant=tenant,
            onprem=onprem,
            attribution=attribution,
            router=router(sender) if router is not None else None,
        )
        relayed = prediction.verdict == ACCEPT
        fix = "" if relayed else reasons.BY_ID[prediction.reason].fix
        if (
            not relayed
            and attribution.connector is not None
            and attribution.method == predict.BY_CERTIFICATE
            and not attribution.certificate_domain
            and prediction.reason in _CERTIFICATE_FIXABLE
        ):
            fix = (
                f"Add {domain_to_add(attribution.certificate_name)} as an accepted domain: "
                f"the certificate name {attribution.certificate_name} already matches connector "
                f"'{attribution.connector.name}', and then every sender relays."
            )
        classes.append(
            MailClass(
                id=class_id,
                label=label,
                sender=sender,
                recipient=recipient,
                final=prediction.final,
                relayed=relayed,
                reason=prediction.reason,
                code=prediction.code,
                reply=prediction.reply,
                explanation=prediction.explanation,
                fix=fix,
                assumptions=prediction.assumptions,
            )
        )
    return tuple(classes)


def connector_scope(checks: Sequence[Check], classes: Sequence[MailClass]) -> list[Check]:
    """``checks`` limited to the mail that uses a connector, when some mail does not.

    A class of mail routed to the SMTP AUTH client-submission endpoint (a ``SUBMISSION_REASONS``
    reason in ``classes``) never meets a connector, so the certificate checks and
    ``CONNECTOR_CHECKS`` do not describe it. When no class reaches a connector endpoint (a pure
    SMTP AUTH relay) each of those checks becomes a note saying it does not apply, whatever it
    found (no 5.7.64 is reported for mail that never reaches a connector); when some classes do,
    each names the classes it applies to. Other checks, and every check when no class goes
    through submission, are returned unchanged.
    """
    submitted = [c.label for c in classes if c.reason in reasons.SUBMISSION_REASONS]
    if not submitted:
        return list(checks)
    connected = [
        c.label
        for c in classes
        if c.reason not in reasons.SUBMISSION_REASONS and c.reason not in _NOT_TO_MICROSOFT
    ]
    scoped: list[Check] = []
    for check in checks:
        if check.area != CERTIFICATE and check.id not in CONNECTOR_CHECKS:
            scoped.append(check)
        elif connected:
            scoped.append(
                replace(
                    check,
                    finding=f"For {', '.join(connected)} (the mail that reaches a connector "
                    f"endpoint; {', '.join(submitted)} go to the SMTP AUTH endpoint, where no "
                    f"connector decides): {check.finding}",
                )
            )
        else:
            scoped.append(
                replace(
                    check,
                    status=NOTE,
                    finding="Does not apply: every class of mail that reaches Microsoft 365 goes "
                    "to its SMTP AUTH client-submission endpoint, where the login decides and "
                    "no connector, certificate or egress address does (see the table below).",
                    fix="",
                )
            )
    return scoped


def summary_check(classes: Sequence[MailClass], postfix_disagrees: bool = False) -> Check:
    """The verdict over the mail-class table.

    ``postfix_disagrees``: a Postfix check failed while the table was predicted from the
    ``[onprem]`` keys (no ``[postfix]``): the table then cannot be called a clean bill.
    """
    refused = [c for c in classes if not c.relayed]
    if not refused and postfix_disagrees:
        return Check(
            "summary-mail-classes",
            SUMMARY,
            WARNING,
            "The table below relays every class of mail as the [onprem] keys describe Postfix, "
            "but Postfix's own configuration disagrees (see the failed Postfix checks above).",
            "Set [postfix] config_directory so the daemon predicts from what Postfix really "
            "presents and where it really routes.",
        )
    if not refused:
        return Check(
            "summary-mail-classes",
            SUMMARY,
            OK,
            "Microsoft 365 will relay every class of mail in the table below.",
        )
    labels = ", ".join(c.label for c in refused)
    own_refused = any(c.id in ("own-domain", "into-tenant") for c in refused)
    replies = "; ".join(dict.fromkeys(f"'{c.reply}' [{c.reason}]" for c in refused if c.reply))
    return Check(
        "summary-mail-classes",
        SUMMARY,
        ERROR if own_refused else WARNING,
        f"{len(refused)} of {len(classes)} classes of mail will be refused: {labels}"
        + (f" (Microsoft 365 answers {replies})." if replies else "."),
        refused[0].fix,
    )


def shared_egress_check(tenants: Sequence[NamedTenant], pictures: Sequence[OnPrem]) -> Check:
    """README: tenants: an egress address inside several tenants' OnPremises connectors.

    Microsoft calls IP addresses shared across tenants an anti-pattern (MC1226222): which
    tenant a connection is attributed to may move, and mail is refused in the other one.
    """
    addresses = {a for onprem in pictures for a in onprem.egress_addresses}
    shared: list[str] = []
    for address in sorted(addresses, key=str):
        owners = [
            t.name
            for t in tenants
            if any(
                address in network
                for c in t.tenant.relay_connectors
                for network in c.sender_ip_addresses
            )
        ]
        if len(owners) > 1:
            shared.append(f"{address} ({', '.join(owners)})")
    if not shared:
        return Check(
            "tenants-shared-egress",
            TENANT,
            OK,
            "No egress address sits in the IP connectors of more than one tenant.",
        )
    return Check(
        "tenants-shared-egress",
        TENANT,
        WARNING,
        f"Egress addresses in the connectors of several tenants: {'; '.join(shared)}. Microsoft "
        "calls shared sending IPs an anti-pattern: the tenant a connection is attributed to "
        "may change, and mail is then refused in the other one.",
        "Give each tenant a certificate connector (a certificate per tenant, presented by that "
        "tenant's own transport), or a sending address of its own.",
    )


def shared_certificate_check(tenants: Sequence[NamedTenant], pictures: Sequence[OnPrem]) -> Check:
    """README: tenants: one certificate accepted by the connectors of two tenants."""
    certificates = {
        onprem.certificate.path: onprem.certificate
        for onprem in pictures
        if onprem.certificate is not None and onprem.certificate.readable
    }
    shared: list[str] = []
    for path, certificate in sorted(certificates.items()):
        owners = [
            t.name
            for t in tenants
            if any(
                connector_name_matches(c.tls_sender_certificate_name, name)
                for c in t.tenant.relay_connectors
                if c.tls_sender_certificate_name
                for name in certificate.names
            )
        ]
        if len(owners) > 1:
            shared.append(f"{path} ({', '.join(owners)})")
    if not shared:
        return Check(
            "tenants-shared-certificate",
            TENANT,
            OK,
            "No certificate is accepted by the connectors of more than one tenant.",
        )
    return Check(
        "tenants-shared-certificate",
        TENANT,
        WARNING,
        f"Certificates accepted by the connectors of several tenants: {'; '.join(shared)}. "
        "Microsoft asks for a unique certificate per tenant: attribution by certificate is then "
        "ambiguous.",
        "Present each tenant its own certificate from its own transport (master.cf -o "
        "smtp_tls_chain_files) and name it in that tenant's connector only.",
    )
