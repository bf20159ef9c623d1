"""``m365-policyd bench``: drive a running policy server the way Postfix's smtpd processes do.

Each of N connections works in lockstep like one smtpd process with one policy client: send a
request, wait for the whole reply, send the next. Every message is three requests (RCPT, RCPT,
DATA) of the ~30 attributes Postfix 3.7 sends, with varied senders (own domain, foreign, null)
and recipients (several domains), a new ``instance`` per message and an empty ``queue_id`` on
the first RCPT. All requests are encoded before the clock starts, so generating them costs
nothing while measuring.

The generator is plain sockets and ``selectors`` (epoll): no Twisted, no per-request
allocation beyond the reply bytes. ``--processes`` splits the connections over forked workers
that start on the same monotonic instant and merge their latency samples.

Two load shapes:

* closed loop (default): every connection sends its next request as soon as the previous reply
  arrived; the result is the server's throughput at that concurrency;
* open loop (``--rate R``): each connection is paced to ``R / N`` requests per second. When the
  server falls behind, latency counts from the moment the request was *due*, not from when a
  busy connection could finally send it (no coordinated omission); when the generator itself
  wakes late, latency counts from the actual send, and the lateness is reported as
  ``send_lag_ms`` so an overloaded generator is visible rather than blamed on the server.

Every reply must be ``action=...`` lines ending in a blank line and nothing more; anything else
(a reply without ``action``, unrequested bytes, a close, a reset, no reply within ``--timeout``)
is counted as an error by kind, and the connection reconnects as Postfix would.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import pickle
import random
import resource
import selectors
import socket
import sys
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from policyd.constants import POSTFIX_ATTRIBUTE_ORDER

#: Error kinds, in the order they are reported.
CONNECT_FAILED = "connect-failed"
CLOSED = "closed"
RESET = "reset"
BAD_REPLY = "bad-reply"
TIMEOUT = "timeout"
ERROR_KINDS = (CONNECT_FAILED, CLOSED, RESET, BAD_REPLY, TIMEOUT)

#: Domains of the generated traffic; ``benchmarks/run.py`` builds matching configs and maps.
OWN_DOMAIN = "contoso.com"
OWN_SUBDOMAIN = "mail.contoso.com"
FOREIGN_SENDER_DOMAINS = ("fabrikam.com", "tailspintoys.com", "adatum.com", "northwind.example")
RECIPIENT_DOMAINS = (
    "fabrikam.com",
    "gmail.example",
    "outlook.example",
    "woodgrovebank.com",
    "litware.example",
)
#: Own-domain recipients are ``user<N>@contoso.com`` with N below this (alias map keys match).
LOCAL_PART_RANGE = 200_000

#: Messages encoded per worker; connections start at different offsets in the pool.
MESSAGE_POOL = 2048

END = b"\n\n"
MAX_REPLY = 8192

DEFAULT_CONNECTIONS = 50
DEFAULT_DURATION = 10.0
DEFAULT_TIMEOUT = 5.0


class UsageError(ValueError):
    """A bad command-line value; the message says which and why."""


# --------------------------------------------------------------------------- endpoints


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the policy server listens: TCP ``host``/``port`` or a unix socket ``path``."""

    family: str  # "tcp" or "unix"
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.family == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp:{host}:{self.port}"


def parse_endpoint(text: str) -> Endpoint:
    """Parse ``tcp:HOST:PORT``, ``inet:HOST:PORT``, ``HOST:PORT`` or ``unix:/path``.

    IPv6 hosts are written in brackets (``[::1]:10040``). Raises ``UsageError`` naming the
    accepted forms when ``text`` is none of them.
    """
    forms = "expected tcp:HOST:PORT, inet:HOST:PORT, HOST:PORT or unix:/path"
    value = text.strip()
    if value.startswith("unix:"):
        path = value[len("unix:") :]
        if not path:
            raise UsageError(f"endpoint {text!r}: empty socket path; {forms}")
        return Endpoint("unix", path=path)
    for prefix in ("tcp:", "inet:"):
        if value.startswith(prefix):
            value = value[len(prefix) :]
            break
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise UsageError(f"endpoint {text!r}: unclosed IPv6 bracket; {forms}")
        port_text = rest[1:]
    else:
        host, colon, port_text = value.rpartition(":")
        if not colon or ":" in host:
            raise UsageError(f"endpoint {text!r}: {forms} (IPv6 hosts in brackets)")
    if not host:
        raise UsageError(f"endpoint {text!r}: empty host; {forms}")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageError(f"endpoint {text!r}: port must be a number from 1 to 65535")
    return Endpoint("tcp", host=host, port=int(port_text))


