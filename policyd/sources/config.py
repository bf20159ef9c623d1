"""The configuration file (TOML, SPEC §4) as one frozen, validated ``Config``.

``load_config`` reads the file, checks every section and key, fills the rest from
``policyd.defaults``, reads the tenant exports and the certificate, and returns plain frozen
data. Nothing is half-applied: any problem raises ``ConfigError(file, "section.key", fix)``,
whose one-line text names the file, the key, what is wrong and what to write instead; the
command line turns it into exit status 78 and a reload keeps the previous ``Config``.

Relative paths (export files, certificate, CA bundle, file-based alias maps, the Postfix log)
are taken relative to the directory of the configuration file, so a configuration directory
can be moved or tested as a whole.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from policyd import defaults
from policyd.constants import ACTIONS, LOG_FORMATS, LOG_LEVELS, ON_ERROR_ACTIONS
from policyd.errors import ConfigError
from policyd.rules.model import (
    ON_PREMISES,
    PARTNER,
    AcceptedDomain,
    InboundConnector,
    IPAddress,
    OnPrem,
    Tenant,
)
from policyd.rules.reasons import REFUSE_REASONS
from policyd.sources.exports import (
    address_space_domain,
    certificate_name,
    domain_name,
    load_accepted_domains,
    load_inbound_connectors,
    sender_ip_networks,
)
from policyd.sources.pem import read_certificate

#: Sections and their keys; anything else in the file is an error naming the allowed keys.
SECTIONS: dict[str, tuple[str, ...]] = {
    "server": (
        "listen",
        "metrics",
        "idle_timeout",
        "max_connections",
        "max_request_bytes",
        "reload_interval",
    ),
    "tenant": (
        "accepted_domains",
        "accepted_domains_file",
        "inbound_connectors_file",
        "reject_direct_send",
        "inbound_connector",
    ),
    "onprem": (
        "egress_addresses",
        "certificate",
        "ca_bundle",
        "srs_domain",
        "local_domains",
        "alias_maps",
        "recipient_delimiter",
    ),
    "policy": ("action", "reroute", "tag", "header", "on_error", "by_reason"),
    "log": ("format", "level"),
    "outcomes": ("postfix_log", "relay_hosts"),
}
#: Keys of one ``[[tenant.inbound_connector]]`` (the export's fields in snake_case).
CONNECTOR_KEYS = (
    "name",
    "connector_type",
    "enabled",
    "sender_ip_addresses",
    "tls_sender_certificate_name",
    "sender_domains",
)
#: Keys of an inline table in ``tenant.accepted_domains``.
ACCEPTED_DOMAIN_KEYS = ("domain", "match_subdomains")

#: ``policy.by_reason`` keys: the refusing reason ids of the reasons table.
REFUSING_REASONS = REFUSE_REASONS
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

#: What to write instead, per key, in wrong-type messages.
EXAMPLES: dict[str, str] = {
    "server.listen": 'listen = ["tcp:10040:interface=127.0.0.1"]',
    "server.metrics": 'metrics = "tcp:9464:interface=127.0.0.1"',
    "server.idle_timeout": "idle_timeout = 3600",
    "server.max_connections": "max_connections = 4096",
    "server.max_request_bytes": "max_request_bytes = 65536",
    "server.reload_interval": "reload_interval = 30",
    "tenant.accepted_domains": 'accepted_domains = ["contoso.com"]',
    "tenant.accepted_domains_file": 'accepted_domains_file = "accepted-domains.json"',
    "tenant.inbound_connectors_file": 'inbound_connectors_file = "inbound-connectors.json"',
    "tenant.reject_direct_send": "reject_direct_send = false",
    "tenant.inbound_connector": '[[tenant.inbound_connector]] with name = "From on-premises"',
    "inbound_connector.name": 'name = "From on-premises"',
    "inbound_connector.connector_type": 'connector_type = "OnPremises"',
    "inbound_connector.enabled": "enabled = true",
    "inbound_connector.sender_ip_addresses": 'sender_ip_addresses = ["203.0.113.10/32"]',
    "inbound_connector.tls_sender_certificate_name": (
        'tls_sender_certificate_name = "*.contoso.com"'
    ),
    "inbound_connector.sender_domains": 'sender_domains = ["smtp:*;1"]',
    "accepted_domain.domain": 'domain = "contoso.com"',
    "accepted_domain.match_subdomains": "match_subdomains = true",
    "onprem.egress_addresses": 'egress_addresses = ["203.0.113.10"]',
    "onprem.certificate": 'certificate = "/etc/postfix/certs/mail.contoso.com.pem"',
    "onprem.ca_bundle": 'ca_bundle = "/etc/ssl/certs/ca-certificates.crt"',
    "onprem.srs_domain": 'srs_domain = "srs.contoso.com"',
    "onprem.local_domains": 'local_domains = ["lists.contoso.com"]',
    "onprem.alias_maps": 'alias_maps = ["texthash:/etc/postfix/virtual"]',
    "onprem.recipient_delimiter": 'recipient_delimiter = "+"',
    "policy.action": 'action = "defer"',
    "policy.reroute": 'reroute = "smtp:[relay2.example.net]:587"',
    "policy.tag": "tag = true",
    "policy.header": 'header = "X-M365-Relay"',
    "policy.on_error": 'on_error = "dunno"',
    "policy.by_reason": '[policy.by_reason] with null-sender = "defer"',
    "policy.by_reason.*": 'null-sender = "defer"',
    "log.format": 'format = "text"',
    "log.level": 'level = "info"',
    "outcomes.postfix_log": 'postfix_log = "/var/log/mail.log"',
    "outcomes.relay_hosts": 'relay_hosts = ["*.mail.protection.outlook.com"]',
}

_T = TypeVar("_T")

#: ``[outcomes] relay_hosts`` default: the relays that are Microsoft 365 (SPEC §8).
_RELAY_PATTERN = re.compile(r"^[A-Za-z0-9*?!._:-]+$")  # a host name or address glob, no brackets

_HEADER_NAME = re.compile(r"^[\x21-\x39\x3b-\x7e]+$")  # RFC 5322 field-name: ftext, no colon
_REROUTE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*:\S+$")  # Postfix FILTER transport:nexthop
_TOML_POSITION = re.compile(
    r"\s*\(at (?:line (?P<line>\d+), column (?P<column>\d+)|end of document)\)\s*$"
)


# --- the configuration object ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """``[server]``: where to listen and the per-connection limits."""

    listen: tuple[str, ...] = defaults.LISTEN
    metrics: str = defaults.METRICS
    idle_timeout: float = defaults.IDLE_TIMEOUT
    max_connections: int = defaults.MAX_CONNECTIONS
    max_request_bytes: int = defaults.MAX_REQUEST_BYTES
    reload_interval: float = defaults.RELOAD_INTERVAL


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """``[policy]``: what to answer for a recipient predicted to be refused."""

    action: str = defaults.ACTION
    reroute: str = defaults.REROUTE
    tag: bool = defaults.TAG
    header: str = defaults.HEADER
    on_error: str = defaults.ON_ERROR
    by_reason: tuple[tuple[str, str], ...] = ()

    def action_for(self, reason: str) -> str:
        """The action for a refusal with ``reason``: its ``by_reason`` override, else ``action``."""
        for name, action in self.by_reason:
            if name == reason:
                return action
        return self.action


@dataclass(frozen=True, slots=True)
class LogSettings:
    """``[log]``: one line per prediction on stdout."""

    format: str = defaults.LOG_FORMAT
    level: str = defaults.LOG_LEVEL


@dataclass(frozen=True, slots=True)
class OutcomeSettings:
    """``[outcomes]`` (SPEC §8): the Postfix log to follow ("" = off, "journal" = journald) and
    the relays whose replies count (globs against the relay's host name and bracketed address)."""

    postfix_log: str = defaults.POSTFIX_LOG
    relay_hosts: tuple[str, ...] = defaults.RELAY_HOSTS


@dataclass(frozen=True, slots=True)
class Config:
    """One generation of configuration: built whole by ``load_config``, swapped whole on reload."""

    path: str  # absolute path of the configuration file
    server: ServerSettings
    tenant: Tenant
    onprem: OnPrem
    alias_maps: tuple[str, ...]  # Postfix table specs, file paths made absolute
    policy: PolicySettings
    log: LogSettings
    outcomes: OutcomeSettings
    certificate_path: str  # absolute, "" when no certificate is configured
    ca_bundle: str  # absolute, "" = the system's trusted roots
    input_files: tuple[str, ...]  # what a reload watches: this file, exports, certificate, CA
    recipient_delimiter: str = ""  # Postfix's recipient_delimiter, for address extensions


def default_config_path(environ: Mapping[str, str]) -> str:
    """``$M365_POLICYD_CONFIG`` when set and not empty, else the system path (SPEC §3)."""
    return environ.get(defaults.CONFIG_ENV) or defaults.CONFIG_PATH


# --- loading -------------------------------------------------------------------------------------


def load_config(path: str) -> Config:
    """Read, validate and assemble the configuration at ``path``; raises ``ConfigError``."""
    document = _read_toml(path)
    base = os.path.dirname(os.path.abspath(path))
    tables: dict[str, dict[str, object]] = {}
    for name, value in document.items():
        if name not in SECTIONS:
            raise ConfigError(path, name, _unknown("section", name, SECTIONS, "allowed sections"))
        if not isinstance(value, dict):
            raise ConfigError(
                path,
                name,
                f"expected a table ([{name}]), got {_toml_type(value)}; "
                f"put its keys under a [{name}] line",
            )
        tables[name] = value
    sections = {name: _Table(path, name, tables.get(name, {})) for name in SECTIONS}
    for name, table in sections.items():
        table.reject_unknown(SECTIONS[name], f"allowed keys in [{name}]")

    server = _server(sections["server"])
    policy = _policy(sections["policy"])
    log = _log(sections["log"])

    def resolve(value: str) -> str:
        return os.path.normpath(os.path.join(base, value)) if value else ""

    tenant_table = sections["tenant"]
    accepted = list(_inline_accepted_domains(tenant_table))
    connectors = list(_inline_connectors(tenant_table))
    accepted_file = resolve(
        tenant_table.string("accepted_domains_file", defaults.ACCEPTED_DOMAINS_FILE)
    )
    connectors_file = resolve(
        tenant_table.string("inbound_connectors_file", defaults.INBOUND_CONNECTORS_FILE)
    )
    if accepted_file:
        accepted.extend(load_accepted_domains(accepted_file))
    if connectors_file:
        connectors.extend(load_inbound_connectors(connectors_file))
    tenant = Tenant(
        accepted_domains=tuple(accepted),
        connectors=tuple(connectors),
        reject_direct_send=tenant_table.boolean("reject_direct_send", defaults.REJECT_DIRECT_SEND),
    )

    onprem_table = sections["onprem"]
    certificate_path = resolve(onprem_table.string("certificate", defaults.CERTIFICATE))
    ca_bundle = resolve(onprem_table.string("ca_bundle", defaults.CA_BUNDLE))
    certificate = (
        read_certificate(certificate_path, ca_bundle=ca_bundle) if certificate_path else None
    )
    srs_domain = onprem_table.string("srs_domain", defaults.SRS_DOMAIN)
    onprem = OnPrem(
        egress_addresses=_egress_addresses(onprem_table),
        certificate=certificate,
        srs_domain=onprem_table.domain("srs_domain", srs_domain) if srs_domain else "",
        local_domains=frozenset(
            onprem_table.domain("local_domains", item)
            for item in onprem_table.strings("local_domains", defaults.LOCAL_DOMAINS)
        ),
    )
    alias_maps = tuple(
        _alias_map(onprem_table, spec, resolve)
        for spec in onprem_table.strings("alias_maps", defaults.ALIAS_MAPS)
    )
    delimiter = onprem_table.string("recipient_delimiter", defaults.RECIPIENT_DELIMITER)
    if any(c.isspace() or c in '@"' for c in delimiter):
        raise onprem_table.error(
            "recipient_delimiter",
            f"{delimiter!r} cannot separate an address extension; copy Postfix's setting "
            f"(postconf -h recipient_delimiter), e.g. {EXAMPLES['onprem.recipient_delimiter']}",
        )

    postfix_log = sections["outcomes"].string("postfix_log", defaults.POSTFIX_LOG)
    if postfix_log not in ("", "journal"):
        postfix_log = resolve(postfix_log)
    relay_hosts = _relay_hosts(sections["outcomes"])

    absolute = os.path.abspath(path)
    watched = (absolute, accepted_file, connectors_file, certificate_path, ca_bundle)
    return Config(
        path=absolute,
        server=server,
        tenant=tenant,
        onprem=onprem,
        alias_maps=alias_maps,
        policy=policy,
        log=log,
        outcomes=OutcomeSettings(postfix_log=postfix_log, relay_hosts=relay_hosts),
        certificate_path=certificate_path,
        ca_bundle=ca_bundle,
        input_files=tuple(dict.fromkeys(f for f in watched if f)),
        recipient_delimiter=delimiter,
    )


def _read_toml(path: str) -> dict[str, object]:
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError as error:
        raise ConfigError(
            path,
            "",
            "no such file; create it from the example, e.g. "
            f"install -D -m 0644 {defaults.EXAMPLE_CONFIG} {path}, "
            f"or name another file with -c or ${defaults.CONFIG_ENV}",
        ) from error
    except OSError as error:
        reason = error.strerror or str(error)
        raise ConfigError(
            path, "", f"cannot read the configuration file ({reason}); check path and permissions"
        ) from error
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")  # a BOM from a Windows editor
    except UnicodeDecodeError as error:
        raise ConfigError(
            path, "encoding", f"not UTF-8 (byte {error.start}); TOML files must be saved as UTF-8"
        ) from error
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        position = _TOML_POSITION.search(message)
        if position is None:
            raise ConfigError(
                path, "", f"not valid TOML ({message}); compare with {defaults.EXAMPLE_CONFIG}"
            ) from error
        problem = message[: position.start()]
        if position.group("line"):
            line, where = position.group("line"), f", column {position.group('column')}"
        else:  # "(at end of document)"
            line, where = str(text.rstrip("\n").count("\n") + 1), ", at the end of the file"
        raise ConfigError(
            path,
            f"line {line}",
            f"not valid TOML ({problem}{where}); compare with {defaults.EXAMPLE_CONFIG}",
        ) from error


# --- sections ------------------------------------------------------------------------------------


def _server(table: _Table) -> ServerSettings:
    listen = table.strings("listen", defaults.LISTEN)
    if not listen:
        raise table.error(
            "listen", f"is empty; list at least one endpoint, e.g. {EXAMPLES['server.listen']}"
        )
    for endpoint in listen:
        _check_endpoint(table, "listen", endpoint)
    metrics = table.string("metrics", defaults.METRICS)
    if metrics:
        _check_endpoint(table, "metrics", metrics)
    return ServerSettings(
        listen=listen,
        metrics=metrics,
        idle_timeout=table.number("idle_timeout", defaults.IDLE_TIMEOUT, minimum=0.0),
        max_connections=table.integer("max_connections", defaults.MAX_CONNECTIONS),
        max_request_bytes=table.integer("max_request_bytes", defaults.MAX_REQUEST_BYTES),
        reload_interval=table.number(
            "reload_interval", defaults.RELOAD_INTERVAL, minimum=0.0, allow_minimum=True
        ),
    )


def _check_endpoint(table: _Table, key: str, endpoint: str) -> None:
    kind, colon, rest = endpoint.partition(":")
    if colon and rest and kind in ENDPOINT_TYPES:  # Twisted's plugin names are lower case
        return
    raise table.error(
        key,
        f"{endpoint!r} is not a Twisted endpoint of a supported type; start it with "
        f"{_choices(tuple(t + ':' for t in ENDPOINT_TYPES), 'or')}, "
        'e.g. "tcp:10040:interface=127.0.0.1" or "unix:/run/m365-policyd/policy.sock"',
    )


def _policy(table: _Table) -> PolicySettings:
    action = table.choice("action", defaults.ACTION, ACTIONS)
    on_error = table.string("on_error", defaults.ON_ERROR)
    if on_error not in ON_ERROR_ACTIONS:
        raise table.error(
            "on_error",
            f"{on_error!r} is not allowed; write {_choices(ON_ERROR_ACTIONS, 'or')}: the daemon "
            "fails open, so a bug of its own must never refuse mail (policy.action decides "
            "what happens to recipients predicted to be refused)",
        )
    by_reason: list[tuple[str, str]] = []
    overrides = table.table("by_reason")
    for reason, value in overrides.items():
        key = f"by_reason.{reason}"
        if reason not in REFUSING_REASONS:
            raise table.error(
                key,
                f"{_unknown_name(reason, REFUSING_REASONS)} is not a refusing reason; "
                f"allowed: {', '.join(REFUSING_REASONS)}",
            )
        if not isinstance(value, str):
            raise table.error(
                key,
                f'expected a string, got {_toml_type(value)}; write for example {reason} = "defer"',
            )
        if value not in ACTIONS:
            raise table.error(key, f"{value!r} is not an action; write {_choices(ACTIONS, 'or')}")
        by_reason.append((reason, value))
    reroute = table.string("reroute", defaults.REROUTE)
    uses_reroute = action == "reroute" or any(value == "reroute" for _, value in by_reason)
    if reroute and not _REROUTE.match(reroute):
        raise table.error(
            "reroute",
            f"{reroute!r} is not a Postfix FILTER target; write transport:destination, "
            'e.g. "smtp:[relay2.example.net]:587"',
        )
    if uses_reroute and not reroute:
        raise table.error(
            "reroute",
            'is required when policy.action or a policy.by_reason value is "reroute"; write '
            'transport:destination, e.g. reroute = "smtp:[relay2.example.net]:587"',
        )
    header = table.string("header", defaults.HEADER)
    if not _HEADER_NAME.match(header):
        raise table.error(
            "header",
            f"{header!r} is not a header field name (RFC 5322: printable ASCII, no space or "
            'colon); write for example header = "X-M365-Relay"',
        )
    return PolicySettings(
        action=action,
        reroute=reroute,
        tag=table.boolean("tag", defaults.TAG),
        header=header,
        on_error=on_error,
        by_reason=tuple(by_reason),
    )


def _log(table: _Table) -> LogSettings:
    return LogSettings(
        format=table.choice("format", defaults.LOG_FORMAT, LOG_FORMATS),
        level=table.choice("level", defaults.LOG_LEVEL, LOG_LEVELS),
    )


def _relay_hosts(table: _Table) -> tuple[str, ...]:
    patterns = tuple(p.strip() for p in table.strings("relay_hosts", defaults.RELAY_HOSTS))
    if not patterns:
        raise table.error(
            "relay_hosts",
            "is empty, so no reply would ever be counted; leave the key out for Microsoft 365's "
            f"relays, or write {EXAMPLES['outcomes.relay_hosts']}",
        )
    for pattern in patterns:
        if not _RELAY_PATTERN.match(pattern):
            raise table.error(
                "relay_hosts",
                f"{pattern!r} is not a host name or address pattern; write a glob such as "
                '"*.mail.protection.outlook.com" or "127.0.0.1" (no brackets, port or spaces)',
            )
    return patterns


def _inline_accepted_domains(table: _Table) -> list[AcceptedDomain]:
    domains: list[AcceptedDomain] = []
    values = table.get("accepted_domains", list(defaults.ACCEPTED_DOMAINS))
    if not isinstance(values, list):
        raise table.wrong_type("accepted_domains", values, "an array of strings")
    for value in values:
        if isinstance(value, str):
            domains.append(AcceptedDomain(domain=table.domain("accepted_domains", value)))
            continue
        if not isinstance(value, dict):
            raise table.wrong_type("accepted_domains", values, "an array of strings")
        entry = _Table(
            table.file, "tenant.accepted_domains", value, example_prefix="accepted_domain"
        )
        entry.reject_unknown(ACCEPTED_DOMAIN_KEYS, "allowed keys in an accepted domain table")
        if "domain" not in value:
            raise entry.error("domain", f"is missing; write {EXAMPLES['accepted_domain.domain']}")
        domains.append(
            AcceptedDomain(
                domain=entry.domain("domain", entry.string("domain", "")),
                match_subdomains=entry.boolean("match_subdomains", False),
            )
        )
    return domains


def _inline_connectors(table: _Table) -> list[InboundConnector]:
    raw = table.get("inbound_connector", [])
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise table.wrong_type("inbound_connector", raw, "an array of tables")
    connectors: list[InboundConnector] = []
    for number, item in enumerate(raw, 1):
        entry = _Table(
            table.file,
            f"tenant.inbound_connector[{number}]",
            item,
            example_prefix="inbound_connector",
        )
        entry.reject_unknown(CONNECTOR_KEYS, "allowed keys in [[tenant.inbound_connector]]")
        name = entry.string("name", "").strip()
        if not name:
            raise entry.error(
                "name", f"is missing or empty; write {EXAMPLES['inbound_connector.name']}"
            )
        kind_text = entry.string("connector_type", defaults.CONNECTOR_TYPE)
        kind = {ON_PREMISES.lower(): ON_PREMISES, PARTNER.lower(): PARTNER}.get(
            kind_text.strip().lower()
        )
        if kind is None:
            raise entry.error(
                "connector_type",
                f'{kind_text!r} is not a connector type; write "OnPremises" (the only type '
                'that grants relay) or "Partner"',
            )
        networks: list[ipaddress.IPv4Network] = []
        for value in entry.strings("sender_ip_addresses", ()):
            networks.extend(entry.convert("sender_ip_addresses", value, sender_ip_networks))
        certificate = entry.convert(
            "tls_sender_certificate_name",
            entry.string("tls_sender_certificate_name", ""),
            certificate_name,
        )
        sender_domains = tuple(
            entry.convert("sender_domains", value, address_space_domain)
            for value in entry.strings("sender_domains", ())
        )
        connectors.append(
            InboundConnector(
                name=name,
                connector_type=kind,
                enabled=entry.boolean("enabled", defaults.CONNECTOR_ENABLED),
                sender_ip_addresses=tuple(networks),
                tls_sender_certificate_name=certificate,
                sender_domains=sender_domains,
            )
        )
    return connectors


def _egress_addresses(table: _Table) -> tuple[IPAddress, ...]:
    addresses: list[IPAddress] = []
    for value in table.strings("egress_addresses", defaults.EGRESS_ADDRESSES):
        try:
            addresses.append(ipaddress.ip_address(value.strip()))
        except ValueError:
            raise table.error(
                "egress_addresses",
                f"{value!r} is not an IP address; write the public address Microsoft 365 "
                f"sees, e.g. {EXAMPLES['onprem.egress_addresses']}",
            ) from None
    return tuple(addresses)


def _alias_map(table: _Table, spec: str, resolve: Callable[[str], str]) -> str:
    text = spec.strip()
    if not text:
        raise table.error(
            "alias_maps", f"contains an empty entry; write {EXAMPLES['onprem.alias_maps']}"
        )
    kind, colon, argument = text.partition(":")
    if not colon:
        return resolve(text)  # a bare path: Postfix's default_database_type
    if kind.lower() in FILE_TABLE_TYPES:
        if not argument:
            raise table.error(
                "alias_maps",
                f"{spec!r} names no file; write {kind}:/path/to/table, "
                f"e.g. {EXAMPLES['onprem.alias_maps']}",
            )
        return f"{kind}:{resolve(argument)}"
    return text


# --- typed access to one table ------------------------------------------------------------------


class _Table:
    """One TOML table with typed getters whose errors name the file and ``section.key``."""

    def __init__(
        self,
        file: str,
        name: str,
        values: Mapping[str, object],
        *,
        example_prefix: str | None = None,
    ) -> None:
        self.file = file
        self.name = name
        self.values = values
        self.example_prefix = example_prefix or name

    def key(self, key: str) -> str:
        return f"{self.name}.{key}"

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.file, self.key(key), problem)

    def reject_unknown(self, allowed: Sequence[str], label: str) -> None:
        for key in self.values:
            if key not in allowed:
                raise self.error(key, _unknown("key", key, allowed, label))

    def get(self, key: str, default: object) -> object:
        return self.values.get(key, default)

    def wrong_type(self, key: str, value: object, expected: str) -> ConfigError:
        example = EXAMPLES.get(f"{self.example_prefix}.{key}")
        fix = f"; write for example {example}" if example else ""
        return self.error(key, f"expected {expected}, got {_toml_type(value)}{fix}")

    def string(self, key: str, default: str) -> str:
        value = self.values.get(key, default)
        if not isinstance(value, str):
            raise self.wrong_type(key, value, "a string")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.values.get(key, default)
        if not isinstance(value, bool):
            raise self.wrong_type(key, value, "a boolean (true or false)")
        return value

    def integer(self, key: str, default: int) -> int:
        value = self.values.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.wrong_type(key, value, "an integer")
        if value <= 0:
            raise self.error(key, f"must be a positive integer, got {value}")
        return value

    def number(
        self, key: str, default: float, *, minimum: float, allow_minimum: bool = False
    ) -> float:
        value = self.values.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.wrong_type(key, value, "a number of seconds")
        if not math.isfinite(value):
            raise self.error(key, f"must be a finite number of seconds, got {value}")
        if value < minimum or (value == minimum and not allow_minimum):
            bound = f">= {minimum:g}" if allow_minimum else f"> {minimum:g}"
            raise self.error(key, f"must be {bound} seconds, got {value:g}")
        return float(value)

    def strings(self, key: str, default: Sequence[str]) -> tuple[str, ...]:
        value = self.values.get(key, list(default))
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self.wrong_type(key, value, "an array of strings")
        return tuple(value)

    def table(self, key: str) -> dict[str, object]:
        value = self.values.get(key, {})
        if not isinstance(value, dict):
            raise self.wrong_type(key, value, "a table")
        return value

    def choice(self, key: str, default: str, allowed: Sequence[str]) -> str:
        value = self.string(key, default)
        if value not in allowed:
            raise self.error(key, f"{value!r} is not allowed; write {_choices(allowed, 'or')}")
        return value

    def domain(self, key: str, value: str) -> str:
        return self.convert(key, value, domain_name)

    def convert(self, key: str, value: str, parse: Callable[[str], _T]) -> _T:
        try:
            return parse(value)
        except ValueError as error:
            raise self.error(key, str(error)) from None


# --- message helpers -----------------------------------------------------------------------------


def _toml_type(value: object) -> str:
    """How TOML names the type of a parsed value, for "expected X, got Y" messages."""
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a float ({value:g})"
    if isinstance(value, str):
        return f'a string ("{value[:60]}")'
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"a date/time ({value})"


def _choices(values: Sequence[str], last: str) -> str:
    quoted = [f'"{value}"' if not value.endswith(":") else value for value in values]
    return f"{', '.join(quoted[:-1])} {last} {quoted[-1]}"


def _unknown(
    what: str, name: str, allowed: Sequence[str] | Mapping[str, object], label: str
) -> str:
    names = sorted(allowed)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown {what}{hint}; {label}: {', '.join(names)}"


def _unknown_name(name: str, allowed: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(allowed), n=1)
    return f"{name!r} (did you mean {close[0]}?)" if close else repr(name)
