"""Several tenants behind one Postfix: ``[tenants.NAME]`` tables, ``include`` files, their
validation (policyd.sources.config) and how a tenant is chosen for each message."""

from __future__ import annotations

from pathlib import Path

import pytest

from policyd.errors import ConfigError
from policyd.sources.state import load_config
from policyd.tools import cli

CONTOSO = """
[tenants.contoso]
endpoints = ["contoso-com.mail.protection.outlook.com"]
sender_domains = ["contoso.com"]
accepted_domains = ["contoso.com"]
[[tenants.contoso.inbound_connector]]
name = "From on-premises"
sender_ip_addresses = ["203.0.113.10/32"]
"""

FABRIKAM = """
[tenants.fabrikam]
endpoints = ["fabrikam-example.mail.protection.outlook.com"]
sender_domains = ["fabrikam.example"]
accepted_domains = ["fabrikam.example"]
"""


def write(tmp_path: Path, text: str, name: str = "m365-policyd.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def error_of(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    return caught.value


def test_tenants_are_read_with_their_own_keys(tmp_path: Path) -> None:
    """Each [tenants.NAME] table gives a named tenant with its domains, connectors and claims."""
    config = load_config(str(write(tmp_path, CONTOSO + FABRIKAM)))
    names = [t.name for t in config.tenants]
    assert names == ["contoso", "fabrikam"]
    contoso, fabrikam = config.tenants
    assert contoso.endpoints == ("contoso-com.mail.protection.outlook.com",)
    assert contoso.sender_domains == frozenset({"contoso.com"})
    assert [c.name for c in contoso.tenant.connectors] == ["From on-premises"]
    assert fabrikam.tenant.accepted_domain_for("fabrikam.example") == "fabrikam.example"
    assert fabrikam.tenant.connectors == ()


def test_a_single_tenant_is_named_default(tmp_path: Path) -> None:
    """A [tenant] table is the tenant named "default", which takes all mail."""
    config = load_config(str(write(tmp_path, '[tenant]\naccepted_domains = ["contoso.com"]\n')))
    (only,) = config.tenants
    assert (only.name, only.default) == ("default", True)
    assert config.tenant is only.tenant


def test_include_reads_one_file_per_tenant(tmp_path: Path) -> None:
    """include globs (relative to the file) add the tenants of each file, in name order; the
    files and their directory are watched for reloads."""
    write(tmp_path, CONTOSO, "tenants.d/10-contoso.toml")
    write(tmp_path, FABRIKAM, "tenants.d/20-fabrikam.toml")
    config = load_config(str(write(tmp_path, 'include = ["tenants.d/*.toml"]\n')))
    assert [t.name for t in config.tenants] == ["contoso", "fabrikam"]
    assert str(tmp_path / "tenants.d" / "10-contoso.toml") in config.input_files
    assert str(tmp_path / "tenants.d") in config.input_files


def test_exports_of_an_included_tenant_are_relative_to_its_file(tmp_path: Path) -> None:
    """Relative paths in an included file are relative to that file's directory."""
    write(tmp_path, '[{"DomainName": "fabrikam.example"}]', "tenants.d/fabrikam-domains.json")
    write(
        tmp_path,
        '[tenants.fabrikam]\ndefault = true\naccepted_domains_file = "fabrikam-domains.json"\n',
        "tenants.d/fabrikam.toml",
    )
    config = load_config(str(write(tmp_path, 'include = ["tenants.d/*.toml"]\n')))
    assert config.tenants[0].tenant.accepted_domain_for("fabrikam.example")


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        (
            '[tenant]\naccepted_domains = ["contoso.com"]\n' + CONTOSO,
            "tenants",
            "[tenant] and [tenants.NAME] tables in one configuration; describe one tenant with "
            "[tenant], or every tenant with its own [tenants.NAME] table",
        ),
        (
            CONTOSO + '[tenants.orphan]\naccepted_domains = ["orphan.example"]\n',
            "tenants.orphan",
            "one of several tenants needs endpoints (with [postfix]), sender_domains or "
            "default = true, so that mail can reach it",
        ),
        (
            CONTOSO + '[tenants.copy]\nsender_domains = ["contoso.com"]\n',
            "tenants.copy",
            "tenants contoso and copy both claim the sender domain contoso.com; mail for it can "
            "reach one tenant only",
        ),
        (
            CONTOSO + '[tenants.copy]\nendpoints = ["contoso-com.mail.protection.outlook.com"]\n',
            "tenants.copy",
            "tenants contoso and copy both claim the endpoint "
            "contoso-com.mail.protection.outlook.com; mail for it can reach one tenant only",
        ),
        (
            "[tenants.a]\ndefault = true\n[tenants.b]\ndefault = true\n",
            "tenants.b.default",
            "tenants a and b are both the default; keep default = true on one",
        ),
        (
            '[tenants."bad name"]\ndefault = true\n',
            "tenants.bad name",
            "a tenant name is a metric label: letters, digits, _ and - (e.g. [tenants.contoso])",
        ),
        (
            "[tenants.a]\nno_such_key = 1\n",
            "tenants.a.no_such_key",
            None,
        ),
        (
            'include = ["missing.toml"]\n',
            "include",
            None,
        ),
    ],
    ids=[
        "tenant-and-tenants",
        "unreachable",
        "same-sender-domain",
        "same-endpoint",
        "two-defaults",
        "bad-name",
        "unknown-key",
        "missing-include",
    ],
)
def test_tenant_configuration_errors(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    text: str,
    key: str,
    problem: str | None,
) -> None:
    """Every tenant rule is a configuration error naming the file, the key and the problem;
    check exits 78 with that one line."""
    path = write(tmp_path, text)
    error = error_of(path)
    assert (error.file, error.key) == (str(path), key)
    if problem is not None:
        assert error.problem == problem
    argv = ["check", "-c", str(path), "--sender", "a@contoso.com", "--recipient", "b@example.net"]
    assert cli.main(argv) == 78
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and key in err


