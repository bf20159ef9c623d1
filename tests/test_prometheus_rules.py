"""The Prometheus alert rules and example config, checked and unit-tested with ``promtool``.

``promtool check rules`` validates ``contrib/prometheus/m365-policyd.rules.yml``;
``promtool test rules`` runs the unit tests in ``tests/data/prometheus/*.test.yml``, which feed
synthetic series and require each alert to fire (with its exact labels and annotations) and to
stay quiet on healthy data. Without ``promtool`` the tests skip, unless ``CI`` is set.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests import needs
from tests.metricnames import SPEC_METRICS, metric_names

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "contrib" / "prometheus" / "m365-policyd.rules.yml"
EXAMPLE_CONFIG = ROOT / "contrib" / "prometheus" / "prometheus.example.yml"
UNIT_TESTS = sorted((ROOT / "tests" / "data" / "prometheus").glob("*.test.yml"))


def promtool() -> str:
    """Path of ``promtool``; skip without it, but fail when the ``CI`` variable is set."""
    return needs.program("promtool", "prometheus")


def run_promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run promtool with ``args`` from the repository root and capture its output."""
    return subprocess.run(
        [promtool(), *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def alert_names() -> list[str]:
    """Names of the alerts defined in the rules file."""
    return re.findall(r"^\s*- alert:\s*(\S+)\s*$", RULES.read_text(), re.MULTILINE)


def unit_test_expectations() -> tuple[set[str], set[str]]:
    """Alerts the unit tests expect to fire, and alerts they expect to stay quiet.

    Reads the ``alert_rule_test`` entries line by line: an ``alertname:`` followed by
    ``exp_alerts: []`` (same line or later) is a quiet case, followed by a non-empty
    ``exp_alerts:`` list it is a firing case.
    """
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in UNIT_TESTS:
        current = ""
        for line in path.read_text().splitlines():
            name = re.search(r"alertname:\s*(\w+)", line)
            if name:
                current = name.group(1)
            expected = re.search(r"exp_alerts:\s*(\[\])?", line)
            if expected and current:
                (quiet if expected.group(1) else firing).add(current)
    return firing, quiet


def test_rules_file_is_valid() -> None:
    """``promtool check rules`` accepts the shipped rules file."""
    result = run_promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_example_config_is_valid_and_loads_the_rules() -> None:
    """``promtool check config`` accepts the example Prometheus config and finds the rules file."""
    result = run_promtool("check", "config", EXAMPLE_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


@pytest.mark.slow
def test_promtool_unit_tests_pass() -> None:
    """Every promtool unit test in tests/data/prometheus passes against the shipped rules."""
    assert UNIT_TESTS, "no tests/data/prometheus/*.test.yml found"
    result = run_promtool("test", "rules", *UNIT_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout


@pytest.mark.slow
def test_promtool_unit_tests_catch_a_broken_rule(tmp_path: Path) -> None:
    """The unit tests fail when the certificate threshold is changed, so they really check rules."""
    broken_dir = tmp_path / "contrib" / "prometheus"
    broken_dir.mkdir(parents=True)
    text = RULES.read_text()
    assert "/ 86400 < 21" in text
    (broken_dir / RULES.name).write_text(text.replace("/ 86400 < 21", "/ 86400 < 7"))
    tests_dir = tmp_path / "tests" / "data" / "prometheus"
    tests_dir.mkdir(parents=True)
    for path in UNIT_TESTS:
        shutil.copy(path, tests_dir / path.name)
    result = run_promtool("test", "rules", *sorted(tests_dir.glob("*.test.yml")))
    assert result.returncode != 0
    assert "M365PolicydCertificateExpiringSoon" in result.stdout + result.stderr


def test_every_alert_fires_in_a_unit_test_and_stays_quiet_in_another() -> None:
    """Each alert has at least one unit test where it fires and one where it does not."""
    names = alert_names()
    assert len(names) >= 10
    firing, quiet = unit_test_expectations()
    assert sorted(set(names) - firing) == []
    assert sorted(set(names) - quiet) == []
    assert sorted((firing | quiet) - set(names)) == [], "unit tests name unknown alerts"


def test_rules_use_only_metrics_the_daemon_exports() -> None:
    """Every metric name in the rules is one the daemon exports (SPEC §7 and §8)."""
    used = metric_names(RULES.read_text())
    assert "m365_policyd_certificate_not_after_timestamp_seconds" in used
    assert sorted(used - SPEC_METRICS) == []


def test_alerts_have_severity_for_and_a_fix() -> None:
    """Each alert carries a ``for:``, a severity label and a description that says how to fix it."""
    blocks = re.split(r"^\s*- alert:", RULES.read_text(), flags=re.MULTILINE)[1:]
    assert len(blocks) == len(alert_names())
    for block in blocks:
        name = block.split()[0]
        assert re.search(r"^\s*for:\s*\d+[smh]\s*$", block, re.MULTILINE), name
        assert re.search(r"severity:\s*(critical|warning)\b", block), name
        assert "summary:" in block, name
        assert "Fix:" in block, name


def test_licence_count_is_set_in_one_place() -> None:
    """The licence count is one recording rule per tenant (one shipped, for "default"), and the
    TERRL formula derives each tenant's limit from it."""
    text = RULES.read_text()
    assert re.findall(
        r"record:\s*m365_policyd:tenant_licenses\n\s*expr:\s*"
        r'label_replace\(vector\(\d+\), "tenant", "default", "", ""\)',
        text,
    )
    assert "500 * m365_policyd:tenant_licenses ^ 0.7 + 9500" in text
    assert len(re.findall(r"^\s*expr:.*vector\(", text, re.MULTILINE)) == 1, "one constant"
