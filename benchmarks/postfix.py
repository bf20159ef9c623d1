"""The Postfix end-to-end row of ``make bench`` (SPEC §9): smtp-source → Postfix → smtp-sink.

One private Postfix (``tests/e2e/postfix.py``) relays to smtp-sink. Its policy checks are wired
in each way an administrator can choose, and each wiring is answered once by m365-policyd (the
default configuration) and once by the bare responder, the protocol's own floor:

* transport: TCP on loopback (``inet:127.0.0.1:PORT``, the contrib snippet) or a unix socket in
  Postfix's ``private/`` directory (``unix:private/NAME``);
* checks: RCPT and DATA (the contrib snippet: DATA adds the ``X-M365-Relay`` header), or RCPT
  only (all a daemon with ``tag = false`` needs).

Plus Postfix without any policy check. Every variant is its own smtpd service of the same
Postfix (a ``master.cf`` line on its own port, the wiring set with ``-o``), so switching from one
variant to the next needs no reload: the variants take turns in many short runs, which gives
each the same share of the machine's fast and slow moments (see ``benchmarks.common.Scale``;
every other round runs in reverse order).
A run's rate is messages per second until Postfix logged every ``status=sent``; a variant's
rate is all its messages over all its runs' time. Target: the daemon reaches 0.97 times the
bare responder in the same wiring; the ratio to no check is reported beside it, and the wiring
that costs least is named.

Postfix's own rate moves by about ±10 % from one run to the next on the 2-core machine of
BENCHMARKS.md, so each ratio comes with its 95 % bootstrap interval over the rounds
(``ratio_interval``): how far the machine's noise alone moves it. The target is judged on the
ratio itself. Beside it, the policy server's own CPU time per message (``server_cost``): what
the daemon costs beyond the bare responder, without the noise of Postfix's rate.
"""

from __future__ import annotations

import os
import random
import re
import socket
import statistics
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path

