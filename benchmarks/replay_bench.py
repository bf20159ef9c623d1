"""SPEC §9's replay row: ≥ 200,000 log lines/s and ≤ 200 MB RSS on a 1,000,000-line log.

``.venv/bin/python -m benchmarks.replay_bench [--lines N] [--json]`` generates a Postfix mail
log that mixes deliveries to Microsoft 365 (own-domain, foreign, forwarded and null senders,
refusals with Microsoft's texts, deferrals, long queue IDs of a second instance) with the
unrelated lines a real log is mostly made of (smtpd connects and rejects, TLS, cleanup,
local and LMTP deliveries, other MX hosts, anvil), then runs ``m365-policyd replay --json`` on
it in a child process and reports lines per second (wall time of the whole command, start-up
included) and the child's peak RSS. ``measure(lines)`` returns the same as a dict for
``benchmarks/run.py``.
"""

# E501: each generated log line is written whole, so that it reads like the log it imitates.
# ruff: noqa: E501

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: SPEC §9.
TARGET_RATE = 200_000.0  # lines/s
TARGET_RSS_MB = 200.0
DEFAULT_LINES = 1_000_000
#: Distinct external recipients of the Microsoft 365 deliveries (drawn uniformly).
RECIPIENTS = 2_000

CONFIG = """\
[tenant]
accepted_domains = ["contoso.com"]

[[tenant.inbound_connector]]
name = "IP connector"
connector_type = "OnPremises"
enabled = true
sender_ip_addresses = ["203.0.113.25/32"]

[onprem]
egress_addresses = ["203.0.113.25"]
"""

_RELAY = "contoso-com.mail.protection.outlook.com[52.101.68.10]:25"
_REPLIES = {
    "accepted": ("2.6.0", "sent", "250 2.6.0 <{id}@mx1.contoso.com> [InternalId=1] Queued mail"),
    "attr36": (
        "5.7.64",
        "bounced",
        "host contoso-com.mail.protection.outlook.com[52.101.68.10] said: 550 5.7.64 Relay "
        "Access Denied ATTR36 [AM0PEPF0000001.eurprd03.prod.outlook.com] (in reply to RCPT TO "
        "command)",
    ),
    "region": (
        "4.4.62",
        "deferred",
        "host contoso-com.mail.protection.outlook.com[52.101.68.10] said: 451 4.4.62 Mail sent "
        "to the wrong Office 365 region. ATTR35 (in reply to RCPT TO command)",
    ),
}


def _queue_id(rng: random.Random, long: bool) -> str:
    if long:
        return "".join(
            rng.choice("BCDFGHJKLMNPQRSTVWXYZbcdfghjklmnpqrstvwxyz0123456789") for _ in range(15)
        )
    return "".join(rng.choice("0123456789ABCDEF") for _ in range(11))


def generate(path: Path, lines: int, seed: int = 13) -> int:
    """Write a ``lines``-line log to ``path``; returns how many Microsoft 365 attempts it holds."""
    rng = random.Random(seed)
    attempts = 0
    written = 0
    second = 0
    with path.open("w") as out:
        while written < lines:
            second += 1
            clock = f"Nov {27 + second // 86400 % 3:2d} {second // 3600 % 24:02d}:{second // 60 % 60:02d}:{second % 60:02d}"
            head = f"{clock} mx1 "
            roll = rng.random()
            if roll < 0.35:  # one message to Microsoft 365: 6 lines
                long = rng.random() < 0.2
                instance = "postfix-out" if long else "postfix"
                qid = _queue_id(rng, long)
                kind = rng.choice(("own", "own", "own", "foreign", "forward", "null"))
                sender = {
                    "own": "app@contoso.com",
                    "foreign": "john@fabrikam.com",
                    "forward": "john@fabrikam.com",
                    "null": "",
                }[kind]
                to = f"user{rng.randrange(RECIPIENTS)}@tailspintoys.com"
                orig = ", orig_to=<kate@contoso.com>" if kind == "forward" else ""
                reply = "accepted" if kind == "own" else "attr36"
                if kind == "own" and rng.random() < 0.02:
                    reply = "region"
                dsn, status, text = _REPLIES[reply]
                out.write(
                    f"{head}{instance}/smtpd[{rng.randrange(1000, 9999)}]: {qid}: "
                    f"client=app1.contoso.com[10.0.0.21]\n"
                    f"{head}{instance}/cleanup[4701]: {qid}: message-id=<{qid}@app1.contoso.com>\n"
                    f"{head}{instance}/qmgr[4702]: {qid}: from=<{sender}>, size={rng.randrange(500, 90000)}, nrcpt=1 (queue active)\n"
                    f"{head}{instance}/smtp[4711]: Trusted TLS connection established to {_RELAY}: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)\n"
                    f"{head}{instance}/smtp[4711]: {qid}: to=<{to}>{orig}, relay={_RELAY}, delay=1.4, delays=0.05/0.01/0.62/0.72, dsn={dsn}, status={status} ({text.format(id=qid)})\n"
                    f"{head}{instance}/qmgr[4702]: {qid}: removed\n"
                )
                written += 6
                attempts += 1
            elif roll < 0.55:
                out.write(
                    f"{head}postfix/smtpd[4700]: connect from unknown[198.51.100.{rng.randrange(255)}]\n"
                    f"{head}postfix/smtpd[4700]: NOQUEUE: reject: RCPT from unknown[198.51.100.7]: 554 5.7.1 <x@tailspintoys.com>: Relay access denied; from=<spam@example.org> to=<x@tailspintoys.com> proto=ESMTP helo=<spam>\n"
                    f"{head}postfix/smtpd[4700]: disconnect from unknown[198.51.100.7] ehlo=1 mail=1 rcpt=0/1 quit=1 commands=3/4\n"
                )
                written += 3
            elif roll < 0.75:
                qid = _queue_id(rng, False)
                out.write(
                    f"{head}postfix/qmgr[4702]: {qid}: from=<root@mx1.contoso.com>, size=900, nrcpt=1 (queue active)\n"
                    f"{head}postfix/local[4716]: {qid}: to=<root@mx1.contoso.com>, orig_to=<root>, relay=local, delay=0.02, delays=0.01/0/0/0.01, dsn=2.0.0, status=sent (delivered to mailbox)\n"
                    f"{head}postfix/qmgr[4702]: {qid}: removed\n"
                )
                written += 3
            elif roll < 0.9:
                qid = _queue_id(rng, False)
                out.write(
                    f"{head}postfix/qmgr[4702]: {qid}: from=<app@contoso.com>, size=1200, nrcpt=1 (queue active)\n"
                    f"{head}postfix/smtp[4719]: {qid}: to=<eve@example.org>, relay=mx.example.org[192.0.2.25]:25, delay=0.4, delays=0/0/0.2/0.2, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 4X1Y2Z)\n"
                    f"{head}postfix/qmgr[4702]: {qid}: removed\n"
                )
                written += 3
            else:
                out.write(
                    f"{head}postfix/anvil[4730]: statistics: max connection rate 3/60s for (smtp:198.51.100.7) at {clock}\n"
                    f"{head}dovecot: imap-login: Login: user=<kate@contoso.com>, method=PLAIN, rip=10.0.0.5, lip=10.0.0.1, mpid=1234, TLS\n"
                )
                written += 2
    return attempts


