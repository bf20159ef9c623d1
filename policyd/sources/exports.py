"""Read the tenant as Exchange Online PowerShell exports it (``ConvertTo-Json`` output).

Two files feed the tenant model::

    Get-AcceptedDomain  | ConvertTo-Json -Depth 4 > accepted-domains.json
    Get-InboundConnector | ConvertTo-Json -Depth 4 > inbound-connectors.json

(the README's "Exporting the tenant" and ``contrib/exchange`` give the recommended ``Select``
with string casts). The parsers accept every shape we know PowerShell to write, because an
administrator runs whatever version of PowerShell is at hand:

* UTF-8 with or without a byte-order mark; UTF-16 LE/BE (and UTF-32) with a BOM, which Windows
  PowerShell 5.1 ``Out-File`` and ``>`` write; an empty file (no objects) is an empty list;
* one object (a single result is not wrapped in an array), an array, or a ``{"value": [...]}``
  wrapper (Windows PowerShell 5.1 wraps some arrays so; the Exchange Admin API answers so);
* enum values as names (string casts) or as numbers (plain ``ConvertTo-Json``);
* booleans as JSON booleans or as the strings ``"True"``/``"False"``;
* typed Exchange values either as their string form or as serialised objects: ``IPRange``,
  ``SmtpDomainWithSubdomains``, ``TlsCertificate``/``SmtpX509Identifier``, ``AddressSpace``.

Field names are matched case-insensitively (PowerShell property names are). Unknown fields are
ignored. Everything that cannot be used raises ``ConfigError(file, "<Field> of entry N", fix)``
with entries counted from 1. Pure parsers (``parse_*``) take decoded JSON values so tests and
``config`` can feed them directly; ``load_*`` add reading and decoding.

The helpers ``parse_bool``, ``domain_name``, ``sender_ip_networks``, ``certificate_name``,
``address_space_domain`` and ``connector_type_name`` raise ``ValueError`` with a sentence a
caller puts into its own ``ConfigError``; ``policyd.sources.config`` uses them for inline
connectors.
"""

from __future__ import annotations

import codecs
import ipaddress
import json
import re
from collections.abc import Mapping

from policyd.errors import ConfigError
from policyd.rules.model import (
    ON_PREMISES,
    PARTNER,
    AcceptedDomain,
    InboundConnector,
    normalize_domain,
)
from policyd.sources.files import MAX_EXPORT_BYTES, read_capped

#: How the fix for a badly shaped export reads, in every message that needs it.
EXPORT_HINT = "export it again with Get-AcceptedDomain | ConvertTo-Json -Depth 4"
CONNECTOR_EXPORT_HINT = "export it again with Get-InboundConnector | ConvertTo-Json -Depth 4"

#: ``Microsoft.Exchange.Data.Directory.SystemConfiguration.AcceptedDomainType``: declared
#: without explicit values, so Authoritative = 0, ExternalRelay = 1, InternalRelay = 2. Sure:
#: the enum declaration is public in decompiled Exchange assemblies found with code search.
DOMAIN_TYPES: dict[int, str] = {0: "Authoritative", 1: "ExternalRelay", 2: "InternalRelay"}

#: ``Microsoft.Exchange.Data.TenantConnectorType``: ``OnPremises = 1, Partner`` (so Partner = 2).
#: Fairly sure, not certain: that is the declaration in decompiled Exchange Server assemblies
#: found with code search (the type Exchange Online's cmdlets also name); no live Exchange
#: Online ``ConvertTo-Json`` output showing the numbers was found. Note that it is the reverse
#: of the guess "1 Partner, 2 OnPremises"; with the recommended string cast it never matters.
CONNECTOR_TYPES: dict[int, str] = {1: ON_PREMISES, 2: PARTNER}

_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),  # before UTF-16 LE: it starts with the same two bytes
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)

