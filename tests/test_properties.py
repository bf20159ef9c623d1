"""Property tests (hypothesis): the parsers of untrusted input never fail in undocumented ways.

Three parsers read what the daemon does not control: the policy protocol (bytes from any
client that reaches the socket), the alias-map parser (postmap(1) source files an administrator
edits by hand) and the export parsers (JSON that some version of PowerShell wrote). For each:
arbitrary input raises nothing but the documented error (the protocol: nothing at all, and only
whole ``action=...`` replies are ever written), and well-formed generated input round-trips.

The protocol properties run the real engine on the shipped example configuration (with
``action = "defer"`` so refusals show in the answer text) behind ``PolicyProtocol`` on a
``StringTransport``: no sockets, a fixed ``task.Clock``.
"""

from __future__ import annotations

import ipaddress
import json
import re
import string
from collections.abc import Mapping
from dataclasses import replace
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from policyd.engine.policy import PolicyEngine
from policyd.engine.stats import Stats
from policyd.errors import ConfigError
from policyd.rules.model import ON_PREMISES, PARTNER, AcceptedDomain, InboundConnector
from policyd.sources.config import Config, load_config
from policyd.sources.exports import (
    CONNECTOR_TYPES,
    DOMAIN_TYPES,
    decode_export,
    parse_accepted_domains,
    parse_inbound_connectors,
)
from policyd.sources.state import build_state
from policyd.sources.tables import parse_source
from policyd.wire.protocol import WANTED_ATTRIBUTES, PolicyFactory, PolicyProtocol
from tests.doubles import Limits

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "contrib" / "m365-policyd.example.toml"

#: Late 2026, as in the replay tests: the engine reads only this injected clock.
NOW = 1_795_000_000.0

#: Settings shared by the protocol properties: bounded, and no timing flakiness on 2 cores.
FAST = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

#: One whole reply as Postfix reads it: ``action=`` and a value without NUL or newline.
REPLY = re.compile(rb"action=[^\n\x00]+\n\n")

REFUSED_TEXT = (
    "450 4.7.64 Microsoft 365 would refuse relay to this recipient (reason=sender-not-accepted: "
    "the sender domain is not an accepted domain of the tenant)"
)


# --- the real engine behind the protocol -------------------------------------------------------


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """The shipped example configuration with ``action = "defer"``."""
    text = EXAMPLE.read_text().replace('action = "dunno"', 'action = "defer"', 1)
    assert 'action = "defer"' in text
    path = tmp_path_factory.mktemp("properties") / "m365-policyd.toml"
    path.write_text(text)
    return load_config(str(path))


class Connection:
    """One client connection to a fresh factory (real engine, fixed clock, no sockets)."""

    def __init__(self, config: Config, max_request_bytes: int | None = None) -> None:
        clock = Clock()
        clock.advance(NOW)
        self.clock = clock
        self.stats = Stats()
        self.engine = PolicyEngine(
            build_state(config, 1), self.stats, clock.seconds, lambda record: None
        )
        server = config.server
        if max_request_bytes is not None:
            server = replace(server, max_request_bytes=max_request_bytes)
        self.factory = PolicyFactory(self.engine, self.stats, server, clock)
        self.protocol: PolicyProtocol = self.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def feed(self, stream: bytes, cuts: list[int]) -> None:
        """Deliver ``stream`` in reads cut at ``cuts`` (positions modulo its length)."""
        points = sorted({0, len(stream), *(cut % (len(stream) + 1) for cut in cuts)})
        for start, end in pairwise(points):
            self.protocol.dataReceived(stream[start:end])
            # The reactor's next turns: a connection that used up its turn budget (slow first
            # predictions on a loaded machine) goes on there, as it would in ``serve``.
            self.clock.advance(0)

    @property
    def output(self) -> bytes:
        return bytes(self.transport.value())

    @property
    def answered(self) -> int:
        """Requests the engine was handed (each stage counter counts one request)."""
        return sum(self.stats.requests.values())

    def replies(self) -> list[str]:
        """The output as action texts; fails unless it is whole replies and nothing else."""
        output = self.output
        assert REPLY.sub(b"", output) == b"", f"output is not whole replies: {output!r}"
        return [match.decode()[len("action=") : -2] for match in REPLY.findall(output)]