def open_socket(endpoint: Endpoint, timeout: float) -> socket.socket:
    """A connected, non-blocking socket to ``endpoint`` (raises ``OSError`` on failure)."""
    if endpoint.family == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address: Any = endpoint.path
    else:
        infos = socket.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.settimeout(timeout)
        sock.connect(address)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def raise_file_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards ``wanted`` (capped by the hard limit); new soft."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


# --------------------------------------------------------------------------- traffic


#: The attributes Postfix sends, in its order (``policyd.constants``).
ATTRIBUTE_ORDER = POSTFIX_ATTRIBUTE_ORDER


def _request(attributes: Sequence[tuple[str, str]]) -> bytes:
    return "".join(f"{name}={value}\n" for name, value in attributes).encode() + b"\n"


def build_messages(count: int, seed: int) -> list[tuple[bytes, bytes, bytes]]:
    """``count`` messages as encoded (RCPT, RCPT, DATA) requests, as Postfix 3.7 sends them.

    Senders: 55 % own domain (some from a subdomain), 30 % foreign, 15 % null (bounces).
    Recipients: mostly outside domains, one in four in the own domain (``user<N>@contoso.com``,
    which the benchmark alias map forwards). Deterministic for a given ``seed``.
    """
    rng = random.Random(seed)
    pid = rng.randrange(1000, 60000)
    base_time = 1_760_000_000 + rng.randrange(10**6)
    messages = []
    for number in range(count):
        roll = rng.random()
        if roll < 0.45:
            sender = f"app{rng.randrange(40)}@{OWN_DOMAIN}"
        elif roll < 0.55:
            sender = f"scanner{rng.randrange(8)}@{OWN_SUBDOMAIN}"
        elif roll < 0.85:
            domain = rng.choice(FOREIGN_SENDER_DOMAINS)
            sender = f"{rng.choice(('john', 'mary', 'noreply', 'billing'))}@{domain}"
        else:
            sender = ""
        recipients = []
        for _ in range(2):
            if rng.random() < 0.25:
                recipients.append(f"user{rng.randrange(LOCAL_PART_RANGE)}@{OWN_DOMAIN}")
            else:
                recipients.append(f"r{rng.randrange(5000)}@{rng.choice(RECIPIENT_DOMAINS)}")
        client_octet = rng.randrange(2, 250)
        seconds = base_time + number
        instance = f"{pid:x}.{seconds:x}.{rng.randrange(10**6):x}.{number:x}"
        queue_id = f"{rng.getrandbits(40):010X}"
        common = {
            "request": "smtpd_access_policy",
            "protocol_name": "ESMTP",
            "helo_name": f"app{client_octet}.corp.{OWN_DOMAIN}",
            "sender": sender,
            "client_address": f"10.20.{client_octet // 16}.{client_octet}",
            "client_name": f"app{client_octet}.corp.{OWN_DOMAIN}",
            "reverse_client_name": f"app{client_octet}.corp.{OWN_DOMAIN}",
            "instance": instance,
            "sasl_method": "",
            "sasl_username": "",
            "sasl_sender": "",
            "size": str(rng.randrange(2_000, 2_000_000)),
            "ccert_subject": "",
            "ccert_issuer": "",
            "ccert_fingerprint": "",
            "ccert_pubkey_fingerprint": "",
            "encryption_protocol": "TLSv1.3",
            "encryption_cipher": "TLS_AES_256_GCM_SHA384",
            "encryption_keysize": "256",
            "etrn_domain": "",
            "stress": "",
            "client_port": str(rng.randrange(32768, 61000)),
            "policy_context": "",
            "server_address": "10.20.0.1",
            "server_port": "25",
        }

        def request(
            state: str, queue: str, recipient: str, recipient_count: int, fields: dict[str, str]
        ) -> bytes:
            attributes = {
                **fields,
                "protocol_state": state,
                "queue_id": queue,
                "recipient": recipient,
                "recipient_count": str(recipient_count),
            }
            return _request([(name, attributes[name]) for name in ATTRIBUTE_ORDER])

        messages.append(
            (
                request("RCPT", "", recipients[0], 0, common),
                request("RCPT", queue_id, recipients[1], 0, common),
                # DATA names no recipient when more than one was accepted
                request("DATA", queue_id, "", 2, common),
            )
        )
    return messages