# SmtpX509Identifier.ToString(): "<I>issuer<S>subject" (issuer optional); Exchange takes the
# certificate domain from the subject's CN (regex "CN=(.*?)($|,)" in the same class).
_X509_IDENTIFIER = re.compile(r"^(?:<I>[^<]*)?<S>(?P<subject>.+)$", re.IGNORECASE | re.DOTALL)
_SUBJECT_CN = re.compile(r"CN=(?P<cn>.*?)(?:$|,)", re.IGNORECASE)
_IP_SHAPE = "an IPv4 address, CIDR range (203.0.113.0/24) or range (203.0.113.4-203.0.113.9)"
_LIST_SEPARATORS = re.compile(r"[\s,]+")
_DOMAIN_FORBIDDEN = re.compile(r"[\s@:/,;<>()\[\]\"'\\]")


# --- reading -------------------------------------------------------------------------------


def read_json_file(path: str) -> object:
    """Read and decode one export file (``null`` is ``None``: no entries).

    Raises ``ConfigError`` for an unreadable, non-regular or oversized file, for an empty one
    (a file caught while being written, or truncated: ``: > file``; the export script writes
    ``[]`` for no objects, issue 16) and for JSON that does not parse or nests too deeply.
    """
    try:
        raw = read_capped(path, MAX_EXPORT_BYTES)
    except OSError as error:
        reason = error.strerror or str(error)
        raise ConfigError(
            path, "", f"cannot read the export file ({reason}); check the path and permissions"
        ) from error
    text = decode_export(raw, path)
    if not text.strip():
        raise ConfigError(
            path,
            "",
            "empty export (truncated, or still being written); write it again with "
            "ConvertTo-Json -InputObject @(...) -Depth 4, which writes [] for no objects",
        )
    try:
        return json.loads(text)
    except RecursionError:
        raise ConfigError(
            path, "", "not valid JSON (nested too deeply); write the file with ConvertTo-Json"
        ) from None
    except json.JSONDecodeError as error:
        raise ConfigError(
            path,
            f"line {error.lineno} column {error.colno}",
            f"not valid JSON ({error.msg}); write the file with ConvertTo-Json, unedited",
        ) from error


def decode_export(raw: bytes, path: str) -> str:
    """Decode by byte-order mark (UTF-8/16/32); without one the file must be UTF-8."""
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            try:
                return raw[len(bom) :].decode(encoding)
            except UnicodeDecodeError as error:
                raise ConfigError(
                    path,
                    "encoding",
                    f"starts with a {encoding.upper()} byte-order mark but is not valid "
                    f"{encoding.upper()} (byte {error.start + len(bom)}); export it again",
                ) from error
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            path,
            "encoding",
            f"not UTF-8 (invalid byte at offset {error.start}) and no byte-order mark; "
            "save it as UTF-8, e.g. ConvertTo-Json ... | Out-File -Encoding utf8 FILE",
        ) from error


# --- public loaders --------------------------------------------------------------------------


def load_accepted_domains(path: str) -> tuple[AcceptedDomain, ...]:
    """Read a ``Get-AcceptedDomain | ConvertTo-Json`` file."""
    return parse_accepted_domains(read_json_file(path), path)


def load_inbound_connectors(path: str) -> tuple[InboundConnector, ...]:
    """Read a ``Get-InboundConnector | ConvertTo-Json`` file."""
    return parse_inbound_connectors(read_json_file(path), path)


