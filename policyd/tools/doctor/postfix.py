"""doctor's Postfix checks: routes, TLS on them, presented certificate, policy wiring, bounces.

Pure: from ``PostfixFacts`` (``postconf -x`` output as a mapping and the sample envelopes
routed as trivial-rewrite(8) would, read by ``policyd.sources.postfix``). What is judged, and
what is not (best effort, documented here on purpose):

- Routes: every sample envelope's service and next hop (``transport_maps``,
  ``sender_dependent_relayhost_maps``, ``relayhost``, ...); ``relayhost`` alone only when the
  routes could not be computed.
- TLS: for each distinct service and next-hop destination that reaches Microsoft 365
  (later destinations of a list and ``smtp_fallback_relay`` hosts included), the
  ``smtp_tls_policy_maps`` entry for that destination, else the service's
  ``smtp_tls_security_level`` (``policyd.rules.routing.client_tls``); ``smtp_tls_wrappermode``
  there is a FAIL. ``smtp_tls_per_site`` (obsolete) is not read.
- Certificate: what each such service presents (none where its level is ``none``).
- Egress: ``inet_protocols`` / ``smtp_address_preference`` / ``smtp_bind_address6`` (IPv6
  towards Microsoft 365) and ``smtp_bind_address_enforce``, per service.
- Detours (``content_filter``, ``FILTER``) and the Postfix instance read are reported.
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
from policyd.rules.reasons import SUBMISSION_REASONS
from policyd.rules.routing import MANDATORY_TLS_LEVELS, NO_TLS_LEVELS, TLS_LEVELS, ClientTls
from policyd.sources.config import Config
from policyd.sources.postfix import PostfixFacts, RouteSample, split_postfix_list
from policyd.sources.srs import SrsDomain
from policyd.tools.doctor.report import ERROR, NOTE, OK, POSTFIX, WARNING, Check, MailClass

#: TLS levels that never fall back to plain text.
MANDATORY_TLS = MANDATORY_TLS_LEVELS


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
    checks.extend(_wrappermode_checks(postfix))
    checks.append(_cert_file_check(config, postfix, resolve))
    checks.extend(_fallback_relay_checks(postfix))
    checks.extend(_egress_checks(config, postfix))
    checks.extend(_detour_checks(postfix))
    checks.append(_instance_check(postfix))
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
        submitted = any(
            sample.route is not None
            and any(
                endpoints.classify_host(hop.host) == endpoints.SUBMISSION
                for hop in endpoints.parse_nexthop(sample.route.nexthop)
            )
            for sample in postfix.routes
        )
        where = (
            "Microsoft 365 (routes to the SMTP AUTH submission endpoint are predicted per "
            "credential and sender: see the postfix-submission checks)"
            if submitted
            else "Microsoft 365's MX endpoint"
        )
        return Check(
            "postfix-relayhost", POSTFIX, OK, f"Mail to the internet reaches {where}: {shown}."
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
            # SPEC §5.4: a supported way to reach Microsoft 365, predicted per credential and
            # sender (the postfix-submission-* checks); only the port can be wrong here.
            if hop.port != "587":
                problems.append(
                    (
                        WARNING,
                        f"{hop.host} is Microsoft 365's SMTP AUTH submission endpoint, reached on "
                        f"port {hop.port or '25'}; Microsoft documents port 587 (STARTTLS) for "
                        "SMTP AUTH submission",
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


_RANK = {OK: 0, NOTE: 1, WARNING: 2, ERROR: 3}

_TLS_FIX = (
    "Set smtp_tls_security_level = encrypt, or give each next hop to Microsoft 365 an encrypt "
    "entry in smtp_tls_policy_maps (e.g. [contoso-com.mail.protection.outlook.com]:25 encrypt)."
)


def _microsoft_tls(postfix: PostfixFacts) -> list[ClientTls]:
    """The TLS of each distinct service and next-hop destination (fallback relays included)
    that the sample envelopes send to Microsoft 365, in first-seen order."""
    found: dict[tuple[str, str], ClientTls] = {}
    for sample in postfix.routes:
        if sample.route is None or sample.tls is None:
            continue
        if sample.kind not in (endpoints.RELAY, endpoints.LEGACY):
            continue
        later = [
            tls
            for tls in sample.more_tls
            if endpoints.classify_nexthop(tls.destination) in (endpoints.RELAY, endpoints.LEGACY)
        ]
        for tls in (sample.tls, *later):
            found.setdefault((tls.service, tls.destination), tls)
    return list(found.values())


def _tls_level_check(postfix: PostfixFacts) -> Check:
    """Mandatory TLS on every route to Microsoft 365, as smtp(8) resolves the level for each
    next hop (``smtp_tls_policy_maps``, else ``smtp_tls_security_level``, per service)."""
    reached = _microsoft_tls(postfix)
    if not reached:
        return _relayhost_tls_check(postfix)
    judged = [(_level_status(tls.level), _tls_line(tls)) for tls in reached]
    status = max((s for s, _ in judged), key=_RANK.__getitem__)
    if status == OK:
        shown = "; ".join(line for _, line in judged)
        return Check(
            "postfix-tls-mandatory",
            POSTFIX,
            OK,
            f"TLS to Microsoft 365 is mandatory on every route ({shown}).",
        )
    weak = "; ".join(line for s, line in judged if s != OK)
    if status == WARNING:
        return Check(
            "postfix-tls-mandatory",
            POSTFIX,
            WARNING,
            f"TLS to Microsoft 365 is mandatory only when TLSA records are found ({weak}); "
            "otherwise a failed TLS negotiation falls back to plain text and sends no "
            "certificate.",
            _TLS_FIX,
        )
    invalid = [tls for tls in reached if tls.level not in (*TLS_LEVELS, "")]
    if invalid:
        return Check(
            "postfix-tls-mandatory",
            POSTFIX,
            ERROR,
            f"{_tls_line(invalid[0])}: not a TLS level Postfix knows, so smtp(8) defers every "
            "message to that next hop.",
            _TLS_FIX,
        )
    return Check(
        "postfix-tls-mandatory",
        POSTFIX,
        ERROR,
        f"TLS to Microsoft 365 is not mandatory ({weak}): a failed TLS negotiation falls back "
        "to plain text and sends no certificate.",
        _TLS_FIX,
    )


def _level_status(level: str) -> str:
    if level in MANDATORY_TLS:
        return OK
    return WARNING if level == "dane" else ERROR


def _tls_line(tls: ClientTls) -> str:
    """E.g. "service smtp to [x]:25: main.cf: smtp_tls_policy_maps entry [x]:25 (hash:...) =
    encrypt"."""
    value = tls.policy or tls.level or "(empty, no TLS)"
    return (
        f"service {tls.service} to {tls.destination or 'its next hop'}: {tls.level_from} = {value}"
    )


