"""doctor's checks of how Postfix asks the daemon: where ``check_policy_service`` sits in the
restriction lists, whether it names an endpoint the daemon listens on, the order against relay
control, and ``default_action`` (fail open).

Pure, from ``PostfixFacts``. Restriction classes (``smtpd_restriction_classes``) and per-service
``-o`` overrides in ``master.cf`` are not followed.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from policyd.sources.config import Config
from policyd.sources.postfix import PostfixFacts, split_postfix_list
from policyd.tools.doctor.report import ERROR, OK, POSTFIX, WARNING, Check

RELAY_CONTROL = ("reject_unauth_destination", "defer_unauth_destination")


#: Actions that keep mail flowing when the daemon does not answer.
FAIL_OPEN_ACTIONS = ("dunno", "warn", "prepend", "info")


@dataclass(frozen=True, slots=True)
class PolicyCheck:
    """One ``check_policy_service`` in a restriction list."""

    position: int  # index of the restriction in its list
    server: str
    options: Mapping[str, str]


def policy_checks(restrictions: str) -> tuple[list[str], list[PolicyCheck]]:
    """(restriction names in order, the ``check_policy_service`` entries with their index)."""
    tokens = split_postfix_list(restrictions)
    names: list[str] = []
    checks: list[PolicyCheck] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        name = token.lower()
        if name == "check_policy_service" and index + 1 < len(tokens):
            server, options = _policy_argument(tokens[index + 1])
            checks.append(PolicyCheck(len(names), server, options))
            names.append(name)
            index += 2
            continue
        names.append(name)
        index += 1
    return names, checks


def _policy_argument(token: str) -> tuple[str, dict[str, str]]:
    if not (token.startswith("{") and token.endswith("}")):
        return token, {}
    server = ""
    options: dict[str, str] = {}
    for raw in split_postfix_list(token[1:-1]):
        part = raw[1:-1].strip() if raw.startswith("{") and raw.endswith("}") else raw
        name, equals, value = part.partition("=")
        if equals:
            options[name.strip().lower()] = value.strip()
        elif not server:
            server = part
    return server, options


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A listening address in comparable form."""

    kind: str  # "inet", "unix" or "any" (systemd socket activation: cannot tell)
    host: str = ""  # "" = every interface
    port: str = ""
    path: str = ""


def _twisted_args(description: str) -> tuple[str, list[str], dict[str, str]]:
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for char in description:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    kind, rest = parts[0].lower(), parts[1:]
    positional = [p for p in rest if "=" not in p]
    keywords = dict(p.split("=", 1) for p in rest if "=" in p)
    return kind, positional, keywords


def listen_endpoints(listen: Sequence[str]) -> list[Endpoint]:
    """Our ``server.listen`` Twisted endpoint strings as comparable endpoints."""
    endpoints: list[Endpoint] = []
    for description in listen:
        kind, positional, keywords = _twisted_args(description)
        if kind in ("tcp", "tcp6"):
            port = keywords.get("port") or (positional[0] if positional else "")
            host = keywords.get("interface", "")
            if host in ("0.0.0.0", "::"):
                host = ""
            endpoints.append(Endpoint("inet", host.lower(), port))
        elif kind == "unix":
            path = keywords.get("address") or (positional[0] if positional else "")
            endpoints.append(Endpoint("unix", path=path))
        elif kind == "systemd":
            endpoints.append(Endpoint("any"))
    return endpoints


def postfix_endpoint(server: str, queue_directory: str) -> Endpoint:
    """A ``check_policy_service`` server (``inet:host:port``, ``unix:path``) as an endpoint."""
    kind, colon, rest = server.partition(":")
    if not colon or kind.lower() not in ("inet", "unix", "local"):
        kind, rest = ("unix" if "/" in server and ":" not in server else "inet"), server
    if kind.lower() in ("unix", "local"):
        path = rest if rest.startswith("/") else os.path.join(queue_directory, rest)
        return Endpoint("unix", path=path)
    host, _, port = rest.rpartition(":")
    host = host.strip("[]").lower()
    return Endpoint("inet", host, port)


_LOOPBACK_NAMES = {"localhost": ("127.0.0.1", "::1")}


def _same_endpoint(ours: Endpoint, theirs: Endpoint, resolve: Callable[[str], str]) -> bool:
    if ours.kind == "any":
        return True
    if ours.kind != theirs.kind:
        return False
    if ours.kind == "unix":
        return resolve(ours.path) == resolve(theirs.path)
    if ours.port != theirs.port:
        return False
    if not ours.host:
        return True
    hosts = _LOOPBACK_NAMES.get(theirs.host, (theirs.host,))
    try:
        wanted = ipaddress.ip_address(ours.host)
        return any(_ip_equal(wanted, h) for h in hosts)
    except ValueError:
        return ours.host in hosts


def _ip_equal(address: ipaddress.IPv4Address | ipaddress.IPv6Address, text: str) -> bool:
    try:
        return ipaddress.ip_address(text) == address
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class _Found:
    parameter: str
    names: list[str]
    check: PolicyCheck