def encode(attrs: list[tuple[str, str]]) -> bytes:
    """One request on the wire: ``name=value`` lines and the blank line."""
    return "".join(f"{name}={value}\n" for name, value in attrs).encode() + b"\n"


#: Bytes rich in what matters to framing and decoding, plus whole valid requests.
PIECES = st.sampled_from(
    [
        b"a",
        b"=",
        b"\n",
        b"\n\n",
        b"\r",
        b"\r\n",
        b"\x00",
        b"\xc3",
        b"\xa9",
        b"\xff",
        b"\xed\xa0\x80",  # an encoded surrogate: not UTF-8
        b"protocol_state=RCPT\n",
        b"protocol_state=DATA\n",
        b"sender=john@fabrikam.com\n",
        b"recipient=kate@tailspintoys.com\n",
        b"instance=1\n",
    ]
)
NOISE = st.lists(PIECES | st.binary(max_size=12), max_size=40).map(b"".join)

#: Attribute names: anything but "=", NUL and newline (CR too, so no CR LF pair forms).
NAME_CHARS = st.characters(blacklist_characters="=\x00\n\r", blacklist_categories=["Cs"])
#: Attribute values: anything but NUL and newline; "=" is allowed (SRS senders hold it).
VALUE_CHARS = st.characters(blacklist_characters="\x00\n\r", blacklist_categories=["Cs"])
ADDRESS = st.one_of(
    st.just(""),
    st.sampled_from(
        [
            "john@fabrikam.com",
            "alerts@contoso.com",
            "kate@tailspintoys.com",
            "bob@contoso.com",
            "SRS0=HHH=TT=fabrikam.com=john@contoso.com",
            "<>",
            "@",
            "user@",
            "@domain",
            "a@b@c",
            "ünï@cöntoso.com",
            "x@" + "a" * 70 + ".com",
            "x@.",
            "x@xn--",
            "x@-.-",
        ]
    ),
    st.text(VALUE_CHARS, max_size=40),
    st.builds("{}@{}".format, st.text(VALUE_CHARS, max_size=12), st.text(VALUE_CHARS, max_size=20)),
)
STATE = st.sampled_from(["RCPT", "DATA", "MAIL", "END-OF-MESSAGE", "CONNECT", "", "rcpt"]) | (
    st.text(VALUE_CHARS, max_size=8)
)


@st.composite
def requests(draw: st.DrawFn) -> list[tuple[str, str]]:
    """A well-formed request: Postfix's key attributes (maybe) plus random ones, distinct names."""
    attrs: dict[str, str] = {}
    if draw(st.booleans()):
        attrs["request"] = draw(st.sampled_from(["smtpd_access_policy"] * 3 + ["junk", ""]))
        attrs["protocol_state"] = draw(STATE)
        attrs["sender"] = draw(ADDRESS)
        attrs["recipient"] = draw(ADDRESS)
        attrs["instance"] = draw(st.sampled_from(["1", "2", ""]) | st.text(VALUE_CHARS, max_size=6))
    extra = draw(
        st.dictionaries(
            st.text(NAME_CHARS, max_size=10), st.text(VALUE_CHARS, max_size=30), max_size=8
        )
    )
    for name, value in extra.items():
        attrs.setdefault(name, value)
    items = list(attrs.items())
    return draw(st.permutations(items)) if items else items


@FAST
@given(stream=NOISE, cuts=st.lists(st.integers(0, 10_000), max_size=12), limit=st.integers(16, 400))
def test_arbitrary_bytes_give_only_whole_replies_from_the_real_engine(
    config: Config, stream: bytes, cuts: list[int], limit: int
) -> None:
    """Any bytes at any split points: no exception, only whole replies, one per request handled."""
    connection = Connection(config, max_request_bytes=limit)
    connection.feed(stream, cuts)
    replies = connection.replies()
    assert len(replies) == connection.answered
    assert connection.stats.internal_errors == 0
    # The connection is closed exactly when a malformed request was counted.
    closed = connection.transport.disconnecting
    assert sum(connection.stats.protocol_errors.values()) == (1 if closed else 0)