def parse_accepted_domains(data: object, source: str) -> tuple[AcceptedDomain, ...]:
    """Turn decoded ``Get-AcceptedDomain`` JSON into accepted domains (``source`` names it)."""
    domains: list[AcceptedDomain] = []
    for number, entry in enumerate(_entries(data, source, "DomainName", EXPORT_HINT), 1):

        def fail(field: str, problem: str, number: int = number) -> ConfigError:
            return ConfigError(source, f"{field} of entry {number}", problem)

        raw_name = entry.get("domainname")
        if raw_name is None:
            raise fail("DomainName", f"missing; every accepted domain has one ({EXPORT_HINT})")
        try:
            name, wildcard = _accepted_domain_name(raw_name)
        except ValueError as error:
            raise fail("DomainName", str(error)) from error
        try:
            domain_type = _enum(entry.get("domaintype"), DOMAIN_TYPES, "Authoritative")
        except ValueError as error:
            raise fail("DomainType", str(error)) from error
        flags: dict[str, bool] = {}
        for field in ("MatchSubDomains", "Default", "InitialDomain", "SendingFromDomainDisabled"):
            try:
                flags[field] = parse_bool(entry.get(field.lower()), default=False)
            except ValueError as error:
                raise fail(field, str(error)) from error
        domains.append(
            AcceptedDomain(
                domain=name,
                match_subdomains=flags["MatchSubDomains"] or wildcard,
                domain_type=domain_type,
                default=flags["Default"],
                initial=flags["InitialDomain"],
                sending_from_domain_disabled=flags["SendingFromDomainDisabled"],
                source=source,
            )
        )
    return tuple(domains)


def parse_inbound_connectors(data: object, source: str) -> tuple[InboundConnector, ...]:
    """Turn decoded ``Get-InboundConnector`` JSON into connectors (``source`` names it)."""
    connectors: list[InboundConnector] = []
    for number, entry in enumerate(_entries(data, source, "Name", CONNECTOR_EXPORT_HINT), 1):

        def fail(field: str, problem: str, number: int = number) -> ConfigError:
            return ConfigError(source, f"{field} of entry {number}", problem)

        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            problem = "missing" if name is None else f"expected a non-empty string, got {name!r}"
            raise fail("Name", f"{problem}; every connector has a Name ({CONNECTOR_EXPORT_HINT})")
        if entry.get("connectortype") is None:
            raise fail(
                "ConnectorType",
                "missing; it decides whether the connector can grant relay (only OnPremises "
                f"does), so it cannot be guessed ({CONNECTOR_EXPORT_HINT})",
            )
        try:
            kind = connector_type_name(entry.get("connectortype"))
        except ValueError as error:
            raise fail("ConnectorType", str(error)) from error
        try:
            enabled = parse_bool(entry.get("enabled"), default=True)
        except ValueError as error:
            raise fail("Enabled", str(error)) from error
        networks: list[ipaddress.IPv4Network] = []
        for value in _multi_value(entry.get("senderipaddresses")):
            try:
                networks.extend(sender_ip_networks(value))
            except ValueError as error:
                raise fail("SenderIPAddresses", str(error)) from error
        try:
            certificate = certificate_name(entry.get("tlssendercertificatename"))
        except ValueError as error:
            raise fail("TlsSenderCertificateName", str(error)) from error
        sender_domains: list[str] = []
        for value in _multi_value(entry.get("senderdomains")):
            try:
                sender_domains.append(address_space_domain(value))
            except ValueError as error:
                raise fail("SenderDomains", str(error)) from error
        restrict: dict[str, bool] = {}
        for field in ("RestrictDomainsToIPAddresses", "RestrictDomainsToCertificate"):
            try:
                restrict[field] = parse_bool(entry.get(field.lower()), default=False)
            except ValueError as error:
                raise fail(field, str(error)) from error
        connectors.append(
            InboundConnector(
                name=name.strip(),
                connector_type=kind,
                enabled=enabled,
                sender_ip_addresses=tuple(networks),
                tls_sender_certificate_name=certificate,
                sender_domains=tuple(sender_domains),
                restrict_domains_to_ip_addresses=restrict["RestrictDomainsToIPAddresses"],
                restrict_domains_to_certificate=restrict["RestrictDomainsToCertificate"],
                source=source,
            )
        )
    return tuple(connectors)


# --- value helpers (also used for inline configuration) -----------------------------------------


