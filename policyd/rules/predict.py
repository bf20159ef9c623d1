"""The relay rule: what Microsoft 365 will answer for each recipient (550 5.7.64 lives here).

This module is the rule of ``docs/relay-rules.md`` as pure functions over plain data: no
reactor, no clock reads, no I/O. The order of the checks below is the order of that page; the
reason ids, their enhanced status codes and Microsoft's reply texts come from the one table
in ``policyd.rules.reasons``; attribution (step 3, the certificate half of step 4, the Partner
connectors step 2 asks about) is ``policyd.rules.attribution``.

Since November 2023 Exchange Online relays a message to a recipient outside the tenant only
when (a) the connection is attributed to an enabled OnPremises inbound connector, by the TLS
client certificate name or by the sending IPv4 address, and (b) the certificate's domain or the
envelope sender (P1 MAIL FROM) domain is an accepted domain. Mail into the tenant is delivered,
except when a restricting Partner connector refuses it (5.7.51) or RejectDirectSend does
(5.7.68). Sources are in ``docs/relay-rules.md``.

Where Microsoft's texts disagree the rule follows a named assumption (docs/relay-rules.md,
``policyd.rules.assumptions``). ``predict_address`` notes each doubtful point it passes,
decides again with that assumption set the other way, and names the assumption (in
``AddressPrediction.assumptions`` and the explanation) when the predicted kind would change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from policyd.constants import ACCEPT, REJECT
from policyd.rules import endpoints, submission
from policyd.rules.assumptions import (
    FOREIGN_SENDER_VIA_CERTIFICATE,
    MATCH_SUBDOMAINS_COVERS_SENDERS,
    note,
    ordered,
)
from policyd.rules.attribution import (
    BY_CERTIFICATE,
    BY_IP,
    Attribution,
    attribute,
    certificate_name_domain,
)
from policyd.rules.model import DEFAULT_TENANT, NamedTenant, OnPrem, Tenant, split_address
from policyd.rules.reasons import (
    BY_ID,
    CERTIFICATE_CONNECTOR,
    DIRECT_SEND_REJECTED,
    FORWARDED,
    LOCAL,
    NO_CONNECTOR,
    NULL_SENDER,
    OTHER_ROUTE,
    PARTNER_RESTRICTED,
    RECIPIENT_IN_TENANT,
    SENDER_ACCEPTED_DOMAIN,
    SENDER_NOT_ACCEPTED,
    SRS_REWRITTEN,
    SUBMISSION_ACCEPTED,
    SUBMISSION_NO_CREDENTIALS,
    SUBMISSION_SENDER_NOT_LOGIN,
    predicted_kind,
)
from policyd.rules.rewrite import SenderRewrite
from policyd.rules.routing import Route

__all__ = [
    "ACCEPT",
    "BY_CERTIFICATE",
    "BY_IP",
    "CERTIFICATE_CONNECTOR",
    "DIRECT_SEND_REJECTED",
    "FORWARDED",
    "LOCAL",
    "NO_CONNECTOR",
    "NULL_SENDER",
    "OTHER_ROUTE",
    "PARTNER_RESTRICTED",
    "RECIPIENT_IN_TENANT",
    "REJECT",
    "SENDER_ACCEPTED_DOMAIN",
    "SENDER_NOT_ACCEPTED",
    "SRS_REWRITTEN",
    "SUBMISSION_ACCEPTED",
    "SUBMISSION_NO_CREDENTIALS",
    "SUBMISSION_SENDER_NOT_LOGIN",
    "AddressPrediction",
    "Attribution",
    "RecipientPrediction",
    "RouteContext",
    "Sender",
    "attribute",
    "certificate_name_domain",
    "predict_address",
    "predict_recipient",
    "seen_sender",
    "sender_view",
]


@dataclass(frozen=True, slots=True)
class RouteContext:
    """Step 1 with ``[postfix]``: how Postfix delivers one final address, and what the
    delivering service presents to Microsoft 365 (``policyd.rules.relay.Router`` builds it)."""

    route: Route
    kind: str  # policyd.rules.endpoints kind of the next hop (RELAY, LEGACY, SUBMISSION, OTHER)
    onprem: OnPrem  # the certificate and egress addresses of the route's service
    attribution: Attribution  # steps 3 and 4 for that service
    certificate_from: str = ""  # where the certificate came from (main.cf / master.cf / toml)
    egress_from: str = ""  # where the egress addresses came from
    #: The tenant this next hop reaches; None for a Microsoft 365 endpoint of no tenant.
    tenant: NamedTenant | None = None
    #: For a client-submission next hop (SMTP AUTH): what deciding it needs (SPEC §5.4).
    submission: submission.SubmissionRoute | None = None
    #: The envelope sender as this route's service writes it, after cleanup(8) and smtp(8)
    #: rewrote it (``policyd.rules.rewrite``); None when not computed.
    sender: SenderRewrite | None = None

    @property
    def reaches_microsoft(self) -> bool:
        return self.route.relays and self.kind in (endpoints.RELAY, endpoints.LEGACY)


@dataclass(frozen=True, slots=True)
class Sender:
    """The envelope sender as Microsoft 365 will see it (P1 MAIL FROM)."""

    address: str  # as Postfix sends it (``rewrite.after``; as given without it); "" is null
    domain: str  # normalised domain of the sender as given, "" for null or a bare local part
    p1_domain: str  # the domain Microsoft 365 sees, after Postfix's and SRS rewriting
    accepted_domain: str  # the accepted domain covering p1_domain, or ""
    srs_rewritten: bool  # SRS replaced the domain (postsrsd asked, or ``srs_domain`` guessed)
    #: Whether p1_domain counts as accepted is decided by a MatchSubDomains parent, i.e. by the
    #: assumption ``match_subdomains_covers_senders`` (either setting).
    doubtful: bool = False
    #: With ``[postfix]``: how cleanup(8) and smtp(8) rewrote the sender given at MAIL FROM.
    rewrite: SenderRewrite | None = None

    @property
    def null(self) -> bool:
        return not self.address

    @property
    def given(self) -> str:
        """The sender as the client gave it at MAIL FROM (what the policy request says)."""
        return self.rewrite.before if self.rewrite is not None else self.address


@dataclass(frozen=True, slots=True)
class AddressPrediction:
    """The prediction for one final address (after alias expansion)."""

    address: str
    forwarded: bool  # the address came from alias expansion
    verdict: str  # ACCEPT or REJECT
    reason: str  # a reason id of policyd.rules.reasons
    code: str | None  # the reason's enhanced status code, None when Microsoft 365 accepts
    reply: str | None  # the SMTP reply Microsoft 365 would give, None when it accepts
    explanation: str  # why, and what to change; names the assumptions it depends on
    relayed: bool  # leaves through Microsoft 365 to a recipient outside the tenant
    #: The assumption keys whose other setting would change the predicted kind, in spec order.
    assumptions: tuple[str, ...] = ()
    #: The tenant's name (``default`` for a single [tenant]); None when the address does not
    #: go through Microsoft 365 (``local``, ``other-route``).
    tenant: str | None = None


@dataclass(frozen=True, slots=True)
class RecipientPrediction:
    """The prediction for one RCPT: refused if any of its final addresses is refused."""

    recipient: str
    addresses: tuple[AddressPrediction, ...]

    @property
    def final(self) -> tuple[str, ...]:
        return tuple(a.address for a in self.addresses)

    @property
    def deciding(self) -> AddressPrediction:
        """The first refused final address, else the first final address."""
        for address in self.addresses:
            if address.verdict == REJECT:
                return address
        return self.addresses[0]

    @property
    def verdict(self) -> str:
        return self.deciding.verdict

    @property
    def reason(self) -> str:
        return self.deciding.reason

    @property
    def code(self) -> str | None:
        return self.deciding.code

    @property
    def reply(self) -> str | None:
        return self.deciding.reply

    @property
    def explanation(self) -> str:
        return self.deciding.explanation

    @property
    def relayed(self) -> bool:
        """Some final address is relayed through Microsoft 365 to the internet."""
        return any(a.relayed for a in self.addresses)

    @property
    def assumptions(self) -> tuple[str, ...]:
        """The assumptions any final address depends on, in spec order."""
        if len(self.addresses) == 1:
            return self.addresses[0].assumptions
        return ordered({key for a in self.addresses for key in a.assumptions})


# --- the sender ----------------------------------------------------------------------------


def sender_view(
    sender: str, tenant: Tenant, onprem: OnPrem, rewrite: SenderRewrite | None = None
) -> Sender:
    """What Microsoft 365 sees as P1 MAIL FROM (relay-rules.md step 5).

    ``rewrite`` (with ``[postfix]``, ``policyd.rules.rewrite``) is how Postfix rewrites
    ``sender``: its result is judged. Where a rewriting service (postsrsd) was asked, its answer
    is the SRS result. Otherwise ``onprem.srs_domain`` is a guess: the SRS rewriter is assumed to
    leave senders of accepted domains alone (postsrsd's excluded domains) and to rewrite any
    other non-null sender into ``srs_domain``.
    """
    _, given_domain = split_address(sender) if sender else ("", "")
    seen = rewrite.after if rewrite is not None else sender
    _, domain = split_address(seen) if seen else ("", "")
    accepted, doubtful = tenant.domain_for_sender(domain) if domain else ("", False)
    if rewrite is not None and rewrite.asked_service:
        return Sender(seen, given_domain, domain, accepted, rewrite.srs, doubtful, rewrite)
    if accepted or not seen or not onprem.srs_domain:
        return Sender(seen, given_domain, domain, accepted, False, doubtful, rewrite)
    srs = onprem.srs_domain
    srs_accepted, srs_doubtful = tenant.domain_for_sender(srs)
    return Sender(seen, given_domain, srs, srs_accepted, True, doubtful or srs_doubtful, rewrite)


# --- steps 1 to 6 for one address -----------------------------------------------------------


def predict_address(
    address: str,
    *,
    forwarded: bool,
    sender: Sender,
    tenant: Tenant,
    onprem: OnPrem,
    attribution: Attribution,
    route: RouteContext | None = None,
    tenant_name: str = DEFAULT_TENANT,
) -> AddressPrediction:
    """Apply relay-rules.md steps 1-6 to one final address.

    ``route`` (with ``[postfix]``) is how Postfix delivers it; its tenant, and its service's
    certificate and egress addresses, then replace ``tenant``, ``onprem`` and ``attribution``.
    ``tenant_name`` names ``tenant`` in the result. The prediction names the assumptions
    (docs/relay-rules.md) whose other setting would change its kind.
    """

    _, domain = split_address(address)

    # 1. Delivered by Postfix itself. A bare local name (an alias result without "@") gets
    #    "@$myorigin" appended by Postfix, which is a local domain in practice.
    if not domain or domain in onprem.local_domains:
        return _accepted(
            address,
            forwarded,
            LOCAL,
            f"{address} is delivered by Postfix itself (onprem.local_domains), "
            "not relayed through Microsoft 365.",
            relayed=False,
        )

    if route is not None:
        if route.sender is not None:
            # MAIL FROM as this route's service writes it (its smtp_generic_maps included).
            sender = sender_view(sender.given, tenant, onprem, route.sender)
        if route.submission is not None and route.kind == endpoints.SUBMISSION:
            return _submitted(
                address, forwarded, route, route.submission, sender, (tenant, tenant_name)
            )
        routed = _routed_elsewhere(address, forwarded, route)
        if routed is not None:
            return routed
        chosen = route.tenant
        if chosen is None:
            return _unknown_endpoint(address, forwarded, route)
        tenant, onprem, attribution = chosen.tenant, route.onprem, route.attribution
        sender = sender_view(sender.given, tenant, onprem, route.sender or sender.rewrite)
        tenant_name = chosen.name

    decided, noted = _decide(
        address,
        domain,
        forwarded=forwarded,
        sender=sender,
        tenant=tenant,
        attribution=attribution,
    )
    foreign = not sender.null and attribution.certificate_grants_relay
    if not (attribution.doubts or sender.doubtful or foreign or noted):
        return replace(decided, tenant=tenant_name)
    candidates = set(attribution.doubts)
    if sender.doubtful:
        candidates.add(MATCH_SUBDOMAINS_COVERS_SENDERS)
    if foreign:
        candidates.add(FOREIGN_SENDER_VIA_CERTIFICATE)
    kind = predicted_kind(decided.reason)
    depends: list[tuple[str, AddressPrediction]] = []
    for key in ordered(candidates):
        other_tenant = tenant.flipped(key)
        other_sender = (
            sender_view(sender.given, other_tenant, onprem, sender.rewrite)
            if key == MATCH_SUBDOMAINS_COVERS_SENDERS
            else sender
        )
        other, _ = _decide(
            address,
            domain,
            forwarded=forwarded,
            sender=other_sender,
            tenant=other_tenant,
            attribution=attribution.flipped(key),
        )
        if predicted_kind(other.reason) != kind:
            depends.append((key, other))
    named = ordered({key for key, _ in depends} | set(noted))
    if not named:
        return replace(decided, tenant=tenant_name)
    settings = tenant.assumptions
    said = "".join(
        f" This depends on {note(key, settings)}; set the other way, the prediction is "
        f"{other.reason}."
        for key, other in depends
    )
    return replace(
        decided,
        explanation=decided.explanation + said,
        assumptions=named,
        tenant=tenant_name,
    )


def _decide(
    address: str,
    domain: str,
    *,
    forwarded: bool,
    sender: Sender,
    tenant: Tenant,
    attribution: Attribution,
) -> tuple[AddressPrediction, tuple[str, ...]]:
    """Steps 2-6 for one address under ``tenant``'s assumptions: (prediction, assumptions the
    prediction names on its own, where a doubtful point keeps it from predicting a refusal)."""
    # 2. Delivered into the tenant: not a relay, except for a restricting Partner connector
    #    (5.7.51) and RejectDirectSend (5.7.68).
    tenant_domain = tenant.accepted_domain_for(domain)
    if tenant_domain:
        return _into_tenant(
            address,
            domain,
            forwarded=forwarded,
            sender=sender,
            tenant=tenant,
            attribution=attribution,
            tenant_domain=tenant_domain,
        )

    # 3. No connector attributes the connection.
    if attribution.connector is None:
        return _refused(
            address,
            forwarded,
            NO_CONNECTOR,
            f"No enabled OnPremises connector matches this server: "
            f"{_attribution_problem(attribution)}. {BY_ID[NO_CONNECTOR].fix}",
            relayed=True,
        ), ()
    connector = attribution.connector.name

    # 4. Certificate connector whose name sits under an accepted domain: every sender relays
    #    (only accepted-domain senders and the null sender without foreign_sender_via_certificate).
    if attribution.certificate_grants_relay and (
        sender.null
        or bool(sender.accepted_domain)
        or tenant.assumptions.foreign_sender_via_certificate
    ):
        return _accepted(
            address,
            forwarded,
            CERTIFICATE_CONNECTOR,
            f"Connector '{connector}' matches the certificate name "
            f"{attribution.certificate_name}, which is under the accepted domain "
            f"{attribution.certificate_domain}, so "
            + (
                "every sender may relay."
                if tenant.assumptions.foreign_sender_via_certificate
                else "the null sender and accepted-domain senders may relay."
            ),
            relayed=True,
        ), ()

    matched = _matched_by(attribution)

    # 5. The P1 sender domain (after SRS) is accepted.
    if sender.accepted_domain:
        if sender.srs_rewritten:
            return _accepted(
                address,
                forwarded,
                SRS_REWRITTEN,
                f"Connector '{connector}' matches {matched}, and SRS rewrites the sender "
                f"domain {sender.domain} into {sender.p1_domain}, an accepted domain"
                f"{_rewrite_text(sender)}.",
                relayed=True,
            ), ()
        return _accepted(
            address,
            forwarded,
            SENDER_ACCEPTED_DOMAIN,
            f"Connector '{connector}' matches {matched}, and the sender's domain "
            f"{sender.p1_domain} is an accepted domain{_rewrite_text(sender)}.",
            relayed=True,
        ), ()

    # 6. Attributed, but neither the certificate domain nor the sender domain is accepted.
    if attribution.certificate_grants_relay:
        cert_problem = (
            f"the certificate name {attribution.certificate_name} relays only accepted-domain "
            "senders under foreign_sender_via_certificate = false"
        )
    else:
        cert_problem = attribution.certificate_problem or "no certificate grants relay"
    if sender.null:
        reason = NULL_SENDER
        why = (
            f"Connector '{connector}' matches {matched}, but a null-sender message (bounce or "
            "auto-reply) relays only through a certificate connector whose certificate name is "
            f"under an accepted domain; here {cert_problem}."
        )
    elif forwarded:
        reason = FORWARDED
        why = (
            f"{address} is a forward and the original sender's domain "
            f"{_p1_text(sender, tenant)} is not accepted, while {cert_problem}; present a "
            "certificate named under an accepted domain, or rewrite forwarded senders with SRS "
            "into an accepted domain (onprem.srs_domain)."
        )
    else:
        reason = SENDER_NOT_ACCEPTED
        why = (
            f"Connector '{connector}' matches {matched}, but the sender's domain "
            f"{_p1_text(sender, tenant)} is not an accepted domain, while {cert_problem}; send "
            "as an accepted domain, add the domain to the tenant, or present a certificate named "
            "under an accepted domain."
        )
    return _refused(address, forwarded, reason, why, relayed=True), ()


def _into_tenant(
    address: str,
    domain: str,
    *,
    forwarded: bool,
    sender: Sender,
    tenant: Tenant,
    attribution: Attribution,
    tenant_domain: str,
) -> tuple[AddressPrediction, tuple[str, ...]]:
    """Step 2: mail for an accepted domain is delivered into the tenant, unless (a) no
    OnPremises connector attributes it and a restricting Partner connector covering the sender
    is not satisfied (5.7.51), or (b) RejectDirectSend is on, no OnPremises or Partner connector
    matches, and the sender's domain is accepted (5.7.68)."""
    delivered = (
        f"{domain} is an accepted domain ({tenant_domain}), so Microsoft 365 delivers to "
        f"{address} inside the tenant; the relay rule does not apply"
    )
    if attribution.connector is not None:
        return _delivered(address, forwarded, f"{delivered}."), ()
    # The sender's domain, never the whole address: without [postfix] predictions are cached by
    # sender domain, so the text must hold for every sender of that domain.
    sender_text = (
        f"senders in {sender.p1_domain}"
        if sender.p1_domain
        else (f"<{sender.address}>" if sender.address else "the null sender")
    )
    for restriction in attribution.restrictions:
        partner = restriction.connector
        if partner.covers_sender(sender.p1_domain):
            covers = ", ".join(partner.sender_domains)
            return _refused(
                address,
                forwarded,
                PARTNER_RESTRICTED,
                f"Partner connector '{partner.name}' restricts mail from {sender_text} "
                f"(SenderDomains {covers}) and this server does not satisfy it: "
                f"{restriction.unmet}; no OnPremises connector matches this server "
                f"({_attribution_problem(attribution)}). {BY_ID[PARTNER_RESTRICTED].fix}",
                relayed=False,
            ), ()
    if not (tenant.reject_direct_send and sender.accepted_domain):
        return _delivered(address, forwarded, f"{delivered}."), ()
    if attribution.partner is not None:
        return _delivered(
            address,
            forwarded,
            f"{delivered}: RejectDirectSend is on and no OnPremises connector matches, but "
            f"Partner connector '{attribution.partner.name}' matches "
            f"{attribution.partner_match}, which authenticates the mail (MC1093237).",
        ), ()
    if sender.doubtful:
        return _delivered(
            address,
            forwarded,
            f"{delivered}. RejectDirectSend is on and no connector matches this server, but the "
            f"sender's domain {sender.p1_domain} is accepted only through MatchSubDomains "
            f"({sender.accepted_domain}); under this doubt no 5.7.68 is predicted "
            f"({note(MATCH_SUBDOMAINS_COVERS_SENDERS, tenant.assumptions)}).",
        ), (MATCH_SUBDOMAINS_COVERS_SENDERS,)
    return _refused(
        address,
        forwarded,
        DIRECT_SEND_REJECTED,
        f"The tenant rejects Direct Send and no OnPremises or Partner connector matches this "
        f"server while the sender's domain {sender.p1_domain} is accepted: fix the connector "
        f"({_attribution_problem(attribution)}), authenticate this server with a Partner "
        "connector, or turn RejectDirectSend off.",
        relayed=False,
    ), ()


