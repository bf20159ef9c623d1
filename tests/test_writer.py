"""The direct reply writer and the end-of-turn sender on real loopback connections of a real
(private) Twisted reactor."""

from __future__ import annotations

import io
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import error
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from policyd.wire.writer import EndOfTurn, ReplyWriter


class Holder(Protocol):
    """Keeps a ReplyWriter on its transport and counts what went through ``transport.write``."""

    def __init__(self, connections: list[Holder]) -> None:
        self.connections = connections
        self.writer: ReplyWriter | None = None
        self.buffered: list[bytes] = []
        self.lost = False

    def connectionMade(self) -> None:  # noqa: N802 - Twisted callback name
        transport: Any = self.transport
        twisted_write = transport.write

        def counted(data: bytes) -> None:
            self.buffered.append(data)
            twisted_write(data)

        transport.write = counted  # the writer's fallback, spied on
        self.writer = ReplyWriter(transport)
        self.connections.append(self)

    def connectionLost(self, reason: object = None) -> None:  # noqa: N802 - Twisted name
        self.lost = True


class Loopback:
    """A private epoll reactor with one listening port, pumped by hand."""

    def __init__(self) -> None:
        self.reactor: Any = EPollReactor()
        self.connections: list[Holder] = []
        self.factory = Factory.forProtocol(lambda: Holder(self.connections))

    def pump(self, until: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not until():
            assert time.monotonic() < deadline, "the reactor never got there"
            self.reactor.iterate(0.01)

    def connect_tcp(self) -> tuple[socket.socket, Holder]:
        port = self.reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        client = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=10)
        self.pump(lambda: bool(self.connections))
        return client, self.connections[-1]

    def connect_unix(self, path: Path) -> tuple[socket.socket, Holder]:
        self.reactor.listenUNIX(str(path), self.factory)
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(10)
        client.connect(str(path))
        self.pump(lambda: bool(self.connections))
        return client, self.connections[-1]

    def close(self) -> None:
        reactor = self.reactor
        for call in reactor.getDelayedCalls():
            call.cancel()
        for reader in list(getattr(reactor, "_internalReaders", ())):
            reactor.removeReader(reader)
            reader.connectionLost(None)
        for selectable in reactor.removeAll():
            selectable.connectionLost(Failure(error.ConnectionDone()))
        reactor._poller.close()


@pytest.fixture
def loopback() -> Iterator[Loopback]:
    world = Loopback()
    try:
        yield world
    finally:
        world.close()


def test_a_reply_goes_to_the_socket_at_once_without_twisted(loopback: Loopback) -> None:
    """With nothing queued, the reply is in the kernel when write returns: the client reads it
    without the reactor turning, and Twisted's buffer was never used."""
    client, server = loopback.connect_tcp()
    assert server.writer is not None and server.writer.direct
    server.writer.write(b"action=DUNNO\n\n")
    assert client.recv(100) == b"action=DUNNO\n\n"
    assert server.buffered == []
    client.close()


def test_what_the_kernel_refuses_goes_through_twisted_in_order(loopback: Loopback) -> None:
    """A client that stops reading fills the kernel's buffers: the rest is queued by Twisted,
    and a write made after the kernel has room again still queues behind it, so the client
    reads every byte in order."""
    client, server = loopback.connect_tcp()
    assert server.writer is not None
    chunks = [struct.pack(">I", n) * 4096 for n in range(400)]  # 16 KiB each, 6.4 MB in all
    for chunk in chunks[:300]:
        server.writer.write(chunk)
    assert server.buffered, "the kernel took 4.8 MB without reading: the test proves nothing"
    received = bytearray()
    while len(received) < 1 << 20:  # room in the kernel, while Twisted still holds data
        received += client.recv(1 << 20)
    for chunk in chunks[300:]:
        server.writer.write(chunk)
    expected = b"".join(chunks)
    client.setblocking(False)
    while len(received) < len(expected):
        loopback.reactor.iterate(0)
        try:
            received += client.recv(1 << 20)
        except BlockingIOError:
            time.sleep(0.001)
    assert bytes(received) == expected
    client.close()


def test_a_write_to_a_peer_that_is_gone_does_not_raise(loopback: Loopback) -> None:
    """A reset connection makes the direct send fail; Twisted's path takes over and reports the
    loss through connectionLost, never as an exception to the caller."""
    client, server = loopback.connect_tcp()
    assert server.writer is not None
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # RST
    time.sleep(0.05)
    for _ in range(3):
        server.writer.write(b"action=DUNNO\n\n")
    loopback.pump(lambda: server.lost)


def test_unix_connections_write_directly_too(loopback: Loopback, tmp_path: Path) -> None:
    """Postfix's private/ unix sockets get the same direct path as TCP."""
    client, server = loopback.connect_unix(tmp_path / "policy.sock")
    assert server.writer is not None and server.writer.direct
    server.writer.write(b"action=DUNNO\n\n")
    assert client.recv(100) == b"action=DUNNO\n\n"
    assert server.buffered == []
    client.close()


