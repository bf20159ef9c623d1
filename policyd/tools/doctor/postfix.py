"""doctor's Postfix checks: relay host, TLS to it, presented certificate, policy wiring, bounces.

Pure: from ``PostfixFacts`` (``postconf -x`` output as a mapping, read by
``policyd.sources.postfix``). What is read from Postfix, and what is not (best effort,
documented here on purpose):

- ``relayhost`` only; a relay chosen through ``transport_maps`` or
  ``sender_dependent_relayhost_maps`` is not followed.
- TLS level for the relay: ``smtp_tls_policy_maps`` is queried with ``postmap -q`` for the
  relayhost exactly as written (``[host]:port``), then, for a relayhost without brackets, the
  host name and its parent domains in ``.parent`` form; the first word of the value is the level.
  ``smtp_tls_security_level``, then the legacy ``smtp_enforce_tls``/``smtp_use_tls``, apply when
  nothing is found. ``smtp_tls_per_site`` (obsolete) is not read.
- The policy check is looked for in ``smtpd_relay_restrictions``, ``smtpd_recipient_restrictions``
  and ``smtpd_data_restrictions``; restriction classes (``smtpd_restriction_classes``) and
  per-service ``-o`` overrides in ``master.cf`` are not followed.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from policyd.rules import endpoints
from policyd.rules.model import normalize_domain
from policyd.sources.config import Config
from policyd.sources.postfix import PostfixFacts, RouteSample, split_postfix_list
from policyd.sources.srs import SrsDomain
from policyd.tools.doctor.report import ERROR, NOTE, OK, POSTFIX, WARNING, Check, MailClass
from policyd.tools.doctor.tenant import SUBMISSION_REASONS

#: TLS levels that never fall back to plain text, and what weaker ones mean.
MANDATORY_TLS = ("encrypt", "fingerprint", "verify", "secure", "dane-only")


RELAY_CONTROL = ("reject_unauth_destination", "defer_unauth_destination")


#: Actions that keep mail flowing when the daemon does not answer.
FAIL_OPEN_ACTIONS = ("dunno", "warn", "prepend", "info")


def postfix_checks(
    config: Config,
    postfix: PostfixFacts,
    classes: Sequence[MailClass],
    resolve: Callable[[str], str],
) -> list[Check]:
    if postfix.error:
        return [
            Check(
                "postfix-config",
                POSTFIX,
                WARNING,
                f"Could not read Postfix configuration: {postfix.error}.",
                "Install Postfix's postconf, or name the configuration directory with "
                "--postfix-dir.",
            )
        ]
    version = postfix.get("mail_version")
    checks = [
        Check(
            "postfix-config",
            POSTFIX,
            OK,
            f"Read {postfix.directory}/main.cf with postconf"
            + (f" (Postfix {version})." if version else "."),
        )
    ]
    checks.append(_relayhost_check(postfix))
    checks.append(_tls_level_check(postfix))
    checks.append(_cert_file_check(config, postfix, resolve))
    checks.extend(_policy_checks(config, postfix, resolve))
    checks.append(_bounce_check(config, postfix, classes))
    return checks


def _relayhost_check(postfix: PostfixFacts) -> Check:
    """Where mail to the internet goes, as Postfix routes it (not ``relayhost`` alone)."""
    if postfix.route_error or not postfix.routes:
        return _relayhost_only_check(postfix)
    example = "relayhost = [contoso-com.mail.protection.outlook.com]:25"
    findings: list[tuple[str, str]] = []
    for sample in postfix.routes:
        findings.extend(_route_problems(sample))
    shown = "; ".join(_route_line(sample) for sample in postfix.routes)
    if not findings:
        return Check(
            "postfix-relayhost",
            POSTFIX,
            OK,
            f"Mail to the internet reaches Microsoft 365's MX endpoint: {shown}.",
        )
    status = ERROR if any(s == ERROR for s, _ in findings) else WARNING
    problems = "; ".join(dict.fromkeys(text for _, text in findings))
    return Check(
        "postfix-relayhost",
        POSTFIX,
        status,
        f"{problems}. Routes found: {shown}.",
        f"Route mail to the internet to your tenant's MX endpoint ({example}, or the same next "
        "hop in sender_dependent_relayhost_maps or transport_maps), in brackets, port 25.",
    )


def _route_line(sample: RouteSample) -> str:
    if sample.route is None:
        return f"{sample.label}: lookup failed ({sample.error})"
    route = sample.route
    decided = route.steps[-1] if route.steps else ""
    return f"{sample.label} -> {route}" + (f" ({decided})" if decided else "")


def _route_problems(sample: RouteSample) -> list[tuple[str, str]]:
    """(status, text) for what is wrong with one sample's route."""
    route = sample.route
    if route is None:
        return [(ERROR, f"routing {sample.label} failed: {sample.error}")]
    if not route.relays:
        return [
            (
                ERROR,
                f"{sample.label} are delivered by master.cf service {route.transport} "
                f"({route.command or 'not in master.cf'}), not sent through Microsoft 365",
            )
        ]
    hops = endpoints.parse_nexthop(route.nexthop)
    problems: list[tuple[str, str]] = []
    for hop in hops:
        kind = endpoints.classify_host(hop.host)
        if kind == endpoints.LEGACY:
            problems.append(
                (
                    ERROR,
                    f"{hop.host} is a retired Microsoft smart host: Microsoft 365 defers every "
                    f"message with '{endpoints.WRONG_REGION_REPLY}'",
                )
            )
        elif kind == endpoints.SUBMISSION:
            problems.append(
                (
                    ERROR,
                    f"{hop.host} is Microsoft 365's SMTP AUTH submission endpoint, where "
                    "connectors do not apply",
                )
            )
        elif kind == endpoints.OTHER:
            if route.nexthop.lower() == sample.recipient.rpartition("@")[2].lower():
                text = (
                    f"{sample.label} go directly to the recipients' MX (no relayhost, "
                    "sender-dependent relay host or transport_maps next hop applies), not "
                    "through Microsoft 365, so the predictions do not apply"
                )
                problems.append((ERROR, text))
            else:
                problems.append(
                    (
                        WARNING,
                        f"{hop.host} is not a Microsoft 365 endpoint: the predictions hold for "
                        f"{sample.label} only if it relays them to Microsoft 365 unchanged",
                    )
                )
        elif hop.port not in ("", "25"):
            problems.append(
                (ERROR, f"{hop.host} is reached on port {hop.port}; the MX endpoint listens on 25")
            )
        elif not hop.bracketed:
            problems.append(
                (
                    WARNING,
                    f"{hop.host} is written without brackets, so Postfix first looks up MX records "
                    "for it",
                )
            )
    if len(hops) > 1:
        problems.append(
            (
                WARNING,
                f"{sample.label} have a list of next hops ({route.nexthop}); later ones are used "
                "only when the first fails",
            )
        )
    return problems


