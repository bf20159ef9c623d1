"""The Postfix policy protocol layer: framing, limits and failures, without sockets."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from policyd.engine import stats as kinds
from policyd.engine.stats import Stats
from policyd.wire.protocol import WANTED_ATTRIBUTES, PolicyFactory, PolicyProtocol, describe_peer

DATA = Path(__file__).parent / "data" / "requests"
STREAMS = sorted(DATA.glob("*.txt"))
STREAM_IDS = [path.stem for path in STREAMS]


@dataclass(frozen=True)
class Limits:
    """Stands in for ``policyd.sources.config.ServerSettings``."""

    max_connections: int = 8
    idle_timeout: float = 300.0
    max_request_bytes: int = 65536


class RecordingHandler:
    """Answers each request with an action naming its position, and remembers what it saw."""

    def __init__(self) -> None:
        self.seen: list[tuple[dict[str, str], object]] = []
        self.sessions = 0

    def new_session(self) -> object:
        self.sessions += 1
        return f"session-{self.sessions}"

    def handle(self, attrs: Mapping[str, str], session: object) -> str:
        self.seen.append((dict(attrs), session))
        return f"INFO request {len(self.seen)} {attrs.get('protocol_state', '-')}"

    def expected_output(self, count: int, states: list[str]) -> bytes:
        return b"".join(
            f"action=INFO request {n} {states[n - 1]}\n\n".encode() for n in range(1, count + 1)
        )


class WriteLog(StringTransport):
    """A StringTransport that also remembers each ``write`` call separately."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)

    def abortConnection(self) -> None:  # noqa: N802 - Twisted name
        self.aborted = True
        super().abortConnection()


def make_factory(
    handler: object | None = None, limits: Limits | None = None
) -> tuple[PolicyFactory, Stats, Clock]:
    """A factory on a fresh Stats and Clock."""
    stats = Stats()
    clock = Clock()
    factory = PolicyFactory(
        handler if handler is not None else RecordingHandler(),  # type: ignore[arg-type]
        stats,
        limits or Limits(),
        clock,
    )
    return factory, stats, clock


def connect(factory: PolicyFactory) -> tuple[PolicyProtocol, WriteLog]:
    """Build a protocol and connect it to an in-memory transport."""
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = WriteLog()
    protocol.makeConnection(transport)
    return protocol, transport


def lose(protocol: PolicyProtocol) -> None:
    """Tell the protocol its connection is gone, as the reactor would."""
    protocol.connectionLost(Failure(ConnectionError("closed")))


def reference_parse(stream: bytes) -> list[dict[str, str]]:
    """An independent, obviously-correct reading of a stream of well-formed requests."""
    text = stream.decode("utf-8")
    assert text.endswith("\n\n")
    requests = []
    for block in text[:-2].split("\n\n"):
        attrs = {}
        for line in block.split("\n"):
            name, _, value = line.partition("=")
            attrs[name] = value
        requests.append(attrs)
    return requests


def handed_over(requests: list[dict[str, str]]) -> list[dict[str, str]]:
    """What the engine receives of each request: the wanted attributes only."""
    return [{k: v for k, v in attrs.items() if k in WANTED_ATTRIBUTES} for attrs in requests]


def chunks(stream: bytes, size: int) -> Iterator[bytes]:
    """``stream`` in reads of ``size`` bytes."""
    for start in range(0, len(stream), size):
        yield stream[start : start + size]


def replay(
    stream: bytes, reads: Iterator[bytes] | list[bytes]
) -> tuple[RecordingHandler, WriteLog]:
    """Feed ``reads`` to a fresh connection; return what the handler saw and what was written."""
    handler = RecordingHandler()
    factory, _, clock = make_factory(handler)
    # Answering per read, whatever the machine's speed: the turn budget has its own test.
    factory.turn_budget = float("inf")
    protocol, transport = connect(factory)
    for data in reads:
        protocol.dataReceived(data)
    assert not [call for call in clock.calls if call.getTime() == 0.0]  # nothing left for later
    return handler, transport


def check_replay(stream: bytes, handler: RecordingHandler, transport: WriteLog) -> None:
    """The handler saw every request of ``stream`` in order, and exactly one reply each."""
    expected = reference_parse(stream)
    assert [attrs for attrs, _ in handler.seen] == handed_over(expected)
    assert len({session for _, session in handler.seen}) == 1
    states = [attrs.get("protocol_state", "-") for attrs in expected]
    assert transport.value() == handler.expected_output(len(expected), states)
    assert not transport.disconnecting


# --- the sample streams --------------------------------------------------------------------