@FAST
@given(
    batch=st.lists(requests(), min_size=1, max_size=8),
    cuts=st.lists(st.integers(0, 10_000), max_size=12),
)
def test_valid_requests_are_each_answered_once_at_any_split(
    config: Config, batch: list[list[tuple[str, str]]], cuts: list[int]
) -> None:
    """Valid UTF-8 requests of random attributes are all answered, one reply each, in any reads."""
    stream = b"".join(encode(attrs) for attrs in batch)
    whole = Connection(config)
    whole.feed(stream, [])
    split = Connection(config)
    split.feed(stream, cuts)
    assert len(whole.replies()) == len(batch)
    assert split.replies() == whole.replies()
    assert not split.transport.disconnecting
    assert split.stats.internal_errors == 0
    assert sum(split.stats.protocol_errors.values()) == 0


class Recorder:
    """A handler that records the attributes the protocol hands over."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []

    def new_session(self) -> object:
        return None

    def handle(self, attrs: Mapping[str, str], session: object) -> str:
        self.seen.append(dict(attrs))
        return "DUNNO"


@settings(max_examples=150, deadline=None)
@given(
    batch=st.lists(requests(), min_size=1, max_size=6),
    cuts=st.lists(st.integers(0, 10_000), max_size=12),
)
@pytest.mark.slow
def test_valid_requests_reach_the_handler_exactly_as_sent(
    batch: list[list[tuple[str, str]]], cuts: list[int]
) -> None:
    """Every attribute the engine relies on arrives with its exact value, and nothing else does."""
    recorder = Recorder()
    stats = Stats()

    factory = PolicyFactory(recorder, stats, Limits(), Clock())
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    stream = b"".join(encode(attrs) for attrs in batch)
    points = sorted({0, len(stream), *(cut % (len(stream) + 1) for cut in cuts)})
    for start, end in pairwise(points):
        protocol.dataReceived(stream[start:end])
    assert len(recorder.seen) == len(batch)
    for seen, sent in zip(recorder.seen, map(dict, batch), strict=True):
        assert all(sent.get(name) == value for name, value in seen.items())
        assert all(seen.get(name) == sent[name] for name in WANTED_ATTRIBUTES if name in sent)
    assert transport.value() == b"action=DUNNO\n\n" * len(batch)


@FAST
@given(
    batch=st.lists(requests(), min_size=1, max_size=5),
    garbage=NOISE,
    cuts=st.lists(st.integers(0, 10_000), max_size=12),
)
@pytest.mark.slow
def test_valid_requests_before_garbage_are_all_answered_first(
    config: Config, batch: list[list[tuple[str, str]]], garbage: bytes, cuts: list[int]
) -> None:
    """Garbage after valid requests never costs them their answers, which come first and intact."""
    valid = b"".join(encode(attrs) for attrs in batch)
    alone = Connection(config)
    alone.feed(valid, [])
    expected = alone.replies()
    assert len(expected) == len(batch)
    mixed = Connection(config)
    mixed.feed(valid + garbage, cuts)
    replies = mixed.replies()
    assert replies[: len(batch)] == expected
    assert len(replies) == mixed.answered
    assert mixed.stats.internal_errors == 0


def test_the_engine_fixture_tells_refused_from_accepted(config: Config) -> None:
    """The engine behind the properties gives real answers: a known refusal and an acceptance."""
    connection = Connection(config)
    common = [("request", "smtpd_access_policy"), ("protocol_state", "RCPT")]
    refused = [*common, ("sender", "john@fabrikam.com"), ("recipient", "kate@tailspintoys.com")]
    accepted = [*common, ("sender", "alerts@contoso.com"), ("recipient", "kate@tailspintoys.com")]
    connection.feed(encode(refused) + encode(accepted), [])
    assert connection.replies() == [REFUSED_TEXT, "DUNNO"]


# --- the alias-map parser ------------------------------------------------------------------------

#: Postfix's ISSPACE (C locale): the only characters that separate key, value and lines.
C_SPACE = " \t\n\v\f\r"
SEPARATOR = st.text(st.sampled_from(" \t"), min_size=1, max_size=3)
#: Key characters: anything but C whitespace, quotes and backslashes (those start quoted keys).
KEY_CHARS = st.characters(blacklist_characters=C_SPACE + '"\\', blacklist_categories=["Cs"])
#: Value characters: anything but a line end (CR, VT and FF are kept inside a value).
VALUE_TEXT_CHARS = st.characters(blacklist_characters="\n", blacklist_categories=["Cs"])


def _trimmed(text: str) -> bool:
    return bool(text) and text == text.strip(C_SPACE)


KEYS = st.text(KEY_CHARS, min_size=1, max_size=30).filter(lambda key: not key.startswith("#"))
#: A value: words (no C whitespace at either end) joined by runs of blanks.
VALUE_WORDS = st.lists(
    st.text(VALUE_TEXT_CHARS, min_size=1, max_size=15).filter(_trimmed), min_size=1, max_size=4
)


@settings(max_examples=300, deadline=None)
@given(text=st.text(st.characters(blacklist_categories=["Cs"]), max_size=300))
def test_alias_parser_raises_only_config_errors_on_any_text(text: str) -> None:
    """Any text: the parser returns a table or raises ConfigError naming file and line."""
    try:
        entries, warnings = parse_source(text, "/etc/postfix/virtual")
    except ConfigError as error:
        assert error.file == "/etc/postfix/virtual"
        assert error.key.startswith("line ")
        return
    assert all(isinstance(k, str) and isinstance(v, str) and v for k, v in entries.items())
    assert all(isinstance(w, str) for w in warnings)


@settings(max_examples=300, deadline=None)
@given(
    text=st.lists(
        st.sampled_from(["a", "b c", " ", "\t", "\n", "#", '"', "\\", "\r", "\v", "x:", "É"]),
        max_size=40,
    ).map("".join)
)
def test_alias_parser_raises_only_config_errors_on_line_soup(text: str) -> None:
    """Text built from the characters that matter to the format: still only ConfigError."""
    try:
        parse_source(text, "virtual")
    except ConfigError as error:
        assert error.key.startswith("line ")


@st.composite
def postmap_tables(draw: st.DrawFn) -> tuple[str, dict[str, str]]:
    """A postmap(1) source file with comments, blank and continuation lines; its meaning."""
    expected: dict[str, str] = {}
    lines: list[str] = []
    for key, words in draw(st.lists(st.tuples(KEYS, VALUE_WORDS), max_size=12)):
        gaps = [draw(SEPARATOR) for _ in words[1:]]
        value = words[0] + "".join(gap + word for gap, word in zip(gaps, words[1:], strict=True))
        expected.setdefault(key.casefold(), value)  # the first of duplicate keys wins
        # Each later word may go onto a continuation line, which starts with its own gap.
        line = key + draw(SEPARATOR) + words[0]
        for gap, word in zip(gaps, words[1:], strict=True):
            if draw(st.booleans()) and not word.startswith("#"):
                lines.append(line)
                line = gap + word
            else:
                line += gap + word
        lines.append(line + draw(st.sampled_from(["", " ", "\t", "\r"])))
        if draw(st.booleans()):
            lines.append(draw(st.sampled_from(["", "   ", "# a comment", "  # indented comment"])))
    return "\n".join(lines) + draw(st.sampled_from(["", "\n"])), expected


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(table=postmap_tables())
def test_alias_tables_round_trip_through_the_postmap_format(
    table: tuple[str, dict[str, str]],
) -> None:
    """Generated tables written in postmap format parse back, keys folded to lower case."""
    text, expected = table
    entries, _ = parse_source(text, "virtual")
    assert entries == expected


# --- the export parsers --------------------------------------------------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from(
        ["OnPremises", "Partner", "1", "2", "True", "203.0.113.0/24", "*.contoso.com", "smtp:*;1"]
    ),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "Name",
                    "DomainName",
                    "DomainType",
                    "ConnectorType",
                    "Enabled",
                    "SenderIPAddresses",
                    "TlsSenderCertificateName",
                    "SenderDomains",
                    "MatchSubDomains",
                    "value",
                    "Address",
                    "Expression",
                    "LowerBound",
                    "UpperBound",
                    "CertificateSubject",
                ]
            )
            | st.text(max_size=8),
            children,
            max_size=5,
        )
    ),
    max_leaves=20,
)


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(data=JSON)
def test_export_parsers_raise_only_config_errors_on_any_json(data: object) -> None:
    """Any JSON value: both export parsers return entries or raise ConfigError naming the file."""
    for parse in (parse_accepted_domains, parse_inbound_connectors):
        try:
            parse(data, "export.json")
        except ConfigError as error:
            assert error.file == "export.json"
            assert error.problem


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=64) | st.sampled_from([b"\xef\xbb\xbf\xff", b"\xff\xfe\x00\xd8"]))
def test_export_decoding_raises_only_config_errors_on_any_bytes(raw: bytes) -> None:
    """Any bytes: decoding an export gives text or a ConfigError that says how to fix it."""
    try:
        assert isinstance(decode_export(raw, "export.json"), str)
    except ConfigError as error:
        assert error.key == "encoding"


LABEL = st.text(string.ascii_letters + string.digits, min_size=1, max_size=10)
DOMAIN = st.lists(LABEL, min_size=2, max_size=4).map(".".join)
NETWORK = st.tuples(st.integers(0, 2**32 - 1), st.integers(8, 32)).map(
    lambda pair: ipaddress.ip_network(pair, strict=False)
)


def cased(draw: st.DrawFn, name: str) -> str:
    """A field name as PowerShell writes it, or in another case (names match in any case)."""
    return draw(st.sampled_from([name, name.lower(), name.upper()]))


def enum_form(draw: st.DrawFn, name: str, numbers: Mapping[int, str]) -> object:
    """An enum value as a name, a number, or a number in a string."""
    number = next(key for key, value in numbers.items() if value == name)
    return draw(st.sampled_from([name, number, str(number)]))


def bool_form(draw: st.DrawFn, value: bool) -> object:
    return draw(st.sampled_from([value, str(value), str(value).lower()]))


@st.composite
def accepted_domains(draw: st.DrawFn) -> tuple[dict[str, object], AcceptedDomain]:
    """An accepted domain as ``Get-AcceptedDomain | ConvertTo-Json`` writes it; the model object."""
    domain = draw(DOMAIN)
    domain_type = draw(st.sampled_from(sorted(DOMAIN_TYPES.values())))
    flags = draw(st.tuples(*[st.booleans()] * 4))
    obj: dict[str, object] = {
        cased(draw, "DomainName"): domain,
        cased(draw, "DomainType"): enum_form(draw, domain_type, DOMAIN_TYPES),
        cased(draw, "MatchSubDomains"): bool_form(draw, flags[0]),
        cased(draw, "Default"): bool_form(draw, flags[1]),
        cased(draw, "InitialDomain"): bool_form(draw, flags[2]),
        cased(draw, "SendingFromDomainDisabled"): bool_form(draw, flags[3]),
        "Identity": draw(st.text(max_size=10)),  # unknown fields are ignored
    }
    model = AcceptedDomain(
        domain=domain.lower(),
        match_subdomains=flags[0],
        domain_type=domain_type,
        default=flags[1],
        initial=flags[2],
        sending_from_domain_disabled=flags[3],
        source="export.json",
    )
    return obj, model


@st.composite
def inbound_connectors(draw: st.DrawFn) -> tuple[dict[str, object], InboundConnector]:
    """An inbound connector as ``Get-InboundConnector | ConvertTo-Json`` writes it; the model."""
    name = draw(st.text(string.ascii_letters + " -", min_size=1, max_size=20).filter(str.strip))
    kind = draw(st.sampled_from([ON_PREMISES, PARTNER]))
    enabled = draw(st.booleans())
    networks = draw(st.lists(NETWORK, max_size=4))
    certificate = draw(st.one_of(st.just(""), DOMAIN, DOMAIN.map("*.{}".format)))
    sender_domains = draw(st.lists(DOMAIN | st.just("*"), max_size=3))
    obj: dict[str, object] = {
        cased(draw, "Name"): name,
        cased(draw, "ConnectorType"): enum_form(draw, kind, CONNECTOR_TYPES),
        cased(draw, "Enabled"): bool_form(draw, enabled),
        cased(draw, "SenderIPAddresses"): [str(network) for network in networks],
        cased(draw, "TlsSenderCertificateName"): certificate or None,
        cased(draw, "SenderDomains"): [f"smtp:{domain};1" for domain in sender_domains],
        "WhenChanged": "2026-01-01T00:00:00",
    }
    model = InboundConnector(
        name=name.strip(),
        connector_type=kind,
        enabled=enabled,
        sender_ip_addresses=tuple(networks),
        tls_sender_certificate_name=certificate.lower(),
        sender_domains=tuple(domain.lower() for domain in sender_domains),
        source="export.json",
    )
    return obj, model


def shaped(draw: st.DrawFn, objects: list[dict[str, object]]) -> object:
    """The export as PowerShell writes it: one bare object for one result, else an array."""
    if len(objects) == 1 and draw(st.booleans()):
        return objects[0]
    return objects


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(data=st.data(), entries=st.lists(accepted_domains(), min_size=1, max_size=4))
def test_accepted_domains_round_trip_through_json(
    data: st.DataObject, entries: list[tuple[dict[str, object], AcceptedDomain]]
) -> None:
    """Generated accepted domains, written as an export (object or array), parse back equal."""
    export = shaped(data.draw, [obj for obj, _ in entries])
    parsed = parse_accepted_domains(json.loads(json.dumps(export)), "export.json")
    assert parsed == tuple(model for _, model in entries)


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(data=st.data(), entries=st.lists(inbound_connectors(), min_size=1, max_size=4))
def test_inbound_connectors_round_trip_through_json(
    data: st.DataObject, entries: list[tuple[dict[str, object], InboundConnector]]
) -> None:
    """Generated connectors, written as an export (object or array), parse back equal."""
    export = shaped(data.draw, [obj for obj, _ in entries])
    parsed = parse_inbound_connectors(json.loads(json.dumps(export)), "export.json")
    assert parsed == tuple(model for _, model in entries)


# --- the atheris harness (make fuzz) ----------------------------------------------------------


def _fuzz_harness() -> object:
    """``fuzz/fuzz_protocol.py`` as a module (it is a script, not part of the package)."""
    import importlib.util

    path = ROOT / "fuzz" / "fuzz_protocol.py"
    spec = importlib.util.spec_from_file_location("fuzz_protocol", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SEEDS = sorted((ROOT / "tests" / "data" / "requests").glob("*.txt"))


def test_fuzz_harness_accepts_the_seed_requests_and_hostile_inputs() -> None:
    """The make-fuzz harness runs without atheris and its invariant holds on seeds and junk."""
    harness: Any = _fuzz_harness()
    inputs = [path.read_bytes() for path in SEEDS]
    assert inputs
    inputs += [b"", b"\x80", b"\x81\x00\x01\x02" + inputs[0], b"\xfe\x05\x05\x05" + b"a=b\n" * 50]
    inputs += [b"\x83\x00\x00\x00protocol_state=RCPT\n\x00\n\n", b"no equals\n\n", b"\xff\xfe\n\n"]
    for data in inputs:
        harness.check(data)


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=200) | NOISE)
def test_fuzz_harness_invariant_holds_on_random_inputs(data: bytes) -> None:
    """The harness's check passes on random inputs (what make fuzz explores for longer)."""
    harness: Any = HARNESS
    harness.check(data)


HARNESS = _fuzz_harness()
