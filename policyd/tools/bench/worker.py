"""One load-generating worker: lockstep connections over plain sockets and ``selectors``.

No Twisted and no per-request allocation beyond the reply bytes; see ``policyd.tools.bench``
for the closed- and open-loop load shapes and how latency is counted in each.
"""

from __future__ import annotations

import heapq
import selectors
import socket
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

from policyd.tools.bench.endpoint import Endpoint, open_socket
from policyd.tools.bench.traffic import (
    END,
    MAX_REPLY,
    MESSAGE_POOL,
    build_messages,
    reply_is_valid,
    request_stream,
)

#: Error kinds, in the order they are reported.
CONNECT_FAILED = "connect-failed"
CLOSED = "closed"
RESET = "reset"
BAD_REPLY = "bad-reply"
TIMEOUT = "timeout"
ERROR_KINDS = (CONNECT_FAILED, CLOSED, RESET, BAD_REPLY, TIMEOUT)


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
