"""The rules of single configuration keys that a type alone does not say; the schema names them.

Each check takes the key's value (already of the key's type) and the ``Key``, and returns the
value, normalised where there is a normal form (domains lower-cased, patterns stripped), or
raises ``ValueError`` whose text completes "FILE: section.key: ..." with what is wrong and what
to write instead. ``policyd.sources.config`` runs a key's check on every value it reads, the
default included. Rules that join several keys (``policy.reroute`` being required by an action)
stay in ``policyd.sources.config``.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from policyd.rules.model import ON_PREMISES, PARTNER
from policyd.sources.exports import (
    address_space_domain,
    certificate_name,
    domain_name,
    sender_ip_networks,
)

if TYPE_CHECKING:
    from policyd.sources.schema import Key

#: Twisted endpoint types a Postfix policy service or the metrics page can listen on.
ENDPOINT_TYPES = ("tcp", "tcp6", "unix", "systemd", "ssl")
#: Postfix lookup table types whose argument is a file (resolved like other paths).
FILE_TABLE_TYPES = (
    "btree",
    "cdb",
    "cidr",
    "dbm",
    "hash",
    "lmdb",
    "pcre",
    "regexp",
    "sdbm",
    "texthash",
)

_RELAY_PATTERN = re.compile(r"^[A-Za-z0-9*?!._:-]+$")  # a host name or address glob, no brackets
_HEADER_NAME = re.compile(r"^[\x21-\x39\x3b-\x7e]+$")  # RFC 5322 field-name: ftext, no colon
_REROUTE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*:\S+$")  # Postfix FILTER transport:nexthop


def choices_text(values: Sequence[str], last: str = "or") -> str:
    """``"a", "b" or "c"``; values ending in ``:`` (endpoint prefixes) stay unquoted."""
    quoted = [f'"{value}"' if not value.endswith(":") else value for value in values]
    return f"{', '.join(quoted[:-1])} {last} {quoted[-1]}"


# --- choices and numbers -----------------------------------------------------------------------


def one_of(value: str, key: Key[str]) -> str:
    """One of ``key.choices``, spelled exactly."""
    if value not in key.choices:
        raise ValueError(f"{value!r} is not allowed; write {choices_text(key.choices)}")
    return value


def fail_open_action(value: str, key: Key[str]) -> str:
    """``policy.on_error``: one of its choices, none of which refuses mail."""
    try:
        return one_of(value, key)
    except ValueError as error:
        raise ValueError(
            f"{error}: the daemon fails open, so a bug of its own must never refuse mail "
            "(policy.action decides what happens to recipients predicted to be refused)"
        ) from None


def positive(value: int, key: Key[int]) -> int:
    """An integer above zero."""
    if value <= 0:
        raise ValueError(f"must be a positive integer, got {value}")
    return value


def positive_seconds(value: float, key: Key[float]) -> float:
    """A finite number of seconds above zero."""
    return _seconds(value, strict=True)


def seconds_or_zero(value: float, key: Key[float]) -> float:
    """A finite number of seconds, zero included (zero switches something off)."""
    return _seconds(value, strict=False)


#: Bounds of ``server.max_request_bytes``: a real Postfix request is about 1 KiB (29
#: attributes; addresses are at most 256 octets by RFC 5321), so below 1 KiB real requests
#: are refused, and above 1 MiB one connection could hold that much memory unanswered.
REQUEST_BYTES_MIN = 1024
REQUEST_BYTES_MAX = 1 << 20

#: ``server.reload_interval`` below this (except 0, off) would stat every file many times a
#: second for nothing.
RELOAD_INTERVAL_MIN = 1.0


def request_bytes(value: int, key: Key[int]) -> int:
    """An integer between ``REQUEST_BYTES_MIN`` and ``REQUEST_BYTES_MAX`` (issue 16)."""
    if not REQUEST_BYTES_MIN <= value <= REQUEST_BYTES_MAX:
        raise ValueError(
            f"must be between {REQUEST_BYTES_MIN} and {REQUEST_BYTES_MAX} bytes, got {value}"
        )
    return value


def reload_seconds(value: float, key: Key[float]) -> float:
    """0 (only on SIGHUP) or at least ``RELOAD_INTERVAL_MIN`` seconds (issue 16)."""
    _seconds(value, strict=False)
    if 0 < value < RELOAD_INTERVAL_MIN:
        raise ValueError(
            f"must be 0 (only on SIGHUP) or at least {RELOAD_INTERVAL_MIN:g} s, got {value:g}"
        )
    return value


def _seconds(value: float, *, strict: bool) -> float:
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number of seconds, got {value}")
    if value < 0 or (value == 0 and strict):
        bound = "> 0" if strict else ">= 0"
        raise ValueError(f"must be {bound} seconds, got {value:g}")
    return value


# --- [server] ------------------------------------------------------------------------------------


def endpoints(value: tuple[str, ...], key: Key[tuple[str, ...]]) -> tuple[str, ...]:
    """At least one Twisted endpoint string, each of a supported type."""
    if not value:
        raise ValueError(f"is empty; list at least one endpoint, e.g. {key.example}")
    for endpoint in value:
        _endpoint(endpoint)
    return value


def endpoint_or_off(value: str, key: Key[str]) -> str:
    """A Twisted endpoint string, or "" for off."""
    if value:
        _endpoint(value)
    return value


def _endpoint(endpoint: str) -> None:
    kind, colon, rest = endpoint.partition(":")
    if colon and rest and kind in ENDPOINT_TYPES:  # Twisted's plugin names are lower case
        return
    raise ValueError(
        f"{endpoint!r} is not a Twisted endpoint of a supported type; start it with "
        f"{choices_text(tuple(t + ':' for t in ENDPOINT_TYPES))}, "
        'e.g. "tcp:10040:interface=127.0.0.1" or "unix:/run/m365-policyd/policy.sock"'
    )


# --- [tenant] ------------------------------------------------------------------------------------


def required_domain(value: str, key: Key[str]) -> str:
    """A domain name that must be given (the ``domain`` of an accepted-domain table)."""
    if not value:
        raise ValueError(f"is missing; write {key.example}")
    return domain_name(value)


def connector_name(value: str, key: Key[str]) -> str:
    """A connector's name: required, surrounding spaces dropped."""
    name = value.strip()
    if not name:
        raise ValueError(f"is missing or empty; write {key.example}")
    return name


