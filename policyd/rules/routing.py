"""How Postfix routes one recipient, as trivial-rewrite(8) resolves it: pure, over plain data.

``resolve(view, sender, recipient)`` answers the master.cf service (transport) and the next hop
Postfix uses for a final recipient address, the address class, and which parameter or table
entry decided each. ``view`` is a ``PostfixView``: the expanded main.cf parameters
(``postconf -x``), the master.cf services with their ``-o`` overrides (``postconf -F`` /
``-P``) and a ``Tables`` object that answers table lookups (``policyd.sources.postfix`` builds
it; lookups that need ``postmap -q`` may block, so callers off the reactor thread use them).

The order follows Postfix 3.x ``src/trivial-rewrite/resolve.c`` (``resolve_addr``) and
``transport.c`` (``transport_lookup``), as documented in transport(5), postconf(5) and
ADDRESS_CLASS_README (summary in ``docs/postfix.md``):

1. Address class by the recipient domain: ``mydestination`` or a local interface literal →
   local (``local_transport``); ``virtual_alias_domains`` → alias (``error:5.1.1 User
   unknown``: alias expansion happened before routing); ``virtual_mailbox_domains`` → virtual
   (``virtual_transport``); ``relay_domains`` → relay (``relay_transport``); else default
   (``sender_dependent_default_transport_maps``, then ``default_transport``).
2. For relay and default: next hop from ``sender_dependent_relayhost_maps`` (the sender, or
   ``empty_address_relayhost_maps_lookup_key`` for the null sender), else ``relayhost``, else the
   recipient domain; for local and virtual: the recipient domain.
3. A ``transport:nexthop`` value in the class transport overrides the next hop.
4. ``transport_maps``: the full address, the address without its extension, the domain, its
   parent domains (``.parent`` entries, or bare parents when ``parent_domain_matches_subdomains``
   names ``transport_maps``), then ``*``. A result ``transport:nexthop`` replaces both; an empty
   transport (``:nexthop``) keeps the transport; a transport without next hop (``smtp:``) resets
   the next hop to the recipient domain — bypassing ``relayhost``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Protocol

#: Address classes (ADDRESS_CLASS_README).
LOCAL_CLASS = "local"
ALIAS_CLASS = "alias"
VIRTUAL_CLASS = "virtual"
RELAY_CLASS = "relay"
DEFAULT_CLASS = "default"

#: master.cf commands that send over SMTP (their parameters start with the command name).
SMTP_COMMANDS = ("smtp",)
#: Commands that deliver on this host or to a local mailbox store: the mail is not relayed.
LOCAL_COMMANDS = ("local", "virtual", "lmtp", "pipe", "error", "discard", "retry")

_ERROR = "error"
_RETRY = "retry"
_DUNNO = "dunno"


class Tables(Protocol):
    """Table lookups for routing: ``find`` asks one table (``type:name``) for one key.

    Returns the value, or None when the table has no such key. ``partial`` is True for
    lookups Postfix makes with ``DICT_FLAG_FIXED`` (derived keys: a domain, a parent, an address
    without extension): pattern tables (``regexp:``, ``pcre:``, ``cidr:``) are then skipped and
    answer None. Raises ``RouteLookupError`` when the table fails.
    """

    def find(self, table: str, key: str, *, partial: bool) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Service:
    """One master.cf service of type ``unix``: its command and ``-o`` overrides."""

    name: str
    command: str  # first word of the command field: "smtp", "lmtp", "local", "pipe", ...
    overrides: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PostfixView:
    """What routing reads from one Postfix instance (``config_directory``)."""

    parameters: Mapping[str, str]  # postconf -x: every parameter, expanded
    services: Mapping[str, Service]  # unix services by name
    tables: Tables
    config_directory: str = ""
    #: Addresses of this host's interfaces, for ``[ip]`` recipient domains (inet_interfaces = all).
    local_addresses: frozenset[str] = frozenset({"127.0.0.1", "::1"})

    def parameter(self, name: str) -> str:
        """A main.cf parameter's expanded value ("" when unknown)."""
        return self.parameters.get(name, "").strip()

    def service_parameter(self, service: str, name: str) -> tuple[str, str]:
        """(value, where it came from) for a parameter as ``service`` sees it.

        A ``-o name=value`` of that master.cf service wins over main.cf.
        """
        entry = self.services.get(service)
        if entry is not None and name in entry.overrides:
            return entry.overrides[name].strip(), f"master.cf: {service}/unix -o {name}"
        return self.parameter(name), f"main.cf: {name}"