def parse_bool(value: object, *, default: bool) -> bool:
    """A JSON boolean, ``"True"``/``"False"`` (any case, also ``$true``), 0/1; null = default."""
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower().removeprefix("$")
        if text in ("true", "1"):
            return True
        if text in ("false", "0"):
            return False
    raise ValueError(f"expected true or false, got {value!r}")


def connector_type_name(value: object) -> str:
    """``OnPremises`` or ``Partner`` from a name (any case) or the enum number (1 or 2)."""
    return _enum(value, CONNECTOR_TYPES, None)


def domain_name(value: str, *, wildcard: bool = False) -> str:
    """Normalise a domain (``normalize_domain``) and reject what cannot be one.

    With ``wildcard`` a leading ``*.`` (and a lone ``*``) is allowed, as in certificate names
    and address spaces.
    """
    text = normalize_domain(value)
    body = text
    if wildcard and text == "*":
        return text
    if wildcard and text.startswith("*."):
        body = text[2:]
    if not body:
        raise ValueError(f"{value!r} is not a domain name; write it like contoso.com")
    if _DOMAIN_FORBIDDEN.search(body) or "*" in body or "" in body.split("."):
        raise ValueError(f"{value!r} is not a domain name; write it like contoso.com")
    return text


def sender_ip_networks(value: object) -> tuple[ipaddress.IPv4Network, ...]:
    """One ``SenderIPAddresses`` value as IPv4 networks.

    Strings: ``1.2.3.4``, ``1.2.3.0/24``, ``1.2.3.4-1.2.3.9`` and ``1.2.3.0(255.255.255.0)``,
    the four forms of ``Microsoft.Exchange.Data.IPRange.ToString()`` (a range becomes the
    networks that cover it exactly). Objects (an ``IPRange`` serialised without a string cast):
    its ``Expression`` string, else ``Address`` with ``CIDRLength``/``PrefixLength``, else
    ``LowerBound``/``UpperBound``; an ``IPRange`` or ``IPAddressToString`` member is read too.
    IPv6 is refused: Exchange Online rejects IPv6 ranges on connectors
    (``IPv6AddressesRangesAreNotAllowedInConnectorException``), so such a value is an error.
    """
    if isinstance(value, str):
        return _ip_text(value)
    if isinstance(value, Mapping):
        fields = _lower_keys(value)
        for key in ("expression", "iprange", "ipaddresstostring"):
            inner = fields.get(key)
            if isinstance(inner, str | Mapping) and inner:
                return sender_ip_networks(inner)
        address = fields.get("address")
        length = next(
            (fields[k] for k in ("cidrlength", "prefixlength", "cidr") if k in fields), None
        )
        if isinstance(address, str) and length is not None and not isinstance(length, bool):
            return _ip_text(f"{address}/{length}")
        if isinstance(address, str):
            return _ip_text(address)
        lower, upper = _bound(fields.get("lowerbound")), _bound(fields.get("upperbound"))
        if lower and upper:
            return _ip_text(lower if lower == upper else f"{lower}-{upper}")
        raise ValueError(
            f"object {json.dumps(value, sort_keys=True)[:120]} has no Expression, Address or "
            "LowerBound/UpperBound; export the addresses as strings: "
            '@{n="SenderIPAddresses";e={@($_.SenderIPAddresses|%{"$_"})}}'
        )
    raise ValueError(
        f"expected an address string such as 203.0.113.10 or 203.0.113.0/24, got {value!r}"
    )


