"""From a Postfix policy request to an action: the reactor-free heart of ``serve``.

The protocol layer hands every well-formed request to ``PolicyEngine.handle`` with the
connection's ``Session``; the engine predicts (``policyd.rules.predict``), chooses the configured
action, remembers the message's predictions for the one ``X-M365-Relay`` header at DATA, and
counts into ``Stats``. Time comes from an injected clock; the state (configuration, tenant,
alias maps) is swapped in one step on reload. The answers of one state are cached, and dropped,
by ``policyd.engine.cache.PredictionCache``.
"""

from __future__ import annotations

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
from policyd.engine.cache import Entry, PredictionCache, PredictionLine
from policyd.engine.stats import Stats
from policyd.errors import AliasLookupError, LookupFailureError, RewriteLookupError
from policyd.rules import predict
from policyd.rules.model import CertificateFacts
from policyd.rules.predict import RecipientPrediction
from policyd.rules.reasons import BY_ID, CODE_5764, LOCAL

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.python.failure import Failure

    from policyd.engine.outcomes import Expectations
    from policyd.sources.config import PolicySettings
    from policyd.sources.state import State

#: Runs a blocking function off the reactor thread: ``deferToThread``'s shape.
InThread = Callable[..., "Deferred[Any]"]

#: Writes one prediction's log line: ``(line, queue_id, instance, client_address)``; the log
#: output keeps the line's fixed part rendered (``policyd.daemon.log.LogOutput.prediction``).
PredictionOutput = Callable[[PredictionLine, str, str, str], None]

#: Postfix answers; "action=" and the blank line are the protocol layer's business.
DUNNO = "DUNNO"

#: SMTP reply texts must stay well inside Postfix's line limits.
REPLY_TEXT_LIMIT = 400


#: Recipients of one message whose predictions a connection keeps for the outcome join, as
#: Postfix's ``smtpd_recipient_limit`` (default 1000) caps a message's recipients: a client
#: that sends RCPT after RCPT in one instance cannot grow the session without bound (issue 16).
#: Recipients past it are still answered and counted in the header, not remembered.
MESSAGE_RECIPIENT_LIMIT = 1000