@dataclass(frozen=True, slots=True)
class Route:
    """Where Postfix delivers one final recipient address."""

    address_class: str
    transport: str  # master.cf service name
    nexthop: str
    command: str  # the service's command ("" when master.cf has no such unix service)
    #: How the transport and the next hop were decided, in order, e.g.
    #: ("default_transport = smtp", "main.cf: relayhost", "transport_maps: example.com").
    steps: tuple[str, ...] = ()

    @property
    def relays(self) -> bool:
        """True when the mail leaves over SMTP (smtp(8)), i.e. can reach Microsoft 365."""
        return self.command in SMTP_COMMANDS

    def __str__(self) -> str:
        via = f" via master.cf service {self.transport}" if self.command else ""
        return f"{self.transport}:{self.nexthop}{via}"


def split_list(text: str) -> list[str]:
    """Split a Postfix list parameter on commas and whitespace, keeping ``{ ... }`` whole."""
    return list(_split(text))


@lru_cache(maxsize=256)
def _split(text: str) -> tuple[str, ...]:
    """``split_list``, memoised: routing splits the same few main.cf values for every address."""
    tokens: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if depth == 0 and (char == "," or char.isspace()):
            if current:
                tokens.append("".join(current))
                current = []
            continue
        if char == "{":
            depth += 1
        elif char == "}" and depth:
            depth -= 1
        current.append(char)
    if current:
        tokens.append("".join(current))
    return tuple(tokens)


def is_table(entry: str) -> bool:
    """Is a list entry a ``type:name`` table (as opposed to a name or pattern)?"""
    return ":" in entry and not entry.startswith("[")


def resolve(view: PostfixView, sender: str, recipient: str) -> Route:
    """The route of ``recipient`` (a final address) for mail from ``sender`` ("" = null sender).

    Raises ``RouteLookupError`` when a table fails: Postfix defers such mail too.
    """
    address = recipient.strip()
    at = address.rfind("@")
    domain = _domain(address[at + 1 :]) if at >= 0 else ""
    if not domain:
        domain = _domain(view.parameter("myhostname"))
        address = f"{address}@{domain}"
    steps: list[str] = []
    if _is_local(view, domain):
        address_class = LOCAL_CLASS
        channel, nexthop = view.parameter("local_transport"), domain
        steps.append(f"{domain} is local (mydestination): local_transport = {channel}")
    elif _in_string_list(view, "virtual_alias_domains", domain):
        address_class = ALIAS_CLASS
        channel, nexthop = _ERROR, "5.1.1 User unknown in virtual alias table"
        steps.append(f"{domain} is in virtual_alias_domains but the address has no alias")
    elif _in_string_list(view, "virtual_mailbox_domains", domain):
        address_class = VIRTUAL_CLASS
        channel, nexthop = view.parameter("virtual_transport"), domain
        steps.append(f"{domain} is in virtual_mailbox_domains: virtual_transport = {channel}")
    else:
        if _in_domain_list(view, "relay_domains", domain):
            address_class = RELAY_CLASS
            channel = view.parameter("relay_transport")
            steps.append(f"{domain} is in relay_domains: relay_transport = {channel}")
        else:
            address_class = DEFAULT_CLASS
            channel = _sender_default_transport(view, sender, steps)
        nexthop = _relayhost(view, sender, domain, steps)
    transport, colon, explicit = channel.partition(":")
    if colon and explicit:
        nexthop = explicit
        steps.append(f"next hop {explicit} from the class transport {channel}")
    if address_class != ALIAS_CLASS:
        transport, nexthop = _transport_maps(view, address, domain, transport, nexthop, steps)
    service = view.services.get(transport)
    command = service.command if service is not None else ""
    return Route(address_class, transport, nexthop, command, tuple(steps))


# --- address classes ---------------------------------------------------------------------------


def _domain(text: str) -> str:
    return text.strip().lower().rstrip(".")


