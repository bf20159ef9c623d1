"""What every ``make bench`` row shares: the table, the servers under test and one measurement.

Servers run as child processes on free loopback ports: the bare responder
(``python -m benchmarks.bare``) and the daemon through its real command line
(``python -m policyd.tools.cli serve -c FILE``) with its stdout, the log, in a file as journald
would take it. ``measure`` drives one of them with ``m365-policyd bench``'s generator in this
process and reads both sides' CPU time from ``/proc``.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.orders import attribute_order
from policyd.tools import bench

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "BENCHMARKS.md"
RUN = ".venv/bin/python -m benchmarks.run"
PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Row:
    """One line of the results table."""

    what: str
    target: str
    measured: str
    met: bool | None  # None: informational, or could not be measured
    command: str


@dataclass
class Report:
    """Rows plus the details (individual runs, notes) printed under the table."""

    rows: list[Row] = field(default_factory=list)
    details: dict[str, list[str]] = field(default_factory=dict)

    def add(self, row: Row) -> None:
        """Record a row and show it at once."""
        self.rows.append(row)
        met = {True: "yes", False: "NO", None: "-"}[row.met]
        print(f"  => {row.what}: {row.measured} (target {row.target}; met: {met})", flush=True)

    def note(self, section: str, line: str) -> None:
        """Record a detail line and show it at once."""
        self.details.setdefault(section, []).append(line)
        print(f"     {line}", flush=True)


@dataclass(frozen=True)
class Scale:
    """Run lengths; ``--quick`` shrinks them for a smoke test.

    Throughput is compared in many short alternating runs (``rounds`` x ``seconds`` each): on
    a shared or virtual machine the CPU's speed changes every second or two, by up to a factor
    of two (a pure-Python loop measured 55 and 103 units per 100 ms back to back on the 2-core
    machine of BENCHMARKS.md), so long runs of one server and then the other measure the
    machine's mood as much as the servers. Short runs in turn give every contender the same
    share of fast and slow moments.
    """

    rounds: int = 20
    seconds: float = 0.5
    latency_seconds: float = 10.0
    latency_rounds: int = 3
    long_requests: int = 1_000_000
    sample_every: int = 50_000
    warmup_requests: int = 200_000
    postfix_messages: int = 4000
    postfix_rounds: int = 30


QUICK = Scale(2, 0.5, 3.0, 1, 100_000, 10_000, 20_000, 300, 1)


# ----------------------------------------------------------------------------- processes


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (VmRSS in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def own_cpu_seconds() -> float:
    """User + system CPU time of this process (the in-process generator) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Server:
    """A policy server child process on a loopback port."""

    def __init__(self, name: str, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.name = name
        self.process = process
        self.port = port
        self.log = log

    @property
    def endpoint(self) -> bench.Endpoint:
        """Where it listens."""
        return bench.Endpoint("tcp", host="127.0.0.1", port=self.port)

    @property
    def pid(self) -> int:
        """Its process id (the Python interpreter itself, no wrapper)."""
        return self.process.pid

    def wait_listening(self, timeout: float = 30.0) -> None:
        """Return once a TCP connection succeeds; raise with the log tail if it dies first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.process.returncode}:\n{self.tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen on port {self.port}:\n{self.tail()}")

    def tail(self, size: int = 3000) -> str:
        """The end of its output."""
        try:
            return self.log.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def spawn(label: str, arguments: Sequence[str], port: int, log: Path) -> Server:
    """``python ARGUMENTS`` from the repository root, stdout and stderr to ``log``; returns
    once it accepts connections on ``port``."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, *arguments], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
        )
    server = Server(label, process, port, log)
    server.wait_listening()
    return server


