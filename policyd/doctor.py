"""``m365-policyd doctor``: audit certificate, tenant, connectors and Postfix before mail is lost.

Two layers, as everywhere in the package:

- ``audit`` is pure: from the ``Config``, an optional private-key check, the Postfix parameters
  (a plain mapping, as ``postconf -x`` prints them), the per-destination TLS policy found for the
  relay host, and an injected ``now``, it builds the checklist and the closing table of mail
  classes. It reads no file, runs no program and calls no clock; the closing table runs the real
  predictor (``policyd.predict``) rather than re-deriving the relay rule.
- ``read_postfix`` and ``main`` are the wiring: ``postconf -c DIR -x PARAM...`` and
  ``postmap -c DIR -q KEY MAP`` as subprocesses with a timeout, the key check, the clock, the
  output. A missing or failing ``postconf`` becomes a warning check, never a crash.

Each check has a stable kebab-case ``id``, an ``area`` (certificate, tenant, postfix, summary),
a ``status`` (ok, warning, error, note), a one-line ``finding`` and a one-sentence ``fix`` (empty
when ok). Exit status: 0 without errors, 1 with errors, 78 on a configuration error.

What is read from Postfix, and what is not (best effort, documented here on purpose):

- ``relayhost`` only; a relay chosen through ``transport_maps`` or
  ``sender_dependent_relayhost_maps`` is not followed.
- TLS level for the relay: ``smtp_tls_policy_maps`` is queried with ``postmap -q`` for the
  relayhost exactly as written (``[host]:port``), then, for a relayhost without brackets, the
  host name and its parent domains in ``.parent`` form; the first word of the value is the level.
  ``smtp_tls_security_level``, then the legacy ``smtp_enforce_tls``/``smtp_use_tls``, apply when
  nothing is found. ``smtp_tls_per_site`` (obsolete) is not read.
- The policy check is looked for in ``smtpd_relay_restrictions``, ``smtpd_recipient_restrictions``
  and ``smtpd_data_restrictions``; restriction classes (``smtpd_restriction_classes``) and
  per-service ``-o`` overrides in ``master.cf`` are not followed.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TextIO

from policyd import predict
from policyd.certificate import (
    connector_name_matches,
    key_matches_certificate,
    validity_problem,
)
from policyd.config import Config, load_config
from policyd.errors import ConfigError
from policyd.model import CertificateFacts, InboundConnector, Tenant, normalize_domain

# Statuses and areas.
OK = "ok"
WARNING = "warning"
ERROR = "error"
NOTE = "note"
STATUSES = (OK, WARNING, ERROR, NOTE)

CERTIFICATE = "certificate"
TENANT = "tenant"
POSTFIX = "postfix"
SUMMARY = "summary"
AREAS = (CERTIFICATE, TENANT, POSTFIX, SUMMARY)

#: Text markers of the checklist.
MARKERS = {OK: "[ ok ]", WARNING: "[warn]", ERROR: "[FAIL]", NOTE: "[note]"}
AREA_TITLES = {
    CERTIFICATE: "Certificate",
    TENANT: "Tenant",
    POSTFIX: "Postfix",
    SUMMARY: "Summary",
}

EXIT_OK = 0
EXIT_ERRORS = 1
EXIT_CONFIG = 78

#: Certificates expiring within this many days get a warning.
EXPIRY_WARNING_DAYS = 30

#: Seconds a postconf/postmap run may take.
POSTFIX_TIMEOUT = 10.0

#: Where Debian installs Postfix's tools (not always on a non-root PATH).
POSTFIX_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

#: The Postfix parameters doctor reads (``postconf -x``: ``$name`` expanded).
POSTFIX_PARAMETERS = (
    "mail_version",
    "relayhost",
    "smtp_tls_security_level",
    "smtp_enforce_tls",
    "smtp_use_tls",
    "smtp_tls_policy_maps",
    "smtp_tls_cert_file",
    "smtp_tls_key_file",
    "smtp_tls_chain_files",
    "smtp_tls_CAfile",
    "smtpd_relay_restrictions",
    "smtpd_recipient_restrictions",
    "smtpd_data_restrictions",
    "smtpd_policy_service_default_action",
    "queue_directory",
    "notify_classes",
    "bounce_notice_recipient",
    "2bounce_notice_recipient",
    "delay_notice_recipient",
)

#: Microsoft 365's MX endpoint, the only host an OnPremises connector relays through.
M365_RELAY_SUFFIX = ".mail.protection.outlook.com"
#: Microsoft 365's SMTP AUTH submission endpoints (connectors do not apply there).
M365_SUBMISSION_HOSTS = ("smtp.office365.com", "smtp-legacy.office365.com")

#: TLS levels that never fall back to plain text, and what weaker ones mean.
MANDATORY_TLS = ("encrypt", "fingerprint", "verify", "secure", "dane-only")
RELAY_CONTROL = ("reject_unauth_destination", "defer_unauth_destination")
#: Actions that keep mail flowing when the daemon does not answer.
FAIL_OPEN_ACTIONS = ("dunno", "warn", "prepend", "info")

#: Envelope addresses of the closing table.
FOREIGN_SENDER = "john@fabrikam.example"
OUTSIDE_RECIPIENT = "kate@tailspintoys.example"
PLACEHOLDER_DOMAIN = "contoso.example"


# --- plain data ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the checklist."""

    id: str
    area: str
    status: str
    finding: str
    fix: str = ""

    def as_json(self) -> dict[str, str]:
        return {
            "id": self.id,
            "area": self.area,
            "status": self.status,
            "finding": self.finding,
            "fix": self.fix,
        }


