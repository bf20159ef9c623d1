"""Reading Get-AcceptedDomain / Get-InboundConnector ConvertTo-Json output (sources.exports).

The fixtures in tests/data/exports have the shapes PowerShell writes: ``*-select.json`` as the
recommended ``Select`` with string casts writes them (Windows PowerShell 5.1 layout),
``*-raw.json`` as a plain ``ConvertTo-Json`` of the typed objects (enum numbers, serialised
``SmtpDomainWithSubdomains``/``IPRange``/``TlsCertificate`` objects, "True"/"False" strings;
built from the public class definitions, not captured from a live tenant), ``*-single.json``
a lone result (not wrapped in an array), ``*-wrapped.json`` the ``{"value": [...], "Count": n}``
wrapper.
"""

from __future__ import annotations

import codecs
import ipaddress
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from policyd.errors import ConfigError
from policyd.rules.model import AcceptedDomain, InboundConnector
from policyd.sources import exports

DATA = Path(__file__).parent / "data" / "exports"
CONTRIB = Path(__file__).parent.parent / "contrib" / "exchange"


def net(text: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(text)


EXPECTED_DOMAINS = (
    AcceptedDomain("contoso.com", default=True),
    AcceptedDomain(
        "eu.fabrikam.com",
        match_subdomains=True,
        domain_type="InternalRelay",
        sending_from_domain_disabled=True,
    ),
    AcceptedDomain("contoso.onmicrosoft.com", initial=True),
)

EXPECTED_CONNECTORS = (
    InboundConnector(
        "From on-premises Postfix",
        connector_type="OnPremises",
        enabled=True,
        sender_ip_addresses=(net("203.0.113.10/32"), net("203.0.113.64/28")),
        tls_sender_certificate_name="*.contoso.com",
        sender_domains=("*",),
    ),
    InboundConnector(
        "Scanner vendor",
        connector_type="Partner",
        enabled=False,
        sender_ip_addresses=(net("198.51.100.25/32"),),
        sender_domains=("scanners.fabrikam.com",),
        restrict_domains_to_ip_addresses=True,
    ),
    InboundConnector(
        "Inbound from 4c9b2a1e-7d3f-4f0a-9e55-2b8c6d1f0a77",
        tls_sender_certificate_name="mail.contoso.com",
        sender_domains=("*",),
    ),
)


def with_source(items: tuple[Any, ...], source: str) -> tuple[Any, ...]:
    """The expected entries as loaded from ``source`` (entries remember their file)."""
    return tuple(replace(item, source=source) for item in items)


# --- accepted domains ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["accepted-domains-select.json", "accepted-domains-raw.json"])
def test_accepted_domains_string_casts_and_raw_objects_agree(name: str) -> None:
    """Names or enum numbers, plain strings or SmtpDomainWithSubdomains objects: same domains."""
    path = str(DATA / name)
    assert exports.load_accepted_domains(path) == with_source(EXPECTED_DOMAINS, path)


def test_accepted_domains_single_object_is_one_entry() -> None:
    """A lone result (PowerShell does not wrap it in an array) is read as one domain."""
    path = str(DATA / "accepted-domains-single.json")
    assert exports.load_accepted_domains(path) == (
        AcceptedDomain("contoso.com", default=True, source=path),
    )


def test_accepted_domains_value_count_wrapper_is_unwrapped() -> None:
    """Windows PowerShell 5.1's {"value": [...], "Count": n} wrapper yields its entries."""
    path = str(DATA / "accepted-domains-wrapped.json")
    domains = exports.load_accepted_domains(path)
    assert [(d.domain, d.domain_type, d.match_subdomains) for d in domains] == [
        ("contoso.com", "Authoritative", False),
        ("tailspintoys.com", "InternalRelay", True),
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, "Authoritative"), (1, "ExternalRelay"), (2, "InternalRelay"), ("2", "InternalRelay"),
     ("internalrelay", "InternalRelay"), (None, "Authoritative")],
)  # fmt: skip
def test_domain_type_numbers_and_names(value: object, expected: str) -> None:
    """DomainType is read from AcceptedDomainType numbers (0, 1, 2) or names in any case."""
    (domain,) = exports.parse_accepted_domains({"DomainName": "x.com", "DomainType": value}, "f")
    assert domain.domain_type == expected