def _is_local(view: PostfixView, domain: str) -> bool:
    """resolve_local(): mydestination (exact, tables) or a literal of a local interface."""
    if domain.startswith("[") and domain.endswith("]"):
        literal = domain[1:-1].lower().removeprefix("ipv6:")
        interfaces = _split(view.parameter("inet_interfaces").lower())
        proxies = _split(view.parameter("proxy_interfaces").lower())
        if literal in interfaces or literal in proxies:
            return True
        if "all" in interfaces:
            return literal in view.local_addresses
        if "loopback-only" in interfaces:
            return literal in ("127.0.0.1", "::1")
        return False
    return _in_string_list(view, "mydestination", domain)


def _in_string_list(view: PostfixView, parameter: str, name: str) -> bool:
    """string_list_match(): exact names (case-insensitive) and table lookups of the name."""
    for entry in _split(view.parameter(parameter)):
        negate = entry.startswith("!")
        pattern = entry[1:] if negate else entry
        if is_table(pattern):
            matched = view.tables.find(pattern, name, partial=False) is not None
        else:
            matched = _domain(pattern) == name
        if matched:
            return not negate
    return False


def _in_domain_list(view: PostfixView, parameter: str, name: str) -> bool:
    """domain_list_match() / match_hostname(): names, ``.parent`` patterns, parent styles."""
    parent_style = parameter in _parent_style_parameters(view)
    for entry in _split(view.parameter(parameter)):
        negate = entry.startswith("!")
        pattern = entry[1:] if negate else entry
        if is_table(pattern):
            matched = _table_hostname_match(view, pattern, name, parent_style)
        else:
            pattern = _domain(pattern)
            matched = pattern == name
            if not matched and parent_style:
                matched = name.endswith("." + pattern.lstrip("."))
            elif not matched and pattern.startswith("."):
                matched = name.endswith(pattern) and len(name) > len(pattern)
        if matched:
            return not negate
    return False


def _table_hostname_match(view: PostfixView, table: str, name: str, parent_style: bool) -> bool:
    """The table half of match_hostname(): the name, then (fixed tables) its parents."""
    entry = name
    while entry:
        if view.tables.find(table, entry, partial=entry != name) is not None:
            return True
        dot = entry.find(".", 1)
        if dot < 0:
            return False
        entry = entry[dot + 1 :] if parent_style else entry[dot:]
    return False


def _parent_style_parameters(view: PostfixView) -> frozenset[str]:
    return _lowered(view.parameter("parent_domain_matches_subdomains"))


@lru_cache(maxsize=16)
def _lowered(text: str) -> frozenset[str]:
    return frozenset(item.lower() for item in _split(text))


# --- sender-dependent transport and relay host ---------------------------------------------------


def _sender_default_transport(view: PostfixView, sender: str, steps: list[str]) -> str:
    found = _sender_dependent(
        view,
        "sender_dependent_default_transport_maps",
        "empty_address_default_transport_maps_lookup_key",
        sender,
        steps,
    )
    if found:
        return found
    default = view.parameter("default_transport")
    steps.append(f"default_transport = {default}")
    return default


def _relayhost(view: PostfixView, sender: str, domain: str, steps: list[str]) -> str:
    found = _sender_dependent(
        view,
        "sender_dependent_relayhost_maps",
        "empty_address_relayhost_maps_lookup_key",
        sender,
        steps,
    )
    if found:
        return found
    relayhost = view.parameter("relayhost")
    if relayhost:
        steps.append(f"main.cf: relayhost = {relayhost}")
        return relayhost
    steps.append(f"relayhost is empty: the recipient domain {domain} (MX lookup)")
    return domain


def _sender_dependent(
    view: PostfixView, maps_parameter: str, empty_key_parameter: str, sender: str, steps: list[str]
) -> str:
    """The value ``maps_parameter`` gives ``sender`` (the null sender looks up the value of
    ``empty_key_parameter``), or "" when it has none or says ``DUNNO``."""
    maps = view.parameter(maps_parameter)
    if not maps:
        return ""
    key = sender or view.parameter(empty_key_parameter)
    found = _mail_addr_find(view, maps, key)
    if found is None:
        return ""
    table, value = found
    value = value.strip()
    if not value or value.lower() == _DUNNO:
        return ""
    steps.append(f"{maps_parameter}: {key} -> {value} ({table})")
    return value