from benchmarks.common import (
    ROOT,
    RUN,
    Report,
    Row,
    Scale,
    cpu_seconds,
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
RUN_SECONDS = 1.2
#: ... but has at least this many messages.
MIN_MESSAGES = 200
#: How often the mail log is read while waiting for the last delivery of a run (seconds).
POLL_SECONDS = 0.005


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


def master_options(wiring: Wiring | None, service: str) -> list[str]:
    """The ``-o`` lines of one variant's smtpd in master.cf: ``wiring`` answered at ``service``
    (main.cf holds the contrib snippet's restrictions), or no policy check at all (None)."""
    if wiring is None:
        return ["  -o smtpd_recipient_restrictions=", "  -o smtpd_data_restrictions="]
    options = [f"  -o m365_policyd_service={service}"]
    if not wiring.data_check:
        options.append("  -o smtpd_data_restrictions=")
    return options


class SentCounter:
    """Counts ``status=sent`` lines the mail log gained, reading only what is new."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = 0
        self._partial = b""
        self.sent = 0

    def update(self) -> int:
        """Read what was appended since the last call; the number of deliveries so far."""
        try:
            with self._path.open("rb") as log:
                log.seek(self._offset)
                data = log.read()
        except FileNotFoundError:
            return self.sent
        self._offset += len(data)
        data = self._partial + data
        whole, _, self._partial = data.rpartition(b"\n")
        self.sent += len(SENT.findall(whole.decode(errors="replace")))
        return self.sent


@dataclass(frozen=True)
class PostfixRun:
    """One smtp-source run: messages, seconds until accepted, seconds until delivered, and the
    CPU seconds the policy server used meanwhile (0 without one)."""

    messages: int
    injected: float
    delivered: float
    server_cpu: float = 0.0


def send(port: int, counter: SentCounter, messages: int) -> PostfixRun:
    """Send ``messages`` with smtp-source to the smtpd on ``port``; wait for every delivery."""
    already = counter.update()
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
            f"127.0.0.1:{port}",
        ],
        check=True,
        timeout=600,
        stdout=subprocess.DEVNULL,
    )
    injected = time.monotonic() - start
    deadline = time.monotonic() + 300
    while counter.update() - already < messages:
        if time.monotonic() > deadline:
            raise RuntimeError("Postfix did not deliver every benchmark message within 300 s")
        time.sleep(POLL_SECONDS)
    return PostfixRun(messages, injected, time.monotonic() - start)


def wait_listening(port: int, timeout: float = 15.0) -> None:
    """Wait until the smtpd service on ``port`` accepts connections (RuntimeError if not)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no smtpd listens on 127.0.0.1:{port}") from None
            time.sleep(0.05)


def delivered_rate(runs: list[PostfixRun]) -> float:
    """All the runs' messages over all their time until delivered (msg/s)."""
    seconds = sum(run.delivered for run in runs)
    return sum(run.messages for run in runs) / seconds if seconds else 0.0


def accepted_rate(runs: list[PostfixRun]) -> float:
    """All the runs' messages over all their time until smtp-source was done (msg/s)."""
    seconds = sum(run.injected for run in runs)
    return sum(run.messages for run in runs) / seconds if seconds else 0.0


def cpu_per_message(runs: list[PostfixRun]) -> float:
    """The policy server's CPU seconds per message over all ``runs``."""
    messages = sum(run.messages for run in runs)
    return sum(run.server_cpu for run in runs) / messages if messages else 0.0


def server_cost(wiring: Wiring, runs: dict[str, list[PostfixRun]], cpus: int = 0) -> str:
    """What m365-policyd costs beyond the bare responder in ``wiring``, in its own CPU time per
    message and as a share of all the machine's ``cpus`` (``os.cpu_count()``) for one message at
    the bare responder's rate: the ratio the row would show if that were the only difference."""
    daemon = runs[f"daemon {wiring.transport} {int(wiring.data_check)}"]
    bare = runs[f"bare {wiring.transport} {int(wiring.data_check)}"]
    extra = cpu_per_message(daemon) - cpu_per_message(bare)
    share = extra * delivered_rate(bare) / (cpus or os.cpu_count() or 1)
    return (
        f"{wiring.label}: {cpu_per_message(daemon) * 1e6:,.0f} vs "
        f"{cpu_per_message(bare) * 1e6:,.0f} µs, {extra * 1e6:+,.0f} µs = {share:.1%} of the "
        f"machine's time per message"
    )


def ratio_interval(
    daemon: list[PostfixRun], bare: list[PostfixRun], *, draws: int = 2000, seed: int = 15
) -> tuple[float, float]:
    """The 95 % bootstrap interval of ``delivered_rate(daemon) / delivered_rate(bare)``.

    The i-th runs of the two were taken next to each other (one round), so rounds are drawn
    again with replacement, ``draws`` times with a fixed ``seed`` (the same runs give the same
    interval); the result is the 2.5th and 97.5th percentiles of the ratios.
    """
    rounds = list(zip(daemon, bare, strict=True))
    rng = random.Random(seed)
    ratios = []
    for _ in range(draws):
        sample = rng.choices(rounds, k=len(rounds))
        bare_rate = delivered_rate([run for _, run in sample])
        ratios.append(delivered_rate([run for run, _ in sample]) / bare_rate if bare_rate else 0.0)
    cuts = statistics.quantiles(ratios, n=40)  # 39 cuts, 2.5 % apart
    return cuts[0], cuts[-1]


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
    ports: dict[str, int] = {}  # variant -> its smtpd's port
    server_pids: dict[str, int] = {}  # variant -> the pid of the policy server answering it
    runs: dict[str, list[PostfixRun]] = {}
    try:
        with PostfixInstance.create(
            relayhost=f"[127.0.0.1]:{sink_port}",
            settings={
                **snippet,
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
                master: list[str] = []
                ports["none"] = free_port()
                master += [f"127.0.0.1:{ports['none']} inet n - n - - smtpd"]
                master += master_options(None, "")
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
                        ports[key] = free_port()
                        server_pids[key] = server.pid
                        master.append(f"127.0.0.1:{ports[key]} inet n - n - - smtpd")
                        master += master_options(wiring, services[wiring.transport])
                        who = "m365-policyd" if name == "daemon" else "the bare responder"
                        labels[key] = f"{wiring.label}, answered by {who}"
                with (instance.config_dir / "master.cf").open("a") as master_cf:
                    master_cf.write("\n".join(master) + "\n")
                instance.reload()
                for port in ports.values():  # master opens the new listeners as it reloads
                    wait_listening(port)
                counter = SentCounter(instance.log_path)
                warm = send(ports["none"], counter, WARM_UP)
                rate = warm.messages / warm.delivered
                messages = min(scale.postfix_messages, max(MIN_MESSAGES, int(rate * RUN_SECONDS)))
                report.note(
                    section,
                    f"warm-up: {WARM_UP} messages without a check at {rate:,.0f} msg/s; runs of "
                    f"{messages:,} messages (about {RUN_SECONDS:g} s at that rate, at most "
                    f"{scale.postfix_messages:,}), {scale.postfix_rounds} per variant, in turn",
                )
                runs = {key: [] for key in ports}
                for port in ports.values():  # every smtpd and policy connection warmed up
                    send(port, counter, MIN_MESSAGES // 4)
                order = list(ports.items())
                for round_number in range(scale.postfix_rounds):
                    # every other round in reverse, as benchmarks.common.alternate does
                    for key, port in order if round_number % 2 == 0 else order[::-1]:
                        server = server_pids.get(key)
                        before = cpu_seconds(server) if server else 0.0
                        run = send(port, counter, messages)
                        if server:
                            run = replace(run, server_cpu=cpu_seconds(server) - before)
                        runs[key].append(run)
                for key, variant_runs in runs.items():
                    delivered = [run.messages / run.delivered for run in variant_runs]
                    report.note(
                        section,
                        f"{labels[key]}: {sum(run.messages for run in variant_runs):,} messages "
                        f"in {len(variant_runs)} runs, accepted at "
                        f"{accepted_rate(variant_runs):,.0f} msg/s, delivered at "
                        f"{delivered_rate(variant_runs):,.0f} msg/s (runs {min(delivered):,.0f} "
                        f"to {max(delivered):,.0f})"
                        + (
                            f"; policy server CPU {cpu_per_message(variant_runs) * 1e6:,.0f} µs "
                            "per message"
                            if key in server_pids
                            else ""
                        ),
                    )
                policy_log = daemon.tail(400)
    finally:
        sink.terminate()
        sink.wait(timeout=10)
    if "level=error" in policy_log:
        report.note(section, f"daemon log tail: {policy_log.strip()[-300:]}")
    add_rows(report, runs, scale, command)


def add_rows(report: Report, runs: dict[str, list[PostfixRun]], scale: Scale, command: str) -> None:
    """One row per wiring (daemon vs bare with its interval, and vs no check), then the
    cheapest and DATA's cost; ``runs`` are each variant's runs, in rounds, by variant key
    (``none``, ``daemon tcp 1``, ``bare unix 0``...)."""
    rates = {key: delivered_rate(value) for key, value in runs.items()}
    versus_none: dict[Wiring, float] = {}
    for wiring in WIRINGS:
        daemon_key = f"daemon {wiring.transport} {int(wiring.data_check)}"
        bare_key = f"bare {wiring.transport} {int(wiring.data_check)}"
        daemon_rate, bare_rate = rates[daemon_key], rates[bare_key]
        floor = daemon_rate / bare_rate
        low, high = ratio_interval(runs[daemon_key], runs[bare_key])
        versus_none[wiring] = daemon_rate / rates["none"]
        report.add(
            Row(
                f"Postfix end to end, {wiring.label}: m365-policyd vs the bare responder"
                + (" (the contrib snippet's wiring)" if wiring == WIRINGS[0] else ""),
                f"≥ {TARGET} ×",
                f"{floor:.3f} × (95 % interval {low:.3f}–{high:.3f} over "
                f"{len(runs[daemon_key])} rounds; {daemon_rate:,.0f} vs {bare_rate:,.0f} msg/s); "
                f"vs no check {versus_none[wiring]:.2f} × (the bare responder "
                f"{bare_rate / rates['none']:.2f} ×; no check {rates['none']:,.0f} msg/s)",
                floor >= TARGET,
                command,
            )
        )
    report.add(
        Row(
            "Postfix end to end: what the policy server itself costs per message",
            "(informational)",
            "; ".join(server_cost(wiring, runs) for wiring in WIRINGS),
            None,
            command,
        )
    )
    cheapest = max(WIRINGS, key=lambda wiring: versus_none[wiring])
    data_costs = ", ".join(
        f"{t} {rates[f'daemon {t} 1'] / rates[f'daemon {t} 0']:.2f} ×" for t in ("tcp", "unix")
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
        "127.0.0.1:PORT` to the variant's own smtpd, timed until Postfix logged every "
        f"`status=sent`; {scale.postfix_rounds} runs per variant, taken in turn (every other "
        "round in reverse order)",
    )