def test_wildcard_domain_name_means_subdomains() -> None:
    """A DomainName of *.contoso.com is contoso.com with its subdomains matched."""
    (domain,) = exports.parse_accepted_domains({"DomainName": "*.Contoso.com"}, "f")
    assert (domain.domain, domain.match_subdomains) == ("contoso.com", True)


def test_idn_domain_is_compared_in_ascii_form() -> None:
    """An internationalised DomainName is stored in its xn-- form, lower case."""
    (domain,) = exports.parse_accepted_domains({"domainname": "Bücher.Example"}, "f")
    assert domain.domain == "xn--bcher-kva.example"


# --- inbound connectors ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["inbound-connectors-select.json", "inbound-connectors-raw.json"])
def test_connectors_string_casts_and_raw_objects_agree(name: str) -> None:
    """Enum numbers, IPRange/TlsCertificate/AddressSpace objects and string forms give one model."""
    path = str(DATA / name)
    assert exports.load_inbound_connectors(path) == with_source(EXPECTED_CONNECTORS, path)


def test_connector_single_object_with_x509_identifier_name() -> None:
    """A lone connector whose certificate name is "<I>issuer<S>subject" uses the subject CN."""
    path = str(DATA / "inbound-connectors-single.json")
    (connector,) = exports.load_inbound_connectors(path)
    assert connector.name == "From on-premises Postfix"
    assert connector.tls_sender_certificate_name == "*.contoso.com"
    assert connector.sender_ip_addresses == (net("203.0.113.10/32"), net("203.0.113.64/28"))
    assert connector.grants_relay


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1, "OnPremises"), (2, "Partner"), ("1", "OnPremises"), ("onpremises", "OnPremises"),
     ("Partner", "Partner"), ({"value": 2}, "Partner")],
)  # fmt: skip
def test_connector_type_numbers_and_names(value: object, expected: str) -> None:
    """ConnectorType follows TenantConnectorType (OnPremises = 1, Partner = 2) or its names."""
    assert exports.connector_type_name(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("203.0.113.10", ["203.0.113.10/32"]),
        ("203.0.113.0/24", ["203.0.113.0/24"]),
        ("203.0.113.7/24", ["203.0.113.0/24"]),
        ("203.0.113.4-203.0.113.9", ["203.0.113.4/30", "203.0.113.8/31"]),
        ("203.0.113.0(255.255.255.0)", ["203.0.113.0/24"]),
        ({"Expression": "203.0.113.0/25"}, ["203.0.113.0/25"]),
        ({"IPRange": "203.0.113.9"}, ["203.0.113.9/32"]),
        ({"Address": "203.0.113.0", "CIDRLength": 26}, ["203.0.113.0/26"]),
        ({"LowerBound": "203.0.113.1", "UpperBound": "203.0.113.1"}, ["203.0.113.1/32"]),
        (
            {"LowerBound": {"IPAddressToString": "203.0.113.2"}, "UpperBound": "203.0.113.3"},
            ["203.0.113.2/31"],
        ),
    ],
)
def test_sender_ip_address_forms(value: object, expected: list[str]) -> None:
    """Every IPRange string form and serialised object becomes the IPv4 networks it covers."""
    assert exports.sender_ip_networks(value) == tuple(net(text) for text in expected)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (["203.0.113.10", "203.0.113.11"], ["203.0.113.10/32", "203.0.113.11/32"]),
        ("203.0.113.10 203.0.113.11", ["203.0.113.10/32", "203.0.113.11/32"]),
        ("{203.0.113.10, 203.0.113.11}", ["203.0.113.10/32", "203.0.113.11/32"]),
        ({"value": ["203.0.113.10"], "Count": 1}, ["203.0.113.10/32"]),
        (None, []),
        ([], []),
    ],
)
def test_sender_ip_addresses_multi_value_shapes(value: object, expected: list[str]) -> None:
    """Arrays, space-joined casts, Format-List braces, wrappers and null all read as lists."""
    (connector,) = exports.parse_inbound_connectors(
        {"Name": "c", "ConnectorType": "OnPremises", "SenderIPAddresses": value}, "f"
    )
    assert connector.sender_ip_addresses == tuple(net(text) for text in expected)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("smtp:*;1", "*"),
        ("SMTP:Contoso.COM;1", "contoso.com"),
        ("smtp:*.contoso.com;5", "*.contoso.com"),
        ("fabrikam.com", "fabrikam.com"),
        ({"Type": "smtp", "Address": "tailspintoys.com", "Cost": 1}, "tailspintoys.com"),
    ],
)
def test_sender_domains_address_spaces(value: object, expected: str) -> None:
    """SenderDomains drop the smtp: type and the ;cost of address spaces."""
    assert exports.address_space_domain(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ""),
        ("", ""),
        ("   ", ""),
        ("*.Contoso.com", "*.contoso.com"),
        ("mail.contoso.com.", "mail.contoso.com"),
        ("<I>CN=R11, O=Let's Encrypt, C=US<S>CN=Mail.Contoso.com, O=Contoso", "mail.contoso.com"),
        ("<S>CN=relay.contoso.com", "relay.contoso.com"),
        ({"TlsCertificateName": {"Address": "*.contoso.com", "IncludeSubDomains": True}},
         "*.contoso.com"),
        ({"TlsCertificateName": "mail.contoso.com"}, "mail.contoso.com"),
        ({"TlsCertificateName": {"CertificateSubject": "CN=smtp.contoso.com, O=Contoso"}},
         "smtp.contoso.com"),
        ({}, ""),
    ],
)  # fmt: skip
def test_tls_sender_certificate_name_forms(value: object, expected: str) -> None:
    """Strings, <I>issuer<S>subject identifiers and TlsCertificate objects give one name."""
    assert exports.certificate_name(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), (False, False), ("True", True), ("False", False), ("$true", True),
     (" false ", False), (1, True), (0, False), (None, True)],
)  # fmt: skip
def test_booleans_as_json_or_strings(value: object, expected: bool) -> None:
    """Enabled reads JSON booleans, "True"/"False" strings and 0/1; null keeps the default."""
    assert exports.parse_bool(value, default=True) is expected


