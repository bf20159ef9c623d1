"""``replay``'s fast reading (``policyd.sources.maillog``) against the plain, line-by-line reading.

The reader decodes blocks of whole lines, skips delivery lines whose relay cannot be Microsoft
365 before parsing them, matches qmgr lines after "/qmgr[", reads a delivery line in one match,
and builds syslog times from a remembered minute. Each shortcut is checked here against the
straightforward way on generated and real-looking lines (the fixtures of
``tests/data/maillog/``, mutated): the fast path must give the same records, the same times and
the same counts, and must never drop a line the full parser would have used.
"""

from __future__ import annotations

import gzip
import io
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from unittest import mock

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from policyd.rules import outcomes
from policyd.rules.endpoints import RELAY_HOST_GLOBS
from policyd.rules.outcomes import UNPARSEABLE, Delivery, Unparseable, parse_delivery
from policyd.rules.outcomes import relay_matcher as full_relay_matcher
from policyd.sources import maillog
from policyd.sources.maillog import (
    Attempt,
    Envelope,
    LogCounts,
    LogFile,
    Messages,
    Record,
    Removed,
    parse_time,
    read_records,
    relay_prefilter,
)
from policyd.tools.replay import compare

DATA = Path(__file__).parent / "data" / "maillog"
REAL_LINES = [
    line
    for name in ("e2e-standin.log", "kinds.log", "microsoft-365.log", "garbled.log")
    for line in (DATA / name).read_bytes().decode("utf-8", "replace").splitlines()
]
REFERENCE = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
PROFILE = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- the plain way, as replay read logs before the fast path --------------------------------


# The delivery line as parse_delivery read it before its one-match shortcut (written out again
# here, so that a change to the module's patterns is measured against this reading).
_TAG_SEARCH = re.compile(
    r"(?:^|\s)(?P<service>[^\s\[\]/:]+(?:/[^\s\[\]/:]+)+)\[\d+\]: (?P<queue_id>[0-9A-Za-z]+): to=<"
)
_REST = re.compile(
    r"(?P<to>[^>]*)>(?:, orig_to=<(?P<orig_to>[^>]*)>)?, relay=(?P<relay>[^\s,]+)"
    r"(?:, [a-z_]+=[^\s,]*)*?, dsn=(?P<dsn>[245]\.\d{1,3}\.\d{1,3})"
    r", status=(?P<status>[A-Za-z]+)(?:\s|$)(?:\((?P<detail>.*)\)\s*$)?"
)


def plain_delivery(line: str) -> Delivery | Unparseable | None:
    """parse_delivery without its one-match shortcut: search the tag, then read the rest."""
    if ": to=<" not in line:
        return None
    start = _TAG_SEARCH.search(line)
    if start is None:
        return None
    rest = _REST.match(line, start.end())
    if rest is None:
        return UNPARSEABLE
    parts = outcomes._RELAY.fullmatch(rest.group("relay"))
    if parts is None:
        return UNPARSEABLE
    return Delivery(
        service=start.group("service"),
        queue_id=start.group("queue_id"),
        to=rest.group("to"),
        orig_to=rest.group("orig_to") or "",
        relay=rest.group("relay"),
        relay_host=parts.group("host"),
        relay_address=parts.group("address") or "",
        dsn=rest.group("dsn"),
        status=rest.group("status").lower(),
        detail=rest.group("detail") or "",
    )


_NAME = re.compile(r"[^\s\[\]/:]+(?:/[^\s\[\]/:]+)*")
_FROM = re.compile(r"\d+\]: ([0-9A-Za-z]+): from=<([^>]*)>, size=(\d+)(?:, nrcpt=(\d+))?")
_REMOVED = re.compile(r"\d+\]: ([0-9A-Za-z]+): removed\s*$")


