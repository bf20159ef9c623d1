"""From a Postfix policy request to an action: the reactor-free heart of ``serve``.

The protocol layer hands every well-formed request to ``PolicyEngine.handle`` with the
connection's ``Session``; the engine predicts (``policyd.rules.predict``), chooses the configured
action, remembers the message's predictions for the one ``X-M365-Relay`` header at DATA, and
counts into ``Stats``. Time comes from an injected clock; the state (configuration, tenant,
alias maps) is swapped in one step on reload.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from policyd.constants import (
    ACCEPT,
    ACTION_DEFER,
    ACTION_DUNNO,
    ACTION_HOLD,
    ACTION_REROUTE,
    REJECT,
)
from policyd.engine.stats import Stats
from policyd.errors import AliasLookupError, LookupFailureError
from policyd.rules import predict
from policyd.rules.model import CertificateFacts
from policyd.rules.predict import Attribution, RecipientPrediction
from policyd.rules.reasons import BY_ID, CODE_5764, LOCAL

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.python.failure import Failure

    from policyd.engine.outcomes import Expectations
    from policyd.sources.config import PolicySettings
    from policyd.sources.state import State

#: Runs a blocking function off the reactor thread: ``deferToThread``'s shape.
InThread = Callable[..., "Deferred[Any]"]

#: Postfix answers; "action=" and the blank line are the protocol layer's business.
DUNNO = "DUNNO"

#: Bounded prediction cache: cleared whole when full (cheap, and entries are cheap to redo).
CACHE_LIMIT = 65536

#: SMTP reply texts must stay well inside Postfix's line limits.
REPLY_TEXT_LIMIT = 400


class Session:
    """Per-connection memory: the current message's RCPT predictions (one Postfix instance)."""

    __slots__ = ("instance", "recipients", "tagged")

    def __init__(self) -> None:
        self.instance = ""
        self.recipients: list[RecipientPrediction] = []  # part of the message (not refused at RCPT)
        self.tagged = False

    def start(self, instance: str) -> None:
        """A new instance means the previous message was delivered or aborted: forget it."""
        self.instance = instance
        self.recipients = []
        self.tagged = False


