"""Replies out: straight to the socket when nothing is queued ahead of them.

Postfix waits for each reply before it sends the next request, so in the common case Twisted's
write buffer is empty and the reply can go to the kernel at once, which saves a reactor turn and
two epoll updates per request. Anything the kernel does not take at once, and every write while
data is already queued, goes through ``transport.write`` as usual, so replies stay in order and
back-pressure (``registerProducer``) works as before.
"""

from __future__ import annotations

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


class ReplyWriter:
    """Writes one connection's replies, bypassing Twisted's buffer whenever that keeps order."""

    __slots__ = ("_socket", "_transport")

    def __init__(self, transport: Any) -> None:
        """``transport`` is the connection's ``ITransport``; plain TCP and UNIX connections of
        ``twisted.internet.tcp``/``unix`` get the direct path, any other transport (TLS, a test
        double) only ``transport.write``."""
        self._transport = transport
        self._socket: Any = direct_socket(transport)

    @property
    def direct(self) -> bool:
        """True when replies may go straight to the socket."""
        return self._socket is not None

    def write(self, data: bytes) -> None:
        """Send ``data`` after every byte written before it; never raises for a dead peer."""
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
