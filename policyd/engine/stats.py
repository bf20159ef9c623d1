"""Plain counters for the hot path; turned into Prometheus metrics only at scrape time.

Per-request ``labels(...)`` lookups and histogram observations in prometheus-client are the
largest cost after parsing (see performance notes), so the request path increments plain
integers here and ``policyd.daemon.metrics`` exposes them through a custom collector. The object is
owned by the reactor thread; nothing here locks.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable

#: Upper bounds (seconds) of the request-duration histogram buckets; +Inf is implicit.
DURATION_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)

#: ``m365_policyd_protocol_errors_total{kind}`` label values.
TOO_LARGE = "request-too-large"
NO_EQUALS = "line-without-equals"
NUL_BYTE = "nul-byte"
INVALID_UTF8 = "invalid-utf8"
TOO_MANY_CONNECTIONS = "too-many-connections"
IDLE_TIMEOUT = "idle-timeout"
#: A sender or recipient longer than ``MAX_ADDRESS_CHARS``: no real address is (issue 16).
VALUE_TOO_LONG = "value-too-long"
#: A connection the listener could not take (accept(2) failed: EMFILE, ENFILE, ENOBUFS, ENOMEM),
#: or took only to close it at once to get out of EMFILE (Twisted's recovery).
ACCEPT_FAILED = "accept-failed"
PROTOCOL_ERROR_KINDS = (
    TOO_LARGE,
    NO_EQUALS,
    NUL_BYTE,
    INVALID_UTF8,
    TOO_MANY_CONNECTIONS,
    IDLE_TIMEOUT,
    VALUE_TOO_LONG,
    ACCEPT_FAILED,
)

#: The longest ``sender``/``recipient`` value a request may carry, in characters. RFC 5321
#: 4.5.3.1.3 caps a path at 256 octets; this allows four times that (UTF-8, sloppy clients)
#: and keeps each cached prediction small: a flood of unique 30 KB addresses is refused.
MAX_ADDRESS_CHARS = 1024


class Stats:
    """Every counter the daemon exports, as plain Python numbers."""

    def __init__(self) -> None:
        self.requests: defaultdict[str, int] = defaultdict(int)  # by stage: rcpt, data, other
        self.duration_buckets: list[int] = [0] * (len(DURATION_BUCKETS) + 1)  # last is +Inf
        self.duration_sum = 0.0
        self.duration_count = 0
        self.predictions: defaultdict[tuple[str, str, str], int] = defaultdict(
            int
        )  # (tenant, verdict, reason)
        self.actions: defaultdict[str, int] = defaultdict(int)
        self.connections = 0  # open now
        self.protocol_errors: defaultdict[str, int] = defaultdict(int)
        self.internal_errors = 0
        self.log_lines_dropped = 0  # log lines a stalled stdout reader could not take
        # by tenant name ("" when not through Microsoft 365)
        self.external_recipients: defaultdict[str, int] = defaultdict(int)
        self.unregistered_sender_relays: defaultdict[str, int] = defaultdict(int)
        self.reloads: defaultdict[str, int] = defaultdict(int)  # result: success | failure
        self.last_reload_success = 0.0  # Unix time
        # Microsoft 365's replies by (enhanced code, observed kind), and the join of predictions
        # with them by (predicted kind, observed kind).
        self.observed_replies: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.prediction_outcomes: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        self.log_lines_skipped = 0  # outcome watcher: unparseable Postfix log lines
        # /metrics connections the daemon closed, by reason (policyd.daemon.metrics)
        self.metrics_connections_closed: defaultdict[str, int] = defaultdict(int)

    def observe_duration(self, seconds: float) -> None:
        """Count one request that took ``seconds`` into the duration histogram."""
        self.duration_buckets[bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.duration_sum += seconds
        self.duration_count += 1


#: A kind of error is logged at most once per this many seconds (the rest are counted).
LOG_INTERVAL = 60.0


class LogThrottle:
    """At most one log line per key every ``interval`` seconds, with a count of the rest.

    ``clock()`` is the time in seconds. ``allow(key)`` is None when the key was logged within
    the interval (counted as suppressed), else how many were suppressed since its last line.
    """

    def __init__(self, clock: Callable[[], float], interval: float = LOG_INTERVAL) -> None:
        self._clock = clock
        self._interval = interval
        self._state: dict[str, tuple[float, int]] = {}  # key -> (last logged, suppressed)

    def allow(self, key: str) -> int | None:
        now = self._clock()
        last, suppressed = self._state.get(key, (-self._interval, 0))
        if key in self._state and now - last < self._interval:
            self._state[key] = (last, suppressed + 1)
            return None
        self._state[key] = (now, 0)
        return suppressed
