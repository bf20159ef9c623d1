"""TLS for the resolved next hop, and doctor's TLS and next-hop checks over every route to
Microsoft 365 (SPEC §5.1 "TLS for the resolved next hop"), read from private Postfix
configuration directories with the real ``postconf`` and ``postmap``.

Which ``smtp_tls_policy_maps`` key smtp(8) really uses is checked against Postfix's own
deliveries in tests/e2e/test_routing_agreement.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from policyd.sources.config import load_config
from policyd.sources.postfix import read_postfix
from policyd.sources.state import build_state
from policyd.tools import doctor
from policyd.tools.doctor.tenant import route_samples
from tests.pki import TestPKI
from tests.test_postfix_source import (
    CERT_TENANT,
    IP_TENANT,
    M365,
    check_json,
    first_address,
    settle,
    site,
)

pytestmark = pytest.mark.postfix

POSTMAP = "/usr/sbin/postmap"


def doctor_report(config: Path) -> doctor.Report:
    """doctor's report for ``config`` as ``m365-policyd doctor`` builds it (state, router)."""
    state = build_state(load_config(str(config)), 0)
    facts = read_postfix(
        state.config.postfix.config_directory,
        route_samples(state.config),
        state.postfix.view if state.postfix is not None else None,
        state.postfix.detours if state.postfix is not None else (),
    )
    assert facts.error == "" and facts.route_error == ""
    return doctor.audit(
        state.config,
        now=TestPKI().now,
        postfix=facts,
        router=state.router,
        srs=state.srs,
        predictor=state.predictor,
    )


def finding(report: doctor.Report, check_id: str) -> doctor.Check:
    found = [c for c in report.checks if c.id == check_id]
    assert len(found) == 1, [c.id for c in report.checks]
    return found[0]


def certificate_tenant(tmp_path: Path) -> tuple[str, str]:
    """(the [tenant]/[onprem] TOML of a certificate connector for *.contoso.com, the client
    certificate file): the certificate is CA-signed and named under an accepted domain."""
    pki = TestPKI()
    cert, _ = pki.write(tmp_path, pki.leaf("mail.contoso.com", ["mail.contoso.com"]))
    bundle = pki.write_ca_bundle(tmp_path)
    return CERT_TENANT + f'[onprem]\nca_bundle = "{bundle}"\n', str(cert)


# --- the input: no relayhost, transport_maps *, TLS per next hop ----------------------


@pytest.mark.parametrize("global_level", ["may", ""])
def test_transport_maps_wildcard_and_per_next_hop_tls(tmp_path: Path, global_level: str) -> None:
    """Three of five real configurations: no relayhost, ``* smtp:[M365]:25`` in
    transport_maps, ``[M365]:25 encrypt`` in smtp_tls_policy_maps, smtp_tls_security_level
    may or empty. doctor says neither "relayhost is empty" nor "TLS ... not mandatory", the
    certificate is presented (the next hop's level is encrypt), and the null sender relays
    through the certificate connector."""
    toml, cert = certificate_tenant(tmp_path)
    config = site(
        tmp_path,
        {
            "relayhost": "",
            "transport_maps": "hash:@DIR@/transport",
            "smtp_tls_policy_maps": "hash:@DIR@/tls_policy",
            "smtp_tls_security_level": global_level,
            "smtp_tls_cert_file": cert,
        },
        toml,
        {"transport": f"*  smtp:{M365}\n", "tls_policy": f"{M365} encrypt\n"},
    )
    etc = config.parent / "postfix"
    for table in ("transport", "tls_policy"):
        subprocess.run([POSTMAP, f"hash:{etc}/{table}"], check=True, timeout=30)
    report = doctor_report(config)
    everything = " ".join(c.finding for c in report.checks)
    assert "relayhost is empty" not in everything
    assert "not mandatory" not in everything
    relayhost = finding(report, "postfix-relayhost")
    assert relayhost.status == "ok", relayhost
    assert "transport_maps: *" in relayhost.finding
    tls = finding(report, "postfix-tls-mandatory")
    assert tls.status == "ok", tls
    assert f"smtp_tls_policy_maps entry {M365}" in tls.finding
    assert finding(report, "postfix-cert-file").status != "error"
    status, result = check_json(config, "", "kate@tailspintoys.example")
    address = first_address(result)
    assert address["reason"] == "certificate-connector", address
    assert status == 0


