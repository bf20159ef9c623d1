"""``m365-policyd replay`` (SPEC §8.1) on real Postfix log lines captured from the e2e harness.

``e2e-standin.log`` was written by the harness's Postfix relaying to the Microsoft 365 stand-in
(``tests/data/maillog/README.md``): its first phase ran with the tenant of ``HARNESS_TOML``
(contoso.com accepted, an IP connector for 127.0.0.10), its last message after the connector
was removed, and two recipients got scripted replies the relay rule cannot predict (4.4.62,
5.7.750). So with ``HARNESS_TOML`` exactly those attempts disagree, and every other agrees.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from policyd.sources.maillog import LogCounts, open_logs, parse_time, read_records
from policyd.tools.cli import main
from policyd.tools.replay.compare import Comparison, Variant

DATA = Path(__file__).parent / "data" / "maillog"
STANDIN_LOG = DATA / "e2e-standin.log"
KINDS_LOG = DATA / "kinds.log"

HARNESS_TOML = """\
[tenant]
accepted_domains = ["contoso.com"]

[[tenant.inbound_connector]]
name = "IP connector"
connector_type = "OnPremises"
enabled = true
sender_ip_addresses = ["127.0.0.10/32"]

[onprem]
egress_addresses = ["127.0.0.10"]

[outcomes]
relay_hosts = ["127.0.0.1"]
"""

#: The attempts of e2e-standin.log that disagree with HARNESS_TOML: (recipient, observed).
EXPECTED_DISAGREEMENTS = [
    ("region1@tailspintoys.com", "wrong-region"),  # scripted, deferred until it expired
    ("unreg1@tailspintoys.com", "unregistered-domain"),  # scripted
    ("region1@tailspintoys.com", "wrong-region"),
    ("region1@tailspintoys.com", "wrong-region"),
    ("region1@tailspintoys.com", "wrong-region"),
    ("nobody@tailspintoys.com", "no-connector"),  # after the stand-in's connector was removed
]


def config(tmp_path: Path, text: str = HARNESS_TOML) -> str:
    path = tmp_path / "m365-policyd.toml"
    path.write_text(text)
    return str(path)


def replay(
    capsys: pytest.CaptureFixture[str], *args: str, json_out: bool = True
) -> tuple[int, Any, str]:
    """Run the command line; (exit code, parsed JSON or text, stderr)."""
    code = main(["replay", *args, *(["--json"] if json_out else [])])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if json_out else captured.out, captured.err


def comparable(data: dict[str, Any]) -> dict[str, Any]:
    """The result without what depends on file names, sizes and line counts."""
    return {
        k: v
        for k, v in data.items()
        if k not in {"files", "bytes", "lines", "config", "skipped", "damaged"}
    } | {"disagreements": [{**d, "time": d["time"][:19]} for d in data["disagreements"]]}


def to_iso(line: str, style: str) -> str:
    """A classic syslog line rewritten with an RFC 3339 or journalctl short-iso time."""
    match = re.match(r"Nov (\d\d) (\d\d:\d\d:\d\d) ", line)
    if match is None:
        return line
    day, clock = match.groups()
    stamp = (
        f"2026-11-{day}T{clock}.000123+00:00"
        if style == "rfc3339"
        else f"2026-11-{day}T{clock}+0000"
    )
    return f"{stamp} {line[match.end() :]}"


# -- the comparison --------------------------------------------------------------------------


def test_harness_log_gives_exactly_the_expected_disagreements(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the harness's configuration only the scripted and post-change attempts disagree."""
    code, data, err = replay(capsys, "-c", config(tmp_path), str(STANDIN_LOG))
    assert code == 1 and err == ""
    got = [(d["recipient"], d["observed"]) for d in data["disagreements"]]
    assert got == EXPECTED_DISAGREEMENTS
    assert all(d["predicted"] == "accepted" for d in data["disagreements"])
    assert data["compared"] == 18 and data["agreed"] == 12
    assert data["without_sender"] == 0 and data["skipped"] == 0
    assert data["table"] == {
        "accepted": {
            "accepted": 8,
            "no-connector": 1,
            "wrong-region": 4,
            "unregistered-domain": 1,
        },
        "attr36": {"attr36": 4},
    }
    assert data["reasons"]["forwarded"] == {"compared": 1, "agreed": 1}
    assert data["reasons"]["null-sender"] == {"compared": 2, "agreed": 2}
    forwarded = [d for d in data["disagreements"] if d["orig_to"]]
    assert forwarded == []
    first = data["disagreements"][0]
    assert first["queue_id"] == "D6D1F20C712" and first["sender"] == "app@contoso.com"
    assert first["reply"].startswith("451 4.4.62 Mail sent to the wrong Office 365 region")
    assert first["reason"] == "sender-accepted-domain" and first["explanation"]


