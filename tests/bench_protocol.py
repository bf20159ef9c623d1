"""In-process micro-benchmark of the protocol layer against a bare responder.

Feeds realistic Postfix 3.7 requests (``tests/data/requests``) through ``dataReceived`` of a
``PolicyProtocol`` on a ``StringTransport`` with a trivial handler, and the same bytes through a
bare responder that answers ``action=DUNNO`` per ``\\n\\n`` without parsing (what
``benchmarks.bare`` does over sockets). No sockets, so this isolates the Python cost per request;
the socket-level comparison of SPEC §9 is ``m365-policyd bench``. Not collected by pytest::

    .venv/bin/python -m tests.bench_protocol [--requests 100000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from policyd.engine.stats import Stats
from policyd.wire.protocol import PolicyFactory

DATA = Path(__file__).parent / "data" / "requests"
END = b"\n\n"
REPLY = b"action=DUNNO\n\n"


class BareResponder(Protocol):
    """Answers DUNNO for every ``\\n\\n``, one write per read, no parsing (the yardstick)."""

    def __init__(self) -> None:
        self._pending = b""

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted callback name
        buffer = self._pending + data if self._pending else data
        count = buffer.count(END)
        transport: Any = self.transport
        if count:
            transport.write(REPLY * count)
            buffer = buffer[buffer.rfind(END) + 2 :]
        self._pending = buffer


class TrivialHandler:
    """Answers DUNNO without looking at the request."""

    def new_session(self) -> object:
        return None

    def handle(self, attrs: Mapping[str, str], session: object) -> str:
        return "DUNNO"


class Limits:
    """Default [server] limits."""

    max_connections = 4096
    idle_timeout = 3600.0
    max_request_bytes = 65536


def sample_requests() -> list[bytes]:
    """Every request of the sample streams, each with its blank line."""
    requests = []
    for path in sorted(DATA.glob("*.txt")):
        stream = path.read_bytes()
        requests += [block + END for block in stream[:-2].split(END)]
    return requests


def run(protocol: Protocol, transport: StringTransport, reads: list[bytes], total: int) -> float:
    """Seconds to feed ``reads`` repeatedly until ``total`` reads are done."""
    feed = protocol.dataReceived
    clear = transport.clear
    count = len(reads)
    started = time.perf_counter()
    for n in range(total):
        feed(reads[n % count])
        if n % 1000 == 999:
            clear()
    return time.perf_counter() - started


def bare() -> tuple[Protocol, StringTransport]:
    protocol = BareResponder()
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def policy() -> tuple[Protocol, StringTransport]:
    factory = PolicyFactory(TrivialHandler(), Stats(), Limits(), Clock())
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def measure(
    make: Callable[[], tuple[Protocol, StringTransport]], reads: list[bytes], total: int
) -> float:
    """Requests per second for one fresh connection fed ``total`` reads."""
    protocol, transport = make()
    per_read = sum(read.count(END) for read in reads) / len(reads)
    return total * per_read / run(protocol, transport, reads, total)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench_protocol")
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    requests = sample_requests()
    size = sum(map(len, requests)) / len(requests)
    print(f"{len(requests)} sample requests, {size:.0f} bytes on average")
    scenarios = {
        "one request per read (Postfix lockstep)": requests,
        "ten requests per read": [b"".join(requests[i : i + 10]) for i in range(len(requests))],
    }
    for name, reads in scenarios.items():
        per_read = sum(read.count(END) for read in reads) / len(reads)
        total = int(args.requests / per_read)
        best = {"bare": 0.0, "policy": 0.0}
        for _ in range(args.rounds):  # alternate, keep the best of each
            best["bare"] = max(best["bare"], measure(bare, reads, total))
            best["policy"] = max(best["policy"], measure(policy, reads, total))
        print(
            f"{name}: bare {best['bare']:,.0f} req/s ({1e6 / best['bare']:.2f} µs), "
            f"protocol {best['policy']:,.0f} req/s ({1e6 / best['policy']:.2f} µs), "
            f"ratio {best['policy'] / best['bare']:.2f}, "
            f"protocol cost {1e6 / best['policy'] - 1e6 / best['bare']:.2f} µs/request"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