def test_unknown_fields_are_ignored() -> None:
    """Fields the model does not know (Guid, Comment, anything new) do not disturb parsing."""
    (connector,) = exports.parse_inbound_connectors(
        {"Name": "c", "ConnectorType": "Partner", "Brand new field": {"x": [1, 2]}, "Guid": 7},
        "f",
    )
    assert connector == InboundConnector("c", connector_type="Partner", source="f")


def test_contrib_examples_parse() -> None:
    """The export samples shipped in contrib/exchange are valid exports."""
    domains = exports.load_accepted_domains(str(CONTRIB / "accepted-domains.example.json"))
    connectors = exports.load_inbound_connectors(str(CONTRIB / "inbound-connectors.example.json"))
    assert "contoso.com" in [d.domain for d in domains]
    assert [c.name for c in connectors if c.grants_relay] == [
        "From on-premises Postfix",
        "Inbound from 4c9b2a1e-7d3f-4f0a-9e55-2b8c6d1f0a77",
    ]


# --- encodings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bom", "encoding"),
    [
        (b"", "utf-8"),
        (codecs.BOM_UTF8, "utf-8"),
        (codecs.BOM_UTF16_LE, "utf-16-le"),
        (codecs.BOM_UTF16_BE, "utf-16-be"),
        (codecs.BOM_UTF32_LE, "utf-32-le"),
    ],
)
def test_encodings_detected_by_bom(tmp_path: Path, bom: bytes, encoding: str) -> None:
    """UTF-8 with or without BOM and UTF-16/32 with BOM (Out-File in PowerShell 5.1) all read."""
    text = (
        (DATA / "accepted-domains-select.json")
        .read_text("utf-8")
        .replace("Fabrikam EU", "Fabrikam Europe – ünicode")
    )
    path = tmp_path / "domains.json"
    path.write_bytes(bom + text.encode(encoding))
    domains = exports.load_accepted_domains(str(path))
    assert [d.domain for d in domains] == [d.domain for d in EXPECTED_DOMAINS]


@pytest.mark.parametrize(
    "content", [b"[]", b"[]\r\n", codecs.BOM_UTF16_LE + "[]".encode("utf-16-le"), b"null"]
)
def test_empty_list_or_null_export_is_no_entries(tmp_path: Path, content: bytes) -> None:
    """``[]`` (what the export script writes for no objects) or null means no entries."""
    path = tmp_path / "connectors.json"
    path.write_bytes(content)
    assert exports.load_inbound_connectors(str(path)) == ()


@pytest.mark.parametrize("content", [b"", b"\r\n", codecs.BOM_UTF16_LE])
def test_empty_export_file_is_an_error(tmp_path: Path, content: bytes) -> None:
    """An empty file is a truncated or half-written export, never "no connectors" (issue 16)."""
    path = tmp_path / "connectors.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="empty export"):
        exports.load_inbound_connectors(str(path))


