"""The envelope sender Microsoft 365 sees: Postfix's sender rewriting, as pure functions.

A policy daemon sees MAIL FROM as the client wrote it; Microsoft 365 sees it after cleanup(8)
and smtp(8) rewrote it. With ``[postfix]`` the rules apply Postfix's own steps, in its order
(Postfix 3.x ``src/cleanup/cleanup_addr.c`` ``cleanup_addr_sender``, ``cleanup_map11.c``,
``cleanup_masquerade.c``, ``src/smtp/smtp_misc.c`` / ``smtp_map11.c``; postconf(5)):

1. ``cleanup_sender`` — what cleanup(8) queues: an address without ``@`` gets ``@$myorigin``
   (``append_at_myorigin``); ``MAILER-DAEMON@$myorigin`` becomes the null sender; then, unless
   the listener's ``receive_override_options`` has ``no_address_mappings``,
   ``sender_canonical_maps`` (when ``sender_canonical_classes`` has ``envelope_sender``), then
   ``canonical_maps`` (``canonical_classes``), then ``masquerade_domains`` (``masquerade_classes``,
   except local parts in ``masquerade_exceptions``). Each map is applied again to its own result
   until it maps an address to itself or has no entry (at most 10 times). The parameters are
   those of the listener's ``cleanup_service_name`` service (its master.cf ``-o`` overrides).
   trivial-rewrite(8) routes with this queued sender (qmgr passes the queue file's sender), so
   ``sender_dependent_relayhost_maps`` and ``sender_dependent_default_transport_maps`` are asked
   with it (``policyd.rules.routing``; the null sender with ``empty_address_*_lookup_key``).
2. ``generic_sender`` — what smtp(8) writes in MAIL FROM: the delivering master.cf service's
   ``smtp_generic_maps`` (its ``-o`` override wins), one lookup, never for the null sender.

Lookup keys are mail_addr_find()'s (``policyd.rules.routing.mail_addr_keys``): the whole
address, without its extension, the local part when the domain is local, ``@domain``;
``regexp:``/``pcre:`` tables and rewriting services (``tcp:``, ``socketmap:``: postsrsd) only get
the whole address. A result ``@domain`` keeps the local part; an extension the key dropped is
added back when ``propagate_unmatched_extensions`` names ``canonical`` (cleanup) or ``generic``
(smtp). A rewriting service is asked what it writes (``postmap -q``), never guessed.

A table that fails raises ``RewriteLookupError``: Postfix does not accept (cleanup) or defers
(smtp) such mail, and the daemon answers ``on_error``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from policyd.errors import LookupFailureError, RewriteLookupError
from policyd.rules.routing import PostfixView, mail_addr_keys, split_list

#: Table types that are a service answering over a socket (postsrsd 1.x's ``tcp:`` map,
#: postsrsd 2.x's ``socketmap:``). Postfix asks them only with whole addresses (dict_tcp.c and
#: dict_sockmap.c flag them DICT_FLAG_PATTERN).
SERVICE_TYPES = frozenset({"tcp", "socketmap"})

#: cleanup_map11.c MAX_RECURSION: a map applied to its own result at most this often.
MAX_RECURSION = 10

#: The cleanup parameters that rewrite the envelope sender (for opening their tables).
CLEANUP_PARAMETERS = (
    "sender_canonical_maps",
    "canonical_maps",
    "masquerade_domains",
    "masquerade_exceptions",
)
#: smtp(8)'s parameter that rewrites MAIL FROM.
GENERIC_PARAMETER = "smtp_generic_maps"

_ENVELOPE_SENDER = "envelope_sender"
_NO_ADDRESS_MAPPINGS = "no_address_mappings"
_MAILER_DAEMON = "mailer-daemon"


def table_type(spec: str) -> str:
    """The type of a ``type:name`` table, looking through ``proxy:`` ("" for a bare name)."""
    kind, colon, rest = spec.partition(":")
    while colon and kind.lower() == "proxy":
        kind, colon, rest = rest.partition(":")
    return kind.lower() if colon else ""


def is_service(spec: str) -> bool:
    """Is this table a service answering over a socket (postsrsd)?"""
    return table_type(spec) in SERVICE_TYPES


@dataclass(frozen=True, slots=True)
class RewriteStep:
    """One rewrite Postfix makes: which parameter and table, from where, from what to what."""

    parameter: str  # e.g. "sender_canonical_maps", "masquerade_domains", "smtp_generic_maps"
    table: str  # the table that had the entry (the masquerade domain for masquerade_domains)
    source: str  # "main.cf: sender_canonical_maps" or "master.cf: NAME/unix -o PARAM"
    before: str
    after: str

    @property
    def service(self) -> bool:
        """The rewriting service (postsrsd) wrote this address."""
        return is_service(self.table)

    def __str__(self) -> str:
        return f"{self.source} ({self.table}): <{self.before}> -> <{self.after}>"


@dataclass(frozen=True, slots=True)
class SenderRewrite:
    """The envelope sender before and after Postfix's rewriting, with every step taken.

    ``notes`` say why a stage did not apply (a listener with ``no_address_mappings``);
    ``services`` are the rewriting services (postsrsd) Postfix asks on the way, whether or not
    they rewrote the address (postsrsd answers "not found" for a domain it excludes).
    """

    before: str
    after: str
    steps: tuple[RewriteStep, ...] = ()
    notes: tuple[str, ...] = ()
    services: tuple[str, ...] = ()

    @property
    def rewritten(self) -> bool:
        return self.before != self.after

    @property
    def asked_service(self) -> bool:
        """Postfix asks a rewriting service (postsrsd): its answer replaces any SRS guess."""
        return bool(self.services)

    @property
    def srs(self) -> bool:
        """A rewriting service wrote an SRS address (``SRS0=…`` / ``SRS1=…``)."""
        return any(step.service for step in self.steps) and is_srs_address(self.after)

    @property
    def tables(self) -> tuple[str, ...]:
        """Each step as ``parameter table``, in order (for short explanations)."""
        return tuple(f"{step.parameter} {step.table}" for step in self.steps)

    def then(self, more: SenderRewrite) -> SenderRewrite:
        """This rewrite followed by ``more`` (which starts from ``self.after``)."""
        return SenderRewrite(
            self.before,
            more.after,
            self.steps + more.steps,
            self.notes + more.notes,
            self.services + more.services,
        )


def is_srs_address(address: str) -> bool:
    """``SRS0`` / ``SRS1`` followed by a separator (``=``, ``+``, ``-``) in the local part."""
    local = address.rpartition("@")[0] if "@" in address else address
    return len(local) > 4 and local[:4].upper() in ("SRS0", "SRS1") and local[4] in "=+-"


@dataclass(frozen=True, slots=True)
class Listener:
    """The master.cf smtpd listener whose mail the daemon judges, with its ``-o`` overrides
    (``receive_override_options``, ``cleanup_service_name``, ``content_filter``)."""

    name: str  # e.g. "smtp/inet"
    overrides: Mapping[str, str] = field(default_factory=dict)

    def parameter(self, view: PostfixView, name: str) -> tuple[str, str]:
        """(value, where it came from) as this listener sees ``name``."""
        if name in self.overrides:
            return self.overrides[name].strip(), f"master.cf: {self.name} -o {name}"
        return view.parameter(name), f"main.cf: {name}"


def cleanup_sender(
    view: PostfixView, sender: str, listener: Listener | None = None
) -> SenderRewrite:
    """The sender cleanup(8) queues for mail from ``sender`` received by ``listener`` (None:
    main.cf's settings); see the module docstring. Raises ``RewriteLookupError``."""
    if not sender:
        return SenderRewrite("", "")
    front = listener or Listener("")
    address = sender
    steps: list[RewriteStep] = []
    notes: list[str] = []
    if "@" not in address and _yes(view.parameter("append_at_myorigin") or "yes"):
        origin = view.parameter("myorigin")
        if origin:
            address = f"{address}@{origin}"
            steps.append(
                RewriteStep("append_at_myorigin", "", "main.cf: myorigin", sender, address)
            )
    origin = view.parameter("myorigin").lower().rstrip(".")
    if address.lower() == f"{_MAILER_DAEMON}@{origin}":
        steps.append(RewriteStep("MAILER-DAEMON", "", "cleanup(8)", address, ""))
        return SenderRewrite(sender, "", tuple(steps))
    options, options_from = front.parameter(view, "receive_override_options")
    if _NO_ADDRESS_MAPPINGS in _lowered(options):
        content_filter, filter_from = front.parameter(view, "content_filter")
        if not content_filter:
            notes.append(
                f"{options_from} has {_NO_ADDRESS_MAPPINGS}: cleanup(8) rewrites no address"
            )
            return SenderRewrite(sender, address, tuple(steps), tuple(notes))
        notes.append(
            f"{options_from} has {_NO_ADDRESS_MAPPINGS}, but {filter_from} = {content_filter}: "
            "the mappings are assumed to apply when the filter re-injects the mail (the usual "
            "after-filter listener keeps them)"
        )
    cleanup, _ = front.parameter(view, "cleanup_service_name")
    cleanup = cleanup or "cleanup"
    propagate = "canonical" in _lowered(view.service_parameter(cleanup, _PROPAGATE)[0])
    services: list[str] = []
    for maps_parameter, classes_parameter in (
        ("sender_canonical_maps", "sender_canonical_classes"),
        ("canonical_maps", "canonical_classes"),
    ):
        maps, source = view.service_parameter(cleanup, maps_parameter)
        classes, _ = view.service_parameter(cleanup, classes_parameter)
        if maps and _ENVELOPE_SENDER in _lowered(classes):
            services += [table for table in split_list(maps) if is_service(table)]
            address = _map_recursively(
                view, (maps_parameter, maps, source), address, propagate, steps
            )
    domains, source = view.service_parameter(cleanup, "masquerade_domains")
    classes, _ = view.service_parameter(cleanup, "masquerade_classes")
    if domains and _ENVELOPE_SENDER in _lowered(classes):
        address = _masquerade(view, cleanup, domains, source, address, steps)
    return SenderRewrite(sender, address, tuple(steps), tuple(notes), tuple(services))


def generic_sender(view: PostfixView, service: str, sender: str) -> SenderRewrite:
    """MAIL FROM as master.cf ``service`` (an smtp(8) service) writes the queued ``sender``:
    its ``smtp_generic_maps``, looked up once. Raises ``RewriteLookupError``."""
    entry = view.services.get(service)
    if not sender or entry is None or entry.command != "smtp":
        return SenderRewrite(sender, sender)
    maps, source = view.service_parameter(service, GENERIC_PARAMETER)
    if not maps:
        return SenderRewrite(sender, sender)
    propagate = "generic" in _lowered(view.service_parameter(service, _PROPAGATE)[0])
    services = tuple(table for table in split_list(maps) if is_service(table))
    found = _map_once(view, maps, sender, propagate)
    if found is None or found[1] == sender:
        return SenderRewrite(sender, sender, services=services)
    table, after = found
    step = RewriteStep(GENERIC_PARAMETER, table, source, sender, after)
    return SenderRewrite(sender, after, (step,), services=services)


_PROPAGATE = "propagate_unmatched_extensions"


def _yes(value: str) -> bool:
    return value.strip().lower() in ("yes", "true", "1")


def _lowered(text: str) -> frozenset[str]:
    return frozenset(item.lower() for item in split_list(text))


def _map_recursively(
    view: PostfixView,
    setting: tuple[str, str, str],
    address: str,
    propagate: bool,
    steps: list[RewriteStep],
) -> str:
    """cleanup_map11_external(): map again until an address maps to itself or has no entry.
    ``setting`` is (parameter, its tables, where the value came from)."""
    parameter, maps, source = setting
    for _ in range(MAX_RECURSION):
        found = _map_once(view, maps, address, propagate)
        if found is None:
            return address
        table, after = found
        if after != address:
            steps.append(RewriteStep(parameter, table, source, address, after))
        if after.casefold() == address.casefold():
            return after
        address = after
    return address


def _map_once(
    view: PostfixView, maps: str, address: str, propagate: bool
) -> tuple[str, str] | None:
    """mail_addr_map(): (table, the first address of its result) for ``address``, or None."""
    tables = split_list(maps)
    for key, partial, extension in mail_addr_keys(view, address):
        for table in tables:
            try:
                value = view.tables.find(table, key, partial=partial)
            except LookupFailureError as error:
                raise RewriteLookupError(str(error)) from None
            if value is None:
                continue
            words = split_list(value.strip())
            result = words[0] if words else ""
            if not result:
                raise RewriteLookupError(f"{table}: empty result for {key}")
            if result.startswith("@"):
                user = address.rpartition("@")[0] if "@" in address else address
                if extension and user.endswith(extension):
                    user = user[: -len(extension)]
                result = user + result
            elif propagate and extension:
                local, at, domain = result.rpartition("@")
                result = f"{local}{extension}{at}{domain}" if at else result + extension
            return table, result
    return None


def _masquerade(  # noqa: PLR0917 - cleanup_masquerade_external()'s own arguments
    view: PostfixView,
    cleanup: str,
    domains: str,
    source: str,
    address: str,
    steps: list[RewriteStep],
) -> str:
    """cleanup_masquerade_external(): strip the address's domain down to the first masquerade
    domain that is a parent of it (``!name`` entries stop the search without rewriting)."""
    local, at, domain = address.rpartition("@")
    if not at:
        return address
    exceptions, _ = view.service_parameter(cleanup, "masquerade_exceptions")
    if exceptions and _in_string_list(view, exceptions, local):
        return address
    name = domain.lower()
    for entry in split_list(domains):
        stripped = entry.lstrip("!")
        truncate = (len(entry) - len(stripped)) % 2 == 0  # each "!" flips it
        masq = stripped.lower()
        if not masq:
            continue
        if masq == name:
            break
        if name.endswith("." + masq):
            if truncate:
                after = f"{local}@{masq}"
                steps.append(RewriteStep("masquerade_domains", masq, source, address, after))
                return after
            break
    return address


def _in_string_list(view: PostfixView, patterns: str, name: str) -> bool:
    """string_list_match(): names (case-insensitive), ``!`` negation and table lookups."""
    for entry in split_list(patterns):
        negate = entry.startswith("!")
        pattern = entry[1:] if negate else entry
        if table_type(pattern):
            try:
                matched = view.tables.find(pattern, name, partial=False) is not None
            except LookupFailureError as error:
                raise RewriteLookupError(str(error)) from None
        else:
            matched = pattern.lower() == name.lower()
        if matched:
            return not negate
    return False
