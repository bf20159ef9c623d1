"""doctor's certificate checks: validity, self-signature, chain, names, key and client EKU.

Pure: from ``CertificateFacts`` (``policyd.sources.pem``), the tenant and an injected ``now``.
"""

from __future__ import annotations

from datetime import datetime

from policyd.rules import predict
from policyd.rules.certnames import connector_name_matches, counted_names, validity_problem
from policyd.rules.model import CertificateFacts, Tenant
from policyd.sources.config import Config
from policyd.tools.doctor.report import CERTIFICATE, ERROR, NOTE, OK, WARNING, Check, KeyCheck

#: Certificates expiring within this many days get a warning.
EXPIRY_WARNING_DAYS = 30


def certificate_checks(
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
    """Names against every enabled OnPremises connector, then the one-label depth rule, both
    under the tenant's assumptions (the apex of a wildcard connector, SAN names)."""
    settings = tenant.assumptions
    connectors = [c for c in tenant.relay_connectors if c.tls_sender_certificate_name]
    names = counted_names(cert, settings.san_names_count)
    matched: list[str] = []
    matched_by: list[str] = []
    for connector in connectors:
        hits = [
            n
            for n in names
            if connector_name_matches(
                connector.tls_sender_certificate_name,
                n,
                covers_apex=settings.wildcard_connector_covers_apex,
            )
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
    add = domain_to_add(name)
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


def domain_to_add(name: str) -> str:
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