def test_next_hop_policy_none_presents_no_certificate(tmp_path: Path) -> None:
    """smtp_tls_security_level = encrypt, but smtp_tls_policy_maps says none for the next hop:
    smtp(8) does not use TLS there, so no certificate reaches Microsoft 365 (no-connector),
    and doctor FAILs both the level and the certificate."""
    toml, cert = certificate_tenant(tmp_path)
    config = site(
        tmp_path,
        {
            "smtp_tls_policy_maps": "texthash:@DIR@/tls_policy",
            "smtp_tls_security_level": "encrypt",
            "smtp_tls_cert_file": cert,
        },
        toml + f'certificate = "{cert}"\n',
        {"tls_policy": f"{M365.upper()} none\n"},
    )
    status, result = check_json(config, "", "kate@tailspintoys.example")
    address = first_address(result)
    assert address["reason"] == "no-connector", address
    assert "smtp_tls_policy_maps entry" in str(address["explanation"])
    assert status == 1
    report = doctor_report(config)
    tls = finding(report, "postfix-tls-mandatory")
    assert (tls.status, "= none" in tls.finding) == ("error", True), tls
    presented = finding(report, "postfix-cert-file")
    assert presented.status == "error", presented
    assert "presents no certificate" in presented.finding


@pytest.mark.parametrize("parameter", ["smtp_tls_eccert_file", "smtp_tls_dcert_file"])
def test_legacy_ecdsa_and_dsa_certificate_files_are_presented(
    tmp_path: Path, parameter: str
) -> None:
    """A client certificate named only in smtp_tls_eccert_file or smtp_tls_dcert_file is
    presented (postconf(5)), so the null sender relays through the certificate connector."""
    toml, cert = certificate_tenant(tmp_path)
    config = site(
        tmp_path,
        {"smtp_tls_security_level": "encrypt", "smtp_tls_cert_file": "", parameter: cert},
        toml,
    )
    status, result = check_json(config, "", "kate@tailspintoys.example")
    address = first_address(result)
    assert address["reason"] == "certificate-connector", address
    route = address["route"]
    assert isinstance(route, dict)
    assert route["certificate_from"] == f"main.cf: {parameter}"
    assert status == 0


def test_chain_files_make_the_legacy_certificate_files_ignored(tmp_path: Path) -> None:
    """With smtp_tls_chain_files set, smtp_tls_eccert_file is ignored (postconf(5)): a chain
    without a usable certificate presents none that attributes."""
    toml, cert = certificate_tenant(tmp_path)
    other = tmp_path / "other.pem"
    other.write_text("not a certificate\n")
    config = site(
        tmp_path,
        {
            "smtp_tls_security_level": "encrypt",
            "smtp_tls_chain_files": str(other),
            "smtp_tls_eccert_file": cert,
        },
        toml,
    )
    _, result = check_json(config, "", "kate@tailspintoys.example")
    route = first_address(result)["route"]
    assert isinstance(route, dict)
    assert route["certificate_from"] == "main.cf: smtp_tls_chain_files"


# --- wrappermode, fallback relay, egress -------------------------------------------------------


def test_wrappermode_towards_microsoft_365_fails(tmp_path: Path) -> None:
    """smtp_tls_wrappermode = yes on the service that sends to Microsoft 365 is a FAIL: its
    endpoints speak STARTTLS on port 25; a service that does not reach it is not named."""
    toml, cert = certificate_tenant(tmp_path)
    config = site(
        tmp_path,
        {"smtp_tls_security_level": "encrypt", "smtp_tls_cert_file": cert},
        toml,
        master_extra="smtps unix - - n - - smtp\n  -o smtp_tls_wrappermode=yes\n",
    )
    assert [c for c in doctor_report(config).checks if c.id == "postfix-tls-wrappermode"] == []
    (config.parent / "postfix" / "main.cf").write_text(
        (config.parent / "postfix" / "main.cf").read_text() + "default_transport = smtps\n"
    )
    settle(config.parent / "postfix")
    wrapped = finding(doctor_report(config), "postfix-tls-wrappermode")
    assert wrapped.status == "error"
    assert "master.cf: smtps/unix -o smtp_tls_wrappermode = yes" in wrapped.finding
    assert "STARTTLS" in wrapped.finding


