"""Client-submission routes (SPEC §5.4): what Microsoft 365's SMTP AUTH endpoint will answer.

A Postfix relay that sends to ``smtp.office365.com:587`` (or ``smtp.office365.us``) is a mail
client there: no connector and no accepted-domain test apply; Microsoft 365 answers per
credential and per sender identity. Three reasons (``policyd.rules.reasons``):

- ``submission-no-credentials`` (``530 5.7.57``): smtp(8) does not authenticate: SASL is off for
  the delivering service (``smtp_sasl_auth_enable``, a master.cf ``-o`` wins), no
  ``smtp_sasl_password_maps`` is set, or the map has no entry for this delivery. Postfix then
  sends ``MAIL FROM`` unauthenticated (SASL_README; tarickb/sasl-xoauth2#96: the message and its
  bounce both got 5.7.57).
- ``submission-sender-not-login`` (``550 5.7.60``): the P1 sender is neither the login mailbox
  nor an address ``[submission] send_as`` lists for that login. Without a list for the login this
  is the assumption ``submission_sender_must_be_login`` (default false: accept and say so).
- ``submission-accepted``: a credential applies and the sender is the login or allowed.

The null sender with a credential is the assumption ``submission_null_sender_refused`` (one
public log shows a 5.7.60 for it; no Microsoft text; default false).

The password-map lookup is smtp(8)'s, ``smtp_sasl_passwd_lookup()`` in Postfix's
``src/smtp/smtp_sasl_glue.c``: with ``smtp_sender_dependent_authentication = yes`` and a
non-null sender, the sender as ``mail_addr_find()`` looks it up (the address, the address
without its extension, the local part when the domain is local, ``@domain``); then the remote
host name; then the next-hop destination as written (``[smtp.office365.com]:587``). The null
sender skips the sender step (no lookup key stands in for it). The value is ``user:password``
split at the first ``smtp_sasl_password_result_delimiter`` character: only the user part (the
login) is ever kept in a result; the password is never returned, logged or shown.

Microsoft decides SendAs after DATA and also checks the ``From:`` header, which a policy daemon
never sees: every explanation says the prediction covers the envelope only.

Pure: the tables are asked through ``policyd.rules.routing.Tables`` (``postmap -q`` behind it
may block, like routing's own lookups).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from policyd.errors import RouteLookupError
from policyd.rules import endpoints
from policyd.rules.assumptions import (
    SUBMISSION_NULL_SENDER_REFUSED,
    SUBMISSION_SENDER_MUST_BE_LOGIN,
    Assumptions,
    note,
)
from policyd.rules.model import split_address
from policyd.rules.reasons import (
    SUBMISSION_ACCEPTED,
    SUBMISSION_NO_CREDENTIALS,
    SUBMISSION_SENDER_NOT_LOGIN,
)
from policyd.rules.routing import PostfixView, mail_addr_find, split_list

#: ``[submission] send_as``: login mailbox (lower case) -> addresses and ``*@domain`` patterns.
SendAs = Mapping[str, tuple[str, ...]]

#: The sentence every submission explanation ends with.
ENVELOPE_ONLY = (
    "The prediction covers the envelope only: Microsoft 365 also checks the From: header "
    "after DATA (5.7.60, 5.2.252 SendAsDenied), which a policy daemon never sees."
)

_YES = ("yes", "true", "on", "1")


@dataclass(frozen=True, slots=True)
class Sasl:
    """The SASL client settings one smtp(8) service uses, with where each came from."""

    service: str
    enabled: bool
    enabled_from: str
    password_maps: str
    maps_from: str
    sender_dependent: bool
    sender_dependent_from: str
    delimiter: str  # smtp_sasl_password_result_delimiter, ":" by default
    mechanism_filter: str
    mechanism_filter_from: str


def sasl_settings(view: PostfixView, service: str) -> Sasl:
    """The SASL parameters of master.cf ``service`` (``-o`` overrides win over main.cf)."""
    enabled, enabled_from = view.service_parameter(service, "smtp_sasl_auth_enable")
    maps, maps_from = view.service_parameter(service, "smtp_sasl_password_maps")
    dependent, dependent_from = view.service_parameter(
        service, "smtp_sender_dependent_authentication"
    )
    delimiter, _ = view.service_parameter(service, "smtp_sasl_password_result_delimiter")
    mechanisms, mechanisms_from = view.service_parameter(service, "smtp_sasl_mechanism_filter")
    return Sasl(
        service,
        enabled.lower() in _YES,
        enabled_from,
        maps,
        maps_from,
        dependent.lower() in _YES,
        dependent_from,
        delimiter or ":",
        mechanisms,
        mechanisms_from,
    )


@dataclass(frozen=True, slots=True)
class Credential:
    """Which password-map entry smtp(8) uses for one delivery: the login only, never the
    password. ``login == ""`` means none; ``problem`` is set when the map could not be asked."""

    login: str
    key: str  # the lookup key that found it ("" when none)
    table: str  # the table that answered ("" when none)
    tried: tuple[str, ...]  # the keys asked, in order
    problem: str = ""
    by_sender: bool = False  # found by the sender (smtp_sender_dependent_authentication)


def lookup_keys(sasl: Sasl, sender: str, nexthop: str) -> tuple[tuple[str, bool], ...]:
    """The keys smtp(8) asks, in order: (key, is the sender step); see the module docstring."""
    keys: list[tuple[str, bool]] = []
    if sasl.sender_dependent and sender:
        keys.append((sender, True))
    destinations = split_list(nexthop)
    if destinations:
        hops = endpoints.parse_nexthop(destinations[0])
        if hops:
            keys.append((hops[0].host, False))
        keys.append((destinations[0], False))
    return tuple(keys)


def credential(view: PostfixView, sasl: Sasl, sender: str, nexthop: str) -> Credential:
    """The credential smtp(8) authenticates with for mail from ``sender`` to ``nexthop``.

    A table that cannot be asked (unreadable to the daemon, a failing lookup) gives a
    ``Credential`` with ``problem`` set rather than an exception: under doubt the caller predicts
    no refusal.
    """
    tried: list[str] = []
    if not sasl.password_maps:
        return Credential("", "", "", ())
    try:
        for key, is_sender in lookup_keys(sasl, sender, nexthop):
            tried.append(key)
            if is_sender:
                found = mail_addr_find(view, sasl.password_maps, key)
            else:
                found = _first(view, sasl.password_maps, key)
            if found is not None:
                table, value = found
                login = value.strip().split(sasl.delimiter[0], 1)[0].strip()
                return Credential(login, key, table, tuple(tried), by_sender=is_sender)
    except RouteLookupError as error:
        return Credential("", "", "", tuple(tried), problem=str(error))
    return Credential("", "", "", tuple(tried))


def _first(view: PostfixView, maps: str, key: str) -> tuple[str, str] | None:
    """maps_find(): the first table of ``maps`` with an entry for ``key`` (every table type)."""
    for table in split_list(maps):
        value = view.tables.find(table, key, partial=False)
        if value is not None:
            return table, value
    return None


def may_send_as(login: str, sender: str, send_as: SendAs) -> bool | None:
    """True when ``login`` may use ``sender``: it is the login itself, or ``send_as`` lists it
    (an address, or ``*@domain``); False when a list exists and does not; None without a list."""
    if sender.casefold() == login.casefold():
        return True
    allowed = send_as.get(login.casefold())
    if allowed is None:
        return None
    _, domain = split_address(sender)
    for entry in allowed:
        if entry.startswith("*@"):
            if domain and domain == entry[2:]:
                return True
        elif entry.casefold() == sender.casefold():
            return True
    return False


@dataclass(frozen=True, slots=True)
class Decision:
    """One submission prediction: a reason id of ``policyd.rules.reasons`` and why."""

    reason: str
    explanation: str
    #: The assumption keys whose other setting would change the predicted kind.
    assumptions: tuple[str, ...] = ()


def decide(
    *,
    sasl: Sasl,
    found: Credential,
    sender: str,
    nexthop: str,
    send_as: SendAs,
    assumptions: Assumptions,
) -> Decision:
    """SPEC §5.4 for one delivery of mail from ``sender`` (the P1 sender Microsoft 365 sees;
    "" is the null sender) over a submission route to ``nexthop``."""
    where = f"Postfix sends this to {nexthop}, Microsoft 365's SMTP AUTH client-submission " + (
        f"endpoint (master.cf service {sasl.service}): no connector decides there, the login does."
    )
    if not sasl.enabled:
        return _no_credentials(
            f"{where} SASL is off for this service ({sasl.enabled_from} is not yes), so "
            "smtp(8) sends MAIL FROM without AUTH. Set smtp_sasl_auth_enable = yes with an "
            "smtp_sasl_password_maps entry for this next hop."
        )
    if not sasl.password_maps:
        return _no_credentials(
            f"{where} {sasl.maps_from.split(': ', 1)[-1]} is empty, so smtp(8) has no "
            "credential and does not authenticate. Add a password map with an entry for "
            f"{nexthop}."
        )
    if found.problem:
        return Decision(
            SUBMISSION_ACCEPTED,
            f"{where} m365-policyd cannot ask {sasl.maps_from.split(': ', 1)[-1]} "
            f"({found.problem}), so whether smtp(8) authenticates is unknown; under this doubt "
            "no refusal is predicted. Give the daemon read access to the password map (only the "
            f"login is used, never the password). {ENVELOPE_ONLY}",
        )
    if not found.login:
        tried = ", ".join(found.tried) or "(none)"
        skipped = (
            " The null sender is never looked up by sender, only by host and next hop."
            if not sender and sasl.sender_dependent
            else ""
        )
        return _no_credentials(
            f"{where} {sasl.maps_from.split(': ', 1)[-1]} ({sasl.password_maps}) has no entry "
            f"for {tried}, so smtp(8) sends MAIL FROM without AUTH.{skipped} Add an entry for "
            + (
                "this sender or for the next hop"
                if sasl.sender_dependent
                else f"the next hop {found.tried[-1] if found.tried else nexthop}"
            )
            + "."
        )
    login = (
        f"smtp(8) logs in as {found.login} (the {found.table} entry for {found.key}"
        + (f", {sasl.sender_dependent_from} = yes" if found.by_sender else "")
        + ")"
    )
    settings = assumptions
    if not sender:
        refused = settings.submission_null_sender_refused
        return Decision(
            _null_reason(refused),
            f"{where} {login} and sends the null sender (a bounce or auto-reply); "
            + (
                "Microsoft 365 refuses it from a mailbox login"
                if refused
                else "Microsoft 365 accepts it"
            )
            + f" under {note(SUBMISSION_NULL_SENDER_REFUSED, settings)}. {ENVELOPE_ONLY}",
            (SUBMISSION_NULL_SENDER_REFUSED,),
        )
    allowed = may_send_as(found.login, sender, send_as)
    if allowed is True:
        why = (
            "the login itself"
            if sender.casefold() == found.login.casefold()
            else "listed for it in [submission] send_as"
        )
        return Decision(
            SUBMISSION_ACCEPTED,
            f"{where} {login}, and the sender {sender} is {why}. {ENVELOPE_ONLY}",
        )
    if allowed is False:
        return Decision(
            SUBMISSION_SENDER_NOT_LOGIN,
            f"{where} {login}, and the sender {sender} is neither that mailbox nor listed for "
            f"it in [submission] send_as. Grant {found.login} SendAs on {sender} (and list it in "
            "send_as), rewrite the sender to the login (sender_canonical_maps or "
            f"smtp_generic_maps), or add a credential for {sender}. {ENVELOPE_ONLY}",
        )
    must = settings.submission_sender_must_be_login
    return Decision(
        SUBMISSION_SENDER_NOT_LOGIN if must else SUBMISSION_ACCEPTED,
        f"{where} {login}, and the sender {sender} is not that mailbox; [submission] send_as "
        f"has no list for {found.login}, so this follows "
        f"{note(SUBMISSION_SENDER_MUST_BE_LOGIN, settings)}. List the addresses {found.login} "
        f"may send as in [submission] send_as to decide it. {ENVELOPE_ONLY}",
        (SUBMISSION_SENDER_MUST_BE_LOGIN,),
    )


def _null_reason(refused: bool) -> str:
    return SUBMISSION_SENDER_NOT_LOGIN if refused else SUBMISSION_ACCEPTED


def _no_credentials(explanation: str) -> Decision:
    return Decision(SUBMISSION_NO_CREDENTIALS, f"{explanation} {ENVELOPE_ONLY}")


@dataclass(frozen=True, slots=True)
class SubmissionRoute:
    """A route to a client-submission endpoint, with what deciding it needs
    (``policyd.rules.relay.Router`` builds it; ``policyd.rules.predict`` decides it)."""

    view: PostfixView = field(repr=False)  # every parameter: never printed
    sasl: Sasl
    nexthop: str
    send_as: SendAs

    def decide(self, sender: str, assumptions: Assumptions) -> Decision:
        """SPEC §5.4 for mail from ``sender`` ("" = null) over this route."""
        found = credential(self.view, self.sasl, sender, self.nexthop)
        return decide(
            sasl=self.sasl,
            found=found,
            sender=sender,
            nexthop=self.nexthop,
            send_as=self.send_as,
            assumptions=assumptions,
        )