def plain_records(data: bytes, reference: datetime) -> tuple[list[Record], LogCounts]:
    """Every record of ``data`` read a line at a time from a text stream with parse_time,
    plain_delivery and one regex per qmgr line, no relay test and no cache."""
    records: list[Record] = []
    counts = LogCounts()
    skipped = 0
    stream = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="replace", newline=None)
    for line in stream:
        counts.lines += 1
        counts.bytes += len(line)
        if line[:3] not in maillog._MONTHS and not (line[:4].isdigit() and line[4:5] == "-"):
            skipped += bool(not line.startswith("-- ") and line.strip())
            continue
        if ": to=<" in line:
            delivery = plain_delivery(line)
            if delivery is None:
                continue
            time = parse_time(line, reference)
            if isinstance(delivery, Unparseable) or time is None:
                skipped += 1
                continue
            records.append(Attempt(time, delivery.service.split("/", 1)[0], delivery))
        elif "/qmgr[" in line:
            if ": from=<" in line:
                if ", size=" not in line:
                    continue
                pattern = _FROM
            elif line.rstrip().endswith(": removed"):
                pattern = _REMOVED
            else:
                continue
            at = line.find("/qmgr[")
            name = line[line.rfind(" ", 0, at) + 1 : at]
            match = pattern.match(line, at + 6) if _NAME.fullmatch(name) else None
            time = parse_time(line, reference)
            if match is None or (pattern is _FROM and time is None):
                skipped += 1
                continue
            instance = name.split("/", 1)[0]
            if pattern is _REMOVED:
                records.append(Removed(instance, match.group(1)))
            else:
                queue_id, sender, size, nrcpt = match.groups()
                assert time is not None
                records.append(
                    Envelope(time, instance, queue_id, sender, int(size), int(nrcpt or 0))
                )
    counts.skipped = skipped
    return records, counts


def fast_records(
    data: bytes, reference: datetime, globs: list[str]
) -> tuple[list[Record], LogCounts]:
    """What read_records gives for ``data`` (a file's bytes) with the relay pre-filter on."""
    counts = LogCounts()
    log = LogFile("-", reference, None)
    records = list(
        read_records([log], counts, stdin=io.BytesIO(data), relays=relay_prefilter(globs))
    )
    return records, counts


# -- generated lines -------------------------------------------------------------------------