def test_other_transports_get_only_transport_write() -> None:
    """A transport without a plain socket (TLS, a test double) is written through as usual."""
    transport = StringTransport()
    writer = ReplyWriter(transport)
    assert not writer.direct
    writer.write(b"action=DUNNO\n\n")
    assert transport.value() == b"action=DUNNO\n\n"


class ManualTurn:
    """The reactor's ``callLater(0, f)`` as a list the test runs by hand: one entry per turn."""

    def __init__(self) -> None:
        self.calls: list[Callable[[], None]] = []
        self.sender = EndOfTurn(self.schedule)

    def schedule(self, delay: float, call: Callable[[], None]) -> None:
        self.calls.append(call)

    def end(self) -> None:
        calls, self.calls = self.calls, []
        for call in calls:
            call()


def received_now(client: socket.socket) -> bytes:
    """What the kernel already holds for ``client`` (nothing: b"")."""
    client.setblocking(False)
    try:
        return client.recv(1 << 16)
    except BlockingIOError:
        return b""
    finally:
        client.setblocking(True)


def test_replies_of_a_turn_wait_for_its_end_then_go_out_in_order(loopback: Loopback) -> None:
    """With an EndOfTurn, replies are held while the turn reads, then sent together in order,
    still without Twisted's buffer; one end-of-turn call serves every connection."""
    turn = ManualTurn()
    first, server_one = loopback.connect_tcp()
    second, _ = loopback.connect_tcp()
    loopback.pump(lambda: len(loopback.connections) == 2)
    server_two = loopback.connections[1]
    assert server_two is not server_one
    one = ReplyWriter(server_one.transport, turn.sender)
    two = ReplyWriter(server_two.transport, turn.sender)
    one.write(b"action=DUNNO\n\n")
    two.write(b"action=OK\n\n")
    one.write(b"action=450 4.7.64 later\n\n")
    assert len(turn.calls) == 1  # one call for the whole turn
    assert one.held == len(b"action=DUNNO\n\n") + len(b"action=450 4.7.64 later\n\n")
    time.sleep(0.01)
    assert received_now(first) == b"" and received_now(second) == b""
    turn.end()
    assert first.recv(100) == b"action=DUNNO\n\naction=450 4.7.64 later\n\n"
    assert second.recv(100) == b"action=OK\n\n"
    assert one.held == 0 and two.held == 0
    assert server_one.buffered == [] and server_two.buffered == []
    one.write(b"action=DUNNO\n\n")  # the next turn schedules its own call
    assert len(turn.calls) == 1
    first.close()
    second.close()


def test_flush_sends_what_is_held_at_once_and_discard_drops_it(loopback: Loopback) -> None:
    """A close flushes the turn's replies before closing; an abort discards them."""
    turn = ManualTurn()
    client, server = loopback.connect_tcp()
    writer = ReplyWriter(server.transport, turn.sender)
    writer.write(b"action=DUNNO\n\n")
    writer.flush()
    assert client.recv(100) == b"action=DUNNO\n\n"
    writer.write(b"action=OK\n\n")
    writer.discard()
    turn.end()  # the turn's call finds nothing left
    time.sleep(0.01)
    assert received_now(client) == b""
    client.close()


def test_a_turn_never_holds_replies_for_transports_without_a_socket() -> None:
    """TLS or test transports are written at once even when an EndOfTurn is given."""
    turn = ManualTurn()
    transport = StringTransport()
    writer = ReplyWriter(transport, turn.sender)
    writer.write(b"action=DUNNO\n\n")
    assert transport.value() == b"action=DUNNO\n\n"
    assert turn.calls == []


def test_a_close_sends_the_turns_replies_before_the_end_of_file(loopback: Loopback) -> None:
    """The whole protocol on a real reactor, its turn's end withheld: the replies stay held
    until the turn ends, except on a connection closed for a malformed request, whose replies
    to the requests before it are flushed by the close, ahead of the end of file."""
    from policyd.engine.stats import Stats
    from policyd.wire.protocol import PolicyFactory
    from tests.test_protocol import Limits, RecordingHandler

    handler = RecordingHandler()
    factory = PolicyFactory(handler, Stats(), Limits(), loopback.reactor)  # type: ignore[arg-type]
    turn = ManualTurn()
    factory.end_of_turn = turn.sender  # the end of the turn comes only when the test says so
    port = loopback.reactor.listenTCP(0, factory, interface="127.0.0.1")
    address = ("127.0.0.1", port.getHost().port)
    good = socket.create_connection(address, timeout=10)
    bad = socket.create_connection(address, timeout=10)
    good.sendall(b"request=smtpd_access_policy\nprotocol_state=RCPT\n\n")
    bad.sendall(b"request=smtpd_access_policy\nprotocol_state=RCPT\n\nno equals sign\n\n")
    loopback.pump(lambda: len(handler.seen) == 2 and factory.open_count == 1)
    assert bad.recv(100).startswith(b"action=INFO request ")
    assert bad.recv(100) == b""  # then the end of file
    assert received_now(good) == b""  # held: its turn has not ended
    turn.end()
    assert good.recv(100).startswith(b"action=INFO request ")
    good.close()
    bad.close()
    port.stopListening()


