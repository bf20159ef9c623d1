"""Every configuration key, declared once: table, name, type, default, example and meaning.

``policyd.sources.config`` is driven by these declarations: the allowed sections and keys (any
other is an error naming the file and key), each key's TOML type, the check it names
(``policyd.sources.validators``), and the default for a key the file leaves out. The README's
"Configuration reference" table and ``contrib/m365-policyd.example.toml`` (keys, values and
comments) say the same in prose; ``tests/test_schema.py`` compares them with this module, so
they cannot drift. Nothing is generated from it at run time.

A ``table`` is a TOML table (``server``) or, ending in ``[]``, every entry of an array of tables
(``tenant.inbound_connector[]``: the keys of each ``[[tenant.inbound_connector]]``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from policyd import constants
from policyd.rules import assumptions
from policyd.rules.endpoints import RELAY_HOST_GLOBS
from policyd.sources import validators as v

T = TypeVar("T")

# Where the configuration lives (the README): ``-c`` wins, then the environment, then the path.
CONFIG_ENV = "M365_POLICYD_CONFIG"
CONFIG_PATH = "/etc/m365-policyd/m365-policyd.toml"
#: Shipped example, named in the "no configuration file" message.
EXAMPLE_CONFIG = "contrib/m365-policyd.example.toml"


@dataclass(frozen=True, slots=True)
class Kind(Generic[T]):
    """A TOML type: how messages name it, and how a parsed TOML value becomes a Python value."""

    expected: str  # completes "expected ..., got ...": "an array of strings"
    read: Callable[[object], T | None]  # None when the value is of another TOML type


@dataclass(frozen=True, slots=True)
class Key(Generic[T]):
    """One configuration key."""

    table: str  # "server", or "tenant.inbound_connector[]" for each entry of an array of tables
    name: str
    kind: Kind[T]
    default: T  # the value when the key is left out (required keys: what the check refuses)
    example: str  # what to write instead, in error messages: 'listen = ["tcp:10040:..."]'
    meaning: str  # one line (Markdown): the README's "meaning" and the example file's comment
    check: Callable[[T, Key[T]], T] | None = None  # validators.*: normalise or raise ValueError
    choices: tuple[str, ...] = ()  # the allowed values, for validators.one_of
    required: bool = False  # no default: the file must give it

    @property
    def path(self) -> str:
        """``section.key`` (``tenant.inbound_connector[].name`` for entry keys; a top-level key
        is its name alone)."""
        return f"{self.table}.{self.name}" if self.table else self.name


# --- TOML types ----------------------------------------------------------------------------------


def _string(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _strings(value: object) -> tuple[str, ...] | None:
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    return None


def _boolean(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


def _integer(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _seconds(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _array(value: object) -> tuple[object, ...] | None:
    return tuple(value) if isinstance(value, list) else None


def _table(value: object) -> Mapping[str, object] | None:
    return value if isinstance(value, dict) else None


def _tables(value: object) -> tuple[Mapping[str, object], ...] | None:
    if isinstance(value, list) and all(isinstance(item, dict) for item in value):
        return tuple(value)
    return None


STRING = Kind("a string", _string)
STRINGS = Kind("an array of strings", _strings)
BOOLEAN = Kind("a boolean (true or false)", _boolean)
INTEGER = Kind("an integer", _integer)
SECONDS = Kind("a number of seconds", _seconds)
#: ``tenant.accepted_domains``: strings, or inline tables for a domain with its subdomains.
DOMAIN_ENTRIES = Kind("an array of strings", _array)
TABLE = Kind("a table", _table)
TABLES = Kind("an array of tables", _tables)


# --- the keys ------------------------------------------------------------------------------------

_declared: list[Key[Any]] = []


def _key(
    table: str,
    name: str,
    kind: Kind[T],
    default: T,
    *,
    example: str,
    meaning: str,
    check: Callable[[T, Key[T]], T] | None = None,
    choices: tuple[str, ...] = (),
    required: bool = False,
) -> Key[T]:
    key = Key(table, name, kind, default, example, meaning, check, choices, required)
    _declared.append(key)
    return key


# fmt: off
# top level, before any table
INCLUDE = _key(
    "", "include", STRINGS, (),
    example='include = ["tenants.d/*.toml"]',
    meaning="files (globs, relative to this file) that hold more `[tenants.NAME]` tables, e.g. one "
        "file per tenant; written before any table",
)

# [server]
LISTEN = _key(
    "server", "listen", STRINGS, ("tcp:10040:interface=127.0.0.1",),
    example='listen = ["tcp:10040:interface=127.0.0.1"]',
    meaning="Twisted endpoint strings: `tcp:PORT:interface=ADDR`, "
        "`unix:/run/m365-policyd/policy.sock:mode=660`, `systemd:domain=INET:index=0` (socket "
        "activation)",
    check=v.endpoints,
)
METRICS = _key(
    "server", "metrics", STRING, "tcp:9464:interface=127.0.0.1",
    example='metrics = "tcp:9464:interface=127.0.0.1"',
    meaning='endpoint of the HTTP `/metrics` page for Prometheus; `""` turns it off',
    check=v.endpoint_or_off,
)
IDLE_TIMEOUT = _key(
    "server", "idle_timeout", SECONDS, 3600.0,
    example="idle_timeout = 3600",
    meaning="seconds before an idle connection is closed; keep it above Postfix's "
        "`smtpd_policy_service_max_idle` (300)",
    check=v.positive_seconds,
)
MAX_CONNECTIONS = _key(
    "server", "max_connections", INTEGER, 4096,
    example="max_connections = 4096",
    meaning="connections beyond this are closed at once and counted",
    check=v.positive,
)
MAX_REQUEST_BYTES = _key(
    "server", "max_request_bytes", INTEGER, 65536,
    example="max_request_bytes = 65536",
    meaning="a request without its blank-line end within this many bytes closes the connection, "
        "unanswered, counted (1024 to 1048576)",
    check=v.request_bytes,
)
METRICS_MAX_CONNECTIONS = _key(
    "server", "metrics_max_connections", INTEGER, 32,
    example="metrics_max_connections = 32",
    meaning="`/metrics` connections open at once; more are closed at once and counted, so a "
        "flood of scrapes cannot take the file descriptors policy connections need",
    check=v.positive,
)
METRICS_TIMEOUT = _key(
    "server", "metrics_timeout", SECONDS, 10.0,
    example="metrics_timeout = 10",
    meaning="seconds a `/metrics` connection may stay open in all, busy or idle (a client "
        "sending a byte now and then is closed too); counted",
    check=v.positive_seconds,
)
RELOAD_INTERVAL = _key(
    "server", "reload_interval", SECONDS, 30.0,
    example="reload_interval = 30",
    meaning="seconds between checks for changed files (config, exports, certificate, texthash "
        "maps); `0` = only on SIGHUP, else at least 1; a changed file is reloaded once it has "
        "stopped changing (one interval later)",
    check=v.reload_seconds,
)

# [tenant]
ACCEPTED_DOMAINS = _key(
    "tenant", "accepted_domains", DOMAIN_ENTRIES, (),
    example='accepted_domains = ["contoso.com"]',
    meaning='accepted domains inline: `"contoso.com"`, or `{ domain = "contoso.com", '
        "match_subdomains = true }` for its subdomains too",
)
ACCEPTED_DOMAIN = _key(
    "tenant.accepted_domains[]", "domain", STRING, "",
    example='domain = "contoso.com"',
    meaning="the accepted domain, in an inline table of `tenant.accepted_domains`",
    check=v.required_domain,
    required=True,
)
MATCH_SUBDOMAINS = _key(
    "tenant.accepted_domains[]", "match_subdomains", BOOLEAN, False,
    example="match_subdomains = true",
    meaning="as `MatchSubDomains`: every domain under it is accepted too",
)
ACCEPTED_DOMAINS_FILE = _key(
    "tenant", "accepted_domains_file", STRING, "",
    example='accepted_domains_file = "accepted-domains.json"',
    meaning="`Get-AcceptedDomain | ConvertTo-Json -Depth 4` output, e.g. "
        "`exchange/accepted-domains.example.json`",
)
INBOUND_CONNECTORS_FILE = _key(
    "tenant", "inbound_connectors_file", STRING, "",
    example='inbound_connectors_file = "inbound-connectors.json"',
    meaning="`Get-InboundConnector | ConvertTo-Json -Depth 4` output, e.g. "
        "`exchange/inbound-connectors.example.json`",
)
REJECT_DIRECT_SEND = _key(
    "tenant", "reject_direct_send", BOOLEAN, False,
    example="reject_direct_send = false",
    meaning="mirrors `Set-OrganizationConfig -RejectDirectSend`",
)
TENANT_ENDPOINTS = _key(
    "tenant", "endpoints", STRINGS, (),
    example='endpoints = ["contoso-com.mail.protection.outlook.com"]',
    meaning="with `[postfix]`: next-hop host globs that reach this tenant besides Microsoft 365's "
        "own names (`*.mail.protection.outlook.com`, `*.mx.microsoft`, …)",
    check=v.host_patterns,
)
INBOUND_CONNECTOR = _key(
    "tenant", "inbound_connector", TABLES, (),
    example='[[tenant.inbound_connector]] with name = "From on-premises"',
    meaning="inline inbound connectors, the export's fields in snake_case; inline and exported "
        "entries combine",
)

# [tenants.NAME]: every key of [tenant], plus these (the README, several tenants)
TENANT_SENDER_DOMAINS = _key(
    "tenants.NAME", "sender_domains", STRINGS, (),
    example='sender_domains = ["fabrikam.example"]',
    meaning="without `[postfix]`: the P1 sender domains whose mail Postfix relays to this tenant",
    check=v.domains,
)
TENANT_CERTIFICATE = _key(
    "tenants.NAME", "certificate", STRING, "",
    example='certificate = "/etc/postfix/certs/fabrikam.pem"',
    meaning="without `[postfix]`: the PEM Postfix presents to this tenant; `\"\"` = "
        "`onprem.certificate`",
)
TENANT_DEFAULT = _key(
    "tenants.NAME", "default", BOOLEAN, False,
    example="default = true",
    meaning="the tenant for mail that no tenant's `endpoints` or `sender_domains` claims",
)

# [[tenant.inbound_connector]]
CONNECTOR_NAME = _key(
    "tenant.inbound_connector[]", "name", STRING, "",
    example='name = "From on-premises"',
    meaning="the connector's name, as in Exchange Online",
    check=v.connector_name,
    required=True,
)
CONNECTOR_TYPE = _key(
    "tenant.inbound_connector[]", "connector_type", STRING, "OnPremises",
    example='connector_type = "OnPremises"',
    meaning="`OnPremises` (the only type that grants relay) or `Partner`",
    check=v.connector_type,
)
CONNECTOR_ENABLED = _key(
    "tenant.inbound_connector[]", "enabled", BOOLEAN, True,
    example="enabled = true",
    meaning="a disabled connector never matches",
)
SENDER_IP_ADDRESSES = _key(
    "tenant.inbound_connector[]", "sender_ip_addresses", STRINGS, (),
    example='sender_ip_addresses = ["203.0.113.10/32"]',
    meaning="`SenderIPAddresses`: IPv4 addresses, CIDR ranges or `first-last` ranges (IPv4 only, "
        "as in Exchange Online)",
    check=v.sender_ip_ranges,
)
TLS_SENDER_CERTIFICATE_NAME = _key(
    "tenant.inbound_connector[]", "tls_sender_certificate_name", STRING, "",
    example='tls_sender_certificate_name = "*.contoso.com"',
    meaning='`TlsSenderCertificateName`, e.g. `"*.contoso.com"`; `""` = an IP-based connector',
    check=v.certificate_name_or_none,
)
SENDER_DOMAINS = _key(
    "tenant.inbound_connector[]", "sender_domains", STRINGS, (),
    example='sender_domains = ["smtp:*;1"]',
    meaning="`SenderDomains` address spaces (Partner connectors): the senders a restricting "
        "connector covers; `*` = every sender",
    check=v.address_spaces,
)
RESTRICT_DOMAINS_TO_IP_ADDRESSES = _key(
    "tenant.inbound_connector[]", "restrict_domains_to_ip_addresses", BOOLEAN, False,
    example="restrict_domains_to_ip_addresses = true",
    meaning="`RestrictDomainsToIPAddresses` (Partner connectors): mail from its `SenderDomains` "
        "must come from its `SenderIPAddresses`, else `550 5.7.51`",
)
RESTRICT_DOMAINS_TO_CERTIFICATE = _key(
    "tenant.inbound_connector[]", "restrict_domains_to_certificate", BOOLEAN, False,
    example="restrict_domains_to_certificate = true",
    meaning="`RestrictDomainsToCertificate` (Partner connectors): mail from its `SenderDomains` "
        "must present a certificate its `TlsSenderCertificateName` matches, else `550 5.7.51`",
)

# [onprem]
EGRESS_ADDRESSES = _key(
    "onprem", "egress_addresses", STRINGS, (),
    example='egress_addresses = ["203.0.113.10"]',
    meaning="the public address(es) Microsoft 365 sees Postfix connect from",
    check=v.ip_addresses,
)
CERTIFICATE = _key(
    "onprem", "certificate", STRING, "",
    example='certificate = "/etc/postfix/certs/mail.contoso.com.pem"',
    meaning="the PEM Postfix presents (`smtp_tls_cert_file`): leaf first, then intermediates; "
        '`""` = none, so only the IP path can attribute the connection',
)
CA_BUNDLE = _key(
    "onprem", "ca_bundle", STRING, "",
    example='ca_bundle = "/etc/ssl/certs/ca-certificates.crt"',
    meaning='PEM roots used to judge "chain complete"; `""` = '
        "`/etc/ssl/certs/ca-certificates.crt`",
)
SRS_DOMAIN = _key(
    "onprem", "srs_domain", STRING, "",
    example='srs_domain = "srs.contoso.com"',
    meaning="the domain postsrsd (or similar) rewrites forwarded senders into",
    check=v.domain_or_none,
)
LOCAL_DOMAINS = _key(
    "onprem", "local_domains", STRINGS, (),
    example='local_domains = ["lists.contoso.com"]',
    meaning="recipient domains Postfix delivers itself (not via Microsoft 365)",
    check=v.domains,
)
ALIAS_MAPS = _key(
    "onprem", "alias_maps", STRINGS, (),
    example='alias_maps = ["texthash:/etc/postfix/virtual"]',
    meaning="the tables of Postfix's `virtual_alias_maps`, in the same order: "
        "`texthash:/etc/postfix/virtual`, `hash:…`, `ldap:…`",
    check=v.alias_tables,
)
RECIPIENT_DELIMITER = _key(
    "onprem", "recipient_delimiter", STRING, "",
    example='recipient_delimiter = "+"',
    meaning="Postfix's `recipient_delimiter` (`postconf -h recipient_delimiter`; Debian sets "
        "`+`), so `bob+news@` expands like `bob@`",
    check=v.recipient_delimiter,
)

# [policy]
ACTION = _key(
    "policy", "action", STRING, constants.ACTION_DUNNO,
    example='action = "defer"',
    meaning="for recipients predicted to be refused: `dunno`, `defer` (`450 4.7.64 …`), `reject` "
        "(`550 5.7.64 …`), `hold`, `reroute`",
    check=v.one_of,
    choices=constants.ACTIONS,
)
REROUTE = _key(
    "policy", "reroute", STRING, "",
    example='reroute = "smtp:[relay2.example.net]:587"',
    meaning="`FILTER` target for `reroute`, e.g. `smtp:[relay2.example.net]:587`",
    check=v.filter_target,
)
TAG = _key(
    "policy", "tag", BOOLEAN, True,
    example="tag = true",
    meaning="prepend one summary header per message relayed through Microsoft 365",
)
HEADER = _key(
    "policy", "header", STRING, "X-M365-Relay",
    example='header = "X-M365-Relay"',
    meaning="the name of that summary header",
    check=v.header_name,
)
ON_ERROR = _key(
    "policy", "on_error", STRING, constants.ACTION_DUNNO,
    example='on_error = "dunno"',
    meaning="answer when the daemon itself fails: `dunno` or `warn`, never a refusal",
    check=v.fail_open_action,
    choices=constants.ON_ERROR_ACTIONS,
)
BY_REASON = _key(
    "policy", "by_reason", TABLE, {},
    example='[policy.by_reason] with null-sender = "defer"',
    meaning="per-reason overrides of `action` (refusing reasons only), e.g. `null-sender = "
        '"defer"`, `forwarded = "reroute"`',
)

# [log]
LOG_FORMAT = _key(
    "log", "format", STRING, constants.LOG_TEXT,
    example='format = "text"',
    meaning="`text` (key=value) or `json`, one line per prediction on stdout (journald)",
    check=v.one_of,
    choices=constants.LOG_FORMATS,
)
LOG_LEVEL = _key(
    "log", "level", STRING, constants.LOG_INFO,
    example='level = "info"',
    meaning="`debug`, `info`, `warn`, `error`; predictions are logged at `info`",
    check=v.one_of,
    choices=constants.LOG_LEVELS,
)

# [outcomes]
POSTFIX_LOG = _key(
    "outcomes", "postfix_log", STRING, "",
    example='postfix_log = "/var/log/mail.log"',
    meaning="follow Postfix's log (`\"/var/log/mail.log\"`, or `\"journal\"`) to compare "
        "predictions with Microsoft 365's replies; `\"\"` = off",
)
RELAY_HOSTS = _key(
    "outcomes", "relay_hosts", STRINGS, RELAY_HOST_GLOBS,
    example='relay_hosts = ["*.mail.protection.outlook.com"]',
    meaning="relays whose replies count: globs, case-insensitive, against the relay's host name "
        "and bracketed address; the default is every Microsoft 365 endpoint "
        "(`policyd/rules/endpoints.py`), retired smart hosts and the SMTP AUTH hosts "
        "(`smtp.office365.com`) included",
    check=v.relay_patterns,
)

# [postfix]
CONFIG_DIRECTORY = _key(
    "postfix", "config_directory", STRING, "",
    example='config_directory = "/etc/postfix"',
    meaning="Postfix's `config_directory`: read routing, the presented certificate, bind address, "
        "`virtual_alias_maps`, `recipient_delimiter` and postsrsd's domain from Postfix itself; "
        '`""` = off',
)
POSTSRSD_CONFIG = _key(
    "postfix", "postsrsd_config", STRING, "",
    example='postsrsd_config = "/etc/default/postsrsd"',
    meaning="postsrsd's configuration file, for the domain it really writes; "
        '`""` = `/etc/default/postsrsd`, then `/etc/postsrsd.conf`',
)

# [assumptions] (policyd/rules/assumptions.py holds what each decides and its sources)
_DEFAULT = assumptions.DEFAULT
WILDCARD_CONNECTOR_COVERS_APEX = _key(
    "assumptions", "wildcard_connector_covers_apex", BOOLEAN,
    _DEFAULT.wildcard_connector_covers_apex,
    example="wildcard_connector_covers_apex = true",
    meaning="`*.contoso.com` in `TlsSenderCertificateName` also matches the certificate name "
        "`contoso.com`",
)
SAN_NAMES_COUNT = _key(
    "assumptions", "san_names_count", BOOLEAN, _DEFAULT.san_names_count,
    example="san_names_count = true",
    meaning="the certificate's SAN DNS names count, not only the subject CN (KB 4019940 speaks "
        "of the subject only)",
)
HOST_CONNECTOR_NAME_MUST_BE_ACCEPTED = _key(
    "assumptions", "host_connector_name_must_be_accepted", BOOLEAN,
    _DEFAULT.host_connector_name_must_be_accepted,
    example="host_connector_name_must_be_accepted = false",
    meaning="a non-wildcard `TlsSenderCertificateName` (`mail.contoso.com`) attributes only when "
        "it is itself an accepted domain (KB 3169958, Exchange Team blog 2025); `false`: one "
        "label below an accepted domain suffices (KB 4019940)",
)
MATCH_SUBDOMAINS_COVERS_SENDERS = _key(
    "assumptions", "match_subdomains_covers_senders", BOOLEAN,
    _DEFAULT.match_subdomains_covers_senders,
    example="match_subdomains_covers_senders = true",
    meaning="`MatchSubDomains` also makes `sub.contoso.com` senders and certificate names "
        "accepted (a 5.7.68 is never predicted on it)",
)
FOREIGN_SENDER_VIA_CERTIFICATE = _key(
    "assumptions", "foreign_sender_via_certificate", BOOLEAN,
    _DEFAULT.foreign_sender_via_certificate,
    example="foreign_sender_via_certificate = true",
    meaning="a certificate connector under an accepted domain relays senders of any domain "
        "(KB 3169958); `false`: only accepted-domain senders and the null sender "
        "(OfficeDocs-Support#174)",
)
SUBMISSION_SENDER_MUST_BE_LOGIN = _key(
    "assumptions", "submission_sender_must_be_login", BOOLEAN,
    _DEFAULT.submission_sender_must_be_login,
    example="submission_sender_must_be_login = false",
    meaning="SMTP AUTH routes: without a `send_as` list for the login, a sender other than the "
        "login is refused (`submission-sender-not-login`)",
)
SUBMISSION_NULL_SENDER_REFUSED = _key(
    "assumptions", "submission_null_sender_refused", BOOLEAN,
    _DEFAULT.submission_null_sender_refused,
    example="submission_null_sender_refused = false",
    meaning="SMTP AUTH routes: the null sender is refused (`submission-sender-not-login`); one "
        "public log shows it, no Microsoft text",
)

# [submission] (SPEC §5.4; policyd/rules/submission.py decides with it)
SEND_AS = _key(
    "submission", "send_as", TABLE, {},
    example='send_as = { "app@contoso.com" = ["*@contoso.com"] }',
    meaning="SMTP AUTH routes: login mailbox → the addresses (or `*@domain`) it may send as "
        "(its SendAs rights); the login itself always may",
)
# fmt: on

#: Every key, in the order of the README's table and the example file.
KEYS: tuple[Key[Any], ...] = tuple(_declared)

#: The top-level sections, in order (``tenants`` holds one ``[tenants.NAME]`` table per tenant).
SECTIONS: tuple[str, ...] = (
    *dict.fromkeys(k.table for k in KEYS if k.table and "." not in k.table),
    "tenants",
)
#: The keys of one ``[tenants.NAME]`` table: every ``[tenant]`` key, and its own.
TENANTS_KEYS: dict[str, Key[Any]] = {}


def keys_of(table: str) -> dict[str, Key[Any]]:
    """The keys of one table (``"server"``, ``"tenant.inbound_connector[]"``) by name."""
    return {key.name: key for key in KEYS if key.table == table}


TENANTS_KEYS.update(keys_of("tenant"))
TENANTS_KEYS.update(keys_of("tenants.NAME"))