@dataclass(frozen=True, slots=True)
class MailClass:
    """One row of the closing table: will Microsoft 365 relay this class of mail?"""

    id: str
    label: str
    sender: str
    recipient: str
    final: tuple[str, ...]
    relayed: bool
    reason: str
    code: str | None
    reply: str | None
    explanation: str
    fix: str

    def as_json(self) -> dict[str, object]:
        return {
            "class": self.id,
            "label": self.label,
            "sender": self.sender,
            "recipient": self.recipient,
            "final": list(self.final),
            "relayed": self.relayed,
            "reason": self.reason,
            "code": self.code,
            "reply": self.reply,
            "explanation": self.explanation,
            "fix": self.fix,
        }


@dataclass(frozen=True, slots=True)
class KeyCheck:
    """The result of comparing a private key with the certificate's leaf."""

    path: str
    result: bool | str  # True/False, or "unreadable: ..." from key_matches_certificate


@dataclass(frozen=True, slots=True)
class TlsPolicy:
    """What ``smtp_tls_policy_maps`` says for the relay host."""

    key: str = ""  # the lookup key that matched, "" when none did
    value: str = ""  # the policy, e.g. "encrypt protocols=>=TLSv1.2"
    error: str = ""  # a lookup that failed (postmap error), "" otherwise


@dataclass(frozen=True, slots=True)
class PostfixFacts:
    """Postfix's configuration as ``postconf -x`` printed it (or why it could not be read)."""

    directory: str
    parameters: Mapping[str, str] = field(default_factory=dict)
    error: str = ""  # non-empty: postconf is missing or failed
    tls_policy: TlsPolicy | None = None  # None: no smtp_tls_policy_maps or not looked up

    def get(self, name: str) -> str:
        return self.parameters.get(name, "").strip()


@dataclass(frozen=True, slots=True)
class Report:
    """The whole audit: the checklist and the closing table."""

    checks: tuple[Check, ...]
    classes: tuple[MailClass, ...]

    @property
    def errors(self) -> int:
        return sum(1 for c in self.checks if c.status == ERROR)

    @property
    def warnings(self) -> int:
        return sum(1 for c in self.checks if c.status == WARNING)

    @property
    def exit_code(self) -> int:
        return EXIT_ERRORS if self.errors else EXIT_OK

    def status_of(self, check_id: str) -> str | None:
        """The status of the check ``check_id``, None when it was not made."""
        for check in self.checks:
            if check.id == check_id:
                return check.status
        return None

    def as_json(self) -> dict[str, object]:
        return {
            "errors": self.errors,
            "warnings": self.warnings,
            "checks": [c.as_json() for c in self.checks],
            "classes": [c.as_json() for c in self.classes],
        }


# --- the audit (pure) ----------------------------------------------------------------------------


def audit(
    config: Config,
    *,
    now: datetime,
    postfix: PostfixFacts | None = None,
    key: KeyCheck | None = None,
    resolve: Callable[[str], str] = os.path.normpath,
) -> Report:
    """Build the checklist and the closing table from plain inputs.

    ``postfix`` None skips the Postfix checks; ``resolve`` turns a path into its comparable
    form (the wiring passes ``os.path.realpath``, tests may pass anything).
    """
    tenant, onprem = config.tenant, config.onprem
    attribution = predict.attribute(tenant, onprem, now)
    checks: list[Check] = []
    checks.extend(_certificate_checks(config, attribution, key, now))
    checks.extend(_tenant_checks(config, attribution))
    classes = mail_classes(config, attribution)
    if postfix is not None:
        checks.extend(_postfix_checks(config, postfix, classes, resolve))
    checks.append(_summary_check(classes))
    return Report(tuple(checks), classes)


# --- certificate ---------------------------------------------------------------------------------


def _certificate_checks(
    config: Config, attribution: predict.Attribution, key: KeyCheck | None, now: datetime
) -> list[Check]:
    cert = config.onprem.certificate
    if cert is None:
        return [
            Check(
                "certificate-configured",
                CERTIFICATE,
                WARNING,
                "No certificate is configured (onprem.certificate): only the IP path can "
                "attribute mail, so null-sender bounces and forwarded mail cannot relay.",
                "Set onprem.certificate to the PEM in Postfix's smtp_tls_cert_file, issued by a "
                "public CA for a name under an accepted domain.",
            )
        ]
    checks = [Check("certificate-configured", CERTIFICATE, OK, f"Certificate {cert.path}.")]
    if not cert.readable:
        checks.append(
            Check(
                "certificate-readable",
                CERTIFICATE,
                ERROR,
                f"The certificate {cert.path} is {cert.error}.",
                "Point onprem.certificate (and Postfix's smtp_tls_cert_file) at a readable PEM "
                "file holding the certificate followed by its intermediates.",
            )
        )
        return checks
    names = ", ".join(cert.names) or "none"
    checks.append(
        Check(
            "certificate-readable",
            CERTIFICATE,
            OK,
            f"Leaf {cert.subject or '(empty subject)'} (names: {names}), issued by {cert.issuer}.",
        )
    )
    checks.append(_validity_check(cert, now))
    checks.append(_self_signed_check(cert))
    checks.append(_chain_check(cert))
    checks.extend(_certificate_name_checks(config.tenant, cert))
    if key is not None:
        checks.append(_key_check(cert, key))
    checks.append(_client_auth_check(cert))
    return checks


def _validity_check(cert: CertificateFacts, now: datetime) -> Check:
    problem = validity_problem(cert, now)
    if problem:
        return Check(
            "certificate-validity",
            CERTIFICATE,
            ERROR,
            f"The certificate is {problem}: Microsoft 365 ignores it, so no certificate "
            "connector matches.",
            "Install a currently valid certificate (renew it) in onprem.certificate and "
            "smtp_tls_cert_file, then reload Postfix and the daemon.",
        )
    assert cert.not_after is not None  # validity_problem checked both bounds
    days = (cert.not_after - now).days
    until = cert.not_after.date().isoformat()
    if days < EXPIRY_WARNING_DAYS:
        return Check(
            "certificate-validity",
            CERTIFICATE,
            WARNING,
            f"The certificate expires on {until}, in {days} days.",
            "Renew the certificate now and install the new PEM (with its chain) before it expires.",
        )
    return Check(
        "certificate-validity",
        CERTIFICATE,
        OK,
        f"Valid until {until} ({days} days left).",
    )


