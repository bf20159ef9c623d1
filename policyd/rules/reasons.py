"""Every reason id of docs/relay-rules.md and every word the product says about it, in one table.

A prediction ends in one reason id. For each id this table holds its verdict, the enhanced
status code and the reply Microsoft 365 gives (exactly as Microsoft writes it, as relay-rules.md's
reply table quotes it), the short phrase our own one-line SMTP
replies carry (``policy.action`` other than ``dunno``), the one sentence that says what makes
such mail relay (``doctor``), and the predicted **kind** (the observed-reply vocabulary
of ``policyd.rules.outcomes`` the outcome join compares in). Predict, the engine, doctor,
configuration validation (``policy.by_reason`` keys), the outcome join and metrics (label
pre-seeding) all read it; a test proves that each text below appears nowhere else in
``policyd/``.

The client-submission reasons (SPEC §5.4, ``policyd.rules.submission``) close the table: on an
SMTP AUTH route Microsoft 365 answers per credential and sender, not per connector.
"""

from __future__ import annotations

from dataclasses import dataclass

from policyd.constants import ACCEPT, REJECT
from policyd.rules import outcomes

# Reason ids. The same strings appear in metrics labels, the header, logs, JSON and docs.
LOCAL = "local"
OTHER_ROUTE = "other-route"
RECIPIENT_IN_TENANT = "recipient-in-tenant"
CERTIFICATE_CONNECTOR = "certificate-connector"
SENDER_ACCEPTED_DOMAIN = "sender-accepted-domain"
SRS_REWRITTEN = "srs-rewritten"
NO_CONNECTOR = "no-connector"
NULL_SENDER = "null-sender"
FORWARDED = "forwarded"
SENDER_NOT_ACCEPTED = "sender-not-accepted"
DIRECT_SEND_REJECTED = "direct-send-rejected"
PARTNER_RESTRICTED = "partner-restricted"
SUBMISSION_ACCEPTED = "submission-accepted"
SUBMISSION_NO_CREDENTIALS = "submission-no-credentials"
SUBMISSION_SENDER_NOT_LOGIN = "submission-sender-not-login"
#: Reasons decided at Microsoft 365's SMTP AUTH client-submission endpoint (SPEC §5.4), where
#: the login decides and no connector is ever consulted.
SUBMISSION_REASONS = frozenset(
    (SUBMISSION_ACCEPTED, SUBMISSION_NO_CREDENTIALS, SUBMISSION_SENDER_NOT_LOGIN)
)

# The enhanced status codes Microsoft 365 refuses with.
CODE_5764 = "5.7.64"
CODE_5768 = "5.7.68"
CODE_5751 = "5.7.51"
CODE_5757 = "5.7.57"
CODE_5760 = "5.7.60"

# Shared by three reasons: Microsoft 365 gives one reply for every ATTR36 refusal.
_ATTR36 = "550 5.7.64 Relay Access Denied ATTR36"


@dataclass(frozen=True, slots=True)
class Reason:
    """One reason id and its words. Refusing reasons have all fields; accepting ones only two."""

    id: str
    verdict: str  # ACCEPT or REJECT
    code: str | None = None  # enhanced status code Microsoft 365 refuses with; None: it accepts
    reply: str | None = None  # Microsoft 365's reply, exactly as it writes it; None: it accepts
    short: str = ""  # the phrase in our own one-line SMTP replies ("" when accepting)
    fix: str = ""  # one sentence: what makes this mail relay ("" when accepting)
    kind: str = outcomes.ACCEPTED  # the predicted kind, compared with observed replies