def certificate_name(value: object) -> str:
    """``TlsSenderCertificateName`` as a normalised name; "" when the connector has none.

    Accepts the string form (``*.contoso.com``, ``mail.contoso.com``, or the
    ``<I>issuer<S>subject`` form of ``SmtpX509Identifier``, whose subject CN is the name
    Exchange compares), and the serialised ``TlsCertificate`` object: ``TlsCertificateName``
    holding either a ``SmtpDomainWithSubdomains`` (``Address``/``Domain``) or a
    ``SmtpX509Identifier`` (``SubjectCommonName``/``CertificateSubject``). An issuer-and-subject
    name is reduced to its CN: the predictor compares names, not issuers.
    """
    if value is None:
        return ""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return ""
        x509 = _X509_IDENTIFIER.match(text)
        if x509:
            return _subject_common_name(x509.group("subject"))
        return domain_name(text, wildcard=True)
    if isinstance(value, Mapping):
        fields = _lower_keys(value)
        for key in ("tlscertificatename", "address", "subjectcommonname", "domain"):
            if key in fields:
                return certificate_name(fields[key])
        subject = fields.get("certificatesubject")
        if isinstance(subject, str):
            return _subject_common_name(subject)
        if not fields:
            return ""
        raise ValueError(
            f"object {json.dumps(value, sort_keys=True)[:120]} has no TlsCertificateName, "
            "Address or CertificateSubject; export it as a string: "
            '@{n="TlsSenderCertificateName";e={"$($_.TlsSenderCertificateName)"}}'
        )
    raise ValueError(f"expected a certificate name such as *.contoso.com, got {value!r}")


def address_space_domain(value: object) -> str:
    """An address-space value (``smtp:*;1``, ``smtp:contoso.com;1``, ``*.contoso.com``) as a domain.

    The ``smtp:`` type prefix and the ``;cost`` suffix of ``AddressSpace.ToString()`` are
    dropped; an ``AddressSpace`` object gives its ``Address`` (or ``Domain``).
    """
    if isinstance(value, Mapping):
        fields = _lower_keys(value)
        for key in ("address", "domain"):
            inner = fields.get(key)
            if isinstance(inner, str | Mapping):
                return address_space_domain(inner)
        raise ValueError(f"object {json.dumps(value, sort_keys=True)[:120]} has no Address")
    if not isinstance(value, str):
        raise ValueError(f"expected an address space such as smtp:contoso.com;1, got {value!r}")
    text = value.strip()
    if text[:5].lower() == "smtp:":
        text = text[5:]
    text = text.split(";", 1)[0].strip()
    return domain_name(text, wildcard=True)


# --- internals -------------------------------------------------------------------------------


def _entries(data: object, source: str, name_field: str, hint: str) -> list[dict[str, object]]:
    """The export's objects, each with lower-cased keys, from any top-level shape."""
    if data is None:
        return []
    if isinstance(data, Mapping):
        fields = _lower_keys(data)
        wrapped = fields.get("value")
        # {"value": [...], "Count": n} (Windows PowerShell 5.1) or an Admin API answer
        unwrap = name_field.lower() not in fields and isinstance(wrapped, list)
        data = wrapped if unwrap else [data]
    if not isinstance(data, list):
        raise ConfigError(
            source,
            "top level",
            f"expected a JSON array or object, got {_json_type(data)}; {hint}",
        )
    entries: list[dict[str, object]] = []
    for number, entry in enumerate(data, 1):
        if not isinstance(entry, Mapping):
            raise ConfigError(
                source,
                f"entry {number}",
                f"expected an object with {name_field}, got {_json_type(entry)}; {hint}",
            )
        entries.append(_lower_keys(entry))
    return entries


