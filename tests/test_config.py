"""Loading and validating the TOML configuration (policyd.sources.config)."""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from policyd.errors import ConfigError
from policyd.rules import reasons
from policyd.rules.model import AcceptedDomain, InboundConnector
from policyd.rules.reasons import Reason
from policyd.sources import schema
from policyd.sources.config import (
    Config,
    LogSettings,
    OutcomeSettings,
    PolicySettings,
    ServerSettings,
    default_config_path,
    load_config,
)
from policyd.tools import cli

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "contrib" / "m365-policyd.example.toml"
EXPORTS = Path(__file__).parent / "data" / "exports"


def write(directory: Path, text: str, name: str = "m365-policyd.toml") -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, "utf-8")
    return path


def config_error(directory: Path, text: str) -> ConfigError:
    path = write(directory, text)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    return caught.value


# --- the example ---------------------------------------------------------------------------


def test_example_config_loads_as_documented() -> None:
    """The shipped example loads with the values its comments and the brief describe."""
    config = load_config(str(EXAMPLE))
    assert config.path == str(EXAMPLE.resolve())
    assert config.server == ServerSettings(
        listen=("tcp:10040:interface=127.0.0.1",),
        metrics="tcp:9464:interface=127.0.0.1",
        idle_timeout=3600.0,
        max_connections=4096,
        max_request_bytes=65536,
        reload_interval=30.0,
    )
    assert config.tenant.accepted_domains == (AcceptedDomain("contoso.com"),)
    assert config.tenant.connectors == (
        InboundConnector(
            "From on-premises Postfix",
            sender_ip_addresses=(ipaddress.IPv4Network("203.0.113.10/32"),),
        ),
    )
    assert config.onprem.egress_addresses == (ipaddress.IPv4Address("203.0.113.10"),)
    assert config.onprem.certificate is None
    assert config.onprem.local_domains == frozenset()
    assert config.alias_maps == ()
    assert config.policy == PolicySettings()
    assert config.policy.action == "dunno"
    assert config.log == LogSettings("text", "info")
    assert config.outcomes == OutcomeSettings("")
    assert (config.certificate_path, config.ca_bundle) == ("", "")
    assert config.input_files == (str(EXAMPLE.resolve()),)


@pytest.mark.parametrize(
    ("sender", "verdict", "reason", "code", "status"),
    [
        ("john@fabrikam.com", "reject", "sender-not-accepted", "5.7.64", 1),
        ("alerts@contoso.com", "accept", "sender-accepted-domain", None, 0),
    ],
)
def test_example_config_check_predictions(
    capsys: pytest.CaptureFixture[str],
    sender: str,
    verdict: str,
    reason: str,
    code: str | None,
    status: int,
) -> None:
    """With the example, check refuses fabrikam.com senders (ATTR36) and passes contoso.com."""
    argv = ["check", "-c", str(EXAMPLE), "--sender", sender]
    exit_status = cli.main([*argv, "--recipient", "kate@tailspintoys.com", "--json"])
    result = json.loads(capsys.readouterr().out)
    (recipient,) = result["recipients"]
    assert (result["verdict"], recipient["reason"], recipient["code"]) == (verdict, reason, code)
    if code:
        assert recipient["reply"] == "550 5.7.64 Relay Access Denied ATTR36"
    assert exit_status == status


def test_example_spells_the_defaults() -> None:
    """The example's [server], [policy], [log] and [outcomes] values are the schema's defaults."""
    config = load_config(str(EXAMPLE))
    assert config.server == ServerSettings()
    assert config.policy == PolicySettings()
    assert config.log == LogSettings()
    assert config.outcomes == OutcomeSettings()
    assert ServerSettings().listen == schema.LISTEN.default


def test_empty_config_takes_every_default(tmp_path: Path) -> None:
    """An empty file is valid and every value comes from the schema."""
    config = load_config(str(write(tmp_path, "")))
    assert config.server == ServerSettings(
        listen=schema.LISTEN.default,
        metrics=schema.METRICS.default,
        idle_timeout=schema.IDLE_TIMEOUT.default,
        max_connections=schema.MAX_CONNECTIONS.default,
        max_request_bytes=schema.MAX_REQUEST_BYTES.default,
        reload_interval=schema.RELOAD_INTERVAL.default,
    )
    assert config.policy == PolicySettings(
        action=schema.ACTION.default,
        reroute=schema.REROUTE.default,
        tag=schema.TAG.default,
        header=schema.HEADER.default,
        on_error=schema.ON_ERROR.default,
        by_reason=(),
    )
    assert config.log == LogSettings(schema.LOG_FORMAT.default, schema.LOG_LEVEL.default)
    assert config.outcomes == OutcomeSettings(schema.POSTFIX_LOG.default)
    assert config.tenant.accepted_domains == ()
    assert config.tenant.connectors == ()
    assert config.tenant.reject_direct_send is schema.REJECT_DIRECT_SEND.default
    assert config.onprem.egress_addresses == ()
    assert config.onprem.certificate is None


