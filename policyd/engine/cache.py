"""The engine's memory of its answers, and when that memory is dropped; reactor-free.

Predictions repeat: the same sender domain writes to the same recipients over and over, and
for one state (configuration, tenant, alias maps) and one connector attribution the answer is
always the same. ``PredictionCache`` keeps two bounded maps and drops both together:

* ``(sender domain key, lower-cased recipient)`` -> the prediction and whether the sender's
  domain is accepted (predictions depend on the sender's domain only, unless it has none or
  ``[postfix]`` routing may tell senders of one domain apart: then the whole sender);
* ``(sender, recipient)`` exactly as Postfix sent them -> an ``Entry``: everything an RCPT
  answer needs (action text, counter labels, the header's view, the log line's fixed part).

Both are dropped whole when the state is replaced (a reload), when a certificate validity
boundary passes (the attribution may change: the clock is injected; every tenant's and every
smtp service's certificate counts), and each map on its own when it reaches ``CACHE_LIMIT``
entries or ``CACHE_BYTES`` estimated bytes (cheap, and entries are cheap to redo). The bytes
bound matters, not the entries (issue 16): an answer's size grows with its addresses' lengths
and with the alias expansion (up to 1,000 final addresses), so 65,536 entries could be
gigabytes; ``answer_bytes`` estimates one answer from its strings.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from policyd.constants import ACTION_DEFER, ACTION_DUNNO, ACTION_REJECT, REJECT
from policyd.rules import predict
from policyd.rules.predict import Attribution, RecipientPrediction

if TYPE_CHECKING:
    from policyd.sources.config import PolicySettings
    from policyd.sources.state import State

#: Entries kept per map before it is cleared whole.
CACHE_LIMIT = 65536

#: Estimated bytes kept per map before it is cleared whole (see ``answer_bytes``).
CACHE_BYTES = 32 << 20

#: Estimated bytes of the objects around one answer (the entry, its log line's fields and
#: rendered tails, the dict slot and key tuple), and around each final address's prediction.
ANSWER_OVERHEAD = 1200
ADDRESS_OVERHEAD = 400


def answer_bytes(sender: str, recipient: str, prediction: RecipientPrediction) -> int:
    """Estimated memory of one cached answer: fixed overheads plus its strings, which the
    log line keeps again rendered in each format (hence the factor for sender and recipient).
    An estimate: CPython's exact sizes differ by version; it errs high."""
    size = ANSWER_OVERHEAD + 3 * (len(sender) + len(recipient))
    for address in prediction.addresses:
        size += ADDRESS_OVERHEAD + 2 * (len(address.address) + len(address.explanation))
    return size


#: ``(action, prediction, policy) -> Postfix action text`` (``policyd.engine.policy``).
AnswerText = Callable[[str, RecipientPrediction, "PolicySettings"], str]


class PredictionLine:
    """What a prediction's log line says that is the same every time this answer is given.

    ``fields`` are the record's (name, value) pairs after the per-request ones, in order.
    ``rendered`` belongs to the log output, which keeps the fields rendered there per log format
    (``policyd.daemon.log.LogOutput.prediction``), so a repeated answer costs no formatting.
    """

    __slots__ = ("fields", "rendered")

    def __init__(self, fields: tuple[tuple[str, object], ...]) -> None:
        self.fields = fields
        self.rendered: dict[str, str] = {}

    def record(self, queue_id: str, instance: str, client_address: str) -> dict[str, object]:
        """The whole record of one prediction, as ``emit`` receives it (the slow path)."""
        record: dict[str, object] = {
            "event": "prediction",
            "queue_id": queue_id,
            "instance": instance,
            "client_address": client_address,
        }
        record.update(self.fields)
        return record


class Entry:
    """Everything an RCPT answer needs for one (sender, recipient), computed once per state."""

    __slots__ = (
        "action",
        "answer",
        "code",
        "counted",
        "external",
        "in_message",
        "line",
        "prediction",
        "refused",
        "relayed",
        "tenant",
        "unregistered",
    )

    def __init__(
        self,
        prediction: RecipientPrediction,
        sender: str,
        sender_accepted: bool,
        policy: PolicySettings,
        answer_text: AnswerText,
    ) -> None:
        self.prediction = prediction
        verdict = prediction.verdict
        self.tenant = prediction.deciding.tenant or ""  # "" when not through Microsoft 365
        # m365_policyd_predictions_total labels
        self.counted = (self.tenant, verdict, prediction.reason)
        self.code = prediction.code
        self.refused = verdict == REJECT
        self.relayed = prediction.relayed  # some final address goes out through Microsoft 365
        relayed = sum(1 for a in prediction.addresses if a.relayed and a.verdict != REJECT)
        self.external = relayed  # recipients Microsoft 365 will send to the internet
        self.unregistered = 0 if sender_accepted else relayed
        action = policy.action_for(prediction.reason) if verdict == REJECT else ACTION_DUNNO
        self.action = action
        # Deferred and rejected recipients are not part of the message Postfix accepts.
        self.in_message = action not in (ACTION_DEFER, ACTION_REJECT)
        self.answer = answer_text(action, prediction, policy)
        self.line = PredictionLine(
            (
                ("sender", sender),
                ("recipient", prediction.recipient),
                ("final", prediction.final),
                ("tenant", self.tenant),
                ("verdict", verdict),
                ("code", self.code),
                ("reason", prediction.reason),
                ("action", action),
                ("explanation", prediction.explanation),
                ("assumptions", prediction.assumptions),
            )
        )


