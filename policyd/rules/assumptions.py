"""Named assumptions: where Microsoft's own texts disagree, the rule follows a key.

Each key of ``[assumptions]`` decides one doubtful point of the relay rule. The prediction
(``policyd.rules.predict``) notes every doubtful point it passes, recomputes the answer with that
key's other setting, and names the key when the predicted kind would change: in the
explanation, in ``check --json`` (``"assumptions": [...]``) and in the prediction log line.
``doctor`` lists the keys the setup relies on with the change that removes the dependence.

The defaults never predict a refusal on a doubtful point: under doubt the daemon lets mail
through and says so. The two ``submission_*`` keys belong to the client-submission rules
(SPEC §5.4, ``policyd.rules.submission``), which name them the same way.

Sources for each point: ``docs/relay-rules.md``, "Assumptions: where Microsoft's texts disagree".
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# The keys, as written in [assumptions] and named in explanations, JSON and logs.
WILDCARD_CONNECTOR_COVERS_APEX = "wildcard_connector_covers_apex"
SAN_NAMES_COUNT = "san_names_count"
HOST_CONNECTOR_NAME_MUST_BE_ACCEPTED = "host_connector_name_must_be_accepted"
MATCH_SUBDOMAINS_COVERS_SENDERS = "match_subdomains_covers_senders"
FOREIGN_SENDER_VIA_CERTIFICATE = "foreign_sender_via_certificate"
SUBMISSION_SENDER_MUST_BE_LOGIN = "submission_sender_must_be_login"
SUBMISSION_NULL_SENDER_REFUSED = "submission_null_sender_refused"


@dataclass(frozen=True, slots=True)
class Assumptions:
    """One setting per key of docs/relay-rules.md; the defaults are the spec's."""

    wildcard_connector_covers_apex: bool = True
    san_names_count: bool = True
    host_connector_name_must_be_accepted: bool = False
    match_subdomains_covers_senders: bool = True
    foreign_sender_via_certificate: bool = True
    submission_sender_must_be_login: bool = False
    submission_null_sender_refused: bool = False

    def value(self, key: str) -> bool:
        """The setting of ``key``; AttributeError for a key that is not an assumption."""
        setting: bool = getattr(self, key)
        return setting

    def flipped(self, key: str) -> Assumptions:
        """The same assumptions with ``key`` set the other way."""
        return replace(self, **{key: not self.value(key)})

    def setting(self, key: str) -> str:
        """``key = true`` as the configuration file writes it."""
        return f"{key} = {'true' if self.value(key) else 'false'}"


#: The spec's defaults.
DEFAULT = Assumptions()


@dataclass(frozen=True, slots=True)
class Doubt:
    """One doubtful point: what each setting means, who says so, and how to stop depending on it."""

    key: str
    if_true: str  # what the rule does with the key true (a phrase)
    if_false: str  # ... and with it false
    sources: str  # who says which
    remedy: str  # the change to the setup that makes predictions independent of the key
    decides: bool = True  # False: declared, but no rule reads it yet

    def meaning(self, setting: bool) -> str:
        return self.if_true if setting else self.if_false


#: Every key, in the assumptions' order.
DOUBTS: tuple[Doubt, ...] = (
    Doubt(
        WILDCARD_CONNECTOR_COVERS_APEX,
        "a connector's *.contoso.com also matches the certificate name contoso.com",
        "a connector's *.contoso.com matches only names under contoso.com, not contoso.com itself",
        'New-InboundConnector documents *.contoso.com only as "a domain and all subdomains"',
        "put a name under the connector's domain (mail.contoso.com) into the certificate, or set "
        "the connector's TlsSenderCertificateName to the certificate's exact name",
    ),
    Doubt(
        SAN_NAMES_COUNT,
        "the certificate's SAN DNS names count, not only its subject CN",
        "only the certificate's subject CN counts",
        "KB 3169958 says CN or SAN; KB 4019940 speaks of the subject name only",
        "make the name the connector expects the certificate's subject CN",
    ),
    Doubt(
        HOST_CONNECTOR_NAME_MUST_BE_ACCEPTED,
        "a host-name TlsSenderCertificateName (mail.contoso.com) attributes only when it is "
        "itself an accepted domain",
        "a host-name TlsSenderCertificateName (mail.contoso.com) attributes when it is one "
        "label below an accepted domain",
        "KB 3169958 asks Hybrid Configuration Wizard users to switch to *.contoso.com and the "
        "2025 Exchange Team blog wants a non-wildcard value to be an accepted domain; KB 4019940 "
        "accepts one label below",
        "switch the connector's TlsSenderCertificateName to *.contoso.com "
        "(Set-InboundConnector), or add the host name as an accepted domain, as KB 3169958 says",
    ),
    Doubt(
        MATCH_SUBDOMAINS_COVERS_SENDERS,
        "MatchSubDomains also makes sub.contoso.com senders and certificate names accepted",
        "MatchSubDomains covers recipients only; sub.contoso.com senders and certificate names "
        "need their own accepted domain",
        "Microsoft documents MatchSubDomains for sending and receiving on subdomains of "
        "InternalRelay domains, not for the relay rule",
        "add the subdomain itself as an accepted domain (New-AcceptedDomain)",
    ),
    Doubt(
        FOREIGN_SENDER_VIA_CERTIFICATE,
        "a certificate connector under an accepted domain relays senders of any domain",
        "a certificate connector relays only accepted-domain senders and the null sender",
        'KB 3169958 says the certificate covers "sending from domains not added"; a Microsoft '
        "support answer quoted in MicrosoftDocs/OfficeDocs-Support#174 says it does not",
        "rewrite foreign senders into an accepted domain (SRS, onprem.srs_domain) or send as "
        "an accepted domain",
    ),
    Doubt(
        SUBMISSION_SENDER_MUST_BE_LOGIN,
        "on an SMTP AUTH route without a send_as list, a sender other than the login is refused",
        "on an SMTP AUTH route without a send_as list, any sender is accepted",
        "Microsoft documents SendAs per mailbox (the login's own address always works); which "
        "other addresses a login may use is a tenant permission the daemon cannot read",
        "list the addresses each login may send as in [submission] send_as",
    ),
    Doubt(
        SUBMISSION_NULL_SENDER_REFUSED,
        "the null sender is refused on an SMTP AUTH route",
        "the null sender is accepted on an SMTP AUTH route",
        "one public IIS log shows an authenticated MAIL FROM:<> refused with 5.7.60; no "
        "Microsoft text",
        "send bounces through a connector route rather than SMTP AUTH",
    ),
)

#: Each doubt by its key.
BY_KEY: dict[str, Doubt] = {doubt.key: doubt for doubt in DOUBTS}

#: Every key, in order.
KEYS: tuple[str, ...] = tuple(BY_KEY)


def ordered(keys: set[str] | frozenset[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``keys`` in the assumptions' order."""
    return tuple(key for key in KEYS if key in keys)


def note(key: str, assumptions: Assumptions) -> str:
    """One phrase naming the key, its setting and what it means: for explanations and doctor."""
    doubt = BY_KEY[key]
    return f"the assumption {assumptions.setting(key)} ({doubt.meaning(assumptions.value(key))})"