def test_full_config_values(tmp_path: Path) -> None:
    """Every key is read into its typed field, domains normalised, IPv6 egress kept."""
    path = write(
        tmp_path,
        """
        [server]
        listen = ["unix:/run/m365-policyd/policy.sock:mode=660", "tcp6:10040:interface=\\\\:\\\\:1"]
        metrics = ""
        idle_timeout = 1.5
        max_connections = 10
        max_request_bytes = 2048
        reload_interval = 0

        [tenant]
        accepted_domains = ["Contoso.COM.", { domain = "Fabrikam.com", match_subdomains = true }]
        reject_direct_send = true

        [[tenant.inbound_connector]]
        name = "  cert connector "
        connector_type = "onpremises"
        tls_sender_certificate_name = "*.Contoso.com"

        [[tenant.inbound_connector]]
        name = "partner"
        connector_type = "Partner"
        enabled = false
        sender_ip_addresses = ["198.51.100.0/24", "198.51.100.250-198.51.100.251"]
        sender_domains = ["smtp:Fabrikam.com;1"]

        [onprem]
        egress_addresses = ["203.0.113.10", "2001:db8::25"]
        srs_domain = "SRS.Contoso.com"
        local_domains = ["Lists.Contoso.com"]

        [policy]
        action = "defer"
        reroute = "smtp:[relay2.example.net]:587"
        tag = false
        header = "X-Relay-Prediction"
        on_error = "warn"

        [policy.by_reason]
        null-sender = "hold"
        forwarded = "reroute"

        [log]
        format = "json"
        level = "debug"
        """,
    )
    config = load_config(str(path))
    assert config.server == ServerSettings(
        listen=("unix:/run/m365-policyd/policy.sock:mode=660", "tcp6:10040:interface=\\:\\:1"),
        metrics="",
        idle_timeout=1.5,
        max_connections=10,
        max_request_bytes=2048,
        reload_interval=0.0,
    )
    assert config.tenant.accepted_domains == (
        AcceptedDomain("contoso.com"),
        AcceptedDomain("fabrikam.com", match_subdomains=True),
    )
    assert config.tenant.reject_direct_send is True
    assert config.tenant.connectors == (
        InboundConnector("cert connector", tls_sender_certificate_name="*.contoso.com"),
        InboundConnector(
            "partner",
            connector_type="Partner",
            enabled=False,
            sender_ip_addresses=(
                ipaddress.IPv4Network("198.51.100.0/24"),
                ipaddress.IPv4Network("198.51.100.250/31"),
            ),
            sender_domains=("fabrikam.com",),
        ),
    )
    assert config.onprem.egress_addresses == (
        ipaddress.IPv4Address("203.0.113.10"),
        ipaddress.IPv6Address("2001:db8::25"),
    )
    assert config.onprem.srs_domain == "srs.contoso.com"
    assert config.onprem.local_domains == frozenset({"lists.contoso.com"})
    assert config.policy == PolicySettings(
        action="defer",
        reroute="smtp:[relay2.example.net]:587",
        tag=False,
        header="X-Relay-Prediction",
        on_error="warn",
        by_reason=(("null-sender", "hold"), ("forwarded", "reroute")),
    )
    assert config.log == LogSettings("json", "debug")


def test_action_for_uses_by_reason_overrides() -> None:
    """action_for returns a reason's override and falls back to the general action."""
    policy = PolicySettings(action="defer", by_reason=(("null-sender", "dunno"),))
    assert policy.action_for("null-sender") == "dunno"
    assert policy.action_for("forwarded") == "defer"


@pytest.mark.parametrize("reason", reasons.TABLE, ids=lambda reason: reason.id)
def test_by_reason_takes_exactly_the_refusing_reasons(tmp_path: Path, reason: Reason) -> None:
    """policy.by_reason accepts each refusing reason of the reasons table and no accepting one."""
    path = write(tmp_path, f'[policy.by_reason]\n{reason.id} = "defer"\n')
    if reason.verdict == "reject":
        assert load_config(str(path)).policy.by_reason == ((reason.id, "defer"),)
    else:
        with pytest.raises(ConfigError, match="is not a refusing reason"):
            load_config(str(path))