class Session:
    """Per-connection memory: the current message's RCPT predictions (one Postfix instance).

    Besides the predictions, it keeps what the ``X-M365-Relay`` header needs as they arrive
    (the first refused and the first relayed recipient, the numbers of recipients and refused),
    so the header at DATA costs one format; ``tag_value(recipients)`` is the same header from
    the list. At most ``MESSAGE_RECIPIENT_LIMIT`` predictions are kept.
    """

    __slots__ = (
        "count",
        "first_refused",
        "first_relayed",
        "instance",
        "recipients",
        "refused",
        "tagged",
    )

    def __init__(self) -> None:
        self.instance = ""
        self.recipients: list[RecipientPrediction] = []  # part of the message (not refused at RCPT)
        self.count = 0  # recipients part of the message, also those past the limit
        self.tagged = False
        self.refused = 0
        self.first_refused: Entry | None = None
        self.first_relayed: Entry | None = None

    def start(self, instance: str) -> None:
        """A new instance means the previous message was delivered or aborted: forget it."""
        self.instance = instance
        self.recipients = []
        self.count = 0
        self.tagged = False
        self.refused = 0
        self.first_refused = None
        self.first_relayed = None

    def add(self, entry: Entry) -> None:
        """One more recipient that is part of the message."""
        self.count += 1
        if self.count <= MESSAGE_RECIPIENT_LIMIT:
            self.recipients.append(entry.prediction)
        if entry.refused:
            self.refused += 1
            if self.first_refused is None:
                self.first_refused = entry
        if entry.relayed and self.first_relayed is None:
            self.first_relayed = entry

    def tag_value(self) -> str:
        """``tag_value(self.recipients)`` for a message with a relayed recipient."""
        first = self.first_refused
        if first is not None:
            verdict, reason = first.counted[1], first.counted[2]
            code = first.code or "none"
        else:
            relayed = self.first_relayed
            assert relayed is not None, "a message without relayed recipients is not tagged"
            verdict, code, reason = ACCEPT, "none", relayed.counted[2]
        return (
            f"verdict={verdict}; code={code}; reason={reason}; "
            f"refused={self.refused}; recipients={self.count}"
        )


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
        predictions: PredictionOutput | None = None,
    ) -> None:
        """``outcomes`` (docs/postfix.md) receives each message's predictions at DATA, by queue ID.

        ``in_thread(f, *args)`` runs ``f`` off the reactor thread and returns a Deferred of its
        result (``serve`` passes ``deferToThreadPool`` on the reactor's thread pool). With it, a
        recipient whose expansion needs ``postmap -q`` is answered by a Deferred instead of
        blocking every other connection while postmap runs; without it (``check``, tests) the
        lookup happens in place.

        Prediction log lines (at ``log.level`` info and below) go to ``predictions`` when given
        (``serve`` passes ``LogOutput.prediction``), else to ``emit`` as whole records; errors
        always go to ``emit``.
        """
        self.outcomes = outcomes
        self._in_thread = in_thread
        self._stats = stats
        self._clock = clock
        self._emit = emit
        self._predictions_out = predictions
        self._log_predictions = _logs_predictions(state)
        self._cache = PredictionCache(state, clock, _answer)

    # --- state ------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The state answers are computed with now."""
        return self._cache.state

    def replace_state(self, state: State) -> None:
        """Swap in a freshly built state; cached predictions of the old one are dropped."""
        self._log_predictions = _logs_predictions(state)
        self._cache.replace(state)

    def certificate_connector_match(self, now: float) -> bool | None:
        """For the metric: does the certificate match a connector? None: no certificate."""
        config = self.state.config
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
        predictor = self.state.predictor
        found: list[tuple[str, CertificateFacts, bool]] = []
        router = self.state.router
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
            return self._failed(attrs, lookup_problem(error))
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
            return self.state.config.policy.on_error
        except Exception:  # even a broken state must not refuse mail
            return "dunno"

    def predict(self, sender: str, recipient: str) -> RecipientPrediction:
        """Predict one recipient of ``sender`` with the current state (cached)."""
        return self._cache.entry(sender, recipient).prediction

    def _rcpt(self, attrs: Mapping[str, str], session: Session) -> str | Deferred[str]:
        instance = attrs.get("instance", "")
        if instance != session.instance:
            session.start(instance)
        sender = attrs.get("sender", "")
        recipient = attrs.get("recipient", "")
        if not recipient:
            return DUNNO
        # The hot path: one clock read, one dict lookup, a few counters.
        entry = self._cache.lookup(sender, recipient)
        if entry is None:
            if (
                self._in_thread is not None
                and self.state.uses_subprocess
                and not self._cache.knows(sender, recipient)
            ):
                return self._rcpt_in_thread(attrs, session, sender, recipient)
            entry = self._cache.entry(sender, recipient)
        return self._answer_rcpt(attrs, session, entry)

    def _rcpt_in_thread(
        self, attrs: Mapping[str, str], session: Session, sender: str, recipient: str
    ) -> Deferred[str]:
        """Predict ``recipient`` in a worker thread (its alias expansion or route needs
        ``postmap -q``), then remember and answer on the reactor as usual."""
        assert self._in_thread is not None
        cache = self._cache
        state = cache.state
        cache.attribution()  # a boundary passed: drop the old answers before this one is kept

        def predicted(cached: tuple[RecipientPrediction, bool]) -> str:
            if cache.state is state:
                cache.remember(sender, recipient, cached)
            # Reloaded meanwhile: the new state decides (cached or predicted in place).
            entry = cache.entry(sender, recipient)
            return self._answer_rcpt(attrs, session, entry)

        def failed(failure: Failure) -> str:
            error = failure.value
            if isinstance(error, LookupFailureError):
                return self._failed(attrs, lookup_problem(error))
            return self._failed(attrs, f"internal error: {error!r}")

        # cache.compute touches no cache: it may run in the worker thread.
        deferred: Deferred[tuple[RecipientPrediction, bool]] = self._in_thread(
            cache.compute, state, sender, recipient
        )
        return deferred.addCallback(predicted).addErrback(failed)

    def _answer_rcpt(self, attrs: Mapping[str, str], session: Session, entry: Entry) -> str:
        """Count, remember and log one RCPT prediction; the Postfix action text."""
        stats = self._stats
        stats.predictions[entry.counted] += 1
        if entry.external:
            stats.external_recipients[entry.tenant] += entry.external
            stats.unregistered_sender_relays[entry.tenant] += entry.unregistered  # 5.7.750 risk
        stats.actions[entry.action] += 1
        if entry.in_message:
            session.add(entry)  # part of the message: in the header
        if self._log_predictions:
            queue_id = attrs.get("queue_id", "")
            client_address = attrs.get("client_address", "")
            if self._predictions_out is not None:
                self._predictions_out(entry.line, queue_id, session.instance, client_address)
            else:
                self._emit(entry.line.record(queue_id, session.instance, client_address))
        return entry.answer

    def _data(self, attrs: Mapping[str, str], session: Session) -> str:
        outcomes = self.outcomes
        if (
            outcomes is not None
            and outcomes.following
            and attrs.get("instance", "") == session.instance
        ):
            self._expect_outcomes(attrs, session)
        policy = self.state.config.policy
        if (
            session.first_relayed is None
            or session.tagged
            or not policy.tag
            or attrs.get("instance", "") != session.instance
        ):
            return DUNNO
        session.tagged = True
        self._stats.actions["prepend"] += 1
        return f"PREPEND {policy.header}: {session.tag_value()}"

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


def lookup_problem(error: LookupFailureError) -> str:
    """The log line's problem for a failed table: which kind of lookup, and Postfix's words."""
    if isinstance(error, RewriteLookupError):
        kind = "sender rewriting"
    else:
        kind = "alias expansion" if isinstance(error, AliasLookupError) else "route lookup"
    return f"{kind} failed: {error}"


def _short(reason: str) -> str:
    """The reason's short phrase from ``policyd.rules.reasons``; the id itself if it has none."""
    words = BY_ID.get(reason)
    return (words.short if words else "") or reason