TIMES = st.sampled_from(
    [
        "Nov 27 10:01:05",
        "Nov 27 10:01:59",
        "Nov  7 10:01:05",
        "Nov 7 10:01:05",
        "Nov 27 10:01:05.250",
        "Dec 31 23:59:59",
        "Dec  1 12:00:60",
        "Feb 29 08:00:00",
        "Nov 31 10:00:00",
        "Nov 30 12:00:30",
        "Dec  1 12:00:30",
        "Foo 27 10:01:05",
        "Nov 27 1:01:05",
        "2026-11-27T10:01:05+00:00",
        "2026-11-27T10:01:05.123456789+0100",
        "2026-11-27 10:01:05",
        "2026-11-27T10:01:05Z",
        "2026-13-40T10:01:05+00:00",
        "-- Boot",
        "",
    ]
)
TAGS = st.sampled_from(
    [
        "postfix/smtp[4711]",
        "postfix-out/smtp[4711]",
        "postfix/relay/smtp[9]",
        "postfix/lmtp[2]",
        "postfix/qmgr[4702]",
        "postfix-out/qmgr[1]",
        "postfix//qmgr[1]",
        "/qmgr[1]",
        "postfix:x/qmgr[1]",
        "postfix/qmgr[x]",
        "kernel",
    ]
)
RELAYS = st.sampled_from(
    [
        "contoso-com.mail.protection.outlook.com[52.101.68.10]:25",
        "CONTOSO-COM.MAIL.PROTECTION.OUTLOOK.COM[52.101.68.10]:25",
        "contoso-com.mail.protection.outlook.com.[52.101.68.10]:25",
        "smtp.office365.com[52.96.1.1]:587",
        "mx.example.org[192.0.2.25]:25",
        "mail.protection.outlook.com.evil.example[192.0.2.1]:25",
        "127.0.0.1[127.0.0.1]:2525",
        "none",
        "local",
        "contoso-com.mail.protection.outlook.com[52.101.68.10:25",
    ]
)
BODIES = st.one_of(
    st.builds(
        lambda qid, to, orig, relay, dsn, status, detail: (
            f"{qid}: to=<{to}>{orig}, relay={relay}, delay=1.4, delays=0.05/0/0.6/0.7, "
            f"dsn={dsn}, status={status}{detail}"
        ),
        st.sampled_from(["4F1A2B3C11", "4dBvXq1Ssqz9tB7", "x y", ""]),
        st.sampled_from(["kate@tailspintoys.com", "a>b", ""]),
        st.sampled_from(["", ", orig_to=<kate@contoso.com>", ", orig_to=<bad"]),
        RELAYS,
        st.sampled_from(["2.6.0", "5.7.64", "4.4.62", "9.9.9", "5.7"]),
        st.sampled_from(["sent", "bounced", "deferred", "deliverable", ""]),
        st.sampled_from(
            [
                " (250 2.6.0 <id@host> [InternalId=1] Queued mail for delivery)",
                " (host h[1.2.3.4] said: 550 5.7.64 TenantAttribution; Relay Access Denied "
                "(in reply to RCPT TO command))",
                " (host h[1.2.3.4] refused to talk to me: 421 4.3.2 busy)",
                " (lost connection with h[1.2.3.4] while receiving the initial server greeting)",
                "",
                " (unclosed",
            ]
        ),
    ),
    st.builds(
        lambda qid, sender, tail: f"{qid}: from=<{sender}>{tail}",
        st.sampled_from(["4F1A2B3C11", "4dBvXq1Ssqz9tB7", "x-y"]),
        st.sampled_from(["app@contoso.com", "", "a b"]),
        st.sampled_from(
            [
                ", size=477, nrcpt=1 (queue active)",
                ", size=477",
                ", status=expired, returned to sender",
                ", size=x",
            ]
        ),
    ),
    st.builds(
        lambda qid, tail: f"{qid}: removed{tail}",
        st.sampled_from(["4F1A2B3C11", "4dBvXq1Ssqz9tB7", "x-y"]),
        st.sampled_from(["", "  ", " later"]),
    ),
    st.text(max_size=40),
)
SEPARATORS = st.sampled_from([" ", "\t", "  "])
GENERATED = st.builds(
    lambda time, sep, host, tag, body: f"{time}{sep}{host} {tag}: {body}",
    TIMES,
    SEPARATORS,
    st.sampled_from(["mx1", "mx 1", "mx1:"]),
    TAGS,
    BODIES,
)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A real fixture line with a few characters replaced, removed or inserted."""
    line = draw(st.sampled_from(REAL_LINES))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(line)))
        new = draw(st.sampled_from(["", " ", "\t", ":", "[", "]", "/", ">", ",", "x", "\u00a0"]))
        line = line[:at] + new + line[at + draw(st.integers(0, 2)) :]
    return line


LINES = st.lists(st.one_of(GENERATED, mutated(), st.sampled_from(REAL_LINES)), max_size=30)
ENDINGS = st.sampled_from(["\n", "\r\n", "\r"])


def is_microsoft(record: Record, globs: list[str]) -> bool:
    return type(record) is not Attempt or full_relay_matcher(globs)(record.delivery)


def relevant(records: list[Record], globs: list[str]) -> list[Record]:
    """The records replay uses: every Envelope and Removed, the attempts to ``globs``."""
    return [r for r in records if is_microsoft(r, globs)]


# -- the tests -------------------------------------------------------------------------------


@PROFILE
@given(LINES, ENDINGS, st.sampled_from([list(RELAY_HOST_GLOBS), ["127.0.0.1"], ["*"]]))
def test_the_fast_reader_keeps_every_record_the_plain_reading_gives(
    lines: list[str], ending: str, globs: list[str]
) -> None:
    """Over generated, real and mutated lines the reader yields the same Envelope and Removed
    records as the plain reading, and every attempt to a Microsoft 365 relay it gives."""
    data = "".join(line + ending for line in lines).encode()
    fast, counts = fast_records(data, REFERENCE, globs)
    plain, expected = plain_records(data, REFERENCE)
    assert relevant(fast, globs) == relevant(plain, globs)
    assert (counts.lines, counts.bytes) == (expected.lines, expected.bytes)
    # the pre-filter only leaves out delivery lines, so it can only lower the skipped count
    assert counts.skipped <= expected.skipped
    if globs == ["*"]:  # nothing left out: the counts are the plain reading's too
        assert fast == plain and counts.skipped == expected.skipped


@PROFILE
@given(st.one_of(GENERATED, mutated(), st.sampled_from(REAL_LINES)))
@example(
    "Nov 27 10:01:05 mx1 postfix/smtp[1]: Q: to=<a@b>: to=<c>, relay=x, dsn=2.0.0, status=sent"
)
@example("Nov 27 10:01:05 mx1 a b/smtp[1]: Q: to=<a>, relay=x, dsn=2.0.0, status=sent (ok)")
@example("postfix/smtp[1]: Q: to=<a>, relay=x[1.2.3.4]:25, dsn=2.0.0, status=sent (ok)")
@example("x: to=<a> mx postfix/smtp[1]: Q: to=<b>, relay=x, dsn=2.0.0, status=sent (ok)")
@example("Nov 27 mx\tpostfix/smtp[1]: Q: to=<b>, relay=x, dsn=2.0.0, status=sent (ok)")
@example("Nov 27 mx p\u00a0x/smtp[1]: Q: to=<b>, relay=x, dsn=2.0.0, status=sent (ok)")
@example(" postfix/smtp[1]: Q: to=<b>, relay=x, dsn=2.0.0, status=sent (ok)")
def test_parse_delivery_reads_a_line_as_the_tag_search_does(line: str) -> None:
    """parse_delivery's one match from the word before the queue ID gives what searching the
    tag and then reading the rest gives, for every line."""
    assert parse_delivery(line) == plain_delivery(line)


DAYS = st.builds(
    lambda start, seconds: start + timedelta(seconds=seconds),
    st.sampled_from(
        [
            datetime(2026, 11, 27, 10, 0),
            datetime(2026, 12, 31, 23, 58),
            datetime(2027, 1, 1, 0, 0),
            datetime(2024, 2, 28, 23, 59),
            datetime(2026, 12, 1, 11, 58, 30),
            datetime(2026, 12, 2, 11, 59, 0),  # the first reference's limit is 12:00:30
            datetime(2027, 1, 1, 23, 58, 0),  # the second's is midnight
        ]
    ),
    st.integers(0, 200),
)


@PROFILE
@given(
    st.lists(
        st.tuples(DAYS, st.sampled_from(["Nov 07", "Nov  7"])),
        max_size=40,
    ),
    st.sampled_from(
        [
            datetime(2026, 12, 1, 12, 0, 30, tzinfo=UTC),
            datetime(2027, 1, 1, 0, 0, tzinfo=timezone(timedelta(hours=1))),
            datetime(2025, 2, 28, 0, 0, tzinfo=UTC),
        ]
    ),
    st.lists(st.sampled_from(["", ".5", "60"]), max_size=40),
)
@example(  # a minute the limit falls in: its seconds get two different years
    [(datetime(2026, 12, 2, 12, 0, 10), "Nov 07"), (datetime(2026, 12, 2, 12, 0, 45), "Nov 07")],
    datetime(2026, 12, 1, 12, 0, 30, tzinfo=UTC),
    [],
)
def test_remembered_minutes_give_the_times_parse_time_gives(
    days: list[tuple[datetime, str]], reference: datetime, extras: list[str]
) -> None:
    """Classic syslog times read with the remembered minute equal parse_time's, line after
    line, across the reference's limit, New Year, Feb 29, fractions and leap seconds (the day
    zero-padded as "Nov 07" or space-padded as "Nov  7"), each second twice."""
    clock = maillog._Clock(reference)
    for n, (day, style) in enumerate(days):
        stamp = day.strftime("%b ") + (f"{day.day:02d}" if style == "Nov 07" else f"{day.day:>2}")
        clock_text = day.strftime(" %H:%M:%S")
        extra = extras[n] if n < len(extras) else ""
        if extra == "60":
            clock_text = clock_text[:-2] + "60"
        elif extra:
            clock_text += extra
        line = f"{stamp}{clock_text} mx1 postfix/qmgr[1]: Q: removed"
        assert clock.time_of(line) == parse_time(line, reference), line
        # the next line of the same second (its time remembered with the first 16 characters)
        again = f"{stamp}{clock_text} mx1 postfix/qmgr[1]: Q2: removed"
        assert clock.time_of(again) == parse_time(again, reference), again


@PROFILE
@given(st.binary(max_size=300), st.integers(1, 64))
@example(b"a\r\nb\rc\n\xe2\x82\xac\r", 1)
@example(b"x" * 10 + b"\r", 3)
def test_blocks_decode_as_a_text_stream_does(data: bytes, size: int) -> None:
    """Reading in blocks cut after line breaks gives exactly the text a universal-newline
    UTF-8 stream gives (bad bytes replaced, \\r\\n and \\r as \\n), whatever the block size."""
    blocks = list(maillog._blocks(io.BytesIO(data), size))
    expected = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="replace").read()
    assert "".join(blocks) == expected
    assert all(block.endswith("\n") for block in blocks[:-1])


@PROFILE
@given(
    st.lists(RELAYS, max_size=5),
    st.sampled_from([list(RELAY_HOST_GLOBS), ["127.0.0.1"], ["mail.*.example"], []]),
)
def test_the_relay_prefilter_never_refuses_a_relay_the_full_test_accepts(
    relays: list[str], globs: list[str]
) -> None:
    """relay_prefilter is conservative: a relay= value the full glob test accepts is never
    refused (None, no pre-filter, where a glob is beyond it)."""
    wanted = relay_prefilter(globs)
    matches = full_relay_matcher(globs)
    for relay in relays:
        delivery = plain_delivery(
            f"postfix/smtp[1]: Q: to=<a>, relay={relay}, dsn=2.0.0, status=sent"
        )
        if isinstance(delivery, Delivery) and matches(delivery):
            assert wanted is None or wanted(relay.lower())


def test_a_gz_log_in_blocks_and_a_damaged_one(tmp_path: Path) -> None:
    """A .gz log larger than a block reads whole; cut short, the lines before the cut count."""
    text = "".join(f"{line}\n" for line in REAL_LINES) * 200
    whole = tmp_path / "mail.log.1.gz"
    whole.write_bytes(gzip.compress(text.encode()))
    counts = LogCounts()
    records = list(read_records([LogFile(str(whole), REFERENCE, None)], counts))
    assert counts.lines == text.count("\n") and counts.damaged == []
    assert records == plain_records(text.encode(), REFERENCE)[0]
    cut = tmp_path / "mail.log.2.gz"
    cut.write_bytes(whole.read_bytes()[: len(whole.read_bytes()) // 2])
    counts = LogCounts()
    list(read_records([LogFile(str(cut), REFERENCE, None)], counts))
    assert len(counts.damaged) == 1 and 0 < counts.lines < text.count("\n")


# -- the comparison's remembered observed kinds ----------------------------------------------

REAL_DELIVERIES = [d for d in map(parse_delivery, REAL_LINES) if isinstance(d, Delivery)]
DELIVERIES = st.one_of(
    st.sampled_from(REAL_DELIVERIES),
    st.builds(
        Delivery,
        st.sampled_from(["postfix/smtp", "postfix-out/smtp", "postfix/lmtp"]),
        st.sampled_from(["4F1A2B3C11", "4dBvXq1Ssqz9tB7"]),
        st.sampled_from(["kate@tailspintoys.com", "x@example.net"]),
        st.sampled_from(["", "kate@contoso.com"]),
        st.sampled_from(["contoso-com.mail.protection.outlook.com[52.101.68.10]:25", "none", ""]),
        st.just("h"),
        st.just(""),
        st.sampled_from(["2.6.0", "5.7.64", "4.4.62", "5.7.68", "4.7.0", "5.0.0"]),
        st.sampled_from(["sent", "bounced", "deferred", "softbounce"]),
        st.sampled_from([d.detail for d in REAL_DELIVERIES] + ["", "250 ok", "454 4.7.0 TLS"]),
    ),
)


@PROFILE
@given(st.lists(DELIVERIES, max_size=40), st.integers(1, 8))
def test_the_remembered_observed_kind_is_always_observed_kind(
    deliveries: list[Delivery], size: int
) -> None:
    """Replay remembers each reply's observed kind (bounded, cleared when full): over real and
    generated attempts, repeated and with a small memory, the answer is observed_kind's."""
    comparison = compare.Comparison([], ["*"])
    with mock.patch.object(compare, "MAX_REPLIES", size):
        for delivery in deliveries * 2:
            assert comparison._observed_kind(delivery) == outcomes.observed_kind(delivery)
            assert len(comparison.kinds) <= size


