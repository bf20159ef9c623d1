"""The configuration file (TOML, the README) as one frozen, validated object.

``read_config_file`` reads the file and checks it against ``policyd.sources.schema``: every
section and key must be declared there, each value must have the key's TOML type and pass the
check the key names, and a key left out takes the schema's default. Nothing is half-applied:
any problem raises ``ConfigError(file, "section.key", fix)``, whose one-line text names the
file, the key, what is wrong and what to write instead; the command line turns it into exit
status 78 and a reload keeps the previous state.

The result, ``ConfigFile``, holds what the file itself says. The files it names (Exchange
exports, the certificate, alias tables) are read in one place, ``policyd.sources.state``, which
turns a ``ConfigFile`` into the ``Config`` and ``State`` the rest of the daemon reads.

Relative paths (export files, certificate, CA bundle, file-based alias maps, the Postfix log)
are taken relative to the directory of the configuration file, so a configuration directory
can be moved or tested as a whole.
"""

from __future__ import annotations

import difflib
import glob
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from policyd.constants import ACTION_REROUTE, ACTIONS
from policyd.errors import ConfigError
from policyd.rules.assumptions import Assumptions
from policyd.rules.model import (
    DEFAULT_TENANT,
    AcceptedDomain,
    InboundConnector,
    NamedTenant,
    OnPrem,
    Tenant,
)
from policyd.rules.reasons import REFUSE_REASONS
from policyd.sources import schema
from policyd.sources.exports import domain_name, sender_ip_networks
from policyd.sources.files import MAX_CONFIG_BYTES, permission_fix, read_capped
from policyd.sources.schema import Key
from policyd.sources.validators import FILE_TABLE_TYPES, choices_text

_T = TypeVar("_T")

#: A tenant NAME: it becomes a Prometheus label value and a log field.
_TENANT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

_TOML_POSITION = re.compile(
    r"\s*\(at (?:line (?P<line>\d+), column (?P<column>\d+)|end of document)\)\s*$"
)


# --- the configuration object ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """``[server]``: where to listen and the per-connection limits."""

    listen: tuple[str, ...] = schema.LISTEN.default
    metrics: str = schema.METRICS.default
    idle_timeout: float = schema.IDLE_TIMEOUT.default
    max_connections: int = schema.MAX_CONNECTIONS.default
    max_request_bytes: int = schema.MAX_REQUEST_BYTES.default
    reload_interval: float = schema.RELOAD_INTERVAL.default
    metrics_max_connections: int = schema.METRICS_MAX_CONNECTIONS.default
    metrics_timeout: float = schema.METRICS_TIMEOUT.default


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """``[policy]``: what to answer for a recipient predicted to be refused."""

    action: str = schema.ACTION.default
    reroute: str = schema.REROUTE.default
    tag: bool = schema.TAG.default
    header: str = schema.HEADER.default
    on_error: str = schema.ON_ERROR.default
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

    format: str = schema.LOG_FORMAT.default
    level: str = schema.LOG_LEVEL.default


@dataclass(frozen=True, slots=True)
class OutcomeSettings:
    """``[outcomes]`` (docs/postfix.md): the Postfix log to follow ("" = off, "journal" =
    journald) and the relays whose replies count (globs against the relay's host name and
    bracketed address)."""

    postfix_log: str = schema.POSTFIX_LOG.default
    relay_hosts: tuple[str, ...] = schema.RELAY_HOSTS.default


@dataclass(frozen=True, slots=True)
class PostfixSettings:
    """``[postfix]`` (docs/postfix.md): read the relay picture from Postfix itself."""

    config_directory: str = ""  # absolute; "" = off: the [onprem] keys describe Postfix
    postsrsd_config: str = ""  # absolute; "" = postsrsd's usual places


@dataclass(frozen=True, slots=True)
class SubmissionSettings:
    """``[submission]`` (SPEC §5.4): per login mailbox (lower case), the addresses (lower case)
    and ``*@domain`` patterns (normalised domain) it may send as."""

    send_as: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True, slots=True)
class Config:
    """One generation of configuration: built whole by ``policyd.sources.state.load_config``,
    swapped whole on reload. ``tenant`` and ``onprem`` include what the exports and the
    certificate file say."""

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
    postfix: PostfixSettings = PostfixSettings()
    #: The [onprem] keys the file sets: with [postfix], these win over what Postfix says.
    onprem_keys: frozenset[str] = frozenset()
    #: ``[tenant] endpoints``: next-hop host globs that reach the tenant besides Microsoft
    #: 365's own names (policyd.rules.endpoints).
    tenant_endpoints: tuple[str, ...] = ()
    #: Every tenant, exports and certificates read: one named "default" for a single
    #: [tenant]; ``tenant`` above is the default one (or the first).
    tenants: tuple[NamedTenant, ...] = ()
    submission: SubmissionSettings = SubmissionSettings()