def test_duplicate_name_across_included_files(tmp_path: Path) -> None:
    """The same tenant name in two included files is an error naming both files."""
    write(tmp_path, CONTOSO, "tenants.d/a.toml")
    write(tmp_path, CONTOSO, "tenants.d/b.toml")
    error = error_of(write(tmp_path, 'include = ["tenants.d/*.toml"]\n'))
    assert error.file == str(tmp_path / "tenants.d" / "b.toml")
    assert error.key == "tenants.contoso"
    assert str(tmp_path / "tenants.d" / "a.toml") in error.problem


def test_included_file_holds_only_tenants(tmp_path: Path) -> None:
    """An included file with another section is refused, naming that file and section."""
    write(tmp_path, CONTOSO + '[policy]\naction = "defer"\n', "tenants.d/a.toml")
    error = error_of(write(tmp_path, 'include = ["tenants.d/*.toml"]\n'))
    assert (error.file, error.key) == (str(tmp_path / "tenants.d" / "a.toml"), "policy")


# --- which tenant predicts a message -----------------------------------------------------------

SAAS_MAIN_CF = {
    "compatibility_level": "3.6",
    "myhostname": "mta.saas.example",
    "mydestination": "$myhostname, localhost",
    "relayhost": "",
    "smtp_bind_address": "203.0.113.10",
    "sender_dependent_relayhost_maps": "texthash:@DIR@/sender_relay",
}
SAAS_RELAYS = (
    "@contoso.com [contoso-com.mail.protection.outlook.com]:25\n"
    "@fabrikam.example [fabrikam-example.mail.protection.outlook.com]:25\n"
    "@adatum.example [adatum-example.mail.protection.outlook.com]:25\n"
)
MASTER_CF = "smtp unix - - n - - smtp\nlocal unix - n n - - local\n"
SAAS_TENANTS = """
[postfix]
config_directory = "@DIR@"

[tenants.contoso]
endpoints = ["contoso-com.mail.protection.outlook.com"]
accepted_domains = ["contoso.com"]
[[tenants.contoso.inbound_connector]]
name = "SaaS relay"
sender_ip_addresses = ["203.0.113.10/32"]

[tenants.fabrikam]
endpoints = ["fabrikam-example.mail.protection.outlook.com"]
accepted_domains = ["fabrikam.example"]
[[tenants.fabrikam.inbound_connector]]
name = "SaaS relay"
sender_ip_addresses = ["203.0.113.10/32"]
"""


def saas(tmp_path: Path) -> Path:
    """A SaaS relay: relayhost empty, sender_dependent_relayhost_maps per customer domain, the
    same sending address in an IP connector of each customer's tenant."""
    import os
    import time

    etc = tmp_path / "postfix"
    etc.mkdir()
    (etc / "sender_relay").write_text(SAAS_RELAYS)
    (etc / "main.cf").write_text(
        "".join(f"{k} = {v.replace('@DIR@', str(etc))}\n" for k, v in SAAS_MAIN_CF.items())
    )
    (etc / "master.cf").write_text(MASTER_CF)
    past = time.time() - 10
    for path in etc.iterdir():
        os.utime(path, (past, past))
    return write(tmp_path, SAAS_TENANTS.replace("@DIR@", str(etc)))


