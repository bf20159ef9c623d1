"""The Grafana dashboard ``contrib/grafana/m365-policyd.json``: static checks and a live test.

The static checks read the JSON: importable shape, a templated Prometheus data source, a query
on every panel, only metric names the daemon exports (SPEC §7 and §8), and every topic of the
operations issue covered. The live test starts Debian's ``prometheus`` on loopback scraping a
running daemon every second, drives the daemon with policy requests of several reasons and
writes Postfix log lines for its outcome follower, then evaluates EVERY panel query (dashboard
variables substituted) through Prometheus's HTTP API and requires a non-empty result.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests import needs
from tests.metricnames import SPEC_METRICS, metric_names
from tests.serverproc import free_port
from tests.tenants import ip_tenant_toml

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "contrib" / "grafana" / "m365-policyd.json"
DATASOURCE_UID = "${DS_PROMETHEUS}"

#: What the operations issue asks the dashboard to show, by the metric that shows it.
REQUIRED_TOPICS = {
    "predictions by verdict and reason": "m365_policyd_predictions_total",
    "actions taken": "m365_policyd_actions_total",
    "request rate": "m365_policyd_requests_total",
    "latency p50/p99": "m365_policyd_request_duration_seconds_bucket",
    "open connections": "m365_policyd_connections",
    "certificate days left": "m365_policyd_certificate_not_after_timestamp_seconds",
    "connector match": "m365_policyd_certificate_connector_match",
    "reload results": "m365_policyd_config_reloads_total",
    "external recipients over 24 h": "m365_policyd_external_recipients_total",
    "unregistered sender domains": "m365_policyd_unregistered_sender_relays_total",
    "observed Microsoft 365 replies": "m365_policyd_observed_replies_total",
    "prediction outcomes": "m365_policyd_prediction_outcomes_total",
}

#: Grafana's own interval variables, and what the live test substitutes for them.
GRAFANA_BUILTINS = {"__rate_interval": "15s", "__interval": "5s", "__range": "1h"}


def load_dashboard() -> dict[str, Any]:
    """The dashboard as a JSON object."""
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def query_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that is not a row, including panels nested in collapsed rows."""
    found: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        if panel.get("type") == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(panel title, refId, PromQL expression) for every target of every panel."""
    return [
        (panel["title"], target.get("refId", "?"), target.get("expr", ""))
        for panel in query_panels(dashboard)
        for target in panel.get("targets", [])
    ]


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The dashboard's template variables by name."""
    return {var["name"]: var for var in dashboard["templating"]["list"]}


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace ``$name`` and ``${name}`` in ``expr`` by ``values[name]`` (all must be known)."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"no value for dashboard variable ${name} in {expr!r}")
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", replace, expr)


# -- static checks ----------------------------------------------------------------------------


def test_dashboard_is_importable_grafana_json() -> None:
    """The file is one JSON object with Grafana's import fields and a recent schema version."""
    dashboard = load_dashboard()
    assert dashboard["title"] == "m365-policyd"
    assert dashboard["uid"] == "m365-policyd"
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["id"] is None  # an id from another Grafana would clash on import
    assert dashboard["__requires"], "Grafana lists required plugins on import"