@dataclass(frozen=True, slots=True)
class TenantFile:
    """One tenant as the configuration declares it; its export files are not read yet."""

    name: str
    tenant: Tenant  # inline accepted domains and connectors only
    accepted_domains_file: str  # absolute; "" = none
    inbound_connectors_file: str
    endpoints: tuple[str, ...]
    sender_domains: tuple[str, ...]
    certificate_path: str  # absolute; "" = onprem.certificate
    default: bool
    file: str  # the configuration file that declares it


@dataclass(frozen=True, slots=True)
class ConfigFile:
    """What the configuration file itself says, validated; the files it names are not read yet.

    Paths are absolute ("" = not configured). ``tenant`` holds the inline accepted domains and
    connectors only, and ``onprem.certificate`` is None until the certificate is read.
    """

    path: str
    server: ServerSettings
    tenant: Tenant
    accepted_domains_file: str
    inbound_connectors_file: str
    onprem: OnPrem
    certificate_path: str
    ca_bundle: str
    alias_maps: tuple[str, ...]
    recipient_delimiter: str
    policy: PolicySettings
    log: LogSettings
    outcomes: OutcomeSettings
    postfix: PostfixSettings = PostfixSettings()
    onprem_keys: frozenset[str] = frozenset()
    tenant_endpoints: tuple[str, ...] = ()
    #: Every tenant: one named "default" for a single [tenant], else the [tenants.NAME] tables.
    tenants: tuple[TenantFile, ...] = ()
    #: Included files and the directories their globs look in (watched for reloads).
    included: tuple[str, ...] = ()
    submission: SubmissionSettings = SubmissionSettings()


def default_config_path(environ: Mapping[str, str]) -> str:
    """``$M365_POLICYD_CONFIG`` when set and not empty, else the system path (the README)."""
    return environ.get(schema.CONFIG_ENV) or schema.CONFIG_PATH


def load_config(path: str) -> Config:
    """The configuration and the files it names: ``policyd.sources.state.load_config``.

    Kept here for callers that import it from this module; new code imports ``state``.
    """
    from policyd.sources.state import load_config as load  # state imports this module

    return load(path)


# --- reading -------------------------------------------------------------------------------------


