"""``m365-policyd check``: predict one envelope offline and explain the reasoning.

Every prediction that depends on a named assumption says so: its explanation names
the key, ``--json`` lists the keys under ``"assumptions"`` (per recipient and per final
address), and the text output adds an ``assumes`` line with each key's setting.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, TextIO

from policyd.constants import ACCEPT, REJECT
from policyd.engine.policy import lookup_problem
from policyd.errors import LookupFailureError
from policyd.rules import predict
from policyd.rules.assumptions import Assumptions
from policyd.rules.predict import Attribution, RecipientPrediction, RouteContext, Sender
from policyd.rules.predictor import by_sender
from policyd.rules.rewrite import GENERIC_PARAMETER, SenderRewrite
from policyd.sources.instances import describe as describe_instance

if TYPE_CHECKING:
    from policyd.sources.state import State

#: Verdict for a recipient whose alias expansion failed: Postfix itself defers such mail.
ERROR = "error"


@dataclass(frozen=True, slots=True)
class CheckResult:
    sender: Sender
    attribution: Attribution
    recipients: tuple[RecipientPrediction | tuple[str, str], ...]  # (recipient, problem) on error
    #: With ``[postfix]``: each final address's route, as the prediction used it.
    routes: dict[str, RouteContext] = field(default_factory=dict)
    #: The ``[assumptions]`` the prediction ran with.
    assumptions: Assumptions = field(default_factory=Assumptions)
    #: With ``[postfix]``: the instance read, and the content-filter detours it reports.
    instance: str = ""
    detours: tuple[str, ...] = ()
    #: With ``[postfix]``: the sender as cleanup(8) queues it (each route adds its service's
    #: ``smtp_generic_maps``); None without ``[postfix]`` or when a rewriting table failed.
    queued: SenderRewrite | None = None

    @property
    def verdict(self) -> str:
        """accept only when every recipient is predicted to pass."""
        for entry in self.recipients:
            if not isinstance(entry, RecipientPrediction) or entry.verdict == REJECT:
                return REJECT
        return ACCEPT


def run_check(state: State, sender: str, recipients: Sequence[str], now: datetime) -> CheckResult:
    """Predict ``recipients`` of ``sender`` with ``state`` at time ``now``, exactly as the
    daemon does (``state.predictor``); with ``[postfix]`` each final address's route is kept
    for the explanation."""
    predictor = state.predictor
    tenant = by_sender(predictor.tenants, sender) or predictor.tenants[0]
    onprem = predictor.onprem_for(tenant)
    attribution = predictor.attribution(tenant, now)
    queued: SenderRewrite | None = None
    router = state.router
    if router is not None:
        try:
            queued = router.queued(sender)
        except LookupFailureError as error:
            failed = tuple((recipient, lookup_problem(error)) for recipient in recipients)
            view = predict.sender_view(sender, tenant.tenant, onprem)
            return CheckResult(view, attribution, failed, {}, tenant.tenant.assumptions)
    view = predict.sender_view(sender, tenant.tenant, onprem, queued)
    results: list[RecipientPrediction | tuple[str, str]] = []
    routes: dict[str, RouteContext] = {}
    for recipient in recipients:
        try:
            final = state.aliases.expand(recipient)
            prediction, _ = predictor.predict(sender, recipient, final, now)
            if router is not None:
                for address in prediction.final:
                    routes[address] = router.context(sender, address, now, queued)
            results.append(prediction)
        except LookupFailureError as error:
            results.append((recipient, lookup_problem(error)))
    instance = ""
    detours: tuple[str, ...] = ()
    if state.postfix is not None:
        loaded = state.postfix
        instance = str(describe_instance(loaded.view.config_directory, loaded.view.parameters))
        detours = tuple(str(detour) for detour in loaded.detours)
    return CheckResult(
        view,
        attribution,
        tuple(results),
        routes,
        tenant.tenant.assumptions,
        instance,
        detours,
        queued,
    )


def as_json(result: CheckResult) -> dict[str, object]:
    """The ``check --json`` object (the README), plus per-address detail under ``addresses``."""
    recipients: list[dict[str, object]] = []
    for entry in result.recipients:
        if not isinstance(entry, RecipientPrediction):
            recipient, problem = entry
            recipients.append(
                {
                    "recipient": recipient,
                    "final": [],
                    "verdict": ERROR,
                    "code": None,
                    "reply": None,
                    "reason": None,
                    "explanation": f"A table lookup failed, so Postfix would defer: {problem}",
                    "assumptions": [],
                    "addresses": [],
                }
            )
            continue
        recipients.append(
            {
                "recipient": entry.recipient,
                "final": list(entry.final),
                "verdict": entry.verdict,
                "code": entry.code,
                "reply": entry.reply,
                "reason": entry.reason,
                "explanation": entry.explanation,
                "assumptions": list(entry.assumptions),
                "addresses": [
                    {
                        "address": a.address,
                        "forwarded": a.forwarded,
                        "verdict": a.verdict,
                        "code": a.code,
                        "reply": a.reply,
                        "reason": a.reason,
                        "explanation": a.explanation,
                        "relayed": a.relayed,
                        "tenant": a.tenant,
                        "route": _route_json(result.routes.get(a.address)),
                        "assumptions": list(a.assumptions),
                    }
                    for a in entry.addresses
                ],
            }
        )
    found: dict[str, object] = {"verdict": result.verdict, "recipients": recipients}
    if result.instance:
        found["postfix"] = {"instance": result.instance, "detours": list(result.detours)}
    if result.queued is not None:
        found["sender"] = rewrite_json(result.queued)
    return found


def rewrite_json(rewrite: SenderRewrite) -> dict[str, object]:
    """The sender before and after Postfix's rewriting, and each table that rewrote it."""
    return {
        "before": rewrite.before,
        "after": rewrite.after,
        "rewritten_by": [
            {
                "parameter": step.parameter,
                "table": step.table,
                "source": step.source,
                "before": step.before,
                "after": step.after,
            }
            for step in rewrite.steps
        ],
        "services_asked": list(rewrite.services),
        "notes": list(rewrite.notes),
    }


