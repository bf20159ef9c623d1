"""The Prometheus collector and the /metrics resource, without sockets."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyRequest

from policyd import __version__
from policyd.daemon.metrics import (
    ACTIONS,
    RELOAD_RESULTS,
    STAGES,
    MetricsResource,
    PolicydCollector,
    make_registry,
    metrics_site,
)
from policyd.engine.stats import DURATION_BUCKETS, PROTOCOL_ERROR_KINDS, Stats
from policyd.rules import predict, reasons
from policyd.rules.model import CertificateFacts

NOW = 1_700_000_000.0
P = "m365_policyd_"


def scrape(collector: PolicydCollector) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Render through a real registry and parse back: {sample name: {sorted labels: value}}."""
    from prometheus_client import generate_latest

    text = generate_latest(make_registry(collector)).decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[key] = sample.value
    return samples


def collector(
    stats: Stats, certificate: CertificateFacts | None = None, match: bool | None = None
) -> PolicydCollector:
    found = [("default", certificate, bool(match))] if certificate is not None else []
    return PolicydCollector(stats, clock=lambda: NOW, certificates=lambda now: found)


def test_every_spec_metric_is_exported_with_its_exact_name() -> None:
    """A fresh daemon exports every SPEC §7/§8 metric name (certificate gauges aside)."""
    samples = scrape(collector(Stats()))
    expected = {
        P + "requests_total",
        P + "request_duration_seconds_bucket",
        P + "request_duration_seconds_count",
        P + "request_duration_seconds_sum",
        P + "predictions_total",
        P + "actions_total",
        P + "connections",
        P + "protocol_errors_total",
        P + "internal_errors_total",
        P + "external_recipients_total",
        P + "unregistered_sender_relays_total",
        P + "config_reloads_total",
        P + "config_last_reload_success_timestamp_seconds",
        P + "build_info",
        P + "log_lines_skipped_total",
    }
    assert expected <= set(samples), expected - set(samples)
    assert P + "certificate_not_after_timestamp_seconds" not in samples
    assert P + "certificate_connector_match" not in samples


def test_known_label_values_start_at_zero() -> None:
    """Stages, reasons, actions, protocol error kinds and reload results all have series at 0."""
    samples = scrape(collector(Stats()))
    assert {k: v for k, v in samples[P + "requests_total"].items()} == {
        (("stage", stage),): 0.0 for stage in STAGES
    }
    predictions = samples[P + "predictions_total"]
    for reason in reasons.ACCEPT_REASONS:
        key = (("reason", reason), ("tenant", "default"), ("verdict", "accept"))
        assert predictions[key] == 0.0
    for reason in reasons.REFUSE_REASONS:
        key = (("reason", reason), ("tenant", "default"), ("verdict", "reject"))
        assert predictions[key] == 0.0
    assert len(predictions) == len(reasons.REASON_IDS)
    assert samples[P + "external_recipients_total"] == {(("tenant", "default"),): 0.0}
    assert set(samples[P + "actions_total"]) == {(("action", a),) for a in ACTIONS}
    assert set(samples[P + "protocol_errors_total"]) == {
        (("kind", k),) for k in PROTOCOL_ERROR_KINDS
    }
    assert set(samples[P + "config_reloads_total"]) == {(("result", r),) for r in RELOAD_RESULTS}
    assert samples[P + "build_info"] == {(("version", __version__),): 1.0}