def _wrappermode_checks(postfix: PostfixFacts) -> list[Check]:
    """``smtp_tls_wrappermode = yes`` towards Microsoft 365: its endpoints speak STARTTLS on
    port 25 (and 587), never TLS from the first byte, so every connection fails."""
    wrapped = [tls for tls in _microsoft_tls(postfix) if tls.wrappermode]
    if not wrapped:
        return []
    shown = "; ".join(
        f"service {tls.service} to {tls.destination} ({tls.wrappermode_from} = yes)"
        for tls in wrapped
    )
    return [
        Check(
            "postfix-tls-wrappermode",
            POSTFIX,
            ERROR,
            f"smtp_tls_wrappermode is on towards Microsoft 365 ({shown}): Microsoft 365's "
            "endpoints on port 25 (and 587) speak plain SMTP and STARTTLS, not TLS from the "
            "first byte, so no delivery succeeds.",
            "Remove smtp_tls_wrappermode (it is for SMTPS on port 465) and set "
            "smtp_tls_security_level = encrypt.",
        )
    ]


def _microsoft_samples(postfix: PostfixFacts) -> list[RouteSample]:
    """The sample envelopes whose route reaches Microsoft 365, one per master.cf service."""
    found: dict[str, RouteSample] = {}
    for sample in postfix.routes:
        if sample.route is not None and sample.kind in (endpoints.RELAY, endpoints.LEGACY):
            found.setdefault(sample.route.transport, sample)
    return list(found.values())


def _fallback_relay_checks(postfix: PostfixFacts) -> list[Check]:
    """``smtp_fallback_relay`` of a service that reaches Microsoft 365: smtp(8) appends it to
    every next-hop list, so mail the endpoint does not take may leave through it."""
    lines: list[str] = []
    elsewhere = False
    for sample in _microsoft_samples(postfix):
        if not sample.fallback_relay:
            continue
        hops = endpoints.parse_nexthop(sample.fallback_relay)
        outside = [h.host for h in hops if endpoints.classify_host(h.host) != endpoints.RELAY]
        elsewhere = elsewhere or bool(outside)
        lines.append(
            f"service {sample.route.transport if sample.route else ''}: "
            f"{sample.fallback_from} = {sample.fallback_relay}"
            + (f" ({', '.join(outside)}: not a Microsoft 365 endpoint)" if outside else "")
        )
    if not lines:
        return []
    text = (
        "Mail that cannot be delivered to Microsoft 365's endpoint (unreachable, or a 4xx "
        f"answer) goes on to the fallback relay: {'; '.join(lines)}."
    )
    if elsewhere:
        return [
            Check(
                "postfix-fallback-relay",
                POSTFIX,
                WARNING,
                text + " The predictions do not hold for mail that leaves that way.",
                "Leave smtp_fallback_relay empty on services that send to Microsoft 365, or "
                "name another Microsoft 365 endpoint of the same tenant.",
            )
        ]
    return [Check("postfix-fallback-relay", POSTFIX, NOTE, text)]