def prediction_key(sender: str, recipient: str) -> tuple[str, str]:
    """Without [postfix], predictions depend on the sender's domain, not its local part (unless
    it has none); with it, sender-dependent maps may name whole addresses (see ``key``)."""
    _, at, domain = sender.rpartition("@")
    return (("@" + domain.lower()) if at and domain else sender, recipient.lower())


class PredictionCache:
    """The cached answers of one state and attribution (see the module docstring).

    ``clock()`` is the injected time in seconds since the epoch; ``answer_text`` builds the
    action text of an entry.
    """

    def __init__(self, state: State, clock: Callable[[], float], answer_text: AnswerText) -> None:
        self._clock = clock
        self._answer_text = answer_text
        self._state = state
        self._attribution: Attribution | None = None
        self._valid_until = -math.inf  # recompute the attribution from this instant on
        self._predictions: dict[tuple[str, str], tuple[RecipientPrediction, bool]] = {}
        self._entries: dict[tuple[str, str], Entry] = {}
        self._predictions_bytes = 0  # answer_bytes of what each map holds
        self._entries_bytes = 0

    @property
    def state(self) -> State:
        """The state every cached answer was computed with."""
        return self._state

    def replace(self, state: State) -> None:
        """Use ``state`` from now on; every answer of the old one is dropped."""
        self._state = state
        self._attribution = None
        self._valid_until = -math.inf
        self._forget()

    def _forget(self) -> None:
        self._predictions = {}
        self._entries = {}
        self._predictions_bytes = 0
        self._entries_bytes = 0

    @property
    def size(self) -> tuple[int, int]:
        """Estimated bytes held: (predictions, entries)."""
        return self._predictions_bytes, self._entries_bytes

    def attribution(self) -> Attribution:
        """The current attribution, recomputed (and the answers dropped) at a validity boundary."""
        now = self._clock()
        attribution = self._attribution
        if attribution is None or now >= self._valid_until:
            config = self._state.config
            attribution = predict.attribute(
                config.tenant, config.onprem, datetime.fromtimestamp(now, UTC)
            )
            self._attribution = attribution
            until = attribution.valid_until
            self._valid_until = math.inf if until is None else until
            self._forget()
        return attribution

    def key(self, sender: str, recipient: str) -> tuple[str, str]:
        """The prediction key: by sender domain, or by whole sender with [postfix]
        (``sender_dependent_relayhost_maps`` may route boss@ and helpdesk@ apart)."""
        if self._state.router is not None:
            return sender, recipient.lower()
        return prediction_key(sender, recipient)

    def lookup(self, sender: str, recipient: str) -> Entry | None:
        """The hot path: the cached entry if one exists and no boundary passed, else None."""
        if self._clock() < self._valid_until:
            return self._entries.get((sender, recipient))
        return None

    def knows(self, sender: str, recipient: str) -> bool:
        """True when the prediction for this sender (domain) and recipient is cached."""
        return self.key(sender, recipient) in self._predictions

    def compute(
        self, state: State, sender: str, recipient: str, final: tuple[str, ...] | None = None
    ) -> tuple[RecipientPrediction, bool]:
        """Predict one recipient from scratch with ``state``: (prediction, sender accepted or
        null). Touches no cache, so it may run in a worker thread while lookups wait for
        postmap; raises ``LookupFailureError`` when an alias or routing table fails."""
        return state.predictor.predict(
            sender,
            recipient,
            state.aliases.expand(recipient) if final is None else final,
            datetime.fromtimestamp(self._clock(), UTC),
        )

    def remember(
        self, sender: str, recipient: str, cached: tuple[RecipientPrediction, bool]
    ) -> None:
        """Keep a prediction computed elsewhere (a worker thread) for this state."""
        cost = answer_bytes(sender, recipient, cached[0])
        if len(self._predictions) >= CACHE_LIMIT or self._predictions_bytes + cost > CACHE_BYTES:
            self._predictions = {}
            self._predictions_bytes = 0
        self._predictions[self.key(sender, recipient)] = cached
        self._predictions_bytes += cost
        # A tenant's or a service's certificate boundary ends this prediction's validity too.
        self._valid_until = min(self._valid_until, self._state.predictor.valid_until())

    def entry(self, sender: str, recipient: str, final: tuple[str, ...] | None = None) -> Entry:
        """The entry for this exact (sender, recipient); predicted and cached on first use.

        ``final`` is the recipient's alias expansion when the caller already has it (else the
        state's alias maps expand it here, which may run ``postmap``).
        """
        self.attribution()  # may drop every answer when a boundary passed
        entry = self._entries.get((sender, recipient))
        if entry is not None:
            return entry
        cached = self._predictions.get(self.key(sender, recipient))
        if cached is None:
            cached = self.compute(self._state, sender, recipient, final)
            self.remember(sender, recipient, cached)
        prediction, sender_accepted = cached
        if prediction.recipient != recipient:
            # Same recipient in another case: keep the cached decision, show the address as sent.
            prediction = RecipientPrediction(recipient, prediction.addresses)
        entry = Entry(
            prediction, sender, sender_accepted, self._state.config.policy, self._answer_text
        )
        cost = answer_bytes(sender, recipient, prediction)
        if len(self._entries) >= CACHE_LIMIT or self._entries_bytes + cost > CACHE_BYTES:
            self._entries = {}
            self._entries_bytes = 0
        self._entries[(sender, recipient)] = entry
        self._entries_bytes += cost
        return entry