def _self_signed_check(cert: CertificateFacts) -> Check:
    if cert.self_signed:
        return Check(
            "certificate-self-signed",
            CERTIFICATE,
            ERROR,
            "The certificate is self-signed; Microsoft 365 accepts only certificates issued by "
            "a public CA.",
            "Get a certificate from a public CA for a name under an accepted domain.",
        )
    return Check("certificate-self-signed", CERTIFICATE, OK, "Issued by a CA, not self-signed.")


def _chain_check(cert: CertificateFacts) -> Check:
    if cert.self_signed:
        return Check(
            "certificate-chain",
            CERTIFICATE,
            ERROR,
            "A self-signed certificate has no chain to a trusted root.",
            "Get a certificate from a public CA and put its intermediates after it in the PEM.",
        )
    if not cert.chain_complete:
        return Check(
            "certificate-chain",
            CERTIFICATE,
            ERROR,
            f"The chain is incomplete ({cert.chain_problem}); Microsoft 365 answers "
            "5.7.64 TenantAttribution when an intermediate is missing.",
            "Append the intermediate certificates to the PEM after the leaf (Postfix sends "
            "what smtp_tls_cert_file holds; smtp_tls_CAfile is not sent).",
        )
    return Check(
        "certificate-chain",
        CERTIFICATE,
        OK,
        "The chain up to a trusted root is complete.",
    )


def _certificate_name_checks(tenant: Tenant, cert: CertificateFacts) -> list[Check]:
    """Names against every enabled OnPremises connector, then the one-label depth rule."""
    connectors = [c for c in tenant.relay_connectors if c.tls_sender_certificate_name]
    matched: list[str] = []
    matched_by: list[str] = []
    for connector in connectors:
        hits = [
            n
            for n in cert.names
            if connector_name_matches(connector.tls_sender_certificate_name, n)
        ]
        if hits:
            matched_by.append(f"'{connector.name}' ({connector.tls_sender_certificate_name})")
            matched.extend(n for n in hits if n not in matched)
    shown = ", ".join(cert.names) or "none"
    checks: list[Check] = []
    if matched:
        checks.append(
            Check(
                "certificate-connector-name",
                CERTIFICATE,
                OK,
                f"{', '.join(matched)} matches connector {', '.join(matched_by)}.",
            )
        )
    elif connectors:
        expected = ", ".join(
            f"'{c.name}' expects {c.tls_sender_certificate_name}" for c in connectors
        )
        checks.append(
            Check(
                "certificate-connector-name",
                CERTIFICATE,
                ERROR,
                f"No certificate name ({shown}) matches an enabled OnPremises connector: "
                f"{expected}.",
                "Set the connector's TlsSenderCertificateName to a name of the certificate "
                "(Set-InboundConnector), or present a certificate with the expected name.",
            )
        )
    else:
        checks.append(
            Check(
                "certificate-connector-name",
                CERTIFICATE,
                WARNING,
                f"No enabled OnPremises connector has a TlsSenderCertificateName, so the "
                f"certificate ({shown}) attributes nothing.",
                "Set TlsSenderCertificateName on the OnPremises connector to the certificate's "
                "name (Set-InboundConnector -TlsSenderCertificateName).",
            )
        )
    candidates = matched or list(cert.names)
    if not candidates:
        return checks
    qualifying = [(n, predict.certificate_name_domain(tenant, n)) for n in candidates]
    passing = [(n, d) for n, d in qualifying if d]
    if passing:
        name, domain = passing[0]
        checks.append(
            Check(
                "certificate-accepted-domain",
                CERTIFICATE,
                OK,
                f"{name} is an accepted domain or one label below one ({domain}).",
            )
        )
        return checks
    name = candidates[0]
    add = _domain_to_add(name)
    under = next((d.domain for d in tenant.accepted_domains if add.endswith("." + d.domain)), "")
    where = (
        f"more than one label below the accepted domain {under}"
        if under
        else "not under any accepted domain"
    )
    checks.append(
        Check(
            "certificate-accepted-domain",
            CERTIFICATE,
            ERROR if matched else WARNING,
            f"The certificate name {name} is {where}, so the certificate does not let "
            "every sender relay (5.7.64 ATTR36 for bounces and forwards).",
            f"Add {add} as an accepted domain (New-AcceptedDomain), or use a certificate "
            "named directly under an accepted domain.",
        )
    )
    return checks


def _parent(name: str) -> str:
    _, dot, rest = name.partition(".")
    return rest if dot else ""


def _domain_to_add(name: str) -> str:
    """The accepted domain that would make certificate ``name`` pass the one-label rule."""
    return name[2:] if name.startswith("*.") else _parent(name) or name


def _key_check(cert: CertificateFacts, key: KeyCheck) -> Check:
    where = key.path or cert.path
    if key.result is True:
        return Check(
            "certificate-key",
            CERTIFICATE,
            OK,
            f"The private key {where} belongs to the certificate.",
        )
    if key.result is False:
        return Check(
            "certificate-key",
            CERTIFICATE,
            ERROR,
            f"The private key {where} does not belong to the certificate: the TLS handshake "
            "fails and Postfix presents no certificate.",
            "Install the key that was generated with this certificate's request "
            "(smtp_tls_key_file), or reissue the certificate for this key.",
        )
    return Check(
        "certificate-key",
        CERTIFICATE,
        ERROR,
        f"The private key could not be checked: {key.result}.",
        "Give a readable, unencrypted PEM private key with --key (run doctor as a user that "
        "may read it).",
    )