def test_sample_streams_are_realistic_postfix_37_requests() -> None:
    """Every sample request carries Postfix 3.7's ~30 attributes, with the wanted ones present."""
    assert len(STREAMS) >= 3
    for path in STREAMS:
        requests = reference_parse(path.read_bytes())
        for attrs in requests:
            assert len(attrs) >= 28
            assert set(WANTED_ATTRIBUTES) <= set(attrs)
            assert attrs["request"] == "smtpd_access_policy"
        rcpts = [attrs for attrs in requests if attrs["protocol_state"] == "RCPT"]
        assert rcpts[0]["queue_id"] == ""  # before the queue file exists
        assert any(attrs["protocol_state"] == "DATA" for attrs in requests)


@pytest.mark.parametrize("path", STREAMS, ids=STREAM_IDS)
def test_every_read_size_gives_the_same_requests_and_replies(path: Path) -> None:
    """Replaying a stream in reads of every size from 1 byte to all of it changes nothing."""
    stream = path.read_bytes()
    for size in range(1, len(stream) + 1):
        handler, transport = replay(stream, chunks(stream, size))
        check_replay(stream, handler, transport)


@settings(max_examples=150, deadline=None)
@given(
    index=st.integers(0, len(STREAMS) - 1),
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=40),
)
def test_random_splits_give_the_same_requests_and_replies(index: int, cuts: list[int]) -> None:
    """Cutting a stream at arbitrary points (multi-byte UTF-8 included) changes nothing."""
    stream = STREAMS[index].read_bytes()
    points = sorted({0, len(stream), *(cut % (len(stream) + 1) for cut in cuts)})
    reads = [stream[a:b] for a, b in pairwise(points)]
    handler, transport = replay(stream, reads)
    check_replay(stream, handler, transport)


@pytest.mark.parametrize("path", STREAMS, ids=STREAM_IDS)
def test_requests_in_one_read_are_answered_with_one_write(path: Path) -> None:
    """All complete requests found in one read get their replies in a single write."""
    stream = path.read_bytes()
    handler, transport = replay(stream, [stream])
    assert len(handler.seen) >= 2
    assert len(transport.writes) == 1
    check_replay(stream, handler, transport)


def test_one_write_per_read_that_completes_a_request() -> None:
    """Requests arriving one per read are answered one write each, nothing in between."""
    stream = STREAMS[0].read_bytes()
    requests = [block + b"\n\n" for block in stream[:-2].split(b"\n\n")]
    handler, transport = replay(stream, requests)
    assert len(transport.writes) == len(requests)
    assert all(write.startswith(b"action=") for write in transport.writes)
    assert all(write.count(b"\n") == 2 and write.endswith(b"\n\n") for write in transport.writes)
    check_replay(stream, handler, transport)


def test_each_connection_has_its_own_session() -> None:
    """The handler's per-connection state is created once per connection and passed each time."""
    handler = RecordingHandler()
    factory, _, _ = make_factory(handler)
    first, _ = connect(factory)
    second, _ = connect(factory)
    request = b"protocol_state=RCPT\nrecipient=a@b.example\n\n"
    first.dataReceived(request)
    second.dataReceived(request)
    first.dataReceived(request)
    assert [session for _, session in handler.seen] == ["session-1", "session-2", "session-1"]


def test_values_keep_equals_signs_and_unknown_names() -> None:
    """A value is everything after the first "=", and unknown names are validated, not passed."""
    handler, transport = replay(b"", [b"sender=a=b@x.example\nnew_attribute_3_12=\n\n"])
    assert handler.seen[0][0] == {"sender": "a=b@x.example"}
    assert transport.value() == b"action=INFO request 1 -\n\n"


def test_a_repeated_name_keeps_its_first_value() -> None:
    """Postfix never repeats a name; if a client does, the first value counts (allowed by the
    protocol), and the attribute on the first line is found as well as the others."""
    handler, _ = replay(b"", [b"sender=first@x.example\nrecipient=r@y\nsender=second@x\n\n"])
    assert handler.seen[0][0] == {"sender": "first@x.example", "recipient": "r@y"}


def test_an_empty_request_is_answered() -> None:
    """A blank line where a request starts is a request with no attributes, and is answered."""
    handler, transport = replay(b"", [b"\n", b"protocol_state=RCPT\n\n\n"])
    assert [attrs for attrs, _ in handler.seen] == [{}, {"protocol_state": "RCPT"}, {}]
    assert transport.value().count(b"action=") == 3


def test_crlf_line_ends_are_read_as_lf_even_split_between_reads() -> None:
    """A hand-typed CRLF request is answered like Postfix's LF one; a lone CR stays in the value."""
    crlf = b"protocol_state=RCPT\r\nsender=odd\rname\r\n\r\n"
    for size in range(1, len(crlf) + 1):
        handler, transport = replay(b"", chunks(crlf, size))
        assert [attrs for attrs, _ in handler.seen] == [
            {"protocol_state": "RCPT", "sender": "odd\rname"}
        ]
        assert transport.value() == b"action=INFO request 1 RCPT\n\n"