@PROFILE
@given(DELIVERIES, DELIVERIES)
def test_observed_kind_reads_only_the_fields_replay_remembers_it_by(
    delivery: Delivery, other: Delivery
) -> None:
    """The memory's key is (relay, status, dsn, detail): the other fields (service, queue ID,
    recipients; the relay's parts follow the relay) never change the kind."""
    mixed = delivery._replace(
        service=other.service, queue_id=other.queue_id, to=other.to, orig_to=other.orig_to
    )
    assert outcomes.observed_kind(mixed) == outcomes.observed_kind(delivery)


def test_records_are_their_named_tuples() -> None:
    """The reader makes its records without the named tuples' __new__: same types, fields."""
    data = "\n".join(REAL_LINES).encode()
    records, _ = fast_records(data, REFERENCE, ["*"])
    kinds = {type(record) for record in records}
    assert kinds == {Envelope, Attempt, Removed}
    for record in records:
        assert record == type(record)(*record)
        assert record._fields == type(record)._fields
        if type(record) is Attempt:
            assert type(record.delivery) is Delivery
            assert record.delivery == Delivery(*record.delivery)


# -- delivery lines read from the line's start; replies that say 2xx ------------------------


def test_the_written_out_white_space_is_python_s() -> None:
    """The regexes' written-out white space class matches exactly the characters ``\\s`` and
    ``str.isspace`` do, over every code point."""
    written = re.compile(f"[{outcomes._SPACE}]")
    for point in range(0x110000):
        char = chr(point)
        assert (written.match(char) is not None) == char.isspace(), hex(point)