def _egress_checks(config: Config, postfix: PostfixFacts) -> list[Check]:
    """Whether Microsoft 365 may see an IPv6 source address, and whether a source address
    that cannot be bound stops delivery (postconf(5): inet_protocols, smtp_address_preference,
    smtp_bind_address6, smtp_bind_address_enforce)."""
    samples = _microsoft_samples(postfix)
    if not samples:
        return []
    # Only a connector that attributes by IP alone loses mail that arrives over IPv6.
    ip_connector = any(
        c.sender_ip_addresses and not c.tls_sender_certificate_name
        for c in config.tenant.relay_connectors
    )
    checks = [_ipv6_check(samples, ip_connector)]
    unenforced: list[str] = []
    enforced: list[str] = []
    for sample in samples:
        egress = sample.egress
        bound = [
            f"{where} = {value}"
            for value, where in (egress.get(n, ("", "")) for n in _BIND_PARAMETERS)
            if value
        ]
        if not bound:
            continue
        enforce, _ = egress.get("smtp_bind_address_enforce", ("", ""))
        name = sample.route.transport if sample.route else ""
        (enforced if enforce.lower() == "yes" else unenforced).append(
            f"service {name}: {', '.join(bound)}"
        )
    if unenforced:
        checks.append(
            Check(
                "postfix-bind-enforce",
                POSTFIX,
                WARNING,
                f"Source address set without smtp_bind_address_enforce = yes "
                f"({'; '.join(unenforced)}): when the address cannot be bound, smtp(8) only "
                "logs a warning and sends from another address, which Microsoft 365 may "
                "attribute differently than predicted.",
                "Set smtp_bind_address_enforce = yes (Postfix 3.7 and later) so such mail is "
                "deferred instead.",
            )
        )
    elif enforced:
        checks.append(
            Check(
                "postfix-bind-enforce",
                POSTFIX,
                OK,
                f"The source address is enforced ({'; '.join(enforced)}; "
                "smtp_bind_address_enforce = yes).",
            )
        )
    return checks


_BIND_PARAMETERS = ("smtp_bind_address", "smtp_bind_address6")


def _ipv6_check(samples: Sequence[RouteSample], ip_connector: bool) -> Check:
    """IPv6 towards Microsoft 365: possible when inet_protocols enables it; never matched by
    an IP connector (connectors hold IPv4 only). Whether an endpoint publishes IPv6 addresses
    (AAAA records) is Microsoft's choice per endpoint and not checked here."""
    lines: list[str] = []
    risky = False
    for sample in samples:
        egress = sample.egress
        protocols, protocols_from = egress.get("inet_protocols", ("", "main.cf: inet_protocols"))
        words = {w.lower() for w in split_postfix_list(protocols)}
        if not words & {"all", "ipv6"}:
            continue
        preference, _ = egress.get("smtp_address_preference", ("any", ""))
        bind6, bind6_from = egress.get("smtp_bind_address6", ("", ""))
        risky = risky or preference.lower() != "ipv4"
        name = sample.route.transport if sample.route else ""
        lines.append(
            f"service {name}: {protocols_from} = {protocols}, smtp_address_preference = "
            f"{preference or 'any'}"
            + (f", {bind6_from} = {bind6}" if bind6 else ", no smtp_bind_address6")
        )
    if not lines:
        return Check(
            "postfix-egress-ipv6",
            POSTFIX,
            OK,
            "inet_protocols has no IPv6: Microsoft 365 sees only IPv4 source addresses.",
        )
    shown = "; ".join(lines)
    text = (
        f"Mail to Microsoft 365 may leave over IPv6 when the endpoint publishes IPv6 "
        f"addresses ({shown})"
    )
    if not ip_connector:
        return Check(
            "postfix-egress-ipv6",
            POSTFIX,
            NOTE,
            text + "; no connector attributes by IP address alone, so the certificate "
            "attributes it.",
        )
    if not risky:
        return Check(
            "postfix-egress-ipv6",
            POSTFIX,
            NOTE,
            text + "; IPv4 is preferred, so IPv6 is used only when IPv4 fails — and then no "
            "IP connector matches (connectors hold IPv4 addresses only).",
            "Set inet_protocols = ipv4 to keep every connection on IPv4.",
        )
    return Check(
        "postfix-egress-ipv6",
        POSTFIX,
        WARNING,
        text + ": an IPv6 source address never matches an IP connector (connectors hold IPv4 "
        "addresses only), so such mail is attributed by certificate or not at all.",
        "Set inet_protocols = ipv4 (or smtp_address_preference = ipv4) on the relay, or "
        "attribute by certificate.",
    )