def fresh_process_json(what: str, script: str, *arguments: str) -> Any:
    """Run ``python -c SCRIPT ARGUMENTS`` from the repository root and return the JSON it
    prints; raise with the end of its stderr if it fails."""
    proc = subprocess.run(
        [sys.executable, "-c", script, *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def start_bare(workdir: Path, listen: Sequence[str] = ()) -> Server:
    """``python -m benchmarks.bare`` on a free loopback port (and on ``listen``)."""
    port = free_port()
    endpoints = [f"tcp:{port}:interface=127.0.0.1", *listen]
    return spawn(
        "bare responder",
        [
            "-m",
            "benchmarks.bare",
            *(argument for endpoint in endpoints for argument in ("--listen", endpoint)),
        ],
        port,
        workdir / f"bare-{port}.log",
    )


#: The default configuration's logging (SPEC §9 row 1): what every administrator runs.
DEFAULT_LOG_LEVEL = "info"


def daemon_config(
    port: int,
    *,
    log_level: str = DEFAULT_LOG_LEVEL,
    log_format: str = "text",
    alias_maps: Sequence[str] = (),
    listen: Sequence[str] = (),
) -> str:
    """A realistic configuration: one IP connector, contoso.com accepted, defer refusals, tag;
    logging at the default level and format unless told otherwise. ``listen`` adds endpoints."""
    maps = ", ".join(json.dumps(spec) for spec in alias_maps)
    endpoints = ", ".join(json.dumps(e) for e in [f"tcp:{port}:interface=127.0.0.1", *listen])
    return f"""\
[server]
listen = [{endpoints}]
metrics = "tcp:{free_port()}:interface=127.0.0.1"
reload_interval = 30

[tenant]
accepted_domains = ["{bench.OWN_DOMAIN}"]

[[tenant.inbound_connector]]
name = "From on-premises Postfix"
connector_type = "OnPremises"
enabled = true
sender_ip_addresses = ["203.0.113.10/32"]

[onprem]
egress_addresses = ["203.0.113.10"]
alias_maps = [{maps}]

[policy]
action = "defer"
tag = true

[log]
format = "{log_format}"
level = "{log_level}"
"""


def start_daemon(
    workdir: Path,
    name: str,
    *,
    log_level: str = DEFAULT_LOG_LEVEL,
    log_format: str = "text",
    alias_maps: Sequence[str] = (),
    listen: Sequence[str] = (),
) -> Server:
    """``python -m policyd.tools.cli serve -c FILE`` on a free loopback port, its stdout (the
    log) to a file as journald would take it."""
    port = free_port()
    config = workdir / f"{name}.toml"
    config.write_text(
        daemon_config(
            port,
            log_level=log_level,
            log_format=log_format,
            alias_maps=alias_maps,
            listen=listen,
        )
    )
    return serve(f"daemon ({name})", config, port, workdir / f"{name}.log")


def serve(label: str, config: Path, port: int, log: Path) -> Server:
    """``python -m policyd.tools.cli serve -c CONFIG``, listening on ``port`` (see ``spawn``)."""
    return spawn(label, ["-m", "policyd.tools.cli", "serve", "-c", str(config)], port, log)


@contextmanager
def servers(*starters: Callable[[], Server]) -> Iterator[list[Server]]:
    """Start servers, stop them all on the way out."""
    started: list[Server] = []
    try:
        for start in starters:
            started.append(start())
        yield started
    finally:
        for server in started:
            server.stop()


# ----------------------------------------------------------------------------- measuring


@dataclass
class Measured:
    """One generator run and the CPU both sides used during it."""

    result: bench.BenchResult
    generator_cpu: float  # fraction of one CPU
    server_cpu: float

    @property
    def rate(self) -> float:
        """Answered requests per second."""
        return self.result.requests_per_second


def measure(server: Server, connections: int, seconds: float, **options: Any) -> Measured:
    """Run the generator in this process against ``server``; note CPU use on both sides."""
    wall, mine, theirs = time.monotonic(), own_cpu_seconds(), cpu_seconds(server.pid)
    result = bench.run(server.endpoint, connections, seconds, processes=1, **options)
    elapsed = time.monotonic() - wall
    return Measured(
        result,
        (own_cpu_seconds() - mine) / elapsed,
        (cpu_seconds(server.pid) - theirs) / elapsed,
    )


def bench_command(connections: int, seconds: float, rate: float = 0.0) -> str:
    """The ``m365-policyd bench`` line that repeats one run against a running server."""
    extra = f" --rate {rate:g}" if rate else ""
    return (
        f"m365-policyd bench --connect 127.0.0.1:PORT --connections {connections} "
        f"--duration {seconds:g}{extra}"
    )


def describe(run: Measured) -> str:
    """One run, for the details section."""
    latency = run.result.latencies_ms
    errors = f", {run.result.error_total} errors" if run.result.error_total else ""
    per_request = run.server_cpu / run.rate * 1e6 if run.rate else 0.0
    return (
        f"{run.rate:,.0f} req/s, p50 {latency['p50']:.3f} ms, p99 {latency['p99']:.3f} ms, "
        f"generator CPU {run.generator_cpu:.0%}, server CPU {run.server_cpu:.0%} "
        f"({per_request:.1f} µs per request){errors}"
    )


@dataclass(frozen=True)
class Contender:
    """One server driven with the generator's requests in one attribute order."""

    label: str
    server: Server
    order: tuple[str, ...] | None = None  # None: Postfix's order


def alternate(
    report: Report,
    section: str,
    contenders: Sequence[Contender | Server],
    scale: Scale,
    connections: int = 50,
) -> dict[str, list[Measured]]:
    """Alternating closed-loop runs of every contender (by label); a 1 s warm-up each first.

    Each contender gets ``scale.rounds`` runs of ``scale.seconds``, in turn, every other round
    in reverse order; the details get one summary line per contender (``summarize``).
    """
    entrants = [c if isinstance(c, Contender) else Contender(c.name, c) for c in contenders]
    runs: dict[str, list[Measured]] = {entrant.label: [] for entrant in entrants}
    for entrant in entrants:
        with attribute_order(entrant.order):
            measure(entrant.server, connections, 1.0)
    for round_number in range(scale.rounds):
        # Every other round in reverse (A B C, C B A, ...): a drift of the machine's speed
        # within a round then favours no contender.
        for entrant in entrants if round_number % 2 == 0 else entrants[::-1]:
            with attribute_order(entrant.order):
                run = measure(entrant.server, connections, scale.seconds)
            runs[entrant.label].append(run)
    for entrant in entrants:
        report.note(section, f"{entrant.label}: {summarize(runs[entrant.label], scale)}")
    return runs


def summarize(runs: Sequence[Measured], scale: Scale) -> str:
    """One contender's alternating runs in one line: mean rate (the ratios' basis), the spread
    of the runs, CPU on both sides and the server's CPU time per request."""
    rates = [run.rate for run in runs]
    server_cpu = statistics.median(run.server_cpu for run in runs)
    per_request = [run.server_cpu / run.rate * 1e6 for run in runs if run.rate]
    errors = sum(run.result.error_total for run in runs)
    return (
        f"{len(runs)} runs of {scale.seconds:g} s: mean {mean_rate(runs):,.0f} req/s (runs "
        f"{min(rates):,.0f} to {max(rates):,.0f}, median {statistics.median(rates):,.0f}); "
        f"median p99 {statistics.median(run.result.latencies_ms['p99'] for run in runs):.3f} ms; "
        f"generator CPU ≤ {max(run.generator_cpu for run in runs):.0%}, server CPU "
        f"{server_cpu:.0%} (median {statistics.median(per_request) if per_request else 0:.1f} µs "
        f"per request); {errors} errors"
    )


def mean_rate(runs: Sequence[Measured]) -> float:
    """Mean requests/s of runs of equal length: the requests answered in all of them over the
    time they took together."""
    return statistics.fmean(run.rate for run in runs) if runs else 0.0


def rate_ratio(runs: Sequence[Measured], reference: Sequence[Measured]) -> float:
    """``runs``' mean rate over ``reference``'s: of runs alternating with each other, the
    requests one answered for each request the other answered in the same share of time."""
    base = mean_rate(reference)
    return mean_rate(runs) / base if base else 0.0


def versus(runs: Sequence[Measured], reference: Sequence[Measured], scale: Scale) -> str:
    """``0.83 x (20 alternating 0.5 s runs each; mean rates 28,000 vs 33,700 req/s)``."""
    return (
        f"{rate_ratio(runs, reference):.2f} × ({len(runs)} alternating {scale.seconds:g} s runs "
        f"each; mean rates {mean_rate(runs):,.0f} vs {mean_rate(reference):,.0f} req/s)"
    )