def _client_auth_check(cert: CertificateFacts) -> Check:
    if cert.client_auth_eku is False:
        return Check(
            "certificate-client-auth",
            CERTIFICATE,
            NOTE,
            "The certificate has no clientAuth extended key usage; Microsoft does not document "
            "needing it, and public CAs stop issuing it in 2026.",
            "Nothing to do unless Microsoft 365 starts to refuse it; watch 5.7.64 replies after "
            "renewals.",
        )
    usage = (
        "allows clientAuth"
        if cert.client_auth_eku
        else "has no extended key usage extension (any use allowed)"
    )
    return Check("certificate-client-auth", CERTIFICATE, OK, f"The certificate {usage}.")


# --- tenant --------------------------------------------------------------------------------------


def _tenant_checks(config: Config, attribution: predict.Attribution) -> list[Check]:
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
    checks.append(_egress_check(config, attribution))
    checks.append(_ipv6_check(config, attribution))
    return checks


def _looks_meant(connector: InboundConnector, config: Config) -> str:
    """Why an inert connector looks meant for this server ("" when it does not)."""
    cert = config.onprem.certificate
    if cert is not None and cert.readable and connector.tls_sender_certificate_name:
        hits = [
            n
            for n in cert.names
            if connector_name_matches(connector.tls_sender_certificate_name, n)
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
        if connector.grants_relay:
            continue
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
        "Add the egress address to an enabled OnPremises connector's SenderIPAddresses, or "
        "present a certificate that its TlsSenderCertificateName matches.",
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


# --- the closing table ---------------------------------------------------------------------------

#: What fixes a refusal, by reason id (one sentence each).
REASON_FIXES = {
    predict.NO_CONNECTOR: (
        "Add the egress address to an enabled OnPremises connector's SenderIPAddresses, or "
        "present a certificate its TlsSenderCertificateName matches."
    ),
    predict.NULL_SENDER: (
        "Present a CA-signed certificate named under an accepted domain that an enabled "
        "OnPremises connector's TlsSenderCertificateName matches: only that path relays the "
        "null sender."
    ),
    predict.FORWARDED: (
        "Present a certificate named under an accepted domain, or rewrite forwarded senders "
        "with SRS into an accepted domain (postsrsd, onprem.srs_domain)."
    ),
    predict.SENDER_NOT_ACCEPTED: (
        "Send as an accepted domain, add the sender's domain to the tenant, or present a "
        "certificate named under an accepted domain."
    ),
    predict.DIRECT_SEND_REJECTED: (
        "Make a connector match this server, or turn RejectDirectSend off."
    ),
}


#: Refusals that a certificate under an accepted domain would turn into relays.
_CERTIFICATE_FIXABLE = (predict.NULL_SENDER, predict.FORWARDED, predict.SENDER_NOT_ACCEPTED)


def mail_classes(config: Config, attribution: predict.Attribution) -> tuple[MailClass, ...]:
    """Run the real predictor for each class of mail and say whether it relays."""
    tenant, onprem = config.tenant, config.onprem
    own = tenant.accepted_domains[0].domain if tenant.accepted_domains else PLACEHOLDER_DOMAIN
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
        )
        relayed = prediction.verdict == predict.ACCEPT
        fix = "" if relayed else REASON_FIXES.get(prediction.reason, "")
        if (
            not relayed
            and attribution.connector is not None
            and attribution.method == predict.BY_CERTIFICATE
            and not attribution.certificate_domain
            and prediction.reason in _CERTIFICATE_FIXABLE
        ):
            fix = (
                f"Add {_domain_to_add(attribution.certificate_name)} as an accepted domain: "
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
            )
        )
    return tuple(classes)


def _summary_check(classes: Sequence[MailClass]) -> Check:
    refused = [c for c in classes if not c.relayed]
    if not refused:
        return Check(
            "summary-mail-classes",
            SUMMARY,
            OK,
            "Microsoft 365 will relay every class of mail in the table below.",
        )
    labels = ", ".join(c.label for c in refused)
    own_refused = any(c.id == "own-domain" for c in refused)
    return Check(
        "summary-mail-classes",
        SUMMARY,
        ERROR if own_refused else WARNING,
        f"{len(refused)} of {len(classes)} classes of mail will be refused with 5.7.64: {labels}.",
        refused[0].fix,
    )


# --- Postfix -------------------------------------------------------------------------------------


def _postfix_checks(
    config: Config,
    postfix: PostfixFacts,
    classes: Sequence[MailClass],
    resolve: Callable[[str], str],
) -> list[Check]:
    if postfix.error:
        return [
            Check(
                "postfix-config",
                POSTFIX,
                WARNING,
                f"Could not read Postfix configuration: {postfix.error}.",
                "Install Postfix's postconf, or name the configuration directory with "
                "--postfix-dir.",
            )
        ]
    version = postfix.get("mail_version")
    checks = [
        Check(
            "postfix-config",
            POSTFIX,
            OK,
            f"Read {postfix.directory}/main.cf with postconf"
            + (f" (Postfix {version})." if version else "."),
        )
    ]
    checks.append(_relayhost_check(postfix))
    checks.append(_tls_level_check(postfix))
    checks.append(_cert_file_check(config, postfix, resolve))
    checks.extend(_policy_checks(config, postfix, resolve))
    checks.append(_bounce_check(config, postfix, classes))
    return checks


def relay_hosts(relayhost: str) -> list[tuple[str, str, bool]]:
    """``relayhost`` as (host, port, bracketed) entries; Postfix allows a list since 3.5."""
    hosts: list[tuple[str, str, bool]] = []
    for item in re.split(r"[\s,]+", relayhost.strip()):
        if not item:
            continue
        match = re.fullmatch(r"\[([^\]]*)\](?::(\S+))?", item)
        if match:
            hosts.append((match.group(1).lower(), match.group(2) or "25", True))
            continue
        host, colon, port = item.rpartition(":")
        if colon and port.isdigit():
            hosts.append((host.lower(), port, False))
        else:
            hosts.append((item.lower(), "25", False))
    return hosts


