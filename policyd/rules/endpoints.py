"""Which next hops are Microsoft 365, and of which kind: one list for routing, doctor, outcomes.

A Postfix next hop (``[host]:port``, ``host:port``, ``host``, or a comma/space separated list of
them, as ``relayhost`` allows since Postfix 3.5) is classified by its host name:

- ``RELAY``: a connector-relay endpoint, where the relay rule (``policyd.rules.predict``)
  applies: host names under ``mail.protection.outlook.com``, ``mx.microsoft`` (the MX hosts
  Microsoft 365 provisions for new accepted domains since 2025, e.g.
  ``contoso-com.a-v1.mx.microsoft``), ``mail.protection.office365.us`` (GCC High / DoD) and
  ``mail.protection.partner.outlook.cn`` (21Vianet).
- ``LEGACY``: retired smart hosts (``mail.messaging.microsoft.com``,
  ``mail.global.frontbridge.com``) that still reach Microsoft 365 but defer every message with
  ``451 4.4.62 Mail sent to the wrong Office 365 region. ATTR35``.
- ``SUBMISSION``: the client-submission hosts (``smtp.office365.com``, ``smtp.office365.us``,
  ``smtp-legacy.office365.com``), where SMTP AUTH decides, not connectors.
- ``OTHER``: anything else (a bare domain without brackets is looked up in DNS by Postfix; we do
  no DNS, so it is judged by its name alone).

Sources: Microsoft's "Set up connectors to route mail" and the 2025 announcements of the
``mx.microsoft`` MX hosts; the sovereign-cloud service descriptions; the "wrong Office 365
region" article for ATTR35 (see ``docs/relay-rules.md``). Pure: no DNS, no I/O.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass

#: Kinds of next hop.
RELAY = "relay"
LEGACY = "legacy"
SUBMISSION = "submission"
OTHER = "other"

#: Domains whose hosts are Microsoft 365 connector-relay endpoints (inbound MX hosts).
RELAY_SUFFIXES: tuple[str, ...] = (
    "mail.protection.outlook.com",
    "mx.microsoft",
    "mail.protection.office365.us",
    "mail.protection.partner.outlook.cn",
)
#: Retired smart hosts: they reach Microsoft 365, which defers with 4.4.62 ATTR35.
LEGACY_HOSTS: tuple[str, ...] = ("mail.messaging.microsoft.com", "mail.global.frontbridge.com")
#: Client-submission hosts (SMTP AUTH on port 587).
SUBMISSION_HOSTS: tuple[str, ...] = (
    "smtp.office365.com",
    "smtp.office365.us",
    "smtp-legacy.office365.com",
)
#: The reply Microsoft 365 gives to mail sent through a retired smart host.
WRONG_REGION_REPLY = "451 4.4.62 Mail sent to the wrong Office 365 region. ATTR35"

#: Globs for the outcome watcher's default ``relay_hosts``: every relay, legacy and
#: client-submission endpoint (SPEC §5.4: SMTP AUTH replies are compared too).
RELAY_HOST_GLOBS: tuple[str, ...] = (
    tuple(f"*.{suffix}" for suffix in RELAY_SUFFIXES) + LEGACY_HOSTS + SUBMISSION_HOSTS
)

_BRACKETED = re.compile(r"\[([^\]]*)\](?::(\S*))?")


@dataclass(frozen=True, slots=True)
class Hop:
    """One destination of a next hop: ``host`` lower case without brackets or trailing dot."""

    host: str
    port: str  # "" when none was written (Postfix then uses the service's default, 25 for smtp)
    bracketed: bool  # [host]: no MX lookup

    def __str__(self) -> str:
        text = f"[{self.host}]" if self.bracketed else self.host
        return f"{text}:{self.port}" if self.port else text


def parse_nexthop(nexthop: str) -> tuple[Hop, ...]:
    """Split a Postfix next hop (or list of them) into hops; an empty text gives ``()``.

    ``[host]:port`` and ``[host]`` are bracketed; ``host:port`` and ``host`` are not. An
    ``inet:`` prefix (``smtp:inet:host:port`` forms) is dropped.
    """
    hops: list[Hop] = []
    for item in re.split(r"[\s,]+", nexthop.strip()):
        if not item:
            continue
        destination = item.removeprefix("inet:")
        match = _BRACKETED.fullmatch(destination)
        if match:
            hops.append(Hop(_host(match.group(1)), match.group(2) or "", True))
            continue
        host, colon, port = destination.rpartition(":")
        if colon and port.isdigit() and host:
            hops.append(Hop(_host(host), port, False))
        else:
            hops.append(Hop(_host(destination), "", False))
    return tuple(hops)


def _host(text: str) -> str:
    return text.strip().lower().rstrip(".")


def classify_host(host: str, extra_relay_globs: Iterable[str] = ()) -> str:
    """``RELAY``, ``LEGACY``, ``SUBMISSION`` or ``OTHER`` for one host name.

    ``extra_relay_globs`` are shell globs (a tenant's ``endpoints``) that also count as relay
    endpoints.
    """
    name = _host(host)
    if not name:
        return OTHER
    if name in SUBMISSION_HOSTS:
        return SUBMISSION
    if name in LEGACY_HOSTS:
        return LEGACY
    for suffix in RELAY_SUFFIXES:
        if name.endswith("." + suffix):
            return RELAY
    for pattern in extra_relay_globs:
        if fnmatch.fnmatchcase(name, pattern.strip().lower()):
            return RELAY
    return OTHER


def classify_nexthop(nexthop: str, extra_relay_globs: Iterable[str] = ()) -> str:
    """The kind of a next hop: that of its first destination (``OTHER`` when empty).

    Postfix tries a list's destinations in order; the first is where mail normally goes, and
    doctor reports lists whose destinations differ in kind.
    """
    hops = parse_nexthop(nexthop)
    return classify_host(hops[0].host, extra_relay_globs) if hops else OTHER