def connector_type(value: str, key: Key[str]) -> str:
    """``OnPremises`` or ``Partner`` in any case, as Exchange spells it."""
    kind = {ON_PREMISES.lower(): ON_PREMISES, PARTNER.lower(): PARTNER}.get(value.strip().lower())
    if kind is None:
        raise ValueError(
            f'{value!r} is not a connector type; write "OnPremises" (the only type that grants '
            'relay) or "Partner"'
        )
    return kind


def sender_ip_ranges(value: tuple[str, ...], key: Key[tuple[str, ...]]) -> tuple[str, ...]:
    """Each entry an IPv4 address, CIDR range or ``a-b`` range (``SenderIPAddresses``)."""
    for entry in value:
        sender_ip_networks(entry)
    return value


def certificate_name_or_none(value: str, key: Key[str]) -> str:
    """A ``TlsSenderCertificateName`` (``*.contoso.com`` allowed), normalised; "" for none."""
    return certificate_name(value)


def address_spaces(value: tuple[str, ...], key: Key[tuple[str, ...]]) -> tuple[str, ...]:
    """Each entry an address space (``smtp:contoso.com;1``), as the domain it names."""
    return tuple(address_space_domain(entry) for entry in value)


# --- [onprem] ------------------------------------------------------------------------------------


def ip_addresses(value: tuple[str, ...], key: Key[tuple[str, ...]]) -> tuple[str, ...]:
    """Each entry an IPv4 or IPv6 address, spaces dropped."""
    addresses = tuple(entry.strip() for entry in value)
    for entry, address in zip(value, addresses, strict=True):
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ValueError(
                f"{entry!r} is not an IP address; write the public address Microsoft 365 "
                f"sees, e.g. {key.example}"
            ) from None
    return addresses


def domain_or_none(value: str, key: Key[str]) -> str:
    """A domain name, normalised; "" for none."""
    return domain_name(value) if value else ""


def domains(value: tuple[str, ...], key: Key[tuple[str, ...]]) -> tuple[str, ...]:
    """Each entry a domain name, normalised."""
    return tuple(domain_name(entry) for entry in value)


def alias_tables(value: tuple[str, ...], key: Key[tuple[str, ...]]) -> tuple[str, ...]:
    """Postfix table specs (``type:name`` or a bare path); a file type must name its file."""
    specs: list[str] = []
    for spec in value:
        text = spec.strip()
        if not text:
            raise ValueError(f"contains an empty entry; write {key.example}")
        kind, colon, argument = text.partition(":")
        if colon and kind.lower() in FILE_TABLE_TYPES and not argument:
            raise ValueError(
                f"{spec!r} names no file; write {kind}:/path/to/table, e.g. {key.example}"
            )
        specs.append(text)
    return tuple(specs)


def recipient_delimiter(value: str, key: Key[str]) -> str:
    """Postfix's ``recipient_delimiter``: characters that may separate an address extension."""
    if any(c.isspace() or c in '@"' for c in value):
        raise ValueError(
            f"{value!r} cannot separate an address extension; copy Postfix's setting "
            f"(postconf -h recipient_delimiter), e.g. {key.example}"
        )
    return value


# --- [policy] and [outcomes] ---------------------------------------------------------------------


def filter_target(value: str, key: Key[str]) -> str:
    """A Postfix ``FILTER`` target, ``transport:destination``; "" for none."""
    if value and not _REROUTE.match(value):
        raise ValueError(
            f"{value!r} is not a Postfix FILTER target; write transport:destination, "
            'e.g. "smtp:[relay2.example.net]:587"'
        )
    return value


def header_name(value: str, key: Key[str]) -> str:
    """A header field name (RFC 5322: printable ASCII, no space or colon)."""
    if not _HEADER_NAME.match(value):
        raise ValueError(
            f"{value!r} is not a header field name (RFC 5322: printable ASCII, no space or "
            f"colon); write for example {key.example}"
        )
    return value


def relay_patterns(value: tuple[str, ...], key: Key[tuple[str, ...]]) -> tuple[str, ...]:
    """At least one host name or address glob, spaces dropped."""
    patterns = tuple(pattern.strip() for pattern in value)
    if not patterns:
        raise ValueError(
            "is empty, so no reply would ever be counted; leave the key out for Microsoft 365's "
            f"relays, or write {key.example}"
        )
    for pattern in patterns:
        if not _RELAY_PATTERN.match(pattern):
            raise ValueError(
                f"{pattern!r} is not a host name or address pattern; write a glob such as "
                '"*.mail.protection.outlook.com" or "127.0.0.1" (no brackets, port or spaces)'
            )
    return patterns


def host_patterns(value: tuple[str, ...], key: Key[tuple[str, ...]]) -> tuple[str, ...]:
    """Host name globs (lower case), no brackets, ports or spaces."""
    patterns = tuple(pattern.strip().lower() for pattern in value)
    for pattern in patterns:
        if not _RELAY_PATTERN.match(pattern):
            raise ValueError(
                f"{pattern!r} is not a host name pattern; write a glob such as {key.example} "
                "(no brackets, port or spaces)"
            )
    return patterns