class PolicyEngine:
    """Answers policy requests; implements ``policyd.wire.protocol.Handler``."""

    def __init__(
        self,
        state: State,
        stats: Stats,
        clock: Callable[[], float],
        emit: Callable[[Mapping[str, object]], None],
        outcomes: Expectations | None = None,
        *,
        in_thread: InThread | None = None,
    ) -> None:
        """``outcomes`` (docs/postfix.md) receives each message's predictions at DATA, by queue ID.

        ``in_thread(f, *args)`` runs ``f`` off the reactor thread and returns a Deferred of its
        result (``serve`` passes ``deferToThreadPool`` on the reactor's thread pool). With it, a
        recipient whose expansion needs ``postmap -q`` is answered by a Deferred instead of
        blocking every other connection while postmap runs; without it (``check``, tests) the
        lookup happens in place.
        """
        self.outcomes = outcomes
        self._in_thread = in_thread
        self._stats = stats
        self._clock = clock
        self._emit = emit
        self._state = state
        self._log_predictions = _logs_predictions(state)
        self._attribution: Attribution | None = None
        self._valid_until = -math.inf  # recompute the attribution from this instant on
        # (P1 sender key, lower-cased recipient) -> (prediction, sender accepted or null)
        self._predictions: dict[tuple[str, str], tuple[RecipientPrediction, bool]] = {}
        # (sender, recipient) exactly as Postfix sent them -> everything the answer needs
        self._entries: dict[tuple[str, str], _Entry] = {}

    def _forget(self) -> None:
        """Drop every cached prediction: the state or the attribution changed."""
        self._predictions = {}
        self._entries = {}

    # --- state ------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    def replace_state(self, state: State) -> None:
        """Swap in a freshly built state; cached predictions of the old one are dropped."""
        self._state = state
        self._log_predictions = _logs_predictions(state)
        self._attribution = None
        self._valid_until = -math.inf
        self._forget()

    def attribution(self) -> Attribution:
        """The current attribution, recomputed when a certificate validity boundary passes."""
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

    def certificate_connector_match(self, now: float) -> bool | None:
        """For the metric: does the certificate match a connector? None: no certificate."""
        config = self._state.config
        if config.onprem.certificate is None:
            return None
        attribution = predict.attribute(
            config.tenant, config.onprem, datetime.fromtimestamp(now, UTC)
        )
        return attribution.method == predict.BY_CERTIFICATE

    def certificate_matches(self, now: float) -> list[tuple[str, CertificateFacts, bool]]:
        """For the metrics, per (tenant, certificate presented to it): does it attribute us to
        one of the tenant's connectors now? Without [postfix] a tenant is shown its own
        certificate or onprem's; with it, every certificate an smtp(8) service presents."""
        when = datetime.fromtimestamp(now, UTC)
        predictor = self._state.predictor
        found: list[tuple[str, CertificateFacts, bool]] = []
        router = self._state.router
        for tenant in predictor.tenants:
            if router is None:
                certificates = [predictor.onprem_for(tenant)]
            else:
                certificates = [p.onprem for p in router.services.values()]
            seen: set[str] = set()
            for onprem in certificates:
                certificate = onprem.certificate
                if certificate is None or certificate.path in seen:
                    continue
                seen.add(certificate.path)
                attribution = predict.attribute(tenant.tenant, onprem, when)
                found.append(
                    (tenant.name, certificate, attribution.method == predict.BY_CERTIFICATE)
                )
        return found

    # --- requests ---------------------------------------------------------------------------

    def new_session(self) -> Session:
        return Session()

    def handle(self, attrs: Mapping[str, str], session: object) -> str | Deferred[str]:
        """Answer one request. Never raises: our own failure answers ``policy.on_error``.

        The answer is a Deferred only while a recipient's expansion waits for ``postmap``.
        """
        # docs/postfix.md: only smtpd_access_policy requests at RCPT and DATA are predicted.
        stage = attrs.get("protocol_state", "")
        if attrs.get("request") != "smtpd_access_policy":
            stage = ""
        try:
            assert isinstance(session, Session)
            if stage == "RCPT":
                self._stats.requests["rcpt"] += 1
                return self._rcpt(attrs, session)
            if stage == "DATA":
                self._stats.requests["data"] += 1
                return self._data(attrs, session)
            self._stats.requests["other"] += 1
            return DUNNO
        except LookupFailureError as error:
            return self._failed(attrs, _lookup_problem(error))
        except Exception as error:  # fail open on our own bugs, by design
            return self._failed(attrs, f"internal error: {error!r}")

    def _failed(self, attrs: Mapping[str, str], problem: str) -> str:
        self._stats.internal_errors += 1
        self._stats.actions["on_error"] += 1
        self._emit(
            {
                "event": "error",
                "queue_id": attrs.get("queue_id", ""),
                "instance": attrs.get("instance", ""),
                "client_address": attrs.get("client_address", ""),
                "sender": attrs.get("sender", ""),
                "recipient": attrs.get("recipient", ""),
                "problem": problem,
            }
        )
        return "WARN m365-policyd could not predict" if self._on_error() == "warn" else DUNNO

    def _on_error(self) -> str:
        try:
            return self._state.config.policy.on_error
        except Exception:  # even a broken state must not refuse mail
            return "dunno"

    def predict(self, sender: str, recipient: str) -> RecipientPrediction:
        """Predict one recipient of ``sender`` with the current state (cached)."""
        return self._entry(sender, recipient).prediction

    def _entry(self, sender: str, recipient: str, final: tuple[str, ...] | None = None) -> _Entry:
        """The cached answer for this exact (sender, recipient); built on first use.

        ``final`` is the recipient's alias expansion when the caller already has it.
        """
        attribution = self.attribution()  # may drop every cache when a boundary passed
        entry = self._entries.get((sender, recipient))
        if entry is not None:
            return entry
        key = self._key(sender, recipient)
        cached = self._predictions.get(key)
        if cached is None:
            cached = self.compute(self._state, attribution, sender, recipient, final)
            self._remember(key, cached)
        prediction, sender_accepted = cached
        if prediction.recipient != recipient:
            # Same recipient in another case: keep the cached decision, show the address as sent.
            prediction = RecipientPrediction(recipient, prediction.addresses)
        entry = _Entry(prediction, sender_accepted, self._state.config.policy)
        if len(self._entries) >= CACHE_LIMIT:
            self._entries = {}
        self._entries[(sender, recipient)] = entry
        return entry

    def compute(
        self,
        state: State,
        attribution: Attribution,
        sender: str,
        recipient: str,
        final: tuple[str, ...] | None = None,
    ) -> tuple[RecipientPrediction, bool]:
        """Predict one recipient from scratch: (prediction, sender accepted or null).

        Touches no cache, so it may run in a worker thread while lookups wait for postmap.
        Raises ``LookupFailureError`` when an alias or routing table fails.
        """
        del attribution  # the predictor memoises each tenant's own attribution
        return state.predictor.predict(
            sender,
            recipient,
            state.aliases.expand(recipient) if final is None else final,
            datetime.fromtimestamp(self._clock(), UTC),
        )

    def _key(self, sender: str, recipient: str) -> tuple[str, str]:
        """The prediction cache key: by sender domain, or by whole sender with [postfix]
        (``sender_dependent_relayhost_maps`` may route boss@ and helpdesk@ apart)."""
        if self._state.router is not None:
            return sender, recipient.lower()
        return _prediction_key(sender, recipient)

    def _remember(self, key: tuple[str, str], cached: tuple[RecipientPrediction, bool]) -> None:
        if len(self._predictions) >= CACHE_LIMIT:
            self._predictions = {}
        self._predictions[key] = cached
        # A tenant's or a service's certificate boundary ends this prediction's validity too.
        self._valid_until = min(self._valid_until, self._state.predictor.valid_until())

    def _rcpt(self, attrs: Mapping[str, str], session: Session) -> str | Deferred[str]:
        instance = attrs.get("instance", "")
        if instance != session.instance:
            session.start(instance)
        sender = attrs.get("sender", "")
        recipient = attrs.get("recipient", "")
        if not recipient:
            return DUNNO
        # The hot path: one clock read, one dict lookup, a few counters.
        entry = None
        if self._clock() < self._valid_until:
            entry = self._entries.get((sender, recipient))
        if entry is None:
            if (
                self._in_thread is not None
                and self._state.uses_subprocess
                and self._key(sender, recipient) not in self._predictions
            ):
                return self._rcpt_in_thread(attrs, session, sender, recipient)
            entry = self._entry(sender, recipient)
        return self._answer_rcpt(attrs, session, entry, sender, recipient)

    def _rcpt_in_thread(
        self, attrs: Mapping[str, str], session: Session, sender: str, recipient: str
    ) -> Deferred[str]:
        """Predict ``recipient`` in a worker thread (its alias expansion or route needs
        ``postmap -q``), then remember and answer on the reactor as usual."""
        assert self._in_thread is not None
        state = self._state
        attribution = self.attribution()

        def predicted(cached: tuple[RecipientPrediction, bool]) -> str:
            if self._state is state:
                self._remember(self._key(sender, recipient), cached)
            # Reloaded meanwhile: the new state decides (cached or predicted in place).
            entry = self._entry(sender, recipient)
            return self._answer_rcpt(attrs, session, entry, sender, recipient)

        def failed(failure: Failure) -> str:
            error = failure.value
            if isinstance(error, LookupFailureError):
                return self._failed(attrs, _lookup_problem(error))
            return self._failed(attrs, f"internal error: {error!r}")

        deferred: Deferred[tuple[RecipientPrediction, bool]] = self._in_thread(
            self.compute, state, attribution, sender, recipient
        )
        return deferred.addCallback(predicted).addErrback(failed)

    def _answer_rcpt(
        self,
        attrs: Mapping[str, str],
        session: Session,
        entry: _Entry,
        sender: str,
        recipient: str,
    ) -> str:
        """Count, remember and log one RCPT prediction; the Postfix action text."""
        instance = session.instance
        stats = self._stats
        stats.predictions[entry.counted] += 1
        if entry.external:
            stats.external_recipients[entry.tenant] += entry.external
            stats.unregistered_sender_relays[entry.tenant] += entry.unregistered  # 5.7.750 risk
        stats.actions[entry.action] += 1
        if entry.in_message:
            session.recipients.append(entry.prediction)  # part of the message: in the header
        if self._log_predictions:
            prediction = entry.prediction
            self._emit(
                {
                    "event": "prediction",
                    "queue_id": attrs.get("queue_id", ""),
                    "instance": instance,
                    "client_address": attrs.get("client_address", ""),
                    "sender": sender,
                    "recipient": recipient,
                    "final": prediction.final,
                    "tenant": entry.tenant,
                    "verdict": entry.counted[1],
                    "code": prediction.code,
                    "reason": entry.counted[2],
                    "action": entry.action,
                    "explanation": prediction.explanation,
                    "assumptions": prediction.assumptions,
                }
            )
        return entry.answer

    def _data(self, attrs: Mapping[str, str], session: Session) -> str:
        outcomes = self.outcomes
        if (
            outcomes is not None
            and outcomes.following
            and attrs.get("instance", "") == session.instance
        ):
            self._expect_outcomes(attrs, session)
        policy = self._state.config.policy
        if (
            not policy.tag
            or session.tagged
            or attrs.get("instance", "") != session.instance
            or not any(p.relayed for p in session.recipients)
        ):
            return DUNNO
        session.tagged = True
        self._stats.actions["prepend"] += 1
        return f"PREPEND {policy.header}: {tag_value(session.recipients)}"

    def _expect_outcomes(self, attrs: Mapping[str, str], session: Session) -> None:
        """Hand the outcome watcher (docs/postfix.md) this message's predictions for every address
        Microsoft 365 will see (all but ``local``); its failure is counted, never answered."""
        queue_id = attrs.get("queue_id", "")
        entries = [
            (address.address, prediction.recipient, address.reason, address.tenant or "")
            for prediction in session.recipients
            for address in prediction.addresses
            if address.reason != LOCAL
        ]
        if not queue_id or not entries or self.outcomes is None:
            return
        try:
            self.outcomes.expect(queue_id, entries)
        except Exception as error:  # the outcome join must never change an answer
            self._stats.internal_errors += 1
            self._emit(
                {
                    "event": "error",
                    "queue_id": queue_id,
                    "instance": attrs.get("instance", ""),
                    "problem": f"outcome watcher failed: {error!r}",
                }
            )


