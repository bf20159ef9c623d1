"""doctor's Postfix checks: the routes to Microsoft 365, egress, detours, the instance, bounces,
and the order of all Postfix checks (``postfix_checks``).

Pure: from ``PostfixFacts`` (``postconf -x`` output as a mapping and the sample envelopes
routed as trivial-rewrite(8) would, read by ``policyd.sources.postfix``). What is judged, and
what is not (best effort, documented here on purpose):

- Routes: every sample envelope's service and next hop (``transport_maps``,
  ``sender_dependent_relayhost_maps``, ``relayhost``, ...); ``relayhost`` alone only when the
  routes could not be computed; ``smtp_fallback_relay``.
- TLS and the presented certificate on those routes: ``policyd.tools.doctor.relay_tls``.
- Egress: ``inet_protocols`` / ``smtp_address_preference`` / ``smtp_bind_address6`` (IPv6
  towards Microsoft 365) and ``smtp_bind_address_enforce``, per service.
- Detours (``content_filter``, ``FILTER``) and the Postfix instance read are reported.
- How Postfix asks the daemon (``check_policy_service``): ``policyd.tools.doctor.wiring``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from policyd.rules import endpoints
from policyd.rules.model import normalize_domain
from policyd.rules.reasons import SUBMISSION_REASONS
from policyd.sources.config import Config
from policyd.sources.postfix import PostfixFacts, RouteSample, split_postfix_list
from policyd.sources.srs import SrsDomain
from policyd.tools.doctor.relay_tls import cert_file_check, tls_level_check, wrappermode_checks
from policyd.tools.doctor.report import ERROR, NOTE, OK, POSTFIX, WARNING, Check, MailClass
from policyd.tools.doctor.wiring import wiring_checks


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
    checks.append(tls_level_check(postfix))
    checks.extend(wrappermode_checks(postfix))
    checks.append(cert_file_check(config, postfix, resolve))
    checks.extend(_fallback_relay_checks(postfix))
    checks.extend(_egress_checks(config, postfix))
    checks.extend(_detour_checks(postfix))
    checks.append(_instance_check(postfix))
    checks.extend(wiring_checks(config, postfix, resolve))
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
        submitted = any(sample.kind == endpoints.SUBMISSION for sample in postfix.routes)
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