def measure(lines: int = DEFAULT_LINES) -> dict[str, Any]:
    """Generate the log, replay it in a child process; the figures of the row."""
    with tempfile.TemporaryDirectory(prefix="m365-replay-bench-") as tmp:
        root = Path(tmp)
        log = root / "mail.log"
        config = root / "m365-policyd.toml"
        config.write_text(CONFIG)
        attempts = generate(log, lines)
        command = [
            sys.executable,
            "-m",
            "policyd.tools.cli",
            "replay",
            "-c",
            str(config),
            str(log),
            "--json",
            "--limit",
            "0",
        ]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        peak_kb = after.ru_maxrss
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        if done.returncode not in (0, 1):
            raise RuntimeError(f"replay failed ({done.returncode}): {done.stderr[-2000:]}")
        data = json.loads(done.stdout)
    rate = data["lines"] / seconds
    cpu_rate = data["lines"] / cpu
    rss_mb = peak_kb / 1024.0
    return {
        "lines": data["lines"],
        "attempts": attempts,
        "compared": data["compared"],
        "seconds": round(seconds, 3),
        "lines_per_second": round(rate),
        "cpu_seconds": round(cpu, 3),
        "lines_per_cpu_second": round(cpu_rate),
        "rss_mb": round(rss_mb, 1),
        "met": rate >= TARGET_RATE and rss_mb <= TARGET_RSS_MB,
        "command": " ".join(["m365-policyd", *command[3:5], "CONFIG", "LOG", *command[7:]]),
    }


def row(report: Any, workdir: Path, scale: Any) -> None:
    """The row for ``benchmarks/run.py`` (``RUNNERS["replay"] = replay_bench.row``): a
    1,000,000-line log, or 100,000 lines under ``--quick`` (``scale.long_requests``)."""
    from benchmarks.run import Row

    del workdir
    lines = DEFAULT_LINES if scale.long_requests >= DEFAULT_LINES else DEFAULT_LINES // 10
    figures = measure(lines)
    report.add(
        Row(
            what=f"replay, {figures['lines']:,}-line generated mail log",
            target=f"≥ {TARGET_RATE:,.0f} lines/s; RSS ≤ {TARGET_RSS_MB:.0f} MB",
            measured=(
                f"{figures['lines_per_second']:,} lines/s ({figures['seconds']:.2f} s wall, "
                f"start-up included; {figures['lines_per_cpu_second']:,} lines per CPU second); "
                f"peak RSS {figures['rss_mb']:.1f} MB"
            ),
            met=bool(figures["met"]),
            command="`.venv/bin/python -m benchmarks.replay_bench`",
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=DEFAULT_LINES)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    figures = measure(args.lines)
    if args.json:
        print(json.dumps(figures))
    else:
        print(
            f"replay: {figures['lines']:,} lines ({figures['compared']:,} Microsoft 365 "
            f"deliveries compared) in {figures['seconds']:.2f} s = "
            f"{figures['lines_per_second']:,} lines/s (target ≥ {TARGET_RATE:,.0f}; "
            f"{figures['lines_per_cpu_second']:,} lines per CPU second); "
            f"peak RSS {figures['rss_mb']:.1f} MB (target ≤ {TARGET_RSS_MB:.0f}); "
            f"{'met' if figures['met'] else 'NOT met'}"
        )
    return 0 if figures["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
