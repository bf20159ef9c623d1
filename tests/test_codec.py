"""The request codec on its own: bytes in, requests out, at every read size and in any order."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyd.constants import POSTFIX_ATTRIBUTE_ORDER
from policyd.engine import stats as kinds
from policyd.wire import codec
from policyd.wire.codec import (
    POSTFIX_LAYOUT,
    WANTED_ATTRIBUTES,
    MalformedRequestError,
    Request,
    RequestDecoder,
)

DATA = Path(__file__).parent / "data" / "requests"
STREAMS = sorted(DATA.glob("*.txt"))
LIMIT = 65536


def forget_layouts() -> None:
    """Only Postfix's layout known, as in a new process."""
    codec._learned.clear()
    codec._learned[POSTFIX_ATTRIBUTE_ORDER] = POSTFIX_LAYOUT


@pytest.fixture(autouse=True)
def _fresh_layouts() -> Iterator[None]:
    """Each test starts with only Postfix's layout known and leaves the process's ones alone."""
    saved = dict(codec._learned)
    forget_layouts()
    yield
    codec._learned.clear()
    codec._learned.update(saved)


def reference(stream: bytes) -> list[Request]:
    """An independent, obviously-correct reading of well-formed requests: wanted names only,
    the first value of a repeated name."""
    requests = []
    for block in stream.decode()[:-2].split("\n\n"):
        attrs: Request = {}
        for line in block.split("\n") if block else []:
            name, _, value = line.partition("=")
            if name in WANTED_ATTRIBUTES and name not in attrs:
                attrs[name] = value
        requests.append(attrs)
    return requests


def reordered(stream: bytes, seed: int) -> bytes:
    """The same requests with their lines in one other order (the same for every request)."""
    blocks = stream[:-2].split(b"\n\n")
    count = len(blocks[0].split(b"\n"))
    order = list(range(count))
    random.Random(seed).shuffle(order)
    out = []
    for block in blocks:
        lines = block.split(b"\n")
        assert len(lines) == count
        out.append(b"\n".join(lines[n] for n in order))
    return b"\n\n".join(out) + b"\n\n"


def decode(stream: bytes, size: int, limit: int = LIMIT) -> list[Request]:
    """``stream`` fed to a fresh decoder in reads of ``size`` bytes."""
    decoder = RequestDecoder(limit)
    requests = []
    for start in range(0, len(stream), size):
        requests += decoder.feed(stream[start : start + size])
    assert decoder.pending_bytes == 0
    return requests


def decode_error(stream: bytes, size: int, limit: int) -> tuple[list[Request], str]:
    """What a fresh decoder reads from ``stream`` in reads of ``size`` before it fails, and why."""
    decoder = RequestDecoder(limit)
    requests = []
    for start in range(0, len(stream), size):
        try:
            requests += decoder.feed(stream[start : start + size])
        except MalformedRequestError as error:
            return requests + error.requests, error.kind
    raise AssertionError(f"no error at read size {size}")


# --- every read size ------------------------------------------------------------------------


@pytest.mark.parametrize("path", STREAMS, ids=[path.stem for path in STREAMS])
def test_reference_streams_read_the_same_at_every_read_size(path: Path) -> None:
    """Reads of 4096 bytes down to 1 byte (multi-byte UTF-8 split included) give the same
    requests, in Postfix's order and in another one."""
    for stream in (path.read_bytes(), reordered(path.read_bytes(), seed=len(path.name))):
        expected = reference(stream)
        for size in range(4096, 0, -1):
            assert decode(stream, size) == expected, size