ODD_DELIVERY_LINES = [
    "Nov 27 10:01:05 mx1 postfix/smtp[1]: Q: to=<a@b>, relay=a b[1.2.3.4]:25, delay=1, "
    "dsn=2.0.0, status=sent (250 ok)",
    "Nov 27 10:01:05 mx1 postfix/smtp[1]: Q: to=<a@b>, relay=ab\t[1.2.3.4]:25, delay=1, "
    "dsn=2.0.0, status=sent (250 ok)",
    "Nov 27 10:01:05 mx1 postfix/smtp[1]: Q: to=<a@b>, relay=h[1.2.3.4]:25, dsn=2.0.0, "
    "status=Sent (250 ok)",
    "Nov 27 10:01:05 mx1 postfix/smtp[\u0664]: Q: to=<a@b>, relay=h, dsn=2.0.0, status=sent (ok)",
    "Nov 27 10:01:05 mx1 p\u00f6stfix/smtp[1]: Q: to=<a@b>, relay=h, dsn=2.0.0, status=sent (ok)",
    "Nov 27 10:01:05 mx:1 postfix/smtp[1]: Q: to=<a@b>, relay=h, dsn=2.0.0, status=sent (ok)",
    "Nov 27 10:01:05 x: to=<y> postfix/smtp[1]: Q: to=<a>, relay=h, dsn=2.0.0, status=sent (ok)",
    "Nov 27 10:01:05 mx1 postfix/smtp[1]: Q: to=<a@b>, relay=h, dsn=2.0.0, status=sent (ok)\t",
    "Nov 27 10:01:05 mx1 postfix/smtp[1]: Q: to=<a@b>, relay=h, dsn=2.0.0, status=sent",
    "Nov 27 10:01:05 mx1 postfix/smtp[1]: Q: to=<a@b>, relay=h, delay=1 2, dsn=2.0.0, "
    "status=sent (ok)",
    "Nov 27 10:01:05 mx1 postfix/smtp[1]: Q: to=<a@b>, relay=h, dsn=2.0.0, status=Sent, "
    "dsn=5.0.0, status=bounced (x)",
    "Nov 27 10:01:05 mx1 postfix/smtp[1]: Q: to=<a@b>, relay=h, dsn=2.0.0, status=sent\t(ok)",
    "Nov 27 10:01:05 mx1 postfix/smtp[1]: Q: to=<a@b>, relay=, dsn=2.0.0, status=sent (ok)",
    "Nov 27 10:01:05 mx1 postfix/smtp[1]: Q: to=<a@b>, relay=h[1.2.3.4:25, dsn=2.0.0, "
    "status=sent (ok)",
    "Nov 27 10:01:05.250 mx1 postfix/smtp[1]: Q: to=<a@b>, relay=h, dsn=2.0.0, status=sent (x)",
    "2026-11-27T10:01:05.123456+01:00 mx1 postfix/smtp[1]: Q: to=<a@b>, orig_to=<c@d>, "
    "relay=h[1.2.3.4]:25, conn_use=2, delay=1, delays=0/0/0/1, dsn=5.7.64, status=bounced "
    "(host h[1.2.3.4] said: 550 5.7.64 TenantAttribution; Relay Access Denied (in reply to "
    "RCPT TO command))",
    "2026-11-27T10:01:05Z mx1 postfix-out/smtp[1]: Q: to=<a@b>, relay=h, dsn=4.4.62, "
    "status=deferred (x)",
    "2026-11-27 10:01:05 mx1 postfix/smtp[1]: Q: to=<a@b>, relay=h, dsn=2.0.0, status=sent (x)",
]