def test_counters_follow_stats_at_scrape_time() -> None:
    """Values come from Stats when scraped, including label values outside the known set."""
    stats = Stats()
    c = collector(stats)
    stats.requests["rcpt"] += 5
    stats.requests["data"] += 2
    stats.predictions[("contoso", predict.REJECT, predict.FORWARDED)] += 3
    stats.actions["defer"] += 3
    stats.actions["made-up"] += 1
    stats.connections = 7
    stats.protocol_errors["nul-byte"] += 1
    stats.internal_errors = 4
    stats.external_recipients["contoso"] = 11
    stats.unregistered_sender_relays["contoso"] = 6
    stats.reloads["failure"] += 1
    stats.last_reload_success = NOW - 10
    stats.observed_replies[("5.7.64", "attr36")] += 2
    stats.prediction_outcomes[("contoso", "no-connector", "attr36")] += 1
    stats.log_lines_skipped = 9
    samples = scrape(c)
    assert samples[P + "requests_total"][(("stage", "rcpt"),)] == 5
    assert samples[P + "requests_total"][(("stage", "data"),)] == 2
    forwarded = (("reason", "forwarded"), ("tenant", "contoso"), ("verdict", "reject"))
    assert samples[P + "predictions_total"][forwarded] == 3
    assert samples[P + "actions_total"][(("action", "defer"),)] == 3
    assert samples[P + "actions_total"][(("action", "made-up"),)] == 1
    assert samples[P + "connections"][()] == 7
    assert samples[P + "protocol_errors_total"][(("kind", "nul-byte"),)] == 1
    assert samples[P + "internal_errors_total"][()] == 4
    assert samples[P + "external_recipients_total"][(("tenant", "contoso"),)] == 11
    assert samples[P + "unregistered_sender_relays_total"][(("tenant", "contoso"),)] == 6
    assert samples[P + "config_reloads_total"][(("result", "failure"),)] == 1
    assert samples[P + "config_reloads_total"][(("result", "success"),)] == 0
    assert samples[P + "config_last_reload_success_timestamp_seconds"][()] == NOW - 10
    assert samples[P + "observed_replies_total"] == {(("code", "5.7.64"), ("kind", "attr36")): 2}
    outcomes = samples[P + "prediction_outcomes_total"]
    assert (
        outcomes[(("observed", "attr36"), ("predicted", "no-connector"), ("tenant", "contoso"))]
        == 1
    )
    # every predicted kind against every observed kind of each configured tenant ("default"
    # here) is there from zero (7 x 13 series), plus the one counted for contoso
    assert len(outcomes) == 7 * 13 + 1
    zero = (("observed", "partner-restricted"), ("predicted", "accepted"), ("tenant", "default"))
    assert outcomes[zero] == 0
    assert samples[P + "log_lines_skipped_total"][()] == 9


def test_duration_histogram_is_cumulative() -> None:
    """Stats' per-bucket counts become Prometheus' cumulative buckets, with sum and count."""
    stats = Stats()
    durations = (0.00005, 0.0003, 0.0003, 0.02, 5.0)
    for seconds in durations:
        stats.observe_duration(seconds)
    samples = scrape(collector(stats))
    buckets = {
        dict(labels)["le"]: value
        for labels, value in samples[P + "request_duration_seconds_bucket"].items()
    }
    assert len(buckets) == len(DURATION_BUCKETS) + 1
    assert buckets["0.0001"] == 1
    assert buckets["0.00025"] == 1
    assert buckets["0.0005"] == 3
    assert buckets["0.025"] == 4
    assert buckets["1.0"] == 4
    assert buckets["+Inf"] == 5
    assert samples[P + "request_duration_seconds_count"][()] == 5
    assert abs(samples[P + "request_duration_seconds_sum"][()] - sum(durations)) < 1e-9


def test_certificate_gauges_per_certificate_and_tenant() -> None:
    """Each presented certificate has its expiry gauge; each (tenant, certificate) pair its
    connector-match gauge; none appear without a certificate."""
    not_after = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    facts = CertificateFacts(
        path="/etc/ssl/postfix.pem", common_name="mail.contoso.com", not_after=not_after
    )
    seen: list[float] = []

    def matches(now: float) -> list[tuple[str, CertificateFacts, bool]]:
        seen.append(now)
        return [("contoso", facts, True), ("fabrikam", facts, False)]

    c = PolicydCollector(Stats(), clock=lambda: NOW, certificates=matches)
    samples = scrape(c)
    expiry = samples[P + "certificate_not_after_timestamp_seconds"]
    assert expiry == {(("certificate", "/etc/ssl/postfix.pem"),): not_after.timestamp()}
    assert samples[P + "certificate_connector_match"] == {
        (("certificate", "/etc/ssl/postfix.pem"), ("tenant", "contoso")): 1,
        (("certificate", "/etc/ssl/postfix.pem"), ("tenant", "fabrikam")): 0,
    }
    assert seen == [NOW]
    samples = scrape(collector(Stats(), facts, match=False))
    key = (("certificate", "/etc/ssl/postfix.pem"), ("tenant", "default"))
    assert samples[P + "certificate_connector_match"][key] == 0