MALFORMED = {
    kinds.NO_EQUALS: b"request=smtpd_access_policy\nthis line has no equals sign\n\n",
    kinds.NUL_BYTE: b"request=smtpd_access_policy\nsender=a\x00b@x.example\n\n",
    kinds.INVALID_UTF8: b"request=smtpd_access_policy\nsender=\xc3\x28@x.example\n\n",
    kinds.TOO_LARGE: b"request=smtpd_access_policy\nhelo_name=" + b"h" * 2000 + b"\n\n",
}
GOOD = (DATA / "postfix-3.7-wire-order.txt").read_bytes().split(b"\n\n")[0] + b"\n\n"


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_a_malformed_request_fails_the_same_way_at_every_read_size(kind: str) -> None:
    """However the stream is split, the requests before the bad one are read and its kind is
    reported; nothing after it is read."""
    stream = GOOD + GOOD + MALFORMED[kind] + GOOD
    for size in range(len(stream), 0, -1):
        requests, found = decode_error(stream, size, limit=1024)
        assert found == kind, size
        assert requests == reference(GOOD + GOOD), size


def test_a_failed_decoder_stays_failed() -> None:
    """After a malformed request every later feed fails with the same kind and reads nothing."""
    decoder = RequestDecoder(LIMIT)
    with pytest.raises(MalformedRequestError) as first:
        decoder.feed(GOOD + MALFORMED[kinds.NO_EQUALS])
    assert first.value.requests == reference(GOOD)
    with pytest.raises(MalformedRequestError) as again:
        decoder.feed(GOOD)
    assert (again.value.kind, again.value.requests) == (kinds.NO_EQUALS, [])


def with_value(name: str, value: str) -> bytes:
    """``GOOD`` with the value of ``name`` replaced."""
    lines = [
        f"{name}={value}".encode() if line.startswith(name.encode() + b"=") else line
        for line in GOOD[:-2].split(b"\n")
    ]
    return b"\n".join(lines) + b"\n\n"


@pytest.mark.parametrize("name", ["sender", "recipient"])
def test_an_address_beyond_the_cap_fails_as_value_too_long_at_every_read_size(name: str) -> None:
    """A sender or recipient of MAX_ADDRESS_CHARS characters is read; one more fails the request
    as value-too-long after the requests before it, in Postfix's order and in another one."""
    at_cap = with_value(name, "k" * (kinds.MAX_ADDRESS_CHARS - 12) + "@contoso.com")
    beyond = with_value(name, "k" * (kinds.MAX_ADDRESS_CHARS - 11) + "@contoso.com")
    for good, long in (
        (GOOD + at_cap, beyond),
        (reordered(GOOD + at_cap, 3), reordered(beyond, 3)),
    ):
        for size in range(len(good + long), 0, -7):
            forget_layouts()
            requests, found = decode_error(good + long + GOOD, size, LIMIT)
            assert found == kinds.VALUE_TOO_LONG, size
            assert requests == reference(good), size
            assert len(requests[1][name]) == kinds.MAX_ADDRESS_CHARS


def test_the_limit_counts_the_blank_line_and_applies_from_the_next_feed() -> None:
    """A request of exactly max_request_bytes is read, one byte more is too large; a new limit
    set between reads applies to the next read."""
    decoder = RequestDecoder(len(GOOD))
    assert decoder.feed(GOOD) == reference(GOOD)
    decoder.max_request_bytes = len(GOOD) - 1
    with pytest.raises(MalformedRequestError) as caught:
        decoder.feed(GOOD)
    assert caught.value.kind == kinds.TOO_LARGE


def test_an_unterminated_request_fails_once_it_reaches_the_limit() -> None:
    """Bytes without the end of a request are held up to max_request_bytes, then refused."""
    decoder = RequestDecoder(64)
    assert decoder.feed(b"x=" + b"y" * 60) == []
    assert decoder.pending_bytes == 62
    with pytest.raises(MalformedRequestError) as caught:
        decoder.feed(b"yy")
    assert caught.value.kind == kinds.TOO_LARGE


def test_crlf_is_read_as_lf_at_every_split() -> None:
    """A hand-typed request with CR LF line ends reads like Postfix's; a lone CR stays."""
    stream = b"protocol_state=RCPT\r\nsender=odd\rname\r\n\r\n"
    for size in range(1, len(stream) + 1):
        assert decode(stream, size) == [{"protocol_state": "RCPT", "sender": "odd\rname"}]