def _route_json(context: RouteContext | None) -> dict[str, object] | None:
    if context is None:
        return None
    route = context.route
    return {
        "service": route.transport,
        "nexthop": route.nexthop,
        "address_class": route.address_class,
        "kind": context.kind,
        "decided_by": list(route.steps),
        "certificate": _certificate_text(context),
        "certificate_from": context.certificate_from,
        "egress_addresses": [str(a) for a in context.onprem.egress_addresses],
        "egress_from": context.egress_from,
        "sender": rewrite_json(context.sender) if context.sender is not None else None,
    }


def _certificate_text(context: RouteContext) -> str:
    certificate = context.onprem.certificate
    if certificate is None:
        return context.onprem.certificate_absent or "none"
    return certificate.path


def write_json(result: CheckResult, out: TextIO) -> None:
    json.dump(as_json(result), out, indent=2)
    out.write("\n")


def write_text(result: CheckResult, out: TextIO) -> None:
    """The human explanation: sender, attribution, then each recipient's chain of reasoning."""
    sender = result.sender
    out.write(f"Sender    {_sender_line(sender)}\n")
    if result.queued is not None:
        for line in rewrite_lines(result.queued, "cleanup"):
            out.write(f"  {line}\n")
    if result.instance:
        out.write(f"Postfix   {result.instance}\n")
    for detour in result.detours:
        out.write(f"Filter    {detour}: routes below are those after the filter\n")
    if not result.routes:
        out.write("Connector\n")
        for line in attribution_lines(result.attribution):
            out.write(f"  {line}\n")
    for entry in result.recipients:
        if not isinstance(entry, RecipientPrediction):
            recipient, problem = entry
            out.write(f"\nRecipient {recipient}\n  ERROR  {problem}\n")
            continue
        out.write(f"\nRecipient {entry.recipient}\n")
        for address in entry.addresses:
            shown = f"forwarded to {address.address}" if address.forwarded else address.address
            out.write(f"  {shown}\n")
            context = result.routes.get(address.address)
            if context is not None:
                for line in route_lines(context):
                    out.write(f"    {line}\n")
            outcome = "ACCEPT" if address.verdict == ACCEPT else "REFUSE"
            reply = f"  {address.reply}" if address.reply else ""
            out.write(f"    {outcome}  [{address.reason}]{reply}\n")
            out.write(f"    {address.explanation}\n")
            if address.assumptions:
                settings = ", ".join(result.assumptions.setting(k) for k in address.assumptions)
                out.write(f"    assumes  {settings} ([assumptions], docs/relay-rules.md)\n")
    refused = sum(
        1
        for e in result.recipients
        if not isinstance(e, RecipientPrediction) or e.verdict == REJECT
    )
    total = len(result.recipients)
    out.write(f"\nVerdict   {result.verdict} ({refused} of {total} recipients refused)\n")