def _delivered(address: str, forwarded: bool, explanation: str) -> AddressPrediction:
    return _accepted(address, forwarded, RECIPIENT_IN_TENANT, explanation, relayed=False)


def _accepted(
    address: str, forwarded: bool, reason: str, explanation: str, *, relayed: bool
) -> AddressPrediction:
    """Microsoft 365 accepts: no code, no reply."""
    return AddressPrediction(address, forwarded, ACCEPT, reason, None, None, explanation, relayed)


def _refused(
    address: str, forwarded: bool, reason: str, explanation: str, *, relayed: bool
) -> AddressPrediction:
    """A refusal with ``reason``'s code and Microsoft's reply text from the reasons table."""
    words = BY_ID[reason]
    return AddressPrediction(
        address, forwarded, REJECT, reason, words.code, words.reply, explanation, relayed
    )


def _attribution_problem(attribution: Attribution) -> str:
    parts = [p for p in (attribution.certificate_problem, attribution.ip_problem) if p]
    return "; ".join(parts) or "no connector matches"


def _matched_by(attribution: Attribution) -> str:
    if attribution.method == BY_CERTIFICATE:
        return f"the certificate name {attribution.certificate_name}"
    return f"the egress address {attribution.egress_address}"


def _p1_text(sender: Sender, tenant: Tenant) -> str:
    rewrite = sender.rewrite
    if rewrite is not None and rewrite.rewritten:
        text = sender.p1_domain or f"of <{sender.address}>"
        if sender.srs_rewritten and not rewrite.asked_service:
            text += f" (SRS rewrite of {sender.domain})"
        text += _rewrite_text(sender)
        _, given_domain = split_address(rewrite.before)
        if rewrite.srs and given_domain and tenant.domain_for_sender(given_domain)[0]:
            text += (
                f": postsrsd rewrites {given_domain} senders too, unless its configuration "
                "excludes that domain (postsrsd 1.x SRS_EXCLUDE_DOMAINS, 2.x domains)"
            )
        return text
    if sender.srs_rewritten:
        return f"{sender.p1_domain} (SRS rewrite of {sender.domain})"
    return sender.p1_domain or f"of <{sender.address}>"


