"""The comparison ``replay`` makes: each logged attempt predicted again and judged by kind.

``Comparison`` takes the records of ``policyd.sources.maillog`` in log order. It remembers each
message's envelope sender from ``qmgr``'s ``from=`` line in ``queue`` (a ``Messages``: by
instance and queue ID, forgotten at ``removed``, at most ``MAX_MESSAGES`` at once), and for
every delivery attempt to a Microsoft 365 endpoint that holds a reply of Microsoft's
(``policyd.rules.outcomes``) it predicts the recipient again through
``state.predictor.predict`` — the function ``serve`` and ``check`` call — with the attempt's
time as ``now``: the original recipient is ``orig_to`` when Postfix logged one (a forward),
else ``to``, and the final address is ``to``. The predicted kind
(``policyd.rules.reasons.predicted_kind``) is compared with the observed kind of Microsoft's
reply (docs/postfix.md): they agree only when equal. The command has ``read_records(...,
messages=comparison.queue, attempts=comparison.attempt)`` keep the queue as it reads and hand
each attempt to ``attempt``, so no record is made per line.

Attempts whose ``from=`` line is not in the log (it starts mid-queue) are counted in
``without_sender`` and never guessed; Postfix's own failures (no reply of Microsoft's) in
``own_failures``; an attempt logged twice (the same line in two overlapping files) once.
Several states (``--sweep-assumptions``) are compared in the same pass: the first is today's
configuration, and each other one counts the disagreements it removes and adds against it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from policyd.errors import LookupFailureError
from policyd.rules.outcomes import (
    OBSERVED_KINDS,
    PREDICTED_KINDS,
    Delivery,
    microsoft_reply,
    observed_kind,
    relay_matcher,
)
from policyd.rules.predict import AddressPrediction
from policyd.rules.reasons import predicted_kind
from policyd.sources.maillog import Attempt, Envelope, MessageKey, Messages, Record, Removed
from policyd.sources.state import State

#: Messages remembered at once (a log without ``removed`` lines cannot grow memory past this).
MAX_MESSAGES = 200_000
#: Predictions remembered, shared among the configurations compared (memory stays bounded
#: with --sweep-assumptions too).
CACHE_SIZE = 100_000
#: Distinct relay= values whose test is remembered.
MAX_RELAYS = 10_000
#: Distinct replies whose observed kind is remembered (Microsoft's texts repeat; accepted
#: replies that quote a queue ID do not, so the memory is cleared when full).
MAX_REPLIES = 4_096
#: Statuses of an attempt that got (or failed to get) an answer from the relay.
COUNTED_STATUSES = frozenset({"sent", "deferred", "bounced", "softbounce"})


@dataclass(frozen=True, slots=True)
class Disagreement:
    """One attempt whose predicted kind differs from Microsoft's observed kind."""

    queue_id: str
    time: datetime
    sender: str
    recipient: str  # the final address Postfix delivered to (``to=``)
    orig_to: str  # the original recipient when Postfix logged one, else ""
    observed: str
    predicted: str
    reason: str  # the predicted reason id (README: Reasons)
    explanation: str
    reply: str  # Microsoft 365's reply as Postfix quoted it
    relay: str
    tenant: str | None
    assumptions: tuple[str, ...]


@dataclass(slots=True)
class Tally:
    """The counts of one configuration: agreement, the kind table, per-reason counts.

    Each compared attempt adds one to its cell, (reason, predicted kind, observed kind); the
    totals, the table and the per-reason counts are read from the cells (a handful).
    """

    cells: dict[tuple[str, str, str], int] = field(default_factory=dict)

    def add(self, reason: str, predicted: str, observed: str) -> bool:
        """Count one attempt; whether it agrees."""
        cell = (reason, predicted, observed)
        self.cells[cell] = self.cells.get(cell, 0) + 1
        return predicted == observed

    @property
    def compared(self) -> int:
        return sum(self.cells.values())

    @property
    def agreed(self) -> int:
        return sum(n for (_, predicted, observed), n in self.cells.items() if predicted == observed)

    @property
    def disagreements(self) -> int:
        return self.compared - self.agreed

    @property
    def table(self) -> dict[str, Counter[str]]:
        """predicted kind → observed kind → attempts"""
        table: dict[str, Counter[str]] = {}
        for (_, predicted, observed), n in self.cells.items():
            table.setdefault(predicted, Counter())[observed] += n
        return table

    @property
    def reasons(self) -> dict[str, list[int]]:
        """reason id → [compared, agreed]"""
        reasons: dict[str, list[int]] = {}
        for (reason, predicted, observed), n in self.cells.items():
            counts = reasons.setdefault(reason, [0, 0])
            counts[0] += n
            counts[1] += n if predicted == observed else 0
        return reasons

    @property
    def agreement(self) -> float:
        """Percent of compared attempts that agree (100.0 when nothing was compared)."""
        return 100.0 * self.agreed / self.compared if self.compared else 100.0

    def table_dict(self) -> dict[str, dict[str, int]]:
        """``{predicted: {observed: count}}``, kinds in docs/postfix.md's order, no zero cells."""
        order = {kind: i for i, kind in enumerate(OBSERVED_KINDS)}
        table = self.table
        return {
            predicted: {
                observed: count
                for observed, count in sorted(
                    table[predicted].items(), key=lambda item: order.get(item[0], 99)
                )
            }
            for predicted in sorted(table, key=lambda k: order.get(k, 99))
        }