def read_config_file(path: str) -> ConfigFile:
    """Read and validate the configuration file at ``path``; raises ``ConfigError``."""
    document = _read_toml(path)
    base = os.path.dirname(os.path.abspath(path))
    includes = _Table(
        path, "", {"include": document.pop("include")} if "include" in document else {}
    )
    tables: dict[str, dict[str, object]] = {}
    for name, value in document.items():
        if name not in schema.SECTIONS:
            raise ConfigError(
                path, name, _unknown("section", name, schema.SECTIONS, "allowed sections")
            )
        if not isinstance(value, dict):
            raise ConfigError(
                path,
                name,
                f"expected a table ([{name}]), got {_toml_type(value)}; "
                f"put its keys under a [{name}] line",
            )
        tables[name] = value
    sections: dict[str, _Table] = {}
    for name in schema.SECTIONS:
        if name == "tenants":
            continue
        table = _Table(path, name, tables.get(name, {}))
        table.reject_unknown(schema.keys_of(name), f"allowed keys in [{name}]")
        sections[name] = table

    def resolve(value: str) -> str:
        return os.path.normpath(os.path.join(base, value)) if value else ""

    # Checked section by section, in the schema's order, so the first error is the first one.
    server = _server(sections["server"])
    tenant = sections["tenant"]
    inline = Tenant(
        accepted_domains=_inline_accepted_domains(tenant),
        connectors=_inline_connectors(tenant),
        reject_direct_send=tenant.get(schema.REJECT_DIRECT_SEND),
        assumptions=_assumptions(sections["assumptions"]),
    )
    accepted_domains_file = resolve(tenant.get(schema.ACCEPTED_DOMAINS_FILE))
    inbound_connectors_file = resolve(tenant.get(schema.INBOUND_CONNECTORS_FILE))
    onprem = sections["onprem"]
    egress = onprem.get(schema.EGRESS_ADDRESSES)
    certificate_path = resolve(onprem.get(schema.CERTIFICATE))
    ca_bundle = resolve(onprem.get(schema.CA_BUNDLE))
    srs_domain = onprem.get(schema.SRS_DOMAIN)
    local_domains = onprem.get(schema.LOCAL_DOMAINS)
    alias_maps = onprem.get(schema.ALIAS_MAPS)
    delimiter = onprem.get(schema.RECIPIENT_DELIMITER)
    policy = _policy(sections["policy"])
    log = LogSettings(
        format=sections["log"].get(schema.LOG_FORMAT),
        level=sections["log"].get(schema.LOG_LEVEL),
    )
    tenant_endpoints = tenant.get(schema.TENANT_ENDPOINTS)
    postfix_section = sections["postfix"]
    postfix = PostfixSettings(
        config_directory=resolve(postfix_section.get(schema.CONFIG_DIRECTORY)),
        postsrsd_config=resolve(postfix_section.get(schema.POSTSRSD_CONFIG)),
    )
    if postfix.config_directory and not os.path.isdir(postfix.config_directory):
        raise postfix_section.error(
            schema.CONFIG_DIRECTORY.name,
            f"{postfix.config_directory} is not a directory; name Postfix's config_directory "
            f"(postconf -h config_directory), e.g. {schema.CONFIG_DIRECTORY.example}",
        )
    postfix_log = sections["outcomes"].get(schema.POSTFIX_LOG)
    outcomes = OutcomeSettings(
        postfix_log=postfix_log if postfix_log in ("", "journal") else resolve(postfix_log),
        relay_hosts=sections["outcomes"].get(schema.RELAY_HOSTS),
    )
    submission = _submission(sections["submission"])
    declared, included = _tenants(path, tables.get("tenants", {}), includes, inline.assumptions)
    single = TenantFile(
        DEFAULT_TENANT,
        inline,
        accepted_domains_file,
        inbound_connectors_file,
        tenant_endpoints,
        (),
        "",
        True,
        os.path.abspath(path),
    )
    if declared and "tenant" in tables:
        raise ConfigError(
            path,
            "tenants",
            "[tenant] and [tenants.NAME] tables in one configuration; describe one tenant with "
            "[tenant], or every tenant with its own [tenants.NAME] table",
        )
    _check_tenants(declared, bool(postfix.config_directory))
    return ConfigFile(
        tenants=declared or (single,),
        included=included,
        path=os.path.abspath(path),
        server=server,
        tenant=inline,
        accepted_domains_file=accepted_domains_file,
        inbound_connectors_file=inbound_connectors_file,
        onprem=OnPrem(
            egress_addresses=tuple(ipaddress.ip_address(address) for address in egress),
            certificate=None,
            srs_domain=srs_domain,
            local_domains=frozenset(local_domains),
        ),
        certificate_path=certificate_path,
        ca_bundle=ca_bundle,
        alias_maps=tuple(_alias_map(spec, resolve) for spec in alias_maps),
        recipient_delimiter=delimiter,
        policy=policy,
        log=log,
        outcomes=outcomes,
        postfix=postfix,
        onprem_keys=frozenset(str(key) for key in tables.get("onprem", {})),
        tenant_endpoints=tenant_endpoints,
        submission=submission,
    )


def _tenants(
    path: str, raw: object, includes: _Table, assumptions: Assumptions
) -> tuple[tuple[TenantFile, ...], tuple[str, ...]]:
    """The [tenants.NAME] tables of this file and of its ``include`` files, in order; every
    tenant follows the configuration's ``[assumptions]``."""
    found: dict[str, TenantFile] = {}
    _tenant_tables(path, raw, found, assumptions)
    watched: list[str] = []
    base = os.path.dirname(os.path.abspath(path))
    for pattern in includes.get(schema.INCLUDE):
        absolute = os.path.join(base, pattern)
        names = sorted(glob.glob(absolute))
        if not names and not glob.has_magic(pattern):
            raise includes.error(
                "include",
                f"{absolute} does not exist; fix the path, or use a glob such as "
                f"{schema.INCLUDE.example}",
            )
        watched.append(os.path.dirname(absolute))
        for name in names:
            document = _read_toml(name)
            for key in document:
                if key != "tenants":
                    raise ConfigError(
                        name, key, "an included file holds only [tenants.NAME] tables"
                    )
            _tenant_tables(name, document.get("tenants", {}), found, assumptions)
            watched.append(os.path.abspath(name))
    return tuple(found.values()), tuple(dict.fromkeys(watched))