def _mail_addr_find(view: PostfixView, maps: str, address: str) -> tuple[str, str] | None:
    """mail_addr_find() with its default strategy (``mail_addr_keys``).

    Returns (table, value) for the first table and key that has an entry, else None.
    """
    tables = _split(maps)
    for key, partial, _ in mail_addr_keys(view, address):
        for table in tables:
            value = view.tables.find(table, key, partial=partial)
            if value is not None:
                return table, value
    return None


def mail_addr_find(view: PostfixView, maps: str, address: str) -> tuple[str, str] | None:
    """mail_addr_find() over the tables of ``maps`` (a list parameter's value): (table, value)
    of the first key that has an entry, in the order ``mail_addr_keys`` gives, else None.
    Sender-dependent SASL lookups (``policyd.rules.submission``) use it too."""
    return _mail_addr_find(view, maps, address)


def mail_addr_keys(view: PostfixView, address: str) -> list[tuple[str, bool, str]]:
    """mail_addr_find()'s keys with its default strategy (Postfix ``mail_addr_find.c``): the full
    address, without its extension, the local part alone (with and without extension) when the
    domain is local or ``$myorigin``, then ``@domain``.

    Each key is (key, partial, unmatched extension): ``partial`` keys skip pattern tables, and the
    extension is what the key dropped ("" when it dropped none), for
    ``propagate_unmatched_extensions``. The null address has no keys (maps_find() never looks
    up an empty key).
    """
    if not address:
        return []
    at = address.rfind("@")
    keys: list[tuple[str, bool, str]] = [(address, False, "")]
    bare, extension = _strip_extension(view, address)
    if bare is not None:
        keys.append((bare, True, extension))
    if at >= 0:
        domain = _domain(address[at + 1 :])
        if domain == _domain(view.parameter("myorigin")) or _is_local(view, domain):
            local = address[:at]
            keys.append((local, True, ""))
            bare_local, local_extension = _strip_extension(view, local)
            if bare_local is not None:
                keys.append((bare_local, True, local_extension))
        keys.append((address[at:], True, ""))
    return keys


def _strip_extension(view: PostfixView, address: str) -> tuple[str | None, str]:
    """strip_addr(): (address without its extension, extension), or (None, "")."""
    delimiters = view.parameter("recipient_delimiter")
    if not delimiters:
        return None, ""
    at = address.rfind("@")
    local, rest = (address[:at], address[at:]) if at >= 0 else (address, "")
    if local.lower() in ("postmaster", "mailer-daemon", "double-bounce"):
        return None, ""
    cut = next((i for i, char in enumerate(local) if char in delimiters), -1)
    if cut <= 0:
        return None, ""
    return local[:cut] + rest, local[cut:]


# --- transport_maps -------------------------------------------------------------------------------


def _transport_maps(  # noqa: PLR0917 - transport_lookup()'s own arguments
    view: PostfixView,
    address: str,
    domain: str,
    transport: str,
    nexthop: str,
    steps: list[str],
) -> tuple[str, str]:
    maps = view.parameter("transport_maps")
    if not maps:
        return transport, nexthop
    tables = _split(maps)
    for key, partial in _transport_keys(view, address, domain):
        for table in tables:
            value = view.tables.find(table, _fold(table, key), partial=partial)
            if value is not None:
                steps.append(f"transport_maps: {key} -> {value.strip()} ({table})")
                return _update_entry(value.strip(), domain, transport, nexthop)
    for table in tables:
        value = view.tables.find(table, "*", partial=False)
        if value is not None:
            steps.append(f"transport_maps: * -> {value.strip()} ({table})")
            return _update_entry(value.strip(), domain, transport, nexthop)
    return transport, nexthop


def _transport_keys(view: PostfixView, address: str, domain: str) -> list[tuple[str, bool]]:
    """transport_lookup()'s keys in order: (key, partial)."""
    keys: list[tuple[str, bool]] = [(address, False)]
    bare, _ = _strip_extension(view, address)
    if bare is not None:
        keys.append((bare, True))
    parent_style = "transport_maps" in _parent_style_parameters(view)
    name = domain
    while name:
        keys.append((name, True))
        dot = name.find(".", 1)
        if dot < 0:
            break
        name = name[dot + 1 :] if parent_style else name[dot:]
    return keys