def test_config_is_frozen(tmp_path: Path) -> None:
    """The loaded configuration cannot be changed in place (reload swaps a whole new object)."""
    config = load_config(str(write(tmp_path, "")))
    with pytest.raises(AttributeError):
        config.policy.action = "reject"  # type: ignore[misc]  # proving the dataclass is frozen
    assert isinstance(config, Config)


# --- paths ---------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exports, certificate, CA bundle, file maps and the log resolve from the config's dir."""
    etc = tmp_path / "etc" / "m365-policyd"
    (etc / "exchange").mkdir(parents=True)
    shutil.copy(EXPORTS / "accepted-domains-select.json", etc / "exchange" / "domains.json")
    shutil.copy(EXPORTS / "inbound-connectors-select.json", etc / "exchange" / "connectors.json")
    path = write(
        etc,
        """
        [tenant]
        accepted_domains_file = "exchange/domains.json"
        inbound_connectors_file = "./exchange/../exchange/connectors.json"
        [onprem]
        certificate = "certs/client.pem"
        ca_bundle = "certs/ca.pem"
        alias_maps = ["texthash:maps/virtual", "hash:/etc/postfix/virtual", "maps/aliases",
                      "ldap:ldap-aliases.cf", "pcre:maps/forward.pcre"]
        [outcomes]
        postfix_log = "../../var/log/mail.log"
        """,
    )
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    config = load_config(str(path.relative_to(tmp_path)))
    base = str(etc)
    assert config.path == str(path)
    assert config.certificate_path == f"{base}/certs/client.pem"
    assert config.ca_bundle == f"{base}/certs/ca.pem"
    assert config.alias_maps == (
        f"texthash:{base}/maps/virtual",
        "hash:/etc/postfix/virtual",
        f"{base}/maps/aliases",
        "ldap:ldap-aliases.cf",
        f"pcre:{base}/maps/forward.pcre",
    )
    assert config.outcomes.postfix_log == f"{tmp_path}/var/log/mail.log"
    assert config.input_files == (
        str(path),
        f"{base}/exchange/domains.json",
        f"{base}/exchange/connectors.json",
        f"{base}/certs/client.pem",
        f"{base}/certs/ca.pem",
    )
    assert config.tenant.accepted_domains[0].source == f"{base}/exchange/domains.json"


def test_journal_postfix_log_is_kept(tmp_path: Path) -> None:
    """postfix_log = "journal" is a mode, not a file, and is not turned into a path."""
    config = load_config(str(write(tmp_path, '[outcomes]\npostfix_log = "journal"\n')))
    assert config.outcomes.postfix_log == "journal"


def test_inline_and_exported_entries_combine(tmp_path: Path) -> None:
    """Inline accepted domains and connectors come first, then the exported ones, all kept."""
    shutil.copy(EXPORTS / "accepted-domains-single.json", tmp_path / "domains.json")
    shutil.copy(EXPORTS / "inbound-connectors-raw.json", tmp_path / "connectors.json")
    path = write(
        tmp_path,
        """
        [tenant]
        accepted_domains = ["tailspintoys.com", "contoso.com"]
        accepted_domains_file = "domains.json"
        inbound_connectors_file = "connectors.json"
        [[tenant.inbound_connector]]
        name = "inline"
        sender_ip_addresses = ["203.0.113.99"]
        """,
    )
    tenant = load_config(str(path)).tenant
    assert [(d.domain, d.source) for d in tenant.accepted_domains] == [
        ("tailspintoys.com", "inline"),
        ("contoso.com", "inline"),
        ("contoso.com", str(tmp_path / "domains.json")),
    ]
    assert [c.name for c in tenant.connectors] == [
        "inline",
        "From on-premises Postfix",
        "Scanner vendor",
        "Inbound from 4c9b2a1e-7d3f-4f0a-9e55-2b8c6d1f0a77",
    ]
    assert tenant.accepts("tailspintoys.com") and tenant.accepts("contoso.com")
    assert [c.name for c in tenant.relay_connectors] == [
        "inline",
        "From on-premises Postfix",
        "Inbound from 4c9b2a1e-7d3f-4f0a-9e55-2b8c6d1f0a77",
    ]


def test_export_errors_surface_with_the_export_file(tmp_path: Path) -> None:
    """A broken export named by the config raises the export's own ConfigError."""
    (tmp_path / "connectors.json").write_text('[{"Name": "x", "ConnectorType": 3}]')
    error = config_error(tmp_path, '[tenant]\ninbound_connectors_file = "connectors.json"\n')
    assert str(error) == (
        f"{tmp_path}/connectors.json: ConnectorType of entry 1: "
        "3 is not a known value; expected OnPremises or Partner (or 1, 2)"
    )