def _rewrite_text(sender: Sender) -> str:
    """`` (Postfix rewrites <a> into <b>: TABLES)`` when Postfix rewrote the sender, else ""."""
    rewrite = sender.rewrite
    if rewrite is None or not rewrite.rewritten:
        return ""
    tables = "; ".join(rewrite.tables) or "cleanup(8)"
    return f" (Postfix rewrites <{rewrite.before}> into <{rewrite.after}>: {tables})"


# --- a whole recipient ------------------------------------------------------------------------


def _unknown_endpoint(address: str, forwarded: bool, context: RouteContext) -> AddressPrediction:
    """With several tenants, a Microsoft 365 endpoint that no tenant's endpoints name."""
    route = context.route
    return _refused(
        address,
        forwarded,
        NO_CONNECTOR,
        f"Postfix sends {address} to the Microsoft 365 endpoint {route.nexthop} (master.cf "
        f"service {route.transport}), which no [tenants.NAME] table lists in endpoints: no "
        "configured tenant has a connector for it. Add the endpoint to its tenant's endpoints.",
        relayed=True,
    )


def seen_sender(sender: Sender) -> str:
    """The P1 MAIL FROM address Microsoft 365 sees, for the SMTP AUTH rules (SPEC §5.4).

    The address after Postfix's rewriting (with ``[postfix]``: cleanup's maps, postsrsd's
    answer and the route's ``smtp_generic_maps``, ``policyd.rules.rewrite``). Only where the SRS
    domain is a guess (``onprem.srs_domain``, no rewriting service asked) is the SRS form made up
    (postsrsd writes ``SRS0=HASH=TT=domain=local@srs_domain``; the hash and timestamp are not
    known, so they are shown as ``HHHH`` and ``TT``: such an address is never a login and
    matches only ``*@srs_domain`` in ``send_as``).
    """
    if not sender.srs_rewritten or (sender.rewrite is not None and sender.rewrite.asked_service):
        return sender.address
    local, _ = split_address(sender.address)
    return f"SRS0=HHHH=TT={sender.domain}={local}@{sender.p1_domain}"


