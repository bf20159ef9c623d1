"""``m365-policyd check``: predict one envelope offline and explain the reasoning."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, TextIO

from policyd.constants import ACCEPT, REJECT
from policyd.errors import AliasLookupError
from policyd.rules import predict
from policyd.rules.predict import Attribution, RecipientPrediction, Sender

if TYPE_CHECKING:
    from policyd.sources.state import State

#: Verdict for a recipient whose alias expansion failed: Postfix itself defers such mail.
ERROR = "error"


@dataclass(frozen=True, slots=True)
class CheckResult:
    sender: Sender
    attribution: Attribution
    recipients: tuple[RecipientPrediction | tuple[str, str], ...]  # (recipient, problem) on error

    @property
    def verdict(self) -> str:
        """accept only when every recipient is predicted to pass."""
        for entry in self.recipients:
            if not isinstance(entry, RecipientPrediction) or entry.verdict == REJECT:
                return REJECT
        return ACCEPT


def run_check(state: State, sender: str, recipients: Sequence[str], now: datetime) -> CheckResult:
    """Predict ``recipients`` of ``sender`` with ``state`` at time ``now``."""
    config = state.config
    attribution = predict.attribute(config.tenant, config.onprem, now)
    view = predict.sender_view(sender, config.tenant, config.onprem)
    results: list[RecipientPrediction | tuple[str, str]] = []
    for recipient in recipients:
        try:
            final = state.aliases.expand(recipient)
        except AliasLookupError as error:
            results.append((recipient, str(error)))
            continue
        results.append(
            predict.predict_recipient(
                recipient,
                final,
                sender=view,
                tenant=config.tenant,
                onprem=config.onprem,
                attribution=attribution,
            )
        )
    return CheckResult(view, attribution, tuple(results))


def as_json(result: CheckResult) -> dict[str, object]:
    """The ``check --json`` object (SPEC §3), plus per-address detail under ``addresses``."""
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
                    "explanation": f"Alias expansion failed, so Postfix would defer: {problem}",
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
                    }
                    for a in entry.addresses
                ],
            }
        )
    return {"verdict": result.verdict, "recipients": recipients}


def write_json(result: CheckResult, out: TextIO) -> None:
    json.dump(as_json(result), out, indent=2)
    out.write("\n")


def write_text(result: CheckResult, out: TextIO) -> None:
    """The human explanation: sender, attribution, then each recipient's chain of reasoning."""
    sender = result.sender
    out.write(f"Sender    {_sender_line(sender)}\n")
    out.write("Connector\n")
    for line in attribution_lines(result.attribution):
        out.write(f"  {line}\n")
    for entry in result.recipients:
        if not isinstance(entry, RecipientPrediction):
            recipient, problem = entry
            out.write(f"\nRecipient {recipient}\n  ERROR  alias expansion failed: {problem}\n")
            continue
        out.write(f"\nRecipient {entry.recipient}\n")
        for address in entry.addresses:
            route = f"forwarded to {address.address}" if address.forwarded else address.address
            out.write(f"  {route}\n")
            outcome = "ACCEPT" if address.verdict == ACCEPT else "REFUSE"
            reply = f"  {address.reply}" if address.reply else ""
            out.write(f"    {outcome}  [{address.reason}]{reply}\n")
            out.write(f"    {address.explanation}\n")
    refused = sum(
        1
        for e in result.recipients
        if not isinstance(e, RecipientPrediction) or e.verdict == REJECT
    )
    total = len(result.recipients)
    out.write(f"\nVerdict   {result.verdict} ({refused} of {total} recipients refused)\n")


def _sender_line(sender: Sender) -> str:
    if sender.null:
        return "<> (null sender: bounces and auto-replies)"
    text = f"<{sender.address}>"
    if sender.srs_rewritten:
        text += f", rewritten by SRS into {sender.p1_domain}"
    if not sender.p1_domain:
        return text + ", no domain"
    if sender.accepted_domain:
        return text + f", P1 domain {sender.p1_domain} is accepted ({sender.accepted_domain})"
    return text + f", P1 domain {sender.p1_domain} is not an accepted domain"


def attribution_lines(attribution: Attribution) -> list[str]:
    """How Microsoft 365 attributes the connection, step by step (SPEC §5 steps 3-4)."""
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
        return lines
    lines.append(f"certificate  {attribution.certificate_problem}")
    if attribution.method == predict.BY_IP and connector is not None:
        lines.append(
            f"IP           egress address {attribution.egress_address} is in connector "
            f"'{connector.name}' (SenderIPAddresses)"
        )
    else:
        lines.append(f"IP           {attribution.ip_problem}")
        lines.append("             no connector matches: 550 5.7.64 TenantAttribution")
    return lines