def test_odd_delivery_lines_parse_as_the_tag_search_does() -> None:
    """Delivery lines the whole-line match refuses or could misread (white space in the relay=
    value or after the status, a status in capitals, digits other than ASCII, a host with a
    colon, an earlier ": to=<", odd fields, other times) parse as the general reading does."""
    for line in ODD_DELIVERY_LINES:
        assert parse_delivery(line) == plain_delivery(line), line


def test_the_remembered_relay_parts_are_bounded() -> None:
    """The split of each relay= value is remembered at most _RELAY_PARTS at once (cleared when
    full), and a line parses the same whether its relay was remembered or not."""
    lines = [
        f"Nov 27 10:01:05 mx1 postfix/smtp[1]: Q: to=<a@b>, relay=h{n}[1.2.3.{n}]:25, "
        "dsn=2.0.0, status=sent (250 ok)"
        for n in range(10)
    ]
    with mock.patch.object(outcomes, "_RELAY_PARTS", 3), mock.patch.dict(outcomes._relay_parts):
        outcomes._relay_parts.clear()
        for line in lines * 2:
            assert parse_delivery(line) == plain_delivery(line)
            assert len(outcomes._relay_parts) <= 3


@PROFILE
@given(DELIVERIES)
def test_observed_kind_reads_a_2xx_reply_as_classify_reply_does(delivery: Delivery) -> None:
    """observed_kind answers "accepted" for a reply starting with 2 without reading it, as
    classify_reply would."""
    reply = outcomes.microsoft_reply(delivery)
    expected = None if reply is None else outcomes.classify_reply(reply, delivery.dsn)
    assert outcomes.observed_kind(delivery) == expected
    if reply is not None:
        assert outcomes.observed_kind(delivery._replace(detail="250 " + reply)) in (
            outcomes.ACCEPTED,
            None,
        )


