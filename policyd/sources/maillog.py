"""Reading Postfix mail logs for ``replay``: files, ``.gz`` files, stdin; times; records.

``open_logs(paths, now)`` checks every path up front (a missing or unreadable file raises
``LogError`` before anything is read) and orders a rotated set by the time of each file's
first line, whatever order the paths were given in (``-``, standard input, keeps its place
after the files). ``read_records(logs, counts)`` then yields, in file order, the three kinds of
line ``replay`` rebuilds envelopes from (the README, "Before you turn on defer"), and
counts everything else:

- ``Envelope``: a ``qmgr`` line ``QUEUEID: from=<sender>, size=N, nrcpt=N (queue active)``;
- ``Attempt``: a delivery line (``policyd.rules.outcomes.parse_delivery``: ``to=``,
  ``orig_to=``, ``relay=``, ``dsn=``, ``status=`` and the reply text);
- ``Removed``: ``QUEUEID: removed``, after which Postfix never logs the queue ID again.

Each record carries its instance (the syslog name before the first ``/``: ``postfix``,
``postfix-out``), since two instances have separate queues. Times come in both styles
Postfix writes: classic syslog (``Nov 30 02:57:55``, no year: the year is the one that puts the
line at or before the file's modification time, or ``now`` for standard input) and RFC 3339 /
``journalctl -o short-iso`` (``2026-11-30T02:57:55.123456+00:00``, ``...+0000``). Lines
without a time at the front (garbled lines, binary junk) and record lines that do not parse
are counted in ``LogCounts.skipped``; journal headers (``-- Boot ...``) are ignored. A
truncated or damaged ``.gz`` ends that file: the lines read so far count, and the file is
named in ``LogCounts.damaged``. Bytes that are not UTF-8 are replaced, never fatal.

With ``messages`` (a ``Messages``), ``read_records`` applies each ``Envelope`` and
``Removed`` to it as it reads them and yields only the attempts: ``replay`` keeps the senders
of the messages in the queue that way, without a record per qmgr line.

Only the lines that look like records (two substring tests) are read further, a block of lines
that all start with the same month is not looked at line by line, the usual qmgr line is read
by one match from its start, and a time is parsed once per minute, so the reading stays fast
on logs that are mostly other traffic (BENCHMARKS.md: ≥ 200,000 lines/s).
"""

from __future__ import annotations

import gzip
import io
import os
import re
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import IO, Any, NamedTuple

from policyd.rules.outcomes import Delivery, Unparseable, parse_delivery

#: The path that means standard input (``journalctl -o short-iso | m365-policyd replay -``).
STDIN = "-"