def test_request_duration_is_observed_per_request() -> None:
    """Each handled request adds one observation to the duration histogram."""
    stream = STREAMS[0].read_bytes()
    factory, stats, _ = make_factory()
    protocol, _ = connect(factory)
    protocol.dataReceived(stream)
    assert stats.duration_count == len(reference_parse(stream))
    assert sum(stats.duration_buckets) == stats.duration_count


# --- malformed input -----------------------------------------------------------------------

GOOD = b"request=smtpd_access_policy\nprotocol_state=RCPT\nrecipient=a@contoso.com\n\n"
MALFORMED = {
    kinds.NO_EQUALS: b"request=smtpd_access_policy\nthis line has no equals sign\n\n",
    kinds.NUL_BYTE: b"request=smtpd_access_policy\nsender=a\x00b@x.example\n\n",
    kinds.INVALID_UTF8: b"request=smtpd_access_policy\nsender=\xc3\x28@x.example\n\n",
    kinds.TOO_LARGE: b"request=smtpd_access_policy\nhelo_name=" + b"h" * 300 + b"\n\n",
}
SMALL = Limits(max_request_bytes=256)


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_request_closes_without_reply_after_answering_earlier_ones(kind: str) -> None:
    """Requests before the bad one are answered; then the connection closes, counted, no reply."""
    handler = RecordingHandler()
    factory, stats, _ = make_factory(handler, SMALL)
    protocol, transport = connect(factory)
    protocol.dataReceived(GOOD + GOOD + MALFORMED[kind] + GOOD)
    assert transport.value() == b"action=INFO request 1 RCPT\n\naction=INFO request 2 RCPT\n\n"
    assert transport.disconnecting
    assert dict(stats.protocol_errors) == {kind: 1}
    protocol.dataReceived(GOOD)  # anything after the close is ignored
    assert len(handler.seen) == 2
    assert dict(stats.protocol_errors) == {kind: 1}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_request_gives_the_same_outcome_at_every_read_size(kind: str) -> None:
    """However the bad stream is split, the same requests are answered and the same kind counted."""
    stream = GOOD + MALFORMED[kind] + GOOD
    for size in range(1, len(stream) + 1):
        handler = RecordingHandler()
        factory, stats, _ = make_factory(handler, SMALL)
        protocol, transport = connect(factory)
        for data in chunks(stream, size):
            protocol.dataReceived(data)
        assert transport.value() == b"action=INFO request 1 RCPT\n\n", size
        assert transport.disconnecting, size
        assert dict(stats.protocol_errors) == {kind: 1}, size


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_other_connections_keep_answering_after_a_malformed_one(kind: str) -> None:
    """One connection's bad request leaves another connection of the same factory working."""
    factory, stats, _ = make_factory(RecordingHandler(), SMALL)
    healthy, healthy_transport = connect(factory)
    broken, broken_transport = connect(factory)
    healthy.dataReceived(GOOD[:20])
    broken.dataReceived(MALFORMED[kind])
    healthy.dataReceived(GOOD[20:] + GOOD)
    assert broken_transport.value() == b""
    assert broken_transport.disconnecting
    assert healthy_transport.value().count(b"action=") == 2
    assert not healthy_transport.disconnecting
    assert stats.protocol_errors[kind] == 1


@pytest.mark.parametrize(
    "request_",
    [
        b"no equals sign on the only line\n\n",
        b"first line without\nprotocol_state=RCPT\n\n",
        b"protocol_state=RCPT\nlast line without\n\n",
        b"protocol_state=RCPT\nmiddle line without\nrecipient=a@contoso.com\n\n",
        b"sender=a=b@x.example\nthe extra equals sign above does not make up for this\nx=y\n\n",
        b"sender=SRS0=HHH=TT=fabrikam.example=john@contoso.com\n\xc3\xbcber\n\n",
    ],
    ids=["only", "first", "last", "middle", "two-and-none", "srs-and-none"],
)
def test_any_line_without_equals_is_malformed(request_: bytes) -> None:
    """Every line must carry "=", wherever it is and whatever the other lines hold."""
    handler = RecordingHandler()
    factory, stats, _ = make_factory(handler)
    protocol, transport = connect(factory)
    protocol.dataReceived(GOOD + request_)
    assert transport.value() == b"action=INFO request 1 RCPT\n\n"
    assert dict(stats.protocol_errors) == {kinds.NO_EQUALS: 1}


