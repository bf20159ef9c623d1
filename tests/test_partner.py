"""Partner connectors (SPEC §5 step 2) from the configuration and the exports, through ``check``.

The inputs of issue 12 that gave wrong answers, each with the answer Microsoft 365 gives: a
restricting Partner connector after a renewed certificate stopped matching the OnPremises
connector (550 5.7.51), and RejectDirectSend with a Partner connector that authenticates the
scanner (accepted, MC1093237); plus the connector fields read from exports and inline tables.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from policyd.errors import ConfigError
from policyd.rules.model import PARTNER, InboundConnector
from policyd.sources import exports
from policyd.sources.config import load_config
from policyd.tools import cli
from tests.pki import TestPKI

REPLY_5751 = (
    "550 5.7.51 TenantInboundAttribution; There is a partner connector configured that matched "
    "the message's recipient domain. The connector had either the RestrictDomainsToIPAddresses "
    "or RestrictDomainsToCertificate set"
)
REPLY_5768 = (
    "550 5.7.68 TenantInboundAttribution; Direct Send not allowed for this organization from "
    "unauthorized sources"
)

#: The export of issue 12: a filtering service locking the tenant down, and the OnPremises
#: connector for the on-premises certificate.
FILTERING_EXPORT: list[dict[str, object]] = [
    {
        "Name": "Mail from the filtering service",
        "ConnectorType": "Partner",
        "Enabled": True,
        "SenderIPAddresses": ["192.0.2.128/25"],
        "SenderDomains": ["smtp:*;1"],
        "RestrictDomainsToIPAddresses": True,
    },
    {
        "Name": "From on-premises",
        "ConnectorType": "OnPremises",
        "Enabled": True,
        "TlsSenderCertificateName": "*.contoso.com",
        "RestrictDomainsToIPAddresses": False,
        "RestrictDomainsToCertificate": False,
    },
]


def check(
    config: Path, sender: str, recipient: str, capsys: pytest.CaptureFixture[str]
) -> dict[str, Any]:
    """``check --json`` for one envelope: the recipient's object."""
    cli.main(["check", "-c", str(config), "--sender", sender, "--recipient", recipient, "--json"])
    (result,) = json.loads(capsys.readouterr().out)["recipients"]
    return result


def filtering_setup(
    directory: Path, certificate_name: str, export: list[dict[str, object]]
) -> Path:
    """The issue's tenant with Postfix presenting a certificate for ``certificate_name``."""
    pki = TestPKI()
    bundle = pki.write_ca_bundle(directory)
    cert, _ = pki.write(directory, pki.leaf(certificate_name, [certificate_name]))
    (directory / "inbound-connectors.json").write_text(json.dumps(export))
    config = directory / "m365-policyd.toml"
    config.write_text(
        "[tenant]\n"
        'accepted_domains = ["contoso.com"]\n'
        'inbound_connectors_file = "inbound-connectors.json"\n'
        "[onprem]\n"
        'egress_addresses = ["203.0.113.71"]\n'
        f'certificate = "{cert.name}"\n'
        f'ca_bundle = "{bundle.name}"\n'
    )
    return config