def test_empty_requests_and_values_with_equals_signs() -> None:
    """A blank line where a request starts is an empty request; a value keeps its "=" signs."""
    stream = b"\nsender=SRS0=HH=TT=fabrikam.example=john@contoso.com\n\n\n"
    for size in range(1, len(stream) + 1):
        assert decode(stream, size) == [
            {},
            {"sender": "SRS0=HH=TT=fabrikam.example=john@contoso.com"},
            {},
        ]


# --- layouts --------------------------------------------------------------------------------


def test_postfix_layout_is_built_from_the_constant_order() -> None:
    """The first layout is POSTFIX_ATTRIBUTE_ORDER, and it reads the recorded real requests."""
    assert POSTFIX_LAYOUT.names == POSTFIX_ATTRIBUTE_ORDER
    stream = (DATA / "postfix-3.7-wire-order.txt").read_bytes()
    for block in stream[:-2].split(b"\n\n"):
        assert POSTFIX_LAYOUT.pattern.fullmatch(block.decode() + "\n\n") is not None


def test_another_order_is_learned_when_it_repeats_and_shared() -> None:
    """A connection sending its own fixed order gets a layout for it at the third request;
    other connections use it from their second; one-off orders are never learned."""
    stream = reordered((DATA / "postfix-3.7-wire-order.txt").read_bytes(), seed=7)
    requests = [block + b"\n\n" for block in stream[:-2].split(b"\n\n")]
    first = RequestDecoder(LIMIT)
    first.feed(requests[0])
    first.feed(requests[1])
    assert first.layout is POSTFIX_LAYOUT
    first.feed(requests[2])
    learned = first.layout
    assert learned is not POSTFIX_LAYOUT
    assert list(learned.names) == [
        line.split(b"=")[0].decode() for line in requests[0][:-2].split(b"\n")
    ]
    second = RequestDecoder(LIMIT)
    second.feed(requests[2])
    second.feed(requests[0])
    assert second.layout is learned
    one_off = RequestDecoder(LIMIT)
    for request in (b"sender=a@b\nrecipient=c@d\n\n", b"recipient=c@d\nsender=a@b\n\n") * 3:
        one_off.feed(request)
    assert one_off.layout is POSTFIX_LAYOUT


def test_learned_layouts_are_capped() -> None:
    """Past LEARNED_LAYOUTS orders no new layout is made; such requests are still read right."""
    for number in range(codec.LEARNED_LAYOUTS + 5):
        decoder = RequestDecoder(LIMIT)
        request = f"x{number}=1\nsender=s{number}@a\n\n".encode()
        assert decoder.feed(request * 3) == [{"sender": f"s{number}@a"}] * 3
    assert len(codec._learned) == codec.LEARNED_LAYOUTS + 1


NAMES = st.sampled_from([*WANTED_ATTRIBUTES, "size", "helo_name", "x", ""])
VALUES = st.text(
    st.characters(exclude_characters="\n\r\x00", exclude_categories=["Cs"]), max_size=12
)


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(st.tuples(NAMES, VALUES), min_size=1, max_size=12),
    values=st.lists(st.lists(VALUES, min_size=12, max_size=12), min_size=3, max_size=3),
)
def test_a_learned_layout_reads_exactly_what_the_general_rule_reads(
    lines: list[tuple[str, str]], values: list[list[str]]
) -> None:
    """Any order, repeated and missing names, empty names and values with "=" or non-ASCII:
    requests read through a learned layout equal the independent reading."""
    names = [name for name, _ in lines]
    stream = b"".join(
        "".join(f"{name}={value}\n" for name, value in zip(names, row, strict=False)).encode()
        + b"\n"
        for row in [[value for _, value in lines], *values]
    )
    forget_layouts()
    decoder = RequestDecoder(LIMIT)
    assert decoder.feed(stream) == reference(stream)
    assert decoder.layout.names == tuple(names)
    assert decoder.feed(stream) == reference(stream)  # now through the learned layout