# --- errors ----------------------------------------------------------------------------------

ERRORS = [
    pytest.param(
        "domains",
        b"42",
        "top level",
        "expected a JSON array or object, got a number (42); "
        "export it again with Get-AcceptedDomain | ConvertTo-Json -Depth 4",
        id="top-level-number",
    ),
    pytest.param(
        "connectors",
        b'"From on-premises"',
        "top level",
        "expected a JSON array or object, got a string ('From on-premises'); "
        "export it again with Get-InboundConnector | ConvertTo-Json -Depth 4",
        id="top-level-string",
    ),
    pytest.param(
        "domains",
        b'[{"DomainName": "contoso.com"}, "fabrikam.com"]',
        "entry 2",
        "expected an object with DomainName, got a string ('fabrikam.com'); "
        "export it again with Get-AcceptedDomain | ConvertTo-Json -Depth 4",
        id="entry-not-object",
    ),
    pytest.param(
        "domains",
        b'[{"DomainName": "contoso.com"}, {"Name": "fabrikam.com"}]',
        "DomainName of entry 2",
        "missing; every accepted domain has one "
        "(export it again with Get-AcceptedDomain | ConvertTo-Json -Depth 4)",
        id="missing-domain-name",
    ),
    pytest.param(
        "domains",
        b'[{"DomainName": "contoso com"}]',
        "DomainName of entry 1",
        "'contoso com' is not a domain name; write it like contoso.com",
        id="bad-domain-name",
    ),
    pytest.param(
        "domains",
        b'{"DomainName": "contoso.com", "DomainType": 7}',
        "DomainType of entry 1",
        "7 is not a known value; expected Authoritative, ExternalRelay or InternalRelay "
        "(or 0, 1, 2)",
        id="unknown-domain-type",
    ),
    pytest.param(
        "domains",
        b'{"DomainName": "contoso.com", "MatchSubDomains": "yes"}',
        "MatchSubDomains of entry 1",
        "expected true or false, got 'yes'",
        id="bad-boolean",
    ),
    pytest.param(
        "connectors",
        b'[{"ConnectorType": "OnPremises"}]',
        "Name of entry 1",
        "missing; every connector has a Name "
        "(export it again with Get-InboundConnector | ConvertTo-Json -Depth 4)",
        id="missing-name",
    ),
    pytest.param(
        "connectors",
        b'[{"Name": "c"}]',
        "ConnectorType of entry 1",
        "missing; it decides whether the connector can grant relay (only OnPremises does), "
        "so it cannot be guessed "
        "(export it again with Get-InboundConnector | ConvertTo-Json -Depth 4)",
        id="missing-connector-type",
    ),
    pytest.param(
        "connectors",
        b'[{"Name": "c", "ConnectorType": 0}]',
        "ConnectorType of entry 1",
        "0 is not a known value; expected OnPremises or Partner (or 1, 2)",
        id="unknown-connector-type",
    ),
    pytest.param(
        "connectors",
        b'[{"Name": "a", "ConnectorType": 1},'
        b' {"Name": "b", "ConnectorType": 1, "SenderIPAddresses": ["203.0.113.300"]}]',
        "SenderIPAddresses of entry 2",
        "'203.0.113.300' is not an IPv4 address, CIDR range (203.0.113.0/24) "
        "or range (203.0.113.4-203.0.113.9)",
        id="invalid-ip",
    ),
    pytest.param(
        "connectors",
        b'[{"Name": "c", "ConnectorType": 1, "SenderIPAddresses": ["2001:db8::/64"]}]',
        "SenderIPAddresses of entry 1",
        "'2001:db8::/64' is IPv6; Exchange Online accepts only IPv4 in SenderIPAddresses, "
        "so no connector can match it; remove it",
        id="ipv6",
    ),
    pytest.param(
        "connectors",
        b'[{"Name": "c", "ConnectorType": 1, "SenderIPAddresses": ["203.0.113.9-203.0.113.1"]}]',
        "SenderIPAddresses of entry 1",
        "'203.0.113.9-203.0.113.1' runs backwards; write the lower address first",
        id="backwards-range",
    ),
    pytest.param(
        "connectors",
        b'[{"Name": "c", "ConnectorType": 1, "SenderIPAddresses": [{"Size": 1}]}]',
        "SenderIPAddresses of entry 1",
        'object {"Size": 1} has no Expression, Address or LowerBound/UpperBound; export the '
        'addresses as strings: @{n="SenderIPAddresses";e={@($_.SenderIPAddresses|%{"$_"})}}',
        id="ip-object-unknown",
    ),
    pytest.param(
        "connectors",
        b'[{"Name": "c", "ConnectorType": 1, "TlsSenderCertificateName": "<S>O=Contoso"}]',
        "TlsSenderCertificateName of entry 1",
        "certificate subject 'O=Contoso' has no CN=; Exchange takes the certificate domain "
        "from the subject's CN",
        id="x509-without-cn",
    ),
    pytest.param(
        "connectors",
        b'[{"Name": "c", "ConnectorType": 1, "Enabled": "maybe"}]',
        "Enabled of entry 1",
        "expected true or false, got 'maybe'",
        id="bad-enabled",
    ),
    pytest.param(
        "connectors",
        b"\xff\xfe\x00",
        "encoding",
        "starts with a UTF-16-LE byte-order mark but is not valid UTF-16-LE (byte 2); "
        "export it again",
        id="truncated-utf16",
    ),
    pytest.param(
        "domains",
        b'[{"DomainName": "caf\xe9.com"}]',
        "encoding",
        "not UTF-8 (invalid byte at offset 20) and no byte-order mark; save it as UTF-8, "
        "e.g. ConvertTo-Json ... | Out-File -Encoding utf8 FILE",
        id="latin1",
    ),
]