def test_values_with_equals_signs_next_to_plain_ones() -> None:
    """An SRS sender full of "=" is read whole, and the plain attributes around it too."""
    stream = (
        b"protocol_state=RCPT\nsender=SRS0=HHH=TT=fabrikam.example=john@contoso.com\n"
        b"recipient=kate@contoso.com\n\nprotocol_state=DATA\nrecipient_count=1\n\n"
    )
    handler, _ = replay(stream, [stream])
    assert [attrs for attrs, _ in handler.seen] == handed_over(reference_parse(stream))


def test_request_of_exactly_max_bytes_is_answered_and_one_more_is_not() -> None:
    """max_request_bytes counts the request with its blank line; one byte over closes."""
    limit = SMALL.max_request_bytes
    prefix = b"protocol_state=RCPT\nhelo_name="
    fits = prefix + b"h" * (limit - len(prefix) - 2) + b"\n\n"
    assert len(fits) == limit
    too_big = prefix + b"h" * (limit - len(prefix) - 1) + b"\n\n"
    for size in (1, 7, limit, limit + 1):
        factory, stats, _ = make_factory(RecordingHandler(), SMALL)
        protocol, transport = connect(factory)
        for data in chunks(fits + too_big, size):
            protocol.dataReceived(data)
        assert transport.value() == b"action=INFO request 1 RCPT\n\n"
        assert dict(stats.protocol_errors) == {kinds.TOO_LARGE: 1}


