"""``m365-policyd doctor``: audit certificate, tenant, connectors and Postfix before mail is lost.

Two layers, as everywhere in the package:

- ``audit`` is pure: from the ``Config``, an optional private-key check, the Postfix parameters
  (a plain mapping, as ``postconf -x`` prints them), the per-destination TLS policy found for the
  relay host, and an injected ``now``, it builds the checklist and the closing table of mail
  classes. It reads no file, runs no program and calls no clock; the closing table runs the real
  predictor (``policyd.rules.predict``) rather than re-deriving the relay rule.
- ``read_postfix`` and ``main`` are the wiring: ``postconf -c DIR -x PARAM...`` and
  ``postmap -c DIR -q KEY MAP`` as subprocesses with a timeout, the key check, the clock, the
  output. A missing or failing ``postconf`` becomes a warning check, never a crash.

The checks live by what they audit: ``certificate``, ``tenant`` (with the closing table of
mail classes, and the Partner connectors), ``postfix``, ``assumptions`` (the disputed rules the
setup relies on, docs/relay-rules.md); ``report`` holds the vocabulary (statuses, areas, ``Check``,
``Report``) and the text and JSON output. Exit status: 0 without errors, 1 with errors, 78 on a
configuration error.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import TextIO

from policyd.constants import EXIT_CONFIG, EXIT_ERRORS, EXIT_UNAVAILABLE, EXIT_USAGE
from policyd.errors import ConfigError
from policyd.rules import predict
from policyd.rules.predictor import Predictor
from policyd.rules.relay import Router
from policyd.sources.config import Config
from policyd.sources.pem import key_matches_certificate
from policyd.sources.postfix import PostfixFacts, read_postfix
from policyd.sources.srs import SrsDomain
from policyd.sources.state import State, build_state, load_config
from policyd.tools.doctor import live
from policyd.tools.doctor.assumptions import assumption_checks
from policyd.tools.doctor.certificate import certificate_checks
from policyd.tools.doctor.exposure import certificate_paths, exposure_checks, files_with_keys
from policyd.tools.doctor.postfix import postfix_checks, srs_check
from policyd.tools.doctor.report import (
    AREAS,
    ERROR,
    STATUSES,
    Check,
    KeyCheck,
    MailClass,
    Report,
    write_json,
    write_text,
)
from policyd.tools.doctor.submission import submission_checks
from policyd.tools.doctor.tenant import (
    connector_scope,
    mail_classes,
    rewriting_check,
    route_samples,
    sender_routes,
    shared_certificate_check,
    shared_egress_check,
    summary_check,
    tenant_checks,
)

__all__ = [
    "AREAS",
    "STATUSES",
    "Check",
    "KeyCheck",
    "MailClass",
    "Report",
    "audit",
    "main",
    "write_json",
    "write_text",
]


def audit(
    config: Config,
    *,
    now: datetime,
    postfix: PostfixFacts | None = None,
    key: KeyCheck | None = None,
    resolve: Callable[[str], str] = os.path.normpath,
    router: Router | None = None,
    srs: SrsDomain | None = None,
    predictor: Predictor | None = None,
) -> Report:
    """Build the checklist and the closing table from plain inputs.

    ``postfix`` None skips the Postfix checks; ``resolve`` turns a path into its comparable
    form (the wiring passes ``os.path.realpath``, tests may pass anything); ``router`` is the
    state's router with ``[postfix]``, so the table predicts exactly as the daemon does;
    ``predictor`` (the state's) lists several tenants: each gets its own section and table,
    and the cross-tenant checks of README: tenants are added.
    """
    tenants = predictor.tenants if predictor is not None else ()
    if len(tenants) > 1 and predictor is not None:
        return _several(config, predictor, now, postfix, key, resolve, router, srs)
    tenant, onprem = config.tenant, config.onprem
    attribution = predict.attribute(tenant, onprem, now)
    problems: list[str] = []
    classes = mail_classes(config, attribution, sender_routes(router, now, problems))
    checks = connector_scope(
        [*certificate_checks(config, attribution, key, now), *tenant_checks(config, attribution)],
        classes,
    )
    disagrees = False
    if postfix is not None:
        found = connector_scope(postfix_checks(config, postfix, classes, resolve), classes)
        found.extend(submission_checks(postfix, router))
        if srs is not None:
            found.append(srs_check(srs))
        checks.extend(found)
        disagrees = router is None and any(
            c.status == ERROR and c.id in ("postfix-cert-file", "postfix-relayhost") for c in found
        )
    if problems:
        checks.append(rewriting_check(problems))
    checks.extend(assumption_checks(config, classes))
    checks.append(summary_check(classes, disagrees))
    return Report(tuple(checks), classes)


def _several(  # noqa: PLR0917 - audit()'s inputs, passed on
    config: Config,
    predictor: Predictor,
    now: datetime,
    postfix: PostfixFacts | None,
    key: KeyCheck | None,
    resolve: Callable[[str], str],
    router: Router | None,
    srs: SrsDomain | None,
) -> Report:
    """One section per tenant (its certificate, connectors and table), then Postfix, then the
    cross-tenant warnings and the summary over every tenant's table."""
    checks: list[Check] = []
    classes: list[MailClass] = []
    problems: list[str] = []
    for named in predictor.tenants:
        own = replace(config, tenant=named.tenant, onprem=predictor.onprem_for(named))
        attribution = predictor.attribution(named, now)
        rows = mail_classes(own, attribution, sender_routes(router, now, problems))
        section = connector_scope(
            [*certificate_checks(own, attribution, key, now), *tenant_checks(own, attribution)],
            rows,
        )
        section.append(summary_check(rows))
        checks.extend(replace(check, tenant=named.name) for check in section)
        classes.extend(replace(row, tenant=named.name) for row in rows)
    if postfix is not None:
        found = connector_scope(postfix_checks(config, postfix, tuple(classes), resolve), classes)
        found.extend(submission_checks(postfix, router))
        if srs is not None:
            found.append(srs_check(srs))
        checks.extend(found)
    if problems:
        checks.append(rewriting_check(problems))
    pictures = (
        [p.onprem for p in router.services.values()]
        if router is not None
        else [predictor.onprem_for(t) for t in predictor.tenants]
    )
    checks.append(shared_egress_check(predictor.tenants, pictures))
    checks.append(shared_certificate_check(predictor.tenants, pictures))
    return Report(tuple(checks), tuple(classes))


# --- wiring --------------------------------------------------------------------------------------


def _key_check_for(config: Config, key: str | None) -> KeyCheck | None:
    """Compare ``--key`` with the configured certificate (nothing to compare without both)."""
    if not config.certificate_path or not key:
        return None
    return KeyCheck(key, key_matches_certificate(config.certificate_path, key))


def main(
    config_path: str,
    *,
    postfix_dir: str = "/etc/postfix",
    key: str | None = None,
    as_json: bool = False,
    out: TextIO | None = None,
    now: datetime | None = None,
    probe: bool = False,
    endpoint: str = "",
) -> int:
    """``m365-policyd doctor``: 0 without errors, 1 with errors, 78 on a configuration error.

    ``probe``: the mail-class table is also asked of Microsoft 365 (``doctor.live``); a
    disagreement exits 1, an endpoint that cannot be reached 69, no endpoint known 2.
    """
    stream = out if out is not None else sys.stdout
    try:
        config = load_config(config_path)
        state = build_state(config, generation=0)
    except ConfigError as error:
        sys.stderr.write(f"m365-policyd: configuration error: {error}\n")
        return EXIT_CONFIG
    if config.postfix.config_directory:
        postfix_dir = config.postfix.config_directory
    view = state.postfix.view if state.postfix is not None else None
    detours = state.postfix.detours if state.postfix is not None else ()
    postfix = read_postfix(postfix_dir, route_samples(config), view, detours)
    moment = now if now is not None else datetime.now(UTC)
    report = audit(
        config,
        now=moment,
        postfix=postfix,
        key=_key_check_for(config, key),
        resolve=os.path.realpath,
        router=state.router,
        srs=state.srs,
        predictor=state.predictor,
    )
    keyed = files_with_keys(certificate_paths(state))
    report = replace(report, checks=(*report.checks, *exposure_checks(config, keyed)))
    rows = None
    if probe:
        probed = _probe(state, report, moment, endpoint, key or "", as_json, stream)
        if isinstance(probed, int):
            return probed
        rows = probed
    if as_json:
        data = report.as_json()
        if rows is not None:
            data["probe"] = [row.as_json() for row in rows]
        json.dump(data, stream, indent=2)
        stream.write("\n")
    else:
        title = f"m365-policyd doctor: {config.path}, Postfix {postfix_dir}"
        write_text(report, stream, title=title)
        if rows is not None:
            live.write_text(rows, stream)
    if rows is not None and not all(row.agrees for row in rows):
        return EXIT_ERRORS
    return report.exit_code


def _probe(  # noqa: PLR0917 - main()'s inputs, passed on
    state: State,
    report: Report,
    now: datetime,
    endpoint: str,
    key: str,
    as_json: bool,
    stream: TextIO,
) -> list[live.LiveRow] | int:
    """The live rows of ``doctor --probe``, or the exit code when the probe cannot ask."""
    from policyd.tools import probe as prober

    try:
        asked = live.questions(state, report.classes, now, endpoint=endpoint, key=key)
    except prober.ProbeUsageError as problem:
        sys.stderr.write(f"m365-policyd: doctor --probe: {problem}\n")
        return EXIT_USAGE
    except prober.ProbeConfigError as problem:
        sys.stderr.write(f"m365-policyd: configuration error: {problem}\n")
        return EXIT_CONFIG
    try:
        answers = prober.run_sessions(asked, announce=sys.stderr if as_json else stream)
    except prober.ProbeError as problem:
        sys.stderr.write(f"m365-policyd: doctor --probe: {problem}\n")
        return EXIT_UNAVAILABLE
    return live.compare(state, report.classes, answers, now)