@pytest.mark.parametrize(
    ("fallback", "status"),
    [("[mx.fabrikam.example]", "warning"), ("[contoso-com.a-v1.mx.microsoft]:25", "note")],
)
def test_fallback_relay_is_reported(tmp_path: Path, fallback: str, status: str) -> None:
    """smtp_fallback_relay on the route to Microsoft 365 is reported: a warning when it is not
    a Microsoft 365 endpoint, a note when it is; its TLS level is judged like the relay's."""
    toml, cert = certificate_tenant(tmp_path)
    config = site(
        tmp_path,
        {
            "smtp_tls_security_level": "encrypt",
            "smtp_tls_cert_file": cert,
            "smtp_fallback_relay": fallback,
            "smtp_tls_policy_maps": "texthash:@DIR@/tls_policy",
        },
        toml,
        {"tls_policy": f"{fallback} may\n"},
    )
    report = doctor_report(config)
    reported = finding(report, "postfix-fallback-relay")
    assert reported.status == status, reported
    assert f"main.cf: smtp_fallback_relay = {fallback}" in reported.finding
    tls = finding(report, "postfix-tls-mandatory")
    if status == "note":  # a Microsoft 365 fallback must have mandatory TLS too
        assert tls.status == "error" and f"to {fallback}" in tls.finding, tls
    else:
        assert tls.status == "ok", tls


def test_no_fallback_relay_no_report(tmp_path: Path) -> None:
    """Without smtp_fallback_relay, doctor has nothing to say about it."""
    toml, _ = certificate_tenant(tmp_path)
    config = site(tmp_path, {"smtp_tls_security_level": "encrypt"}, toml)
    assert [c for c in doctor_report(config).checks if c.id == "postfix-fallback-relay"] == []


@pytest.mark.parametrize(
    ("main", "status", "text"),
    [
        ({"inet_protocols": "ipv4"}, "ok", "only IPv4"),
        ({"inet_protocols": "all"}, "warning", "never matches an IP connector"),
        (
            {"inet_protocols": "all", "smtp_bind_address6": "2001:db8::25"},
            "warning",
            "smtp_bind_address6 = 2001:db8::25",
        ),
        (
            {"inet_protocols": "ipv4, ipv6", "smtp_address_preference": "ipv4"},
            "note",
            "IPv4 is preferred",
        ),
    ],
)
def test_ipv6_egress_with_an_ip_connector(
    tmp_path: Path, main: dict[str, str], status: str, text: str
) -> None:
    """inet_protocols and smtp_address_preference decide whether Microsoft 365 may see an IPv6
    source address, which no IP connector holds."""
    config = site(tmp_path, {"smtp_bind_address": "203.0.113.10", **main}, IP_TENANT)
    check = finding(doctor_report(config), "postfix-egress-ipv6")
    assert check.status == status, check
    assert text in check.finding


@pytest.mark.parametrize(
    ("enforce", "status"), [("", "warning"), ("smtp_bind_address_enforce = yes", "ok")]
)
def test_bind_address_enforce(tmp_path: Path, enforce: str, status: str) -> None:
    """A source address without smtp_bind_address_enforce = yes only logs a warning when it
    cannot be bound (postconf(5), Postfix 3.7): doctor says so; enforced, it is ok."""
    main = {"smtp_bind_address": "203.0.113.10", "inet_protocols": "ipv4"}
    if enforce:
        main["smtp_bind_address_enforce"] = "yes"
    config = site(tmp_path, main, IP_TENANT)
    check = finding(doctor_report(config), "postfix-bind-enforce")
    assert check.status == status, check
    assert "main.cf: smtp_bind_address = 203.0.113.10" in check.finding


# --- content-filter detours and Postfix instances ---------------------------------------------


def check_text(config: Path, sender: str, recipient: str) -> str:
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "m365-policyd"),
            "check",
            "-c",
            str(config),
            "--sender",
            sender,
            "--recipient",
            recipient,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stderr == ""
    return done.stdout