def request_stream(messages: Sequence[tuple[bytes, bytes, bytes]]) -> list[bytes]:
    """The requests of ``messages`` in sending order (RCPT, RCPT, DATA, RCPT, ...)."""
    return [request for message in messages for request in message]


def reply_is_valid(reply: bytes) -> bool:
    """True for exactly one policy reply: ``name=value`` lines including ``action=``, blank line."""
    if reply.startswith(b"action=") and reply.find(END) == len(reply) - 2:
        return len(reply) > len(b"action=\n\n")
    if not reply.endswith(END) or reply.find(END) != len(reply) - 2:
        return False
    lines = reply[:-2].split(b"\n")
    if not all(b"=" in line for line in lines):
        return False
    return any(line.startswith(b"action=") and len(line) > len(b"action=") for line in lines)


# --------------------------------------------------------------------------- the worker


@dataclass(slots=True)
class WorkerResult:
    """What one worker measured: latencies in seconds, errors by kind."""

    completed: int = 0
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ERROR_KINDS, 0))
    latencies: array[float] = field(default_factory=lambda: array("d"))
    send_lags: array[float] = field(default_factory=lambda: array("d"))
    connected: int = 0

    def merge(self, other: WorkerResult) -> None:
        """Add ``other``'s counts and samples to this result."""
        self.completed += other.completed
        for kind, count in other.errors.items():
            self.errors[kind] = self.errors.get(kind, 0) + count
        self.latencies.extend(other.latencies)
        self.send_lags.extend(other.send_lags)
        self.connected += other.connected


class _Connection:
    __slots__ = (
        "backlogged",
        "buffer",
        "due",
        "index",
        "out",
        "position",
        "retry_at",
        "sent_at",
        "slot",
        "sock",
        "waiting",
    )

    def __init__(self, slot: int, index: int, position: int) -> None:
        self.slot = slot  # position in this worker's list
        self.index = index  # global index over all workers
        self.position = position  # next request in the stream
        self.sock: socket.socket | None = None
        self.buffer = b""
        self.out = b""
        self.sent_at = 0.0  # when the latency clock for the request in flight started
        self.due = 0.0  # open loop: when the next request is due
        self.backlogged = False  # open loop: the previous reply came after ``due``
        self.waiting = False  # a request is in flight
        self.retry_at = 0.0


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """One worker's share of the load."""

    endpoint: Endpoint
    connections: int
    first_index: int  # global index of its first connection (spreads phases and pool offsets)
    total_connections: int
    rate: float  # offered requests/s over all connections; 0 = closed loop
    timeout: float
    seed: int
    max_requests: int = 0  # stop after this many answered requests (0 = run for the duration)
    progress_every: int = 0