def _relayhost_only_check(postfix: PostfixFacts) -> Check:
    """Without routes (postconf could not read master.cf or a table): judge ``relayhost``."""
    relayhost = postfix.get("relayhost")
    note = f" (routes could not be computed: {postfix.route_error})" if postfix.route_error else ""
    example = "relayhost = [contoso-com.mail.protection.outlook.com]:25"
    if not relayhost:
        return Check(
            "postfix-relayhost",
            POSTFIX,
            WARNING,
            f"relayhost is empty{note}: unless sender_dependent_relayhost_maps or transport_maps "
            "send mail to Microsoft 365, Postfix delivers directly to the recipients' MX.",
            f"Set {example} (your tenant's MX endpoint), or fix what stopped the route lookup.",
        )
    kinds = {endpoints.classify_host(hop.host) for hop in endpoints.parse_nexthop(relayhost)}
    status = OK if kinds == {endpoints.RELAY} else ERROR
    return Check(
        "postfix-relayhost",
        POSTFIX,
        status,
        f"relayhost = {relayhost}{note}.",
        "" if status == OK else f"Set {example} (your tenant's MX endpoint).",
    )


def _tls_level_check(postfix: PostfixFacts) -> Check:
    policy = postfix.tls_policy
    if policy is not None and policy.value:
        level = policy.value.split()[0].lower()
        source = f"smtp_tls_policy_maps entry {policy.key} = {policy.value}"
    else:
        level = postfix.get("smtp_tls_security_level").lower()
        source = f"smtp_tls_security_level = {level}" if level else ""
        if not level:
            if postfix.get("smtp_enforce_tls").lower() == "yes":
                level, source = "encrypt", "smtp_enforce_tls = yes"
            elif postfix.get("smtp_use_tls").lower() == "yes":
                level, source = "may", "smtp_use_tls = yes"
            else:
                level, source = "none", "smtp_tls_security_level is empty (no TLS)"
    lookup_note = ""
    if policy is not None and policy.error:
        lookup_note = f" (smtp_tls_policy_maps could not be read: {policy.error})"
    fix = (
        "Set smtp_tls_security_level = encrypt, or give the relayhost an encrypt entry in "
        "smtp_tls_policy_maps (e.g. [contoso-com.mail.protection.outlook.com]:25 encrypt)."
    )
    if level in MANDATORY_TLS:
        return Check(
            "postfix-tls-mandatory",
            POSTFIX,
            OK,
            f"TLS to the relay is mandatory ({source}){lookup_note}.",
        )
    if level == "dane":
        return Check(
            "postfix-tls-mandatory",
            POSTFIX,
            WARNING,
            f"TLS to the relay is mandatory only when TLSA records are found ({source})"
            f"{lookup_note}; otherwise a failed TLS negotiation falls back to plain text and "
            "sends no certificate.",
            fix,
        )
    return Check(
        "postfix-tls-mandatory",
        POSTFIX,
        ERROR,
        f"TLS to the relay is not mandatory ({source}){lookup_note}: a failed TLS negotiation "
        "falls back to plain text and sends no certificate.",
        fix,
    )