#: The table, accepting reasons first, each group in the order of relay-rules.md's steps.
# E501: every text stays on one line, so that grep finds each in exactly one place.
TABLE: tuple[Reason, ...] = (
    Reason(LOCAL, ACCEPT),
    Reason(OTHER_ROUTE, ACCEPT),
    Reason(RECIPIENT_IN_TENANT, ACCEPT),
    Reason(CERTIFICATE_CONNECTOR, ACCEPT),
    Reason(SENDER_ACCEPTED_DOMAIN, ACCEPT),
    Reason(SRS_REWRITTEN, ACCEPT),
    Reason(SUBMISSION_ACCEPTED, ACCEPT),
    Reason(
        NO_CONNECTOR,
        REJECT,
        CODE_5764,
        "550 5.7.64 TenantAttribution; Relay Access Denied",
        "no inbound connector of the tenant matches this server",
        "Add the egress address to an enabled OnPremises connector's SenderIPAddresses, or present a certificate its TlsSenderCertificateName matches.",  # noqa: E501
        outcomes.NO_CONNECTOR,
    ),
    Reason(
        NULL_SENDER,
        REJECT,
        CODE_5764,
        _ATTR36,
        "a null sender relays only through a certificate connector",
        "Present a CA-signed certificate named under an accepted domain that an enabled OnPremises connector's TlsSenderCertificateName matches: only that path relays the null sender.",  # noqa: E501
        outcomes.ATTR36,
    ),
    Reason(
        FORWARDED,
        REJECT,
        CODE_5764,
        _ATTR36,
        "forwarded mail from a sender domain the tenant does not accept",
        "Present a certificate named under an accepted domain, or rewrite forwarded senders with SRS into an accepted domain (postsrsd, onprem.srs_domain).",  # noqa: E501
        outcomes.ATTR36,
    ),
    Reason(
        SENDER_NOT_ACCEPTED,
        REJECT,
        CODE_5764,
        _ATTR36,
        "the sender domain is not an accepted domain of the tenant",
        "Send as an accepted domain, add the sender's domain to the tenant, or present a certificate named under an accepted domain.",  # noqa: E501
        outcomes.ATTR36,
    ),
    Reason(
        DIRECT_SEND_REJECTED,
        REJECT,
        CODE_5768,
        "550 5.7.68 TenantInboundAttribution; Direct Send not allowed for this organization from unauthorized sources",  # noqa: E501
        "the tenant rejects Direct Send from unattributed servers",
        "Make an OnPremises connector match this server, or authenticate it with a Partner connector for its egress address or certificate (MC1093237), or turn RejectDirectSend off.",  # noqa: E501
        outcomes.DIRECT_SEND,
    ),
    Reason(
        PARTNER_RESTRICTED,
        REJECT,
        CODE_5751,
        "550 5.7.51 TenantInboundAttribution; There is a partner connector configured that matched the message's recipient domain. The connector had either the RestrictDomainsToIPAddresses or RestrictDomainsToCertificate set",  # noqa: E501
        "a restricting Partner connector covers the sender and this server does not satisfy it",
        "Make an OnPremises connector match this server again (its certificate or egress address), or add this server's egress address or certificate to the restricting Partner connector.",  # noqa: E501
        outcomes.PARTNER_RESTRICTED,
    ),
    Reason(
        SUBMISSION_NO_CREDENTIALS,
        REJECT,
        CODE_5757,
        "530 5.7.57 Client not authenticated to send mail",
        "Postfix does not authenticate to the SMTP AUTH endpoint for this mail",
        "Turn smtp_sasl_auth_enable on for the delivering service and give smtp_sasl_password_maps an entry for this next hop (or, with smtp_sender_dependent_authentication, for this sender).",  # noqa: E501
        outcomes.AUTH_REQUIRED,
    ),
    Reason(
        SUBMISSION_SENDER_NOT_LOGIN,
        REJECT,
        CODE_5760,
        "550 5.7.60 SMTP; Client does not have permissions to send as this sender",
        "the SMTP AUTH login may not send as this sender",
        "Grant the login mailbox SendAs on the sender (and list it in [submission] send_as), or rewrite the sender to the login mailbox (sender_canonical_maps, smtp_generic_maps).",  # noqa: E501
        outcomes.SEND_AS_DENIED,
    ),
)

#: Each reason by its id.
BY_ID: dict[str, Reason] = {reason.id: reason for reason in TABLE}

#: Reason ids by verdict, in table order.
ACCEPT_REASONS: tuple[str, ...] = tuple(r.id for r in TABLE if r.verdict == ACCEPT)
REFUSE_REASONS: tuple[str, ...] = tuple(r.id for r in TABLE if r.verdict == REJECT)
REASON_IDS: tuple[str, ...] = tuple(BY_ID)


def predicted_kind(reason: str) -> str:
    """The kind a prediction with ``reason`` is compared in; KeyError when unknown."""
    return BY_ID[reason].kind
