"""doctor's SMTP AUTH checks (SPEC §5.4): Basic authentication, unused credentials, TLS.

Pure: from the routed sample envelopes of ``PostfixFacts`` and, with ``[postfix]``, the router's
Postfix view (for the master.cf ``-o`` overrides and the password map). Three checks, each only
where it applies:

- ``postfix-submission-basic-auth``: a route to a client-submission endpoint
  (``smtp.office365.com``) logs in with SASL and ``smtp_sasl_mechanism_filter`` is unset or does
  not name ``xoauth2``: Basic authentication, which Microsoft is retiring (``535 5.7.139``, later
  ``550 5.7.30``; Exchange Team blog 4114750; the date has moved, see docs/relay-rules.md).
- ``postfix-submission-tls``: such a route whose service's ``smtp_tls_security_level`` is below
  ``encrypt``: Microsoft 365 offers AUTH only after STARTTLS, so a session without TLS goes out
  unauthenticated (``530 5.7.57``). The level is the one for that next hop: its
  ``smtp_tls_policy_maps`` entry, else the service's ``smtp_tls_security_level``.
- ``postfix-sasl-unused``: ``smtp_sasl_password_maps`` has an entry for a port-25 MX endpoint
  (``*.mail.protection.outlook.com``): that endpoint offers no AUTH, the credentials are never
  used and the connector decides alone.

Only login names appear in the texts, never a password.
"""

from __future__ import annotations

from collections.abc import Mapping

from policyd.errors import RouteLookupError
from policyd.rules import endpoints, submission
from policyd.rules.relay import Router
from policyd.rules.routing import PostfixView, client_tls
from policyd.sources.postfix import PostfixFacts, RouteSample
from policyd.tools.doctor.relay_tls import MANDATORY_TLS
from policyd.tools.doctor.report import POSTFIX, WARNING, Check

#: The mechanism filter value that selects OAuth (the sasl-xoauth2 plugin).
XOAUTH2 = "xoauth2"


class _NoTables:
    """Without ``[postfix]`` doctor has main.cf only: no table is asked."""

    def find(self, table: str, key: str, *, partial: bool) -> str | None:
        return None


def submission_checks(postfix: PostfixFacts, router: Router | None) -> list[Check]:
    """The checks of the module docstring that apply to the routes doctor sampled."""
    if postfix.error or not postfix.routes:
        return []
    view = router.view if router is not None else _view_of(postfix.parameters)
    routes = _distinct(postfix.routes)
    submitted = [(s, n) for (s, n), kind in routes.items() if kind == endpoints.SUBMISSION]
    checks: list[Check] = []
    settings = [submission.sasl_settings(view, service) for service, _ in submitted]
    basic = [sasl for sasl in settings if _uses_basic(sasl)]
    if basic:
        where = ", ".join(
            f"{s.mechanism_filter_from} = {s.mechanism_filter or '(empty)'}" for s in basic
        )
        checks.append(
            Check(
                "postfix-submission-basic-auth",
                POSTFIX,
                WARNING,
                f"smtp(8) logs in to Microsoft 365's SMTP AUTH endpoint with Basic authentication "
                f"({where}): Microsoft is retiring it; logins then fail with '535 5.7.139 "
                "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant' "
                "and later '550 5.7.30 Basic authentication is not supported for Client "
                "Submission'.",
                "Log in with OAuth (the sasl-xoauth2 plugin, smtp_sasl_mechanism_filter = "
                "xoauth2), or relay through the tenant's MX endpoint with a connector.",
            )
        )
    weak = []
    for service, nexthop in submitted:
        try:
            tls = client_tls(view, service, nexthop)
        except RouteLookupError as error:
            weak.append(f"{nexthop} via {service} (smtp_tls_policy_maps lookup failed: {error})")
            continue
        if tls.level not in MANDATORY_TLS:
            weak.append(f"{nexthop} via {service} ({tls.level_from} = {tls.level or '(empty)'})")
    if weak:
        checks.append(
            Check(
                "postfix-submission-tls",
                POSTFIX,
                WARNING,
                "TLS to the SMTP AUTH endpoint is not mandatory for "
                + "; ".join(weak)
                + ": Microsoft 365 offers AUTH only after STARTTLS, so a session without TLS "
                "goes out unauthenticated and is refused '530 5.7.57'.",
                "Set smtp_tls_security_level = encrypt for the service that sends to "
                "smtp.office365.com (main.cf, or master.cf -o).",
            )
        )
    unused = []
    if router is not None:
        for (service, nexthop), kind in routes.items():
            if kind != endpoints.RELAY:
                continue
            sasl = submission.sasl_settings(view, service)
            found = submission.credential(view, sasl, "", nexthop)
            if found.login:
                unused.append(
                    f"{found.table} has an entry for {found.key} (login {found.login}) used by "
                    f"service {service} towards {nexthop}"
                )
    if unused:
        checks.append(
            Check(
                "postfix-sasl-unused",
                POSTFIX,
                WARNING,
                "SASL credentials are configured for Microsoft 365's MX endpoint, which offers "
                "no AUTH on port 25, so they are never used and the connector alone decides: "
                + "; ".join(unused)
                + ".",
                "Remove the entry (and smtp_sasl_auth_enable) if a connector relays this mail; "
                "to relay with SMTP AUTH instead, send to [smtp.office365.com]:587.",
            )
        )
    return checks


def _uses_basic(sasl: submission.Sasl) -> bool:
    mechanisms = {m.lower() for m in sasl.mechanism_filter.replace(",", " ").split()}
    return sasl.enabled and XOAUTH2 not in mechanisms


def _distinct(samples: tuple[RouteSample, ...]) -> dict[tuple[str, str], str]:
    """(service, next hop) -> endpoint kind, for the sampled routes that leave over SMTP."""
    found: dict[tuple[str, str], str] = {}
    for sample in samples:
        route = sample.route
        if route is not None and route.relays:
            found.setdefault((route.transport, route.nexthop), sample.kind)
    return found


def _view_of(parameters: Mapping[str, str]) -> PostfixView:
    return PostfixView(parameters, {}, _NoTables())