def test_certificate_is_read_with_the_ca_bundle(tmp_path: Path) -> None:
    """A configured certificate becomes CertificateFacts judged against the configured roots."""
    from tests.pki import TestPKI

    pki = TestPKI(now=datetime(2025, 6, 1, tzinfo=UTC))
    leaf = pki.leaf("mail.contoso.com", ["mail.contoso.com"])
    pki.write(tmp_path / "certs", leaf, "client")
    pki.write_ca_bundle(tmp_path / "certs")
    path = write(
        tmp_path, '[onprem]\ncertificate = "certs/client.pem"\nca_bundle = "certs/ca.pem"\n'
    )
    facts = load_config(str(path)).onprem.certificate
    assert facts is not None
    assert (facts.path, facts.error) == (str(tmp_path / "certs" / "client.pem"), "")
    assert facts.common_name == "mail.contoso.com"
    assert facts.chain_complete is True


def test_unreadable_certificate_is_facts_not_an_error(tmp_path: Path) -> None:
    """A missing certificate file loads (facts carry the error) so doctor and check can explain."""
    config = load_config(str(write(tmp_path, '[onprem]\ncertificate = "nope.pem"\n')))
    assert config.onprem.certificate is not None
    assert config.onprem.certificate.error


# --- default path --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, "/etc/m365-policyd/m365-policyd.toml"),
        ({"M365_POLICYD_CONFIG": ""}, "/etc/m365-policyd/m365-policyd.toml"),
        ({"M365_POLICYD_CONFIG": "/srv/policyd.toml"}, "/srv/policyd.toml"),
        ({"OTHER": "/srv/policyd.toml"}, "/etc/m365-policyd/m365-policyd.toml"),
    ],
)
def test_default_config_path(environ: dict[str, str], expected: str) -> None:
    """$M365_POLICYD_CONFIG wins when set and not empty; otherwise the /etc path."""
    assert default_config_path(environ) == expected


# --- file-level errors -----------------------------------------------------------------------


def test_missing_file_says_how_to_create_one(tmp_path: Path) -> None:
    """A missing configuration names the file and says to copy the example."""
    path = tmp_path / "m365-policyd.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert str(caught.value) == (
        f"{path}: no such file; create it from the example, e.g. "
        f"install -D -m 0644 contrib/m365-policyd.example.toml {path}, "
        "or name another file with -c or $M365_POLICYD_CONFIG"
    )


def test_directory_is_unreadable(tmp_path: Path) -> None:
    """A path that cannot be read as a file gives the operating system's reason."""
    with pytest.raises(ConfigError) as caught:
        load_config(str(tmp_path))
    assert str(caught.value) == (
        f"{tmp_path}: cannot read the configuration file (Is a directory); "
        "check path and permissions"
    )


@pytest.mark.parametrize(
    ("text", "key", "where"),
    [
        ("[server]\nlisten = []\n[policy\naction = 'defer'\n", "line 3", "column"),
        ('[server]\nmetrics = "tcp:9464\n', "line 2", "column"),
        ("[log]\nlevel = verbose\n", "line 2", "column"),
        ("[log]\nlevel =", "line 2", "end"),
    ],
)
def test_toml_syntax_error_names_the_line(tmp_path: Path, text: str, key: str, where: str) -> None:
    """A TOML syntax error names the file, the line, a column on it (or the end of the file),
    tomllib's reason and the fix; the reason's words are the interpreter's, not promised."""
    error = config_error(tmp_path, text)
    assert (error.file, error.key) == (str(tmp_path / "m365-policyd.toml"), key)
    found = re.fullmatch(
        r"not valid TOML \(.+, (?:column (\d+)|(at the end of the file))\); "
        r"compare with contrib/m365-policyd\.example\.toml",
        error.problem,
    )
    assert found is not None, error.problem
    if where == "end":
        assert found.group(2)
    else:
        line = text.split("\n")[int(key.split()[1]) - 1]
        assert found.group(1) and 1 <= int(found.group(1)) <= len(line) + 1


def test_non_utf8_config(tmp_path: Path) -> None:
    """A file that is not UTF-8 is refused with the offending byte."""
    path = tmp_path / "m365-policyd.toml"
    path.write_bytes(b'[tenant]\naccepted_domains = ["caf\xe9.com"]\n')
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert str(caught.value) == (
        f"{path}: encoding: not UTF-8 (byte 33); TOML files must be saved as UTF-8"
    )


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    """A UTF-8 byte-order mark (left by some Windows editors) does not break the file."""
    path = tmp_path / "m365-policyd.toml"
    path.write_bytes(b'\xef\xbb\xbf[tenant]\naccepted_domains = ["contoso.com"]\n')
    assert load_config(str(path)).tenant.accepts("contoso.com")