def test_panel_ids_unique_and_layout_does_not_overlap() -> None:
    """Panel ids are unique and no two panels occupy the same grid cell."""
    dashboard = load_dashboard()
    everything = [p for p in dashboard["panels"]] + [
        inner for p in dashboard["panels"] for inner in p.get("panels", [])
    ]
    ids = [panel["id"] for panel in everything]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in everything:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_datasource_is_templated() -> None:
    """The data source is an import input and a variable, and every panel and query uses it."""
    dashboard = load_dashboard()
    inputs = {item["name"]: item for item in dashboard["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    ds_var = variables(dashboard)["DS_PROMETHEUS"]
    assert ds_var["type"] == "datasource"
    assert ds_var["query"] == "prometheus"
    for panel in query_panels(dashboard):
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE_UID, panel["title"]
    for var in variables(dashboard).values():
        if var["type"] == "query":
            assert var["datasource"]["uid"] == DATASOURCE_UID, var["name"]


def test_every_panel_has_a_query() -> None:
    """Each non-row panel has at least one target with a non-empty PromQL expression."""
    dashboard = load_dashboard()
    panels = query_panels(dashboard)
    assert len(panels) >= 12
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["refId"], panel["title"]
        assert panel.get("description"), f"{panel['title']} has no description"


def test_only_exported_metric_names_are_used() -> None:
    """Every metric name in a panel query is one the daemon exports (SPEC §7 and §8)."""
    used: set[str] = set()
    for title, _ref, expr in panel_queries(load_dashboard()):
        names = metric_names(expr)
        assert names <= SPEC_METRICS, f"{title}: unknown {sorted(names - SPEC_METRICS)}"
        used |= names
    assert "m365_policyd_request_duration_seconds_bucket" in used


def test_every_issue_topic_has_a_panel() -> None:
    """Each item the operations issue lists for the dashboard is queried by some panel."""
    used = set().union(*(metric_names(expr) for _t, _r, expr in panel_queries(load_dashboard())))
    missing = [topic for topic, metric in REQUIRED_TOPICS.items() if metric not in used]
    assert missing == []


def test_latency_panel_shows_p50_and_p99() -> None:
    """The latency panel computes the 0.5 and 0.99 quantiles from the duration histogram."""
    exprs = [e for _t, _r, e in panel_queries(load_dashboard()) if "histogram_quantile" in e]
    assert any(e.startswith("histogram_quantile(0.5,") for e in exprs)
    assert any(e.startswith("histogram_quantile(0.99,") for e in exprs)
    assert all("by (le)" in e for e in exprs)


def test_terrl_uses_the_licenses_variable() -> None:
    """The tenant limit line is 500 * licences^0.7 + 9500 with a dashboard variable for licences."""
    dashboard = load_dashboard()
    licenses = variables(dashboard)["licenses"]
    assert licenses["type"] in {"textbox", "constant"}
    assert int(licenses["query"]) > 0
    assert int(licenses["current"]["value"]) == int(licenses["query"])
    exprs = [e for _t, _r, e in panel_queries(dashboard)]
    assert "vector(500 * $licenses ^ 0.7 + 9500)" in exprs
    assert (
        "sum by (tenant) (increase(m365_policyd_external_recipients_total"
        '{tenant=~"$tenant",job=~"$job"}[24h]))'
    ) in exprs


#: Metrics with a ``tenant`` label (SPEC §7): the dashboard filters them by $tenant.
TENANT_LABELLED = {
    "m365_policyd_predictions_total",
    "m365_policyd_external_recipients_total",
    "m365_policyd_unregistered_sender_relays_total",
    "m365_policyd_certificate_connector_match",
    "m365_policyd_prediction_outcomes_total",
}


def test_queries_filter_by_job_instance_and_tenant_variables() -> None:
    """Queries filter by $job, all but the tenant-wide ones by $instance, and every metric
    with a tenant label by $tenant."""
    dashboard = load_dashboard()
    tenant_wide = {"m365_policyd_external_recipients_total"}
    for title, ref, expr in panel_queries(dashboard):
        for selector in re.findall(r"(m365_policyd_[a-z0-9_]+)(\{[^}]*\})?", expr):
            name, labels = selector
            assert 'job=~"$job"' in labels, f"{title}/{ref}: {name} without $job"
            if name not in tenant_wide:
                assert 'instance=~"$instance"' in labels, f"{title}/{ref}: {name}"
            if name in TENANT_LABELLED:
                assert 'tenant=~"$tenant"' in labels, f"{title}/{ref}: {name} without $tenant"


def test_tenant_variable_lists_the_tenants() -> None:
    """$tenant offers the tenant label values the daemons export, all of them by default."""
    tenant = variables(load_dashboard())["tenant"]
    assert "m365_policyd_predictions_total" in tenant["query"]["query"]
    assert (tenant["includeAll"], tenant["multi"]) == (True, True)


def test_every_variable_used_is_defined() -> None:
    """Every ``$variable`` in a query is a dashboard variable or one of Grafana's built-ins."""
    dashboard = load_dashboard()
    known = set(variables(dashboard)) | set(GRAFANA_BUILTINS)
    for title, _ref, expr in panel_queries(dashboard):
        used = {a or b for a, b in re.findall(r"\$\{(\w+)\}|\$(\w+)", expr)}
        assert used <= known, f"{title}: {sorted(used - known)}"
    job = variables(dashboard)["job"]["query"]["query"]
    assert job == "label_values(m365_policyd_build_info, job)"


# -- live test: Debian's prometheus scraping a running daemon --------------------------------


def stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate ``process`` and reap it (kill it after 10 s)."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class Prometheus:
    """A running ``prometheus`` on loopback, queried through its HTTP API."""

    base: str
    log: Path

    def query(self, expr: str) -> dict[str, Any]:
        """Evaluate ``expr`` now through ``/api/v1/query``; fail on an API error."""
        url = f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.loads(response.read().decode())
        except urllib.error.HTTPError as error:
            pytest.fail(f"query {expr!r} failed: {error.code} {error.read().decode()}")
        assert body["status"] == "success", body
        data: dict[str, Any] = body["data"]
        return data

    def wait_for(self, expr: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Poll until ``expr`` returns a non-empty vector; return it."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)["result"]
            if result:
                return list(result)
            if time.monotonic() > deadline:
                pytest.fail(f"no result for {expr!r} within {timeout} s; log: {self.log}")
            time.sleep(0.5)


@contextmanager
def running_prometheus(directory: Path, target: str, job: str) -> Iterator[Prometheus]:
    """Debian's ``prometheus`` scraping ``target`` every second, with its own config and TSDB."""
    binary = needs.program("prometheus", "prometheus")
    port = free_port()
    config = directory / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"scrape_configs:\n  - job_name: {job}\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    log = directory / "prometheus.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"prometheus exited with {process.returncode}: {log.read_text()}")
            try:
                with urllib.request.urlopen(f"{base}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prometheus not ready within 30 s: {log.read_text()}")
            time.sleep(0.2)
        yield Prometheus(base, log)
    finally:
        stop(process)


def send_message(
    client: Any, queue_id: str, instance: str, sender: str, recipients: list[str]
) -> str:
    """The RCPT requests and the DATA request of one message; returns the DATA reply."""
    from tests.serverproc import data, rcpt

    for number, recipient in enumerate(recipients):
        # Postfix opens the queue file after the first valid RCPT: no queue ID for that one
        first = number == 0
        client.ask(rcpt(sender, recipient, queue_id="" if first else queue_id, instance=instance))
    return str(
        client.ask(
            data(
                instance,
                queue_id=queue_id,
                sender=sender,
                recipient=recipients[0] if len(recipients) == 1 else "",
                recipient_count=str(len(recipients)),
            )
        )
    )


MX = "contoso-com.mail.protection.outlook.com"
REFUSED_ATTR36 = (
    f"host {MX}[52.101.68.10] said: 550 5.7.64 Relay Access Denied ATTR36 "
    "[AM0PR04MB1234.eurprd04.prod.outlook.com] (in reply to RCPT TO command)"
)
REFUSED_5751 = (
    f"host {MX}[52.101.68.10] said: 550 5.7.51 TenantInboundAttribution; There is a partner "
    "connector configured that matched the message's recipient domain. The connector had either "
    "the RestrictDomainsToIPAddresses or RestrictDomainsToCertificate set "
    "[AM0PR04MB1234.eurprd04.prod.outlook.com] (in reply to RCPT TO command)"
)


def postfix_smtp_line(queue_id: str, recipient: str, dsn: str, status: str, reply: str) -> str:
    """A Postfix smtp(8) log line for a delivery attempt to the tenant's Microsoft 365 MX."""
    stamp = datetime.now(UTC).strftime("%b %d %H:%M:%S")
    return (
        f"{stamp} mx1 postfix/smtp[4711]: {queue_id}: to=<{recipient}>, "
        f"relay={MX}[52.101.68.10]:25, delay=1.4, delays=0.05/0.01/0.62/0.72, "
        f"dsn={dsn}, status={status} ({reply})\n"
    )


BODY = ip_tenant_toml(
    action="dunno",
    connector='tls_sender_certificate_name = "*.contoso.com"',
    onprem='certificate = "{certificate}"\nca_bundle = "{ca_bundle}"\n'
    'local_domains = ["lab.contoso.net"]',
    policy="tag = true",
    tail='[outcomes]\npostfix_log = "{postfix_log}"',
)


def drive(server: Any, postfix_log: Path) -> None:
    """Send messages of several reasons (RCPT and DATA) and log what Microsoft 365 answered."""
    client = server.client()
    try:
        # own-domain sender to the internet: relayed (sender-accepted-domain)
        send_message(
            client, "4F1A2B3C01", "a1.5f3c1d2e.1.0", "app@contoso.com", ["kate@tailspintoys.com"]
        )
        # foreign sender: refused (sender-not-accepted)
        send_message(
            client, "4F1A2B3C02", "a1.5f3c1d2e.2.1", "john@fabrikam.com", ["kate@tailspintoys.com"]
        )
        # a bounce: refused (null-sender)
        send_message(client, "4F1A2B3C03", "a1.5f3c1d2e.3.2", "", ["ann@fabrikam.com"])
        # into the tenant (recipient-in-tenant) and to a domain Postfix delivers itself (local)
        send_message(
            client,
            "4F1A2B3C04",
            "a1.5f3c1d2e.4.3",
            "john@fabrikam.com",
            ["bob@contoso.com", "ops@lab.contoso.net"],
        )
    finally:
        client.close()
    with postfix_log.open("a") as log:
        log.write(
            postfix_smtp_line(
                "4F1A2B3C01",
                "kate@tailspintoys.com",
                "2.6.0",
                "sent",
                "250 2.6.0 <20261127100001.4F1A2B3C01@mx1.contoso.com> "
                "[InternalId=1, Hostname=AM0PR04MB1234] Queued mail for delivery",
            )
        )
        log.write(
            postfix_smtp_line(
                "4F1A2B3C02", "kate@tailspintoys.com", "5.7.64", "bounced", REFUSED_ATTR36
            )
        )
        log.write(
            postfix_smtp_line("4F1A2B3C03", "ann@fabrikam.com", "5.7.64", "bounced", REFUSED_ATTR36)
        )
        # predicted recipient-in-tenant, answered 5.7.51: a disagreement the stat panel counts
        log.write(
            postfix_smtp_line("4F1A2B3C04", "bob@contoso.com", "5.7.51", "bounced", REFUSED_5751)
        )


@dataclass
class Live:
    """A scraped daemon that has served the traffic of ``drive``."""

    prometheus: Prometheus
    values: dict[str, str]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """Start the daemon (with a certificate and a followed Postfix log) and a Prometheus
    scraping it every second, drive traffic, and wait until a scrape shows it."""
    needs.program("prometheus", "prometheus")
    from tests.pki import TestPKI
    from tests.serverproc import running_server

    directory = tmp_path_factory.mktemp("dashboard")
    pki = TestPKI()
    # *.contoso.com on the connector matches relay.eu.contoso.com, but that name sits two
    # labels below the accepted domain, so relaying falls back to the envelope sender.
    certificate, _key = pki.write(
        directory, pki.leaf("relay.eu.contoso.com", ["relay.eu.contoso.com"])
    )
    postfix_log = directory / "mail.log"
    postfix_log.write_text("")
    body = BODY.format(
        certificate=certificate, ca_bundle=pki.write_ca_bundle(directory), postfix_log=postfix_log
    )
    job = "m365-policyd"
    with ExitStack() as stack:
        server = stack.enter_context(running_server(directory / "daemon", body))
        prometheus = stack.enter_context(
            running_prometheus(directory, f"127.0.0.1:{server.metrics_port}", job)
        )
        prometheus.wait_for(f'up{{job="{job}"}} == 1')
        drive(server, postfix_log)
        prometheus.wait_for('m365_policyd_predictions_total{reason="null-sender"} > 0')
        prometheus.wait_for('m365_policyd_connections{job="m365-policyd"}')
        dashboard = load_dashboard()
        values = dict(GRAFANA_BUILTINS)
        values.update(
            job=job,
            instance=".*",
            tenant="default",  # the tenant variable set, as an operator picks one
            licenses=variables(dashboard)["licenses"]["query"],
        )
        yield Live(prometheus, values)


#: Metrics fed by the outcome follower (``[outcomes] postfix_log``, policyd/daemon/followers.py).
OUTCOME_METRICS = {"m365_policyd_observed_replies_total", "m365_policyd_prediction_outcomes_total"}


def empty_panels(live: Live, *, outcomes: bool, timeout: float = 30.0) -> tuple[list[str], int]:
    """Panel queries (the outcome-fed ones, or all others) whose result is empty, and how many
    queries were evaluated: polled until none is empty (rates need a few scrapes after the
    traffic) or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        empty, evaluated = _empty_panels_now(live, outcomes=outcomes)
        if not empty or time.monotonic() > deadline:
            return empty, evaluated
        time.sleep(1.0)  # Prometheus scrapes every second


def _empty_panels_now(live: Live, *, outcomes: bool) -> tuple[list[str], int]:
    empty = []
    evaluated = 0
    for title, ref, expr in panel_queries(load_dashboard()):
        if bool(metric_names(expr) & OUTCOME_METRICS) != outcomes:
            continue
        data = live.prometheus.query(substitute(expr, live.values))
        evaluated += 1
        if data["resultType"] in {"vector", "matrix"} and not data["result"]:
            empty.append(f"{title} [{ref}]: {expr}")
    return empty, evaluated


@pytest.mark.slow
def test_every_panel_query_returns_data_from_a_real_prometheus(live: Live) -> None:
    """Each panel's query (variables substituted) returns data from a live scrape of the daemon."""
    empty, evaluated = empty_panels(live, outcomes=False)
    assert empty == []
    assert evaluated >= 15
    # $tenant's own query (label_values of the predictions) offers the daemon's tenant
    tenants = live.prometheus.query(
        substitute(
            'count by (tenant) (m365_policyd_predictions_total{job=~"$job",tenant!=""})',
            live.values,
        )
    )
    assert {s["metric"]["tenant"] for s in tenants["result"]} == {"default"}
    refusals = {
        sample["metric"]["reason"]: float(sample["value"][1])
        for sample in live.prometheus.query(
            substitute(
                'sum by (reason) (increase(m365_policyd_predictions_total{job=~"$job",'
                'verdict="reject"}[$__range]))',
                live.values,
            )
        )["result"]
    }
    assert refusals["null-sender"] > 0
    assert refusals["sender-not-accepted"] > 0
    accepted = live.prometheus.query(
        'm365_policyd_predictions_total{verdict="accept",'
        'reason=~"sender-accepted-domain|recipient-in-tenant|local"} > 0'
    )
    assert len(accepted["result"]) == 3


@pytest.mark.slow
def test_outcome_panels_return_data_from_a_real_prometheus(live: Live) -> None:
    """The observed-replies and outcome panels show what the followed Postfix log said, in kinds:
    the two ATTR36 refusals agree, the 5.7.51 answer to an accepted prediction is counted as
    the one contradiction."""
    live.prometheus.wait_for('m365_policyd_observed_replies_total{kind="attr36"} > 0')
    live.prometheus.wait_for(
        'm365_policyd_prediction_outcomes_total{predicted="accepted",observed="partner-restricted"}'
        " > 0"
    )
    empty, evaluated = empty_panels(live, outcomes=True)
    assert empty == []
    assert evaluated == 3
    outcomes = live.prometheus.query("m365_policyd_prediction_outcomes_total > 0")
    assert {
        (s["metric"]["predicted"], s["metric"]["observed"]): float(s["value"][1])
        for s in outcomes["result"]
    } == {
        ("accepted", "accepted"): 1,
        ("attr36", "attr36"): 2,
        ("accepted", "partner-restricted"): 1,
    }
    contradicted = next(
        expr
        for title, _, expr in panel_queries(load_dashboard())
        if title == "Predictions Microsoft 365 contradicted in range"
    )
    (sample,) = live.prometheus.query(substitute(contradicted, live.values))["result"]
    assert float(sample["value"][1]) == pytest.approx(1, abs=0.5)


def test_substitute_replaces_all_variable_forms() -> None:
    """``substitute`` fills ``$name`` and ``${name}`` and refuses an unknown variable."""
    assert substitute('x{job=~"$job"}[${__range}]', {"job": "a", "__range": "1h"}) == (
        'x{job=~"a"}[1h]'
    )
    with pytest.raises(KeyError):
        substitute("$nope", {})
