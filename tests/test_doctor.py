"""``m365-policyd doctor``: every check on both sides, the mail-class table, output and exit codes.

Certificate and tenant checks run through the pure ``doctor.audit`` on configurations written to
a temporary directory (certificates from ``tests.pki``); the Postfix checks run through real
``postconf -c DIR`` (and ``postmap -q``) on a private configuration directory holding planted
``main.cf`` variations.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from policyd.sources import postfix as postfix_source
from policyd.sources.config import load_config
from policyd.tools import cli, doctor
from policyd.tools.doctor import wiring as doctor_wiring
from policyd.tools.doctor.tenant import route_samples
from tests import needs
from tests.pki import Issued, TestPKI

#: The CLI reads the real clock, so the test certificates are built around it.
NOW = datetime.now(UTC).replace(microsecond=0)
RELAYHOST = "[contoso-com.mail.protection.outlook.com]:25"
SERVICE = "inet:127.0.0.1:10040"
POLICY = "check_policy_service { $m365_policyd_service, default_action=DUNNO }"


# --- building a setup ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Connector:
    name: str = "From on-premises Postfix"
    connector_type: str = "OnPremises"
    enabled: bool = True
    ips: tuple[str, ...] = ("203.0.113.10/32",)
    tls: str = "*.contoso.com"
    sender_domains: tuple[str, ...] = ()
    restrict_ip: bool = False
    restrict_cert: bool = False

    def toml(self) -> str:
        ips = ", ".join(f'"{ip}"' for ip in self.ips)
        domains = ", ".join(f'"{d}"' for d in self.sender_domains)
        return (
            "[[tenant.inbound_connector]]\n"
            f'name = "{self.name}"\n'
            f'connector_type = "{self.connector_type}"\n'
            f"enabled = {str(self.enabled).lower()}\n"
            f"sender_ip_addresses = [{ips}]\n"
            f'tls_sender_certificate_name = "{self.tls}"\n'
            f"sender_domains = [{domains}]\n"
            f"restrict_domains_to_ip_addresses = {str(self.restrict_ip).lower()}\n"
            f"restrict_domains_to_certificate = {str(self.restrict_cert).lower()}\n"
        )


@dataclass(frozen=True)
class Setup:
    """One planted configuration: the daemon's TOML and the certificate it names."""

    accepted: tuple[str, ...] = ("contoso.com",)
    accepted_export: tuple[Mapping[str, object], ...] = ()
    connectors: tuple[Connector, ...] = (Connector(),)
    egress: tuple[str, ...] = ("203.0.113.10",)
    cert: str = "good"  # see _certificate
    srs_domain: str = ""
    listen: tuple[str, ...] = ("tcp:10040:interface=127.0.0.1",)
    extra: dict[str, str] = field(default_factory=dict)
    reject_direct_send: bool = False
    assumptions: dict[str, bool] = field(default_factory=dict)


def _certificate(pki: TestPKI, kind: str) -> tuple[Issued, bool] | None:
    """(leaf, include the intermediate) for a certificate kind; None for no certificate."""
    if kind == "none":
        return None
    if kind == "self-signed":
        return pki.self_signed("mail.contoso.com", ["mail.contoso.com"]), True
    names = {
        "wrong-name": "relay.fabrikam.example",
        "deep": "mail.eu.contoso.com",
        "apex": "contoso.com",
    }
    name = names.get(kind, "mail.contoso.com")
    windows = {
        "expiring": (None, NOW + timedelta(days=10)),
        "expired": (NOW - timedelta(days=100), NOW - timedelta(days=1)),
        "not-yet-valid": (NOW + timedelta(days=5), NOW + timedelta(days=95)),
    }
    not_before, not_after = windows.get(kind, (None, None))
    leaf = pki.leaf(
        name,
        [name],
        not_before=not_before,
        not_after=not_after,
        client_auth=kind != "no-client-auth",
    )
    return leaf, kind != "no-chain"


@dataclass
class World:
    directory: Path
    config: Path
    cert: Path | None
    key: Path | None
    pki: TestPKI


def build(tmp_path: Path, setup: Setup) -> World:
    """Write the daemon's configuration (and certificate) for ``setup`` under ``tmp_path``."""
    pki = TestPKI(now=NOW)
    directory = tmp_path / "daemon"
    directory.mkdir(parents=True, exist_ok=True)
    pki.write_ca_bundle(directory)
    cert_path: Path | None = None
    key_path: Path | None = None
    made = _certificate(pki, setup.cert)
    if setup.cert == "unreadable":
        cert_path = directory / "client.pem"
        cert_path.write_text("this is not a certificate\n")
    elif made is not None:
        leaf, chain = made
        cert_path, key_path = pki.write(directory, leaf, include_intermediate=chain)
    lines = [
        "[server]",
        "listen = [" + ", ".join(f'"{e}"' for e in setup.listen) + "]",
        'metrics = ""',
        "[tenant]",
        "accepted_domains = [" + ", ".join(f'"{d}"' for d in setup.accepted) + "]",
        f"reject_direct_send = {str(setup.reject_direct_send).lower()}",
    ]
    if setup.accepted_export:
        (directory / "accepted-domains.json").write_text(json.dumps(list(setup.accepted_export)))
        lines.append('accepted_domains_file = "accepted-domains.json"')
    lines.extend(c.toml() for c in setup.connectors)
    lines.extend(
        [
            "[onprem]",
            "egress_addresses = [" + ", ".join(f'"{a}"' for a in setup.egress) + "]",
            f'certificate = "{cert_path.name if cert_path else ""}"',
            'ca_bundle = "ca.pem"',
            f'srs_domain = "{setup.srs_domain}"',
        ]
    )
    lines.extend(f"{k} = {v}" for k, v in setup.extra.items())
    if setup.assumptions:
        lines.append("[assumptions]")
        lines.extend(f"{k} = {str(v).lower()}" for k, v in setup.assumptions.items())
    config = directory / "m365-policyd.toml"
    config.write_text("\n".join(lines) + "\n")
    return World(directory, config, cert_path, key_path, pki)


def audit(tmp_path: Path, setup: Setup) -> doctor.Report:
    """The report for ``setup`` without Postfix checks."""
    return doctor.audit(load_config(str(build(tmp_path, setup).config)), now=NOW)


def finding(report: doctor.Report, check_id: str) -> doctor.Check:
    matches = [c for c in report.checks if c.id == check_id]
    assert len(matches) == 1, [c.id for c in report.checks]
    return matches[0]


# --- certificate and tenant checks, both sides ---------------------------------------------------