class _Entry:
    """Everything an RCPT answer needs for one (sender, recipient), computed once per state."""

    __slots__ = (
        "action",
        "answer",
        "counted",
        "external",
        "in_message",
        "prediction",
        "tenant",
        "unregistered",
    )

    def __init__(
        self, prediction: RecipientPrediction, sender_accepted: bool, policy: PolicySettings
    ) -> None:
        self.prediction = prediction
        verdict = prediction.verdict
        self.tenant = prediction.deciding.tenant or ""  # "" when not through Microsoft 365
        # m365_policyd_predictions_total labels
        self.counted = (self.tenant, verdict, prediction.reason)
        relayed = sum(1 for a in prediction.addresses if a.relayed and a.verdict != REJECT)
        self.external = relayed  # recipients Microsoft 365 will send to the internet
        self.unregistered = 0 if sender_accepted else relayed
        action = policy.action_for(prediction.reason) if verdict == REJECT else "dunno"
        self.action = action
        # Deferred and rejected recipients are not part of the message Postfix accepts.
        self.in_message = action not in ("defer", "reject")
        self.answer = _answer(action, prediction, policy)


def _prediction_key(sender: str, recipient: str) -> tuple[str, str]:
    """Without [postfix], predictions depend on the sender's domain, not its local part (unless
    it has none); with it, sender-dependent maps may name whole addresses (see ``_key``)."""
    _, at, domain = sender.rpartition("@")
    return (("@" + domain.lower()) if at and domain else sender, recipient.lower())


