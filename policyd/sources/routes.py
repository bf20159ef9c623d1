"""Reading one Postfix instance's routing picture: ``postconf -x``, ``-F``, ``-P`` and its tables.

``read_postfix_view(directory)`` runs ``postconf -c DIR -x`` (every parameter, expanded),
``postconf -c DIR -Fx`` (master.cf services and their commands) and ``postconf -c DIR -Px``
(their ``-o`` overrides), opens every table routing may ask (``transport_maps``,
``sender_dependent_relayhost_maps``, ``sender_dependent_default_transport_maps`` and tables
inside ``mydestination``, ``virtual_alias_domains``, ``virtual_mailbox_domains``,
``relay_domains``; ``smtp_tls_policy_maps`` of main.cf and of master.cf ``-o``) and returns
a ``policyd.rules.routing.PostfixView`` with the files to watch.

``texthash:`` tables are read into memory; every other table is asked with ``postmap -c DIR -q``
(which may block: callers that serve requests run such lookups off the reactor thread). Any
failure at load time is a ``ConfigError`` naming the file, the parameter and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from policyd.errors import AliasLookupError, ConfigError, RouteLookupError
from policyd.rules.aliases import DictTable, Table
from policyd.rules.rewrite import CLEANUP_PARAMETERS, GENERIC_PARAMETER, Listener
from policyd.rules.routing import PostfixView, Service, is_table, split_list
from policyd.sources.detours import Detour, find_detours
from policyd.sources.postfix import (
    POSTCONF_TIMEOUT,
    Runner,
    find_tool,
    last_line,
    parse_postconf,
    run_tool,
)
from policyd.sources.tables import LOOKUP_TIMEOUT, open_table

#: The configuration key errors about the Postfix instance name.
CONFIG_KEY = "postfix.config_directory"

#: main.cf parameters holding tables (or lists with tables) that routing asks.
ROUTING_TABLE_PARAMETERS = (
    "transport_maps",
    "sender_dependent_relayhost_maps",
    "sender_dependent_default_transport_maps",
    "mydestination",
    "virtual_alias_domains",
    "virtual_mailbox_domains",
    "relay_domains",
    "smtp_tls_policy_maps",
    "lmtp_tls_policy_maps",
)

#: Of those, the ones a master.cf ``-o`` of a delivery service may override.
SERVICE_TABLE_PARAMETERS = ("smtp_tls_policy_maps", "lmtp_tls_policy_maps")

#: main.cf parameters (also as master.cf ``-o`` overrides) holding tables that rewrite the
#: envelope sender (``policyd.rules.rewrite``).
REWRITING_TABLE_PARAMETERS = (*CLEANUP_PARAMETERS, GENERIC_PARAMETER)


class PostfixTables:
    """``policyd.rules.routing.Tables`` over opened tables (see ``sources.tables.open_table``)."""

    def __init__(self, tables: Mapping[str, Table]) -> None:
        self._tables = dict(tables)
        self.uses_subprocess = any(not isinstance(t, DictTable) for t in self._tables.values())

    def find(self, table: str, key: str, *, partial: bool) -> str | None:
        opened = self._tables.get(table)
        if opened is None:
            raise RouteLookupError(f"{table}: not opened by m365-policyd (reload to pick it up)")
        if partial and opened.pattern:
            return None
        try:
            return opened.lookup(key)
        except AliasLookupError as error:
            raise RouteLookupError(str(error)) from None


@dataclass(frozen=True, slots=True)
class LoadedPostfix:
    """A Postfix instance as routing sees it, with the files whose change means a reload."""

    view: PostfixView
    tables: PostfixTables
    files: tuple[str, ...]
    warnings: tuple[str, ...]
    #: content_filter / FILTER detours (reported, not followed: ``policyd.sources.detours``).
    detours: tuple[Detour, ...] = ()
    #: The smtpd listener on port 25 whose cleanup settings the sender rewriting uses (None:
    #: master.cf has none; main.cf's settings apply).
    listener: Listener | None = None


def read_postfix_view(
    directory: str,
    *,
    runner: Runner | None = None,
    lookup_timeout: float = LOOKUP_TIMEOUT,
) -> LoadedPostfix:
    """Read the instance in ``directory``; raises ConfigError when it cannot be used."""
    main_cf = os.path.join(directory, "main.cf")
    if not os.path.isfile(main_cf):
        raise ConfigError(
            main_cf, CONFIG_KEY, "no main.cf here; name Postfix's config_directory (/etc/postfix)"
        )
    postconf = find_tool("postconf") if runner is None else "postconf"
    if postconf is None:
        raise ConfigError(
            directory, CONFIG_KEY, "postconf not found; install postfix, or leave [postfix] unset"
        )
    parameters = parse_postconf(_postconf(postconf, directory, "-x", runner))
    fields = parse_postconf(_postconf(postconf, directory, "-Fx", runner))
    overrides = parse_postconf(_postconf(postconf, directory, "-Px", runner))
    services = _services(fields, overrides)
    opened: dict[str, Table] = {}
    files = [main_cf, os.path.join(directory, "master.cf")]
    warnings: list[str] = []
    for where, parameter, value in _table_settings(parameters, services):
        for entry in split_list(value):
            spec = entry.removeprefix("!")
            if not is_table(spec) or spec in opened:
                continue
            table = open_table(
                spec,
                config_key=f"{where}: {parameter}",
                timeout=lookup_timeout,
                runner=runner,
                config_directory=directory,
            )
            opened[spec] = table.table
            files.extend(table.files)
            warnings.extend(table.warnings)
    files.extend(_open_sasl_tables(parameters, services, opened, directory, runner, warnings))
    tables = PostfixTables(opened)
    view = PostfixView(parameters, services, tables, config_directory=directory)
    detours = find_detours(parameters, fields, overrides, services)
    return LoadedPostfix(
        view,
        tables,
        tuple(dict.fromkeys(files)),
        tuple(warnings),
        detours,
        _smtpd_listener(fields, overrides),
    )


def _table_settings(
    parameters: Mapping[str, str], services: Mapping[str, Service]
) -> list[tuple[str, str, str]]:
    """(where, parameter, value) for every routing and sender-rewriting table setting: main.cf's,
    then the ``-o`` overrides of master.cf services (a service may name its own
    ``smtp_tls_policy_maps``, a cleanup its ``sender_canonical_maps``, an smtp service its
    ``smtp_generic_maps``)."""
    main_cf = (*ROUTING_TABLE_PARAMETERS, *REWRITING_TABLE_PARAMETERS)
    found = [("main.cf", p, parameters.get(p, "")) for p in main_cf]
    for name, service in services.items():
        found.extend(
            (f"master.cf: {name}/unix -o", p, value)
            for p, value in service.overrides.items()
            if p in SERVICE_TABLE_PARAMETERS or p in REWRITING_TABLE_PARAMETERS
        )
    return found


@dataclass(frozen=True, slots=True)
class _UnreadableTable:
    """A table the daemon could not open at load time: every lookup fails with why."""

    spec: str
    problem: str
    pattern: bool = False

    def lookup(self, key: str) -> str | None:
        raise AliasLookupError(self.problem)


def _open_sasl_tables(  # noqa: PLR0917 - read_postfix_view's own state, passed on
    parameters: Mapping[str, str],
    services: Mapping[str, Service],
    opened: dict[str, Table],
    directory: str,
    runner: Runner | None,
    warnings: list[str],
) -> list[str]:
    """Open ``smtp_sasl_password_maps`` of main.cf and of every smtp service's ``-o``, for the
    client-submission rules (SPEC §5.4); returns the files to watch.

    A password map is often readable by root only: one the daemon cannot open is a warning, not
    a configuration error (it decides submission routes only, and under that doubt nothing is
    refused); lookups in it then fail with the reason. Values are never logged: only the login
    (the user part) is used.
    """
    settings = [("main.cf: smtp_sasl_password_maps", parameters.get("smtp_sasl_password_maps", ""))]
    for service in services.values():
        if "smtp_sasl_password_maps" in service.overrides:
            where = f"master.cf: {service.name}/unix -o smtp_sasl_password_maps"
            settings.append((where, service.overrides["smtp_sasl_password_maps"]))
    files: list[str] = []
    for where, value in settings:
        for spec in split_list(value):
            if not is_table(spec) or spec in opened:
                continue
            try:
                table = open_table(
                    spec, config_key=where, runner=runner, config_directory=directory
                )
            except ConfigError as error:
                opened[spec] = _UnreadableTable(spec, f"{spec}: {error.problem}")
                warnings.append(f"{where}: m365-policyd cannot read {spec}: {error.problem}")
                continue
            opened[spec] = table.table
            files.extend(table.files)
            warnings.extend(table.warnings)
    return files


def _postconf(postconf: str, directory: str, option: str, runner: Runner | None) -> str:
    argv = [postconf, "-c", directory, option]
    try:
        done = run_tool(argv, timeout=POSTCONF_TIMEOUT, runner=runner)
    except OSError as error:
        raise ConfigError(directory, CONFIG_KEY, f"cannot run postconf: {error}") from None
    except Exception as error:  # subprocess.TimeoutExpired and friends
        raise ConfigError(directory, CONFIG_KEY, f"postconf {option} failed: {error}") from None
    if done.returncode != 0:
        problem = last_line(done.stderr) or f"exit status {done.returncode}"
        raise ConfigError(directory, CONFIG_KEY, f"postconf {option}: {problem}")
    return done.stdout


def _services(fields: Mapping[str, str], overrides: Mapping[str, str]) -> dict[str, Service]:
    """master.cf ``unix`` services from ``postconf -F`` / ``-P`` output (name/type/field)."""
    commands: dict[str, str] = {}
    for key, value in fields.items():
        name, _, rest = key.partition("/")
        service_type, _, field_name = rest.partition("/")
        if service_type == "unix" and field_name == "command":
            words = value.split()
            commands[name] = words[0] if words else ""
    options: dict[str, dict[str, str]] = {name: {} for name in commands}
    for key, value in overrides.items():
        name, _, rest = key.partition("/")
        service_type, _, parameter = rest.partition("/")
        if service_type == "unix" and name in options and parameter:
            options[name][parameter] = value
    return {name: Service(name, commands[name], options[name]) for name in commands}


#: master.cf inet service names (the port part) of the SMTP listener on port 25.
_SMTP_PORTS = ("smtp", "25")


def _smtpd_listener(fields: Mapping[str, str], overrides: Mapping[str, str]) -> Listener | None:
    """The ``inet`` smtpd service on port 25 (``smtp``, ``ADDRESS:smtp``, ``25``...), else the
    only ``inet`` smtpd service, with its ``-o`` overrides; None when there is no such one.

    The policy request does not say which listener asked, so the daemon judges mail as this
    listener receives it (README: "What Microsoft 365 sees: sender rewriting and SRS")."""
    listeners: list[str] = []
    for key, value in fields.items():
        name, _, rest = key.partition("/")
        words = value.split()
        if rest == "inet/command" and words and words[0] == "smtpd":
            listeners.append(name)
    chosen = next(
        (name for name in listeners if name.rpartition(":")[2].lower() in _SMTP_PORTS),
        listeners[0] if len(listeners) == 1 else None,
    )
    if chosen is None:
        return None
    prefix = f"{chosen}/inet/"
    options = {k[len(prefix) :]: v for k, v in overrides.items() if k.startswith(prefix)}
    return Listener(f"{chosen}/inet", options)