def _lower_keys(mapping: Mapping[object, object]) -> dict[str, object]:
    return {str(key).lower(): value for key, value in mapping.items()}


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value[:60]!r})"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _multi_value(value: object) -> list[object]:
    """A multi-valued property: null, one value, an array, or a space/comma-joined string."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        fields = _lower_keys(value)
        wrapped = fields.get("value")
        if isinstance(wrapped, list) and set(fields) <= {"value", "count"}:
            return list(wrapped)  # Windows PowerShell 5.1 {"value": [...], "Count": n}
        return [value]
    if isinstance(value, list):
        return list(value)
    if isinstance(value, str):
        # "$($_.SenderIPAddresses)" joins with spaces; Format-List shows "{a, b}".
        text = value.strip().removeprefix("{").removesuffix("}")
        return [part for part in _LIST_SEPARATORS.split(text) if part]
    return [value]


def _enum(value: object, numbers: Mapping[int, str], default: str | None) -> str:
    """An Exchange enum from its name (any case) or its number."""
    names = tuple(numbers.values())
    expected = f"{', '.join(names[:-1])} or {names[-1]} (or {', '.join(map(str, numbers))})"
    if value is None and default is not None:
        return default
    if isinstance(value, Mapping):  # {"value": 1, "Value": "OnPremises"}-style wrappers
        fields = _lower_keys(value)
        value = fields.get("value", fields.get("name"))
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool) and value in numbers:
        return numbers[value]
    if isinstance(value, str):
        for name in names:
            if value.strip().lower() == name.lower():
                return name
    raise ValueError(f"{value!r} is not a known value; expected {expected}")


def _accepted_domain_name(value: object) -> tuple[str, bool]:
    """``DomainName`` as a string or a ``SmtpDomainWithSubdomains`` object; ``*.x`` = subdomains."""
    if isinstance(value, Mapping):
        fields = _lower_keys(value)
        include = fields.get("includesubdomains") is True
        for key in ("address", "domain", "smtpdomain"):
            inner = fields.get(key)
            if isinstance(inner, str | Mapping):
                name, wildcard = _accepted_domain_name(inner)
                return name, wildcard or include
        raise ValueError(
            f"object {json.dumps(value, sort_keys=True)[:120]} has no Address or Domain; "
            f"{EXPORT_HINT}"
        )
    if not isinstance(value, str):
        raise ValueError(f"expected a domain such as contoso.com, got {value!r}")
    text = value.strip()
    wildcard = text.startswith("*.")
    if text == "*":
        raise ValueError("'*' is not an accepted domain; list the domains themselves")
    return domain_name(text.removeprefix("*.")), wildcard


def _subject_common_name(subject: str) -> str:
    match = _SUBJECT_CN.search(subject)
    if not match or not match.group("cn").strip():
        raise ValueError(
            f"certificate subject {subject!r} has no CN=; Exchange takes the certificate "
            "domain from the subject's CN"
        )
    return domain_name(match.group("cn").strip(), wildcard=True)


def _bound(value: object) -> str:
    """An ``IPRange`` bound: a string, or a serialised address with ``IPAddressToString``."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, Mapping):
        fields = _lower_keys(value)
        for key in ("ipaddresstostring", "address"):
            inner = fields.get(key)
            if isinstance(inner, str):
                return inner.strip()
    return ""


def _ip_text(text: str) -> tuple[ipaddress.IPv4Network, ...]:
    text = text.strip()
    if "-" in text:
        low_text, high_text = text.split("-", 1)
        low, high = _address(low_text, text), _address(high_text, text)
        if low.version != high.version:
            raise ValueError(f"{text!r} mixes IPv4 and IPv6; write {_IP_SHAPE}")
        if isinstance(low, ipaddress.IPv6Address) or isinstance(high, ipaddress.IPv6Address):
            raise _ipv6(text)
        if low > high:
            raise ValueError(f"{text!r} runs backwards; write the lower address first")
        return tuple(ipaddress.summarize_address_range(low, high))
    spec = text
    if spec.endswith(")") and "(" in spec:  # 203.0.113.0(255.255.255.0), the Netmask form
        address, mask = spec[:-1].split("(", 1)
        spec = f"{address.strip()}/{mask.strip()}"
    try:
        network = ipaddress.ip_network(spec, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not {_IP_SHAPE}") from None
    if isinstance(network, ipaddress.IPv6Network):
        raise _ipv6(text)
    return (network,)


def _address(part: str, whole: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(part.strip())
    except ValueError:
        raise ValueError(f"{whole!r} is not {_IP_SHAPE}") from None


def _ipv6(text: str) -> ValueError:
    return ValueError(
        f"{text!r} is IPv6; Exchange Online accepts only IPv4 in SenderIPAddresses, "
        "so no connector can match it; remove it"
    )
