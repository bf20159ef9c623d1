"""``doctor --probe``: the mail-class table asked of Microsoft 365 itself (README, `probe`).

Each row of the closing table (own-domain sender, foreign sender, forwarded mail, null-sender
bounce, ...) is probed with ``policyd.tools.probe``: the row's sender, one ``RCPT TO`` per
final address, never DATA. The observed kind is set beside the predicted kind. A row that
disagrees is predicted again with each assumption (docs/relay-rules.md) set the other way; the
assumptions whose other setting would agree are named, with the configuration change
(``[assumptions] KEY = VALUE``) and the remedy that makes the setup independent of the key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, TextIO

from policyd.rules import predict
from policyd.rules.assumptions import BY_KEY, DOUBTS
from policyd.rules.model import NamedTenant, Tenant
from policyd.rules.outcomes import ACCEPTED
from policyd.rules.reasons import LOCAL, OTHER_ROUTE, predicted_kind
from policyd.tools.doctor.report import MailClass
from policyd.tools.doctor.tenant import mail_classes, sender_routes
from policyd.tools.probe import Answer, Question, target_for

if TYPE_CHECKING:
    from policyd.sources.state import State

#: Reasons of rows that never reach Microsoft 365: nothing to ask.
_NOT_RELAYED = (LOCAL, OTHER_ROUTE)


@dataclass(frozen=True, slots=True)
class LiveRow:
    """One class of mail: predicted, observed, and which assumption would explain the gap."""

    row: MailClass
    answers: tuple[Answer, ...]
    predicted: str
    observed: str
    #: (key, the other setting as ``key = value``) of every §5.3 assumption that would agree.
    would_agree: tuple[tuple[str, str], ...] = ()

    @property
    def agrees(self) -> bool:
        return self.predicted == self.observed

    def as_json(self) -> dict[str, object]:
        return {
            "tenant": self.row.tenant or None,
            "class": self.row.id,
            "sender": self.row.sender,
            "addresses": [a.question.address for a in self.answers],
            "replies": [a.reply for a in self.answers],
            "predicted": self.predicted,
            "observed": self.observed,
            "agrees": self.agrees,
            "assumptions": [
                {"key": key, "change": f"[assumptions] {setting}", "remedy": BY_KEY[key].remedy}
                for key, setting in self.would_agree
            ],
        }


def questions(
    state: State,
    classes: Sequence[MailClass],
    now: datetime,
    *,
    endpoint: str = "",
    key: str = "",
) -> list[Question]:
    """One question per final address of each row that reaches Microsoft 365."""
    asked: list[Question] = []
    router = state.router
    for row in classes:
        if row.reason in _NOT_RELAYED:
            continue
        for address in row.final or (row.recipient,):
            context = router.context(row.sender, address, now) if router is not None else None
            if context is not None and not context.reaches_microsoft:
                continue
            asked.append(
                Question(
                    row.sender,
                    row.recipient,
                    address,
                    predicted_kind(row.reason),
                    row.reason,
                    row.tenant or None,
                    f"{context.route.transport}:{context.route.nexthop}" if context else "",
                    target_for(state, context, endpoint=endpoint, key=key),
                )
            )
    return asked


def compare(
    state: State, classes: Sequence[MailClass], answers: Sequence[Answer], now: datetime
) -> list[LiveRow]:
    """Rows with their answers; each disagreement tried under every assumption flipped."""
    by_row: dict[tuple[str, str, str], list[Answer]] = {}
    for answer in answers:
        q = answer.question
        found = by_row.setdefault((q.sender, q.recipient, q.tenant or ""), [])
        if all(a.question.address != q.address for a in found):  # two rows, one envelope
            found.append(answer)
    rows: list[LiveRow] = []
    for row in classes:
        found = by_row.get((row.sender, row.recipient, row.tenant), [])
        if not found:
            continue
        refused = [a.kind for a in found if a.kind != ACCEPTED]
        observed = refused[0] if refused else ACCEPTED
        predicted = predicted_kind(row.reason)
        agreeing: list[tuple[str, str]] = []
        if observed != predicted:
            named = _tenant_of(state, row)
            for doubt in DOUBTS:
                if not doubt.decides:
                    continue
                other = _row_under(state, named, row, now, doubt.key)
                if other is not None and predicted_kind(other.reason) == observed:
                    flipped = named.tenant.assumptions.flipped(doubt.key)
                    agreeing.append((doubt.key, flipped.setting(doubt.key)))
        rows.append(LiveRow(row, tuple(found), predicted, observed, tuple(agreeing)))
    return rows


def _tenant_of(state: State, row: MailClass) -> NamedTenant:
    """The tenant whose table ``row`` is in (the first one when the row names none)."""
    tenants = state.predictor.tenants
    return next((t for t in tenants if not row.tenant or t.name == row.tenant), tenants[0])


def _row_under(
    state: State, named: NamedTenant, row: MailClass, now: datetime, key: str
) -> MailClass | None:
    """The same row of ``named``'s table predicted with assumption ``key`` set the other way."""

    def change(tenant: Tenant) -> Tenant:
        return replace(tenant, assumptions=tenant.assumptions.flipped(key))

    onprem = state.predictor.onprem_for(named)
    config = replace(state.config, tenant=change(named.tenant), onprem=onprem)
    attribution = predict.attribute(config.tenant, config.onprem, now)
    router = state.router.retuned(change) if state.router is not None else None
    for other in mail_classes(config, attribution, sender_routes(router, now)):
        if other.id == row.id:
            return other
    return None


def write_text(rows: Sequence[LiveRow], out: TextIO) -> None:
    """The probed table: predicted and observed side by side, then what would agree."""
    out.write("\nProbed live at Microsoft 365 (SMTP up to RCPT TO; no DATA, no mail sent)\n")
    for live in rows:
        tenant = f"[{live.row.tenant}] " if live.row.tenant else ""
        verdict = "agrees" if live.agrees else "DISAGREES"
        out.write(
            f"  {tenant}{live.row.label:<24} predicted {live.predicted:<20} "
            f"observed {live.observed:<20} {verdict}\n"
        )
        if live.agrees:
            continue
        for answer in live.answers:
            out.write(f"      Microsoft 365 answered {answer.question.address}: {answer.reply}\n")
        for key, setting in live.would_agree:
            out.write(
                f"      {setting} would agree: set it under [assumptions] (docs/relay-rules.md); "
                f"to depend on neither setting: {BY_KEY[key].remedy}\n"
            )
        if not live.would_agree:
            out.write(
                "      no assumption in docs/relay-rules.md explains this: please report it\n"
            )
    agreed = sum(1 for r in rows if r.agrees)
    out.write(f"  {agreed} of {len(rows)} probed classes agree with the prediction\n")