# -- whole blocks, whole qmgr lines, the messages kept by the reader, tallies ---------------


@PROFILE
@given(LINES, st.sampled_from(["", "Nov 27 10:01:05 ", "2026-11-27T10:01:05+00:00 "]))
@example(["Nov 27 10:01:05 a", "Nov 27 10:01:06 b"], "")
@example(["Nov 27 10:01:05 a", "Dec  1 10:01:06 b"], "")
@example(["2026-11-27T10:01:05 a", "2026-11-27T10:01:06 b", ""], "")
@example(["\uff12\uff10\uff12\uff16-11-27 a", "\uff12\uff10\uff12\uff16-11-27 b"], "")
@example(["Nov 27 10:01:05 a", "-- Boot 1", "Nov 27 10:01:06 b"], "")
def test_a_block_is_passed_whole_only_when_every_line_starts_with_a_time(
    lines: list[str], lead: str
) -> None:
    """_timed lets a block skip the look at each line's start only when every line passes it
    (its lines all start with the first line's month or ASCII "YYYY-")."""
    lines = [lead + line.replace("\r", "").replace("\n", "") for line in lines]
    for text in ("\n".join(lines), "".join(f"{line}\n" for line in lines)):
        found = text.split("\n")
        if not found[-1]:
            found.pop()
        if maillog._timed(text, found):
            assert all(maillog._has_time(line) for line in found)
        elif found and lead and all(line.startswith(lead) for line in found):
            assert lead[:1].isdigit() or not all(maillog._has_time(line) for line in found)


ODD_QMGR_LINES = [
    # the first "/qmgr[" inside the first 16 characters: that one is the one read
    "Nov/qmgr[1]: Q: x postfix/qmgr[2]: Q2: removed",
    "Nov/qmgr[1]: Q: x postfix/qmgr[2]: Q2: from=<a@b>, size=1, nrcpt=1 (queue active)",
    "Nov 27 10:01:05 mx 1 postfix/qmgr[2]: Q2: removed",  # a host with a space
    "Nov 27 10:01:05 mx1 postfix/x/qmgr[2]: Q2: removed",  # a syslog name of two parts
    "Nov 27 10:01:05 mx1 p\u00f6stfix/qmgr[2]: Q2: removed",  # not ASCII
    "Nov 27 10:01:05 mx1 postfix/qmgr[\u0664\u0662]: Q2: removed",  # other digits
    "Nov 27 10:01:05 mx1 postfix/qmgr[42]: Q2: from=<a@b>, size=1\u0662, nrcpt=1 (x)",
    "Nov 27 10:01:05 mx1 postfix/qmgr[42]: Q2: from=<a@b>, size=12, nrcpt=\u0663 (x)",
    "Nov 27 10:01:05 mx1 postfix/qmgr[42]: Q2: from=<a@b>, size=12 (no nrcpt)",
    "Nov 27 10:01:05 mx1 postfix/qmgr[42]: Q2: removed\t",
    "Nov 27 10:01:05 mx1 postfix/qmgr[42]: Q2: removed\u2003",
    "Nov 27 10:01:05 mx1 postfix/qmgr[42]: Q2: removed later",
    "Nov 27 10:01:05 h: from=<x>, size=1 postfix/qmgr[1]: Q: removed",  # a from= before
    "Nov 27 10:01:05 h: from=<x> postfix/qmgr[1]: Q: removed",
    "Nov 27 10:01:05.250 mx1 postfix/qmgr[1]: Q: from=<a>, size=1 (queue active)",
    "Nov 27 10:01:05\tmx1 postfix/qmgr[1]: Q: removed",
    "Nov 27 10:01:05 mx1\tpostfix/qmgr[1]: Q: removed",
    "Nov 31 10:01:05 mx1 postfix/qmgr[1]: Q: from=<a>, size=1, nrcpt=1 (queue active)",
    "Nov 27 10:01:60 mx1 postfix/qmgr[1]: Q: from=<a>, size=1, nrcpt=1 (queue active)",
    "Nov 27 1:01:05 mx1 postfix/qmgr[1]: Q: from=<a>, size=1, nrcpt=1 (queue active)",
    "2026-11-27T10:01:05+00:00 mx1 postfix/qmgr[1]: Q: from=<a>, size=1, nrcpt=1 (x)",
    "Nov 27 10:01:05 mx1 postfix/qmgr[1]: : removed",
    "Nov 27 10:01:05 mx1 postfix/qmgr[1]: Q: from=<a>, size=1, nrcpt=1 (queue active)",
]


