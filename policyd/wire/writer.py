"""Replies out: held until the end of the reactor turn, then straight to the socket.

Postfix waits for each reply before it sends the next request, so in the common case Twisted's
write buffer is empty and a reply can go to the kernel with one ``send``, without Twisted's
buffer, its second reactor turn and its two epoll updates per reply.

*When* it goes matters too. Sending each reply the moment it is answered wakes its client in
the middle of the turn, and on a busy server the client's next request then competes for the
CPU with the connections still waiting to be read. The replies of one turn are therefore held
and sent together when the turn's reads are done (``EndOfTurn``), one ``send`` per connection:
under load (50 lockstep connections) this costs about a quarter less CPU per request than
sending each at once; with one request per turn it only moves the ``send`` to the end of the
same turn.

Anything the kernel does not take at once, and every write while data is already queued, goes
through ``transport.write`` as usual, so replies stay in order and back-pressure
(``registerProducer``) works as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import tcp

#: The parts of ``twisted.internet.abstract.FileDescriptor`` the direct path reads: the socket
#: and the two halves of Twisted's write buffer (``tests/test_writer.py`` checks they exist on
#: a real TCP connection of the installed Twisted).
_NEEDED = ("socket", "dataBuffer", "_tempDataLen")


def direct_socket(transport: object) -> Any:
    """The socket of a plain Twisted TCP or UNIX connection, else None (TLS, test transports)."""
    if not isinstance(transport, tcp.Connection):
        return None
    if not all(hasattr(transport, name) for name in _NEEDED):
        return None
    return transport.socket


class EndOfTurn:
    """Runs callables when the reactor's current turn has done its I/O, all of them in one
    ``callLater(0)`` per turn (the connections' held replies and the log's flush share it).

    ``call_later`` is the reactor's ``callLater``. Callables given with ``end_of_turn(f)`` run
    in the order given, then those given with ``end_of_turn.last(f)``: the replies go out before
    the log is written, since Postfix waits for a reply and nobody waits for a log line. A
    callable given while they run goes to the next turn.
    """

    __slots__ = ("_call_later", "_calls", "_last")

    def __init__(self, call_later: Callable[..., object]) -> None:
        self._call_later = call_later
        self._calls: list[Callable[[], None]] = []
        self._last: list[Callable[[], None]] = []

    def __call__(self, call: Callable[[], None]) -> None:
        """Run ``call`` at the end of this turn."""
        if not self._calls and not self._last:  # the turn's first: its one timed call
            self._call_later(0, self._run)
        self._calls.append(call)

    def last(self, call: Callable[[], None]) -> None:
        """Run ``call`` at the end of this turn, after every ``end_of_turn(f)`` of the turn."""
        if not self._calls and not self._last:
            self._call_later(0, self._run)
        self._last.append(call)

    def _run(self) -> None:
        calls, self._calls = self._calls, []
        last, self._last = self._last, []
        error: Exception | None = None
        for call in calls + last if last else calls:
            try:
                call()
            except Exception as raised:  # the others still run: one failure loses no replies
                error = error or raised
        if error is not None:
            raise error  # Twisted logs it as an unhandled error in a timed call


class ReplyWriter:
    """Writes one connection's replies, bypassing Twisted's buffer whenever that keeps order.

    With an ``end_of_turn`` (an ``EndOfTurn``) the replies wait for the end of the reactor
    turn; without one they are sent at once.
    """

    __slots__ = ("_end_of_turn", "_held", "_socket", "_transport")

    def __init__(
        self, transport: Any, end_of_turn: Callable[[Callable[[], None]], object] | None = None
    ) -> None:
        """``transport`` is the connection's ``ITransport``; plain TCP and UNIX connections of
        ``twisted.internet.tcp``/``unix`` get the direct path, any other transport (TLS, a test
        double) only ``transport.write``, at once."""
        self._transport = transport
        self._socket: Any = direct_socket(transport)
        self._end_of_turn = end_of_turn if self._socket is not None else None
        self._held: list[bytes] = []

    @property
    def direct(self) -> bool:
        """True when replies may go straight to the socket."""
        return self._socket is not None

    @property
    def held(self) -> int:
        """Bytes written and not yet sent (waiting for the end of the turn)."""
        return sum(len(data) for data in self._held)

    def write(self, data: bytes) -> None:
        """Send ``data`` after every byte written before it (at the end of the turn when there
        is an ``end_of_turn``); never raises for a dead peer."""
        end_of_turn = self._end_of_turn
        if end_of_turn is None:
            self._send(data)
            return
        if not self._held:
            end_of_turn(self.flush)
        self._held.append(data)

    def flush(self) -> None:
        """Send what is held now (the end of the turn, or a close that must not lose it)."""
        held = self._held
        if held:
            self._held = []
            self._send(held[0] if len(held) == 1 else b"".join(held))

    def discard(self) -> None:
        """Forget what is held (the connection is gone or aborted)."""
        self._held = []

    def _send(self, data: bytes) -> None:
        sock = self._socket
        if sock is not None:
            transport = self._transport
            if not transport.dataBuffer and not transport._tempDataLen:
                try:
                    sent = sock.send(data)
                except OSError:  # EAGAIN, EPIPE, ECONNRESET: Twisted's path handles each one
                    sent = 0
                if sent == len(data):
                    return
                data = data[sent:]
        self._transport.write(data)
