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


#: How a connector's ``TlsSenderCertificateName`` relates to one certificate name.
NO_MATCH = "no"
MATCH = "yes"
APEX = "apex"  # connector *.contoso.com, certificate name contoso.com: an assumption decides


def name_match(connector_name: str, cert_name: str) -> str:
    """How a connector's ``TlsSenderCertificateName`` matches one certificate name.

    - Connector ``*.contoso.com``: ``MATCH`` for every name under contoso.com, at any depth,
      including certificate wildcard names (``*.contoso.com``, ``*.eu.contoso.com``); ``APEX``
      for ``contoso.com`` itself, which matches only under the assumption
      ``wildcard_connector_covers_apex`` (New-InboundConnector says no more than "a domain and
      all subdomains").
    - Connector without ``*``: ``MATCH`` for that exact name, or a certificate wildcard name that
      covers it (certificate ``*.contoso.com`` covers ``mail.contoso.com``, not ``contoso.com``
      and not ``a.b.contoso.com``: a wildcard stands for exactly one label).
    - A ``*`` anywhere else in the connector name ("no embedded wildcards" per the
      New-InboundConnector docs) never matches.

    Comparison is case-insensitive, ignores a trailing dot and uses the ASCII form of IDNs.
    Sources: ``docs/relay-rules.md`` (certificate names).
    """
    connector = _norm(connector_name)
    cert = _norm(cert_name)
    if not connector or not cert:
        return NO_MATCH
    if connector.startswith("*."):
        base = connector[2:]
        if not base or "*" in base:
            return NO_MATCH
        if cert == base:
            return APEX
        return MATCH if cert.endswith("." + base) else NO_MATCH
    if "*" in connector:
        return NO_MATCH
    if cert == connector:
        return MATCH
    if cert.startswith("*."):
        covered = cert[2:]
        if not covered or "*" in covered:
            return NO_MATCH
        label, dot, rest = connector.partition(".")
        return MATCH if bool(label) and bool(dot) and rest == covered else NO_MATCH
    return NO_MATCH


def connector_name_matches(
    connector_name: str, cert_name: str, *, covers_apex: bool = True
) -> bool:
    """Does a connector's ``TlsSenderCertificateName`` match one certificate name?

    ``name_match`` gives the rule; ``covers_apex`` is the setting of the assumption
    ``wildcard_connector_covers_apex`` (its default: true).
    """
    kind = name_match(connector_name, cert_name)
    return kind == MATCH or (kind == APEX and covers_apex)


def counted_names(facts: CertificateFacts, san_names_count: bool = True) -> tuple[str, ...]:
    """The certificate names Microsoft 365 compares: CN and SAN DNS names, or (with the
    assumption ``san_names_count`` off) the subject CN only."""
    if san_names_count:
        return facts.names
    return (facts.common_name,) if facts.common_name else ()


def san_only(facts: CertificateFacts, name: str) -> bool:
    """True when ``name`` counts only because SAN names count (it is not the subject CN)."""
    return name != facts.common_name