def _tenant_tables(
    path: str, raw: object, found: dict[str, TenantFile], assumptions: Assumptions
) -> None:
    if not isinstance(raw, dict):
        raise ConfigError(
            path,
            "tenants",
            "expected [tenants.NAME] tables, one per tenant (e.g. [tenants.contoso])",
        )
    base = os.path.dirname(os.path.abspath(path))

    def resolve(value: str) -> str:
        return os.path.normpath(os.path.join(base, value)) if value else ""

    for name, value in raw.items():
        if not _TENANT_NAME.fullmatch(name):
            raise ConfigError(
                path,
                f"tenants.{name}",
                "a tenant name is a metric label: letters, digits, _ and - "
                "(e.g. [tenants.contoso])",
            )
        if not isinstance(value, dict):
            raise ConfigError(
                path, f"tenants.{name}", f"expected a table; write [tenants.{name}] and its keys"
            )
        if name in found:
            raise ConfigError(
                path,
                f"tenants.{name}",
                f"is declared twice (also in {found[name].file}); give each tenant its own name",
            )
        table = _Table(path, f"tenants.{name}", value)
        table.reject_unknown(schema.TENANTS_KEYS, f"allowed keys in [tenants.{name}]")
        found[name] = TenantFile(
            name,
            Tenant(
                accepted_domains=_inline_accepted_domains(table),
                connectors=_inline_connectors(table),
                reject_direct_send=table.get(schema.REJECT_DIRECT_SEND),
                assumptions=assumptions,
            ),
            resolve(table.get(schema.ACCEPTED_DOMAINS_FILE)),
            resolve(table.get(schema.INBOUND_CONNECTORS_FILE)),
            table.get(schema.TENANT_ENDPOINTS),
            table.get(schema.TENANT_SENDER_DOMAINS),
            resolve(table.get(schema.TENANT_CERTIFICATE)),
            table.get(schema.TENANT_DEFAULT),
            os.path.abspath(path),
        )


def _check_tenants(tenants: Sequence[TenantFile], routing: bool) -> None:
    """the README: with several tenants each is reachable, and no two claim the same mail."""
    if len(tenants) < 2:
        return
    defaults = [t for t in tenants if t.default]
    if len(defaults) > 1:
        first, second = defaults[:2]
        raise ConfigError(
            second.file,
            f"tenants.{second.name}.default",
            f"tenants {first.name} and {second.name} are both the default; keep default = true "
            "on one",
        )
    claims: dict[tuple[str, str], TenantFile] = {}
    for tenant in tenants:
        if not (tenant.endpoints or tenant.sender_domains or tenant.default):
            raise ConfigError(
                tenant.file,
                f"tenants.{tenant.name}",
                "one of several tenants needs endpoints (with [postfix]), sender_domains or "
                "default = true, so that mail can reach it",
            )
        for kind, values in (
            ("endpoint", tenant.endpoints),
            ("sender domain", tenant.sender_domains),
        ):
            for value in values:
                other = claims.setdefault((kind, value), tenant)
                if other is not tenant:
                    raise ConfigError(
                        tenant.file,
                        f"tenants.{tenant.name}",
                        f"tenants {other.name} and {tenant.name} both claim the {kind} {value}; "
                        "mail for it can reach one tenant only",
                    )
    del routing  # both routings accept these rules; kept for the docs' sake


