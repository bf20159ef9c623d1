"""Reading one Postfix delivery line: what Microsoft 365 really answered (pure, no I/O).

``parse_delivery`` reads one Postfix log line and returns a ``Delivery`` for an smtp/lmtp
delivery attempt, ``None`` for any other line, or ``UNPARSEABLE`` for a line that starts like a
delivery line but does not parse. ``relay_matcher`` tells whether a delivery went to a
Microsoft 365 relay. ``microsoft_reply`` finds the reply Microsoft 365 gave in a delivery line
(``None`` when Postfix failed on its own: no connection, lost connection, its own TLS
failure), and ``classify_reply`` turns a reply's text into an **observed kind**, the
vocabulary predictions are compared in. The join with predictions is
``policyd.engine.outcomes``; following the log is ``policyd.daemon.followers``; ``replay`` and
``probe`` classify with the same functions.

Address-verification probes (``status=deliverable`` / ``undeliverable``) are not deliveries.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable
from typing import Final, NamedTuple

# --- kinds (docs/postfix.md) ---------------------------------------------------------------

#: Observed kinds: what Microsoft 365's reply says, classified by its text. The first five are
#: also the predicted kinds (``policyd.rules.reasons`` gives each reason its kind).
ACCEPTED = "accepted"  # 2.x.x
NO_CONNECTOR = "no-connector"  # 5.7.64 TenantAttribution
ATTR36 = "attr36"  # 5.7.64 ... ATTR36
DIRECT_SEND = "direct-send"  # 5.7.68
PARTNER_RESTRICTED = "partner-restricted"  # 5.7.51
WRONG_REGION = "wrong-region"  # 4.4.62 ... ATTR35
UNREGISTERED_DOMAIN = "unregistered-domain"  # 5.7.750
TLS = "tls"  # 454, or 4.7.0 naming TLS or the certificate
# The SMTP AUTH client-submission endpoint (smtp.office365.com, SPEC §5.4):
AUTH_REQUIRED = "auth-required"  # 530 5.7.57: MAIL FROM without AUTH
SEND_AS_DENIED = "send-as-denied"  # 550 5.7.60, 554 5.2.252 SendAsDenied
BASIC_AUTH_DISABLED = "basic-auth-disabled"  # 535 5.7.139, 550 5.7.30: Basic auth retired
AUTH_FAILED = "auth-failed"  # 535 5.7.3, any other 535: the login was refused
OTHER = "other"  # anything else Microsoft 365 answered

#: Every kind a prediction can have, in the order of docs/postfix.md.
PREDICTED_KINDS: tuple[str, ...] = (
    ACCEPTED,
    NO_CONNECTOR,
    ATTR36,
    DIRECT_SEND,
    PARTNER_RESTRICTED,
    AUTH_REQUIRED,
    SEND_AS_DENIED,
)
#: Every kind an observed reply can have.
OBSERVED_KINDS: tuple[str, ...] = (
    *PREDICTED_KINDS,
    WRONG_REGION,
    UNREGISTERED_DOMAIN,
    TLS,
    BASIC_AUTH_DISABLED,
    AUTH_FAILED,
    OTHER,
)


class Delivery(NamedTuple):
    """One delivery attempt as Postfix's smtp(8)/lmtp(8) (or local, pipe, ...) logged it.

    (A named tuple rather than a frozen dataclass: ``replay`` builds one for every delivery to
    Microsoft 365 in a log, and a tuple is several times cheaper to make.)
    """

    service: str  # the syslog tag without pid: "postfix/smtp", "postfix-out/smtp"
    queue_id: str
    to: str  # the final recipient, as logged
    orig_to: str  # the original recipient ("" when Postfix logged none)
    relay: str  # as logged: "host[address]:port", "none", "local"
    relay_host: str  # "host" (or the whole value when it has no brackets)
    relay_address: str  # "address" inside the brackets, "" without
    dsn: str  # the enhanced status code: "2.6.0", "5.7.64", "4.4.62"
    status: str  # sent, deferred, bounced, ...
    detail: str = ""  # the text in parentheses after the status, "" when Postfix wrote none


class Unparseable:
    """A line that looks like a delivery line but cannot be read (counted as skipped)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNPARSEABLE"


UNPARSEABLE: Final = Unparseable()


#: Python's ``\s`` (every character ``str.isspace`` is true for) written out: the regex engine
#: checks a class of plain characters several times faster than one holding ``\s`` (a test
#: checks that the two are the same).
_SPACE = r"\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# "<tag>[pid]: <queue id>: to=<" anywhere in the line: syslog, ISO-8601 and journalctl
# prefixes all come before it; the tag is syslog_name/service ("postfix/smtp",
# "postfix-out/smtp", "postfix/relay/smtp"). (Possessive "++" where the next character can
# never be one of the run's: the same matches, without the engine's bookkeeping.)
_TAG = (
    rf"(?P<service>[^{_SPACE}\[\]/:]++(?:/[^{_SPACE}\[\]/:]++)+)\[\d++\]: "
    r"(?P<queue_id>[0-9A-Za-z]++): to=<"
)
_DELIVERY_START = re.compile(rf"(?:^|[{_SPACE}])" + _TAG)