def test_odd_qmgr_lines_read_as_the_plain_reading_does() -> None:
    """qmgr lines the whole-line match refuses or could misread (a "/qmgr[" in the time, a
    host with a space, a name of two parts, digits other than ASCII, trailing white space, a
    from= before "removed", unusual times) give the plain reading's records and counts, alone
    and among the usual lines."""
    usual = "Nov 27 10:01:04 mx1 postfix/qmgr[1]: Q0: from=<a>, size=1, nrcpt=1 (queue active)"
    for line in ODD_QMGR_LINES:
        for data in (f"{line}\n", f"{usual}\n{line}\n{usual}\n"):
            fast, counts = fast_records(data.encode(), REFERENCE, ["*"])
            plain, expected = plain_records(data.encode(), REFERENCE)
            assert fast == plain, line
            assert counts.skipped == expected.skipped, line


@PROFILE
@given(
    LINES,
    ENDINGS,
    st.sampled_from([list(RELAY_HOST_GLOBS), ["127.0.0.1"], ["*"]]),
    st.sampled_from([1, 2, 1000]),
    st.booleans(),
)
def test_reading_into_messages_gives_the_senders_the_records_give(
    lines: list[str], ending: str, globs: list[str], limit: int, handed: bool
) -> None:
    """Read with ``messages``, the reader yields only attempts (or, with ``attempts``, hands
    each one to it and yields nothing), and at each one the messages hold exactly the senders
    that applying the plain reading's Envelope and Removed records in order gives (the oldest
    forgotten past ``limit``); notes go with their message; the counts are those of reading
    without it."""
    data = "".join(line + ending for line in lines).encode()
    messages = Messages(limit)
    counts = LogCounts()
    fast = []

    def take(record: Attempt) -> None:
        key = (record.instance, record.delivery.queue_id)
        if key in messages.senders:
            messages.notes[key] = {record.delivery.to}
        if is_microsoft(record, globs):
            fast.append((record, dict(messages.senders)))
        assert set(messages.notes) <= set(messages.senders)

    def hand(time: datetime, instance: str, delivery: Delivery) -> None:
        take(Attempt(time, instance, delivery))

    for record in read_records(
        [LogFile("-", REFERENCE, None)],
        counts,
        stdin=io.BytesIO(data),
        relays=relay_prefilter(globs),
        messages=messages,
        attempts=hand if handed else None,
    ):
        assert type(record) is Attempt and not handed
        take(record)
    senders: dict[tuple[str, str], str] = {}
    plain = []
    for record in plain_records(data, REFERENCE)[0]:
        if type(record) is Envelope:
            senders[(record.instance, record.queue_id)] = record.sender
            if len(senders) > limit:
                del senders[next(iter(senders))]
        elif type(record) is Removed:
            senders.pop((record.instance, record.queue_id), None)
        elif is_microsoft(record, globs):
            plain.append((record, dict(senders)))
    assert fast == plain
    _, without = fast_records(data, REFERENCE, globs)
    assert (counts.lines, counts.bytes, counts.skipped) == (
        without.lines,
        without.bytes,
        without.skipped,
    )


@PROFILE
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["forwarded", "null-sender", "sender-accepted-domain"]),
            st.sampled_from(["accepted", "attr36"]),
            st.sampled_from(["accepted", "attr36", "wrong-region"]),
        ),
        max_size=30,
    )
)
def test_a_tally_counts_as_counting_each_attempt_does(
    attempts: list[tuple[str, str, str]],
) -> None:
    """A Tally's totals, kind table and per-reason counts (read from its cells) are those of
    counting each attempt as it comes."""
    tally = compare.Tally()
    table: dict[str, dict[str, int]] = {}
    reasons: dict[str, list[int]] = {}
    for reason, predicted, observed in attempts:
        assert tally.add(reason, predicted, observed) == (predicted == observed)
        row = table.setdefault(predicted, {})
        row[observed] = row.get(observed, 0) + 1
        counts = reasons.setdefault(reason, [0, 0])
        counts[0] += 1
        counts[1] += predicted == observed
    agreed = sum(p == o for _, p, o in attempts)
    assert (tally.compared, tally.agreed, tally.disagreements) == (
        len(attempts),
        agreed,
        len(attempts) - agreed,
    )
    assert {p: dict(row) for p, row in tally.table.items()} == table
    assert tally.reasons == reasons