def predicted(config: Path, sender: str, recipient: str) -> tuple[str, str | None, str]:
    from datetime import UTC, datetime

    from policyd.sources.state import load_state

    state = load_state(str(config), 0)
    prediction, _ = state.predictor.predict(sender, recipient, (recipient,), datetime.now(UTC))
    address = prediction.addresses[0]
    return address.reason, address.tenant, address.explanation


@pytest.mark.postfix
def test_saas_relay_predicts_in_the_senders_own_tenant(tmp_path: Path) -> None:
    """The issue's SaaS relay: helpdesk@fabrikam.example is routed to fabrikam's endpoint and
    relays there as an accepted domain; contoso's mail is judged in contoso's tenant."""
    config = saas(tmp_path)
    assert predicted(config, "helpdesk@fabrikam.example", "user@example.net")[:2] == (
        "sender-accepted-domain",
        "fabrikam",
    )
    assert predicted(config, "alerts@contoso.com", "user@example.net")[:2] == (
        "sender-accepted-domain",
        "contoso",
    )
    # the route follows the sender: mail to contoso.com from fabrikam leaves through
    # fabrikam's tenant, where contoso.com is an outside domain relayed for fabrikam.example
    assert predicted(config, "helpdesk@fabrikam.example", "kate@contoso.com")[:2] == (
        "sender-accepted-domain",
        "fabrikam",
    )


@pytest.mark.postfix
def test_endpoint_of_no_tenant_is_no_connector_naming_it(tmp_path: Path) -> None:
    """A Microsoft 365 endpoint no tenant lists is refused no-connector, naming the endpoint."""
    config = saas(tmp_path)
    reason, tenant, explanation = predicted(config, "it@adatum.example", "user@example.net")
    assert (reason, tenant) == ("no-connector", None)
    assert "[adatum-example.mail.protection.outlook.com]:25" in explanation


def test_without_postfix_the_sender_domain_chooses(tmp_path: Path) -> None:
    """Without [postfix], sender_domains choose the tenant (subdomains too), the default takes
    the rest, and a tenant's own certificate is what it is shown."""
    config = write(
        tmp_path,
        """
[onprem]
egress_addresses = ["203.0.113.10"]

[tenants.contoso]
sender_domains = ["contoso.com"]
accepted_domains = ["contoso.com"]
[[tenants.contoso.inbound_connector]]
name = "IP"
sender_ip_addresses = ["203.0.113.10/32"]

[tenants.fabrikam]
default = true
accepted_domains = ["fabrikam.example"]
""",
    )
    assert predicted(config, "a@contoso.com", "u@example.net")[:2] == (
        "sender-accepted-domain",
        "contoso",
    )
    assert predicted(config, "a@eu.contoso.com", "u@example.net")[:2] == (
        "sender-not-accepted",
        "contoso",
    )
    assert predicted(config, "a@fabrikam.example", "u@example.net")[:2] == (
        "no-connector",
        "fabrikam",
    )


@pytest.mark.postfix
def test_doctor_has_a_section_per_tenant_and_warns_of_a_shared_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """doctor audits each tenant in its own section with its own table, and warns that one
    egress address sits in both tenants' connectors (SPEC §5.2)."""
    import json

    from policyd.tools import doctor

    config = saas(tmp_path)
    assert doctor.main(str(config), as_json=True) in (0, 1)
    report = json.loads(capsys.readouterr().out)
    tenants = {c.get("tenant") for c in report["checks"]}
    assert {"contoso", "fabrikam"} <= tenants
    shared = [c for c in report["checks"] if c["id"] == "tenants-shared-egress"]
    assert shared[0]["status"] == "warning"
    assert "203.0.113.10 (contoso, fabrikam)" in shared[0]["finding"]
    rows = {(row["tenant"], row["class"]): row for row in report["classes"]}
    assert rows[("fabrikam", "own-domain")]["relayed"] is True
    doctor.main(str(config))
    text = capsys.readouterr().out
    assert "== Tenant contoso ==" in text and "== Tenant fabrikam ==" in text
    assert "Will Microsoft 365 relay it? (tenant fabrikam)" in text