def _rest(relay: str, status: str) -> str:
    """What follows "to=<", with ``relay`` and ``status`` as the patterns of those values."""
    return (
        r"(?P<to>[^>]*+)>"
        r"(?:, orig_to=<(?P<orig_to>[^>]*+)>)?"
        rf", relay=(?P<relay>{relay})"
        rf"(?:, [a-z_]++=[^{_SPACE},]*+)*?"  # conn_use=, delay=, delays=
        r", dsn=(?P<dsn>[245]\.\d{1,3}\.\d{1,3})"
        rf", status=(?P<status>{status})(?:[{_SPACE}]|$)"
        rf"(?:\((?P<detail>.*)\)[{_SPACE}]*$)?"
    )


_RELAY_VALUE = rf"[^{_SPACE},]++"
_STATUS = r"[A-Za-z]++"
_DELIVERY_REST = re.compile(_rest(_RELAY_VALUE, _STATUS))
# Both in one match from the tag's first character: the common case, where the tag is the
# word before the space before the queue ID.
_DELIVERY = re.compile(_TAG + _rest(_RELAY_VALUE, _STATUS))
# The usual whole line, read from its start: a syslog or RFC 3339 time, a host name, the tag.
# Neither the time nor the host can hold ": to=<", so the tag is the word before the queue ID
# of the first ": to=<", as _DELIVERY reads it. The tag's classes and the status's are
# narrower (a fixed character follows each: a line they refuse is read the general way, never
# differently; the status is then lower case already), and the relay= value is read up to
# the next comma, far more cheaply than by its class; _split_relay refuses one with white
# space in it (the line is then read the general way).
_LOGGED = re.compile(
    r"(?:[A-Z][a-z][a-z] [ 0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9](?:\.[0-9]+)?"
    r"|[0-9]{4}-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9](?:\.[0-9]+)?"
    r"(?:Z|[+-][0-9][0-9]:?[0-9][0-9])?)"
    r" [^ :]++ (?P<service>[-.0-9A-Z_a-z]++(?:/[-.0-9A-Z_a-z]++)+)\[[0-9]++\]: "
    r"(?P<queue_id>[0-9A-Za-z]++): to=<" + _rest(r"[^,]++", r"[a-z]++")
)


_RELAY = re.compile(r"(?P<host>[^\[\]]*)(?:\[(?P<address>[^\[\]]*)\](?::\d+)?)?")
_RELAY_TEXT = re.compile(_RELAY_VALUE)


def parse_delivery(line: str) -> Delivery | Unparseable | None:
    """Read one Postfix log line: a ``Delivery``, ``None`` (not a delivery line) or
    ``UNPARSEABLE`` (starts like a delivery line, but the rest does not parse)."""
    logged = _LOGGED.match(line)
    if logged is not None:
        service, queue_id, to, orig_to, relay, dsn, status, detail = logged.groups("")
        parts = _relay_parts.get(relay)
        if parts is None:
            parts = _split_relay(relay)
        if parts:
            host, address = parts
            return _new(
                Delivery,
                (service, queue_id, to, orig_to, relay, host, address, dsn, status, detail),
            )
    at = line.find(": to=<")
    if at < 0:
        return None
    # The first ": to=<" ends the leftmost tag match, if any: try the whole line from the
    # word before the queue ID's space at once, and search as below only when that fails.
    gap = line.rfind(" ", 0, at)
    whole = _DELIVERY.match(line, line.rfind(" ", 0, gap) + 1) if gap > 0 else None
    if whole is not None:
        service, queue_id, to, orig_to, relay, dsn, status, detail = whole.groups("")
    else:
        start = _DELIVERY_START.search(line)
        if start is None:
            return None
        rest = _DELIVERY_REST.match(line, start.end())
        if rest is None:
            return UNPARSEABLE
        service, queue_id = start.groups()
        to, orig_to, relay, dsn, status, detail = rest.groups("")
    parts = _relay_parts.get(relay)
    if parts is None:
        parts = _split_relay(relay)
    if not parts:
        return UNPARSEABLE
    host, address = parts
    # (tuple.__new__: the named tuple without its Python-level __new__; it is made per line)
    return _new(
        Delivery,
        (service, queue_id, to, orig_to, relay, host, address, dsn, status.lower(), detail),
    )


_new = tuple.__new__

#: relay= text → (host, address), or () when it does not parse: a log names few relays, and
#: splitting one again costs more than the rest of the line (cleared when full).
_relay_parts: dict[str, tuple[str, str] | tuple[()]] = {}
_RELAY_PARTS = 4_096


