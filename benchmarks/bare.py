"""A bare Twisted policy responder: the yardstick ``make bench`` measures the daemon against.

It answers ``action=DUNNO`` plus a blank line for every ``\\n\\n`` it receives, without parsing
anything, so its throughput is what Twisted and the kernel cost with no policy work at all
(SPEC §9: the daemon must reach at least 0.8 times this, same generator, same run)::

    python -m benchmarks.bare --listen tcp:10041:interface=127.0.0.1

With port 0 the kernel picks a free port; stdout names every address actually bound
(``listening on 127.0.0.1:PORT``, one line per ``--listen``), so a driver can read it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from twisted.internet import endpoints
from twisted.internet.protocol import Factory, Protocol

REPLY = b"action=DUNNO\n\n"
END = b"\n\n"

#: Bytes kept while waiting for a request's end; a peer sending more without ``\n\n`` is cut off.
MAX_PENDING = 1 << 20


class BareResponder(Protocol):
    """Counts request terminators and answers each with DUNNO, in one write per read."""

    def __init__(self) -> None:
        self._pending = b""

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's method name
        buffer = self._pending + data if self._pending else data
        count = buffer.count(END)
        transport: Any = self.transport  # zope interfaces are opaque to mypy without a plugin
        if count:
            transport.write(REPLY * count)
            buffer = buffer[buffer.rfind(END) + 2 :]
        if len(buffer) > MAX_PENDING:
            transport.loseConnection()
            buffer = b""
        self._pending = buffer


class BareFactory(Factory):
    """One ``BareResponder`` per connection."""

    protocol = BareResponder


def describe(port: Any) -> str:
    """``HOST:PORT`` (or the socket path) that a listening port (IListeningPort) is bound to."""
    address = port.getHost()
    host = getattr(address, "host", None)
    if host is not None:
        return f"{host}:{address.port}"
    return str(getattr(address, "name", address))


def main(argv: Sequence[str] | None = None) -> int:
    """Listen on ``--listen`` (a Twisted server endpoint string) until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bare",
        description="Answer action=DUNNO to every policy request without parsing it.",
    )
    parser.add_argument(
        "--listen",
        action="append",
        metavar="ENDPOINT",
        help="Twisted server endpoint, may be repeated (default: a free loopback TCP port)",
    )
    args = parser.parse_args(argv)
    listen = args.listen or ["tcp:0:interface=127.0.0.1"]

    # imported here so that importing this module does not install the global reactor
    from twisted.internet import reactor as installed

    reactor: Any = installed
    status = [0]

    def listening(port: Any) -> None:
        sys.stdout.write(f"listening on {describe(port)}\n")
        sys.stdout.flush()

    def failed(failure: Any, description: str) -> None:
        sys.stderr.write(f"benchmarks.bare: cannot listen on {description}: {failure.value}\n")
        status[0] = 1
        reactor.stop()

    for description in listen:
        try:
            endpoint: Any = endpoints.serverFromString(reactor, description)  # type: ignore[no-untyped-call] # Twisted leaves it unannotated
        except (ValueError, TypeError, KeyError) as error:
            sys.stderr.write(f"benchmarks.bare: invalid --listen {description!r}: {error}\n")
            return 2
        endpoint.listen(BareFactory()).addCallbacks(listening, failed, errbackArgs=(description,))
    reactor.run()
    return status[0]


if __name__ == "__main__":
    sys.exit(main())