def run_worker(
    plan: WorkerPlan,
    start_at: Callable[[], float],
    duration: float,
    progress: Callable[[int], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> WorkerResult:
    """Connect, wait for ``start_at()`` (a monotonic instant), drive the load, return counts.

    ``start_at`` is called once every connection is open, so forked workers can report ready
    and receive a common start time. ``progress(completed)`` is called every
    ``plan.progress_every`` answered requests (used to sample the server's memory).

    Open loop invariant: an idle connection (nothing in flight) is in ``due_heap`` exactly once.
    Closed loop: a dropped connection is reconnected by the sweep, at most every 0.25 s.
    """
    stream = request_stream(build_messages(MESSAGE_POOL, plan.seed))
    result = WorkerResult()
    errors = result.errors
    record = result.latencies.append
    record_lag = result.send_lags.append
    selector = selectors.DefaultSelector()
    interval = plan.total_connections / plan.rate if plan.rate > 0 else 0.0
    connections = [
        _Connection(n, plan.first_index + n, ((plan.first_index + n) * 3 * 331) % len(stream))
        for n in range(plan.connections)
    ]
    due_heap: list[tuple[float, int]] = []

    def connect(conn: _Connection) -> bool:
        try:
            conn.sock = open_socket(plan.endpoint, plan.timeout)
        except OSError:
            errors[CONNECT_FAILED] += 1
            conn.sock = None
            conn.retry_at = clock() + 0.1
            return False
        conn.buffer = b""
        conn.out = b""
        conn.waiting = False
        selector.register(conn.sock, selectors.EVENT_READ, conn)
        return True

    def drop(conn: _Connection, kind: str) -> None:
        errors[kind] += 1
        if conn.sock is not None:
            selector.unregister(conn.sock)
            conn.sock.close()
        conn.sock = None
        conn.waiting = False
        conn.backlogged = False
        conn.retry_at = clock()
        if interval:
            heapq.heappush(due_heap, (max(conn.due, conn.retry_at), conn.slot))

    def send(conn: _Connection, now: float) -> None:
        sock = conn.sock
        assert sock is not None
        request = stream[conn.position]
        conn.position = (conn.position + 1) % len(stream)
        if not interval:
            conn.sent_at = now
        elif conn.backlogged:  # the server made it late: count from when it was due
            conn.sent_at = conn.due
            conn.due += interval
        else:  # sent on the generator's timer: count from now, report the timer's lateness
            conn.sent_at = now
            record_lag(max(0.0, now - conn.due))
            conn.due += interval
        conn.waiting = True
        try:
            sent = sock.send(request)
        except BlockingIOError:
            sent = 0
        except OSError:
            drop(conn, RESET)
            return
        if sent < len(request):
            conn.out = request[sent:]
            selector.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)

    for conn in connections:
        if connect(conn):
            result.connected += 1
    start = start_at()
    while clock() < start:
        time.sleep(min(0.01, max(0.0, start - clock())))
    end = start + duration
    budget = plan.max_requests or -1

    if interval:  # spread the first sends evenly over one interval
        for conn in connections:
            conn.due = start + interval * conn.index / plan.total_connections
            heapq.heappush(due_heap, (conn.due, conn.slot))
    else:
        now = clock()
        for conn in connections:
            if conn.sock is not None:
                send(conn, now)

    next_sweep = start + 0.25
    select = selector.select
    while budget:
        now = clock()
        if now >= end:
            break
        while due_heap and due_heap[0][0] <= now:
            conn = connections[heapq.heappop(due_heap)[1]]
            if conn.sock is None and not connect(conn):
                heapq.heappush(due_heap, (conn.retry_at, conn.slot))
                continue
            send(conn, now)
        if now >= next_sweep:
            next_sweep = now + 0.25
            for conn in connections:
                if conn.waiting and now - conn.sent_at > plan.timeout:
                    drop(conn, TIMEOUT)
                if not interval and conn.sock is None and conn.retry_at <= now and connect(conn):
                    send(conn, now)
        wait = min(end, next_sweep) - now
        if due_heap:
            wait = min(wait, due_heap[0][0] - now)
        for key, mask in select(max(0.0, wait)):
            conn = key.data
            sock = conn.sock
            if sock is None:
                continue
            if mask & selectors.EVENT_WRITE and conn.out:
                try:
                    sent = sock.send(conn.out)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    drop(conn, RESET)
                    continue
                conn.out = conn.out[sent:]
                if not conn.out:
                    selector.modify(sock, selectors.EVENT_READ, conn)
            if not mask & selectors.EVENT_READ:
                continue
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                drop(conn, RESET)
                continue
            if not data:
                drop(conn, CLOSED)
                continue
            reply = conn.buffer + data if conn.buffer else data
            if not reply.endswith(END):
                if END in reply or len(reply) > MAX_REPLY or not conn.waiting:
                    drop(conn, BAD_REPLY)  # unrequested or runaway bytes
                else:
                    conn.buffer = reply
                continue
            now = clock()
            conn.buffer = b""
            if not conn.waiting or not reply_is_valid(reply):
                drop(conn, BAD_REPLY)
                continue
            conn.waiting = False
            if now >= end:
                continue
            record(now - conn.sent_at)
            result.completed += 1
            budget -= 1
            if progress and plan.progress_every and result.completed % plan.progress_every == 0:
                progress(result.completed)
            if not budget:
                break
            if not interval:
                send(conn, now)
            elif now >= conn.due:
                conn.backlogged = True
                send(conn, now)
            else:
                conn.backlogged = False
                heapq.heappush(due_heap, (conn.due, conn.slot))
    for conn in connections:
        if conn.sock is not None:
            conn.sock.close()
    selector.close()
    return result


# --------------------------------------------------------------------------- several workers


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


# --------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="m365-policyd bench",
        description="Drive a running policy server with realistic Postfix traffic "
        "(RCPT, RCPT, DATA per message over lockstep connections) and report requests/s "
        "and latency percentiles.",
    )
    parser.add_argument(
        "--connect",
        required=True,
        metavar="ENDPOINT",
        help="tcp:HOST:PORT, inet:HOST:PORT, HOST:PORT or unix:/path",
    )
    parser.add_argument(
        "--connections", type=int, default=DEFAULT_CONNECTIONS, metavar="N",
        help=f"lockstep connections, like busy smtpd processes (default {DEFAULT_CONNECTIONS})",
    )  # fmt: skip
    parser.add_argument(
        "--duration", type=float, default=DEFAULT_DURATION, metavar="S",
        help=f"seconds to measure (default {DEFAULT_DURATION:g})",
    )  # fmt: skip
    parser.add_argument(
        "--rate", type=float, default=0.0, metavar="R",
        help="offered load in requests/s, paced per connection (default: as fast as answered)",
    )  # fmt: skip
    parser.add_argument(
        "--processes", type=int, default=0, metavar="P",
        help="generator processes (default 0: one per 50 connections, at most half the CPUs)",
    )  # fmt: skip
    parser.add_argument(
        "--requests", type=int, default=0, metavar="N",
        help="stop after N answered requests (default: run for --duration)",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S",
        help=f"seconds to wait for a reply before counting a timeout (default {DEFAULT_TIMEOUT:g})",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=1, help="traffic seed (default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def write_text(result: BenchResult, out: TextIO) -> None:
    """The human-readable report."""
    latency = result.latencies_ms
    mode = f"offered {result.offered_rate:g} req/s" if result.offered_rate else "closed loop"
    out.write(
        f"endpoint     {result.endpoint}\n"
        f"load         {result.connections} connections ({result.connected} connected), "
        f"{result.processes} process(es), {mode}, {result.duration:.2f} s\n"
        f"requests     {result.requests} answered, {result.requests_per_second:,.0f} req/s\n"
        f"latency ms   p50 {latency['p50']:.3f}  p99 {latency['p99']:.3f}  "
        f"p99.9 {latency['p99.9']:.3f}  max {latency['max']:.3f}\n"
    )
    if result.offered_rate:
        lag = result.send_lag_ms
        out.write(f"send lag ms  p99 {lag['p99']:.3f}  max {lag['max']:.3f} (generator lateness)\n")
    details = ", ".join(f"{kind} {count}" for kind, count in result.errors.items() if count)
    out.write(f"errors       {result.error_total}{f' ({details})' if details else ''}\n")


def main(argv: Sequence[str] | None = None) -> int:
    """``m365-policyd bench``: 0 when every request was answered well, 1 on errors, 2 usage."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse: --help exits 0, usage errors exit 2
        return int(exit_.code or 0)
    try:
        endpoint = parse_endpoint(args.connect)
        if args.processes < 0:
            raise UsageError("--processes must not be negative")
        if args.timeout <= 0:
            raise UsageError("--timeout must be positive")
        if args.requests < 0:
            raise UsageError("--requests must not be negative")
        result = run(
            endpoint,
            args.connections,
            args.duration,
            rate=args.rate,
            processes=args.processes,
            timeout=args.timeout,
            seed=args.seed,
            max_requests=args.requests,
        )
    except UsageError as error:
        sys.stderr.write(f"m365-policyd bench: error: {error}\n")
        return 2
    if args.json:
        sys.stdout.write(json.dumps(result.as_dict()) + "\n")
    else:
        write_text(result, sys.stdout)
    if result.connected == 0:
        sys.stderr.write(f"m365-policyd bench: could not connect to {endpoint}\n")
    return 0 if result.error_total == 0 and result.requests > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