# --- validation, one row per rule ------------------------------------------------------------

ENDPOINT_FIX = (
    "is not a Twisted endpoint of a supported type; start it with tcp:, tcp6:, unix:, systemd: "
    'or ssl:, e.g. "tcp:10040:interface=127.0.0.1" or "unix:/run/m365-policyd/policy.sock"'
)
REASONS = (
    "no-connector, null-sender, forwarded, sender-not-accepted, direct-send-rejected, "
    "partner-restricted, submission-no-credentials, submission-sender-not-login"
)
REROUTE_REQUIRED = (
    'is required when policy.action or a policy.by_reason value is "reroute"; write '
    'transport:destination, e.g. reroute = "smtp:[relay2.example.net]:587"'
)
CONNECTOR_KEYS = (
    "connector_type, enabled, name, restrict_domains_to_certificate, "
    "restrict_domains_to_ip_addresses, sender_domains, sender_ip_addresses, "
    "tls_sender_certificate_name"
)

SEND_AS_FIX = 'write for example send_as = { "app@contoso.com" = ["*@contoso.com"] }'

VALIDATION = [
    # [submission] send_as
    ('[submission]\nsend_as = { "app" = ["*@contoso.com"] }\n', "submission.send_as.app",
     f"'app' is not a login mailbox (user@domain); {SEND_AS_FIX}"),
    ('[submission]\nsend_as = { "app@contoso.com" = "x@contoso.com" }\n',
     "submission.send_as.app@contoso.com",
     f'expected an array of strings, got a string ("x@contoso.com"); {SEND_AS_FIX}'),
    ('[submission]\nsend_as = { "app@contoso.com" = ["contoso.com"] }\n',
     "submission.send_as.app@contoso.com",
     f"'contoso.com' is neither an address nor a *@domain pattern; {SEND_AS_FIX}"),
    ("[submission]\nsend_as = []\n", "submission.send_as",
     f"expected a table, got an array; {SEND_AS_FIX}"),
    # structure
    ("[serverr]\n", "serverr",
     "unknown section (did you mean server?); "
     "allowed sections: assumptions, log, onprem, outcomes, policy, postfix, server, "
     "submission, tenant, tenants"),
    ("listen = []\n", "listen",
     "unknown section; allowed sections: assumptions, log, onprem, outcomes, policy, postfix, "
     "server, submission, tenant, tenants"),
    ("server = 1\n", "server",
     "expected a table ([server]), got an integer (1); put its keys under a [server] line"),
    ("[server]\nlisten_on = []\n", "server.listen_on",
     "unknown key (did you mean listen?); allowed keys in [server]: idle_timeout, listen, "
     "max_connections, max_request_bytes, metrics, metrics_max_connections, metrics_timeout, "
     "reload_interval"),
    ("[policy]\nactoin = 'defer'\n", "policy.actoin",
     "unknown key (did you mean action?); allowed keys in [policy]: action, by_reason, header, "
     "on_error, reroute, tag"),
    # [server]
    ('[server]\nlisten = "tcp:10040"\n', "server.listen",
     'expected an array of strings, got a string ("tcp:10040"); '
     'write for example listen = ["tcp:10040:interface=127.0.0.1"]'),
    ("[server]\nlisten = [10040]\n", "server.listen",
     "expected an array of strings, got an array; "
     'write for example listen = ["tcp:10040:interface=127.0.0.1"]'),
    ("[server]\nlisten = []\n", "server.listen",
     'is empty; list at least one endpoint, e.g. listen = ["tcp:10040:interface=127.0.0.1"]'),
    ('[server]\nlisten = ["10040"]\n', "server.listen", f"'10040' {ENDPOINT_FIX}"),
    ('[server]\nlisten = ["TCP:10040"]\n', "server.listen", f"'TCP:10040' {ENDPOINT_FIX}"),
    ('[server]\nlisten = ["tcp:10040", "inet:10041"]\n', "server.listen",
     f"'inet:10041' {ENDPOINT_FIX}"),
    ("[server]\nmetrics = 9464\n", "server.metrics",
     'expected a string, got an integer (9464); '
     'write for example metrics = "tcp:9464:interface=127.0.0.1"'),
    ('[server]\nmetrics = "http://127.0.0.1:9464/metrics"\n', "server.metrics",
     f"'http://127.0.0.1:9464/metrics' {ENDPOINT_FIX}"),
    ("[server]\nmetrics = 1979-05-27\n", "server.metrics",
     "expected a string, got a date/time (1979-05-27); "
     'write for example metrics = "tcp:9464:interface=127.0.0.1"'),
    ("[server]\nidle_timeout = 0\n", "server.idle_timeout", "must be > 0 seconds, got 0"),
    ("[server]\nidle_timeout = -2.5\n", "server.idle_timeout", "must be > 0 seconds, got -2.5"),
    ('[server]\nidle_timeout = "1h"\n', "server.idle_timeout",
     'expected a number of seconds, got a string ("1h"); write for example idle_timeout = 3600'),
    ("[server]\nidle_timeout = inf\n", "server.idle_timeout",
     "must be a finite number of seconds, got inf"),
    ("[server]\nmax_connections = 0\n", "server.max_connections",
     "must be a positive integer, got 0"),
    ("[server]\nmax_connections = 10.5\n", "server.max_connections",
     "expected an integer, got a float (10.5); write for example max_connections = 4096"),
    ("[server]\nmax_request_bytes = true\n", "server.max_request_bytes",
     "expected an integer, got a boolean (true); write for example max_request_bytes = 65536"),
    ("[server]\nmax_request_bytes = -1\n", "server.max_request_bytes",
     "must be between 1024 and 1048576 bytes, got -1"),
    ("[server]\nmax_request_bytes = 100\n", "server.max_request_bytes",
     "must be between 1024 and 1048576 bytes, got 100"),
    ("[server]\nmax_request_bytes = 2000000000\n", "server.max_request_bytes",
     "must be between 1024 and 1048576 bytes, got 2000000000"),
    ("[server]\nreload_interval = 0.1\n", "server.reload_interval",
     "must be 0 (only on SIGHUP) or at least 1 s, got 0.1"),
    ("[server]\nreload_interval = -1\n", "server.reload_interval",
     "must be >= 0 seconds, got -1"),
    ("[server]\nreload_interval = nan\n", "server.reload_interval",
     "must be a finite number of seconds, got nan"),
    # [tenant]
    ('[tenant]\naccepted_domains = "contoso.com"\n', "tenant.accepted_domains",
     'expected an array of strings, got a string ("contoso.com"); '
     'write for example accepted_domains = ["contoso.com"]'),
    ('[tenant]\naccepted_domains = ["contoso .com"]\n', "tenant.accepted_domains",
     "'contoso .com' is not a domain name; write it like contoso.com"),
    ('[tenant]\naccepted_domains = ["*.contoso.com"]\n', "tenant.accepted_domains",
     "'*.contoso.com' is not a domain name; write it like contoso.com"),
    ("[tenant]\naccepted_domains = [{ domain = 'x.com', subdomains = true }]\n",
     "tenant.accepted_domains.subdomains",
     "unknown key (did you mean match_subdomains?); allowed keys in an accepted domain table: "
     "domain, match_subdomains"),
    ("[tenant]\naccepted_domains = [{ match_subdomains = true }]\n",
     "tenant.accepted_domains.domain", 'is missing; write domain = "contoso.com"'),
    ("[tenant]\naccepted_domains = [{ domain = 'x.com', match_subdomains = 'yes' }]\n",
     "tenant.accepted_domains.match_subdomains",
     'expected a boolean (true or false), got a string ("yes"); '
     "write for example match_subdomains = true"),
    ('[tenant]\nreject_direct_send = "false"\n', "tenant.reject_direct_send",
     'expected a boolean (true or false), got a string ("false"); '
     "write for example reject_direct_send = false"),
    ("[tenant]\naccepted_domains_file = false\n", "tenant.accepted_domains_file",
     "expected a string, got a boolean (false); "
     'write for example accepted_domains_file = "accepted-domains.json"'),
    ('[tenant]\ninbound_connector = "x"\n', "tenant.inbound_connector",
     'expected an array of tables, got a string ("x"); '
     'write for example [[tenant.inbound_connector]] with name = "From on-premises"'),
    # [[tenant.inbound_connector]]
    ('[[tenant.inbound_connector]]\nconnector_type = "OnPremises"\n',
     "tenant.inbound_connector[1].name",
     'is missing or empty; write name = "From on-premises"'),
    ('[[tenant.inbound_connector]]\nname = "a"\n[[tenant.inbound_connector]]\nname = "b"\n'
     'sender_ips = ["203.0.113.10"]\n',
     "tenant.inbound_connector[2].sender_ips",
     "unknown key (did you mean sender_domains?); "
     f"allowed keys in [[tenant.inbound_connector]]: {CONNECTOR_KEYS}"),
    ('[[tenant.inbound_connector]]\nname = "a"\nconnector_type = "Hybrid"\n',
     "tenant.inbound_connector[1].connector_type",
     "'Hybrid' is not a connector type; write \"OnPremises\" (the only type that grants relay) "
     'or "Partner"'),
    ('[[tenant.inbound_connector]]\nname = "a"\nenabled = "true"\n',
     "tenant.inbound_connector[1].enabled",
     'expected a boolean (true or false), got a string ("true"); write for example enabled = true'),
    ('[[tenant.inbound_connector]]\nname = "a"\nsender_ip_addresses = "203.0.113.10"\n',
     "tenant.inbound_connector[1].sender_ip_addresses",
     'expected an array of strings, got a string ("203.0.113.10"); '
     'write for example sender_ip_addresses = ["203.0.113.10/32"]'),
    ('[[tenant.inbound_connector]]\nname = "a"\nsender_ip_addresses = ["2001:db8::1"]\n',
     "tenant.inbound_connector[1].sender_ip_addresses",
     "'2001:db8::1' is IPv6; Exchange Online accepts only IPv4 in SenderIPAddresses, "
     "so no connector can match it; remove it"),
    ('[[tenant.inbound_connector]]\nname = "a"\nsender_ip_addresses = ["203.0.113"]\n',
     "tenant.inbound_connector[1].sender_ip_addresses",
     "'203.0.113' is not an IPv4 address, CIDR range (203.0.113.0/24) "
     "or range (203.0.113.4-203.0.113.9)"),
    ('[[tenant.inbound_connector]]\nname = "a"\ntls_sender_certificate_name = "*.*.contoso.com"\n',
     "tenant.inbound_connector[1].tls_sender_certificate_name",
     "'*.*.contoso.com' is not a domain name; write it like contoso.com"),
    ('[[tenant.inbound_connector]]\nname = "a"\nsender_domains = ["smtp:;1"]\n',
     "tenant.inbound_connector[1].sender_domains",
     "'' is not a domain name; write it like contoso.com"),
    # [onprem]
    ('[onprem]\negress_addresses = ["mail.contoso.com"]\n', "onprem.egress_addresses",
     "'mail.contoso.com' is not an IP address; write the public address Microsoft 365 sees, "
     'e.g. egress_addresses = ["203.0.113.10"]'),
    ('[onprem]\negress_addresses = "203.0.113.10"\n', "onprem.egress_addresses",
     'expected an array of strings, got a string ("203.0.113.10"); '
     'write for example egress_addresses = ["203.0.113.10"]'),
    ("[onprem]\ncertificate = 1\n", "onprem.certificate",
     "expected a string, got an integer (1); "
     'write for example certificate = "/etc/postfix/certs/mail.contoso.com.pem"'),
    ('[onprem]\nlocal_domains = ["@contoso.com"]\n', "onprem.local_domains",
     "'@contoso.com' is not a domain name; write it like contoso.com"),
    ('[onprem]\nsrs_domain = "srs contoso.com"\n', "onprem.srs_domain",
     "'srs contoso.com' is not a domain name; write it like contoso.com"),
    ('[onprem]\nalias_maps = ["hash:"]\n', "onprem.alias_maps",
     "'hash:' names no file; write hash:/path/to/table, "
     'e.g. alias_maps = ["texthash:/etc/postfix/virtual"]'),
    ('[onprem]\nalias_maps = [" "]\n', "onprem.alias_maps",
     'contains an empty entry; write alias_maps = ["texthash:/etc/postfix/virtual"]'),
    # [policy]
    ('[policy]\naction = "drop"\n', "policy.action",
     "'drop' is not allowed; write \"dunno\", \"defer\", \"reject\", \"hold\" or \"reroute\""),
    ('[policy]\naction = "reroute"\n', "policy.reroute", REROUTE_REQUIRED),
    ('[policy]\n[policy.by_reason]\nforwarded = "reroute"\n', "policy.reroute",
     REROUTE_REQUIRED),
    ('[policy]\nreroute = "relay2.example.net"\n', "policy.reroute",
     "'relay2.example.net' is not a Postfix FILTER target; write transport:destination, "
     'e.g. "smtp:[relay2.example.net]:587"'),
    ('[policy]\naction = "reroute"\nreroute = "smtp: [relay2.example.net]"\n', "policy.reroute",
     "'smtp: [relay2.example.net]' is not a Postfix FILTER target; write transport:destination, "
     'e.g. "smtp:[relay2.example.net]:587"'),
    ('[policy]\non_error = "defer"\n', "policy.on_error",
     "'defer' is not allowed; write \"dunno\" or \"warn\": the daemon fails open, so a bug of "
     "its own must never refuse mail (policy.action decides what happens to recipients "
     "predicted to be refused)"),
    ('[policy.by_reason]\nnull_sender = "defer"\n', "policy.by_reason.null_sender",
     f"'null_sender' (did you mean null-sender?) is not a refusing reason; allowed: {REASONS}"),
    ('[policy.by_reason]\nlocal = "defer"\n', "policy.by_reason.local",
     f"'local' is not a refusing reason; allowed: {REASONS}"),
    ('[policy.by_reason]\nnull-sender = "bounce"\n', "policy.by_reason.null-sender",
     "'bounce' is not an action; write \"dunno\", \"defer\", \"reject\", \"hold\" or \"reroute\""),
    ("[policy.by_reason]\nnull-sender = 1\n", "policy.by_reason.null-sender",
     'expected a string, got an integer (1); write for example null-sender = "defer"'),
    ('[policy]\nby_reason = "defer"\n', "policy.by_reason",
     'expected a table, got a string ("defer"); '
     'write for example [policy.by_reason] with null-sender = "defer"'),
    ('[policy]\nheader = "X M365"\n', "policy.header",
     "'X M365' is not a header field name (RFC 5322: printable ASCII, no space or colon); "
     'write for example header = "X-M365-Relay"'),
    ('[policy]\nheader = "X-M365-Relay:"\n', "policy.header",
     "'X-M365-Relay:' is not a header field name (RFC 5322: printable ASCII, no space or "
     'colon); write for example header = "X-M365-Relay"'),
    ('[policy]\nheader = ""\n', "policy.header",
     "'' is not a header field name (RFC 5322: printable ASCII, no space or colon); "
     'write for example header = "X-M365-Relay"'),
    ('[policy]\ntag = "yes"\n', "policy.tag",
     'expected a boolean (true or false), got a string ("yes"); write for example tag = true'),
    # [log] and [outcomes]
    ('[log]\nformat = "xml"\n', "log.format", "'xml' is not allowed; write \"text\" or \"json\""),
    ('[log]\nlevel = "warning"\n', "log.level",
     "'warning' is not allowed; write \"debug\", \"info\", \"warn\" or \"error\""),
    ("[outcomes]\npostfix_log = false\n", "outcomes.postfix_log",
     "expected a string, got a boolean (false); "
     'write for example postfix_log = "/var/log/mail.log"'),
    ("[outcomes]\nfollow = true\n", "outcomes.follow",
     "unknown key; allowed keys in [outcomes]: postfix_log, relay_hosts"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "key", "problem"), VALIDATION)