def tls_policy_keys(relayhost: str) -> list[str]:
    """The ``smtp_tls_policy_maps`` keys Postfix would look up for the relay, in order."""
    keys: list[str] = []
    for item in re.split(r"[\s,]+", relayhost.strip()):
        if not item:
            continue
        keys.append(item)
        if item.startswith("["):
            continue
        host = item.rpartition(":")[0] if re.search(r":\d+$", item) else item
        if host != item:
            keys.append(host)
        labels = host.split(".")
        keys.extend("." + ".".join(labels[i:]) for i in range(1, len(labels)))
    return list(dict.fromkeys(keys))


def _relayhost_check(postfix: PostfixFacts) -> Check:
    relayhost = postfix.get("relayhost")
    example = "relayhost = [contoso-com.mail.protection.outlook.com]:25"
    if not relayhost:
        return Check(
            "postfix-relayhost",
            POSTFIX,
            ERROR,
            "relayhost is empty: Postfix delivers directly to the recipients' MX, not through "
            "Microsoft 365, so the predictions do not apply.",
            f"Set {example} (your tenant's MX endpoint).",
        )
    problems: list[tuple[str, str]] = []
    for host, port, bracketed in relay_hosts(relayhost):
        if host in M365_SUBMISSION_HOSTS:
            problems.append(
                (
                    ERROR,
                    f"{host} is Microsoft 365's SMTP AUTH submission endpoint, where connectors "
                    "do not apply",
                )
            )
        elif not host.endswith(M365_RELAY_SUFFIX):
            problems.append(
                (
                    WARNING,
                    f"{host} is not a *{M365_RELAY_SUFFIX} host, so mail may not reach "
                    "Microsoft 365 from here",
                )
            )
        elif port != "25":
            problems.append(
                (ERROR, f"{host} is reached on port {port}; the MX endpoint listens on port 25")
            )
        elif not bracketed:
            problems.append(
                (
                    WARNING,
                    f"{host} is written without brackets, so Postfix first looks up MX records "
                    "for it",
                )
            )
    if not problems:
        return Check(
            "postfix-relayhost",
            POSTFIX,
            OK,
            f"relayhost = {relayhost} is Microsoft 365's MX endpoint.",
        )
    status = ERROR if any(s == ERROR for s, _ in problems) else WARNING
    return Check(
        "postfix-relayhost",
        POSTFIX,
        status,
        f"relayhost = {relayhost}: " + "; ".join(text for _, text in problems) + ".",
        f"Set {example} (your tenant's MX endpoint, in brackets, port 25).",
    )


def _tls_level_check(postfix: PostfixFacts) -> Check:
    policy = postfix.tls_policy
    if policy is not None and policy.value:
        level = policy.value.split()[0].lower()
        source = f"smtp_tls_policy_maps entry {policy.key} = {policy.value}"
    else:
        level = postfix.get("smtp_tls_security_level").lower()
        source = f"smtp_tls_security_level = {level}" if level else ""
        if not level:
            if postfix.get("smtp_enforce_tls").lower() == "yes":
                level, source = "encrypt", "smtp_enforce_tls = yes"
            elif postfix.get("smtp_use_tls").lower() == "yes":
                level, source = "may", "smtp_use_tls = yes"
            else:
                level, source = "none", "smtp_tls_security_level is empty (no TLS)"
    lookup_note = ""
    if policy is not None and policy.error:
        lookup_note = f" (smtp_tls_policy_maps could not be read: {policy.error})"
    fix = (
        "Set smtp_tls_security_level = encrypt, or give the relayhost an encrypt entry in "
        "smtp_tls_policy_maps (e.g. [contoso-com.mail.protection.outlook.com]:25 encrypt)."
    )
    if level in MANDATORY_TLS:
        return Check(
            "postfix-tls-mandatory",
            POSTFIX,
            OK,
            f"TLS to the relay is mandatory ({source}){lookup_note}.",
        )
    if level == "dane":
        return Check(
            "postfix-tls-mandatory",
            POSTFIX,
            WARNING,
            f"TLS to the relay is mandatory only when TLSA records are found ({source})"
            f"{lookup_note}; otherwise a failed TLS negotiation falls back to plain text and "
            "sends no certificate.",
            fix,
        )
    return Check(
        "postfix-tls-mandatory",
        POSTFIX,
        ERROR,
        f"TLS to the relay is not mandatory ({source}){lookup_note}: a failed TLS negotiation "
        "falls back to plain text and sends no certificate.",
        fix,
    )


def _presented_files(postfix: PostfixFacts) -> tuple[str, list[str]]:
    """(parameter, files) holding the certificate Postfix's SMTP client presents.

    ``smtp_tls_chain_files`` (Postfix 3.4+) wins over ``smtp_tls_cert_file``; its files hold
    keys and certificates in sequence, so any of them may be the certificate.
    """
    chain = postfix.get("smtp_tls_chain_files")
    if chain:
        return "smtp_tls_chain_files", [f for f in re.split(r"[\s,]+", chain) if f]
    cert_file = postfix.get("smtp_tls_cert_file")
    return "smtp_tls_cert_file", [cert_file] if cert_file else []