def _split_relay(relay: str) -> tuple[str, str] | tuple[()]:
    """``relay`` split by ``_RELAY`` into (host, address) (remembered), () when it does not
    parse or holds white space or a comma (which _LOGGED's cheap reading lets through)."""
    match = _RELAY.fullmatch(relay) if _RELAY_TEXT.fullmatch(relay) else None
    parts: tuple[str, str] | tuple[()] = (
        () if match is None else (match.group("host"), match.group("address") or "")
    )
    if len(_relay_parts) >= _RELAY_PARTS:
        _relay_parts.clear()
    _relay_parts[relay] = parts
    return parts


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


# --- what Microsoft 365 answered ------------------------------------------------------------

# Where Postfix quotes the remote server in a delivery line's detail (smtp(8) and lmtp(8)):
# "host H[A] said: 550 ... (in reply to RCPT TO command)", "host H[A] refused to talk to me:
# 421 ...", "TLS is required, but host H[A] refused to start TLS: 454 ...".
_QUOTED_REPLY = re.compile(
    r"(?:\bsaid|\brefused to talk to me|\brefused to start TLS): (?P<reply>[2-5]\d\d[ -].*?)"
    r"(?: \(in reply to [^()]*\))?$"
)
_SENT_REPLY = re.compile(r"^[2]\d\d[ -]")
_ENHANCED = re.compile(r"(?<![\d.])(?P<code>[245]\.\d{1,3}\.\d{1,3})(?![\d.])")


def microsoft_reply(delivery: Delivery) -> str | None:
    """The reply the remote server (Microsoft 365) gave in this attempt, or None.

    None means Postfix's own failure, which is no reply of Microsoft's: ``relay=none`` (no
    connection, DNS), a lost connection or a timeout, or Postfix's own TLS decision ("Cannot
    start TLS", "TLS is required, but was not offered"). A delivered message (``status=sent``)
    gives the final ``250`` reply Postfix quotes.
    """
    _, _, _, _, relay, _, _, _, status, detail = delivery
    if relay in ("none", "") or not detail:
        return None
    # (every quote has "said: " or "refused to ...: "; most details have neither)
    quoted = _QUOTED_REPLY.search(detail) if "said: " in detail or "refused to " in detail else None
    if quoted is not None:
        return quoted.group("reply")
    if status == "sent" and _SENT_REPLY.match(detail):
        return detail
    return None


def classify_reply(reply: str, dsn: str = "") -> str:
    """The observed kind of one Microsoft 365 reply (docs/postfix.md), from its text.

    ``reply`` is the SMTP reply as Postfix quotes it (``550 5.7.64 ... ATTR36 [AM0PEPF...]``);
    ``dsn`` is the enhanced code Postfix logged, used when the text carries none.
    5.7.64 is told apart by its words: ``TenantAttribution`` (no connector matched) and
    ``ATTR36`` (a connector matched, but neither domain is accepted); a 5.7.64 with neither word
    is ``other``, as is any reply this vocabulary has no kind for.
    """
    text = reply.strip()
    basic = text[:3]
    if basic.startswith("2"):  # (before the costlier reading below: most replies say 250)
        return ACCEPTED
    found = _ENHANCED.search(text)
    code = found.group("code") if found is not None else dsn
    if code.startswith("2."):
        return ACCEPTED
    upper = text.upper()
    if code == "5.7.64":
        if "ATTR36" in upper:
            return ATTR36
        if "TENANTATTRIBUTION" in upper:
            return NO_CONNECTOR
        return OTHER
    if code == "5.7.68":
        return DIRECT_SEND
    if code == "5.7.51":
        return PARTNER_RESTRICTED
    if code == "4.4.62" or "ATTR35" in upper:
        return WRONG_REGION
    if code == "5.7.750":
        return UNREGISTERED_DOMAIN
    submission = _submission_kind(basic, code, upper)
    if submission is not None:
        return submission
    if basic == "454" or (code == "4.7.0" and ("TLS" in upper or "CERTIFICATE" in upper)):
        return TLS
    return OTHER


def _submission_kind(basic: str, code: str, upper: str) -> str | None:
    """The SMTP AUTH endpoint's refusals (SPEC §5.4, §8), or None for another reply.

    ``5.7.57`` (no AUTH before MAIL FROM); ``5.7.60`` and ``5.2.252`` / ``SendAsDenied`` (the
    login may not send as the sender: at the end of DATA, also for the From: header);
    ``5.7.139`` and ``5.7.30`` (Basic authentication disabled or retired); ``5.7.3`` and any
    other ``535`` (the credential was refused).
    """
    if code == "5.7.57":
        return AUTH_REQUIRED
    if code in ("5.7.60", "5.2.252") or "SENDASDENIED" in upper:
        return SEND_AS_DENIED
    if code in ("5.7.139", "5.7.30"):
        return BASIC_AUTH_DISABLED
    if code == "5.7.3" or basic == "535":
        return AUTH_FAILED
    return None


def observed_kind(delivery: Delivery) -> str | None:
    """The observed kind of a delivery attempt; None when it holds no reply of Microsoft's."""
    reply = microsoft_reply(delivery)
    if reply is None:
        return None
    if reply[:1] == "2":  # classify_reply's first answer, without its reading
        return ACCEPTED
    return classify_reply(reply, delivery.dsn)