def test_end_of_turn_runs_everything_given_in_a_turn_with_one_timed_call() -> None:
    """The log's flush and the replies' sender share one ``callLater(0)`` per turn; they run in
    the order given, ``last`` ones (the log) after all others (the replies) whenever they were
    given, and what is given while they run waits for the next turn."""
    from twisted.internet.task import Clock

    from policyd.wire.writer import EndOfTurn

    clock = Clock()
    end_of_turn = EndOfTurn(clock.callLater)
    ran: list[str] = []
    end_of_turn.last(lambda: ran.append("log"))
    end_of_turn(lambda: ran.append("replies 1"))
    end_of_turn(lambda: ran.append("replies 2"))
    end_of_turn(lambda: end_of_turn(lambda: ran.append("next turn")))
    assert len(clock.getDelayedCalls()) == 1
    one_turn(clock)
    assert ran == ["replies 1", "replies 2", "log"]
    assert len(clock.getDelayedCalls()) == 1
    one_turn(clock)
    assert ran == ["replies 1", "replies 2", "log", "next turn"]
    assert clock.getDelayedCalls() == []
    end_of_turn.last(lambda: ran.append("log alone"))  # a turn with only log lines
    assert len(clock.getDelayedCalls()) == 1
    one_turn(clock)
    assert ran[-1] == "log alone"
    assert clock.getDelayedCalls() == []


def one_turn(clock: Any) -> None:
    """Run the timed calls due now, not the ones they add (``Clock.advance`` would run those
    too, where a reactor leaves them for its next turn)."""
    due = list(clock.calls)
    for call in due:
        clock.calls.remove(call)
        call.func(*call.args, **call.kw)


def test_a_turns_log_lines_are_written_after_its_replies_are_sent() -> None:
    """``serve`` gives the log output ``EndOfTurn.last``: a prediction line is made before its
    reply (the engine logs, then answers), yet at the end of the turn the reply goes first,
    since Postfix waits for it and nobody waits for the log."""
    from policyd.daemon.log import LogOutput

    order: list[str] = []

    class Stdout(io.StringIO):
        def write(self, text: str) -> int:
            order.append("log")
            return super().write(text)

    turn = ManualTurn()
    output = LogOutput(Stdout(), timestamps=False, schedule=turn.sender.last)
    output.emit({"event": "prediction", "queue_id": "4Q1", "verdict": "accept"})
    turn.sender(lambda: order.append("reply"))  # a connection's ReplyWriter.flush
    assert order == []
    turn.end()
    assert order == ["reply", "log"]


def test_the_factory_sends_its_replies_at_the_end_of_turn_it_is_given() -> None:
    """``serve`` hands the policy factory the log output's EndOfTurn: one timed call per turn
    does both."""
    from twisted.internet.task import Clock

    from policyd.engine.stats import Stats
    from policyd.wire.protocol import PolicyFactory
    from policyd.wire.writer import EndOfTurn
    from tests.test_protocol import Limits, RecordingHandler

    clock = Clock()
    end_of_turn = EndOfTurn(clock.callLater)
    factory = PolicyFactory(RecordingHandler(), Stats(), Limits(), clock, end_of_turn)  # type: ignore[arg-type]
    flushed: list[bool] = []

    class Held:
        """Stands in for a connection's ReplyWriter with replies waiting."""

        def flush(self) -> None:
            flushed.append(True)

    factory.end_of_turn(Held().flush)
    end_of_turn(lambda: flushed.append(False))
    assert len(clock.getDelayedCalls()) == 1
    one_turn(clock)
    assert flushed == [True, False]


def test_end_of_turn_runs_the_others_when_one_fails() -> None:
    """A failing callable (a bug) does not cost the turn's other replies; its error is raised
    afterwards for Twisted to log."""
    from twisted.internet.task import Clock

    from policyd.wire.writer import EndOfTurn

    clock = Clock()
    end_of_turn = EndOfTurn(clock.callLater)
    ran: list[str] = []

    def broken() -> None:
        raise RuntimeError("a bug")

    end_of_turn(broken)
    end_of_turn(lambda: ran.append("replies"))
    with pytest.raises(RuntimeError, match="a bug"):
        one_turn(clock)
    assert ran == ["replies"]
