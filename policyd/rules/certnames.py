"""Certificate names and validity as Microsoft 365 compares them: pure functions, no I/O.

``policyd.sources.pem`` reads the PEM file Postfix presents into ``CertificateFacts``; this
module answers the two questions the relay rule asks of those facts: is the certificate valid
at an injected ``now``, and does one of its names match a connector's
``TlsSenderCertificateName``. The rules and their sources are in ``docs/relay-rules.md``.
"""

from __future__ import annotations

from datetime import datetime

from policyd.rules.model import CertificateFacts, normalize_domain


def validity_problem(facts: CertificateFacts, now: datetime) -> str:
    """Whether the certificate is valid at ``now``: "" when it is, else one phrase.

    ``"expired on YYYY-MM-DD"`` (after notAfter) or ``"not yet valid until YYYY-MM-DD"``
    (before notBefore); both bounds are inclusive, as in X.509. Dates are UTC. An unreadable
    certificate answers its ``error``; ``now`` must be timezone-aware.
    """
    if facts.error:
        return facts.error
    if facts.not_before is None or facts.not_after is None:
        return "unreadable: no validity period"
    if now < facts.not_before:
        return f"not yet valid until {facts.not_before.date().isoformat()}"
    if now > facts.not_after:
        return f"expired on {facts.not_after.date().isoformat()}"
    return ""


def _norm(name: str) -> str:
    return normalize_domain(name) if name else ""


def connector_name_matches(connector_name: str, cert_name: str) -> bool:
    """Does a connector's ``TlsSenderCertificateName`` match one certificate name (SPEC §5)?

    - Connector ``*.contoso.com``: matches ``contoso.com`` and every name under it, at any
      depth, including certificate wildcard names (``*.contoso.com``, ``*.eu.contoso.com``).
    - Connector without ``*``: matches that exact name, or a certificate wildcard name that
      covers it (certificate ``*.contoso.com`` covers ``mail.contoso.com``, not
      ``contoso.com`` and not ``a.b.contoso.com``: a wildcard stands for exactly one label).
    - A ``*`` anywhere else in the connector name ("no embedded wildcards" per the
      New-InboundConnector docs) never matches.

    Uncertain: Microsoft documents ``*.contoso.com`` only as "a domain and all subdomains" and
    does not say whether the apex or several labels match, nor how a wildcard certificate name
    is compared with an exact connector name; SPEC §5 decides as above (see
    ``shared/reference/m365-relay-rules.md`` §2 and "Open questions"). Comparison is
    case-insensitive, ignores a trailing dot and uses the ASCII form of IDNs.
    """
    connector = _norm(connector_name)
    cert = _norm(cert_name)
    if not connector or not cert:
        return False
    if connector.startswith("*."):
        base = connector[2:]
        if not base or "*" in base:
            return False
        return cert == base or cert.endswith("." + base)
    if "*" in connector:
        return False
    if cert == connector:
        return True
    if cert.startswith("*."):
        covered = cert[2:]
        if not covered or "*" in covered:
            return False
        label, dot, rest = connector.partition(".")
        return bool(label) and bool(dot) and rest == covered
    return False