def rewrite_lines(rewrite: SenderRewrite, stage: str) -> list[str]:
    """The sender before and after Postfix's rewriting (``stage``: cleanup, or the route), and
    the table of each step."""
    if not rewrite.rewritten:
        lines = [f"{stage:<12} <{rewrite.before}> is not rewritten"]
    else:
        lines = [f"{stage:<12} <{rewrite.before}> -> <{rewrite.after}>"]
    lines += [f"{'':<12} {step}" for step in rewrite.steps]
    rewriters = {step.table for step in rewrite.steps}
    lines += [
        f"{'':<12} asked {table}: no rewrite"
        for table in dict.fromkeys(rewrite.services)
        if table not in rewriters
    ]
    lines += [f"{'':<12} {note}" for note in rewrite.notes]
    return lines


def _sender_line(sender: Sender) -> str:
    if sender.null:
        if sender.given:
            return f"<{sender.given}>, which cleanup(8) queues as <> (null sender)"
        return "<> (null sender: bounces and auto-replies)"
    text = f"<{sender.given}>"
    if sender.address != sender.given:
        text += f", rewritten by Postfix into <{sender.address}>"
    if sender.srs_rewritten:
        text += f", rewritten by SRS into {sender.p1_domain}"
    if not sender.p1_domain:
        return text + ", no domain"
    if sender.accepted_domain:
        return text + f", P1 domain {sender.p1_domain} is accepted ({sender.accepted_domain})"
    return text + f", P1 domain {sender.p1_domain} is not an accepted domain"


def attribution_lines(attribution: Attribution) -> list[str]:
    """How Microsoft 365 attributes the connection, step by step (relay-rules.md steps 3-4)."""
    lines: list[str] = []
    connector = attribution.connector
    if attribution.method == predict.BY_CERTIFICATE and connector is not None:
        lines.append(
            f"certificate  {attribution.certificate_name} matches connector '{connector.name}' "
            f"(TlsSenderCertificateName {connector.tls_sender_certificate_name})"
        )
        if attribution.certificate_domain:
            lines.append(
                f"             under the accepted domain {attribution.certificate_domain}: "
                "every sender may relay"
            )
        else:
            lines.append(f"             {attribution.certificate_problem}")
        lines.append("IP           not consulted: the certificate matched first")
        lines.extend(_partner_lines(attribution))
        return lines
    lines.append(f"certificate  {attribution.certificate_problem}")
    lines.extend(_partner_lines(attribution))
    if attribution.method == predict.BY_IP and connector is not None:
        lines.append(
            f"IP           egress address {attribution.egress_address} is in connector "
            f"'{connector.name}' (SenderIPAddresses)"
        )
    else:
        lines.append(f"IP           {attribution.ip_problem}")
        lines.append("             no connector matches: 550 5.7.64 TenantAttribution")
    return lines


def _partner_lines(attribution: Attribution) -> list[str]:
    """The Partner connectors step 2 asks about: the one this server matches, and the
    restricting ones it does not satisfy."""
    lines: list[str] = []
    if attribution.partner is not None:
        lines.append(
            f"partner      this server matches Partner connector '{attribution.partner.name}' "
            f"by {attribution.partner_match} (authenticated, not Direct Send)"
        )
    for restriction in attribution.restrictions:
        lines.append(
            f"partner      restricting Partner connector '{restriction.connector.name}' is not "
            f"satisfied: {restriction.unmet}"
        )
    return lines


def route_lines(context: RouteContext) -> list[str]:
    """How Postfix delivers one address and what Microsoft 365 sees of it, with sources."""
    route = context.route
    lines = [f"route        {route} [{route.address_class} class]"]
    lines.extend(f"             {step}" for step in route.steps)
    if not context.reaches_microsoft:
        return lines
    if context.sender is not None:
        # cleanup's steps are shown once under Sender; this route adds its smtp_generic_maps.
        lines.append(f"sender       MAIL FROM:<{context.sender.after}>")
        lines.extend(
            f"             {step}"
            for step in context.sender.steps
            if step.parameter == GENERIC_PARAMETER
        )
    certificate = context.onprem.certificate
    if certificate is not None:
        lines.append(f"certificate  {certificate.path} ({context.certificate_from})")
    else:
        lines.append(f"certificate  {_certificate_text(context)}")
    egress = ", ".join(str(a) for a in context.onprem.egress_addresses) or "unknown"
    lines.append(
        f"egress       {egress}" + (f" ({context.egress_from})" if context.egress_from else "")
    )
    lines.extend(f"  {line}" for line in attribution_lines(context.attribution))
    return lines