@dataclass(slots=True)
class Variant:
    """One configuration compared: its label, its state, its tally and its changes."""

    label: str
    state: State
    tally: Tally = field(default_factory=Tally)
    removes: int = 0  # today's disagreements this one agrees with
    adds: int = 0  # today's agreements this one disagrees with
    removed_examples: list[str] = field(default_factory=list)  # "queue id recipient"
    added_examples: list[str] = field(default_factory=list)
    #: Predictions and their predicted kinds by (sender, recipient, final), valid from
    #: cache_from until cache_until (the predictor's next certificate boundary; None: no
    #: end): a log repeats envelopes. Times, not timestamps: comparing two times of one zone
    #: is much cheaper.
    cache: dict[tuple[str, str, str], tuple[AddressPrediction, str]] = field(default_factory=dict)
    cache_from: datetime | None = None
    cache_until: datetime | None = None
    cache_size: int = 0  # set by Comparison: CACHE_SIZE shared among the variants

    def predict(
        self, sender: str, recipient: str, final: str, time: datetime
    ) -> tuple[AddressPrediction, str]:
        """The prediction for one final address at ``time``, through ``state.predictor``, and
        its predicted kind; raises ``LookupFailureError`` when a table fails."""
        since, until = self.cache_from, self.cache_until
        if since is None or time < since or (until is not None and time >= until):
            self.cache.clear()
            self.cache_from, self.cache_until = time, None
        key = (sender, recipient, final)
        found = self.cache.get(key)
        if found is None:
            predictor = self.state.predictor
            prediction, _ = predictor.predict(sender, recipient, (final,), time)
            address = prediction.addresses[0]
            found = (address, predicted_kind(address.reason))
            ends = _time(predictor.valid_until(), time)
            if ends is not None and (self.cache_until is None or ends < self.cache_until):
                self.cache_until = ends
            if len(self.cache) >= self.cache_size:
                self.cache.clear()
            self.cache[key] = found
        return found


def _time(stamp: float, like: datetime) -> datetime | None:
    """The Unix time ``stamp`` in ``like``'s zone; None for infinity or past year 9999."""
    if stamp == math.inf:
        return None
    try:
        return datetime.fromtimestamp(stamp, like.tzinfo)
    except (OverflowError, OSError, ValueError):
        return None if stamp > 0 else datetime.min.replace(tzinfo=UTC)


#: What an attempt is told apart by, to count one logged twice once: (to, time, dsn, status).
_Seen = tuple[str, datetime, str, str]
#: Not in Comparison.kinds (where None means "no reply of Microsoft's").
_UNKNOWN = "?"
#: Attempts of one message told apart in a list; more in a set.
_FEW_SEEN = 16


