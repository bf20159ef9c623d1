"""The Postfix end-to-end row of ``make bench`` (SPEC §9): smtp-source → Postfix → smtp-sink.

One private Postfix (``tests/e2e/postfix.py``) relays to smtp-sink. Its policy checks are wired
in each way an administrator can choose, and each wiring is answered once by m365-policyd (the
default configuration) and once by the bare responder, the protocol's own floor:

* transport: TCP on loopback (``inet:127.0.0.1:PORT``, the contrib snippet) or a unix socket in
  Postfix's ``private/`` directory (``unix:private/NAME``);
* checks: RCPT and DATA (the contrib snippet: DATA adds the ``X-M365-Relay`` header), or RCPT
  only (all a daemon with ``tag = false`` needs).

Plus Postfix without any policy check. All variants alternate in rounds, ``postconf -e`` +
``postfix reload`` between them; the rate is messages per second until Postfix logged every
``status=sent``. Target: the daemon reaches 0.97 times the bare responder in the same wiring;
the ratio to no check is reported beside it, and the wiring that costs least is named.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import (
    ROOT,
    RUN,
    Report,
    Row,
    Scale,
    paired_ratio,
    servers,
    start_bare,
    start_daemon,
)
from policyd.tools import bench

#: The daemon must reach this fraction of the bare responder's messages/s in the same wiring.
TARGET = 0.97

SENT = re.compile(r" status=sent ")

#: Messages sent before measuring; their rate sizes the runs.
WARM_UP = 200
#: A run lasts about this long at the warm-up's rate (so a slow machine does not take an hour)...
RUN_SECONDS = 6.0
#: ... but has at least this many messages.
MIN_MESSAGES = 500


@dataclass(frozen=True)
class Wiring:
    """One way to wire the policy checks into Postfix."""

    transport: str  # "tcp" or "unix"
    data_check: bool

    @property
    def label(self) -> str:
        where = "TCP loopback" if self.transport == "tcp" else "unix socket in private/"
        return f"{where}, {'RCPT and DATA checks' if self.data_check else 'RCPT check only'}"


WIRINGS = (
    Wiring("tcp", data_check=True),  # contrib/postfix/main.cf.snippet
    Wiring("tcp", data_check=False),
    Wiring("unix", data_check=True),
    Wiring("unix", data_check=False),
)


def unavailable() -> str | None:
    """Why the Postfix row cannot run here, or None."""
    try:
        from tests.e2e.postfix import postfix_unavailable
    except ImportError as error:
        return f"tests/e2e/postfix.py is not importable ({error})"
    for tool in ("/usr/sbin/smtp-source", "/usr/sbin/smtp-sink"):
        if not os.access(tool, os.X_OK):
            return f"{tool} is missing (Debian's postfix package)"
    return postfix_unavailable()


def postconf_for(wiring: Wiring | None, services: dict[str, str], base: dict[str, str]) -> dict:
    """main.cf settings for ``wiring`` (None: no policy check) with ``services[transport]``."""
    relay = base.get(
        "smtpd_relay_restrictions",
        "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination",
    )
    if wiring is None:
        return {
            "smtpd_relay_restrictions": relay,
            "smtpd_recipient_restrictions": "",
            "smtpd_data_restrictions": "",
        }
    settings = dict(base, m365_policyd_service=services[wiring.transport])
    if not wiring.data_check:
        settings["smtpd_data_restrictions"] = ""
    return settings


def send(postfix: Any, messages: int) -> tuple[float, float]:
    """Send ``messages`` with smtp-source; (accepted msg/s, delivered msg/s)."""
    already = len(SENT.findall(postfix.log()))
    start = time.monotonic()
    subprocess.run(
        [
            "/usr/sbin/smtp-source",
            "-s",
            "20",
            "-m",
            str(messages),
            "-l",
            "2048",
            "-f",
            f"app@{bench.OWN_DOMAIN}",
            "-t",
            "rcpt@fabrikam.com",
            f"127.0.0.1:{postfix.port}",
        ],
        check=True,
        timeout=600,
        stdout=subprocess.DEVNULL,
    )
    injected = time.monotonic() - start
    deadline = time.monotonic() + 300
    while len(SENT.findall(postfix.log())) - already < messages:
        if time.monotonic() > deadline:
            raise RuntimeError("Postfix did not deliver every benchmark message within 300 s")
        time.sleep(0.05)
    delivered = time.monotonic() - start
    return messages / injected, messages / delivered


def row_postfix(report: Report, workdir: Path, scale: Scale) -> None:
    """Measure every wiring with m365-policyd and with the bare responder, and no check."""
    section = "postfix"
    command = f"`{RUN} postfix`"
    reason = unavailable()
    if reason:
        report.note(section, f"skipped: {reason}")
        report.add(Row("Postfix end to end", f"≥ {TARGET} × the bare responder",
                       f"not measured: {reason}", None, command))  # fmt: skip
        return
    from tests.e2e.postfix import PostfixInstance, free_port, parse_main_cf

    snippet = parse_main_cf((ROOT / "contrib/postfix/main.cf.snippet").read_text())
    sink_port = free_port()
    sink = subprocess.Popen(
        ["/usr/sbin/smtp-sink", "-u", "nobody", f"127.0.0.1:{sink_port}", "256"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    labels = {"none": "no policy check"}
    variants: dict[str, dict[str, str]] = {"none": postconf_for(None, {}, snippet)}
    rates: dict[str, list[float]] = {}
    try:
        with PostfixInstance.create(
            relayhost=f"[127.0.0.1]:{sink_port}",
            settings={
                "smtp_tls_security_level": "none",
                "smtpd_tls_security_level": "none",
                "default_destination_concurrency_limit": "20",
            },
        ) as instance:
            private = instance.queue_dir / "private"
            with servers(
                lambda: start_daemon(
                    workdir, "postfix", listen=[f"unix:{private}/m365-policyd:mode=666"]
                ),
                lambda: start_bare(workdir, listen=[f"unix:{private}/bare:mode=666"]),
            ) as (daemon, bare):
                for wiring in WIRINGS:
                    for name, server, socket_name in (
                        ("daemon", daemon, "m365-policyd"),
                        ("bare", bare, "bare"),
                    ):
                        key = f"{name} {wiring.transport} {int(wiring.data_check)}"
                        services = {
                            "tcp": f"inet:127.0.0.1:{server.port}",
                            "unix": f"unix:private/{socket_name}",
                        }
                        variants[key] = postconf_for(wiring, services, snippet)
                        who = "m365-policyd" if name == "daemon" else "the bare responder"
                        labels[key] = f"{wiring.label}, answered by {who}"
                rates = {key: [] for key in variants}
                instance.postconf(variants["none"], reload=True)
                _, warm = send(instance, WARM_UP)
                messages = min(scale.postfix_messages, max(MIN_MESSAGES, int(warm * RUN_SECONDS)))
                report.note(
                    section,
                    f"warm-up: {WARM_UP} messages without a check at {warm:,.0f} msg/s; runs of "
                    f"{messages:,} messages (about {RUN_SECONDS:g} s at that rate, at most "
                    f"{scale.postfix_messages:,})",
                )
                for round_number in range(scale.postfix_rounds):
                    for key, settings in variants.items():
                        instance.postconf(settings, reload=True)
                        injected, delivered = send(instance, messages)
                        rates[key].append(delivered)
                        report.note(
                            section,
                            f"round {round_number + 1}, {labels[key]}: {messages} messages, "
                            f"accepted at {injected:,.0f} msg/s, delivered at {delivered:,.0f} "
                            "msg/s",
                        )
                policy_log = daemon.tail(400)
    finally:
        sink.terminate()
        sink.wait(timeout=10)
    if "level=error" in policy_log:
        report.note(section, f"daemon log tail: {policy_log.strip()[-300:]}")
    add_rows(report, rates, scale, command)


def add_rows(report: Report, rates: dict[str, list[float]], scale: Scale, command: str) -> None:
    """One row per wiring (daemon vs bare, and vs no check), then the cheapest and DATA's cost."""
    median = {key: statistics.median(values) for key, values in rates.items()}
    versus_none: dict[Wiring, float] = {}
    for wiring in WIRINGS:
        daemon_key = f"daemon {wiring.transport} {int(wiring.data_check)}"
        bare_key = f"bare {wiring.transport} {int(wiring.data_check)}"
        floor = paired_ratio(rates[daemon_key], rates[bare_key])
        versus_none[wiring] = paired_ratio(rates[daemon_key], rates["none"])
        bare_versus_none = paired_ratio(rates[bare_key], rates["none"])
        report.add(
            Row(
                f"Postfix end to end, {wiring.label}: m365-policyd vs the bare responder"
                + (" (the contrib snippet's wiring)" if wiring == WIRINGS[0] else ""),
                f"≥ {TARGET} ×",
                f"{floor:.2f} × ({median[daemon_key]:,.0f} vs {median[bare_key]:,.0f} msg/s); "
                f"vs no check {versus_none[wiring]:.2f} × (the bare responder "
                f"{bare_versus_none:.2f} ×; no check {median['none']:,.0f} msg/s)",
                floor >= TARGET,
                command,
            )
        )
    cheapest = max(WIRINGS, key=lambda wiring: versus_none[wiring])
    data_costs = ", ".join(
        f"{t} {paired_ratio(rates[f'daemon {t} 1'], rates[f'daemon {t} 0']):.2f} ×"
        for t in ("tcp", "unix")
    )
    report.add(
        Row(
            "Postfix end to end: the wiring that costs least, and what the DATA check costs",
            "(informational)",
            f"least: {cheapest.label} ({versus_none[cheapest]:.2f} × no check); messages/s with "
            f"the DATA check vs without, m365-policyd: {data_costs} (the DATA check only adds "
            "the X-M365-Relay header: with `tag = false` leave it out)",
            None,
            command,
        )
    )
    report.note(
        "postfix",
        "one run: `smtp-source -s 20 -m N -l 2048 -f app@contoso.com -t rcpt@fabrikam.com "
        "127.0.0.1:PORT`, timed until Postfix logged every `status=sent`; ratios are medians of "
        f"{scale.postfix_rounds} paired rounds",
    )
