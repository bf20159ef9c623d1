"""A whole bench run: split the connections over workers (forked when more than one), merge.

``run`` is what ``m365-policyd bench`` and ``benchmarks/run.py`` call; ``BenchResult`` is the
merged measurement with latency percentiles in milliseconds.
"""

from __future__ import annotations

import math
import os
import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from policyd.tools.bench.endpoint import Endpoint, UsageError, raise_file_limit
from policyd.tools.bench.worker import WorkerPlan, WorkerResult, run_worker

DEFAULT_CONNECTIONS = 50
DEFAULT_DURATION = 10.0
DEFAULT_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class BenchResult:
    """The merged measurement, as ``--json`` prints it."""

    endpoint: str
    connections: int
    processes: int
    duration: float
    offered_rate: float
    requests: int
    errors: dict[str, int]
    latencies_ms: dict[str, float]
    send_lag_ms: dict[str, float]
    connected: int

    @property
    def requests_per_second(self) -> float:
        """Answered requests per second of measured time."""
        return self.requests / self.duration if self.duration > 0 else 0.0

    @property
    def error_total(self) -> int:
        """All errors, every kind."""
        return sum(self.errors.values())

    def as_dict(self) -> dict[str, Any]:
        """The JSON object ``--json`` prints."""
        return {
            "endpoint": self.endpoint,
            "connections": self.connections,
            "connected": self.connected,
            "processes": self.processes,
            "duration_s": round(self.duration, 3),
            "offered_rate": self.offered_rate or None,
            "requests": self.requests,
            "requests_per_second": round(self.requests_per_second, 1),
            "latency_ms": self.latencies_ms,
            "send_lag_ms": self.send_lag_ms if self.offered_rate else None,
            "errors": self.errors,
            "error_total": self.error_total,
        }


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending sequence (0.0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """p50/p99/p99.9/max/mean of samples in seconds, as milliseconds rounded to microseconds."""
    ordered = sorted(samples)
    mean = sum(ordered) / len(ordered) if ordered else 0.0
    figures = {
        "p50": percentile(ordered, 0.50),
        "p99": percentile(ordered, 0.99),
        "p99.9": percentile(ordered, 0.999),
        "max": ordered[-1] if ordered else 0.0,
        "mean": mean,
    }
    return {name: round(value * 1000, 3) for name, value in figures.items()}


def default_processes(connections: int, cpus: int | None = None) -> int:
    """Workers used when ``--processes`` is 0: one per 50 connections, at most half the CPUs.

    The server under test needs a CPU of its own, so on a 2-core machine the generator stays
    in one process (it answers a bare Twisted responder faster than that responder can run:
    ``make bench`` prints both figures).
    """
    cpus = cpus or os.cpu_count() or 1
    return max(1, min(math.ceil(connections / 50), cpus // 2))


def run(
    endpoint: Endpoint,
    connections: int = DEFAULT_CONNECTIONS,
    duration: float = DEFAULT_DURATION,
    *,
    rate: float = 0.0,
    processes: int = 0,
    timeout: float = DEFAULT_TIMEOUT,
    seed: int = 1,
    max_requests: int = 0,
    progress_every: int = 0,
    progress: Callable[[int], None] | None = None,
) -> BenchResult:
    """Drive ``endpoint`` and merge every worker's measurement.

    With ``max_requests`` the run ends after that many answered requests (or ``duration``,
    whichever is first) and the rate is computed over the time actually taken. ``progress``
    works only with one process.
    """
    if connections < 1:
        raise UsageError("--connections must be at least 1")
    if duration <= 0:
        raise UsageError("--duration must be positive")
    if rate < 0:
        raise UsageError("--rate must not be negative")
    workers = processes or default_processes(connections)
    workers = max(1, min(workers, connections))
    if progress is not None and workers != 1:
        raise UsageError("progress sampling needs a single process")
    raise_file_limit(connections + 256)
    shares = [
        connections // workers + (1 if n < connections % workers else 0) for n in range(workers)
    ]
    plans = []
    first = 0
    for n, share in enumerate(shares):
        budget = 0
        if max_requests:
            budget = max_requests // workers + (1 if n < max_requests % workers else 0)
        plans.append(
            WorkerPlan(
                endpoint, share, first, connections, rate, timeout, seed, budget, progress_every
            )
        )
        first += share
    if workers == 1:
        begun: list[float] = []

        def start_now() -> float:
            begun.append(time.monotonic() + 0.01)
            return begun[0]

        merged = run_worker(plans[0], start_now, duration, progress)
        measured = min(duration, time.monotonic() - begun[0]) if max_requests else duration
    else:
        merged, measured = _run_forked(plans, duration)
        if not max_requests:
            measured = duration
    return BenchResult(
        endpoint=str(endpoint),
        connections=connections,
        processes=workers,
        duration=measured,
        offered_rate=rate,
        requests=merged.completed,
        errors=merged.errors,
        latencies_ms=summarize(merged.latencies),
        send_lag_ms=summarize(merged.send_lags),
        connected=merged.connected,
    )


def _run_forked(plans: Sequence[WorkerPlan], duration: float) -> tuple[WorkerResult, float]:
    """Fork one worker per plan; they connect, report ready, start together, send results."""
    children: list[tuple[int, int, int]] = []  # pid, read end of results, write end of start
    for plan in plans:
        result_read, result_write = os.pipe()
        start_read, start_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            status = 0
            try:
                os.close(result_read)
                os.close(start_write)
                with os.fdopen(result_write, "wb") as out, os.fdopen(start_read, "rb") as inp:

                    def start_at() -> float:
                        out.write(b"R")
                        out.flush()
                        return float(inp.readline())

                    worker = run_worker(plan, start_at, duration)
                    out.write(pickle.dumps(worker))
            except BaseException:  # a forked child must never return into the caller
                status = 1
            finally:
                os._exit(status)
        os.close(result_write)
        os.close(start_read)
        children.append((pid, result_read, start_write))
    for _, result_read, _ in children:
        if os.read(result_read, 1) != b"R":
            raise RuntimeError("a bench worker died before it was ready")
    start = time.monotonic() + 0.05
    for _, _, start_write in children:
        os.write(start_write, f"{start!r}\n".encode())
        os.close(start_write)
    merged = WorkerResult()
    for pid, result_read, _ in children:
        chunks = []
        while chunk := os.read(result_read, 1 << 20):
            chunks.append(chunk)
        os.close(result_read)
        os.waitpid(pid, 0)
        if not chunks:
            raise RuntimeError("a bench worker failed; see its error output")
        merged.merge(pickle.loads(b"".join(chunks)))  # our own child's output, over a private pipe
    return merged, min(duration, time.monotonic() - start)
