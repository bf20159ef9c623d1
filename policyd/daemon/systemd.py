"""Tell systemd how the service is doing (``sd_notify``), for ``Type=notify`` units.

systemd passes the address of its notification socket in ``$NOTIFY_SOCKET``: a path, or an
abstract socket name written with a leading ``@``. We send one datagram per state change:
``READY=1`` once every endpoint listens, ``RELOADING=1`` (with ``MONOTONIC_USEC``, which
systemd 253 and later require for ``Type=notify-reload`` and accept everywhere) and again
``READY=1`` around a reload, ``STOPPING=1`` when shutting down. Without ``$NOTIFY_SOCKET``
(run by hand, in tests) every call is a no-op. A failure to notify is never fatal: the
daemon's job is answering Postfix, not talking to systemd.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping

#: The states we send, spelled as sd_notify(3) spells them.
READY = "READY=1"
RELOADING = "RELOADING=1"
STOPPING = "STOPPING=1"


def monotonic_usec() -> int:
    """``CLOCK_MONOTONIC`` in microseconds: the clock systemd compares ``MONOTONIC_USEC`` with."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def notify_address(environ: Mapping[str, str] | None = None) -> str | bytes | None:
    """The notification socket address from ``$NOTIFY_SOCKET``, or None when there is none.

    A leading ``@`` names a Linux abstract socket, which the kernel addresses with a NUL byte
    in its place. Anything that is neither a path nor an abstract name is ignored (systemd
    also documents ``vsock:`` addresses, which a service on the host never receives).
    """
    env = os.environ if environ is None else environ
    value = env.get("NOTIFY_SOCKET", "")
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def sd_notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (``"READY=1"``, several lines allowed) to systemd.

    Returns True when a datagram was sent, False when there is no notification socket or the
    send failed (the failure is not raised: notification is best effort).
    """
    address = notify_address(environ)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True


class Notifier:
    """The three moments ``serve`` reports, with the clock and transport injectable for tests."""

    def __init__(
        self,
        send: Callable[[str], bool] = sd_notify,
        monotonic: Callable[[], int] = monotonic_usec,
    ) -> None:
        self._send = send
        self._monotonic = monotonic

    def ready(self, status: str = "") -> bool:
        """Every endpoint listens (or a reload finished): systemd may start dependent units."""
        return self._send(READY + (f"\nSTATUS={status}" if status else ""))

    def reloading(self) -> bool:
        """A reload starts; ``ready()`` must follow when it is over, whatever its result."""
        return self._send(f"{RELOADING}\nMONOTONIC_USEC={self._monotonic()}")

    def stopping(self) -> bool:
        """Shutdown has begun."""
        return self._send(STOPPING)