def test_validation_errors_name_file_key_and_fix(
    tmp_path: Path, text: str, key: str, problem: str
) -> None:
    """Each invalid value raises ConfigError naming the file, the section.key and the fix."""
    error = config_error(tmp_path, text)
    path = tmp_path / "m365-policyd.toml"
    assert (error.file, error.key, error.problem) == (str(path), key, problem)
    assert str(error) == f"{path}: {key}: {problem}"


@pytest.mark.parametrize(
    "endpoint",
    [
        "tcp:10040",
        "tcp6:10040:interface=\\:\\:1",
        "unix:/var/spool/postfix/private/m365-policyd",
        "systemd:domain=INET:index=0",
        "ssl:10041:privateKey=key.pem",
    ],
)
def test_every_supported_endpoint_type_is_accepted(tmp_path: Path, endpoint: str) -> None:
    """listen takes tcp, tcp6, unix, systemd and ssl endpoint strings."""
    text = f"[server]\nlisten = [{json.dumps(endpoint)}]\n"
    assert load_config(str(write(tmp_path, text))).server.listen == (endpoint,)


def test_recipient_delimiter(tmp_path: Path) -> None:
    """onprem.recipient_delimiter is read as Postfix writes it, and nonsense is refused."""
    path = tmp_path / "c.toml"
    path.write_text('[onprem]\nrecipient_delimiter = "+-"\n')
    assert load_config(str(path)).recipient_delimiter == "+-"
    path.write_text('[onprem]\nrecipient_delimiter = "@"\n')
    with pytest.raises(ConfigError) as error:
        load_config(str(path))
    assert "onprem.recipient_delimiter" in str(error.value)
    assert 'recipient_delimiter = "+"' in str(error.value)
