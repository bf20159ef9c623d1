"""Outcomes: the predictions made at DATA joined with what Microsoft 365 really answered.

``OutcomeJoin`` remembers the predictions made at DATA (queue ID → final address / original
recipient → predicted kind), and for every delivery attempt to a Microsoft 365 relay that holds
a reply of Microsoft's classifies that reply by its text into an observed kind
(``policyd.rules.outcomes``). It counts ``Stats.observed_replies[(dsn, kind)]`` and,
when the queue ID and the recipient (``to=``, else ``orig_to=``) match a prediction,
``Stats.prediction_outcomes[(predicted kind, observed kind)]``: a prediction agrees only when
the kinds are equal, so a refusal predicted for the wrong reason is a disagreement. Postfix's
own failures (``relay=none``, a lost connection, its own TLS failure) are no reply of
Microsoft's and are not counted. The join state is bounded in size (``MAX_ENTRIES``
addresses and ``MAX_BYTES`` estimated bytes, oldest message dropped first: addresses of up to
1,024 characters make the entry count alone no bound on memory) and age (``MAX_AGE``, measured
with the ``now`` its callers pass in). Reactor-free.

Each delivery attempt counts once: a recipient deferred with ``4.4.62`` and delivered later
counts ``wrong-region`` and then ``accepted``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Protocol

from policyd.engine.stats import Stats
from policyd.rules.model import DEFAULT_TENANT
from policyd.rules.outcomes import (
    ACCEPTED,
    Delivery,
    Unparseable,
    observed_kind,
    parse_delivery,
    relay_matcher,
)
from policyd.rules.reasons import predicted_kind
from policyd.sources.schema import RELAY_HOSTS

#: Relays that are Microsoft 365 (docs/postfix.md); ``[outcomes] relay_hosts`` may name others.
DEFAULT_RELAY_HOSTS: tuple[str, ...] = RELAY_HOSTS.default


#: Join state bounds: addresses remembered, and how long a message's predictions are kept
#: (longer than Postfix's default maximal_queue_lifetime of 5 days, so late retries still join).
MAX_ENTRIES = 100_000

#: Estimated bytes of the join state (see ``_Message.cost``) before the oldest messages go.
MAX_BYTES = 32 << 20

#: Estimated bytes around one remembered address (dict slot, key string, kind tuple) and one
#: message (its object, dicts and queue ID), besides the strings' own characters.
ADDRESS_BYTES = 150
MESSAGE_BYTES = 600

MAX_AGE = 7 * 86400.0


#: Statuses of a delivery attempt that got (or failed to get) an answer from the relay.
COUNTED_STATUSES = frozenset({"sent", "deferred", "bounced", "softbounce"})


#: What the engine hands over per relayed address: (final address, original recipient, reason
#: id[, tenant]); the join remembers the reason's predicted kind and the tenant ("default"
#: when left out).
Expected = tuple[str, ...]


class _Message:
    """One message's predicted kinds: by final address and by original recipient (lower case)."""

    __slots__ = ("finals", "originals", "time")

    def __init__(self, time: float) -> None:
        self.time = time
        # lower-cased address -> (predicted kind, tenant)
        self.finals: dict[str, tuple[str, str]] = {}
        self.originals: dict[str, tuple[str, str]] = {}

    def size(self) -> int:
        return len(self.finals) + len(self.originals)

    def cost(self, queue_id: str) -> int:
        """Estimated bytes this message takes in the join."""
        keys = (*self.finals, *self.originals)
        return MESSAGE_BYTES + len(queue_id) + sum(ADDRESS_BYTES + len(key) for key in keys)


