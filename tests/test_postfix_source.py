"""``[postfix] config_directory``: check, doctor and the engine predict from what Postfix really
does (private configuration directories read with the real postconf and postmap)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from policyd.engine.policy import PolicyEngine, Session
from policyd.engine.stats import Stats
from policyd.sources.config import load_config
from policyd.sources.state import build_state
from policyd.tools import cli, doctor
from tests.pki import TestPKI

pytestmark = pytest.mark.postfix

POSTMAP = "/usr/sbin/postmap"
M365 = "[contoso-com.mail.protection.outlook.com]:25"
MASTER_CF = """\
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
error     unix  -       -       n       -       -       error
"""


def settle(directory: Path) -> None:
    """Date files back: Postfix programs wait a second for files younger than a second."""
    past = time.time() - 10
    for path in directory.iterdir():
        os.utime(path, (past, past))


def site(
    tmp_path: Path,
    main: Mapping[str, str],
    toml: str,
    tables: Mapping[str, str] | None = None,
    master_extra: str = "",
) -> Path:
    """A Postfix configuration directory and an m365-policyd.toml naming it; the toml's path."""
    etc = tmp_path / "postfix"
    etc.mkdir()
    settings = {
        "compatibility_level": "3.6",
        "myhostname": "mta.contoso.com",
        "mydomain": "contoso.com",
        "mydestination": "$myhostname, localhost",
        "relayhost": M365,
        **main,
    }
    for name, text in (tables or {}).items():
        (etc / name).write_text(text)
    (etc / "main.cf").write_text(
        "".join(f"{k} = {v.replace('@DIR@', str(etc))}\n" for k, v in settings.items())
    )
    (etc / "master.cf").write_text(MASTER_CF + master_extra)
    settle(etc)
    config = tmp_path / "m365-policyd.toml"
    config.write_text(f'[postfix]\nconfig_directory = "{etc}"\n' + toml)
    return config


CERT_TENANT = """
[tenant]
accepted_domains = ["contoso.com"]
[[tenant.inbound_connector]]
name = "From on-premises"
tls_sender_certificate_name = "*.contoso.com"
"""
#: The same tenant with an IP connector for 203.0.113.10 instead of the certificate connector.
IP_TENANT = CERT_TENANT.replace(
    'tls_sender_certificate_name = "*.contoso.com"', 'sender_ip_addresses = ["203.0.113.10/32"]'
)


def check_json(config: Path, sender: str, *recipients: str) -> tuple[int, dict[str, object]]:
    done = run_check(config, sender, recipients, "--json")
    return done.returncode, json.loads(done.stdout)