def _find_ours(
    postfix: PostfixFacts, parameter: str, ours: Sequence[Endpoint], resolve: Callable[[str], str]
) -> _Found | None:
    names, found = policy_checks(postfix.get(parameter))
    queue = postfix.get("queue_directory") or "/var/spool/postfix"
    for check in found:
        endpoint = postfix_endpoint(check.server, queue)
        if any(_same_endpoint(o, endpoint, resolve) for o in ours):
            return _Found(parameter, names, check)
    return None


def wiring_checks(
    config: Config, postfix: PostfixFacts, resolve: Callable[[str], str]
) -> list[Check]:
    ours = listen_endpoints(config.server.listen)
    listen = ", ".join(config.server.listen)
    snippet = "contrib/postfix/main.cf.snippet"
    checks: list[Check] = []

    relay = _find_ours(postfix, "smtpd_relay_restrictions", ours, resolve)
    recipient = _find_ours(postfix, "smtpd_recipient_restrictions", ours, resolve)
    data = _find_ours(postfix, "smtpd_data_restrictions", ours, resolve)
    rcpt = recipient or relay
    if rcpt is None:
        others = [
            check.server
            for parameter in ("smtpd_relay_restrictions", "smtpd_recipient_restrictions")
            for check in policy_checks(postfix.get(parameter))[1]
        ]
        seen = f" (policy services named there: {', '.join(others)})" if others else ""
        checks.append(
            Check(
                "postfix-policy-recipient",
                POSTFIX,
                ERROR,
                f"No check_policy_service for the daemon's endpoint ({listen}) in "
                f"smtpd_recipient_restrictions or smtpd_relay_restrictions{seen}: Postfix "
                "never asks for a prediction.",
                f"Add check_policy_service {{ inet:127.0.0.1:PORT, default_action=DUNNO }} to "
                f"smtpd_recipient_restrictions as in {snippet}.",
            )
        )
    else:
        checks.append(_recipient_order_check(postfix, rcpt))
    if data is None:
        checks.append(
            Check(
                "postfix-policy-data",
                POSTFIX,
                WARNING,
                "No check_policy_service for the daemon in smtpd_data_restrictions: no "
                f"{config.policy.header} header and no per-message counts.",
                f"Add the same check_policy_service to smtpd_data_restrictions as in {snippet}.",
            )
        )
    else:
        checks.append(
            Check(
                "postfix-policy-data",
                POSTFIX,
                OK,
                f"smtpd_data_restrictions asks the daemon ({data.check.server}).",
            )
        )
    found = [f for f in (rcpt, data) if f is not None]
    if found:
        checks.append(_default_action_check(postfix, found))
    return checks


def _recipient_order_check(postfix: PostfixFacts, found: _Found) -> Check:
    before = found.names[: found.check.position]
    controlled = any(n in RELAY_CONTROL for n in before)
    if found.parameter == "smtpd_recipient_restrictions":
        relay_names, _ = policy_checks(postfix.get("smtpd_relay_restrictions"))
        controlled = controlled or any(n in RELAY_CONTROL for n in relay_names)
    permits = [n for n in before if n.startswith("permit")]
    where = f"{found.parameter} ({found.check.server})"
    if permits:
        return Check(
            "postfix-policy-recipient",
            POSTFIX,
            WARNING,
            f"The policy check in {where} comes after {', '.join(permits)}: mail those "
            "clients send (local applications, typically) is never predicted.",
            f"Move relay control to smtpd_relay_restrictions and leave check_policy_service "
            f"without a permit in front of it in {found.parameter}.",
        )
    if not controlled:
        return Check(
            "postfix-policy-recipient",
            POSTFIX,
            WARNING,
            f"The policy check in {where} runs before reject_unauth_destination: the daemon "
            "is asked about relay attempts Postfix refuses anyway.",
            "Put reject_unauth_destination in smtpd_relay_restrictions, or before "
            f"check_policy_service in {found.parameter}.",
        )
    return Check(
        "postfix-policy-recipient",
        POSTFIX,
        OK,
        f"{where} asks the daemon after relay control (reject_unauth_destination).",
    )


def _default_action_check(postfix: PostfixFacts, found: Sequence[_Found]) -> Check:
    global_action = postfix.get("smtpd_policy_service_default_action")
    closed: list[str] = []
    for item in found:
        action = item.check.options.get("default_action", global_action)
        word = action.split()[0].lower() if action else ""
        if word not in FAIL_OPEN_ACTIONS:
            closed.append(f"{item.parameter}: {action or '(empty)'}")
    if not closed:
        return Check(
            "postfix-policy-default-action",
            POSTFIX,
            OK,
            "A stopped daemon fails open: default_action is DUNNO.",
        )
    return Check(
        "postfix-policy-default-action",
        POSTFIX,
        ERROR,
        "When the daemon is stopped or slow Postfix answers "
        + "; ".join(closed)
        + ", holding up all mail instead of failing open.",
        "Write check_policy_service { ENDPOINT, default_action=DUNNO } (or set "
        "smtpd_policy_service_default_action = DUNNO).",
    )
