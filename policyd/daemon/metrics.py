"""Prometheus exposition: ``Stats`` read at scrape time, served on ``/metrics`` by twisted.web.

The request path only increments plain numbers in ``policyd.engine.stats.Stats``; this module turns
them into metric families when Prometheus scrapes (README: metrics), so a scrape costs
something and a request costs nothing extra. The collector lives in a private
``CollectorRegistry`` (no process/platform collectors of the default registry, no global
state), and the HTTP resource renders in the reactor thread: ``Stats`` is owned by that thread,
and ``prometheus_client.twisted.MetricsResource`` would read it from the thread pool.

Every label value that is known in advance (stages, reasons, actions, protocol error kinds,
reload results) is exported at 0 from the start, so dashboards and alert rules have series
before the first event. The certificate gauges exist only when a certificate is configured.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from policyd import __version__, constants
from policyd.engine.stats import DURATION_BUCKETS, PROTOCOL_ERROR_KINDS, Stats
from policyd.rules import outcomes, reasons
from policyd.rules.model import CertificateFacts

PREFIX = "m365_policyd_"

#: ``requests_total{stage}``: the engine counts RCPT, DATA and everything else.
STAGES = constants.STAGES
#: ``actions_total{action}``: the configured actions, the DATA header, and our own failures.
ACTIONS = constants.ACTION_LABELS
#: ``config_reloads_total{result}``.
RELOAD_RESULTS = ("success", "failure")
#: Up to this many tenants, every (tenant, verdict, reason) series starts at 0 (so rate() sees
#: the first one); a relay with more tenants exports only the series it counted.
SEEDED_TENANTS = 20
#: ``predictions_total{verdict,reason}``: each reason id with its one verdict, from the table.
PREDICTION_LABELS: tuple[tuple[str, str], ...] = tuple((r.verdict, r.id) for r in reasons.TABLE)
#: ``prediction_outcomes_total{predicted,observed}``: every predicted kind against every observed
#: kind (docs/postfix.md), so an alert on a disagreement sees the series before its first increase.
OUTCOME_LABELS: tuple[tuple[str, str], ...] = tuple(
    (predicted, observed)
    for predicted in outcomes.PREDICTED_KINDS
    for observed in outcomes.OBSERVED_KINDS
)

_log = Logger()


def _with_known(counts: Mapping[Any, int], known: Iterable[Any]) -> Iterator[tuple[Any, int]]:
    """Known label values first (0 when never counted), then any others that were counted."""
    seen = set()
    for key in known:
        seen.add(key)
        yield key, counts.get(key, 0)
    for key in sorted(set(counts) - seen):
        yield key, counts[key]


def _labelled(
    name: str,
    documentation: str,
    labels: list[str],
    counts: Mapping[Any, int],
    known: Iterable[Any] = (),
) -> CounterMetricFamily:
    """A labelled counter family: known label values first (from 0), then any other counted.

    Keys of ``counts`` are one label value, or a tuple of values for several labels.
    """
    family = CounterMetricFamily(PREFIX + name, documentation, labels=labels)
    for key, count in _with_known(counts, known):
        family.add_metric(list(key) if isinstance(key, tuple) else [key], count)
    return family


class PolicydCollector:
    """A prometheus-client collector reading ``Stats`` (and the certificate) at scrape time."""

    def __init__(
        self,
        stats: Stats,
        *,
        clock: Callable[[], float],
        certificates: Callable[[float], Sequence[tuple[str, CertificateFacts, bool]]] = (
            lambda now: ()
        ),
        tenants: Callable[[], Sequence[str]] = lambda: ("default",),
        version: str = __version__,
    ) -> None:
        """``certificates(now)`` lists (tenant, certificate presented to it, whether it
        attributes us to one of the tenant's connectors right now); ``tenants()`` the configured
        tenant names (the ``tenant`` label's known values)."""
        self._stats = stats
        self._clock = clock
        self._certificates = certificates
        self._tenants = tenants
        self._version = version

    def describe(self) -> list[Metric]:
        """Nothing up front: the registry must not call ``collect`` at registration time."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Every metric of README: metrics, built from the current counters."""
        stats = self._stats

        yield _labelled(
            "requests_total",
            "Policy requests answered, by protocol stage.",
            ["stage"],
            stats.requests,
            STAGES,
        )

        cumulative: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(
            (*DURATION_BUCKETS, float("inf")), stats.duration_buckets, strict=True
        ):
            running += count
            cumulative.append(("+Inf" if bound == float("inf") else repr(bound), running))
        yield HistogramMetricFamily(
            PREFIX + "request_duration_seconds",
            "Time from a complete request to its answer, in seconds.",
            buckets=cumulative,
            sum_value=stats.duration_sum,
        )

        tenants = tuple(self._tenants())
        seeded = tenants if len(tenants) <= SEEDED_TENANTS else ()
        yield _labelled(
            "predictions_total",
            "Recipient predictions, by tenant, verdict and reason id.",
            ["tenant", "verdict", "reason"],
            stats.predictions,
            [
                (tenant, verdict, reason)
                for tenant in seeded
                for verdict, reason in PREDICTION_LABELS
            ],
        )
        yield _labelled(
            "actions_total",
            "Actions answered to Postfix, by action.",
            ["action"],
            stats.actions,
            ACTIONS,
        )

        yield GaugeMetricFamily(
            PREFIX + "connections", "Policy connections open now.", value=stats.connections
        )

        yield _labelled(
            "protocol_errors_total",
            "Connections closed without an answer because of a malformed request or a limit.",
            ["kind"],
            stats.protocol_errors,
            PROTOCOL_ERROR_KINDS,
        )

        yield CounterMetricFamily(
            PREFIX + "internal_errors_total",
            "Requests answered with policy.on_error because the daemon itself failed.",
            value=stats.internal_errors,
        )
        yield CounterMetricFamily(
            PREFIX + "log_lines_dropped_total",
            "Log lines dropped because the reader of standard output did not keep up.",
            value=stats.log_lines_dropped,
        )
        yield _labelled(
            "external_recipients_total",
            "Recipients predicted to be relayed to the internet through Microsoft 365, by tenant.",
            ["tenant"],
            stats.external_recipients,
            tenants,
        )
        yield _labelled(
            "unregistered_sender_relays_total",
            "Relays whose envelope sender domain is not an accepted domain (5.7.750 risk), by "
            "tenant.",
            ["tenant"],
            stats.unregistered_sender_relays,
            tenants,
        )

        yield from self._certificate_metrics()

        yield _labelled(
            "config_reloads_total",
            "Configuration reloads (SIGHUP or changed files), by result.",
            ["result"],
            stats.reloads,
            RELOAD_RESULTS,
        )
        yield GaugeMetricFamily(
            PREFIX + "config_last_reload_success_timestamp_seconds",
            "When the configuration in use was loaded (start-up or last successful reload).",
            value=stats.last_reload_success,
        )

        yield _labelled(
            "observed_replies_total",
            "Replies Microsoft 365 gave in Postfix's log, by enhanced status code and the kind "
            "its text says.",
            ["code", "kind"],
            stats.observed_replies,
        )
        yield _labelled(
            "prediction_outcomes_total",
            "Predictions matched with the reply Microsoft 365 really gave, by tenant, predicted "
            "and observed kind.",
            ["tenant", "predicted", "observed"],
            stats.prediction_outcomes,
            [(tenant, *pair) for tenant in seeded for pair in OUTCOME_LABELS],
        )
        yield CounterMetricFamily(
            PREFIX + "log_lines_skipped_total",
            "Postfix log lines the outcome follower could not parse.",
            value=stats.log_lines_skipped,
        )

        yield _labelled(
            "metrics_connections_closed_total",
            "/metrics connections the daemon closed: too many open, time budget spent, or a "
            "request body announced.",
            ["reason"],
            stats.metrics_connections_closed,
            METRICS_CLOSE_REASONS,
        )

        info = GaugeMetricFamily(
            PREFIX + "build_info", "The running m365-policyd version.", labels=["version"]
        )
        info.add_metric([self._version], 1)
        yield info

    def _certificate_metrics(self) -> Iterator[Metric]:
        found = self._certificates(self._clock())
        if not found:
            return
        expiry = GaugeMetricFamily(
            PREFIX + "certificate_not_after_timestamp_seconds",
            "Expiry (notAfter) of each certificate Postfix presents to Microsoft 365.",
            labels=["certificate"],
        )
        seen: set[str] = set()
        for _, certificate, _ in found:
            if certificate.path not in seen and certificate.not_after is not None:
                seen.add(certificate.path)
                expiry.add_metric([certificate.path], certificate.not_after.timestamp())
        yield expiry
        match = GaugeMetricFamily(
            PREFIX + "certificate_connector_match",
            "1 when the certificate attributes this server to one of the tenant's enabled "
            "OnPremises connectors.",
            labels=["tenant", "certificate"],
        )
        for tenant, certificate, matched in found:
            match.add_metric([tenant, certificate.path], 1 if matched else 0)
        yield match


def make_registry(collector: PolicydCollector) -> CollectorRegistry:
    """A private registry holding only ``collector``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def _content_type(request: Request, value: bytes) -> None:
    request.responseHeaders.setRawHeaders(b"Content-Type", [value])


class MetricsResource(Resource):
    """``GET /metrics`` renders the registry in the reactor thread; ``/`` links to it."""

    isLeaf = True  # noqa: N815 - twisted.web's attribute name

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Resource.__init__ is untyped
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:  # noqa: N802 - twisted.web's method name
        path = request.path.rstrip(b"/") or b"/"
        if path == b"/metrics":
            try:
                body: bytes = generate_latest(self._registry)
            except Exception:  # a failed scrape is a 500, never a dead daemon
                _log.failure("rendering /metrics failed")
                request.setResponseCode(500)
                _content_type(request, b"text/plain; charset=utf-8")
                return b"rendering metrics failed; see the daemon's log\n"
            _content_type(request, CONTENT_TYPE_LATEST.encode())
            return body
        _content_type(request, b"text/plain; charset=utf-8")
        if path == b"/":
            return b"m365-policyd: metrics are at /metrics\n"
        request.setResponseCode(404)
        return b"not found; metrics are at /metrics\n"


#: Seconds a ``/metrics`` connection may send nothing at all before it is closed (within the
#: total ``server.metrics_timeout``, which a client sending a byte now and then also meets).
METRICS_IDLE_TIMEOUT = 5.0


def idle_timeout(total_timeout: float) -> float:
    """The idle timeout of a ``/metrics`` connection: ``METRICS_IDLE_TIMEOUT``, or half the
    total budget when that is shorter."""
    return min(METRICS_IDLE_TIMEOUT, total_timeout / 2)


#: ``m365_policyd_metrics_connections_closed_total{reason}``: a ``/metrics`` connection closed
#: by the daemon because the budget was full, its time was up, or it sent a request body.
METRICS_TOO_MANY = "too-many-connections"
METRICS_TIMEOUT = "timeout"
METRICS_REQUEST_BODY = "request-body"
METRICS_CLOSE_REASONS = (METRICS_TOO_MANY, METRICS_TIMEOUT, METRICS_REQUEST_BODY)

#: The whole answer to a request that announces a body: Prometheus never sends one.
_BODY_REFUSED = (
    b"HTTP/1.1 413 Request Entity Too Large\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 42\r\n"
    b"Connection: close\r\n\r\n"
    b"request bodies are refused; GET /metrics\n\n"
)


class MetricsChannel(http.HTTPChannel):
    """One ``/metrics`` connection with its own budget (issue 16, SPEC §6): one request, then
    closed; closed when the site's ``total_timeout`` has passed since it opened, however it
    behaves; and answered 413 then closed, unread, as soon as a request announces a body
    (``Content-Length`` above 0 or ``Transfer-Encoding``)."""

    site: MetricsSite  # set by Site.buildProtocol
    _deadline: Any = None  # IDelayedCall
    _refused = False

    def connectionMade(self) -> None:  # noqa: N802 - Twisted callback name
        super().connectionMade()  # type: ignore[no-untyped-call]  # untyped in Twisted
        call_later: Any = self.callLater  # the site's reactor's (HTTPFactory.buildProtocol)
        self._deadline = call_later(self.site.total_timeout, self._expire)

    def _expire(self) -> None:
        self._deadline = None
        self.site.count(METRICS_TIMEOUT)
        self._transport().abortConnection()

    def timeoutConnection(self) -> None:  # noqa: N802 - Twisted callback name
        """Idle for ``METRICS_IDLE_TIMEOUT``: counted, then Twisted's own close."""
        self.site.count(METRICS_TIMEOUT)
        super().timeoutConnection()  # type: ignore[no-untyped-call]  # untyped in Twisted

    def checkPersistence(self, request: Any, version: bytes) -> bool:  # noqa: N802 - Twisted name
        """One request per connection (the answer says ``Connection: close``): a client that
        pipelines thousands of scrapes and reads none would otherwise have them all rendered
        on the reactor, one after the other, answers to Postfix waiting meanwhile."""
        request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
        return False

    def allHeadersReceived(self) -> None:  # noqa: N802 - Twisted callback name
        if self.length != 0:  # a body is announced (None: chunked); never read it
            self._refused = True
            self.site.count(METRICS_REQUEST_BODY)
            transport = self._transport()
            transport.write(_BODY_REFUSED)
            self.loseConnection()  # type: ignore[no-untyped-call]  # stops reading at once
            return
        super().allHeadersReceived()  # type: ignore[no-untyped-call]  # untyped in Twisted

    def rawDataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted callback name
        if not self._refused:  # the rest of a read that carried a refused request's headers
            super().rawDataReceived(data)

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802 - Twisted callback name
        deadline, self._deadline = self._deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()
        self.site.closed()
        super().connectionLost(reason)  # type: ignore[no-untyped-call]  # untyped in Twisted

    def _transport(self) -> Any:
        """The transport, typed loosely (mypy misreads zope interface methods)."""
        return self.transport


class MetricsSite(Site):
    """The ``/metrics`` HTTP factory: scrapes are not logged, and connections have their own
    budget so that no scraper (or anyone else who can reach the port) can take the file
    descriptors and the reactor time policy connections need: at most ``max_connections``
    open (more are closed at accept, before any byte is read), each closed after
    ``total_timeout`` seconds in all or ``METRICS_IDLE_TIMEOUT`` without a byte, and no
    request bodies. ``count(reason)`` is told of every connection closed for one of
    ``METRICS_CLOSE_REASONS``."""

    noisy = False
    protocol = MetricsChannel  # type: ignore[assignment]  # a plain HTTP/1.1 channel: no TLS, so no HTTP/2 negotiation

    def __init__(
        self,
        resource: Resource,
        *,
        max_connections: int = 32,
        total_timeout: float = 10.0,
        count: Callable[[str], None] = lambda reason: None,
        reactor: Any = None,
    ) -> None:
        super().__init__(  # type: ignore[no-untyped-call]  # Site.__init__ is untyped
            resource, timeout=idle_timeout(total_timeout), reactor=reactor
        )
        self.max_connections = max_connections
        self.total_timeout = total_timeout
        self.count = count
        self.open_count = 0

    def set_budget(self, max_connections: int, total_timeout: float) -> None:
        """New limits (a reload); they apply to connections opened from now on."""
        self.max_connections = max_connections
        self.total_timeout = total_timeout
        self.timeOut = idle_timeout(total_timeout)

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802 - Twisted method name
        """A channel, or None past ``max_connections`` (the listener then closes the socket
        at once: the descriptor is free again before the next accept)."""
        if self.open_count >= self.max_connections:
            self.count(METRICS_TOO_MANY)
            return None
        channel = super().buildProtocol(addr)  # type: ignore[no-untyped-call]  # untyped
        self.open_count += 1
        return channel

    def closed(self) -> None:
        """A channel built here was lost."""
        self.open_count -= 1

    def log(self, request: http.Request) -> None:
        """Scrapes are not logged."""


def metrics_site(
    registry: CollectorRegistry,
    *,
    max_connections: int = 32,
    total_timeout: float = 10.0,
    count: Callable[[str], None] = lambda reason: None,
    reactor: Any = None,
) -> MetricsSite:
    """The HTTP factory to listen with on ``server.metrics`` (``server.metrics_max_connections``,
    ``server.metrics_timeout``; ``count`` as ``MetricsSite``'s)."""
    return MetricsSite(
        MetricsResource(registry),
        max_connections=max_connections,
        total_timeout=total_timeout,
        count=count,
        reactor=reactor,
    )
