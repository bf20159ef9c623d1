"""doctor's checks of TLS and the client certificate on the routes to Microsoft 365.

Pure, from ``PostfixFacts``: for each distinct service and next-hop destination that reaches
Microsoft 365 (later destinations of a list and ``smtp_fallback_relay`` hosts included), the
``smtp_tls_policy_maps`` entry for that destination, else the service's
``smtp_tls_security_level`` (``policyd.rules.routing.client_tls``); ``smtp_tls_wrappermode``
there is a FAIL; and the certificate each such service presents against ``onprem.certificate``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from policyd.rules import endpoints
from policyd.rules.routing import MANDATORY_TLS_LEVELS, NO_TLS_LEVELS, TLS_LEVELS, ClientTls
from policyd.sources.config import Config
from policyd.sources.postfix import PostfixFacts
from policyd.tools.doctor.report import ERROR, NOTE, OK, POSTFIX, WARNING, Check

_RANK = {OK: 0, NOTE: 1, WARNING: 2, ERROR: 3}

_TLS_FIX = (
    "Set smtp_tls_security_level = encrypt, or give each next hop to Microsoft 365 an encrypt "
    "entry in smtp_tls_policy_maps (e.g. [contoso-com.mail.protection.outlook.com]:25 encrypt)."
)

#: TLS levels that never fall back to plain text.
MANDATORY_TLS = MANDATORY_TLS_LEVELS


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


def tls_level_check(postfix: PostfixFacts) -> Check:
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


def wrappermode_checks(postfix: PostfixFacts) -> list[Check]:
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


def cert_file_check(config: Config, postfix: PostfixFacts, resolve: Callable[[str], str]) -> Check:
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