def _detour_checks(postfix: PostfixFacts) -> list[Check]:
    """content_filter / FILTER detours: the predicted route is the one after the filter."""
    if not postfix.detours:
        return []
    shown = "; ".join(str(detour) for detour in postfix.detours)
    sendmail = any(detour.reinjects_with_sendmail for detour in postfix.detours)
    return [
        Check(
            "postfix-content-filter",
            POSTFIX,
            WARNING if sendmail else NOTE,
            f"Mail is handed to a content filter before it is routed ({shown}). The routes "
            "and predictions are those of the message the filter gives back; a filter that "
            "changes the envelope is not predicted.",
            "Re-inject filtered mail over SMTP to a listener that keeps the envelope, rather "
            "than with sendmail."
            if sendmail
            else "",
        )
    ]


def _instance_check(postfix: PostfixFacts) -> Check:
    """Which Postfix instance is read; a warning when the primary is read while secondary
    instances also send to Microsoft 365 (``policyd.sources.instances``)."""
    instance = postfix.instance
    shown = str(instance) if instance is not None else postfix.directory
    reaching = [s for s in postfix.secondaries if s.to_microsoft]
    failed = [s for s in postfix.secondaries if s.error]
    if reaching:
        routes = "; ".join(f"{s.instance}: {', '.join(s.to_microsoft)}" for s in reaching)
        return Check(
            "postfix-instance",
            POSTFIX,
            WARNING,
            f"The daemon reads the primary {shown}, but secondary instances send mail to "
            f"Microsoft 365 too ({routes}): their routes, TLS and certificates are not the "
            "ones predicted.",
            "Point [postfix] config_directory at the instance that relays to Microsoft 365 "
            "(one daemon per instance when several do).",
        )
    others = ""
    if postfix.secondaries:
        listed = ", ".join(str(s.instance) for s in postfix.secondaries)
        others = (
            f"; its secondary instances do not send the sample mail to Microsoft 365 ({listed})"
        )
    if failed:
        unread = "; ".join(f"{s.instance.directory}: {s.error}" for s in failed)
        others += f"; could not read {unread}"
    return Check("postfix-instance", POSTFIX, OK, f"Predicting for Postfix {shown}{others}.")


def _relayhost_tls_check(postfix: PostfixFacts) -> Check:
    """Without a route to Microsoft 365: the TLS level main.cf gives ``relayhost``."""
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
    """The certificate each service that reaches Microsoft 365 presents there (none when the
    next hop's TLS level is ``none``), against ``onprem.certificate``; main.cf alone when no
    route reaches Microsoft 365."""
    services: dict[str, ClientTls] = {}
    for tls in _microsoft_tls(postfix):
        # A service presents nothing where its level is none: judge its weakest next hop.
        if tls.service not in services or tls.level in NO_TLS_LEVELS:
            services[tls.service] = tls
    if not services:
        parameter, files = _presented_files(postfix)
        return _cert_check(config, parameter, files, resolve)
    checks = {
        name: _cert_check(
            config,
            tls.certificate_from.removeprefix("main.cf: "),
            list(tls.certificate_files),
            resolve,
            absent="" if tls.level not in NO_TLS_LEVELS else tls.not_presented_because,
        )
        for name, tls in services.items()
    }
    if len(checks) == 1:
        return next(iter(checks.values()))
    status = max((c.status for c in checks.values()), key=_RANK.__getitem__)
    finding = " ".join(f"Service {name}: {c.finding}" for name, c in checks.items())
    fixes = " ".join(dict.fromkeys(c.fix for c in checks.values() if c.fix))
    return Check("postfix-cert-file", POSTFIX, status, finding, fixes)


def _cert_check(
    config: Config,
    parameter: str,
    files: list[str],
    resolve: Callable[[str], str],
    *,
    absent: str = "",
) -> Check:
    """One service's certificate files (``absent``: why TLS is off, so none is presented)."""
    configured = config.certificate_path
    if absent and configured:
        return Check(
            "postfix-cert-file",
            POSTFIX,
            ERROR,
            f"Postfix presents no certificate to Microsoft 365 (the certificate is {absent}), "
            f"while the daemon predicts with {configured}.",
            _TLS_FIX,
        )
    if absent:
        files = []
    presented = ", ".join(files)
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
        f"postsrsd ({srs.table}) rewrites senders outside its excluded domains into "
        f"{srs.domain} ({srs.source}).",
    )
