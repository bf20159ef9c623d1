"""doctor's assumption checks: which disputed rules the setup relies on, and the fix.

Pure: the configuration and the closing table of mail classes, whose predictions already name
the assumptions they depend on (``policyd.rules.predict``). Two checks:

- ``assumptions-host-connector``: an enabled OnPremises connector whose
  ``TlsSenderCertificateName`` is a host name (``mail.contoso.com``) that is not itself an
  accepted domain. Microsoft's texts disagree on it (KB 3169958's note to Hybrid Configuration
  Wizard users, the 2025 Exchange Team blog, KB 4019940), so doctor warns whatever the setting
  of ``host_connector_name_must_be_accepted`` and recommends ``*.contoso.com``, as the KB does.
- ``assumptions-relied-on``: the keys the mail-class predictions depend on, each with its
  setting and the change to the setup that makes the prediction independent of it.
"""

from __future__ import annotations

from collections.abc import Sequence

from policyd.rules.assumptions import (
    BY_KEY,
    HOST_CONNECTOR_NAME_MUST_BE_ACCEPTED,
    note,
    ordered,
)
from policyd.sources.config import Config
from policyd.tools.doctor.report import ASSUMPTIONS, NOTE, OK, WARNING, Check, MailClass


def assumption_checks(config: Config, classes: Sequence[MailClass]) -> list[Check]:
    return [_host_connector_check(config), _relied_on_check(config, classes)]


def _host_connector_check(config: Config) -> Check:
    tenant = config.tenant
    hosts = [
        c
        for c in tenant.relay_connectors
        if c.tls_sender_certificate_name
        and not c.tls_sender_certificate_name.startswith("*.")
        and not tenant.domain_for_sender(c.tls_sender_certificate_name)[0]
    ]
    if not hosts:
        return Check(
            "assumptions-host-connector",
            ASSUMPTIONS,
            OK,
            "No OnPremises connector names a host (mail.contoso.com) that is not itself an "
            "accepted domain.",
        )
    settings = tenant.assumptions
    named = ", ".join(f"'{c.name}' ({c.tls_sender_certificate_name})" for c in hosts)
    first = hosts[0].tls_sender_certificate_name
    _, _, domain = first.partition(".")
    return Check(
        "assumptions-host-connector",
        ASSUMPTIONS,
        WARNING,
        f"OnPremises connector {named} names a host, not *.{domain or first}, and it is not an "
        "accepted domain: Microsoft's texts disagree on whether such a connector attributes "
        f"this server; predictions follow {note(HOST_CONNECTOR_NAME_MUST_BE_ACCEPTED, settings)}.",
        f"Set TlsSenderCertificateName to *.{domain or first} (Set-InboundConnector "
        f"-TlsSenderCertificateName *.{domain or first}), or add {first} as an accepted domain, "
        "as KB 3169958 advises.",
    )


def _relied_on_check(config: Config, classes: Sequence[MailClass]) -> Check:
    keys = ordered({key for row in classes for key in row.assumptions})
    if not keys:
        return Check(
            "assumptions-relied-on",
            ASSUMPTIONS,
            OK,
            "No prediction in the table below depends on a rule Microsoft's texts disagree on.",
        )
    settings = config.tenant.assumptions
    found = "; ".join(
        f"{note(key, settings)} decides "
        + ", ".join(row.label for row in classes if key in row.assumptions)
        for key in keys
    )
    fixes = "; ".join(f"for {key}: {BY_KEY[key].remedy}" for key in keys)
    return Check(
        "assumptions-relied-on",
        ASSUMPTIONS,
        NOTE,
        f"The table below relies on disputed rules: {found}.",
        f"To stop depending on them, {fixes}.",
    )