def _presented_files(postfix: PostfixFacts) -> tuple[str, list[str]]:
    """(parameter, files) holding the certificate Postfix's SMTP client presents.

    ``smtp_tls_chain_files`` (Postfix 3.4+) wins over ``smtp_tls_cert_file``; its files hold
    keys and certificates in sequence, so any of them may be the certificate.
    """
    chain = postfix.get("smtp_tls_chain_files")
    if chain:
        return "smtp_tls_chain_files", [f for f in re.split(r"[\s,]+", chain) if f]
    cert_file = postfix.get("smtp_tls_cert_file")
    return "smtp_tls_cert_file", [cert_file] if cert_file else []


def _cert_file_check(config: Config, postfix: PostfixFacts, resolve: Callable[[str], str]) -> Check:
    parameter, files = _presented_files(postfix)
    presented = ", ".join(files)
    configured = config.certificate_path
    if not files and not configured:
        return Check(
            "postfix-cert-file",
            POSTFIX,
            NOTE,
            f"{parameter} is empty and no certificate is configured: Postfix presents no "
            "client certificate, only the IP path attributes mail.",
            "Install a CA-signed certificate named under an accepted domain in "
            "smtp_tls_cert_file and onprem.certificate.",
        )
    if not files:
        return Check(
            "postfix-cert-file",
            POSTFIX,
            ERROR,
            f"{parameter} is empty, so Postfix presents no certificate, while the daemon "
            f"predicts with {configured}.",
            f"Set smtp_tls_cert_file = {configured} (and smtp_tls_key_file) in main.cf.",
        )
    if not configured:
        return Check(
            "postfix-cert-file",
            POSTFIX,
            WARNING,
            f"Postfix presents {presented} ({parameter}), but onprem.certificate is empty, so "
            "the daemon predicts as if no certificate were sent.",
            f'Set onprem.certificate = "{files[-1]}" in the daemon\'s configuration.',
        )
    if any(resolve(f) == resolve(configured) for f in files):
        return Check(
            "postfix-cert-file",
            POSTFIX,
            OK,
            f"{parameter} is the configured certificate {configured}.",
        )
    return Check(
        "postfix-cert-file",
        POSTFIX,
        ERROR,
        f"Postfix presents {presented} ({parameter}), but the daemon predicts with {configured}.",
        "Make onprem.certificate and smtp_tls_cert_file name the same file.",
    )


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