def test_renewed_certificate_behind_a_restricting_partner_connector_gets_5751(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 12, input 1: the renewed certificate relay.contoso.net no longer matches
    *.contoso.com, so no OnPremises connector attributes the mail, and the Partner connector
    restricting every sender to 192.0.2.128/25 refuses it with 5.7.51 (was recipient-in-tenant)."""
    config = filtering_setup(tmp_path, "relay.contoso.net", FILTERING_EXPORT)
    result = check(config, "alerts@contoso.com", "kate@contoso.com", capsys)
    assert (result["verdict"], result["reason"], result["code"]) == (
        "reject",
        "partner-restricted",
        "5.7.51",
    )
    assert result["reply"] == REPLY_5751
    assert "Mail from the filtering service" in result["explanation"]
    assert "192.0.2.128/25" in result["explanation"]


def test_the_certificate_that_still_matches_keeps_mail_into_the_tenant_flowing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The other side: with a certificate *.contoso.com matches, the OnPremises connector
    attributes the mail and the Partner restriction does not apply."""
    config = filtering_setup(tmp_path, "relay.contoso.com", FILTERING_EXPORT)
    result = check(config, "alerts@contoso.com", "kate@contoso.com", capsys)
    assert (result["verdict"], result["reason"]) == ("accept", "recipient-in-tenant")


def test_without_restrict_domains_the_partner_connector_refuses_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same export with RestrictDomainsToIPAddresses false: delivered into the tenant."""
    export = [dict(FILTERING_EXPORT[0], RestrictDomainsToIPAddresses=False), FILTERING_EXPORT[1]]
    config = filtering_setup(tmp_path, "relay.contoso.net", export)
    result = check(config, "alerts@contoso.com", "kate@contoso.com", capsys)
    assert (result["verdict"], result["reason"]) == ("accept", "recipient-in-tenant")


def scanner_setup(directory: Path, egress: str, connector_type: str = "Partner") -> Path:
    config = directory / "m365-policyd.toml"
    config.write_text(
        "[tenant]\n"
        'accepted_domains = ["contoso.com"]\n'
        "reject_direct_send = true\n"
        "[[tenant.inbound_connector]]\n"
        'name = "Scanners"\n'
        f'connector_type = "{connector_type}"\n'
        'sender_ip_addresses = ["203.0.113.71/32"]\n'
        "[onprem]\n"
        f'egress_addresses = ["{egress}"]\n'
    )
    return config


def test_partner_connector_authenticates_direct_send(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 12, input 2: RejectDirectSend on, the only connector a Partner connector for the
    scanner's address 203.0.113.71: MC1093237's remedy, so accepted (was 5.7.68)."""
    config = scanner_setup(tmp_path, "203.0.113.71")
    result = check(config, "scanner@contoso.com", "kate@contoso.com", capsys)
    assert (result["verdict"], result["reason"], result["code"]) == (
        "accept",
        "recipient-in-tenant",
        None,
    )
    assert (
        "Partner connector 'Scanners' matches the egress address 203.0.113.71"
        in (result["explanation"])
    )


def test_direct_send_from_an_unmatched_address_gets_the_whole_5768_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 12, input 3: from an address no connector matches, 5.7.68 with Microsoft's whole
    text ("... from unauthorized sources"), in --json and in the text output."""
    config = scanner_setup(tmp_path, "203.0.113.72")
    result = check(config, "scanner@contoso.com", "kate@contoso.com", capsys)
    assert (result["reason"], result["reply"]) == ("direct-send-rejected", REPLY_5768)
    code = cli.main(["check", "-c", str(config), "--sender", "scanner@contoso.com",
                     "--recipient", "kate@contoso.com"])  # fmt: skip
    assert code == 1
    assert REPLY_5768 in capsys.readouterr().out


def test_a_partner_connector_never_grants_relay_to_outside_recipients(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The scanner's Partner connector matches, yet mail to the internet is no-connector; the
    explanation says why the connector does not count."""
    config = scanner_setup(tmp_path, "203.0.113.71")
    result = check(config, "scanner@contoso.com", "kate@tailspintoys.com", capsys)
    assert (result["verdict"], result["reason"]) == ("reject", "no-connector")
    assert "is a Partner connector, which never grants relay" in result["explanation"]


def test_check_text_shows_the_partner_connectors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The text output's connector block names the Partner connector this server matches and
    the restricting one it does not satisfy."""
    config = filtering_setup(tmp_path, "relay.contoso.net", FILTERING_EXPORT)
    cli.main(
        ["check", "-c", str(config), "--sender", "a@contoso.com", "--recipient", "b@contoso.com"]
    )
    out = capsys.readouterr().out
    assert (
        "partner      restricting Partner connector 'Mail from the filtering service' is not "
        in out
    )
    config = scanner_setup(tmp_path, "203.0.113.71")
    cli.main(
        ["check", "-c", str(config), "--sender", "a@contoso.com", "--recipient", "b@contoso.com"]
    )
    assert "matches Partner connector 'Scanners' by the egress address 203.0.113.71" in (
        capsys.readouterr().out
    )


# --- reading the fields -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), ("True", True), ("$false", False), (1, True), (None, False)],
)
def test_restrict_domains_fields_are_read_from_exports(value: object, expected: bool) -> None:
    """RestrictDomainsToIPAddresses / ToCertificate are read as booleans in every shape
    PowerShell writes them (the parser used to drop them); missing means false."""
    entry = {
        "Name": "Filter",
        "ConnectorType": 2,
        "RestrictDomainsToIPAddresses": value,
        "RestrictDomainsToCertificate": value,
        "SenderDomains": "smtp:*;1",
    }
    (connector,) = exports.parse_inbound_connectors([entry], "export.json")
    assert connector.connector_type == PARTNER
    assert connector.restrict_domains_to_ip_addresses is expected
    assert connector.restrict_domains_to_certificate is expected
    assert connector.sender_domains == ("*",)
    assert connector.restricts is expected


def test_a_bad_restrict_value_names_the_field_and_entry() -> None:
    """A value that is no boolean is a configuration error naming the field and entry."""
    entry = {"Name": "Filter", "ConnectorType": "Partner", "RestrictDomainsToCertificate": "maybe"}
    with pytest.raises(ConfigError) as caught:
        exports.parse_inbound_connectors([entry], "export.json")
    assert caught.value.key == "RestrictDomainsToCertificate of entry 1"


def test_inline_partner_connector_with_restrictions(tmp_path: Path) -> None:
    """The inline keys restrict_domains_to_ip_addresses / _certificate and sender_domains give
    the same connector as the export."""
    config = tmp_path / "m365-policyd.toml"
    config.write_text(
        "[[tenant.inbound_connector]]\n"
        'name = "Mail from the filtering service"\n'
        'connector_type = "Partner"\n'
        'sender_ip_addresses = ["192.0.2.128/25"]\n'
        'sender_domains = ["smtp:*;1", "*.Contoso.com"]\n'
        "restrict_domains_to_ip_addresses = true\n"
        "restrict_domains_to_certificate = false\n"
    )
    (connector,) = load_config(str(config)).tenant.connectors
    assert connector == InboundConnector(
        "Mail from the filtering service",
        connector_type=PARTNER,
        sender_ip_addresses=(ipaddress.IPv4Network("192.0.2.128/25"),),
        sender_domains=("*", "*.contoso.com"),
        restrict_domains_to_ip_addresses=True,
    )


def test_a_cached_5751_explanation_names_no_other_senders_address(tmp_path: Path) -> None:
    """Without [postfix] predictions are cached by sender domain: the 5.7.51 explanation of
    alice@contoso.com must not be served to bob@contoso.com with alice's address in it."""
    from policyd.engine.policy import PolicyEngine
    from policyd.engine.stats import Stats
    from policyd.sources.state import build_state

    config = filtering_setup(tmp_path, "relay.contoso.net", FILTERING_EXPORT)
    engine = PolicyEngine(build_state(load_config(config), 1), Stats(), lambda: 0.0, lambda r: None)
    first = engine.predict("alice@contoso.com", "kate@contoso.com")
    second = engine.predict("bob@contoso.com", "kate@contoso.com")
    assert (first.reason, second.reason) == ("partner-restricted", "partner-restricted")
    for prediction in (first, second):
        assert "alice" not in prediction.explanation
        assert "senders in contoso.com" in prediction.explanation