def test_unterminated_request_is_closed_once_it_reaches_the_limit() -> None:
    """A request that never ends is dropped as soon as it reaches max_request_bytes."""
    factory, stats, _ = make_factory(RecordingHandler(), SMALL)
    protocol, transport = connect(factory)
    for _ in range(SMALL.max_request_bytes // 16 - 1):
        protocol.dataReceived(b"x=" + b"y" * 13 + b"\n")
    assert not transport.disconnecting
    protocol.dataReceived(b"x=" + b"y" * 13 + b"\n")
    assert transport.disconnecting
    assert transport.value() == b""
    assert dict(stats.protocol_errors) == {kinds.TOO_LARGE: 1}


def test_nul_in_a_later_read_of_a_pending_request_is_caught() -> None:
    """A NUL byte arriving after the start of a request closes the connection without a reply."""
    factory, stats, _ = make_factory()
    protocol, transport = connect(factory)
    protocol.dataReceived(b"request=smtpd_access_policy\nsender=")
    protocol.dataReceived(b"a\x00b\n")
    assert transport.disconnecting
    assert transport.value() == b""
    assert dict(stats.protocol_errors) == {kinds.NUL_BYTE: 1}


def test_new_limit_applies_to_the_next_read_after_reload() -> None:
    """Replacing factory.settings takes effect on open connections at their next read."""
    factory, stats, _ = make_factory(RecordingHandler(), Limits(max_request_bytes=4096))
    protocol, transport = connect(factory)
    protocol.dataReceived(MALFORMED[kinds.TOO_LARGE])
    assert transport.value().count(b"action=") == 1
    factory.settings = replace(factory.settings, max_request_bytes=256)  # type: ignore[type-var]
    protocol.dataReceived(MALFORMED[kinds.TOO_LARGE])
    assert transport.disconnecting
    assert dict(stats.protocol_errors) == {kinds.TOO_LARGE: 1}


# --- connection limit ----------------------------------------------------------------------


def test_connections_beyond_the_limit_are_closed_at_once_and_counted() -> None:
    """The connection over max_connections is closed unanswered; a freed slot is reusable."""
    handler = RecordingHandler()
    factory, stats, _ = make_factory(handler, Limits(max_connections=2))
    first, first_transport = connect(factory)
    connect(factory)
    third, third_transport = connect(factory)
    assert third_transport.disconnecting
    assert not first_transport.disconnecting
    assert stats.protocol_errors[kinds.TOO_MANY_CONNECTIONS] == 1
    assert factory.open_count == 2
    assert stats.connections == 2
    assert handler.sessions == 2
    third.dataReceived(GOOD)
    assert third_transport.value() == b""
    lose(third)
    assert stats.connections == 2  # the refused one was never counted as open
    lose(first)
    assert factory.open_count == 1
    _, fourth_transport = connect(factory)
    assert not fourth_transport.disconnecting
    assert stats.connections == 2
    assert stats.protocol_errors[kinds.TOO_MANY_CONNECTIONS] == 1


def test_connection_gauge_goes_up_and_down() -> None:
    """stats.connections and open_count follow connections made and lost."""
    factory, stats, _ = make_factory()
    protocols = [connect(factory)[0] for _ in range(3)]
    assert (stats.connections, factory.open_count) == (3, 3)
    for protocol in protocols:
        lose(protocol)
    assert (stats.connections, factory.open_count) == (0, 0)
    lose(protocols[0])  # a repeated notification does not count twice
    assert stats.connections == 0


# --- idle timeout --------------------------------------------------------------------------


def test_idle_connection_is_closed_at_the_timeout_and_not_before() -> None:
    """No data for idle_timeout seconds closes the connection; a read restarts the wait."""
    factory, stats, clock = make_factory(RecordingHandler(), Limits(idle_timeout=300))
    protocol, transport = connect(factory)
    clock.advance(299.9)
    assert not transport.disconnecting
    protocol.dataReceived(GOOD)  # activity at t=299.9: the deadline moves to 599.9
    clock.advance(299.8)
    assert not transport.disconnecting
    assert stats.protocol_errors[kinds.IDLE_TIMEOUT] == 0
    clock.advance(0.2)
    assert transport.disconnecting
    assert transport.value() == b"action=INFO request 1 RCPT\n\n"
    assert dict(stats.protocol_errors) == {kinds.IDLE_TIMEOUT: 1}


def test_each_connection_times_out_on_its_own_deadline() -> None:
    """Connections opened at different times close at their own deadlines, counted once each."""
    factory, stats, clock = make_factory(RecordingHandler(), Limits(idle_timeout=60))
    _, early = connect(factory)
    clock.advance(25)
    _, late = connect(factory)
    clock.advance(35)
    assert early.disconnecting
    assert not late.disconnecting
    clock.advance(24.9)
    assert not late.disconnecting
    clock.advance(0.1)
    assert late.disconnecting
    clock.advance(600)
    assert dict(stats.protocol_errors) == {kinds.IDLE_TIMEOUT: 2}


def test_no_timer_is_left_when_no_connection_is_open() -> None:
    """The idle sweep stops when the last connection goes, and restarts with the next one."""
    factory, _, clock = make_factory(RecordingHandler(), Limits(idle_timeout=60))
    protocol, _ = connect(factory)
    assert len(clock.getDelayedCalls()) == 1
    lose(protocol)
    assert clock.getDelayedCalls() == []
    _, transport = connect(factory)
    clock.advance(60)
    assert transport.disconnecting


def test_shorter_idle_timeout_on_reload_applies_to_open_connections() -> None:
    """A reload that shortens idle_timeout closes connections by the new deadline."""
    factory, stats, clock = make_factory(RecordingHandler(), Limits(idle_timeout=3600))
    _, transport = connect(factory)
    clock.advance(30)
    factory.settings = Limits(idle_timeout=60)
    clock.advance(29)
    assert not transport.disconnecting
    clock.advance(1)
    assert transport.disconnecting
    assert stats.protocol_errors[kinds.IDLE_TIMEOUT] == 1


def test_a_closing_connection_that_never_flushes_is_aborted() -> None:
    """A connection closed by us but still not gone one idle_timeout later is aborted."""
    factory, stats, clock = make_factory(RecordingHandler(), Limits(idle_timeout=60))
    protocol, transport = connect(factory)
    protocol.dataReceived(MALFORMED[kinds.NO_EQUALS])
    assert transport.disconnecting and not transport.aborted
    clock.advance(59)
    assert not transport.aborted
    clock.advance(1)
    assert transport.aborted
    assert dict(stats.protocol_errors) == {kinds.NO_EQUALS: 1}


# --- our own failures ----------------------------------------------------------------------


class ExplodingHandler(RecordingHandler):
    """Raises on the request whose recipient is "boom@x.example"."""

    def handle(self, attrs: Mapping[str, str], session: object) -> str:
        if attrs.get("recipient") == "boom@x.example":
            raise RuntimeError("bug in the engine")
        return super().handle(attrs, session)


def test_handler_exception_answers_dunno_and_is_counted() -> None:
    """A handler that raises gets DUNNO for that request, one internal error, and the rest go on."""
    factory, stats, _ = make_factory(ExplodingHandler())
    protocol, transport = connect(factory)
    protocol.dataReceived(GOOD + b"protocol_state=RCPT\nrecipient=boom@x.example\n\n" + GOOD)
    assert transport.value() == (
        b"action=INFO request 1 RCPT\n\naction=DUNNO\n\naction=INFO request 2 RCPT\n\n"
    )
    assert stats.internal_errors == 1
    assert not transport.disconnecting
    assert stats.duration_count == 3


class FixedAnswerHandler(RecordingHandler):
    """Answers every request with one fixed value, however wrong."""

    def __init__(self, answer: object) -> None:
        super().__init__()
        self.answer = answer

    def handle(self, attrs: Mapping[str, str], session: object) -> str:
        return self.answer  # type: ignore[return-value]


@pytest.mark.parametrize(
    "answer",
    [
        "",
        "DUNNO\n",
        "450 4.7.64 a\r\nb",
        "DUNNO\x00",
        None,
        ["DUNNO"],
        "PREPEND X: \udc80",
        "x" * 9000,
    ],
    ids=["empty", "newline", "crlf", "nul", "none", "list", "surrogate", "too-long"],
)
def test_an_answer_that_cannot_be_sent_becomes_dunno(answer: object) -> None:
    """An answer that would break the protocol is replaced by DUNNO and counted, every time."""
    factory, stats, _ = make_factory(FixedAnswerHandler(answer))
    protocol, transport = connect(factory)
    protocol.dataReceived(GOOD + GOOD)
    assert transport.value() == b"action=DUNNO\n\naction=DUNNO\n\n"
    assert stats.internal_errors == 2


def test_good_answers_are_sent_verbatim_in_utf8() -> None:
    """A well-formed answer, non-ASCII included, is sent as action=ANSWER and a blank line."""
    answer = "PREPEND X-M365-Relay: verdict=accept; code=none; reason=recipient-in-tenant; ü"
    factory, stats, _ = make_factory(FixedAnswerHandler(answer))
    protocol, transport = connect(factory)
    protocol.dataReceived(GOOD + GOOD)
    assert transport.value() == (b"action=" + answer.encode() + b"\n\n") * 2
    assert stats.internal_errors == 0


# --- shutdown ------------------------------------------------------------------------------


def test_disconnect_all_closes_every_connection_after_its_replies() -> None:
    """disconnect_all loses every open connection; replies already written stay in the stream."""
    factory, stats, _ = make_factory()
    connections = [connect(factory) for _ in range(3)]
    connections[0][0].dataReceived(GOOD)
    connections[1][0].dataReceived(GOOD[:10])
    factory.disconnect_all()
    assert all(transport.disconnecting for _, transport in connections)
    assert connections[0][1].value() == b"action=INFO request 1 RCPT\n\n"
    assert connections[1][1].value() == b""
    connections[1][0].dataReceived(GOOD[10:])  # no new answers once shutting down
    assert connections[1][1].value() == b""
    assert factory.open_count == 3  # until the reactor reports them lost
    for protocol, _ in connections:
        lose(protocol)
    assert (factory.open_count, stats.connections) == (0, 0)
    assert sum(stats.protocol_errors.values()) == 0


def test_nul_beyond_the_limit_counts_as_too_large_at_every_read_size() -> None:
    """A request already over the limit when a NUL arrives counts as too large, however split."""
    stream = GOOD + b"helo_name=" + b"h" * SMALL.max_request_bytes + b"\x00\n\n"
    for size in (1, 3, 100, len(stream)):
        factory, stats, _ = make_factory(RecordingHandler(), SMALL)
        protocol, transport = connect(factory)
        for data in chunks(stream, size):
            protocol.dataReceived(data)
        assert transport.value() == b"action=INFO request 1 RCPT\n\n"
        assert dict(stats.protocol_errors) == {kinds.TOO_LARGE: 1}, size


def test_idle_closed_connection_gets_a_full_timeout_to_flush() -> None:
    """After an idle close the connection is aborted only if still there one timeout later."""
    factory, _, clock = make_factory(RecordingHandler(), Limits(idle_timeout=60))
    _, transport = connect(factory)
    clock.advance(60)
    assert transport.disconnecting and not transport.aborted
    clock.advance(59)
    assert not transport.aborted
    clock.advance(1)
    assert transport.aborted


def test_reload_replaces_the_planned_sweep_instead_of_adding_one() -> None:
    """Replacing settings leaves exactly one idle timer pending."""
    factory, _, clock = make_factory(RecordingHandler(), Limits(idle_timeout=3600))
    connect(factory)
    factory.settings = Limits(idle_timeout=60)
    factory.settings = Limits(idle_timeout=120)
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0)
    assert len(clock.getDelayedCalls()) == 1