def test_content_filters_are_reported_not_followed(tmp_path: Path) -> None:
    """content_filter in main.cf and on a master.cf listener, and a FILTER action in
    header_checks, are reported by check and doctor; the route is the one after the filter.
    A pipe filter that re-injects with sendmail is a warning (never policy-checked)."""
    toml, cert = certificate_tenant(tmp_path)
    config = site(
        tmp_path,
        {
            "smtp_tls_security_level": "encrypt",
            "smtp_tls_cert_file": cert,
            "content_filter": "scan:[127.0.0.1]:10024",
            "header_checks": "regexp:@DIR@/header_checks",
        },
        toml,
        {"header_checks": "# quarantine\n/^Subject: invoice/ FILTER dfilt:dummy\n"},
        master_extra=(
            "scan unix - - n - 2 smtp\n"
            "dfilt unix - n n - - pipe\n"
            "  flags=Rq user=nobody argv=/usr/local/bin/filter -f ${sender} -- ${recipient}"
            " /usr/sbin/sendmail\n"
            "127.0.0.1:10026 inet n - n - - smtpd\n  -o content_filter=scan:[127.0.0.1]:10025\n"
        ),
    )
    status, result = check_json(config, "", "kate@tailspintoys.example")
    assert first_address(result)["route"]["nexthop"] == M365  # type: ignore[index]
    postfix = result["postfix"]
    assert isinstance(postfix, dict)
    detours = " | ".join(postfix["detours"])
    assert "main.cf: content_filter = scan:[127.0.0.1]:10024" in detours
    assert "master.cf: 127.0.0.1:10026/inet -o content_filter = scan:[127.0.0.1]:10025" in detours
    assert "header_checks line 2): FILTER = dfilt:dummy" in detours
    assert "re-injects with sendmail" in detours
    assert status == 0
    assert "Filter    main.cf: content_filter = scan:[127.0.0.1]:10024" in check_text(
        config, "", "kate@tailspintoys.example"
    )
    reported = finding(doctor_report(config), "postfix-content-filter")
    assert reported.status == "warning"
    assert "dfilt:dummy" in reported.finding


def test_no_content_filter_no_report(tmp_path: Path) -> None:
    """Without content_filter or FILTER actions doctor says nothing about filters."""
    toml, _ = certificate_tenant(tmp_path)
    config = site(tmp_path, {"smtp_tls_security_level": "encrypt"}, toml)
    assert [c for c in doctor_report(config).checks if c.id == "postfix-content-filter"] == []


def secondary(tmp_path: Path, name: str, relayhost: str) -> Path:
    """A secondary instance's configuration directory (MULTI_INSTANCE_README)."""
    etc = tmp_path / name
    etc.mkdir()
    (etc / "main.cf").write_text(
        "compatibility_level = 3.6\nmyhostname = mta.contoso.com\n"
        f"multi_instance_name = {name}\nmulti_instance_enable = yes\nrelayhost = {relayhost}\n"
    )
    (etc / "master.cf").write_text(
        "smtp unix - - n - - smtp\nrelay unix - - n - - smtp\nlocal unix - n n - - local\n"
    )
    settle(etc)
    return etc


@pytest.mark.parametrize(
    ("relayhost", "status"), [(M365, "warning"), ("[smarthost.fabrikam.example]", "ok")]
)
def test_primary_instance_with_a_secondary_that_reaches_microsoft_365(
    tmp_path: Path, relayhost: str, status: str
) -> None:
    """[postfix] names the primary instance while multi_instance_directories lists a
    secondary: doctor warns when that secondary routes mail to Microsoft 365, and check says
    which instance it predicts for."""
    other = secondary(tmp_path, "postfix-out", relayhost)
    toml, _ = certificate_tenant(tmp_path)
    config = site(
        tmp_path,
        {
            "relayhost": "[smarthost.fabrikam.example]",
            "multi_instance_directories": str(other),
            "multi_instance_enable": "yes",
        },
        toml,
    )
    report = doctor_report(config)
    check = finding(report, "postfix-instance")
    assert check.status == status, check
    assert f"instance postfix-out ({other}; Debian unit postfix@postfix-out)" in check.finding
    text = check_text(config, "", "kate@tailspintoys.example")
    assert "Postfix   instance primary (" in text and "Debian unit postfix@-)" in text


def test_a_secondary_instance_is_named(tmp_path: Path) -> None:
    """[postfix] naming a secondary instance: check and doctor say which one."""
    toml, _ = certificate_tenant(tmp_path)
    config = site(tmp_path, {"multi_instance_name": "postfix-m365"}, toml)
    text = check_text(config, "", "kate@tailspintoys.example")
    assert "Postfix   instance postfix-m365 (" in text
    check = finding(doctor_report(config), "postfix-instance")
    assert (check.status, "instance postfix-m365" in check.finding) == ("ok", True)
