"""``m365-policyd replay`` on the e2e harness's own mail log, with the harness's configuration.

Each scenario sends the own-domain, foreign, forwarded and null-sender envelopes through the
real Postfix to the Microsoft 365 stand-in (which applies Microsoft's rule on its own), waits
until the queue is empty (bounces included), and replays the part of Postfix's log the
scenario wrote with the daemon's configuration for that scenario: every compared delivery
agrees. Then one assumption is flipped, or the connector removed, and exactly the expected
deliveries disagree.
"""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from policyd.tools.cli import main
from tests.e2e.test_postfix_e2e import SETUPS, envelopes, send, token
from tests.e2e.world import Setup, World

pytestmark = pytest.mark.postfix

#: The stand-in listens on 127.0.0.1: without [postfix] (whose tenant ``endpoints`` names it)
#: the configuration must say that it is Microsoft 365.
STANDIN_IS_MICROSOFT = '\n[outcomes]\nrelay_hosts = ["127.0.0.1"]\n'


def scenario_log(world: World, setup: Setup, tmp_path: Path) -> tuple[Path, list[str]]:
    """Apply ``setup``, send the four envelopes, and return the log lines they caused and
    the final recipients."""
    world.apply(setup)
    mark = len(world.postfix.log().encode())
    envs = envelopes(token())
    for env in envs:
        assert send(world, env).queued, env
    world.postfix.wait_queue_empty(timeout=40)
    time.sleep(1.0)  # postlogd writes asynchronously: let the last "removed" lines land
    log = tmp_path / "maillog"
    log.write_bytes(world.postfix.log_path.read_bytes()[mark:])
    return log, [env.final for env in envs]


def replay(tmp_path: Path, toml: str, log: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    config = tmp_path / "m365-policyd.toml"
    config.write_text(toml)
    out = io.StringIO()
    saved = sys.stdout
    sys.stdout = out
    try:
        code = main(["replay", "-c", str(config), str(log), "--json", "--limit", "50", *extra])
    finally:
        sys.stdout = saved
    return code, json.loads(out.getvalue())


@pytest.mark.parametrize(
    "name", ["ip-connector", "no-connector", "certificate", "certificate-expired", "srs"]
)
def test_the_harness_log_replayed_with_its_configuration_agrees_100_percent(
    fresh: World, tmp_path: Path, name: str
) -> None:
    """Every delivery the stand-in answered in this scenario is predicted with its kind."""
    setup, _ = SETUPS[name]
    log, finals = scenario_log(fresh, setup, tmp_path)
    code, data = replay(tmp_path, fresh.daemon_toml(setup) + STANDIN_IS_MICROSOFT, log)
    assert data["disagreements"] == [], data
    assert code == 0
    assert data["compared"] >= 4 and data["agreed"] == data["compared"]
    assert data["without_sender"] == 0 and data["skipped"] == 0
    assert data["agreement"] == 100.0
    compared = {d for row in data["table"].values() for d in row}
    assert compared <= {"accepted", "attr36", "no-connector"}
    del finals


def test_postfix_routing_configuration_needs_no_relay_hosts(fresh: World, tmp_path: Path) -> None:
    """With [postfix] the tenant's endpoints name the stand-in: the daemon's TOML as is agrees."""
    setup = Setup(postfix_routing=True)
    log, _ = scenario_log(fresh, setup, tmp_path)
    code, data = replay(tmp_path, fresh.daemon_toml(setup), log)
    assert (code, data["disagreements"]) == (0, [])
    assert data["compared"] >= 4 and data["table"]["attr36"]["attr36"] >= 3


def test_flipping_one_assumption_or_removing_the_connector_gives_exactly_the_expected(
    fresh: World, tmp_path: Path
) -> None:
    """With foreign_sender_via_certificate = false only the foreign and forwarded deliveries
    disagree; without the certificate connector every delivery does; the sweep shows both."""
    setup, _ = SETUPS["certificate"]
    log, _ = scenario_log(fresh, setup, tmp_path)
    toml = fresh.daemon_toml(setup) + STANDIN_IS_MICROSOFT
    code, today = replay(tmp_path, toml, log)
    assert (code, today["disagreements"]) == (0, [])
    assert today["compared"] == 4

    flipped = toml + "\n[assumptions]\nforeign_sender_via_certificate = false\n"
    code, data = replay(tmp_path, flipped, log)
    assert code == 1
    got = sorted(
        (d["sender"], d["orig_to"] or "", d["observed"], d["predicted"], d["reason"])
        for d in data["disagreements"]
    )
    assert got == [
        ("john@fabrikam.com", "", "accepted", "attr36", "sender-not-accepted"),
        ("john@fabrikam.com", "kate@contoso.com", "accepted", "attr36", "forwarded"),
    ]

    without = _without_certificate_connector(toml)
    code, data = replay(tmp_path, without, log)
    assert code == 1 and data["agreed"] == 0 and data["compared"] == 4
    assert {d["reason"] for d in data["disagreements"]} == {"no-connector"}

    code, data = replay(tmp_path, toml, log, "--sweep-assumptions")
    by_key = {json.dumps(e["assumptions"], sort_keys=True): e for e in data["sweep"]}
    one_flip = by_key[json.dumps({"foreign_sender_via_certificate": False})]
    assert (one_flip["removes"], one_flip["adds"]) == (0, 2)
    assert data["sweep"][0]["agreement"] == 100.0


def _without_certificate_connector(toml: str) -> str:
    """The TOML with the certificate connector's table left out."""
    start = toml.index('[[tenant.inbound_connector]]\nname = "Certificate connector"')
    end = toml.index("\n\n", start)
    return toml[:start] + toml[end + 2 :]