def _logs_predictions(state: State) -> bool:
    """Prediction lines are written at info: below that level, do not even build them."""
    return state.config.log.level in ("debug", "info")


def tag_value(recipients: list[RecipientPrediction]) -> str:
    """The X-M365-Relay header value for one message's recipients (docs/postfix.md)."""
    refused = [p for p in recipients if p.verdict == REJECT]
    if refused:
        first = refused[0]
        verdict, code, reason = REJECT, first.code or "none", first.reason
    else:
        relayed = next((p for p in recipients if p.relayed), recipients[0])
        verdict, code, reason = ACCEPT, "none", relayed.reason
    return (
        f"verdict={verdict}; code={code}; reason={reason}; "
        f"refused={len(refused)}; recipients={len(recipients)}"
    )


def _answer(action: str, prediction: RecipientPrediction, policy: PolicySettings) -> str:
    """The Postfix action text for a recipient the configured ``action`` applies to."""
    if action == ACTION_DUNNO:
        return DUNNO
    if action == ACTION_REROUTE:
        return f"FILTER {policy.reroute}"
    text = reply_text(prediction)
    if action == ACTION_HOLD:
        return f"HOLD {text}"
    code = prediction.code or CODE_5764
    if action == ACTION_DEFER:
        return f"450 4{code[1:]} {text}"
    return f"550 {code} {text}"


def reply_text(prediction: RecipientPrediction) -> str:
    """One line that names the reason, safe inside an SMTP reply."""
    reason = prediction.reason
    text = f"Microsoft 365 would refuse relay to this recipient (reason={reason}: {_short(reason)})"
    return text.replace("\r", " ").replace("\n", " ")[:REPLY_TEXT_LIMIT]


def _lookup_problem(error: LookupFailureError) -> str:
    """The log line's problem for a failed table: which kind of lookup, and Postfix's words."""
    kind = "alias expansion" if isinstance(error, AliasLookupError) else "route lookup"
    return f"{kind} failed: {error}"


def _short(reason: str) -> str:
    """The reason's short phrase from ``policyd.rules.reasons``; the id itself if it has none."""
    words = BY_ID.get(reason)
    return (words.short if words else "") or reason
