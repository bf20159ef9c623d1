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

Only the lines that look like records (a cheap substring test) have their time parsed, so the
reading stays fast on logs that are mostly other traffic (BENCHMARKS.md: ≥ 200,000 lines/s).
"""

from __future__ import annotations

import gzip
import io
import os
import re
import sys
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import IO, NamedTuple

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
# After "<syslog name>/qmgr[": the rest of a qmgr line (the name is the word before).
_QMGR_FROM = re.compile(
    r"\d+\]: (?P<queue_id>[0-9A-Za-z]+): from=<(?P<sender>[^>]*)>, "
    r"size=(?P<size>\d+)(?:, nrcpt=(?P<nrcpt>\d+))?"
)
_REMOVED = re.compile(r"\d+\]: (?P<queue_id>[0-9A-Za-z]+): removed\s*$")
_QMGR = "/qmgr["
_NAME = re.compile(r"[^\s\[\]/:]+(?:/[^\s\[\]/:]+)*")


def _qmgr(line: str, pattern: re.Pattern[str]) -> tuple[str, re.Match[str]] | None:
    """(instance, match of ``pattern`` after "/qmgr[") for a qmgr line, else None."""
    at = line.find(_QMGR)
    start = line.rfind(" ", 0, at) + 1
    if at < 0 or _NAME.fullmatch(line, start, at) is None:
        return None
    match = pattern.match(line, at + len(_QMGR))
    if match is None:
        return None
    return line[start:at].split("/", 1)[0], match


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


def _open_text(path: str, stdin: IO[bytes] | None = None) -> IO[str]:
    """A text stream over a plain file, a ``.gz`` file (by magic bytes) or standard input."""
    if path == STDIN:
        raw = stdin if stdin is not None else sys.stdin.buffer
        return io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline=None)
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(
            gzip.open(path, "rb"), encoding="utf-8", errors="replace", newline=None
        )
    if path.endswith(".gz"):
        raise LogError(path, "named .gz but not gzip data")
    return open(path, encoding="utf-8", errors="replace", newline=None)


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
) -> Iterator[Record]:
    """Every record of ``logs`` in order, counting lines, bytes and skipped lines in ``counts``.

    ``relays``, when given, is a cheap test on a delivery line's ``relay=`` value (lower case,
    as logged: ``host[address]:port``): delivery lines it refuses are not parsed at all. It must
    never refuse a relay the caller wants (``relay_prefilter`` builds one from host globs).

    ``progress`` is called with ``counts`` every ``every`` lines and once at the end of each
    file. A damaged ``.gz`` ends its file and is named in ``counts.damaged``.
    """
    for log in logs:
        counts.files.append(log.path)
        try:
            stream = _open_text(log.path, stdin)
        except LogError as error:
            counts.damaged.append(str(error))
            continue
        except OSError as error:
            counts.damaged.append(f"{log.path}: {error.strerror or error}")
            continue
        try:
            with stream:
                yield from _records(
                    stream,
                    reference=log.reference,
                    counts=counts,
                    progress=progress,
                    every=every,
                    wanted=relays,
                )
        except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as error:
            reason = str(error) or type(error).__name__
            counts.damaged.append(f"{log.path}: {reason} (read up to line {counts.lines})")
        if progress is not None:
            progress(counts)


def _records(
    stream: IO[str],
    *,
    reference: datetime,
    counts: LogCounts,
    progress: Callable[[LogCounts], None] | None,
    every: int,
    wanted: Callable[[str], bool] | None,
) -> Iterator[Record]:
    # The hot loop: local names, and one parsed time reused while the time text repeats
    # (every line of the same second).
    last_text = ""
    last_time: datetime | None = None

    def time_of(line: str) -> datetime | None:
        nonlocal last_text, last_time
        text = line[: line.find(" ", 16) if line[:1].isdigit() else 16]
        if text != last_text:
            last_text, last_time = text, parse_time(line, reference)
        return last_time

    months = _MONTHS
    lines = counts.lines
    size = counts.bytes
    skipped = 0
    next_progress = lines + every
    try:
        for line in stream:
            lines += 1
            size += len(line)
            if lines >= next_progress:
                next_progress += every
                if progress is not None:
                    counts.lines, counts.bytes = lines, size
                    progress(counts)
            if line[:3] not in months and not (line[:4].isdigit() and line[4:5] == "-"):
                if not line.startswith("-- ") and line.strip():
                    skipped += 1
                continue
            if ": to=<" in line:
                if wanted is not None:
                    at = line.find(", relay=")
                    if at >= 0 and not wanted(line[at + 8 : line.find(",", at + 8)].lower()):
                        continue
                delivery = parse_delivery(line)
                if delivery is None:
                    continue
                time = time_of(line)
                if isinstance(delivery, Unparseable) or time is None:
                    skipped += 1
                    continue
                yield Attempt(time, delivery.service.split("/", 1)[0], delivery)
            elif "/qmgr[" in line:
                if ": from=<" in line:
                    if ", size=" not in line:
                        continue  # "from=<...>, status=expired, returned to sender"
                    found = _qmgr(line, _QMGR_FROM)
                    time = time_of(line)
                    if found is None or time is None:
                        skipped += 1
                        continue
                    instance, match = found
                    yield Envelope(
                        time,
                        instance,
                        match.group("queue_id"),
                        match.group("sender"),
                        int(match.group("size")),
                        int(match.group("nrcpt") or 0),
                    )
                elif line.rstrip().endswith(": removed"):
                    found = _qmgr(line, _REMOVED)
                    if found is None:
                        skipped += 1
                        continue
                    yield Removed(found[0], found[1].group("queue_id"))
    finally:
        counts.lines, counts.bytes = lines, size
        counts.skipped += skipped


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
    found = tuple(tails)

    def wanted(relay: str) -> bool:
        return any(tail in relay for tail in found)

    return wanted