def _cert_file_check(config: Config, postfix: PostfixFacts, resolve: Callable[[str], str]) -> Check:
    parameter, files = _presented_files(postfix)
    presented = ", ".join(files)
    configured = config.certificate_path
    if not files and not configured:
        return Check(
            "postfix-cert-file",
            POSTFIX,
            NOTE,
            f"{parameter} is empty and no certificate is configured: Postfix presents no "
            "client certificate, only the IP path attributes mail.",
            "Install a CA-signed certificate named under an accepted domain in "
            "smtp_tls_cert_file and onprem.certificate.",
        )
    if not files:
        return Check(
            "postfix-cert-file",
            POSTFIX,
            ERROR,
            f"{parameter} is empty, so Postfix presents no certificate, while the daemon "
            f"predicts with {configured}.",
            f"Set smtp_tls_cert_file = {configured} (and smtp_tls_key_file) in main.cf.",
        )
    if not configured:
        return Check(
            "postfix-cert-file",
            POSTFIX,
            WARNING,
            f"Postfix presents {presented} ({parameter}), but onprem.certificate is empty, so "
            "the daemon predicts as if no certificate were sent.",
            f'Set onprem.certificate = "{files[-1]}" in the daemon\'s configuration.',
        )
    if any(resolve(f) == resolve(configured) for f in files):
        return Check(
            "postfix-cert-file",
            POSTFIX,
            OK,
            f"{parameter} is the configured certificate {configured}.",
        )
    return Check(
        "postfix-cert-file",
        POSTFIX,
        ERROR,
        f"Postfix presents {presented} ({parameter}), but the daemon predicts with {configured}.",
        "Make onprem.certificate and smtp_tls_cert_file name the same file.",
    )


# -- restriction lists --


def split_postfix_list(text: str) -> list[str]:
    """Split a Postfix list on commas and whitespace, keeping ``{ ... }`` groups whole."""
    tokens: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if depth == 0 and (char == "," or char.isspace()):
            if current:
                tokens.append("".join(current))
                current = []
            continue
        if char == "{":
            depth += 1
        elif char == "}" and depth:
            depth -= 1
        current.append(char)
    if current:
        tokens.append("".join(current))
    return tokens


@dataclass(frozen=True, slots=True)
class PolicyCheck:
    """One ``check_policy_service`` in a restriction list."""

    position: int  # index of the restriction in its list
    server: str
    options: Mapping[str, str]


def policy_checks(restrictions: str) -> tuple[list[str], list[PolicyCheck]]:
    """(restriction names in order, the ``check_policy_service`` entries with their index)."""
    tokens = split_postfix_list(restrictions)
    names: list[str] = []
    checks: list[PolicyCheck] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        name = token.lower()
        if name == "check_policy_service" and index + 1 < len(tokens):
            server, options = _policy_argument(tokens[index + 1])
            checks.append(PolicyCheck(len(names), server, options))
            names.append(name)
            index += 2
            continue
        names.append(name)
        index += 1
    return names, checks