# --- arbitrary input -----------------------------------------------------------------------

#: Byte soup rich in what matters to framing: separators, CR, NUL, broken UTF-8, whole requests.
NOISE = st.lists(
    st.sampled_from(
        [b"a", b"=", b"\n", b"\n\n", b"\r", b"\r\n", b"\x00", b"\xc3", b"\xbc", b"\xff"]
    )
    | st.just(GOOD),
    max_size=60,
).map(b"".join)


def feed(stream: bytes, cuts: list[int], limit: int) -> tuple[bytes, bool, dict[str, int], int]:
    """Feed ``stream`` cut at ``cuts``; return output, closed?, protocol errors, requests seen."""
    handler = RecordingHandler()
    factory, stats, _ = make_factory(handler, Limits(max_request_bytes=limit))
    protocol, transport = connect(factory)
    points = sorted({0, len(stream), *(cut % (len(stream) + 1) for cut in cuts)})
    for a, b in pairwise(points):
        protocol.dataReceived(stream[a:b])
    return (
        transport.value(),
        transport.disconnecting,
        dict(stats.protocol_errors),
        len(handler.seen),
    )


@settings(max_examples=400, deadline=None)
@given(stream=NOISE, cuts=st.lists(st.integers(0, 10_000), max_size=20), limit=st.integers(8, 200))
def test_arbitrary_bytes_never_break_the_protocol(
    stream: bytes, cuts: list[int], limit: int
) -> None:
    """Any bytes, split anyhow: no exception, only whole replies, the same outcome as one read."""
    whole = feed(stream, [], limit)
    split = feed(stream, cuts, limit)
    assert split == whole
    output, closed, errors, seen = whole
    replies = output.split(b"\n\n")
    assert replies[-1] == b""
    assert len(replies) - 1 == seen
    assert all(reply.startswith(b"action=INFO request ") for reply in replies[:-1])
    assert sum(errors.values()) == (1 if closed else 0)