HEALTHY = Setup()
IP_ONLY = Setup(cert="none", connectors=(Connector(tls=""),))
#: A filtering service that locks the tenant down to its addresses (RestrictDomainsToIPAddresses).
FILTER_PARTNER = Connector(
    name="Mail from the filtering service",
    connector_type="Partner",
    ips=("192.0.2.128/25",),
    tls="",
    sender_domains=("smtp:*;1",),
    restrict_ip=True,
)
#: MC1093237: a Partner connector that authenticates a scanner's Direct Send.
SCANNER_PARTNER = Connector(
    name="Scanners", connector_type="Partner", ips=("203.0.113.71/32",), tls=""
)

CASES: list[tuple[str, Setup, str, str, str]] = [
    # (case, setup, check id, expected status, text the finding or fix must contain)
    ("cert configured", HEALTHY, "certificate-configured", "ok", "client.pem"),
    ("no cert", IP_ONLY, "certificate-configured", "warning", "only the IP path"),
    ("cert readable", HEALTHY, "certificate-readable", "ok", "mail.contoso.com"),
    ("cert unreadable", Setup(cert="unreadable"), "certificate-readable", "error", "not PEM"),
    ("valid", HEALTHY, "certificate-validity", "ok", "days left"),
    ("expiring", Setup(cert="expiring"), "certificate-validity", "warning", "in 10 days"),
    ("expired", Setup(cert="expired"), "certificate-validity", "error", "expired on"),
    ("not yet valid", Setup(cert="not-yet-valid"), "certificate-validity", "error", "not yet"),
    ("CA-issued", HEALTHY, "certificate-self-signed", "ok", "not self-signed"),
    ("self-signed", Setup(cert="self-signed"), "certificate-self-signed", "error", "public CA"),
    ("chain complete", HEALTHY, "certificate-chain", "ok", "complete"),
    ("chain incomplete", Setup(cert="no-chain"), "certificate-chain", "error", "intermediate"),
    ("name matches", HEALTHY, "certificate-connector-name", "ok", "'From on-premises Postfix'"),
    (
        "name mismatch",
        Setup(cert="wrong-name"),
        "certificate-connector-name",
        "error",
        "expects *.contoso.com",
    ),
    (
        "no connector names a certificate",
        Setup(connectors=(Connector(tls=""),)),
        "certificate-connector-name",
        "warning",
        "TlsSenderCertificateName",
    ),
    ("one label deep", HEALTHY, "certificate-accepted-domain", "ok", "contoso.com"),
    (
        "two labels deep",
        Setup(cert="deep", connectors=(Connector(tls="*.contoso.com"),)),
        "certificate-accepted-domain",
        "error",
        "Add eu.contoso.com as an accepted domain",
    ),
    ("clientAuth EKU", HEALTHY, "certificate-client-auth", "ok", "allows clientAuth"),
    ("no clientAuth EKU", Setup(cert="no-client-auth"), "certificate-client-auth", "note", "2026"),
    ("accepted domains", HEALTHY, "tenant-accepted-domains", "ok", "contoso.com"),
    ("no accepted domain", Setup(accepted=()), "tenant-accepted-domains", "error", "no accepted"),
    ("sending enabled", HEALTHY, "tenant-sending-disabled", "ok", "No accepted domain"),
    (
        "sending disabled",
        Setup(
            accepted_export=(
                {"DomainName": "legacy.contoso.com", "SendingFromDomainDisabled": True},
            )
        ),
        "tenant-sending-disabled",
        "note",
        "legacy.contoso.com",
    ),
    ("OnPremises connector", HEALTHY, "tenant-onprem-connector", "ok", "Enabled OnPremises"),
    (
        "only a Partner connector",
        Setup(connectors=(Connector(connector_type="Partner"),)),
        "tenant-onprem-connector",
        "error",
        "No enabled OnPremises",
    ),
    ("no inert connector", HEALTHY, "tenant-inert-connectors", "ok", "No disabled"),
    (
        "Partner connector meant for us",
        Setup(connectors=(Connector(), Connector(name="Scanner", connector_type="Partner"))),
        "tenant-inert-connectors",
        "warning",
        "-ConnectorType OnPremises",
    ),
    (
        "disabled connector meant for us",
        Setup(
            cert="none",
            connectors=(
                Connector(ips=("198.51.100.0/24",), tls=""),
                Connector(name="Old relay", enabled=False, tls=""),
            ),
        ),
        "tenant-inert-connectors",
        "warning",
        "Enable-InboundConnector 'Old relay'",
    ),
    ("attributed", HEALTHY, "tenant-attribution", "ok", "by the certificate name"),
    (
        "not attributed",
        Setup(cert="none", connectors=(Connector(ips=("198.51.100.0/24",), tls=""),)),
        "tenant-attribution",
        "error",
        "TenantAttribution",
    ),
    ("egress covered", HEALTHY, "tenant-egress-addresses", "ok", "203.0.113.10"),
    (
        "one of two egress uncovered",
        replace(IP_ONLY, egress=("203.0.113.10", "203.0.113.99")),
        "tenant-egress-addresses",
        "warning",
        "203.0.113.99",
    ),
    (
        "no egress covered, no certificate",
        replace(IP_ONLY, egress=("203.0.113.99",)),
        "tenant-egress-addresses",
        "error",
        "203.0.113.99",
    ),
    (
        "egress uncovered but certificate attributes",
        Setup(egress=("203.0.113.99",)),
        "tenant-egress-addresses",
        "note",
        "certificate attributes",
    ),
    (
        "no egress configured",
        replace(IP_ONLY, egress=()),
        "tenant-egress-addresses",
        "warning",
        "No egress",
    ),
    ("IPv4 only", HEALTHY, "tenant-ipv6-egress", "ok", "No IPv6"),
    (
        "IPv6 with certificate",
        Setup(egress=("203.0.113.10", "2001:db8::25")),
        "tenant-ipv6-egress",
        "ok",
        "certificate",
    ),
    (
        "IPv6 with IP-only connector",
        replace(IP_ONLY, egress=("203.0.113.10", "2001:db8::25")),
        "tenant-ipv6-egress",
        "warning",
        "smtp_address_preference",
    ),
    ("no restricting Partner connector", HEALTHY, "tenant-partner-restriction", "ok", "No enabled"),
    (
        "restricting Partner connector satisfied",
        Setup(connectors=(Connector(), FILTER_PARTNER), egress=("192.0.2.130",)),
        "tenant-partner-restriction",
        "ok",
        "satisfies every restricting Partner connector",
    ),
    (
        "restricting Partner connector, OnPremises attributes for now",
        Setup(connectors=(Connector(), FILTER_PARTNER)),
        "tenant-partner-restriction",
        "note",
        "if that stops matching",
    ),
    (
        "restricting Partner connector refuses own mail into the tenant",
        Setup(
            cert="wrong-name", egress=("203.0.113.71",), connectors=(Connector(), FILTER_PARTNER)
        ),
        "tenant-partner-restriction",
        "error",
        "add 203.0.113.71 to Partner connector 'Mail from the filtering service'",
    ),
    (
        "restricting Partner connector for other senders",
        Setup(
            cert="wrong-name",
            egress=("203.0.113.71",),
            connectors=(Connector(), replace(FILTER_PARTNER, sender_domains=("fabrikam.com",))),
        ),
        "tenant-partner-restriction",
        "warning",
        "SenderDomains fabrikam.com",
    ),
    ("RejectDirectSend off", HEALTHY, "tenant-direct-send", "ok", "RejectDirectSend is off"),
    (
        "RejectDirectSend, OnPremises connector attributes",
        replace(HEALTHY, reject_direct_send=True),
        "tenant-direct-send",
        "ok",
        "not Direct Send",
    ),
    (
        "RejectDirectSend, Partner connector authenticates",
        Setup(
            cert="none",
            egress=("203.0.113.71",),
            reject_direct_send=True,
            connectors=(Connector(), SCANNER_PARTNER),
        ),
        "tenant-direct-send",
        "ok",
        "Partner connector 'Scanners' matches the egress address 203.0.113.71",
    ),
    (
        "RejectDirectSend, no connector matches",
        Setup(
            cert="none",
            egress=("203.0.113.72",),
            reject_direct_send=True,
            connectors=(Connector(), SCANNER_PARTNER),
        ),
        "tenant-direct-send",
        "error",
        "MC1093237",
    ),
]