def test_removing_the_connector_turns_exactly_the_relayed_attempts_into_no_connector(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without the IP connector every relayed attempt is predicted no-connector: only the one
    the stand-in refused with TenantAttribution and the bounces into the tenant agree."""
    text = HARNESS_TOML.replace(
        'sender_ip_addresses = ["127.0.0.10/32"]', "sender_ip_addresses = []"
    )
    code, data, _ = replay(capsys, "-c", config(tmp_path, text), str(STANDIN_LOG), "--limit", "99")
    assert code == 1
    assert data["table"] == {
        "accepted": {"accepted": 3},
        "no-connector": {
            "accepted": 5,
            "no-connector": 1,
            "attr36": 4,
            "wrong-region": 4,
            "unregistered-domain": 1,
        },
    }
    assert data["reasons"]["recipient-in-tenant"] == {"compared": 3, "agreed": 3}
    assert data["agreed"] == 4 and data["compared"] == 18
    assert len(data["disagreements"]) == 14
    assert {d["reason"] for d in data["disagreements"]} == {"no-connector"}
    assert "nobody@tailspintoys.com" not in {d["recipient"] for d in data["disagreements"]}


def test_flipping_one_assumption_gives_exactly_its_disagreements(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--sweep-assumptions ranks today's setting first and names what each other one changes."""
    code, data, _ = replay(capsys, "-c", config(tmp_path), str(STANDIN_LOG), "--sweep-assumptions")
    assert code == 1
    sweep = data["sweep"]
    assert len(sweep) == 2**7  # every combination of the seven keys of SPEC §5.3
    assert sweep[0]["label"] == "today's configuration" or sweep[0]["agreement"] == 66.67
    assert max(entry["agreement"] for entry in sweep) == data["agreement"] == 66.67
    # No certificate here: no assumption decides anything, so none changes a prediction.
    assert all(entry["removes"] == 0 and entry["adds"] == 0 for entry in sweep)


def test_every_observed_kind_is_classified_and_own_failures_are_not_compared(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """kinds.log holds every observed kind of SPEC §8; Postfix's own failures count apart."""
    code, data, _ = replay(capsys, "-c", config(tmp_path), str(KINDS_LOG), "--limit", "0")
    assert code == 1
    assert set(data["observed"]) == {
        "accepted",
        "no-connector",
        "attr36",
        "direct-send",
        "partner-restricted",
        "wrong-region",
        "unregistered-domain",
        "tls",
        "other",
    }
    assert data["disagreements"] == [] and data["disagreements_total"] > 0
    # own@drop.example and own@notls.example reached 127.0.0.1 without a reply of Microsoft's
    assert data["own_failures"] >= 2


def test_text_output_says_today_configuration_and_lists_disagreements(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The text report has the agreement, the table, the reasons and each disagreement."""
    code, text, _ = replay(capsys, "-c", config(tmp_path), str(STANDIN_LOG), json_out=False)
    assert code == 1
    assert "today's configuration" in text
    assert "12 agree (66.67 %)" in text
    assert "predicted \\ observed" in text and "wrong-region" in text
    assert "D6D1F20C712 from <app@contoso.com> to <region1@tailspintoys.com>" in text
    assert "Microsoft 365 said: 550 5.7.64 TenantAttribution" in text


def test_limit_bounds_the_listed_disagreements(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--limit N lists the first N disagreements and still counts them all."""
    _, data, _ = replay(capsys, "-c", config(tmp_path), str(STANDIN_LOG), "--limit", "2")
    assert len(data["disagreements"]) == 2 and data["disagreements_total"] == 6


def test_since_and_until_choose_the_attempts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only attempts in [since, until) are compared; envelopes before since still count."""
    log = tmp_path / "mail.log"
    log.write_text("".join(to_iso(line, "rfc3339") for line in STANDIN_LOG.open()))
    _, data, _ = replay(
        capsys,
        "-c",
        config(tmp_path),
        str(log),
        "--since",
        "2026-11-27T07:06:09+00:00",
        "--until",
        "2026-11-27T07:06:10+00:00",
    )
    assert data["compared"] == 1 and data["without_sender"] == 0
    assert data["disagreements"][0]["recipient"] == "nobody@tailspintoys.com"


def test_all_agree_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Exit 0 when every compared attempt agrees (here: before the scripted replies)."""
    code, data, _ = replay(
        capsys, "-c", config(tmp_path), str(STANDIN_LOG), "--until", "2026-11-27T07:06:05+00:00"
    )
    assert code == 0 and data["compared"] == 0
    code, data, _ = replay(
        capsys, "-c", config(tmp_path), str(STANDIN_LOG), "--since", "2026-11-27T07:06:10+00:00"
    )
    assert code == 0 and data["compared"] == data["agreed"] == 1


# -- reading ---------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["rfc3339", "short-iso"])
def test_both_timestamp_styles_give_the_same_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], style: str
) -> None:
    """RFC 3339 and journalctl short-iso times read like classic syslog times."""
    iso = tmp_path / f"{style}.log"
    iso.write_text("".join(to_iso(line, style) for line in STANDIN_LOG.open()))
    _, classic, _ = replay(capsys, "-c", config(tmp_path), str(STANDIN_LOG))
    _, other, _ = replay(capsys, "-c", config(tmp_path), str(iso))
    assert comparable(other)["table"] == comparable(classic)["table"]
    assert [d["queue_id"] for d in other["disagreements"]] == [
        d["queue_id"] for d in classic["disagreements"]
    ]
    assert other["disagreements"][0]["time"].startswith("2026-11-27T07:06:05")


def test_a_rotated_gz_set_given_out_of_order_reads_in_time_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """mail.log, mail.log.1 and mail.log.2.gz given newest-first give the whole log's result."""
    lines = STANDIN_LOG.read_text().splitlines(keepends=True)
    # cut between a qmgr from= line and its delivery, so the order matters
    cut1 = next(i for i, line in enumerate(lines) if "D0A2720C6C2: to=<" in line)
    cut2 = next(i for i, line in enumerate(lines) if "D6D1F20C712: to=<" in line) + 1
    with gzip.open(tmp_path / "mail.log.2.gz", "wt") as oldest:
        oldest.write("".join(lines[:cut1]))
    (tmp_path / "mail.log.1").write_text("".join(lines[cut1:cut2]))
    (tmp_path / "mail.log").write_text("".join(lines[cut2:]))
    names = [str(tmp_path / n) for n in ("mail.log", "mail.log.2.gz", "mail.log.1")]
    _, whole, _ = replay(capsys, "-c", config(tmp_path), str(STANDIN_LOG))
    _, rotated, _ = replay(capsys, "-c", config(tmp_path), *names)
    assert comparable(rotated) == comparable(whole)
    assert rotated["files"] == [names[1], names[2], names[0]]
    assert rotated["lines"] == whole["lines"]


def test_journal_output_on_stdin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``-`` reads ``journalctl -o short-iso`` output, journal headers included, from stdin."""
    text = "-- Logs begin at Fri 2026-11-27 07:00:00 UTC. --\n" + "".join(
        to_iso(line, "short-iso") for line in STANDIN_LOG.open()
    )
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))
    _, journal, _ = replay(capsys, "-c", config(tmp_path), "-")
    _, classic, _ = replay(capsys, "-c", config(tmp_path), str(STANDIN_LOG))
    assert journal["skipped"] == 0 and journal["files"] == ["-"]
    assert comparable(journal)["table"] == comparable(classic)["table"]


def test_instances_and_long_queue_ids_are_kept_apart(tmp_path: Path) -> None:
    """postfix-out's queue is its own: the same queue ID in two instances is two messages."""
    log = tmp_path / "mail.log"
    relay = "relay=contoso-com.mail.protection.outlook.com[52.101.68.10]:25, delay=1"
    log.write_text(
        "2026-11-27T10:00:00+00:00 mx postfix/qmgr[1]: 4dBvXq1Ssqz9tB7: from=<app@contoso.com>, "
        "size=1, nrcpt=1 (queue active)\n"
        "2026-11-27T10:00:00+00:00 mx postfix-out/qmgr[2]: 4dBvXq1Ssqz9tB7: from=<x@fabrikam.com>, "
        "size=1, nrcpt=1 (queue active)\n"
        f"2026-11-27T10:00:01+00:00 mx postfix-out/smtp[3]: 4dBvXq1Ssqz9tB7: to=<a@example.net>, "
        f"{relay}, dsn=2.6.0, status=sent (250 2.6.0 Queued mail for delivery)\n"
        f"2026-11-27T10:00:01+00:00 mx postfix/smtp[4]: 4dBvXq1Ssqz9tB7: to=<b@example.net>, "
        f"{relay}, dsn=2.6.0, status=sent (250 2.6.0 Queued mail for delivery)\n"
    )
    state = _state(tmp_path)
    comparison = Comparison([Variant("today", state)], ["*.mail.protection.outlook.com"])
    counts = LogCounts()
    comparison.feed(read_records(open_logs([str(log)], _utc()), counts))
    tally = comparison.today.tally
    assert tally.compared == 2
    assert tally.reasons == {"sender-accepted-domain": [1, 1], "sender-not-accepted": [1, 0]}


def test_removed_forgets_the_message_and_memory_is_capped(tmp_path: Path) -> None:
    """Queue IDs are forgotten at ``removed``; without removed lines at most max_messages stay."""
    state = _state(tmp_path)
    comparison = Comparison([Variant("today", state)], ["127.0.0.1"])
    counts = LogCounts()
    comparison.feed(read_records(open_logs([str(STANDIN_LOG)], _utc()), counts))
    assert comparison.messages == {}
    capped = Comparison([Variant("today", state)], ["127.0.0.1"], max_messages=3)
    lines = [line for line in STANDIN_LOG.open() if ": removed" not in line]
    log = tmp_path / "no-removed.log"
    log.write_text("".join(lines))
    capped.feed(read_records(open_logs([str(log)], _utc()), LogCounts()))
    assert len(capped.messages) == 3


def test_the_attempts_remembered_per_message_go_with_the_message(tmp_path: Path) -> None:
    """What an attempt is told apart by (to count a duplicate once) is kept only for messages
    still remembered: forgotten at ``removed`` and when the oldest message makes room."""
    state = _state(tmp_path)
    comparison = Comparison([Variant("today", state)], ["127.0.0.1"])
    comparison.feed(read_records(open_logs([str(STANDIN_LOG)], _utc()), LogCounts()))
    assert comparison.today.tally.compared > 0 and comparison.seen == {}
    log = tmp_path / "no-removed.log"
    log.write_text("".join(line for line in STANDIN_LOG.open() if ": removed" not in line))
    capped = Comparison([Variant("today", state)], ["127.0.0.1"], max_messages=3)
    capped.feed(read_records(open_logs([str(log)], _utc()), LogCounts()))
    assert capped.seen and set(capped.seen) <= set(capped.messages)
    uncapped = Comparison([Variant("today", state)], ["127.0.0.1"])
    uncapped.feed(read_records(open_logs([str(log)], _utc()), LogCounts()))
    assert set(uncapped.seen) <= set(uncapped.messages)
    assert sum(map(len, uncapped.seen.values())) == uncapped.today.tally.compared


def test_a_log_that_starts_mid_queue_counts_deliveries_without_sender_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Deliveries whose from= line is not in the log are counted apart, never guessed."""
    lines = [line for line in STANDIN_LOG.open() if "D1FCD20C379: from=" not in line]
    log = tmp_path / "mid.log"
    log.write_text("".join(lines))
    _, data, _ = replay(capsys, "-c", config(tmp_path), str(log))
    assert data["without_sender"] == 1 and data["compared"] == 17


def test_the_same_file_given_twice_compares_each_attempt_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Overlapping logs: an attempt logged twice for one message is compared once."""
    lines = STANDIN_LOG.read_text().splitlines(keepends=True)
    doubled = [line for line in lines if "D8EE920C732: removed" not in line]
    extra = [line for line in lines if "D8EE920C732: to=" in line]
    log = tmp_path / "doubled.log"
    index = doubled.index(extra[-1]) + 1
    log.write_text("".join(doubled[:index] + extra + doubled[index:]))
    _, data, _ = replay(capsys, "-c", config(tmp_path), str(log))
    assert data["duplicates"] == 2 and data["compared"] == 18


# -- damage ----------------------------------------------------------------------------------


def test_garbled_lines_and_binary_junk_are_counted_not_fatal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Damaged delivery lines and binary junk are counted as skipped; the rest still compares."""
    log = tmp_path / "junk.log"
    log.write_bytes(
        STANDIN_LOG.read_bytes()
        + (DATA / "garbled.log").read_bytes()
        + b"\x00\xff\xfe\x1f\x8b binary \x00\x00\n\xde\xad\xbe\xef\n"
    )
    both = HARNESS_TOML.replace('["127.0.0.1"]', '["127.0.0.1", "*.mail.protection.outlook.com"]')
    code, data, err = replay(capsys, "-c", config(tmp_path, both), str(log))
    assert code == 1 and "Traceback" not in err
    # garbled.log: seven damaged delivery lines and one line without a time; two junk lines
    assert data["skipped"] == 7 + 1 + 2
    assert data["compared"] == 18


def test_a_truncated_gz_is_read_up_to_the_damage_and_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A .gz cut short gives the lines before the cut, a note on stderr, and no traceback."""
    whole = gzip.compress(STANDIN_LOG.read_bytes())
    cut = tmp_path / "mail.log.1.gz"
    cut.write_bytes(whole[: len(whole) * 2 // 3])
    code, data, err = replay(capsys, "-c", config(tmp_path), str(cut))
    assert code in (0, 1)
    assert len(data["damaged"]) == 1 and str(cut) in data["damaged"][0]
    assert "damaged log" in err and "Traceback" not in err
    assert 0 < data["lines"] < 111


def test_a_gz_name_without_gzip_data_is_named_damaged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file named .gz holding something else is reported, not a crash."""
    fake = tmp_path / "mail.log.2.gz"
    fake.write_bytes(b"not gzip at all\n")
    code, data, err = replay(capsys, "-c", config(tmp_path), str(fake))
    assert code == 0 and data["lines"] == 0
    assert "not gzip data" in data["damaged"][0] and "not gzip data" in err


def test_a_missing_log_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A log that does not exist exits 2 with one line naming it, before anything is read."""
    missing = tmp_path / "nope.log"
    code = main(["replay", "-c", config(tmp_path), str(STANDIN_LOG), str(missing)])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert (
        captured.err == f"m365-policyd replay: cannot read {missing}: No such file or directory\n"
    )


def test_a_bad_configuration_exits_78(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An invalid configuration exits 78 with the configuration error line."""
    code = main(["replay", "-c", config(tmp_path, "[tenant]\nbogus = 1\n"), str(STANDIN_LOG)])
    captured = capsys.readouterr()
    assert code == 78 and "configuration error" in captured.err and "bogus" in captured.err


@pytest.mark.parametrize("args", [["--since", "yesterday"], ["--limit", "-1"], []])
def test_usage_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    """A bad time, a negative limit or no log at all is a usage error."""
    logs = [str(STANDIN_LOG)] if args else []
    assert main(["replay", "-c", config(tmp_path), *logs, *args]) == 2
    assert "usage:" in capsys.readouterr().err


def test_progress_is_silent_when_stderr_is_not_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing reaches stderr when it is not a terminal (progress is for people)."""
    _, _, err = replay(capsys, "-c", config(tmp_path), str(STANDIN_LOG))
    assert err == ""


def test_progress_on_a_terminal_shows_lines_bytes_and_rate(tmp_path: Path) -> None:
    """On a terminal stderr shows lines, bytes and the rate, and stdout stays clean."""
    from policyd.tools import replay as replay_cli

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out, err = io.StringIO(), Tty()
    parser_args = _args(["--json", str(STANDIN_LOG)])
    assert replay_cli.command(parser_args, config(tmp_path), stdout=out, stderr=err) == 1
    assert re.search(r"replay: 111 lines, [\d.]+ MB, [\d,]+ lines/s", err.getvalue())
    assert json.loads(out.getvalue())["lines"] == 111


def test_syslog_times_get_the_year_that_puts_them_before_the_reference() -> None:
    """A classic syslog time after the file's mtime belongs to the year before."""
    reference = parse_time("2026-01-02T00:00:00+00:00 ", _utc())
    assert reference is not None
    december = parse_time("Dec 31 23:59:59 mx postfix/smtp[1]: x", reference)
    january = parse_time("Jan  1 00:00:01 mx postfix/smtp[1]: x", reference)
    assert december is not None and december.year == 2025
    assert january is not None and january.year == 2026
    assert parse_time("\x00\x01 junk", reference) is None


# -- helpers ---------------------------------------------------------------------------------


def _utc() -> Any:
    from datetime import UTC, datetime

    return datetime(2026, 11, 30, tzinfo=UTC)


def _state(tmp_path: Path) -> Any:
    from policyd.sources.state import load_state

    return load_state(config(tmp_path), generation=0)


def _args(argv: list[str]) -> Any:
    from policyd.tools.cli import _parser

    return _parser().parse_args(["replay", *argv])


def test_a_certificate_expiring_mid_log_changes_the_prediction_at_that_moment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each attempt is predicted at its own time: the cached prediction ends at the
    certificate's expiry, so the attempt after it is predicted no-connector."""
    from datetime import UTC, datetime, timedelta

    from tests.pki import TestPKI

    pki = TestPKI()
    expiry = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
    leaf = pki.leaf(
        "mail.contoso.com",
        ["mail.contoso.com"],
        not_before=expiry - timedelta(days=90),
        not_after=expiry,
    )
    cert, _ = pki.write(tmp_path, leaf, "client")
    ca = pki.write_ca_bundle(tmp_path)
    text = (
        '[tenant]\naccepted_domains = ["contoso.com"]\n\n[[tenant.inbound_connector]]\n'
        'name = "Certificate connector"\nconnector_type = "OnPremises"\nenabled = true\n'
        'tls_sender_certificate_name = "*.contoso.com"\n\n'
        f'[onprem]\ncertificate = "{cert}"\nca_bundle = "{ca}"\n'
    )
    relay = "relay=contoso-com.mail.protection.outlook.com[52.101.68.10]:25, delay=1"
    lines = []
    for n, clock in enumerate(("11:59:58", "11:59:59", "12:00:01")):
        qid = f"ABC{n}"
        lines += [
            f"2026-11-27T{clock}+00:00 mx postfix/qmgr[1]: {qid}: from=<app@contoso.com>, "
            "size=1, nrcpt=1 (queue active)\n",
            f"2026-11-27T{clock}+00:00 mx postfix/smtp[2]: {qid}: to=<x@example.net>, {relay}, "
            "dsn=2.6.0, status=sent (250 2.6.0 Queued mail for delivery)\n",
        ]
    log = tmp_path / "mail.log"
    log.write_text("".join(lines))
    code, data, _ = replay(capsys, "-c", config(tmp_path, text), str(log))
    assert code == 1
    assert data["reasons"] == {
        "certificate-connector": {"compared": 2, "agreed": 2},
        "no-connector": {"compared": 1, "agreed": 0},
    }
    assert [d["queue_id"] for d in data["disagreements"]] == ["ABC2"]


def _compared(comparison: Comparison, counts: LogCounts) -> dict[str, Any]:
    from policyd.tools.replay import report

    return report.result(comparison, counts, "config")


@pytest.mark.parametrize("max_messages", [3, 200_000])
def test_the_reader_keeps_the_messages_as_the_records_would(
    tmp_path: Path, max_messages: int
) -> None:
    """The command lets the reader apply qmgr's from= and removed lines to the comparison's
    messages itself and hand it each attempt; fed the records instead (all of them, or only
    the attempts), the comparison gives the same result in every field, on the harness log
    (with and without its removed lines), the kinds log and a generated log like the
    benchmark's."""
    from benchmarks.replay_bench import CONFIG, generate

    no_removed = tmp_path / "no-removed.log"
    no_removed.write_text("".join(line for line in STANDIN_LOG.open() if ": removed" not in line))
    generated = tmp_path / "generated.log"
    generate(generated, 3_000)
    cases = [
        (STANDIN_LOG, HARNESS_TOML, ["127.0.0.1"]),
        (no_removed, HARNESS_TOML, ["127.0.0.1"]),
        (KINDS_LOG, HARNESS_TOML, ["127.0.0.1"]),
        (generated, CONFIG, ["*.mail.protection.outlook.com"]),
    ]
    from policyd.sources.maillog import relay_prefilter
    from policyd.sources.state import load_state

    for log, text, hosts in cases:
        state = load_state(config(tmp_path, text), generation=0)
        results = []
        for messages, handed in ((False, False), (True, False), (True, True)):
            comparison = Comparison(
                [Variant("today", state)], hosts, limit=50, max_messages=max_messages
            )
            counts = LogCounts()
            comparison.feed(
                read_records(
                    open_logs([str(log)], _utc()),
                    counts,
                    relays=relay_prefilter(hosts),
                    messages=comparison.queue if messages else None,
                    attempts=comparison.attempt if handed else None,
                )
            )
            results.append((_compared(comparison, counts), dict(comparison.messages)))
            assert set(comparison.seen) <= set(comparison.messages)
        assert results[0] == results[1] == results[2], log
        assert results[0][0]["compared"] > 0


def test_a_message_with_many_attempts_counts_each_once(tmp_path: Path) -> None:
    """The attempts of one message are told apart in a list and, past a few, in a set: a
    message to 40 recipients and one to 3, each attempt logged twice, are compared 43 times,
    with 43 duplicates."""
    relay = "relay=127.0.0.1[127.0.0.1]:2525, delay=1"
    lines = []
    for queue_id, recipients in (("AB12", 40), ("CD34", 3)):
        lines.append(
            f"Nov 27 10:00:00 mx postfix/qmgr[1]: {queue_id}: from=<app@contoso.com>, size=1, "
            f"nrcpt={recipients} (queue active)\n"
        )
        attempts = [
            f"Nov 27 10:00:{n:02d} mx postfix/smtp[2]: {queue_id}: to=<u{n}@example.net>, "
            f"{relay}, dsn=2.0.0, status=sent (250 2.0.0 Ok)\n"
            for n in range(recipients)
        ]
        lines += attempts + attempts
    log = tmp_path / "mail.log"
    log.write_text("".join(lines))
    comparison = Comparison([Variant("today", _state(tmp_path))], ["127.0.0.1"])
    comparison.feed(
        read_records(open_logs([str(log)], _utc()), LogCounts(), messages=comparison.queue)
    )
    assert comparison.today.tally.compared == 43 and comparison.duplicates == 43
    assert len(comparison.seen[("postfix", "AB12")]) == 40
    assert len(comparison.seen[("postfix", "CD34")]) == 3


def test_replay_without_a_certificate_does_not_load_cryptography(tmp_path: Path) -> None:
    """The certificate reader (and the large cryptography package) is imported only when a
    configuration names a certificate: replay with one that does not starts without it."""
    import subprocess

    log = tmp_path / "mail.log"
    log.write_text(STANDIN_LOG.read_text())
    code = (
        "import sys\n"
        "from policyd.tools.cli import main\n"
        f"main(['replay', '-c', {config(tmp_path)!r}, {str(log)!r}, '--json'])\n"
        "sys.stderr.write(str(sorted(m for m in sys.modules if m.startswith('crypto'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120
    )
    assert json.loads(done.stdout)["compared"] == 18
    assert done.stderr.strip() == "[]"


def test_an_attempt_a_failing_table_leaves_unpredicted_is_observed_but_not_compared(
    tmp_path: Path,
) -> None:
    """When a table fails while predicting an attempt, it is counted as not predicted: its
    observed kind still counts, it is not in the tally, and the others are compared."""
    from policyd.errors import RouteLookupError
    from policyd.tools.replay import report

    state = _state(tmp_path)
    predict = state.predictor.predict

    def failing(sender: str, recipient: str, final: Any, now: Any) -> Any:
        if recipient.startswith("region1@"):
            raise RouteLookupError("transport_maps failed")
        return predict(sender, recipient, final, now)

    state.predictor.predict = failing
    comparison = Comparison([Variant("today", state)], ["127.0.0.1"])
    counts = LogCounts()
    comparison.feed(
        read_records(open_logs([str(STANDIN_LOG)], _utc()), counts, messages=comparison.queue)
    )
    data = report.result(comparison, counts, "config")
    assert data["unpredictable"] == 4 and data["compared"] == 14
    assert data["observed"]["wrong-region"] == 4
    assert sum(data["observed"].values()) == data["compared"] + data["unpredictable"]
    assert sum(sum(row.values()) for row in data["table"].values()) == 14