def _policy_argument(token: str) -> tuple[str, dict[str, str]]:
    if not (token.startswith("{") and token.endswith("}")):
        return token, {}
    server = ""
    options: dict[str, str] = {}
    for raw in split_postfix_list(token[1:-1]):
        part = raw[1:-1].strip() if raw.startswith("{") and raw.endswith("}") else raw
        name, equals, value = part.partition("=")
        if equals:
            options[name.strip().lower()] = value.strip()
        elif not server:
            server = part
    return server, options


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A listening address in comparable form."""

    kind: str  # "inet", "unix" or "any" (systemd socket activation: cannot tell)
    host: str = ""  # "" = every interface
    port: str = ""
    path: str = ""


def _twisted_args(description: str) -> tuple[str, list[str], dict[str, str]]:
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for char in description:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    kind, rest = parts[0].lower(), parts[1:]
    positional = [p for p in rest if "=" not in p]
    keywords = dict(p.split("=", 1) for p in rest if "=" in p)
    return kind, positional, keywords


def listen_endpoints(listen: Sequence[str]) -> list[Endpoint]:
    """Our ``server.listen`` Twisted endpoint strings as comparable endpoints."""
    endpoints: list[Endpoint] = []
    for description in listen:
        kind, positional, keywords = _twisted_args(description)
        if kind in ("tcp", "tcp6"):
            port = keywords.get("port") or (positional[0] if positional else "")
            host = keywords.get("interface", "")
            if host in ("0.0.0.0", "::"):
                host = ""
            endpoints.append(Endpoint("inet", host.lower(), port))
        elif kind == "unix":
            path = keywords.get("address") or (positional[0] if positional else "")
            endpoints.append(Endpoint("unix", path=path))
        elif kind == "systemd":
            endpoints.append(Endpoint("any"))
    return endpoints


def postfix_endpoint(server: str, queue_directory: str) -> Endpoint:
    """A ``check_policy_service`` server (``inet:host:port``, ``unix:path``) as an endpoint."""
    kind, colon, rest = server.partition(":")
    if not colon or kind.lower() not in ("inet", "unix", "local"):
        kind, rest = ("unix" if "/" in server and ":" not in server else "inet"), server
    if kind.lower() in ("unix", "local"):
        path = rest if rest.startswith("/") else os.path.join(queue_directory, rest)
        return Endpoint("unix", path=path)
    host, _, port = rest.rpartition(":")
    host = host.strip("[]").lower()
    return Endpoint("inet", host, port)


_LOOPBACK_NAMES = {"localhost": ("127.0.0.1", "::1")}


def _same_endpoint(ours: Endpoint, theirs: Endpoint, resolve: Callable[[str], str]) -> bool:
    if ours.kind == "any":
        return True
    if ours.kind != theirs.kind:
        return False
    if ours.kind == "unix":
        return resolve(ours.path) == resolve(theirs.path)
    if ours.port != theirs.port:
        return False
    if not ours.host:
        return True
    hosts = _LOOPBACK_NAMES.get(theirs.host, (theirs.host,))
    try:
        wanted = ipaddress.ip_address(ours.host)
        return any(_ip_equal(wanted, h) for h in hosts)
    except ValueError:
        return ours.host in hosts


def _ip_equal(address: ipaddress.IPv4Address | ipaddress.IPv6Address, text: str) -> bool:
    try:
        return ipaddress.ip_address(text) == address
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class _Found:
    parameter: str
    names: list[str]
    check: PolicyCheck


def _find_ours(
    postfix: PostfixFacts, parameter: str, ours: Sequence[Endpoint], resolve: Callable[[str], str]
) -> _Found | None:
    names, found = policy_checks(postfix.get(parameter))
    queue = postfix.get("queue_directory") or "/var/spool/postfix"
    for check in found:
        endpoint = postfix_endpoint(check.server, queue)
        if any(_same_endpoint(o, endpoint, resolve) for o in ours):
            return _Found(parameter, names, check)
    return None


def _policy_checks(
    config: Config, postfix: PostfixFacts, resolve: Callable[[str], str]
) -> list[Check]:
    ours = listen_endpoints(config.server.listen)
    listen = ", ".join(config.server.listen)
    snippet = "contrib/postfix/main.cf.snippet"
    checks: list[Check] = []

    relay = _find_ours(postfix, "smtpd_relay_restrictions", ours, resolve)
    recipient = _find_ours(postfix, "smtpd_recipient_restrictions", ours, resolve)
    data = _find_ours(postfix, "smtpd_data_restrictions", ours, resolve)
    rcpt = recipient or relay
    if rcpt is None:
        others = [
            check.server
            for parameter in ("smtpd_relay_restrictions", "smtpd_recipient_restrictions")
            for check in policy_checks(postfix.get(parameter))[1]
        ]
        seen = f" (policy services named there: {', '.join(others)})" if others else ""
        checks.append(
            Check(
                "postfix-policy-recipient",
                POSTFIX,
                ERROR,
                f"No check_policy_service for the daemon's endpoint ({listen}) in "
                f"smtpd_recipient_restrictions or smtpd_relay_restrictions{seen}: Postfix "
                "never asks for a prediction.",
                f"Add check_policy_service {{ inet:127.0.0.1:PORT, default_action=DUNNO }} to "
                f"smtpd_recipient_restrictions as in {snippet}.",
            )
        )
    else:
        checks.append(_recipient_order_check(postfix, rcpt))
    if data is None:
        checks.append(
            Check(
                "postfix-policy-data",
                POSTFIX,
                WARNING,
                "No check_policy_service for the daemon in smtpd_data_restrictions: no "
                f"{config.policy.header} header and no per-message counts.",
                f"Add the same check_policy_service to smtpd_data_restrictions as in {snippet}.",
            )
        )
    else:
        checks.append(
            Check(
                "postfix-policy-data",
                POSTFIX,
                OK,
                f"smtpd_data_restrictions asks the daemon ({data.check.server}).",
            )
        )
    found = [f for f in (rcpt, data) if f is not None]
    if found:
        checks.append(_default_action_check(postfix, found))
    return checks


def _recipient_order_check(postfix: PostfixFacts, found: _Found) -> Check:
    before = found.names[: found.check.position]
    controlled = any(n in RELAY_CONTROL for n in before)
    if found.parameter == "smtpd_recipient_restrictions":
        relay_names, _ = policy_checks(postfix.get("smtpd_relay_restrictions"))
        controlled = controlled or any(n in RELAY_CONTROL for n in relay_names)
    permits = [n for n in before if n.startswith("permit")]
    where = f"{found.parameter} ({found.check.server})"
    if permits:
        return Check(
            "postfix-policy-recipient",
            POSTFIX,
            WARNING,
            f"The policy check in {where} comes after {', '.join(permits)}: mail those "
            "clients send (local applications, typically) is never predicted.",
            f"Move relay control to smtpd_relay_restrictions and leave check_policy_service "
            f"without a permit in front of it in {found.parameter}.",
        )
    if not controlled:
        return Check(
            "postfix-policy-recipient",
            POSTFIX,
            WARNING,
            f"The policy check in {where} runs before reject_unauth_destination: the daemon "
            "is asked about relay attempts Postfix refuses anyway.",
            "Put reject_unauth_destination in smtpd_relay_restrictions, or before "
            f"check_policy_service in {found.parameter}.",
        )
    return Check(
        "postfix-policy-recipient",
        POSTFIX,
        OK,
        f"{where} asks the daemon after relay control (reject_unauth_destination).",
    )


def _default_action_check(postfix: PostfixFacts, found: Sequence[_Found]) -> Check:
    global_action = postfix.get("smtpd_policy_service_default_action")
    closed: list[str] = []
    for item in found:
        action = item.check.options.get("default_action", global_action)
        word = action.split()[0].lower() if action else ""
        if word not in FAIL_OPEN_ACTIONS:
            closed.append(f"{item.parameter}: {action or '(empty)'}")
    if not closed:
        return Check(
            "postfix-policy-default-action",
            POSTFIX,
            OK,
            "A stopped daemon fails open: default_action is DUNNO.",
        )
    return Check(
        "postfix-policy-default-action",
        POSTFIX,
        ERROR,
        "When the daemon is stopped or slow Postfix answers "
        + "; ".join(closed)
        + ", holding up all mail instead of failing open.",
        "Write check_policy_service { ENDPOINT, default_action=DUNNO } (or set "
        "smtpd_policy_service_default_action = DUNNO).",
    )


def _bounce_check(config: Config, postfix: PostfixFacts, classes: Sequence[MailClass]) -> Check:
    bounce = next(c for c in classes if c.id == "null-sender-bounce")
    facts = [f"notify_classes = {postfix.get('notify_classes') or '(empty)'}"]
    notify = {n.lower() for n in split_postfix_list(postfix.get("notify_classes"))}
    outside: list[str] = []
    for cls, parameter in (
        ("bounce", "bounce_notice_recipient"),
        ("2bounce", "2bounce_notice_recipient"),
        ("delay", "delay_notice_recipient"),
    ):
        if cls not in notify:
            continue
        value = postfix.get(parameter)
        facts.append(f"{parameter} = {value}")
        domain = normalize_domain(value.rpartition("@")[2]) if "@" in value else ""
        if (
            domain
            and domain not in config.onprem.local_domains
            and not config.tenant.accepts(domain)
        ):
            outside.append(value)
    detail = "; ".join(facts)
    if bounce.relayed:
        return Check(
            "postfix-null-sender-bounces",
            POSTFIX,
            OK,
            "Postfix sends its own bounces with a null sender, and the certificate path relays "
            f"them ({detail}).",
        )
    extra = f"; postmaster notices to {', '.join(outside)} leave the same way" if outside else ""
    return Check(
        "postfix-null-sender-bounces",
        POSTFIX,
        NOTE,
        "Postfix sends its own bounces and delay notices with a null sender, which relays only "
        f"through a certificate connector; here they are refused [{bounce.reason}]{extra}. "
        f"Notices: {detail}.",
        bounce.fix,
    )


# --- output --------------------------------------------------------------------------------------


def write_text(report: Report, out: TextIO, *, title: str = "") -> None:
    """The checklist grouped by area, then the closing table and the totals."""
    if title:
        out.write(f"{title}\n")
    for area in AREAS:
        checks = [c for c in report.checks if c.area == area]
        if not checks:
            continue
        out.write(f"\n{AREA_TITLES[area]}\n")
        for check in checks:
            out.write(f"  {MARKERS[check.status]} {check.id}: {check.finding}\n")
            if check.fix:
                out.write(f"         fix: {check.fix}\n")
    out.write("\nWill Microsoft 365 relay it?\n")
    width = max(len(c.label) for c in report.classes)
    for row in report.classes:
        envelope = f"<{row.sender}> -> {', '.join(row.final)}"
        answer = "yes" if row.relayed else "NO "
        reason = f"[{row.reason}]"
        out.write(f"  {row.label:<{width}}  {answer}  {reason:<24}  {envelope}\n")
        if row.fix:
            out.write(f"  {'':<{width}}       fix: {row.fix}\n")
    out.write(f"\n{report.errors} errors, {report.warnings} warnings\n")


def write_json(report: Report, out: TextIO) -> None:
    json.dump(report.as_json(), out, indent=2)
    out.write("\n")


# --- wiring --------------------------------------------------------------------------------------


def _tool(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=POSTFIX_PATH)


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=POSTFIX_TIMEOUT,
        check=False,
        env={**os.environ, "LC_ALL": "C"},
    )


def parse_postconf(output: str) -> dict[str, str]:
    """``name = value`` lines as printed by ``postconf`` into a mapping."""
    parameters: dict[str, str] = {}
    for line in output.splitlines():
        name, equals, value = line.partition("=")
        if equals and name.strip():
            parameters[name.strip()] = value.strip()
    return parameters


def read_postfix(directory: str) -> PostfixFacts:
    """Read Postfix's parameters with ``postconf -c DIR -x`` (and the relay's TLS policy)."""
    postconf = _tool("postconf")
    if postconf is None:
        return PostfixFacts(directory, error="postconf not found (is Postfix installed?)")
    try:
        done = _run([postconf, "-c", directory, "-x", *POSTFIX_PARAMETERS])
    except (OSError, subprocess.SubprocessError) as error:
        return PostfixFacts(directory, error=f"postconf failed: {error}")
    if done.returncode != 0:
        message = _last_line(done.stderr) or f"exit status {done.returncode}"
        return PostfixFacts(directory, error=message)
    parameters = parse_postconf(done.stdout)
    policy = None
    maps = parameters.get("smtp_tls_policy_maps", "").strip()
    if maps:
        policy = _lookup_tls_policy(directory, maps, parameters.get("relayhost", ""))
    return PostfixFacts(directory, parameters, tls_policy=policy)


def _lookup_tls_policy(directory: str, maps: str, relayhost: str) -> TlsPolicy:
    postmap = _tool("postmap")
    if postmap is None:
        return TlsPolicy(error="postmap not found")
    errors: list[str] = []
    for key in tls_policy_keys(relayhost):
        for table in split_postfix_list(maps):
            try:
                done = _run([postmap, "-c", directory, "-q", key, table])
            except (OSError, subprocess.SubprocessError) as error:
                errors.append(f"{table}: {error}")
                continue
            if done.returncode == 0 and done.stdout.strip():
                return TlsPolicy(key=key, value=done.stdout.strip().splitlines()[0])
            if done.returncode not in (0, 1) or "fatal" in done.stderr:
                errors.append(f"{table}: {_last_line(done.stderr)}")
    return TlsPolicy(error="; ".join(dict.fromkeys(errors)))


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _key_check_for(config: Config, key: str | None) -> KeyCheck | None:
    """Compare ``--key`` with the configured certificate (nothing to compare without both)."""
    if not config.certificate_path or not key:
        return None
    return KeyCheck(key, key_matches_certificate(config.certificate_path, key))


def main(
    config_path: str,
    *,
    postfix_dir: str = "/etc/postfix",
    key: str | None = None,
    as_json: bool = False,
    out: TextIO | None = None,
    now: datetime | None = None,
) -> int:
    """``m365-policyd doctor``: 0 without errors, 1 with errors, 78 on a configuration error."""
    stream = out if out is not None else sys.stdout
    try:
        config = load_config(config_path)
    except ConfigError as error:
        sys.stderr.write(f"m365-policyd: configuration error: {error}\n")
        return EXIT_CONFIG
    postfix = read_postfix(postfix_dir)
    report = audit(
        config,
        now=now if now is not None else datetime.now(UTC),
        postfix=postfix,
        key=_key_check_for(config, key),
        resolve=os.path.realpath,
    )
    if as_json:
        write_json(report, stream)
    else:
        title = f"m365-policyd doctor: {config.path}, Postfix {postfix_dir}"
        write_text(report, stream, title=title)
    return report.exit_code