def _submitted(  # noqa: PLR0917 - predict_address's own arguments, passed on
    address: str,
    forwarded: bool,
    context: RouteContext,
    route: submission.SubmissionRoute,
    sender: Sender,
    fallback: tuple[Tenant, str],
) -> AddressPrediction:
    """Step 1 to a client-submission endpoint: SPEC §5.4 (``policyd.rules.submission``).

    ``fallback`` is the sender's tenant and its name, for a next hop that selects none."""
    tenant, tenant_name = fallback
    chosen = context.tenant.tenant if context.tenant is not None else tenant
    if context.tenant is not None:
        sender = sender_view(sender.given, chosen, context.onprem, sender.rewrite)
    decided = route.decide(seen_sender(sender), chosen.assumptions)
    _, domain = split_address(address)
    relayed = not chosen.accepted_domain_for(domain)
    if decided.reason == SUBMISSION_ACCEPTED:
        prediction = _accepted(
            address, forwarded, decided.reason, decided.explanation, relayed=relayed
        )
    else:
        prediction = _refused(
            address, forwarded, decided.reason, decided.explanation, relayed=relayed
        )
    return replace(
        prediction,
        assumptions=decided.assumptions,
        tenant=context.tenant.name if context.tenant is not None else tenant_name,
    )


def _routed_elsewhere(
    address: str, forwarded: bool, context: RouteContext
) -> AddressPrediction | None:
    """Step 1 with a route: delivered by Postfix itself, or sent around Microsoft 365."""
    route = context.route
    decided = f" ({route.steps[-1]})" if route.steps else ""
    if not route.relays:
        return _accepted(
            address,
            forwarded,
            LOCAL,
            f"{address} is delivered by Postfix itself through master.cf service "
            f"{route.transport} ({route.command or 'not in master.cf'}, address class "
            f"{route.address_class}){decided}, not relayed through Microsoft 365.",
            relayed=False,
        )
    if context.kind == endpoints.SUBMISSION:
        return _accepted(
            address,
            forwarded,
            OTHER_ROUTE,
            f"Postfix sends {address} to {route.nexthop}, Microsoft 365's client-submission "
            f"endpoint{decided}: SMTP AUTH decides there, not connectors, so the relay rule "
            "does not apply.",
            relayed=False,
        )
    if context.kind == endpoints.OTHER:
        return _accepted(
            address,
            forwarded,
            OTHER_ROUTE,
            f"Postfix sends {address} to {route.nexthop} through master.cf service "
            f"{route.transport}{decided}, which is not a Microsoft 365 endpoint: not relayed "
            "through Microsoft 365.",
            relayed=False,
        )
    return None


def predict_recipient(
    recipient: str,
    final: Sequence[str],
    *,
    sender: Sender,
    tenant: Tenant,
    onprem: OnPrem,
    attribution: Attribution,
    router: Callable[[str], RouteContext] | None = None,
    tenant_name: str = DEFAULT_TENANT,
) -> RecipientPrediction:
    """Predict one RCPT from its final addresses (the alias expansion of ``recipient``).

    ``router`` (with ``[postfix]``) gives each final address's route; see ``predict_address``.

    A final address counts as forwarded when it is not the recipient itself (compared without
    regard to case); an address that the alias maps expand into itself is therefore not a forward.
    """
    original = recipient.casefold()
    addresses = tuple(
        predict_address(
            address,
            forwarded=address.casefold() != original,
            sender=sender,
            tenant=tenant,
            onprem=onprem,
            attribution=attribution,
            route=router(address) if router is not None else None,
            tenant_name=tenant_name,
        )
        for address in (final or (recipient,))
    )
    return RecipientPrediction(recipient, addresses)