class OutcomeJoin:
    """Predictions at DATA joined with the replies Postfix logged (see the module docstring).

    Reactor-free: every method that needs the time takes ``now`` (Unix seconds).
    """

    def __init__(
        self,
        stats: Stats,
        relay_hosts: Iterable[str] = DEFAULT_RELAY_HOSTS,
        *,
        max_entries: int = MAX_ENTRIES,
        max_bytes: int = MAX_BYTES,
        max_age: float = MAX_AGE,
    ) -> None:
        self._stats = stats
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._messages: OrderedDict[str, _Message] = OrderedDict()  # oldest first
        self._costs: dict[str, int] = {}  # queue ID -> its message's cost when remembered
        self._size = 0
        self._bytes = 0
        self.relay_hosts = tuple(relay_hosts)

    @property
    def relay_hosts(self) -> tuple[str, ...]:
        return self._relay_hosts

    @relay_hosts.setter
    def relay_hosts(self, patterns: Iterable[str]) -> None:
        self._relay_hosts = tuple(patterns)
        self._is_microsoft = relay_matcher(self._relay_hosts)

    def __len__(self) -> int:
        """How many addresses (final and original) are remembered."""
        return self._size

    def messages(self) -> int:
        """How many messages (queue IDs) are remembered."""
        return len(self._messages)

    @property
    def bytes(self) -> int:
        """Estimated bytes remembered (bounded by ``max_bytes``)."""
        return self._bytes

    def _forget(self, queue_id: str, message: _Message) -> None:
        self._size -= message.size()
        self._bytes -= self._costs.pop(queue_id, 0)

    def expect(self, queue_id: str, entries: Iterable[Expected], now: float) -> None:
        """Remember a message's predictions: ``(final address, original recipient, reason)``."""
        if not queue_id:
            return
        self.prune(now)
        message = self._messages.pop(queue_id, None)
        if message is None:
            message = _Message(now)
        else:
            self._forget(queue_id, message)
            message.time = now
        for entry in entries:
            final, original, reason = entry[:3]
            kind = (predicted_kind(reason), entry[3] if len(entry) > 3 else DEFAULT_TENANT)
            final_key = final.lower()
            message.finals[final_key] = _worse(message.finals.get(final_key), kind)
            if original:
                original_key = original.lower()
                message.originals[original_key] = _worse(message.originals.get(original_key), kind)
        self._messages[queue_id] = message
        cost = message.cost(queue_id)
        self._costs[queue_id] = cost
        self._size += message.size()
        self._bytes += cost
        while (self._size > self.max_entries or self._bytes > self.max_bytes) and self._messages:
            self._forget(*self._messages.popitem(last=False))

    def prune(self, now: float) -> None:
        """Forget messages whose predictions are older than ``max_age``."""
        limit = now - self.max_age
        messages = self._messages
        while messages:
            queue_id, oldest = next(iter(messages.items()))
            if oldest.time >= limit:
                return
            del messages[queue_id]
            self._forget(queue_id, oldest)

    def predicted(self, delivery: Delivery) -> tuple[str, str] | None:
        """(predicted kind, tenant) for this delivery's recipient, or None when unknown."""
        message = self._messages.get(delivery.queue_id)
        if message is None:
            return None
        kind = message.finals.get(delivery.to.lower())
        if kind is None and delivery.orig_to:
            kind = message.originals.get(delivery.orig_to.lower())
        return kind

    def observe(self, delivery: Delivery, now: float) -> bool:
        """Count one delivery attempt if Microsoft 365 answered it; True when counted."""
        if delivery.status not in COUNTED_STATUSES or not self._is_microsoft(delivery):
            return False
        observed = observed_kind(delivery)
        if observed is None:  # Postfix's own failure: no reply of Microsoft's
            return False
        stats = self._stats
        stats.observed_replies[(delivery.dsn, observed)] += 1
        self.prune(now)
        predicted = self.predicted(delivery)
        if predicted is not None:
            kind, tenant = predicted
            stats.prediction_outcomes[(tenant, kind, observed)] += 1
        return True

    def feed(self, line: str, now: float) -> None:
        """Parse one log line and count it (an unparseable delivery line counts as skipped)."""
        parsed = parse_delivery(line)
        if parsed is None:
            return
        if isinstance(parsed, Unparseable):
            self._stats.log_lines_skipped += 1
            return
        self.observe(parsed, now)


def _worse(old: tuple[str, str] | None, new: tuple[str, str]) -> tuple[str, str]:
    """Two predicted kinds for one key: the first refusal wins (docs/relay-rules.md: a refused final
    address refuses the recipient, and the first refused address decides the reason)."""
    if old is None or old[0] == ACCEPTED:
        return new
    return old


class Expectations(Protocol):
    """What the policy engine needs: a place to hand a message's predictions at DATA."""

    @property
    def following(self) -> bool:
        """False while nothing is followed: the engine then skips building the entries."""
        ...

    def expect(self, queue_id: str, entries: Sequence[Expected]) -> None: ...