def run_check(
    config: Path, sender: str, recipients: tuple[str, ...], *options: str
) -> subprocess.CompletedProcess[str]:
    """``m365-policyd check`` as a user runs it; asserts it wrote nothing to stderr."""
    done = subprocess.run(
        [
            os.path.join(os.path.dirname(sys.executable), "m365-policyd"),
            "check",
            "-c",
            str(config),
            *options,
            "--sender",
            sender,
            "--recipient",
            *recipients,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stderr == ""
    return done


def rcpt(sender: str, recipient: str) -> dict[str, str]:
    """A policy request at RCPT, as smtpd sends it."""
    return {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "sender": sender,
        "recipient": recipient,
        "instance": "a.1",
    }


def first_address(result: dict[str, object]) -> dict[str, object]:
    recipients = result["recipients"]
    assert isinstance(recipients, list)
    addresses = recipients[0]["addresses"]
    return dict(addresses[0])


# --- the five field reports of the issue ------------------------------------------------------


def test_certificate_configured_here_but_not_presented_by_postfix(tmp_path: Path) -> None:
    """A firewall appliance's Postfix with smtp_tls_security_level = may and no client
    certificate: the null sender is refused no-connector, 'not presented by Postfix', although
    onprem.certificate names a good certificate; doctor's table agrees with its Postfix FAIL."""
    pki = TestPKI()
    cert, _ = pki.write(tmp_path, pki.leaf("mail.contoso.com", ["mail.contoso.com"]))
    bundle = pki.write_ca_bundle(tmp_path)
    config = site(
        tmp_path,
        {"smtp_tls_security_level": "may"},
        CERT_TENANT + f'[onprem]\ncertificate = "{cert}"\nca_bundle = "{bundle}"\n',
    )
    status, result = check_json(config, "", "kate@tailspintoys.example")
    address = first_address(result)
    assert status == 1
    assert address["reason"] == "no-connector"
    assert "not presented by Postfix" in str(address["explanation"])
    route = address["route"]
    assert isinstance(route, dict)
    assert (route["service"], route["nexthop"]) == ("smtp", M365)
    report = doctor.audit(
        load_config(str(config)),
        now=pki.now,
        router=build_state(load_config(str(config)), 0).router,
    )
    assert report.status_of("summary-mail-classes") in ("error", "warning")


def test_transport_maps_route_around_microsoft_365_is_never_deferred(tmp_path: Path) -> None:
    """transport_maps sends partner.example around Microsoft 365: other-route, DUNNO under
    action = "defer", while a foreign sender's mail to the internet is still deferred."""
    config = site(
        tmp_path,
        {"transport_maps": "hash:@DIR@/transport", "smtp_bind_address": "198.51.100.7"},
        IP_TENANT + '[policy]\naction = "defer"\n',
        {"transport": "partner.example smtp:[mx.partner.example]\n"},
    )
    subprocess.run([POSTMAP, f"hash:{config.parent}/postfix/transport"], check=True, timeout=30)
    settle(config.parent / "postfix")
    state = build_state(load_config(str(config)), 1)
    stats = Stats()
    engine = PolicyEngine(state, stats, Clock().seconds, lambda record: None)

    def ask(recipient: str) -> object:
        return engine.handle(rcpt("john@fabrikam.example", recipient), Session())

    assert ask("kate@partner.example") == "DUNNO"
    assert stats.predictions[("", "accept", "other-route")] == 1
    assert str(ask("kate@tailspintoys.example")).startswith("450 4.7.64 ")


def test_unreadable_routing_table_answers_on_error_and_counts(tmp_path: Path) -> None:
    """A transport table that fails at lookup time answers on_error (DUNNO) and counts an
    internal error: the daemon's own failure never refuses mail."""
    config = site(
        tmp_path,
        {"transport_maps": "hash:@DIR@/transport", "smtp_bind_address": "203.0.113.10"},
        CERT_TENANT + '[policy]\naction = "defer"\n',
        {"transport": "partner.example smtp:[mx.partner.example]\n"},
    )
    etc = config.parent / "postfix"
    subprocess.run([POSTMAP, f"hash:{etc}/transport"], check=True, timeout=30)
    settle(etc)
    state = build_state(load_config(str(config)), 1)
    (etc / "transport.db").write_bytes(b"not a database")
    stats = Stats()
    engine = PolicyEngine(state, stats, Clock().seconds, lambda record: None)
    answer = engine.handle(rcpt("", "kate@tailspintoys.example"), Session())
    assert answer == "DUNNO"
    assert stats.internal_errors == 1


def test_egress_that_cannot_be_derived_is_a_configuration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An IP connector, no smtp_bind_address and no onprem.egress_addresses: exit 78 with the
    Postfix parameter and the [onprem] key that replaces it."""
    config = site(
        tmp_path,
        {},
        IP_TENANT,
    )
    assert (
        cli.main(["check", "-c", str(config), "--sender", "", "--recipient", "a@b.example"]) == 78
    )
    error = capsys.readouterr().err
    assert "smtp_bind_address" in error and "onprem.egress_addresses" in error
    assert error.count("\n") == 1


def test_egress_and_certificate_come_from_the_delivering_service(tmp_path: Path) -> None:
    """A master.cf service with its own -o smtp_bind_address and certificate attributes mail
    it carries; check names the service and where each value came from."""
    pki = TestPKI()
    cert, key = pki.write(tmp_path, pki.leaf("mail.contoso.com", ["mail.contoso.com"]))
    bundle = pki.write_ca_bundle(tmp_path)
    config = site(
        tmp_path,
        {
            "transport_maps": "texthash:@DIR@/transport",
            "smtp_bind_address": "198.51.100.7",
            "smtp_tls_security_level": "encrypt",
        },
        CERT_TENANT + f'[onprem]\nca_bundle = "{bundle}"\n',
        {"transport": f"fabrikam.example relay-m365:{M365}\n"},
        master_extra=(
            "relay-m365 unix - - n - - smtp\n"
            f"  -o smtp_tls_cert_file={cert}\n  -o smtp_tls_key_file={key}\n"
            "  -o smtp_bind_address=203.0.113.10\n"
        ),
    )
    status, result = check_json(config, "", "kate@fabrikam.example", "kate@tailspintoys.example")
    relay_m365 = first_address(result)
    assert relay_m365["reason"] == "certificate-connector"
    route = relay_m365["route"]
    assert isinstance(route, dict)
    assert route["service"] == "relay-m365"
    assert route["certificate_from"] == "master.cf: relay-m365/unix -o smtp_tls_cert_file"
    assert route["egress_addresses"] == ["203.0.113.10"]
    assert route["egress_from"] == "master.cf: relay-m365/unix -o smtp_bind_address"
    recipients = result["recipients"]
    assert isinstance(recipients, list)
    plain = recipients[1]["addresses"][0]
    assert plain["reason"] == "no-connector"  # smtp presents nothing, egress in no connector
    assert status == 1


# --- derived values ------------------------------------------------------------------------------


def test_alias_maps_and_delimiter_come_from_main_cf(tmp_path: Path) -> None:
    """virtual_alias_maps and recipient_delimiter are read from Postfix: a forward through
    them is predicted as forwarded."""
    config = site(
        tmp_path,
        {
            "virtual_alias_maps": "texthash:@DIR@/virtual",
            "recipient_delimiter": "+",
            "smtp_bind_address": "203.0.113.10",
        },
        IP_TENANT,
        {"virtual": "kate@contoso.com kate@tailspintoys.example\n"},
    )
    status, result = check_json(config, "john@fabrikam.example", "kate+news@contoso.com")
    address = first_address(result)
    assert address["address"] == "kate+news@tailspintoys.example"
    assert address["reason"] == "forwarded"
    assert status == 1
