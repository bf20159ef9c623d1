"""Reading one Postfix delivery line: what Microsoft 365 really answered (pure, no I/O).

``parse_delivery`` reads one Postfix log line and returns a ``Delivery`` for an smtp/lmtp
delivery attempt, ``None`` for any other line, or ``UNPARSEABLE`` for a line that starts like a
delivery line but does not parse. ``relay_matcher`` tells whether a delivery went to a
Microsoft 365 relay. The join with predictions is ``policyd.engine.outcomes``; following the
log is ``policyd.daemon.followers``.

Address-verification probes (``status=deliverable`` / ``undeliverable``) are not deliveries.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Delivery:
    """One delivery attempt as Postfix's smtp(8)/lmtp(8) (or local, pipe, ...) logged it."""

    service: str  # the syslog tag without pid: "postfix/smtp", "postfix-out/smtp"
    queue_id: str
    to: str  # the final recipient, as logged
    orig_to: str  # the original recipient ("" when Postfix logged none)
    relay: str  # as logged: "host[address]:port", "none", "local"
    relay_host: str  # "host" (or the whole value when it has no brackets)
    relay_address: str  # "address" inside the brackets, "" without
    dsn: str  # the enhanced status code: "2.6.0", "5.7.64", "4.4.62"
    status: str  # sent, deferred, bounced, ...


class Unparseable:
    """A line that looks like a delivery line but cannot be read (counted as skipped)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNPARSEABLE"


UNPARSEABLE: Final = Unparseable()


# "<tag>[pid]: <queue id>: to=<" anywhere in the line: syslog, ISO-8601 and journalctl
# prefixes all come before it; the tag is syslog_name/service ("postfix/smtp",
# "postfix-out/smtp", "postfix/relay/smtp").
_DELIVERY_START = re.compile(
    r"(?:^|\s)(?P<service>[^\s\[\]/:]+(?:/[^\s\[\]/:]+)+)\[\d+\]: (?P<queue_id>[0-9A-Za-z]+): to=<"
)


_DELIVERY_REST = re.compile(
    r"(?P<to>[^>]*)>"
    r"(?:, orig_to=<(?P<orig_to>[^>]*)>)?"
    r", relay=(?P<relay>[^\s,]+)"
    r"(?:, [a-z_]+=[^\s,]*)*?"  # conn_use=, delay=, delays=
    r", dsn=(?P<dsn>[245]\.\d{1,3}\.\d{1,3})"
    r", status=(?P<status>[A-Za-z]+)(?:\s|$)"
)


_RELAY = re.compile(r"(?P<host>[^\[\]]*)(?:\[(?P<address>[^\[\]]*)\](?::\d+)?)?")


def parse_delivery(line: str) -> Delivery | Unparseable | None:
    """Read one Postfix log line: a ``Delivery``, ``None`` (not a delivery line) or
    ``UNPARSEABLE`` (starts like a delivery line, but the rest does not parse)."""
    if ": to=<" not in line:
        return None
    start = _DELIVERY_START.search(line)
    if start is None:
        return None
    rest = _DELIVERY_REST.match(line, start.end())
    if rest is None:
        return UNPARSEABLE
    relay = rest.group("relay")
    parts = _RELAY.fullmatch(relay)
    if parts is None:
        return UNPARSEABLE
    return Delivery(
        service=start.group("service"),
        queue_id=start.group("queue_id"),
        to=rest.group("to"),
        orig_to=rest.group("orig_to") or "",
        relay=relay,
        relay_host=parts.group("host"),
        relay_address=parts.group("address") or "",
        dsn=rest.group("dsn"),
        status=rest.group("status").lower(),
    )


def relay_matcher(patterns: Iterable[str]) -> Callable[[Delivery], bool]:
    """A test "is this delivery's relay one of ``patterns``" (shell globs, case-insensitive,
    against the relay's host name and its bracketed address)."""
    compiled = [re.compile(fnmatch.translate(p.strip().lower())) for p in patterns if p.strip()]

    def matches(delivery: Delivery) -> bool:
        host = delivery.relay_host.lower().rstrip(".")
        address = delivery.relay_address.lower()
        for pattern in compiled:
            if pattern.match(host) or (address and pattern.match(address)):
                return True
        return False

    return matches