_MONTHS = {
    name: number
    for number, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
_SYSLOG_TIME = re.compile(r"([A-Z][a-z]{2}) {1,2}(\d{1,2}) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))? ")
_ISO_TIME = re.compile(
    r"(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d)(\.\d{1,9})?(Z|[+-]\d\d:?\d\d)?(?=\s)"
)
# After "/qmgr[": the rest of either qmgr line in one match (the syslog name is the word
# before, _instance): "PID]: QUEUEID: from=<SENDER>, size=N[, nrcpt=N]" (four groups) or
# "PID]: QUEUEID: removed" (only the queue ID).
_QMGR_REST = (
    r"\d+\]: ([0-9A-Za-z]+): "
    r"(?:from=<([^>]*)>, size=(\d+)(?:, nrcpt=(\d+))?|removed\s*$)"
)
_QMGR_LINE = re.compile(_QMGR_REST)
# A whole qmgr line in the usual shape, read from its start: 16 characters without "/" (the
# time), a host name, one space, a one-part syslog name (its own instance), "/qmgr[" (the
# first "/" of the line, so the first "/qmgr[", as _records reads it), then _QMGR_REST. Its
# classes are narrower than the general reading's wherever a fixed character must follow (a
# line they refuse is read the general way, never read differently).
_QMGR_WHOLE = re.compile(
    r"([^/]{16})[^/ ]*+ ([-.0-9A-Z_a-z]++)/qmgr\[[0-9]++\]: ([0-9A-Za-z]++): "
    r"(?:from=<([^>]*+)>, size=(\d++)(?:, nrcpt=(\d++))?|removed[ \t]*$)"
)
_QMGR = "/qmgr["
_NAME = re.compile(r"[^\s\[\]/:]+(?:/[^\s\[\]/:]+)*")


def _instance(name: str) -> str:
    """The instance of a syslog name (``postfix-out/x`` → ``postfix-out``); "" when the name
    is not one (empty, or with white space, brackets, a colon or an empty part)."""
    return name.split("/", 1)[0] if _NAME.fullmatch(name) is not None else ""


class LogError(Exception):
    """A log that cannot be opened at all: names the path and why (``replay`` exits 2)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class Envelope(NamedTuple):
    """``qmgr`` took a message into the active queue: its envelope sender (``""``: null)."""

    time: datetime
    instance: str
    queue_id: str
    sender: str
    size: int
    nrcpt: int


class Attempt(NamedTuple):
    """One delivery attempt, as ``policyd.rules.outcomes.Delivery`` reads it."""

    time: datetime
    instance: str
    delivery: Delivery


class Removed(NamedTuple):
    """``qmgr`` removed the message: its queue ID will not be logged again."""

    instance: str
    queue_id: str


Record = Envelope | Attempt | Removed
#: A message's key: its instance (two instances have separate queues) and its queue ID.
MessageKey = tuple[str, str]


class Messages:
    """The messages the log shows in the queue: each one's envelope sender, by instance and
    queue ID, from ``qmgr``'s ``from=`` line (``Envelope``) until its ``removed`` line.

    At most ``limit`` are remembered (the oldest is forgotten first), so a log without
    ``removed`` lines cannot grow memory. ``notes`` holds what a reader keeps about a message
    (``replay``: the attempts it compared), forgotten with the message. ``read_records`` can
    apply a log's ``Envelope`` and ``Removed`` records here itself instead of yielding them.
    """

    __slots__ = ("limit", "notes", "senders")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        #: (instance, queue ID) → envelope sender ("": null), oldest first
        self.senders: dict[MessageKey, str] = {}
        #: (instance, queue ID) → notes, for the messages that have some
        self.notes: dict[MessageKey, Any] = {}

    def add(self, instance: str, queue_id: str, sender: str) -> None:
        """``qmgr`` took the message into the active queue (again: it keeps its place)."""
        self.senders[(instance, queue_id)] = sender
        if len(self.senders) > self.limit:
            self.forget_oldest()

    def forget_oldest(self) -> None:
        """Make room: forget the message remembered longest, and its notes."""
        oldest = next(iter(self.senders))
        del self.senders[oldest]
        self.notes.pop(oldest, None)

    def remove(self, instance: str, queue_id: str) -> None:
        """``qmgr`` removed the message: forget it and its notes."""
        key = (instance, queue_id)
        if self.senders.pop(key, None) is not None:
            self.notes.pop(key, None)


@dataclass(slots=True)
class LogCounts:
    """What reading saw: every line, the bytes, lines skipped, and damaged files."""

    lines: int = 0
    bytes: int = 0
    skipped: int = 0
    damaged: list[str] = field(default_factory=list)  # "path: what is wrong"
    files: list[str] = field(default_factory=list)  # in the order they were read


@dataclass(frozen=True, slots=True)
class LogFile:
    """One log to read: its path (``-``: standard input), the year reference, its first time."""

    path: str
    reference: datetime  # classic syslog times are placed at or before this (+1 day)
    first: datetime | None  # the first line's time; None for stdin or a file without one


def open_logs(paths: Sequence[str], now: datetime, stdin: IO[bytes] | None = None) -> list[LogFile]:
    """The logs in reading order; raises ``LogError`` for a missing or unreadable path.

    ``now`` (aware) is the year reference for standard input. Files are ordered by their
    first line's time (files without one first, in the order given); ``-`` comes last.
    """
    files: list[LogFile] = []
    piped: list[LogFile] = []
    for path in paths:
        if path == STDIN:
            if piped:
                raise LogError(path, "standard input given twice")
            piped.append(LogFile(path, now, None))
            continue
        try:
            stamp = os.stat(path)
            if not os.path.isfile(path):
                raise LogError(path, "not a regular file")
            with open(path, "rb"):
                pass
        except OSError as error:
            raise LogError(path, error.strerror or str(error)) from None
        reference = datetime.fromtimestamp(stamp.st_mtime).astimezone()
        first = _first_time(path, reference)
        files.append(LogFile(path, reference, first))
    order = sorted(
        range(len(files)),
        key=lambda i: (files[i].first is not None, files[i].first or now, i),
    )
    return [files[i] for i in order] + piped


def _first_time(path: str, reference: datetime) -> datetime | None:
    """The time of the first line with one (among the first 100), or None."""
    try:
        with _open_text(path) as stream:
            for _, line in zip(range(100), stream, strict=False):
                found = parse_time(line, reference)
                if found is not None:
                    return found
    except (OSError, EOFError, zlib.error, LogError):
        return None
    return None


def _open_binary(path: str, stdin: IO[bytes] | None = None) -> IO[bytes] | gzip.GzipFile:
    """The bytes of a plain file, a ``.gz`` file (by magic bytes) or standard input."""
    if path == STDIN:
        return stdin if stdin is not None else sys.stdin.buffer
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        return gzip.GzipFile(path, "rb")
    if path.endswith(".gz"):
        raise LogError(path, "named .gz but not gzip data")
    return open(path, "rb")


def _open_text(path: str, stdin: IO[bytes] | None = None) -> IO[str]:
    """A text stream over ``_open_binary``: UTF-8 with bad bytes replaced, universal newlines."""
    return io.TextIOWrapper(
        _open_binary(path, stdin), encoding="utf-8", errors="replace", newline=None
    )


#: Bytes asked for at a time; each block is cut after its last line break and decoded at once.
BLOCK = 1 << 20


def _blocks(raw: IO[bytes] | gzip.GzipFile, size: int = BLOCK) -> Iterator[str]:
    """The text of ``raw`` in blocks of whole lines, as ``_open_text`` would read it.

    Bytes that are not UTF-8 are replaced and ``\r\n`` and a lone ``\r`` become ``\n``
    (universal newlines); every block but the last ends with ``\n``. A block is cut only
    after a line break, which is never inside a UTF-8 sequence nor between ``\r`` and
    ``\n``, so decoding block by block gives the same text as decoding the whole. An error
    while reading (a damaged ``.gz``) propagates; the unfinished line before it is dropped.
    """
    read = getattr(raw, "read1", raw.read)
    carry = b""
    while True:
        chunk = read(size)
        if not chunk:
            break
        data = carry + chunk if carry else chunk
        # never cut at a final "\r": the "\n" of its "\r\n" may come in the next chunk
        cut = max(data.rfind(b"\n"), data.rfind(b"\r", 0, len(data) - 1)) + 1
        if cut == 0:
            carry = data
            continue
        carry = data[cut:]
        yield _decode(data[:cut] if carry else data)
    if carry:
        yield _decode(carry)


def _decode(data: bytes) -> str:
    text = data.decode("utf-8", "replace")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def parse_time(line: str, reference: datetime) -> datetime | None:
    """The time at the front of a log line (aware, UTC when it says no zone), or None.

    Classic syslog times have no year: the year is ``reference``'s, or the one before when
    that would put the line more than a day after ``reference`` (a log spanning New Year).
    """
    first = line[:1]
    if first.isdigit():
        match = _ISO_TIME.match(line)
        if match is None:
            return None
        day, clock, fraction, zone = match.groups()
        text = f"{day}T{clock}{(fraction or '')[:7]}"
        if zone and zone != "Z":
            text += zone if ":" in zone else f"{zone[:3]}:{zone[3:]}"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            return None
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    match = _SYSLOG_TIME.match(line)
    if match is None:
        return None
    month = _MONTHS.get(match.group(1))
    if month is None:
        return None
    micro = int((match.group(6) or "0").ljust(6, "0"))
    try:
        parsed = datetime(
            reference.year,
            month,
            int(match.group(2)),
            int(match.group(3)),
            int(match.group(4)),
            int(match.group(5)),
            micro,
            tzinfo=reference.tzinfo or UTC,
        )
    except ValueError:  # Feb 29 in a year without one: the year before had it, or none did
        try:
            parsed = datetime(reference.year - 1, month, int(match.group(2)), tzinfo=UTC)
        except ValueError:
            return None
    if parsed > reference + timedelta(days=1):
        try:
            parsed = parsed.replace(year=parsed.year - 1)
        except ValueError:
            return None
    return parsed


def read_records(
    logs: Sequence[LogFile],
    counts: LogCounts,
    *,
    stdin: IO[bytes] | None = None,
    progress: Callable[[LogCounts], None] | None = None,
    every: int = 200_000,
    relays: Callable[[str], bool] | None = None,
    messages: Messages | None = None,
    attempts: Callable[[datetime, str, Delivery], None] | None = None,
) -> Iterator[Record]:
    """Every record of ``logs`` in order, counting lines, bytes and skipped lines in ``counts``.

    ``messages``, when given, takes every ``Envelope`` and ``Removed`` record (``add``,
    ``remove``) as it is read, and only the ``Attempt`` records are yielded: when one is, the
    messages are as the log stands at its line. ``attempts``, when given as well, is called
    with each attempt's fields (time, instance, delivery) instead: nothing is yielded, and the
    iterator reads the logs as it is exhausted.

    ``relays``, when given, is a cheap test on a delivery line's ``relay=`` value (lower case,
    as logged: ``host[address]:port``): delivery lines it refuses are not parsed at all. It must
    never refuse a relay the caller wants (``relay_prefilter`` builds one from host globs).

    ``progress`` is called with ``counts`` every ``every`` lines and once at the end of each
    file. A damaged ``.gz`` ends its file and is named in ``counts.damaged``.
    """
    for log in logs:
        counts.files.append(log.path)
        try:
            raw = _open_binary(log.path, stdin)
        except LogError as error:
            counts.damaged.append(str(error))
            continue
        except OSError as error:
            counts.damaged.append(f"{log.path}: {error.strerror or error}")
            continue
        try:
            yield from _records(
                _blocks(raw),
                reference=log.reference,
                counts=counts,
                progress=progress,
                every=every,
                wanted=relays,
                messages=messages,
                attempts=attempts if messages is not None else None,
            )
        except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as error:
            reason = str(error) or type(error).__name__
            counts.damaged.append(f"{log.path}: {reason} (read up to line {counts.lines})")
        finally:
            if log.path != STDIN:
                raw.close()
        if progress is not None:
            progress(counts)


def _records(
    blocks: Iterable[str],
    *,
    reference: datetime,
    counts: LogCounts,
    progress: Callable[[LogCounts], None] | None,
    every: int,
    wanted: Callable[[str], bool] | None,
    messages: Messages | None,
    attempts: Callable[[datetime, str, Delivery], None] | None,
) -> Iterator[Record]:
    # The hot loop. A block whose lines all start with the first line's month (or "YYYY-")
    # needs no look at each line's start (_timed). Most lines are neither delivery nor qmgr
    # lines and cost two substring tests; a qmgr line in the usual shape is read by one match
    # from its start (_QMGR_WHOLE), a delivery line by parse_delivery; a record's time is
    # looked up only when its first 16 characters differ from those of the last line timed
    # from a remembered minute (_Clock).
    clock = _Clock(reference)
    time_of = clock.time_of
    minutes = clock.minutes
    seconds = _SECOND_SUFFIXES
    last_head = "\n"  # no line's head: the first is looked up
    last_time: datetime | None = None
    qmgr_whole = _QMGR_WHOLE.match
    qmgr_rest = _QMGR_LINE.match
    names: dict[str, str] = {}  # syslog name → its instance ("": not a name)
    services: dict[str, str] = {}  # a delivery's service → its instance
    relays: dict[str, bool] = {}  # relay= text → wanted(its lower case)
    new = tuple.__new__  # a record without the Python-level __new__ of a named tuple
    # with messages: Messages.add and Messages.remove, written out here (they run per line)
    applying = messages is not None
    queue = messages if messages is not None else Messages(0)
    senders, notes, limit = queue.senders, queue.notes, queue.limit
    lines = counts.lines
    size = counts.bytes
    skipped = 0
    next_progress = lines + every
    try:
        for text in blocks:
            found = text.split("\n")
            if not found[-1]:
                found.pop()  # after the block's last line break
            lines += len(found)
            size += len(text)
            if not _timed(text, found):
                kept = []
                for line in found:
                    if _has_time(line):
                        kept.append(line)
                    elif not line.startswith("-- ") and line.strip():
                        skipped += 1
                found = kept
            for line in found:
                if ": to=<" in line:
                    if wanted is not None:
                        at = line.find(", relay=")
                        if at >= 0:
                            relay = line[at + 8 : line.find(",", at + 8)]
                            keep = relays.get(relay)
                            if keep is None:
                                keep = wanted(relay.lower())
                                if len(relays) >= _RELAYS:
                                    relays.clear()
                                relays[relay] = keep
                            if not keep:
                                continue
                    delivery = parse_delivery(line)
                    if delivery is None:
                        continue
                    if isinstance(delivery, Unparseable):
                        skipped += 1
                        continue
                    service = delivery.service
                    instance = services.get(service, "")
                    if not instance:  # (never "": the service has a part before "/")
                        instance = service.split("/", 1)[0]
                        if len(services) < _NAMES:
                            services[service] = instance
                    head = line[:16]
                elif _QMGR in line:
                    delivery = None
                    whole = qmgr_whole(line)
                    if whole is not None:
                        head, instance, queue_id, sender, octets, nrcpt = whole.groups("")
                        if not octets and ": from=<" in line:
                            whole = None  # a "from=<" before "removed": read the general way
                    if whole is None:
                        at = line.find(_QMGR)
                        match = qmgr_rest(line, at + 6)
                        if match is None:
                            # as the two patterns apart: a "from=<" line with a size, or a
                            # "removed" line, that does not read is skipped; others are not
                            if ": from=<" in line:
                                skipped += ", size=" in line
                            else:
                                skipped += line.rstrip().endswith(": removed")
                            continue
                        queue_id, sender, octets, nrcpt = match.groups("")
                        if not octets and ": from=<" in line:
                            # "removed", but a "from=<" earlier on: read as a from= line
                            skipped += ", size=" in line
                            continue
                        # the syslog name is the word before the first "/qmgr["; names repeat
                        name = line[line.rfind(" ", 0, at) + 1 : at]
                        known = names.get(name)
                        if known is None:
                            known = _instance(name)
                            if len(names) < _NAMES:
                                names[name] = known
                        instance = known
                        if not instance:
                            skipped += 1
                            continue
                        head = line[:16]
                    if not octets:  # "removed"
                        if not applying:
                            yield new(Removed, (instance, queue_id))
                        elif senders.pop(key := (instance, queue_id), None) is not None and notes:
                            notes.pop(key, None)
                        continue
                else:
                    continue
                # the time, as _Clock.time_of gives it: the same head, the same second; else
                # a remembered minute and the seconds; else time_of itself
                if head == last_head:
                    time = last_time
                else:
                    time = None
                    start = minutes.get(head[:12])
                    if start is not None:
                        second = seconds.get(head[12:])
                        if second is not None:
                            time = last_time = start + second
                            last_head = head
                    if time is None:
                        time = time_of(line)
                if time is None:
                    skipped += 1
                elif delivery is not None:
                    if attempts is None:
                        yield new(Attempt, (time, instance, delivery))
                    else:
                        attempts(time, instance, delivery)
                elif applying:
                    senders[(instance, queue_id)] = sender
                    if len(senders) > limit:
                        queue.forget_oldest()
                else:
                    yield new(
                        Envelope, (time, instance, queue_id, sender, int(octets), int(nrcpt or 0))
                    )
            if lines >= next_progress:
                next_progress = lines - lines % every + every
                if progress is not None:
                    counts.lines, counts.bytes = lines, size
                    progress(counts)
    finally:
        counts.lines, counts.bytes = lines, size
        counts.skipped += skipped


def _has_time(line: str) -> bool:
    """Whether ``line`` starts as a time does (a month name, or four digits and "-"): the
    lines records are read from; others are counted as skipped (or ignored, if blank or a
    journal header)."""
    return line[:3] in _MONTHS or (line[:4].isdigit() and line[4:5] == "-")


def _timed(text: str, found: list[str]) -> bool:
    """Whether every line of a block (``text`` split into ``found``) passes ``_has_time``,
    told cheaply: the first line's month (or "YYYY-" in ASCII digits) starts every other line.
    False means "look at each line".

    The first line's date ("Nov 27 ", "2026-11-27") is counted first: a longer text is
    counted faster, and a block seldom spans two days.
    """
    if not found:
        return True
    if text[:3] in _MONTHS:
        day, lead = text[:7], text[:3]
    elif text[:4].isdigit() and text[:4].isascii() and text[4:5] == "-":
        day, lead = text[:10], text[:5]
    else:
        return False
    others = len(found) - 1
    return text.count("\n" + day) == others or text.count("\n" + lead) == others


#: Syslog names remembered by the reading loop (a log has a handful).
_NAMES = 1_000
#: relay= values whose pre-filter answer the reading loop remembers (cleared when full).
_RELAYS = 10_000
_SECONDS = tuple(timedelta(seconds=n) for n in range(60))
#: The last four characters of a usual-layout time with the space after it (":05 " in
#: "Nov 27 00:05:43 " is ":43 ") → its seconds: one lookup checks the layout and reads them.
_SECOND_SUFFIXES = {f":{n:02d} ": _SECONDS[n] for n in range(60)}


class _Clock:
    """The times of one file's record lines, as ``parse_time`` gives them, but cheaply.

    A classic syslog time in the usual layout (``Nov 27 00:05:43 ``, ``Nov  7 00:05:43 ``) is
    the start of its minute, parsed once and kept (at most ``MINUTES``), plus its seconds. Any
    other time is parsed again only when its text differs from the previous line's (every line
    of one second has the same), by ``parse_time`` itself for anything unusual.
    """

    MINUTES = 4096

    def __init__(self, reference: datetime) -> None:
        self.reference = reference
        self.limit = reference + timedelta(days=1)  # parse_time's "a day after the reference"
        self.zone = reference.tzinfo or UTC
        #: "Nov 27 00:05" → the start of that minute in the year parse_time gives every second
        #: of it (minutes with a second on each side of the limit are not kept).
        self.minutes: dict[str, datetime] = {}
        self.last_text = ""
        self.last_time: datetime | None = None
        self.last_head = ""  # the first 16 characters of the last line timed by the minutes
        self.last_second = reference

    def time_of(self, line: str) -> datetime | None:
        """``parse_time(line, reference)``."""
        head = line[:16]
        if head == self.last_head:  # the same second as the line before, in the usual layout
            return self.last_second
        start = self.minutes.get(head[:12])
        if start is not None:
            second = _SECOND_SUFFIXES.get(head[12:])
            if second is not None:
                # every part read here is in head: a line with the same head has this time
                self.last_head, self.last_second = head, start + second
                return self.last_second
        # The time text with the space after it: no time format has a space from index 14
        # on (classic "Nov  7 00:05:43 ", "Nov 7 00:05:43 ", RFC 3339, "2026-11-30 02:57:55").
        stop = line.find(" ", 14)
        text = line[: stop + 1] if stop >= 0 else line
        if text != self.last_text:
            self.last_text = text
            self.last_time = (
                self._syslog(line) if line[:1].isalpha() else parse_time(line, self.reference)
            )
        return self.last_time

    def _syslog(self, line: str) -> datetime | None:
        parsed = parse_time(line, self.reference)
        match = _SYSLOG_TIME.match(line)
        if parsed is None or match is None or match.end(4) != 12:
            return parsed
        # Keep this minute's start for time_of, in the year parse_time gives each of its
        # seconds: unless the limit falls inside the minute, all get the same year.
        try:
            start = datetime(
                self.reference.year,
                _MONTHS[match.group(1)],
                int(match.group(2)),
                int(match.group(3)),
                int(match.group(4)),
                tzinfo=self.zone,
            )
            if start > self.limit:
                start = start.replace(year=start.year - 1)
            elif start + _SECONDS[59] > self.limit:
                return parsed
        except (KeyError, ValueError):
            return parsed
        if len(self.minutes) >= self.MINUTES:
            self.minutes.clear()
        self.minutes[line[:12]] = start
        return parsed


def relay_prefilter(globs: Sequence[str]) -> Callable[[str], bool] | None:
    """A cheap, conservative ``relays`` test for ``read_records`` from host globs: the literal
    tail of each glob must occur in the ``relay=`` value. None (parse every delivery line) when
    a glob has wildcards other than a leading ``*``."""
    tails: list[str] = []
    for glob in globs:
        pattern = glob.strip().lower()
        if not pattern:
            continue
        tail = pattern.lstrip("*")
        if not tail or any(char in tail for char in "*?[]"):
            return None
        tails.append(tail)
    if not tails:
        return lambda relay: False
    search = re.compile("|".join(re.escape(tail) for tail in tails)).search

    def wanted(relay: str) -> bool:
        return search(relay) is not None

    return wanted