class Comparison:
    """See the module docstring; ``variants[0]`` is today's configuration."""

    def __init__(
        self,
        variants: Sequence[Variant],
        relay_hosts: Iterable[str],
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 20,
        max_messages: int = MAX_MESSAGES,
    ) -> None:
        self.variants = list(variants)
        for variant in self.variants:
            variant.cache_size = max(1_000, CACHE_SIZE // len(self.variants))
        self.is_microsoft = relay_matcher(relay_hosts)
        #: relay= value → is_microsoft (a log names few relays; bounded all the same)
        self.relays: dict[str, bool] = {}
        self.since = since
        self.until = until
        self.limit = limit
        self.max_messages = max_messages
        #: The messages in the queue (read_records can keep it itself: see feed).
        self.queue = Messages(max_messages)
        #: (instance, queue ID) → envelope sender, oldest first
        self.messages: dict[MessageKey, str] = self.queue.senders
        #: (instance, queue ID) → the attempts compared, for the messages that have some
        self.seen: dict[MessageKey, list[_Seen] | set[_Seen]] = self.queue.notes
        #: (relay, status, dsn, detail) → observed_kind (every field it reads)
        self.kinds: dict[tuple[str, str, str, str], str | None] = {}
        self.without_sender = 0
        self.own_failures = 0
        self.duplicates = 0
        self.unpredictable = 0  # a routing or alias table failed during prediction
        #: observed kind → attempts not predicted (the others are in today's tally)
        self.unpredicted: Counter[str] = Counter()
        self.disagreements: list[Disagreement] = []

    @property
    def today(self) -> Variant:
        return self.variants[0]

    @property
    def observed(self) -> Counter[str]:
        """Observed kind → attempts compared or not predicted (read from today's tally)."""
        counted = Counter(self.unpredicted)
        for (_, _, observed), n in self.today.tally.cells.items():
            counted[observed] += n
        return counted

    def feed(self, records: Iterable[Record]) -> None:
        """Take records in log order: those of ``read_records``, with or without
        ``messages=self.queue`` (then they are only attempts, and the reader has applied each
        ``Envelope`` and ``Removed`` to ``queue`` itself; with ``attempts=self.attempt`` as
        well there are none, and feeding them only reads the logs through)."""
        queue = self.queue
        attempt = self.attempt
        for record in records:
            if type(record) is Attempt:
                attempt(*record)
            elif type(record) is Envelope:
                queue.add(record.instance, record.queue_id, record.sender)
            elif type(record) is Removed:
                queue.remove(record.instance, record.queue_id)

    def attempt(self, time: datetime, instance: str, delivery: Delivery) -> None:
        """Take one attempt (an ``Attempt``'s fields), in log order among the records: what
        ``read_records(..., messages=self.queue, attempts=self.attempt)`` calls."""
        # Once per delivery line to Microsoft 365: fields unpacked once, the memories read
        # inline (the methods only on a miss).
        _, queue_id, to, orig_to, relay, _, _, dsn, status, detail = delivery
        if status not in COUNTED_STATUSES:
            return
        microsoft = self.relays.get(relay)
        if microsoft is None:
            microsoft = self.is_microsoft(delivery)
            if len(self.relays) >= MAX_RELAYS:
                self.relays.clear()
            self.relays[relay] = microsoft
        if not microsoft:
            return
        if (self.since is not None and time < self.since) or (
            self.until is not None and time >= self.until
        ):
            return
        if status == "sent":  # an accepted reply quotes a queue ID: not worth remembering
            observed = observed_kind(delivery)
        else:
            observed = self.kinds.get((relay, status, dsn, detail), _UNKNOWN)
            if observed is _UNKNOWN:
                observed = self._observed_kind(delivery)
        if observed is None:
            self.own_failures += 1
            return
        key = (instance, queue_id)
        sender = self.messages.get(key)
        if sender is None:
            self.without_sender += 1
            return
        this = (to.lower(), time, dsn, status)
        compared = self.seen.get(key)
        if compared is None:
            self.seen[key] = [this]  # (a list: hashing an aware time costs more than a few ==)
        elif this in compared:
            self.duplicates += 1
            return
        elif isinstance(compared, set):
            compared.add(this)
        elif len(compared) < _FEW_SEEN:
            compared.append(this)
        else:  # a message with many attempts: a set from here on
            self.seen[key] = {*compared, this}
        recipient = orig_to or to
        base = self.variants[0]
        base_agrees = True
        for variant in self.variants:
            # Variant.predict's remembered prediction, read here while its time window holds
            since, until = variant.cache_from, variant.cache_until
            if since is not None and since <= time and (until is None or time < until):
                found = variant.cache.get((sender, recipient, to))
            else:
                found = None
            if found is None:
                try:
                    found = variant.predict(sender, recipient, to, time)
                except LookupFailureError:
                    if variant is base:
                        self.unpredictable += 1
                        self.unpredicted[observed] += 1
                        return
                    continue
            address, predicted = found
            cells = variant.tally.cells  # Tally.add
            cell = (address.reason, predicted, observed)
            cells[cell] = cells.get(cell, 0) + 1
            agrees = predicted == observed
            if variant is base:
                base_agrees = agrees
                if not agrees and len(self.disagreements) < self.limit:
                    self.disagreements.append(
                        _disagreement(
                            Attempt(time, instance, delivery), sender, address, predicted, observed
                        )
                    )
                continue
            example = f"{queue_id} {to}"
            if agrees and not base_agrees:
                variant.removes += 1
                if len(variant.removed_examples) < self.limit:
                    variant.removed_examples.append(example)
            elif base_agrees and not agrees:
                variant.adds += 1
                if len(variant.added_examples) < self.limit:
                    variant.added_examples.append(example)

    def _observed_kind(self, delivery: Delivery) -> str | None:
        """``observed_kind(delivery)``, remembered by the fields it reads (at most
        ``MAX_REPLIES``)."""
        key = (delivery.relay, delivery.status, delivery.dsn, delivery.detail)
        kinds = self.kinds
        if key in kinds:
            return kinds[key]
        found = kinds[key] = observed_kind(delivery)
        if len(kinds) > MAX_REPLIES:
            kinds.clear()
        return found


def _disagreement(
    attempt: Attempt, sender: str, address: AddressPrediction, predicted: str, observed: str
) -> Disagreement:
    delivery = attempt.delivery
    orig_to = delivery.orig_to if delivery.orig_to.lower() != delivery.to.lower() else ""
    return Disagreement(
        queue_id=delivery.queue_id,
        time=attempt.time,
        sender=sender,
        recipient=delivery.to,
        orig_to=orig_to,
        observed=observed,
        predicted=predicted,
        reason=address.reason,
        explanation=address.explanation,
        reply=microsoft_reply(delivery) or "",
        relay=delivery.relay,
        tenant=address.tenant,
        assumptions=address.assumptions,
    )


__all__ = [
    "COUNTED_STATUSES",
    "MAX_MESSAGES",
    "PREDICTED_KINDS",
    "Comparison",
    "Disagreement",
    "Tally",
    "Variant",
]