def _fold(table: str, key: str) -> str:
    """DICT_FLAG_FOLD_FIX: keys of fixed-string tables are looked up in lower case."""
    kind = table.partition(":")[0].lower()
    return key if kind in ("regexp", "pcre") else key.lower()


def _update_entry(value: str, domain: str, transport: str, nexthop: str) -> tuple[str, str]:
    """transport.c update_entry(): how a ``transport:nexthop`` result changes the route."""
    new_transport, _, new_nexthop = value.partition(":")
    if not new_transport:
        return transport, new_nexthop or nexthop
    if new_nexthop:
        return new_transport, new_nexthop
    if new_transport in (_ERROR, _RETRY):
        return new_transport, "Address is undeliverable"
    return new_transport, domain


def distinct_services(routes: Sequence[Route]) -> tuple[str, ...]:
    """The master.cf services of ``routes``, in first-seen order (for reports)."""
    return tuple(dict.fromkeys(route.transport for route in routes))


# --- what the delivering service presents -------------------------------------------------------

#: TLS levels at which smtp(8) does not use TLS at all, so presents no client certificate.
NO_TLS_LEVELS = ("", "none")

#: The levels smtp(8) knows (postconf(5) smtp_tls_security_level; ``dane-only`` since 3.0).
TLS_LEVELS = ("none", "may", "encrypt", "dane", "dane-only", "fingerprint", "verify", "secure")


@dataclass(frozen=True, slots=True)
class ClientTls:
    """What one smtp(8) service presents to one next hop, and where each value came from.

    ``level`` is the ``smtp_tls_policy_maps`` entry for the next-hop destination when there is
    one, else ``smtp_tls_security_level`` (smtp(8), postconf(5); a service's ``-o`` overrides
    win for both). ``certificate_files`` are ``smtp_tls_chain_files`` (Postfix ≥ 3.4), else the
    legacy ``smtp_tls_cert_file``, ``smtp_tls_dcert_file`` and ``smtp_tls_eccert_file``
    (postconf(5): a non-empty chain_files makes Postfix ignore the legacy ones; TLS_README
    "Client-side certificate and private key configuration"). A level below ``may`` means
    smtp(8) never starts TLS, so no certificate is presented whatever the files say.
    Which of an RSA and an ECDSA certificate OpenSSL sends depends on the signature
    algorithms the server asks for: uncertain, so every configured file is listed.
    """

    service: str
    level: str
    level_from: str
    certificate_files: tuple[str, ...]
    certificate_from: str
    bind_address: str
    bind_from: str
    #: The destination whose ``smtp_tls_policy_maps`` entry was looked up ("" = none asked).
    destination: str = ""
    #: The whole policy entry (level and attributes such as ``match=``), "" when none applies.
    policy: str = ""
    #: ``smtp_tls_wrappermode = yes``: TLS from the first byte (SMTPS, port 465).
    wrappermode: bool = False
    wrappermode_from: str = ""

    @property
    def presents_certificate(self) -> bool:
        return self.level not in NO_TLS_LEVELS and bool(self.certificate_files)

    @property
    def mandatory(self) -> bool:
        """True when smtp(8) never falls back to plain text (``dane`` only with TLSA records)."""
        return self.level in MANDATORY_TLS_LEVELS

    @property
    def not_presented_because(self) -> str:
        """Why no certificate is presented ("" when one is)."""
        if self.level in NO_TLS_LEVELS:
            shown = self.level or "empty"
            return (
                f"not presented by Postfix: {self.level_from.split(': ', 1)[-1]} is {shown}, "
                "so smtp(8) does not use TLS"
            )
        return self.no_files_because

    @property
    def no_files_because(self) -> str:
        """Why no certificate could be presented at any level ("" when files are named)."""
        if self.certificate_files:
            return ""
        return (
            f"not presented by Postfix: service {self.service} has no smtp_tls_chain_files, "
            "smtp_tls_cert_file, smtp_tls_dcert_file or smtp_tls_eccert_file"
        )


#: Levels that never fall back to plain text.
MANDATORY_TLS_LEVELS = ("encrypt", "fingerprint", "verify", "secure", "dane-only")