# --- logging -------------------------------------------------------------------------------


def test_errors_are_logged_once_per_interval_with_the_count_of_the_rest() -> None:
    """A flood of one error kind logs one line, then one per minute saying how many were skipped."""
    from twisted.logger import Logger, LogLevel, formatEvent

    events: list[dict[str, object]] = []
    factory, stats, clock = make_factory(ExplodingHandler())
    factory.log = Logger(observer=events.append)
    boom = b"protocol_state=RCPT\nqueue_id=4B2D91A0C7\nrecipient=boom@x.example\n\n"
    for _ in range(5):
        protocol, _ = connect(factory)
        protocol.dataReceived(MALFORMED[kinds.NO_EQUALS] + boom)
        protocol.dataReceived(boom)
    assert stats.protocol_errors[kinds.NO_EQUALS] == 5
    assert stats.internal_errors == 0  # the bad request came first: the rest was never read
    protocol, _ = connect(factory)
    protocol.dataReceived(boom * 3)
    assert stats.internal_errors == 3
    lines = [formatEvent(event) for event in events]
    assert len(lines) == 2
    assert lines[0] == (
        "closed policy connection from 192.168.1.1:54321 without a reply: line-without-equals"
    )
    assert "policy handler raised" in lines[1] and "queue_id=4B2D91A0C7" in lines[1]
    assert events[1]["log_level"] == LogLevel.critical  # Logger.failure, with the traceback
    assert "log_failure" in events[1]
    clock.advance(60)
    protocol.dataReceived(boom)
    protocol.dataReceived(b"bad\n\n")
    lines = [formatEvent(event) for event in events]
    assert len(lines) == 4
    assert "2 similar errors not logged" in lines[2]
    assert "4 more of this kind not logged" in lines[3]


@pytest.mark.parametrize(
    ("address", "shown"),
    [
        (IPv4Address("TCP", "127.0.0.1", 40000), "127.0.0.1:40000"),
        (IPv6Address("TCP", "::1", 40000), "[::1]:40000"),
        (UNIXAddress(None), "unix socket"),
        (UNIXAddress(b"/run/policyd.sock"), "/run/policyd.sock"),
    ],
)
def test_log_lines_name_the_peer_readably(address: object, shown: str) -> None:
    """Log lines show host:port, [v6]:port, or the socket, not an address object's repr."""
    protocol = PolicyProtocol(make_factory()[0])
    protocol.makeConnection(StringTransport(peerAddress=address))
    assert describe_peer(protocol) == shown


# --- back-pressure -------------------------------------------------------------------------


def test_protocol_stops_reading_while_its_replies_pile_up() -> None:
    """The connection is its transport's push producer: a full write buffer pauses reading."""
    factory, _, _ = make_factory()
    protocol, transport = connect(factory)
    assert transport.producer is protocol
    assert transport.streaming
    protocol.pauseProducing()
    assert transport.producerState == "paused"
    protocol.resumeProducing()
    assert transport.producerState == "producing"


def test_closing_unregisters_the_producer_so_the_close_can_complete() -> None:
    """A close, for any reason, first unregisters the producer (Twisted waits for it otherwise)."""
    factory, _, _ = make_factory()
    (errored, errored_transport), (_, shut_transport) = connect(factory), connect(factory)
    errored.dataReceived(MALFORMED[kinds.NUL_BYTE])
    assert errored_transport.producer is None and errored_transport.disconnecting
    factory.disconnect_all()
    assert shut_transport.producer is None and shut_transport.disconnecting


