"""Where the load goes: endpoint parsing, connected sockets, the open-files limit."""

from __future__ import annotations

import resource
import socket
from dataclasses import dataclass
from typing import Any


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
