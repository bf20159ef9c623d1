"""Listening endpoints: Twisted endpoint strings with safe defaults, and errors one can act on.

``parse_endpoint`` turns a ``server.listen``/``server.metrics`` string into an endpoint; a tcp
or unix endpoint without ``backlog=`` gets ``LISTEN_BACKLOG``, a unix endpoint without
``mode=`` gets 0660 (issue 16), and ``exposed`` says what a tcp endpoint exposes beyond
loopback, for the start-up warning.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from typing import Any

import twisted
from twisted.internet.endpoints import serverFromString

from policyd.constants import EXIT_CONFIG, EXIT_LISTEN
from policyd.errors import ConfigError

# Twisted's reactor and endpoints are zope interfaces, which mypy cannot check without the
# mypy-zope plugin; these aliases say what is meant where the type has to be ``Any``.
Reactor = Any  # IReactorCore + IReactorTime + IReactorTCP/UNIX/Socket
Endpoint = Any  # IStreamServerEndpoint

ENDPOINT_HELP = (
    'use e.g. "tcp:10040:interface=127.0.0.1", "unix:/run/m365-policyd/policy.sock:mode=660" '
    'or "systemd:domain=INET:index=0"'
)


class ListenError(Exception):
    """An endpoint could not be set up; ``status`` is the exit status to use (1 or 78)."""

    def __init__(self, message: str, status: int = EXIT_LISTEN) -> None:
        super().__init__(message)
        self.status = status


#: Listen queue of ``tcp:``/``unix:`` endpoints that set no ``backlog=``. Twisted's default of
#: 50 overflows when many smtpd processes connect at once (after a restart, say); the kernel
#: then drops their SYNs and each such client stalls a second or more before it retries.
#: Linux caps the value at ``net.core.somaxconn``.
LISTEN_BACKLOG = 1024


#: A ``unix:`` endpoint without ``mode=`` gets this (Twisted's default is 0666: any local user
#: could ask, or flood, the daemon; issue 16). Postfix connects as a member of the group.
UNIX_MODE = "660"


def with_backlog(description: str) -> str:
    """``description``, plus ``backlog=LISTEN_BACKLOG`` for a tcp or unix endpoint without one
    and ``mode=UNIX_MODE`` (0660) for a unix endpoint without a mode."""
    kind = description.split(":", 1)[0].strip().lower()
    if kind == "unix" and "mode=" not in description:
        description = f"{description}:mode={UNIX_MODE}"
    if kind in ("tcp", "tcp6", "unix") and "backlog=" not in description:
        return f"{description}:backlog={LISTEN_BACKLOG}"
    return description


def exposed(description: str) -> str | None:
    """The interface a ``tcp:``/``tcp6:`` endpoint binds when it is not loopback ("every
    interface" when none is given), else None (unix, systemd, loopback): issue 16's warning."""
    kind = description.split(":", 1)[0].strip().lower()
    if kind not in ("tcp", "tcp6"):
        return None
    match = _INTERFACE.search(description)
    interface = match.group(1).replace("\\:", ":").strip("[]") if match else ""
    if interface in ("", "0.0.0.0", "::"):
        return "every interface"
    if interface == "localhost":
        return None
    try:
        return None if ipaddress.ip_address(interface).is_loopback else interface
    except ValueError:
        return interface


_INTERFACE = re.compile(r"interface=((?:\\:|[^:])*)")


#: Twisted 22.10 added ``systemd:...:name=NAME`` (the unit's ``FileDescriptorName=``); Debian 12
#: ships 22.4, which knows only ``index=``, so ``systemd_by_index`` translates for it.
TWISTED_SYSTEMD_NAMES = tuple(int(n) for n in twisted.__version__.split(".")[:2]) >= (22, 10)


def systemd_by_index(description: str, environ: Mapping[str, str]) -> str:
    """``systemd:...:name=NAME`` rewritten as ``systemd:...:index=N`` for Twisted < 22.10.

    N is NAME's position in ``$LISTEN_FDNAMES`` (colon-separated, one name per passed socket,
    sd_listen_fds_with_names(3)). Other descriptions are returned unchanged. Raises KeyError
    when systemd passed no socket of that name, as Twisted's own ``name=`` lookup does.
    """
    kind, _, rest = description.partition(":")
    if kind.strip().lower() != "systemd":
        return description
    parts = rest.split(":")
    named = [i for i, part in enumerate(parts) if part.startswith("name=")]
    if not named:
        return description
    name = parts[named[-1]].removeprefix("name=")
    names = environ.get("LISTEN_FDNAMES", "").split(":")
    if name not in names:
        raise KeyError(name)
    parts[named[-1]] = f"index={names.index(name)}"
    return f"{kind}:{':'.join(parts)}"


def parse_endpoint(reactor: Reactor, description: str, config_file: str, key: str) -> Endpoint:
    """``serverFromString`` with errors an administrator can act on.

    An unparseable string is a configuration error (exit 78); a ``systemd:`` endpoint whose
    socket systemd did not pass is a listen failure (exit 1). A tcp or unix endpoint without
    ``backlog=`` gets ``LISTEN_BACKLOG``.
    """
    try:
        parsed = description if TWISTED_SYSTEMD_NAMES else systemd_by_index(description, os.environ)
        endpoint: Endpoint = serverFromString(reactor, with_backlog(parsed))  # type: ignore[no-untyped-call]  # untyped in Twisted
    except (IndexError, KeyError) as error:
        if description.startswith("systemd:"):
            raise ListenError(
                f"cannot listen on {description!r} ({key}): systemd passed no such socket "
                "(start the service through m365-policyd.socket; LISTEN_FDS/LISTEN_PID/"
                "LISTEN_FDNAMES are missing or meant for another process)"
            ) from error
        raise ListenError(
            str(
                ConfigError(
                    config_file,
                    key,
                    f"invalid endpoint {description!r}: {error!r}; {ENDPOINT_HELP}",
                )
            ),
            EXIT_CONFIG,
        ) from error
    except Exception as error:  # serverFromString raises ValueError, TypeError, ... for typos
        raise ListenError(
            str(
                ConfigError(
                    config_file, key, f"invalid endpoint {description!r}: {error}; {ENDPOINT_HELP}"
                )
            ),
            EXIT_CONFIG,
        ) from error
    return endpoint