#: The legacy client certificate parameters, in the order they are listed.
_CERT_PARAMETERS = ("tls_cert_file", "tls_dcert_file", "tls_eccert_file")


def client_tls(view: PostfixView, service: str, nexthop: str = "") -> ClientTls:
    """The TLS level, client certificate files and bind address ``service`` uses towards
    ``nexthop`` (its first destination; "" = the service's level without a policy lookup).

    Raises ``RouteLookupError`` when ``smtp_tls_policy_maps`` fails (Postfix defers then).
    """
    prefix = _client_prefix(view, service)
    level, level_from = view.service_parameter(service, f"{prefix}_tls_security_level")
    if not level:
        # Legacy switches (postconf(5)): smtp_enforce_tls means encrypt, smtp_use_tls may.
        enforce, enforce_from = view.service_parameter(service, f"{prefix}_enforce_tls")
        use, use_from = view.service_parameter(service, f"{prefix}_use_tls")
        if enforce.lower() == "yes":
            level, level_from = "encrypt", enforce_from
        elif use.lower() == "yes":
            level, level_from = "may", use_from
    destinations = _split(nexthop)
    destination = destinations[0] if destinations else ""
    policy = ""
    if destination:
        found = tls_policy(view, service, destination)
        if found is not None:
            _, policy, level_from = found
            level = policy.split()[0] if policy.split() else ""
    chain, chain_from = view.service_parameter(service, f"{prefix}_tls_chain_files")
    if chain:
        files, files_from = _split(chain), chain_from
    else:
        found_files: dict[str, str] = {}
        for name in _CERT_PARAMETERS:
            value, where = view.service_parameter(service, f"{prefix}_{name}")
            if value and value not in found_files:
                found_files[value] = where
        files = tuple(found_files)
        files_from = ", ".join(dict.fromkeys(found_files.values())) or chain_from.replace(
            "_tls_chain_files", "_tls_cert_file"
        )
    bind, bind_from = view.service_parameter(service, f"{prefix}_bind_address")
    wrapper, wrapper_from = view.service_parameter(service, f"{prefix}_tls_wrappermode")
    return ClientTls(
        service,
        level.lower(),
        level_from,
        files,
        files_from,
        bind,
        bind_from,
        destination,
        policy,
        wrapper.lower() in ("yes", "true", "1"),
        wrapper_from,
    )


def _client_prefix(view: PostfixView, service: str) -> str:
    """The parameter prefix of ``service``'s delivery agent: ``lmtp`` for lmtp(8), else ``smtp``."""
    entry = view.services.get(service)
    return "lmtp" if entry is not None and entry.command == "lmtp" else "smtp"


def tls_policy_keys(destination: str) -> tuple[str, ...]:
    """The ``smtp_tls_policy_maps`` keys smtp(8) looks up for one next-hop destination.

    smtp_tls_policy.c ``tls_policy_lookup``: a destination that is not a plain host name
    (``[host]``, ``[host]:port``, ``host:port``) is looked up once, verbatim; a plain name (a
    recipient domain, or a next hop written without brackets or port) is looked up, then its
    parent domains as ``.parent`` — the first key with an entry wins.
    """
    name = destination.strip()
    if not name:
        return ()
    if name.startswith("[") or ":" in name or "/" in name:
        return (name,)
    keys = [name]
    dot = name.find(".", 1)
    while dot >= 0:
        keys.append(name[dot:])
        dot = name.find(".", dot + 1)
    return tuple(keys)


def tls_policy(view: PostfixView, service: str, destination: str) -> tuple[str, str, str] | None:
    """(key, entry, where) of the ``smtp_tls_policy_maps`` entry for ``destination`` as
    ``service`` sees it (its ``-o`` override wins), or None when there is none.

    Lookups are case-insensitive for fixed tables; pattern tables see every key.
    """
    prefix = _client_prefix(view, service)
    maps, maps_from = view.service_parameter(service, f"{prefix}_tls_policy_maps")
    if not maps:
        return None
    tables = _split(maps)
    for key in tls_policy_keys(destination):
        for table in tables:
            value = view.tables.find(table, _fold(table, key), partial=False)
            if value is not None and value.strip():
                return key, " ".join(value.split()), f"{maps_from} entry {key} ({table})"
    return None