def _read_toml(path: str) -> dict[str, object]:
    try:
        raw = read_capped(path, MAX_CONFIG_BYTES)
    except FileNotFoundError as error:
        raise ConfigError(
            path,
            "",
            "no such file; create it from the example, e.g. "
            f"install -D -m 0644 {schema.EXAMPLE_CONFIG} {path}, "
            f"or name another file with -c or ${schema.CONFIG_ENV}",
        ) from error
    except PermissionError as error:
        raise ConfigError(
            path,
            "",
            f"cannot read the configuration file ({error.strerror}); {permission_fix(path)}",
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
    except RecursionError:  # arrays or inline tables nested thousands deep (issue 16)
        raise ConfigError(
            path, "", f"not valid TOML (nested too deeply); compare with {schema.EXAMPLE_CONFIG}"
        ) from None
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        position = _TOML_POSITION.search(message)
        if position is None:
            raise ConfigError(
                path, "", f"not valid TOML ({message}); compare with {schema.EXAMPLE_CONFIG}"
            ) from error
        problem = message[: position.start()]
        if position.group("line"):
            line, where = position.group("line"), f", column {position.group('column')}"
        else:  # "(at end of document)"
            line, where = str(text.rstrip("\n").count("\n") + 1), ", at the end of the file"
        raise ConfigError(
            path,
            f"line {line}",
            f"not valid TOML ({problem}{where}); compare with {schema.EXAMPLE_CONFIG}",
        ) from error


# --- sections: what joins several keys, or nested tables -----------------------------------------


def _server(table: _Table) -> ServerSettings:
    return ServerSettings(
        listen=table.get(schema.LISTEN),
        metrics=table.get(schema.METRICS),
        idle_timeout=table.get(schema.IDLE_TIMEOUT),
        max_connections=table.get(schema.MAX_CONNECTIONS),
        max_request_bytes=table.get(schema.MAX_REQUEST_BYTES),
        reload_interval=table.get(schema.RELOAD_INTERVAL),
        metrics_max_connections=table.get(schema.METRICS_MAX_CONNECTIONS),
        metrics_timeout=table.get(schema.METRICS_TIMEOUT),
    )


def _policy(table: _Table) -> PolicySettings:
    action = table.get(schema.ACTION)
    on_error = table.get(schema.ON_ERROR)
    by_reason: list[tuple[str, str]] = []
    for reason, value in table.get(schema.BY_REASON).items():
        key = f"{schema.BY_REASON.name}.{reason}"
        if reason not in REFUSE_REASONS:
            raise table.error(
                key,
                f"{_unknown_name(reason, REFUSE_REASONS)} is not a refusing reason; "
                f"allowed: {', '.join(REFUSE_REASONS)}",
            )
        if not isinstance(value, str):
            raise table.error(
                key,
                f'expected a string, got {_toml_type(value)}; write for example {reason} = "defer"',
            )
        if value not in ACTIONS:
            raise table.error(key, f"{value!r} is not an action; write {choices_text(ACTIONS)}")
        by_reason.append((reason, value))
    reroute = table.get(schema.REROUTE)
    uses_reroute = action == ACTION_REROUTE or any(v == ACTION_REROUTE for _, v in by_reason)
    if uses_reroute and not reroute:
        raise table.error(
            schema.REROUTE.name,
            'is required when policy.action or a policy.by_reason value is "reroute"; write '
            f"transport:destination, e.g. {schema.REROUTE.example}",
        )
    return PolicySettings(
        action=action,
        reroute=reroute,
        tag=table.get(schema.TAG),
        header=table.get(schema.HEADER),
        on_error=on_error,
        by_reason=tuple(by_reason),
    )


def _submission(table: _Table) -> SubmissionSettings:
    """``[submission] send_as``: login mailbox = ["address", "*@domain", ...]."""
    entries: list[tuple[str, tuple[str, ...]]] = []
    fix = f"write for example {schema.SEND_AS.example}"
    for login, value in table.get(schema.SEND_AS).items():
        key = f"{schema.SEND_AS.name}.{login}"
        if not _is_address(login):
            raise table.error(key, f"{login!r} is not a login mailbox (user@domain); {fix}")
        if not (isinstance(value, list) and all(isinstance(item, str) for item in value)):
            raise table.error(key, f"expected an array of strings, got {_toml_type(value)}; {fix}")
        allowed: list[str] = []
        for item in value:
            if item.startswith("*@") and "@" not in item[2:]:
                try:
                    allowed.append("*@" + domain_name(item[2:]))
                except ValueError as error:
                    raise table.error(key, f"{item!r}: {error}; {fix}") from None
            elif _is_address(item):
                allowed.append(item.strip().casefold())
            else:
                raise table.error(
                    key, f"{item!r} is neither an address nor a *@domain pattern; {fix}"
                )
        entries.append((login.strip().casefold(), tuple(allowed)))
    return SubmissionSettings(send_as=tuple(entries))


def _is_address(text: str) -> bool:
    local, at, domain = text.strip().rpartition("@")
    return bool(at and local and domain) and "*" not in local and not any(c.isspace() for c in text)


def _assumptions(table: _Table) -> Assumptions:
    """``[assumptions]``: every assumption key, each a boolean with the schema's default."""
    return Assumptions(
        **{key.name: table.get(key) for key in schema.keys_of("assumptions").values()}
    )


def _inline_accepted_domains(table: _Table) -> tuple[AcceptedDomain, ...]:
    domains: list[AcceptedDomain] = []
    for value in table.get(schema.ACCEPTED_DOMAINS):
        if isinstance(value, str):
            domains.append(AcceptedDomain(domain=table.convert("accepted_domains", value)))
            continue
        if not isinstance(value, dict):
            raise table.wrong_type(schema.ACCEPTED_DOMAINS, table.raw("accepted_domains"))
        entry = _Table(table.file, f"{table.name}.accepted_domains", value)
        entry.reject_unknown(
            schema.keys_of("tenant.accepted_domains[]"), "allowed keys in an accepted domain table"
        )
        domains.append(
            AcceptedDomain(
                domain=entry.get(schema.ACCEPTED_DOMAIN),
                match_subdomains=entry.get(schema.MATCH_SUBDOMAINS),
            )
        )
    return tuple(domains)


def _inline_connectors(table: _Table) -> tuple[InboundConnector, ...]:
    connectors: list[InboundConnector] = []
    entries = table.get(schema.INBOUND_CONNECTOR)
    for number, item in enumerate(entries, 1):
        entry = _Table(table.file, f"{table.name}.inbound_connector[{number}]", item)
        entry.reject_unknown(
            schema.keys_of("tenant.inbound_connector[]"),
            f"allowed keys in [[{table.name}.inbound_connector]]",
        )
        connectors.append(
            InboundConnector(
                name=entry.get(schema.CONNECTOR_NAME),
                connector_type=entry.get(schema.CONNECTOR_TYPE),
                enabled=entry.get(schema.CONNECTOR_ENABLED),
                sender_ip_addresses=tuple(
                    network
                    for value in entry.get(schema.SENDER_IP_ADDRESSES)
                    for network in sender_ip_networks(value)
                ),
                tls_sender_certificate_name=entry.get(schema.TLS_SENDER_CERTIFICATE_NAME),
                sender_domains=entry.get(schema.SENDER_DOMAINS),
                restrict_domains_to_ip_addresses=entry.get(schema.RESTRICT_DOMAINS_TO_IP_ADDRESSES),
                restrict_domains_to_certificate=entry.get(schema.RESTRICT_DOMAINS_TO_CERTIFICATE),
            )
        )
    return tuple(connectors)


def _alias_map(spec: str, resolve: Callable[[str], str]) -> str:
    """A checked table spec with a file argument made absolute (other types kept as written)."""
    kind, colon, argument = spec.partition(":")
    if not colon:
        return resolve(spec)  # a bare path: Postfix's default_database_type
    if kind.lower() in FILE_TABLE_TYPES:
        return f"{kind}:{resolve(argument)}"
    return spec


# --- one table, read through the schema ----------------------------------------------------------

_MISSING = object()


class _Table:
    """One TOML table whose values are read through schema keys; errors name file and key."""

    def __init__(self, file: str, name: str, values: Mapping[str, object]) -> None:
        self.file = file
        self.name = name
        self.values = values

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.file, f"{self.name}.{key}" if self.name else key, problem)

    def reject_unknown(self, allowed: Iterable[str], label: str) -> None:
        names = tuple(allowed)
        for key in self.values:
            if key not in names:
                raise self.error(key, _unknown("key", key, names, label))

    def raw(self, name: str) -> object:
        return self.values.get(name, _MISSING)

    def get(self, key: Key[_T]) -> _T:
        """The key's value: of its TOML type, through its check; the default when left out."""
        raw = self.values.get(key.name, _MISSING)
        value = key.default
        if raw is not _MISSING:
            read = key.kind.read(raw)
            if read is None:
                raise self.wrong_type(key, raw)
            value = read
        if key.check is None:
            return value
        try:
            return key.check(value, key)
        except ValueError as error:
            raise self.error(key.name, str(error)) from None

    def wrong_type(self, key: Key[Any], raw: object) -> ConfigError:
        return self.error(
            key.name,
            f"expected {key.kind.expected}, got {_toml_type(raw)}; write for example {key.example}",
        )

    def convert(self, name: str, value: str) -> str:
        """One domain name of an array (``accepted_domains``), normalised."""
        try:
            return domain_name(value)
        except ValueError as error:
            raise self.error(name, str(error)) from None


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


def _unknown(what: str, name: str, allowed: Sequence[str], label: str) -> str:
    names = sorted(allowed)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown {what}{hint}; {label}: {', '.join(names)}"


def _unknown_name(name: str, allowed: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(allowed), n=1)
    return f"{name!r} (did you mean {close[0]}?)" if close else repr(name)