def _policy_checks(
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


def _bounce_check(config: Config, postfix: PostfixFacts, classes: Sequence[MailClass]) -> Check:
    bounce = next(c for c in classes if c.id == "null-sender-bounce")
    facts = [f"notify_classes = {postfix.get('notify_classes') or '(empty)'}"]
    notify = {n.lower() for n in split_postfix_list(postfix.get("notify_classes"))}
    outside: list[str] = []
    for cls, parameter in (
        ("bounce", "bounce_notice_recipient"),
        ("2bounce", "2bounce_notice_recipient"),
        ("delay", "delay_notice_recipient"),
    ):
        if cls not in notify:
            continue
        value = postfix.get(parameter)
        facts.append(f"{parameter} = {value}")
        domain = normalize_domain(value.rpartition("@")[2]) if "@" in value else ""
        if (
            domain
            and domain not in config.onprem.local_domains
            and not config.tenant.accepts(domain)
        ):
            outside.append(value)
    detail = "; ".join(facts)
    if bounce.reason in SUBMISSION_REASONS:
        return _submitted_bounce_check(bounce, detail, outside)
    if bounce.relayed:
        return Check(
            "postfix-null-sender-bounces",
            POSTFIX,
            OK,
            "Postfix sends its own bounces with a null sender, and the certificate path relays "
            f"them ({detail}).",
        )
    extra = f"; postmaster notices to {', '.join(outside)} leave the same way" if outside else ""
    return Check(
        "postfix-null-sender-bounces",
        POSTFIX,
        NOTE,
        "Postfix sends its own bounces and delay notices with a null sender, which relays only "
        f"through a certificate connector; here they are refused [{bounce.reason}]{extra}. "
        f"Notices: {detail}.",
        bounce.fix,
    )


def _submitted_bounce_check(bounce: MailClass, detail: str, outside: Sequence[str]) -> Check:
    """Bounces routed to the SMTP AUTH endpoint (SPEC §5.4): the login decides, no connector."""
    where = (
        "Postfix sends its own bounces and delay notices with a null sender to Microsoft 365's "
        "SMTP AUTH client-submission endpoint, where the login decides and connectors do not apply"
    )
    extra = f"; postmaster notices to {', '.join(outside)} leave the same way" if outside else ""
    if bounce.relayed:
        return Check(
            "postfix-null-sender-bounces",
            POSTFIX,
            OK,
            f"{where}; they are accepted [{bounce.reason}]{extra}. Notices: {detail}.",
        )
    return Check(
        "postfix-null-sender-bounces",
        POSTFIX,
        NOTE,
        f"{where}; they are refused with '{bounce.reply}' [{bounce.reason}]{extra}. "
        f"Notices: {detail}.",
        bounce.fix,
    )


def srs_check(srs: SrsDomain) -> Check:
    """The domain postsrsd writes into rewritten senders (docs/postfix.md)."""
    if srs.problem:
        return Check(
            "postfix-srs-domain",
            POSTFIX,
            ERROR,
            f"postsrsd ({srs.table}) writes senders into {srs.domain or 'no domain'} "
            f"({srs.source}): {srs.problem}.",
            "Set postsrsd's domain (SRS_DOMAIN in /etc/default/postsrsd, or srs-domain in "
            "postsrsd.conf) to an accepted domain of the tenant, written out in full.",
        )
    return Check(
        "postfix-srs-domain",
        POSTFIX,
        OK,
        f"postsrsd ({srs.table}) rewrites forwarded senders into {srs.domain} ({srs.source}).",
    )