def test_unreadable_certificate_has_match_gauge_but_no_expiry() -> None:
    """A configured but unreadable certificate reports match 0 and no notAfter it cannot know."""
    facts = CertificateFacts(path="/missing.pem", error="unreadable: no such file")
    samples = scrape(collector(Stats(), facts, match=False))
    assert P + "certificate_not_after_timestamp_seconds" not in samples
    key = (("certificate", "/missing.pem"), ("tenant", "default"))
    assert samples[P + "certificate_connector_match"][key] == 0


def render(resource: MetricsResource, path: bytes) -> tuple[int, bytes, bytes]:
    request = DummyRequest(path.lstrip(b"/").split(b"/") if path != b"/" else [b""])
    request.path = path
    body = resource.render_GET(request)
    content_type = (request.responseHeaders.getRawHeaders(b"content-type") or [b""])[0]
    return request.responseCode or 200, content_type, body


def test_resource_serves_metrics_text_format() -> None:
    """GET /metrics answers 200 with Prometheus' text format and the current values."""
    stats = Stats()
    resource = MetricsResource(make_registry(collector(stats)))
    stats.requests["rcpt"] = 3
    code, content_type, body = render(resource, b"/metrics")
    assert code == 200
    assert content_type.startswith(b"text/plain; version=")
    assert b'm365_policyd_requests_total{stage="rcpt"} 3.0' in body


def test_resource_answers_404_elsewhere() -> None:
    """Paths other than / and /metrics are 404; / points at /metrics."""
    resource = MetricsResource(make_registry(collector(Stats())))
    assert render(resource, b"/nope")[0] == 404
    code, _, body = render(resource, b"/")
    assert code == 200
    assert b"/metrics" in body


def test_failing_collector_gives_500_not_an_exception() -> None:
    """A collector that raises yields a 500 answer instead of propagating into the reactor."""

    def broken(now: float) -> list[tuple[str, CertificateFacts, bool]]:
        raise RuntimeError("boom")

    c = PolicydCollector(Stats(), clock=lambda: NOW, certificates=broken)
    code, _, _ = render(MetricsResource(make_registry(c)), b"/metrics")
    assert code == 500


def access_log_after_one_scrape(site: Site, directory: Path) -> str:
    """Serve ``GET /metrics`` through ``site`` in memory, its access log at a file; the log."""
    log_path = directory / "access.log"
    site.logPath = str(log_path)  # HTTPFactory opens it in doStart, as with Site(logPath=...)
    site.doStart()
    try:
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert transport.value().startswith(b"HTTP/1.1 200 ")
    finally:
        site.doStop()
    return log_path.read_text()


def test_a_plain_site_logs_each_scrape(tmp_path: Path) -> None:
    """The control for the next test: twisted.web's ``Site`` writes one access line a scrape."""
    resource = MetricsResource(make_registry(collector(Stats())))
    log = access_log_after_one_scrape(Site(resource), tmp_path)
    assert log.count('"GET /metrics HTTP/1.1" 200') == 1


def test_site_does_not_log_scrapes(tmp_path: Path) -> None:
    """The metrics site writes no access line for a scrape, so scrapes do not flood the journal."""
    site = metrics_site(make_registry(collector(Stats())))
    assert access_log_after_one_scrape(site, tmp_path) == ""
    assert site.noisy is False