class NoSessionHandler(RecordingHandler):
    """Fails to create per-connection state."""

    def new_session(self) -> object:
        raise RuntimeError("bug in the engine")


def test_failing_new_session_keeps_the_connection_answering() -> None:
    """A handler that cannot make a session is counted once; its requests are still answered."""
    handler = NoSessionHandler()
    factory, stats, _ = make_factory(handler)
    protocol, transport = connect(factory)
    protocol.dataReceived(GOOD)
    assert stats.internal_errors == 1
    assert not transport.disconnecting
    assert transport.value() == b"action=INFO request 1 RCPT\n\n"
    assert handler.seen[0][1] is None


class WaitingHandler(RecordingHandler):
    """Answers ``protocol_state=SLOW`` with a Deferred that the test fires."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[Deferred[str]] = []

    def handle(self, attrs: Mapping[str, str], session: object) -> str | Deferred[str]:  # type: ignore[override]
        answer = super().handle(attrs, session)
        if attrs.get("protocol_state") != "SLOW":
            return answer
        deferred: Deferred[str] = Deferred()
        deferred.addCallback(lambda _: answer)
        self.pending.append(deferred)
        return deferred


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_a_malformed_request_behind_a_waiting_answer_closes_after_it(kind: str) -> None:
    """Requests decoded behind a Deferred answer wait for it, are answered in order, and only
    then does the malformed request after them close the connection."""
    handler = WaitingHandler()
    factory, stats, _ = make_factory(handler, SMALL)
    protocol, transport = connect(factory)
    slow = b"protocol_state=SLOW\nrecipient=a@contoso.com\n\n"
    protocol.dataReceived(GOOD + slow + GOOD + MALFORMED[kind])
    assert transport.value() == b"action=INFO request 1 RCPT\n\n"
    assert not transport.disconnecting
    handler.pending.pop().callback(None)
    assert transport.value() == (
        b"action=INFO request 1 RCPT\n\naction=INFO request 2 SLOW\n\n"
        b"action=INFO request 3 RCPT\n\n"
    )
    assert transport.disconnecting
    assert dict(stats.protocol_errors) == {kind: 1}


class SlowHandler(RecordingHandler):
    """Spends ``cost`` seconds of real time on each request, as an uncached prediction of a
    long address might."""

    def __init__(self, cost: float) -> None:
        super().__init__()
        self.cost = cost

    def handle(self, attrs: Mapping[str, str], session: object) -> str:
        from time import perf_counter

        until = perf_counter() + self.cost
        while perf_counter() < until:
            pass
        return super().handle(attrs, session)


def test_a_pipelined_flood_yields_the_reactor_after_its_turn_budget() -> None:
    """Forty pipelined requests that take 1 ms each arrive in one read: the connection answers
    for about TURN_BUDGET (5 ms), stops reading, and answers the rest in later reactor turns, so
    one connection's flood cannot hold back another connection's answer (issue 16). Every
    request is still answered once, in order, and reading resumes."""
    from policyd.wire.protocol import TURN_BUDGET

    handler = SlowHandler(0.001)
    factory, _, clock = make_factory(handler)
    protocol, transport = connect(factory)
    other, other_transport = connect(factory)
    stream = b"".join(
        f"request=smtpd_access_policy\nprotocol_state=RCPT\nrecipient=r{n}@x\n\n".encode()
        for n in range(40)
    )
    protocol.dataReceived(stream)
    first_turn = len(handler.seen)
    assert 1 <= first_turn < 40 and first_turn <= TURN_BUDGET / 0.001 + 2
    assert transport.producerState == "paused"  # nothing more is read meanwhile
    other.dataReceived(b"request=smtpd_access_policy\nprotocol_state=RCPT\n\n")  # served now
    assert other_transport.value().startswith(b"action=INFO request")
    turns = 1
    # One reactor turn at a time (Clock.advance would run the ones added meanwhile at once too);
    # the idle sweep's call, due later, stays.
    while now := [call for call in clock.calls if call.getTime() == 0.0]:
        assert len(now) == 1
        clock.calls.remove(now[0])
        now[0].func(*now[0].args, **now[0].kw)
        turns += 1
        assert turns < 40
    assert len(handler.seen) == 41
    assert turns >= 3
    assert transport.producerState == "producing"
    numbers = [int(line.split()[2]) for line in transport.value().decode().split("\n\n") if line]
    assert len(numbers) == 40 and numbers == sorted(numbers)  # each once, in order
    assert [attrs["recipient"] for attrs, _ in handler.seen if "recipient" in attrs] == [
        f"r{n}@x" for n in range(40)
    ]