@pytest.mark.parametrize(
    ("setup", "check_id", "status", "text"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_certificate_and_tenant_checks(
    tmp_path: Path, setup: Setup, check_id: str, status: str, text: str
) -> None:
    """Each certificate and tenant check gives the expected status for its planted setup."""
    check = finding(audit(tmp_path, setup), check_id)
    assert check.status == status, check
    assert text in check.finding + " " + check.fix
    assert check.area in ("certificate", "tenant")
    assert (check.fix == "") == (status == "ok"), "a fix exactly when something is not ok"


def test_every_certificate_and_tenant_check_is_covered_on_both_sides() -> None:
    """The case table tests each certificate/tenant check id as ok and as not ok."""
    sides: dict[str, set[bool]] = {}
    for _, _, check_id, status, _ in CASES:
        sides.setdefault(check_id, set()).add(status == "ok")
    one_sided = sorted(k for k, v in sides.items() if v != {True, False})
    assert one_sided == []


def test_unreadable_certificate_skips_the_dependent_checks(tmp_path: Path) -> None:
    """An unreadable certificate is one error, not a cascade of checks on missing facts."""
    report = audit(tmp_path, Setup(cert="unreadable"))
    ids = [c.id for c in report.checks if c.area == "certificate"]
    assert ids == ["certificate-configured", "certificate-readable"]


def test_key_check_in_audit(tmp_path: Path) -> None:
    """A key result of False is an error and True is ok (the pure side of --key)."""
    world = build(tmp_path, HEALTHY)
    config = load_config(str(world.config))
    good = doctor.audit(config, now=NOW, key=doctor.KeyCheck("k.pem", True))
    bad = doctor.audit(config, now=NOW, key=doctor.KeyCheck("k.pem", False))
    assert good.status_of("certificate-key") == "ok"
    assert bad.status_of("certificate-key") == "error"
    assert doctor.audit(config, now=NOW).status_of("certificate-key") is None


# --- the closing table ---------------------------------------------------------------------------


def relayed(report: doctor.Report) -> dict[str, tuple[bool, str]]:
    return {row.id: (row.relayed, row.reason) for row in report.classes}


def test_table_with_a_certificate_connector_relays_every_class(tmp_path: Path) -> None:
    """With a certificate under an accepted domain, every class relays (certificate path)."""
    report = audit(tmp_path, HEALTHY)
    assert relayed(report) == {
        "own-domain": (True, "certificate-connector"),
        "foreign-sender": (True, "certificate-connector"),
        "forwarded": (True, "certificate-connector"),
        "null-sender-bounce": (True, "certificate-connector"),
        "out-of-office": (True, "certificate-connector"),
        "into-tenant": (True, "recipient-in-tenant"),
    }
    assert all(row.fix == "" for row in report.classes)
    assert report.status_of("summary-mail-classes") == "ok"


def test_table_with_an_ip_connector_refuses_bounces_and_forwards(tmp_path: Path) -> None:
    """An IP-only connector relays own-domain mail only; the rest carries its reason and a fix."""
    report = audit(tmp_path, IP_ONLY)
    assert relayed(report) == {
        "own-domain": (True, "sender-accepted-domain"),
        "foreign-sender": (False, "sender-not-accepted"),
        "forwarded": (False, "forwarded"),
        "null-sender-bounce": (False, "null-sender"),
        "out-of-office": (False, "null-sender"),
        "into-tenant": (True, "recipient-in-tenant"),
    }
    forwarded = next(r for r in report.classes if r.id == "forwarded")
    assert forwarded.final == ("kate@tailspintoys.example",)
    assert "SRS" in forwarded.fix
    assert forwarded.code == "5.7.64"
    summary = finding(report, "summary-mail-classes")
    assert summary.status == "warning"
    assert "4 of 6" in summary.finding


def test_table_with_srs_relays_foreign_and_forwarded_senders(tmp_path: Path) -> None:
    """SRS into an accepted domain makes foreign and forwarded senders relay by the IP path."""
    report = audit(
        tmp_path,
        replace(IP_ONLY, srs_domain="srs.contoso.com", accepted=("contoso.com", "srs.contoso.com")),
    )
    rows = relayed(report)
    assert rows["foreign-sender"] == (True, "srs-rewritten")
    assert rows["forwarded"] == (True, "srs-rewritten")
    assert rows["null-sender-bounce"] == (False, "null-sender")


def test_table_names_the_accepted_domain_a_deep_certificate_needs(tmp_path: Path) -> None:
    """A matching certificate two labels deep: the refused rows say which domain to add."""
    report = audit(tmp_path, Setup(cert="deep", connectors=(Connector(tls="*.contoso.com"),)))
    bounce = next(r for r in report.classes if r.id == "null-sender-bounce")
    assert (bounce.relayed, bounce.reason) == (False, "null-sender")
    assert bounce.fix.startswith("Add eu.contoso.com as an accepted domain")


def test_table_without_a_connector_is_an_error(tmp_path: Path) -> None:
    """When even own-domain mail is refused (no connector), the summary is an error."""
    setup = replace(IP_ONLY, connectors=(Connector(ips=("198.51.100.0/24",), tls=""),))
    report = audit(tmp_path, setup)
    assert relayed(report)["own-domain"] == (False, "no-connector")
    assert report.status_of("summary-mail-classes") == "error"
    assert report.exit_code == 1


# --- assumptions (SPEC §5.3) ---------------------------------------------------------------------

#: The Hybrid Configuration Wizard's connector: a host name, only contoso.com accepted (KB 3169958).
HCW = Setup(connectors=(Connector(name="Inbound from HCW", tls="mail.contoso.com"),))


@pytest.mark.parametrize("setting", [False, True])
def test_host_name_connector_is_a_warning_whatever_the_setting(
    tmp_path: Path, setting: bool
) -> None:
    """A connector written as mail.contoso.com with only contoso.com accepted is not "all ok":
    doctor warns at both settings, names the assumption and recommends *.contoso.com or adding
    the host as an accepted domain, as KB 3169958 says."""
    setup = replace(HCW, assumptions={"host_connector_name_must_be_accepted": setting})
    report = audit(tmp_path, setup)
    check = finding(report, "assumptions-host-connector")
    assert check.status == "warning"
    assert f"host_connector_name_must_be_accepted = {str(setting).lower()}" in check.finding
    assert "*.contoso.com" in check.fix
    assert "add mail.contoso.com as an accepted domain" in check.fix
    assert "KB 3169958" in check.fix
    assert check.area == "assumptions"


@pytest.mark.parametrize("setting", [False, True])
def test_the_table_names_the_assumption_it_relies_on(tmp_path: Path, setting: bool) -> None:
    """With the host-name connector, the foreign-sender row relays or not depending on the
    setting, and both the row and the assumptions-relied-on check name the key and its remedy."""
    setup = replace(HCW, assumptions={"host_connector_name_must_be_accepted": setting})
    report = audit(tmp_path, setup)
    rows = relayed(report)
    if setting:  # the connector then attributes only by its IP address
        assert rows["foreign-sender"] == (False, "sender-not-accepted")
    else:
        assert rows["foreign-sender"] == (True, "certificate-connector")
    foreign = next(r for r in report.classes if r.id == "foreign-sender")
    assert foreign.assumptions[0] == "host_connector_name_must_be_accepted"
    # relayed by the certificate, a foreign sender also depends on foreign_sender_via_certificate
    assert foreign.assumptions[1:] == (() if setting else ("foreign_sender_via_certificate",))
    own = next(r for r in report.classes if r.id == "own-domain")
    assert own.assumptions == ()  # accepted either way: an own-domain sender passes by IP too
    check = finding(report, "assumptions-relied-on")
    assert check.status == "note"
    assert "host_connector_name_must_be_accepted" in check.finding
    assert "foreign senders" in check.finding
    assert "*.contoso.com" in check.fix


@pytest.mark.parametrize(
    ("setup", "check_id"),
    [
        (HEALTHY, "assumptions-host-connector"),
        (IP_ONLY, "assumptions-relied-on"),
        (replace(HCW, accepted=("contoso.com", "mail.contoso.com")), "assumptions-host-connector"),
    ],
)
def test_no_disputed_rule_is_ok(tmp_path: Path, setup: Setup, check_id: str) -> None:
    """A wildcard connector (or a host name that is itself accepted) relies on no disputed rule."""
    check = finding(audit(tmp_path, setup), check_id)
    assert (check.status, check.fix) == ("ok", "")


@pytest.mark.parametrize("setting", [True, False])
def test_certificate_checks_follow_the_apex_assumption(tmp_path: Path, setting: bool) -> None:
    """A certificate named contoso.com against *.contoso.com matches at true, not at false, in
    the certificate check as in the prediction, which names the assumption either way."""
    setup = Setup(cert="apex", assumptions={"wildcard_connector_covers_apex": setting})
    report = audit(tmp_path, setup)
    assert finding(report, "certificate-connector-name").status == ("ok" if setting else "error")
    bounce = next(r for r in report.classes if r.id == "null-sender-bounce")
    assert (bounce.relayed, bounce.reason) == (
        (True, "certificate-connector") if setting else (False, "null-sender")
    )
    assert "wildcard_connector_covers_apex" in bounce.assumptions


def test_doctor_json_rows_carry_their_assumptions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--json gives each mail-class row its "assumptions" list."""
    monkeypatch.setattr(postfix_source, "find_tool", lambda name: None)
    world = build(tmp_path, HCW)
    _, out, _ = run_cli("-c", str(world.config), "--json", capsys=capsys)
    rows = {row["class"]: row for row in json.loads(out)["classes"]}
    assert rows["foreign-sender"]["assumptions"] == [
        "host_connector_name_must_be_accepted",
        "foreign_sender_via_certificate",
    ]
    assert rows["own-domain"]["assumptions"] == []


def test_a_certificate_connector_relies_on_foreign_senders_passing(tmp_path: Path) -> None:
    """With a certificate connector, foreign and forwarded senders relay only under
    foreign_sender_via_certificate = true: doctor notes it with the SRS remedy."""
    check = finding(audit(tmp_path, HEALTHY), "assumptions-relied-on")
    assert check.status == "note"
    assert "foreign_sender_via_certificate = true" in check.finding
    assert "foreign senders, forwarded mail" in check.finding
    assert "SRS" in check.fix


# --- Postfix, through the real postconf ----------------------------------------------------------


def _require_postconf() -> None:
    needs.program("postconf", "postfix")


def main_cf(world: World, overrides: Mapping[str, str | None]) -> dict[str, str]:
    """The healthy main.cf for ``world`` with ``overrides`` (None removes a parameter)."""
    settings = {
        "compatibility_level": "3.6",
        "myhostname": "mta.contoso.com",  # else postconf looks the host name up in the DNS
        "relayhost": RELAYHOST,
        "smtp_tls_security_level": "encrypt",
        "smtp_tls_cert_file": str(world.cert) if world.cert else "",
        "smtp_tls_key_file": str(world.key) if world.key else "",
        "m365_policyd_service": SERVICE,
        "smtpd_relay_restrictions": (
            "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination"
        ),
        "smtpd_recipient_restrictions": POLICY,
        "smtpd_data_restrictions": POLICY,
    }
    for name, value in overrides.items():
        if value is None:
            settings.pop(name, None)
        else:
            settings[name] = value.replace("{dir}", str(world.directory))
    return settings


#: The services a Debian master.cf defines for delivery (routing needs their commands).
MASTER_CF = """\
smtp      unix  -       -       y       -       -       smtp
relay     unix  -       -       y       -       -       smtp
error     unix  -       -       y       -       -       error
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
"""


def postfix_dir(world: World, overrides: Mapping[str, str | None]) -> Path:
    directory = world.directory.parent / "postfix"
    directory.mkdir(exist_ok=True)
    text = "".join(f"{k} = {v}\n" for k, v in main_cf(world, overrides).items())
    (directory / "main.cf").write_text(text)
    (directory / "master.cf").write_text(MASTER_CF)
    # Postfix waits up to 2 s for a main.cf modified in this very second to settle.
    for name in ("main.cf", "master.cf"):
        os.utime(directory / name, (0, NOW.timestamp() - 60))
    return directory


def postfix_report(
    tmp_path: Path,
    overrides: Mapping[str, str | None],
    setup: Setup = HEALTHY,
    files: Mapping[str, str] | None = None,
) -> doctor.Report:
    _require_postconf()
    world = build(tmp_path, setup)
    for name, text in (files or {}).items():
        (world.directory / name).write_text(text)
        os.utime(world.directory / name, (0, NOW.timestamp() - 60))  # see postfix_dir
    directory = postfix_dir(world, overrides)
    config = load_config(str(world.config))
    facts = postfix_source.read_postfix(str(directory), route_samples(config))
    assert facts.error == ""
    assert facts.route_error == ""
    return doctor.audit(config, now=NOW, postfix=facts, resolve=os.path.realpath)


TLS_POLICY = {"tls_policy": f"{RELAYHOST} encrypt\n"}
WEAK_POLICY = {"tls_policy": f"{RELAYHOST} may\n"}
UNIX_LISTEN = replace(HEALTHY, listen=("unix:{spool}/private/m365-policyd:mode=660",))

POSTFIX_CASES: list[
    tuple[str, dict[str, str | None], Setup, dict[str, str] | None, str, str, str]
] = [
    # (case, main.cf overrides, setup, extra files, check id, status, text)
    ("relayhost M365", {}, HEALTHY, None, "postfix-relayhost", "ok", "MX endpoint"),
    (
        "relayhost empty",
        {"relayhost": None},
        HEALTHY,
        None,
        "postfix-relayhost",
        "error",
        "directly to the recipients' MX",
    ),
    (
        "relayhost empty, sender-dependent relay host to Microsoft 365",
        {"relayhost": None, "sender_dependent_relayhost_maps": "texthash:{dir}/sender_relay"},
        HEALTHY,
        {
            "sender_relay": f"@contoso.com {RELAYHOST}\n@fabrikam.example {RELAYHOST}\n"
            f"<> {RELAYHOST}\n"
        },
        "postfix-relayhost",
        "ok",
        "sender_dependent_relayhost_maps",
    ),
    (
        "relayhost empty, transport_maps * to Microsoft 365",
        {"relayhost": None, "transport_maps": "texthash:{dir}/transport"},
        HEALTHY,
        {"transport": f"* smtp:{RELAYHOST}\n"},
        "postfix-relayhost",
        "ok",
        "transport_maps: *",
    ),
    (
        "relayhost mx.microsoft",
        {"relayhost": "[contoso-com.a-v1.mx.microsoft]:25"},
        HEALTHY,
        None,
        "postfix-relayhost",
        "ok",
        "MX endpoint",
    ),
    (
        "relayhost GCC High",
        {"relayhost": "[contoso-com.mail.protection.office365.us]:25"},
        HEALTHY,
        None,
        "postfix-relayhost",
        "ok",
        "MX endpoint",
    ),
    (
        "relayhost retired smart host",
        {"relayhost": "[mail.messaging.microsoft.com]"},
        HEALTHY,
        None,
        "postfix-relayhost",
        "error",
        "451 4.4.62 Mail sent to the wrong Office 365 region. ATTR35",
    ),
    (
        "transport_maps sends the outside domain elsewhere",
        {"transport_maps": "texthash:{dir}/transport"},
        HEALTHY,
        {"transport": "tailspintoys.example smtp:[mx.tailspintoys.example]\n"},
        "postfix-relayhost",
        "warning",
        "mx.tailspintoys.example is not a Microsoft 365 endpoint",
    ),
    (
        "relayhost submission endpoint",
        {"relayhost": "[smtp.office365.com]:587"},
        HEALTHY,
        None,
        "postfix-relayhost",
        "ok",
        "SMTP AUTH submission endpoint are predicted per credential",
    ),
    (
        "relayhost submission endpoint on port 25",
        {"relayhost": "[smtp.office365.com]"},
        HEALTHY,
        None,
        "postfix-relayhost",
        "warning",
        "port 587",
    ),
    (
        "relayhost other host",
        {"relayhost": "[relay.example.net]"},
        HEALTHY,
        None,
        "postfix-relayhost",
        "warning",
        "relay.example.net is not a Microsoft 365 endpoint",
    ),
    (
        "relayhost port 587",
        {"relayhost": "[contoso-com.mail.protection.outlook.com]:587"},
        HEALTHY,
        None,
        "postfix-relayhost",
        "error",
        "port 587",
    ),
    (
        "relayhost without brackets",
        {"relayhost": "contoso-com.mail.protection.outlook.com"},
        HEALTHY,
        None,
        "postfix-relayhost",
        "warning",
        "without brackets",
    ),
    ("TLS encrypt", {}, HEALTHY, None, "postfix-tls-mandatory", "ok", "encrypt"),
    (
        "TLS may",
        {"smtp_tls_security_level": "may"},
        HEALTHY,
        None,
        "postfix-tls-mandatory",
        "error",
        "falls back to plain text",
    ),
    (
        "TLS unset",
        {"smtp_tls_security_level": None},
        HEALTHY,
        None,
        "postfix-tls-mandatory",
        "error",
        "not mandatory",
    ),
    (
        "TLS dane",
        {"smtp_tls_security_level": "dane", "smtp_dns_support_level": "dnssec"},
        HEALTHY,
        None,
        "postfix-tls-mandatory",
        "warning",
        "TLSA",
    ),
    (
        "TLS encrypt per destination",
        {
            "smtp_tls_security_level": "may",
            "smtp_tls_policy_maps": "texthash:{dir}/tls_policy",
        },
        HEALTHY,
        TLS_POLICY,
        "postfix-tls-mandatory",
        "ok",
        "smtp_tls_policy_maps entry",
    ),
    (
        "TLS may per destination beats encrypt",
        {"smtp_tls_policy_maps": "texthash:{dir}/tls_policy"},
        HEALTHY,
        WEAK_POLICY,
        "postfix-tls-mandatory",
        "error",
        "= may",
    ),
    ("cert file is ours", {}, HEALTHY, None, "postfix-cert-file", "ok", "client.pem"),
    (
        "cert file through a symlink",
        {"smtp_tls_cert_file": "{dir}/link.pem"},
        HEALTHY,
        None,
        "postfix-cert-file",
        "ok",
        "configured certificate",
    ),
    (
        "cert file in chain_files",
        {
            "smtp_tls_cert_file": None,
            "smtp_tls_key_file": None,
            "smtp_tls_chain_files": "{dir}/client.key, {dir}/client.pem",
        },
        HEALTHY,
        None,
        "postfix-cert-file",
        "ok",
        "smtp_tls_chain_files is the configured certificate",
    ),
    (
        "chain_files without our certificate",
        {"smtp_tls_chain_files": "{dir}/client.key, {dir}/ca.pem"},
        HEALTHY,
        None,
        "postfix-cert-file",
        "error",
        "ca.pem",
    ),
    (
        "cert file differs",
        {"smtp_tls_cert_file": "{dir}/other.pem"},
        HEALTHY,
        None,
        "postfix-cert-file",
        "error",
        "other.pem",
    ),
    (
        "cert file empty",
        {"smtp_tls_cert_file": None},
        HEALTHY,
        None,
        "postfix-cert-file",
        "error",
        "presents no certificate",
    ),
    (
        "cert file but none configured",
        {"smtp_tls_cert_file": "{dir}/ca.pem"},
        IP_ONLY,
        None,
        "postfix-cert-file",
        "warning",
        "onprem.certificate is empty",
    ),
    ("policy check as in the snippet", {}, HEALTHY, None, "postfix-policy-recipient", "ok", ""),
    (
        "policy check missing",
        {"smtpd_recipient_restrictions": None},
        HEALTHY,
        None,
        "postfix-policy-recipient",
        "error",
        "never asks",
    ),
    (
        "policy check for another port",
        {"m365_policyd_service": "inet:127.0.0.1:10041"},
        HEALTHY,
        None,
        "postfix-policy-recipient",
        "error",
        "(policy services named there: inet:127.0.0.1:10041)",
    ),
    (
        "policy check after permit_mynetworks",
        {
            "smtpd_recipient_restrictions": (
                f"permit_mynetworks, reject_unauth_destination, {POLICY}"
            )
        },
        HEALTHY,
        None,
        "postfix-policy-recipient",
        "warning",
        "permit_mynetworks",
    ),
    (
        "policy check before relay control",
        {
            "smtpd_relay_restrictions": "",
            "smtpd_recipient_restrictions": f"{POLICY}, reject_unauth_destination",
        },
        HEALTHY,
        None,
        "postfix-policy-recipient",
        "warning",
        "before reject_unauth_destination",
    ),
    (
        "policy check after relay control in one list",
        {
            "smtpd_relay_restrictions": "",
            "smtpd_recipient_restrictions": f"reject_unauth_destination {POLICY}",
        },
        HEALTHY,
        None,
        "postfix-policy-recipient",
        "ok",
        "after relay control",
    ),
    (
        "policy check in relay restrictions",
        {
            "smtpd_relay_restrictions": f"reject_unauth_destination, {POLICY}",
            "smtpd_recipient_restrictions": None,
        },
        HEALTHY,
        None,
        "postfix-policy-recipient",
        "ok",
        "smtpd_relay_restrictions",
    ),
    (
        "policy check on a unix socket",
        {
            "queue_directory": "{dir}/spool",
            "m365_policyd_service": "unix:private/m365-policyd",
        },
        UNIX_LISTEN,
        None,
        "postfix-policy-recipient",
        "ok",
        "unix:private/m365-policyd",
    ),
    (
        "policy check with the old plain form",
        {"smtpd_recipient_restrictions": "check_policy_service inet:localhost:10040"},
        HEALTHY,
        None,
        "postfix-policy-recipient",
        "ok",
        "inet:localhost:10040",
    ),
    ("data check", {}, HEALTHY, None, "postfix-policy-data", "ok", "smtpd_data_restrictions"),
    (
        "data check missing",
        {"smtpd_data_restrictions": None},
        HEALTHY,
        None,
        "postfix-policy-data",
        "warning",
        "X-M365-Relay",
    ),
    ("fail open", {}, HEALTHY, None, "postfix-policy-default-action", "ok", "DUNNO"),
    (
        "fail closed by Postfix's default",
        {"smtpd_recipient_restrictions": "check_policy_service $m365_policyd_service"},
        HEALTHY,
        None,
        "postfix-policy-default-action",
        "error",
        "451 4.3.5",
    ),
    (
        "fail open globally",
        {
            "smtpd_recipient_restrictions": "check_policy_service $m365_policyd_service",
            "smtpd_data_restrictions": "check_policy_service $m365_policyd_service",
            "smtpd_policy_service_default_action": "DUNNO",
        },
        HEALTHY,
        None,
        "postfix-policy-default-action",
        "ok",
        "DUNNO",
    ),
    (
        "fail closed per check",
        {
            "smtpd_data_restrictions": (
                "check_policy_service { $m365_policyd_service, "
                "{ default_action = 450 4.7.1 try later } }"
            )
        },
        HEALTHY,
        None,
        "postfix-policy-default-action",
        "error",
        "smtpd_data_restrictions: 450 4.7.1 try later",
    ),
    (
        "bounces relay by certificate",
        {},
        HEALTHY,
        None,
        "postfix-null-sender-bounces",
        "ok",
        "null sender",
    ),
    (
        "bounces refused by IP-only connector",
        {
            "notify_classes": "bounce, resource, software",
            "bounce_notice_recipient": "noc@example.net",
        },
        IP_ONLY,
        None,
        "postfix-null-sender-bounces",
        "note",
        "postmaster notices to noc@example.net",
    ),
]


@pytest.mark.postfix
@pytest.mark.parametrize(
    ("overrides", "setup", "files", "check_id", "status", "text"),
    [case[1:] for case in POSTFIX_CASES],
    ids=[case[0] for case in POSTFIX_CASES],
)
def test_postfix_checks(
    tmp_path: Path,
    overrides: dict[str, str | None],
    setup: Setup,
    files: dict[str, str] | None,
    check_id: str,
    status: str,
    text: str,
) -> None:
    """Each Postfix check, read through real postconf, gives the expected status."""
    if setup is UNIX_LISTEN:
        spool = tmp_path / "daemon" / "spool"
        setup = replace(setup, listen=(f"unix:{spool}/private/m365-policyd:mode=660",))
    if overrides.get("smtp_tls_cert_file") == "{dir}/link.pem":
        (tmp_path / "daemon").mkdir(parents=True)
        (tmp_path / "daemon" / "link.pem").symlink_to(tmp_path / "daemon" / "client.pem")
    check = finding(postfix_report(tmp_path, overrides, setup, files), check_id)
    assert check.status == status, check
    assert text in check.finding + " " + check.fix
    assert check.area == "postfix"


def test_every_postfix_check_is_covered_on_both_sides() -> None:
    """The Postfix case table tests each Postfix check id as ok and as not ok."""
    sides: dict[str, set[bool]] = {}
    for case in POSTFIX_CASES:
        sides.setdefault(case[4], set()).add(case[5] == "ok")
    one_sided = sorted(k for k, v in sides.items() if v != {True, False})
    assert one_sided == []


@pytest.mark.postfix
def test_postfix_read_from_a_healthy_directory(tmp_path: Path) -> None:
    """A healthy private Postfix directory reads cleanly and gives no error or warning."""
    report = postfix_report(tmp_path, {})
    assert report.status_of("postfix-config") == "ok"
    assert [c for c in report.checks if c.status in ("error", "warning")] == []


@pytest.mark.postfix
def test_postfix_directory_missing_is_a_warning(tmp_path: Path) -> None:
    """A directory without main.cf makes one warning naming postconf's complaint, no crash."""
    _require_postconf()
    facts = postfix_source.read_postfix(str(tmp_path / "nowhere"))
    assert "main.cf" in facts.error
    world = build(tmp_path, HEALTHY)
    report = doctor.audit(load_config(str(world.config)), now=NOW, postfix=facts)
    check = finding(report, "postfix-config")
    assert check.status == "warning"
    assert check.finding.startswith("Could not read Postfix configuration:")
    assert [c.id for c in report.checks if c.area == "postfix"] == ["postfix-config"]


def test_postconf_missing_is_a_warning(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without a postconf program the audit says so in a warning instead of failing."""
    monkeypatch.setattr(postfix_source, "find_tool", lambda name: None)
    facts = postfix_source.read_postfix("/etc/postfix")
    assert facts.error.startswith("postconf not found")
    world = build(tmp_path, HEALTHY)
    report = doctor.audit(load_config(str(world.config)), now=NOW, postfix=facts)
    assert report.status_of("postfix-config") == "warning"


# --- pure helpers --------------------------------------------------------------------------------


def test_postfix_list_keeps_brace_groups() -> None:
    """Restriction lists split on commas and spaces but keep { ... } groups whole."""
    text = "permit_mynetworks,reject_unauth_destination check_policy_service { a:b, { x = 1 2 } }"
    assert postfix_source.split_postfix_list(text) == [
        "permit_mynetworks",
        "reject_unauth_destination",
        "check_policy_service",
        "{ a:b, { x = 1 2 } }",
    ]
    names, checks = doctor_wiring.policy_checks(text)
    assert names == ["permit_mynetworks", "reject_unauth_destination", "check_policy_service"]
    assert checks == [doctor_wiring.PolicyCheck(2, "a:b", {"x": "1 2"})]


@pytest.mark.parametrize(
    ("listen", "server", "matches"),
    [
        ("tcp:10040:interface=127.0.0.1", "inet:127.0.0.1:10040", True),
        ("tcp:10040:interface=127.0.0.1", "inet:localhost:10040", True),
        ("tcp:10040:interface=127.0.0.1", "inet:127.0.0.1:10041", False),
        ("tcp:port=10040", "inet:192.0.2.1:10040", True),
        ("tcp6:10040:interface=\\:\\:1", "inet:[::1]:10040", True),
        ("tcp6:10040:interface=\\:\\:1", "inet:127.0.0.1:10040", False),
        ("unix:/q/private/p:mode=660", "unix:private/p", True),
        ("unix:/q/private/p:mode=660", "unix:/q/private/other", False),
        ("systemd:domain=INET:index=0", "inet:127.0.0.1:9999", True),
    ],
)
def test_endpoint_matching(listen: str, server: str, matches: bool) -> None:
    """A check_policy_service server names our listener exactly when address and port agree."""
    ours = doctor_wiring.listen_endpoints([listen])
    theirs = doctor_wiring.postfix_endpoint(server, "/q")
    assert any(doctor_wiring._same_endpoint(o, theirs, os.path.normpath) for o in ours) is matches


def test_tls_policy_keys() -> None:
    """The policy-map keys are each destination as written; only a plain host name (no
    brackets, no port) goes on to its parent domains (smtp_tls_policy.c; checked against
    Postfix in tests/e2e/test_routing_agreement.py)."""
    assert postfix_source.tls_policy_keys(RELAYHOST) == [RELAYHOST]
    assert postfix_source.tls_policy_keys("relay.example.net:25") == ["relay.example.net:25"]
    assert postfix_source.tls_policy_keys("relay.example.net, [b.example]") == [
        "relay.example.net",
        ".example.net",
        ".net",
        "[b.example]",
    ]


# --- the command line: exit codes, --json, --key -------------------------------------------------


def run_cli(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(["doctor", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.postfix
def test_cli_exit_0_for_a_healthy_chain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No errors: exit 0, a checklist with [ ok ] markers grouped by area, and the table."""
    _require_postconf()
    world = build(tmp_path, HEALTHY)
    directory = postfix_dir(world, {})
    code, out, _ = run_cli("-c", str(world.config), "--postfix-dir", str(directory), capsys=capsys)
    assert code == 0, out
    for title in ("\nCertificate\n", "\nTenant\n", "\nPostfix\n", "\nSummary\n"):
        assert title in out
    assert "  [ ok ] certificate-chain:" in out
    assert "[FAIL]" not in out
    assert "null-sender bounces    yes  [certificate-connector]" in out
    assert out.rstrip().endswith("0 errors, 0 warnings")


@pytest.mark.postfix
def test_cli_exit_1_with_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An expired certificate and opportunistic TLS: exit 1, [FAIL] lines with their fixes."""
    _require_postconf()
    world = build(tmp_path, Setup(cert="expired"))
    directory = postfix_dir(world, {"smtp_tls_security_level": "may"})
    code, out, _ = run_cli("-c", str(world.config), "--postfix-dir", str(directory), capsys=capsys)
    assert code == 1
    assert "[FAIL] certificate-validity:" in out
    assert "[FAIL] postfix-tls-mandatory:" in out
    assert "         fix: Set smtp_tls_security_level = encrypt" in out


def test_cli_exit_78_on_configuration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A configuration error is one line naming file and key, exit 78, nothing on stdout."""
    config = tmp_path / "bad.toml"
    config.write_text('[onprem]\negress_addresses = ["not-an-ip"]\n')
    code, out, err = run_cli("-c", str(config), capsys=capsys)
    assert code == 78
    assert out == ""
    assert err.count("\n") == 1
    assert f"{config}: onprem.egress_addresses:" in err


def test_cli_json_shape(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--json prints one object: counts, checks with id/area/status/finding/fix, and classes."""
    monkeypatch.setattr(
        postfix_source, "find_tool", lambda name: None
    )  # Postfix unreadable: a warning
    world = build(tmp_path, IP_ONLY)
    code, out, _ = run_cli("-c", str(world.config), "--json", capsys=capsys)
    document = json.loads(out)
    assert set(document) == {"errors", "warnings", "checks", "classes"}
    checks = document["checks"]
    assert all(set(c) == {"id", "area", "status", "finding", "fix"} for c in checks)
    assert all(c["status"] in doctor.STATUSES and c["area"] in doctor.AREAS for c in checks)
    assert document["errors"] == sum(c["status"] == "error" for c in checks) == 0
    assert document["warnings"] == sum(c["status"] == "warning" for c in checks) > 0
    assert code == 0
    assert [c["class"] for c in document["classes"]] == [
        "own-domain",
        "foreign-sender",
        "forwarded",
        "null-sender-bounce",
        "out-of-office",
        "into-tenant",
    ]
    bounce = document["classes"][3]
    assert (bounce["sender"], bounce["relayed"], bounce["reason"], bounce["code"]) == (
        "",
        False,
        "null-sender",
        "5.7.64",
    )
    assert bounce["reply"] == "550 5.7.64 Relay Access Denied ATTR36"
    assert bounce["fix"]


def _key_status(out: str) -> dict[str, str]:
    return next(c for c in json.loads(out)["checks"] if c["id"] == "certificate-key")


def test_cli_key_matches(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--key with the certificate's own key is ok."""
    monkeypatch.setattr(postfix_source, "find_tool", lambda name: None)
    world = build(tmp_path, HEALTHY)
    assert world.key is not None
    code, out, _ = run_cli(
        "-c", str(world.config), "--key", str(world.key), "--json", capsys=capsys
    )
    assert _key_status(out)["status"] == "ok"
    assert code == 0


def test_cli_key_mismatch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--key with another certificate's key is an error and exit 1."""
    monkeypatch.setattr(postfix_source, "find_tool", lambda name: None)
    world = build(tmp_path, HEALTHY)
    other = world.pki.leaf("mail.contoso.com", ["mail.contoso.com"])
    _, other_key = world.pki.write(tmp_path / "other", other)
    code, out, _ = run_cli(
        "-c", str(world.config), "--key", str(other_key), "--json", capsys=capsys
    )
    check = _key_status(out)
    assert check["status"] == "error"
    assert "does not belong" in check["finding"]
    assert code == 1


def test_cli_key_unreadable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--key naming a missing file is an error that says why."""
    monkeypatch.setattr(postfix_source, "find_tool", lambda name: None)
    world = build(tmp_path, HEALTHY)
    code, out, _ = run_cli(
        "-c", str(world.config), "--key", str(tmp_path / "missing.key"), "--json", capsys=capsys
    )
    check = _key_status(out)
    assert check["status"] == "error"
    assert "no such file" in check["finding"]
    assert code == 1


def test_text_output_markers() -> None:
    """Each status has its marker and a fix line follows every non-ok check."""
    report = doctor.Report(
        (
            doctor.Check("a-ok", "tenant", "ok", "fine."),
            doctor.Check("b-warn", "tenant", "warning", "hmm.", "do x."),
            doctor.Check("c-fail", "postfix", "error", "bad.", "do y."),
            doctor.Check("d-note", "certificate", "note", "fyi.", "maybe z."),
        ),
        (
            doctor.MailClass(
                "own-domain",
                "own-domain senders",
                "a@b.c",
                "d@e.f",
                ("d@e.f",),
                True,
                "sender-accepted-domain",
                None,
                None,
                "why",
                "",
            ),
        ),
    )
    buffer = io.StringIO()
    doctor.write_text(report, buffer)
    text = buffer.getvalue()
    assert "  [ ok ] a-ok: fine.\n" in text
    assert "  [warn] b-warn: hmm.\n         fix: do x.\n" in text
    assert "  [FAIL] c-fail: bad.\n         fix: do y.\n" in text
    assert "  [note] d-note: fyi.\n         fix: maybe z.\n" in text
    assert text.index("Certificate") < text.index("Tenant") < text.index("Postfix")
    assert text.rstrip().endswith("1 errors, 1 warnings")
    assert report.exit_code == 1


@pytest.mark.postfix
def test_shipped_snippet_passes_the_policy_checks(tmp_path: Path) -> None:
    """contrib/postfix/main.cf.snippet, appended to main.cf, passes every policy-wiring check."""
    _require_postconf()
    snippet = Path(__file__).resolve().parent.parent / "contrib" / "postfix" / "main.cf.snippet"
    world = build(tmp_path, HEALTHY)
    removed: dict[str, str | None] = {
        name: None
        for name in (
            "m365_policyd_service",
            "smtpd_relay_restrictions",
            "smtpd_recipient_restrictions",
            "smtpd_data_restrictions",
        )
    }
    directory = postfix_dir(world, removed)
    main = directory / "main.cf"
    main.write_text(main.read_text() + snippet.read_text())
    os.utime(main, (0, NOW.timestamp() - 60))  # see postfix_dir
    facts = postfix_source.read_postfix(str(directory))
    report = doctor.audit(load_config(str(world.config)), now=NOW, postfix=facts)
    for check_id in (
        "postfix-policy-recipient",
        "postfix-policy-data",
        "postfix-policy-default-action",
    ):
        assert report.status_of(check_id) == "ok", finding(report, check_id)