@pytest.mark.parametrize(("kind", "content", "key", "problem"), ERRORS)
def test_export_errors_name_file_field_and_fix(
    tmp_path: Path, kind: str, content: bytes, key: str, problem: str
) -> None:
    """Each unusable export raises ConfigError with the file, the field and entry, and a fix."""
    path = tmp_path / f"{kind}.json"
    path.write_bytes(content)
    load = exports.load_accepted_domains if kind == "domains" else exports.load_inbound_connectors
    with pytest.raises(ConfigError) as caught:
        load(str(path))
    assert (caught.value.file, caught.value.key, caught.value.problem) == (str(path), key, problem)
    assert str(caught.value) == f"{path}: {key}: {problem}"


@pytest.mark.parametrize(
    ("content", "line"),
    [
        pytest.param(b'[\n  {"DomainName": "contoso.com",}\n]', 2, id="trailing-comma"),
        pytest.param(b'[\n  {"DomainName": "contoso.com"}\n  {"DomainName": "x"}]', 3, id="comma"),
        pytest.param(b'[{"DomainName": "contoso.com"', 1, id="truncated"),
        pytest.param(b"{'DomainName': 'contoso.com'}", 1, id="single-quotes"),
    ],
)
def test_json_syntax_error_names_file_position_and_fix(
    tmp_path: Path, content: bytes, line: int
) -> None:
    """A JSON syntax error names the file, the line, a column on it, the parser's reason and the
    fix; the reason's words and the exact column are the interpreter's (3.13 moved them), so only
    their presence is promised."""
    path = tmp_path / "domains.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        exports.load_accepted_domains(str(path))
    error = caught.value
    assert error.file == str(path)
    position = re.fullmatch(r"line (\d+) column (\d+)", error.key)
    assert position is not None, error.key
    assert int(position.group(1)) == line
    text_of_line = content.decode().split("\n")[line - 1]
    assert 1 <= int(position.group(2)) <= len(text_of_line) + 1
    assert re.fullmatch(
        r"not valid JSON \([^()]+\); write the file with ConvertTo-Json, unedited", error.problem
    ), error.problem
    assert str(error) == f"{path}: {error.key}: {error.problem}"


def test_unreadable_export_names_file_and_os_error(tmp_path: Path) -> None:
    """A missing export file is a ConfigError naming the file and the operating system's reason."""
    path = tmp_path / "missing.json"
    with pytest.raises(ConfigError) as caught:
        exports.load_accepted_domains(str(path))
    assert str(caught.value) == (
        f"{path}: cannot read the export file (No such file or directory); "
        "check the path and permissions"
    )


def test_pure_parser_names_the_source() -> None:
    """The pure parsers put their ``source`` argument into errors and into each entry."""
    data = json.loads('[{"DomainName": "contoso.com"}, {"DomainName": 5}]')
    with pytest.raises(ConfigError) as caught:
        exports.parse_accepted_domains(data, "tenant/domains.json")
    assert str(caught.value) == (
        "tenant/domains.json: DomainName of entry 2: expected a domain such as contoso.com, got 5"
    )
