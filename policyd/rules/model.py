"""Plain data shared by the domain layer: the tenant, the on-premises side, certificate facts.

Everything here is frozen and built once per configuration generation. Nothing in this module
reads a clock, a file or the network; the loaders in ``exports``, ``certificate``, ``aliases``
and ``config`` produce these objects, and ``predict`` consumes them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from datetime import datetime

from policyd.rules.assumptions import DEFAULT, Assumptions

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Connector types as Exchange Online names them. Only ``OnPremises`` grants relay; a
#: ``Partner`` connector can restrict mail into the tenant (5.7.51) and authenticate it against
#: RejectDirectSend.
ON_PREMISES = "OnPremises"
PARTNER = "Partner"


def normalize_domain(domain: str) -> str:
    """Return the comparable form of a domain: ASCII (IDNA), lower case, no trailing dot.

    Microsoft 365 and Postfix both compare domains case-insensitively; a trailing dot is the
    root of the DNS and means the same domain. Internationalised names are compared in their
    ASCII (``xn--``) form. The stdlib codec implements IDNA 2003; for the rare labels where
    IDNA 2003 and 2008 differ (``ß``, ``ς``) we cannot know which form Exchange Online stores,
    so a label the codec refuses is kept as lower-cased text rather than guessed.
    """
    text = domain.strip().rstrip(".").lower()
    if text.isascii():
        return text
    labels = []
    for label in text.split("."):
        if label.isascii():
            labels.append(label)
            continue
        try:
            labels.append(label.encode("idna").decode("ascii"))
        except UnicodeError:
            labels.append(label)
    return ".".join(labels)


def split_address(address: str) -> tuple[str, str]:
    """Split ``local@domain`` into its local part and normalised domain.

    An address without ``@`` (a bare local name) has an empty domain. The split is on the last
    ``@`` so a quoted local part such as ``"a@b"@contoso.com`` keeps its domain.
    """
    local, at, domain = address.rpartition("@")
    if not at:
        return address, ""
    return local, normalize_domain(domain)


@dataclass(frozen=True, slots=True)
class AcceptedDomain:
    """One accepted domain of the tenant (``Get-AcceptedDomain``)."""

    domain: str  # normalised with normalize_domain
    match_subdomains: bool = False
    # Authoritative or InternalRelay (ExternalRelay exists only on premises)
    domain_type: str = "Authoritative"
    default: bool = False
    initial: bool = False
    sending_from_domain_disabled: bool = False
    source: str = "inline"  # "inline" or the export file it came from, for messages


@dataclass(frozen=True, slots=True)
class InboundConnector:
    """One inbound connector of the tenant (``Get-InboundConnector``)."""

    name: str
    connector_type: str = ON_PREMISES  # OnPremises | Partner (as Exchange names them)
    enabled: bool = True
    sender_ip_addresses: tuple[ipaddress.IPv4Network, ...] = ()
    tls_sender_certificate_name: str = ""  # normalised; "" when the connector is IP-based
    #: ``SenderDomains`` (Partner only): normalised address-space domains, ``*`` = every sender,
    #: ``*.contoso.com`` = contoso.com and every domain under it.
    sender_domains: tuple[str, ...] = ()
    #: Partner only: mail from the sender domains above must come from ``SenderIPAddresses`` /
    #: present a certificate ``TlsSenderCertificateName`` matches, else 550 5.7.51.
    restrict_domains_to_ip_addresses: bool = False
    restrict_domains_to_certificate: bool = False
    source: str = "inline"

    @property
    def grants_relay(self) -> bool:
        """Only an enabled OnPremises connector can attribute relayed mail to the tenant."""
        return self.enabled and self.connector_type == ON_PREMISES

    @property
    def is_partner(self) -> bool:
        """An enabled Partner connector (disabled connectors never match)."""
        return self.enabled and self.connector_type == PARTNER

    @property
    def restricts(self) -> bool:
        """An enabled Partner connector with ``RestrictDomainsToIPAddresses`` or
        ``RestrictDomainsToCertificate`` (both apply to Partner connectors only)."""
        return self.is_partner and (
            self.restrict_domains_to_ip_addresses or self.restrict_domains_to_certificate
        )

    def covers_sender(self, domain: str) -> bool:
        """Does ``SenderDomains`` cover the P1 sender ``domain`` ("" = the null sender)?

        ``*`` covers every sender, the null sender included; ``*.contoso.com`` covers
        contoso.com and every domain under it; another entry covers exactly its domain. An
        empty ``SenderDomains`` (not exported) covers nothing: under doubt, no 5.7.51.
        """
        for entry in self.sender_domains:
            if entry == "*":
                return True
            if not domain:
                continue
            if entry.startswith("*."):
                base = entry[2:]
                if domain == base or domain.endswith("." + base):
                    return True
            elif domain == entry:
                return True
        return False


@dataclass(frozen=True, slots=True)
class Tenant:
    """What Exchange Online knows: accepted domains, inbound connectors, direct-send setting."""

    accepted_domains: tuple[AcceptedDomain, ...] = ()
    connectors: tuple[InboundConnector, ...] = ()
    reject_direct_send: bool = False
    #: How Exchange Online decides where Microsoft's texts disagree (``[assumptions]``).
    assumptions: Assumptions = DEFAULT
    # Derived lookup tables, filled by __post_init__ (not part of equality).
    _exact: frozenset[str] = field(default=frozenset(), compare=False, repr=False)
    _with_subdomains: tuple[str, ...] = field(default=(), compare=False, repr=False)
    _flips: dict[str, Tenant] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_exact", frozenset(d.domain for d in self.accepted_domains))
        object.__setattr__(
            self,
            "_with_subdomains",
            tuple(d.domain for d in self.accepted_domains if d.match_subdomains),
        )
        object.__setattr__(self, "_flips", {})

    def accepted_domain_for(self, domain: str) -> str | None:
        """Return the accepted domain that covers the recipient ``domain`` (normalised), or None.

        A domain is covered by an exact accepted domain, or by a parent accepted domain that
        has ``MatchSubDomains`` (documented for receiving on subdomains). For senders and
        certificate names use ``domain_for_sender``: there, MatchSubDomains is an assumption.
        """
        if domain in self._exact:
            return domain
        for parent in self._with_subdomains:
            if domain.endswith("." + parent):
                return parent
        return None

    def accepts(self, domain: str) -> bool:
        """True when the recipient ``domain`` (normalised) is an accepted domain of the tenant."""
        return self.accepted_domain_for(domain) is not None

    def domain_for_sender(self, domain: str) -> tuple[str, bool]:
        """(accepted domain, doubtful) for a sender or certificate-name ``domain``.

        An exact accepted domain is certain. A parent with ``MatchSubDomains`` counts only under
        the assumption ``match_subdomains_covers_senders``; ``doubtful`` is True whenever such a
        parent is what decides, whatever the setting (the accepted domain is "" when it is off).
        """
        if domain in self._exact:
            return domain, False
        for parent in self._with_subdomains:
            if domain.endswith("." + parent):
                return (parent if self.assumptions.match_subdomains_covers_senders else ""), True
        return "", False

    def flipped(self, key: str) -> Tenant:
        """The same tenant with the assumption ``key`` set the other way (memoised)."""
        other = self._flips.get(key)
        if other is None:
            other = replace(self, assumptions=self.assumptions.flipped(key))
            self._flips[key] = other
        return other

    @property
    def partner_connectors(self) -> tuple[InboundConnector, ...]:
        """The enabled Partner connectors."""
        return tuple(c for c in self.connectors if c.is_partner)

    @property
    def relay_connectors(self) -> tuple[InboundConnector, ...]:
        """The connectors that can grant relay: enabled and OnPremises."""
        return tuple(c for c in self.connectors if c.grants_relay)


@dataclass(frozen=True, slots=True)
class CertificateFacts:
    """What the certificate Postfix presents to Microsoft 365 looks like.

    Built by ``policyd.sources.pem.read_certificate``; no clock is involved, the validity
    window is compared against an injected ``now`` by whoever needs it.
    """

    path: str
    error: str = ""  # non-empty: the file could not be used ("unreadable: ...")
    common_name: str = ""  # normalised CN of the leaf, "" when absent
    dns_names: tuple[str, ...] = ()  # normalised SAN dNSName entries of the leaf
    not_before: datetime | None = None  # timezone-aware UTC
    not_after: datetime | None = None
    self_signed: bool = False
    chain_complete: bool = False  # every issuer up to a trusted root is present or trusted
    chain_problem: str = ""  # why chain_complete is False, in one phrase
    client_auth_eku: bool | None = None  # None: no EKU extension at all (any use allowed)
    issuer: str = ""  # RFC 4514 issuer of the leaf, for messages
    subject: str = ""
    fingerprint_sha256: str = ""

    @property
    def readable(self) -> bool:
        return not self.error

    @property
    def names(self) -> tuple[str, ...]:
        """CN first, then SAN DNS names, without duplicates (linear: issue 16)."""
        return tuple(name for name in dict.fromkeys((self.common_name, *self.dns_names)) if name)


@dataclass(frozen=True, slots=True)
class OnPrem:
    """The on-premises side: what Microsoft 365 sees of our Postfix."""

    egress_addresses: tuple[IPAddress, ...] = ()
    certificate: CertificateFacts | None = None  # None when no certificate is configured
    srs_domain: str = ""  # normalised; "" when no SRS rewriting happens
    local_domains: frozenset[str] = frozenset()
    #: Why no certificate is presented when ``certificate`` is None ("" = none configured).
    certificate_absent: str = ""


#: The name of the tenant a single ``[tenant]`` table describes (metrics, logs, the header).
DEFAULT_TENANT = "default"


@dataclass(frozen=True, slots=True)
class NamedTenant:
    """One tenant of the configuration with what routes mail to it (the README, §5.2)."""

    name: str  # DEFAULT_TENANT for a single [tenant]; the NAME of [tenants.NAME]
    tenant: Tenant
    endpoints: tuple[str, ...] = ()  # next-hop host globs that reach it (with [postfix])
    sender_domains: frozenset[str] = frozenset()  # P1 sender domains routed to it (without)
    certificate: CertificateFacts | None = None  # what Postfix presents to it (without [postfix])
    certificate_path: str = ""  # "" = onprem.certificate applies
    default: bool = False  # takes the mail no other tenant claims

    @property
    def claims_nothing(self) -> bool:
        """Neither endpoints nor sender domains: a default by elimination."""
        return not self.endpoints and not self.sender_domains
