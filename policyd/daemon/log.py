"""Log lines on stdout (journald picks them up): one line per event, text or JSON.

Two sources feed one stream:

- ``twisted.logger`` events (start-up, reloads, errors, Twisted's own messages) go through
  ``LogOutput.__call__``, which filters by the configured level and writes at once;
- prediction lines from ``PolicyEngine`` (one per recipient, at ``info``) go through
  ``LogOutput.prediction``, the hot path: the part of the line that is the same for every answer
  of one (sender, recipient) is rendered once and kept with the engine's cached answer
  (``policyd.engine.cache.PredictionLine``); each line adds only the time, queue ID, instance
  and client address. ``LogOutput.emit`` takes whole records (errors, and predictions from
  callers without the fast path) and writes the very same bytes.

Lines are collected and written together: one ``write`` per reactor turn (``serve`` schedules
the flush at the end of the turn, after the turn's replies, with ``EndOfTurn.last`` of the
``EndOfTurn`` that sends them, ``policyd.wire.writer``), at once for errors and Twisted events
(which keeps the order), when 64 KiB are waiting, and on stop. A batch is whole lines, written
to stdout's file descriptor until every byte is out (``PYTHONUNBUFFERED`` or not), so no line
is ever split between two writers or cut short by a signal; a descriptor that refuses bytes
(non-blocking, reader stalled) keeps the rest for the next flush, and beyond ``MAX_UNSENT``
waiting bytes new prediction lines are dropped and counted rather than growing memory.

Text lines are ``key=value`` pairs (values with spaces, quotes, ``=`` or control characters are
quoted JSON-style, so one record is always one line); JSON lines are one object each. Lines
carry an ISO 8601 UTC timestamp unless stdout is the journal (``$JOURNAL_STREAM`` names our
stdout), which stamps lines itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from json.encoder import encode_basestring
from typing import TYPE_CHECKING, Any, TextIO, cast

from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogBeginner

from policyd.constants import (
    LOG_DEBUG,
    LOG_ERROR,
    LOG_FORMATS,
    LOG_INFO,
    LOG_JSON,
    LOG_TEXT,
    LOG_WARN,
)
from policyd.engine.stats import LogThrottle

if TYPE_CHECKING:
    from policyd.engine.cache import PredictionLine

TEXT = LOG_TEXT
JSON = LOG_JSON
FORMATS = LOG_FORMATS

#: ``log.level`` values and the Twisted level each one means; ``warning`` and ``critical``, the
#: names written in the ``level=`` field, are understood too.
LEVELS: dict[str, LogLevel] = {
    LOG_DEBUG: LogLevel.debug,
    LOG_INFO: LogLevel.info,
    "warning": LogLevel.warn,
    LOG_WARN: LogLevel.warn,
    LOG_ERROR: LogLevel.error,
    "critical": LogLevel.critical,
}

#: Our names for Twisted's levels in the ``level=`` field.
_LEVEL_NAMES = {
    LogLevel.debug: LOG_DEBUG,
    LogLevel.info: LOG_INFO,
    LogLevel.warn: "warning",
    LogLevel.error: LOG_ERROR,
    LogLevel.critical: "critical",
}

#: Event key under which our own code passes structured fields to a twisted.logger line.
FIELDS = "policyd_fields"

#: A character that forces a text value into quotes (anything but these safe ones).
_NEEDS_QUOTES = re.compile(r"[^A-Za-z0-9.\-_@:/+,*<>\[\]()#%!?~^&|;{}$']")
#: A JSON string literal, as ``json.dumps(value, ensure_ascii=False)`` writes it.
_encode_string: Callable[[str], str] = encode_basestring
#: ``json.dumps(value, ensure_ascii=False, default=str)`` without building an encoder per call.
_encode_json: Callable[[object], str] = json.JSONEncoder(ensure_ascii=False, default=str).encode

#: Buffered characters that make a flush happen at once rather than at the end of the turn.
FLUSH_CHARS = 65536

#: Bytes refused by a stalled stdout kept for later; past this, prediction lines are dropped.
MAX_UNSENT = 4 << 20

#: Characters JSON leaves raw with ensure_ascii=False that a log reader may take for a line
#: break or that reorder what a terminal shows (issue 16: forged lines): C1 controls (NEL
#: U+0085 among them), U+2028/U+2029, and the bidi marks, embeddings, overrides and isolates.
_UNSAFE = re.compile("[\x80-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape_unsafe(text: str) -> str:
    """``text`` with every ``_UNSAFE`` character as a JSON ``\\uXXXX`` escape."""
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def level_for(name: str) -> LogLevel:
    """The Twisted level for a ``log.level`` value (unknown names fall back to info)."""
    level: LogLevel = LEVELS.get(name.strip().lower(), LogLevel.info)
    return level


#: Rendered text values by value: senders, recipients, reasons and explanations repeat from
#: one prediction to the next, so most values skip the quoting check. Bounded; cleared when full.
_RENDERED: dict[object, str] = {}
_RENDERED_LIMIT = 8192


def text_value(value: object) -> str:
    """One value in a ``key=value`` line: bare when safe, else a JSON string literal.

    Lists and tuples are joined with commas; None and "" are written as ``""`` so that a key is
    never followed by nothing.
    """
    kind = type(value)
    if kind is str or kind is tuple:  # the hashable common cases: memoized
        try:
            return _RENDERED[value]
        except KeyError:
            pass
        rendered = _render(value)
        if len(_RENDERED) >= _RENDERED_LIMIT:
            _RENDERED.clear()
        _RENDERED[value] = rendered
        return rendered
    return _render(value)


def _render(value: object) -> str:
    if type(value) is str:
        text = value
    elif isinstance(value, list | tuple):
        text = ",".join(map(str, value))
    elif value is None:
        text = ""
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = str(value)
    if text and _NEEDS_QUOTES.search(text) is None:
        return text
    return _escape_unsafe(_encode_string(text))


def text_line(pairs: Iterable[tuple[str, object]]) -> str:
    """``key=value key="value with spaces"``: one line, no trailing newline."""
    return " ".join(f"{key}={text_value(value)}" for key, value in pairs)


def json_line(pairs: Iterable[tuple[str, object]]) -> str:
    """One JSON object on one line; values that JSON cannot hold are written as strings."""
    return _escape_unsafe(_encode_json(dict(pairs)))


_second_cache: list[tuple[int, str]] = [(-1, "")]
_milli_cache: list[tuple[int, str]] = [(-1, "")]


def timestamp(now: float) -> str:
    """``2024-05-01T12:00:00.123Z``: UTC, milliseconds truncated (cached per millisecond: under
    load many lines share one)."""
    millis = int(now * 1000)
    cached = _milli_cache[0]
    if cached[0] == millis:
        return cached[1]
    second, fraction = divmod(millis, 1000)
    cached_second, prefix = _second_cache[0]
    if second != cached_second:
        prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        _second_cache[0] = (second, prefix)
    text = f"{prefix}{fraction:03d}Z"
    _milli_cache[0] = (millis, text)
    return text


def stdout_is_journal(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """True when ``$JOURNAL_STREAM`` (``dev:inode``, systemd.exec(5)) names ``stream``'s file."""
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    if not value:
        return False
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return value == f"{info.st_dev}:{info.st_ino}"


class LogOutput:
    """The process's log sink: a stream, a format, a minimum level; all changeable on reload."""

    def __init__(
        self,
        stream: TextIO,
        fmt: str = TEXT,
        level: str = LOG_INFO,
        *,
        timestamps: bool = True,
        clock: Callable[[], float] = time.time,
        schedule: Callable[[Callable[[], None]], object] | None = None,
    ) -> None:
        """``schedule(f)`` arranges for ``f`` to run at the end of the reactor turn (an
        ``EndOfTurn.last``, or ``lambda f: reactor.callLater(0, f)``);
        without it every prediction line is written at once. A ``stream`` with a file
        descriptor (stdout, a file) is written through the descriptor; any other (a StringIO)
        through ``write`` and ``flush``."""
        self._stream = stream
        self._fd = _descriptor(stream)
        self._clock = clock
        self._schedule = schedule
        self._timestamps = timestamps
        self._flush_pending = False
        self._lines: list[str] = []  # whole lines, each with its newline, not yet written
        self._chars = 0
        self._unsent = b""  # what a non-blocking descriptor refused, written before the rest
        self._millis = -1  # the millisecond of ``_prediction_head``
        self._prediction_head = ""  # see _prediction_line
        self.lines_dropped = 0  # prediction lines not written because stdout stalled
        #: Called with the number of lines dropped (serve counts them in a metric).
        self.on_drop: Callable[[int], None] = lambda lines: None
        self._drops_told = 0  # of those, how many a warning line has reported
        self._format = TEXT
        self._level: LogLevel = LogLevel.info
        self._info = True
        self.configure(fmt, level)

    def configure(self, fmt: str, level: str) -> None:
        """Switch format and level (called at start-up and after each successful reload)."""
        self._format = fmt if fmt in FORMATS else TEXT
        self._level = level_for(level)
        self._info = self._level <= LogLevel.info
        self._millis = -1  # the next prediction line builds its head in the new format
        self._prediction_head = self._head_for("")

    @property
    def format(self) -> str:
        return self._format

    @property
    def level(self) -> LogLevel:
        return self._level

    # --- formatting ---------------------------------------------------------------------------

    def _line(self, pairs: list[tuple[str, object]]) -> str:
        if self._format == JSON:
            return json_line(pairs)
        return text_line(pairs)

    def _head(self, level: str) -> list[tuple[str, object]]:
        if self._timestamps:
            return [("time", timestamp(self._clock())), ("level", level)]
        return [("level", level)]

    def render_event(self, event: Mapping[str, Any]) -> str | None:
        """The line for a twisted.logger event, or None when its level is below the minimum."""
        level = event.get("log_level", LogLevel.info)
        if level < self._level:
            return None
        pairs = self._head(_LEVEL_NAMES.get(level, level.name))
        namespace = event.get("log_namespace")
        if namespace == "log_legacy":  # twisted.python.log.msg() from inside Twisted
            namespace = "twisted"
        if namespace:
            pairs.append(("logger", namespace))
        message = formatEvent(dict(event)) or ""
        failure = event.get("log_failure")
        if failure is not None:
            message = f"{message}: {failure.getErrorMessage()}" if message else str(failure.value)
            pairs.append(("msg", message))
            pairs.append(("traceback", failure.getTraceback()))
        else:
            pairs.append(("msg", message))
        fields = event.get(FIELDS)
        if fields:
            pairs.extend(fields.items())
        return self._line(pairs)

    def render_record(self, record: Mapping[str, object]) -> str | None:
        """The line for one engine record (``event`` = prediction or error), or None if filtered."""
        level = LOG_ERROR if record.get("event") == "error" else LOG_INFO
        if level == LOG_INFO and not self._info:
            return None
        if self._format == JSON:
            pairs = self._head(level)
            pairs.extend(record.items())
            return json_line(pairs)
        head = (
            f"time={timestamp(self._clock())} level={level}"
            if self._timestamps
            else (f"level={level}")
        )
        return " ".join([head, *[f"{key}={text_value(value)}" for key, value in record.items()]])

    def render_prediction(
        self, line: PredictionLine, queue_id: str, instance: str, client_address: str
    ) -> str | None:
        """``render_record(line.record(queue_id, instance, client_address))``, byte for byte,
        with the fixed part of the line rendered once per format and kept in ``line``."""
        text = self._prediction_line(line, queue_id, instance, client_address)
        return None if text is None else text[:-1]

    def _prediction_line(
        self, line: PredictionLine, queue_id: str, instance: str, client_address: str
    ) -> str | None:
        """``render_prediction``'s line with its newline, from three kept parts: the head (time
        stamp, level, event, up to the queue ID's key) rebuilt once per millisecond, the
        line's fixed part rendered once per format (with the newline), and between them only
        the queue ID, instance and client address of this request."""
        if not self._info:
            return None
        if self._timestamps:
            now = self._clock()
            millis = int(now * 1000)
            if millis != self._millis:  # lines within one millisecond share the head
                self._millis = millis
                self._prediction_head = self._head_for(timestamp(now))
        fmt = self._format
        tail = line.rendered.get(fmt)
        if tail is None:
            tail = line.rendered[fmt] = self._tail_for(line)
        if fmt == JSON:
            middle = (
                f"{_encode_string(queue_id)}, "
                f'"instance": {_encode_string(instance)}, '
                f'"client_address": {_encode_string(client_address)}'
            )
            return f"{self._prediction_head}{_escape_unsafe(middle)}{tail}"
        rendered = _RENDERED.get  # text_value's memo, looked up here to save three calls
        return (
            f"{self._prediction_head}{rendered(queue_id) or text_value(queue_id)} "
            f"instance={rendered(instance) or text_value(instance)} "
            f"client_address={rendered(client_address) or text_value(client_address)}{tail}"
        )

    def _head_for(self, stamp: str) -> str:
        """A prediction line up to the queue ID's value, in the current format."""
        if self._format == JSON:
            time_field = f'"time": "{stamp}", ' if self._timestamps else ""
            return f'{{{time_field}"level": "info", "event": "prediction", "queue_id": '
        time_field = f"time={stamp} " if self._timestamps else ""
        return f"{time_field}level=info event=prediction queue_id="

    def _tail_for(self, line: PredictionLine) -> str:
        """A prediction line's fields after the client address, and its end, in the current
        format (JSON escapes compose character by character, so the part is escaped alone)."""
        if self._format == JSON:
            fields = "".join(
                f", {_encode_string(key)}: {_encode_json(value)}" for key, value in line.fields
            )
            return _escape_unsafe(fields) + "}\n"
        return "".join(f" {key}={text_value(value)}" for key, value in line.fields) + "\n"

    # --- output -------------------------------------------------------------------------------

    def __call__(self, event: Mapping[str, Any]) -> None:
        """``ILogObserver``: write one line per event at or above the level, at once."""
        line = self.render_event(event)
        if line is None:
            return
        self._lines.append(line + "\n")
        self.flush()

    def prediction(
        self, line: PredictionLine, queue_id: str, instance: str, client_address: str
    ) -> None:
        """The engine's fast path: one prediction line, written with the rest of the turn's."""
        text = self._prediction_line(line, queue_id, instance, client_address)
        if text is None:
            return
        if self._unsent and len(self._unsent) > MAX_UNSENT:  # see _add
            self.lines_dropped += 1
            self.on_drop(1)
            return
        self._lines.append(text)
        self._chars += len(text)
        if self._chars >= FLUSH_CHARS or self._schedule is None:
            self.flush()
        elif not self._flush_pending:
            self._flush_pending = True
            self._schedule(self._scheduled_flush)

    def emit(self, record: Mapping[str, object]) -> None:
        """The engine's ``emit``: one line per record; errors are written at once."""
        line = self.render_record(record)
        if line is None:
            return
        if record.get("event") == "error":
            self._lines.append(line + "\n")
            self.flush()
        else:
            self._add(line + "\n")

    def _add(self, line: str) -> None:
        """Queue ``line`` for the end of the turn (``prediction`` has this inline)."""
        if len(self._unsent) > MAX_UNSENT:  # stdout stopped taking lines: never grow memory
            self.lines_dropped += 1
            self.on_drop(1)
            return
        self._lines.append(line)
        self._chars += len(line)
        if self._schedule is None or self._chars >= FLUSH_CHARS:
            self.flush()
        elif not self._flush_pending:
            self._flush_pending = True
            self._schedule(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_pending = False
        self.flush()

    def flush(self) -> None:
        """Write every waiting line now, in order, whole (also called on stop)."""
        if self.lines_dropped != self._drops_told and not self._unsent:  # stdout caught up
            dropped = self.lines_dropped - self._drops_told
            self._drops_told = self.lines_dropped
            pairs = self._head("warning")
            pairs += [("logger", __name__), ("msg", f"{dropped} prediction lines dropped: "
                      "stdout did not take them"), ("dropped", dropped)]  # fmt: skip
            self._lines.append(self._line(pairs) + "\n")
        lines = self._lines
        if not lines and not self._unsent:
            return
        self._lines = []
        self._chars = 0
        text = "".join(lines)
        fd = self._fd
        if fd is None:
            try:
                self._stream.write(text)
                self._stream.flush()
            except (OSError, ValueError):  # closed or full: logging must never stop the daemon
                pass
            return
        data = self._unsent + text.encode("utf-8", "replace")
        self._unsent = b""
        while data:
            try:
                written = os.write(fd, data)
            except BlockingIOError:  # a non-blocking stdout is full: the rest goes first next time
                self._unsent = data  # (no retry timer: the reactor would spin while stdout stalls)
                return
            except InterruptedError:
                continue
            except OSError:  # closed, or the disk is full: logging must never stop the daemon
                return
            data = data[written:]

    def drain(self, seconds: float) -> None:
        """Flush, then wait up to ``seconds`` for a stalled stdout to take what is left (at
        exit: the last lines are not dropped just because the reader was slow)."""
        deadline = time.monotonic() + seconds
        self.flush()
        while self._unsent and self._fd is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            with contextlib.suppress(OSError, ValueError):
                select.select([], [self._fd], [], remaining)
            self.flush()


def _descriptor(stream: TextIO) -> int | None:
    """The file descriptor behind ``stream`` (flushed first), or None for in-memory streams."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is both
        return None
    with contextlib.suppress(OSError, ValueError):
        stream.flush()  # anything written through the stream before stays in front
    return fd


#: Twisted's own lines when accept(2) fails (``twisted.internet.tcp``): one per failed accept, and
#: three for each connection its EMFILE recovery accepts only to close at once, so a storm of
#: connections to a process out of file descriptors writes thousands of lines a second.
_ACCEPT_FAILED = "Could not accept new connection ({acceptError})"
_EMFILE_CLOSED = "EMFILE recovery: Closed socket from {address}"
_EMFILE_STEPS = frozenset(
    {
        "EMFILE encountered; releasing reserved file descriptor.",
        "Re-reserving EMFILE recovery file descriptor.",
    }
)

#: What to do about an accept error, by errno name.
_ACCEPT_FIXES = {
    "EMFILE": "the process is out of file descriptors: raise LimitNOFILE= (systemd) or "
    "ulimit -n, or lower server.max_connections",
    "ENFILE": "the system is out of file descriptors (fs.file-max)",
}


class AcceptErrors:
    """A log observer in front of another: accept failures are counted, and logged rate-limited.

    Twisted's lines for a failed accept(2) (and for its EMFILE recovery, which accepts and
    closes at once) are not passed on one by one: ``count(1)`` is called per connection not
    taken (``m365_policyd_protocol_errors_total{kind="accept-failed"}``), and one warning is
    written at most once per ``LOG_INTERVAL`` with how many there were since the last (issue
    16: an EMFILE storm wrote thousands of lines in seconds). Every other event passes through.
    """

    def __init__(
        self,
        observer: Callable[[Mapping[str, Any]], None],
        count: Callable[[int], None],
        clock: Callable[[], float],
    ) -> None:
        self._observer = observer
        self._count = count
        self._throttle = LogThrottle(clock)
        self._since = 0  # connections not taken since the last warning

    def __call__(self, event: Mapping[str, Any]) -> None:
        text = event.get("log_format")
        if text in _EMFILE_STEPS:
            return
        if text == _ACCEPT_FAILED:
            error = str(event.get("acceptError", "unknown error"))
        elif text == _EMFILE_CLOSED:
            error = "EMFILE"
        else:
            self._observer(event)
            return
        self._count(1)
        self._since += 1
        if self._throttle.allow("accept") is None:
            return
        since, self._since = self._since, 0
        self._observer(
            {
                "log_level": LogLevel.warn,
                "log_namespace": event.get("log_namespace", __name__),
                "log_format": "cannot accept connections ({error}): {since} connection(s) "
                "closed unanswered since the last such line (at most one a minute); {fix}",
                "error": error,
                "since": since,
                "fix": _ACCEPT_FIXES.get(error, "see accept(2)"),
                "log_time": event.get("log_time"),
            }
        )


def start_logging(output: Callable[[Mapping[str, Any]], None]) -> None:
    """Send every twisted.logger event to ``output`` (a ``LogOutput``, or ``AcceptErrors``
    in front of one) from now on (once per process)."""
    # Twisted calls observers as plain callables; declaring the zope interface would only add
    # an untyped dependency, so the cast states the protocol instead.
    observer = cast(ILogObserver, output)
    globalLogBeginner.beginLoggingTo([observer], discardBuffer=False, redirectStandardIO=False)


def default_output(
    fmt: str,
    level: str,
    schedule: Callable[[Callable[[], None]], object],
    on_drop: Callable[[int], None] = lambda lines: None,
) -> LogOutput:
    """A ``LogOutput`` on stdout that never blocks, without timestamps when stdout is the
    journal. Stdout is switched to ``O_NONBLOCK``; ``LogOutput`` writes to the descriptor itself,
    keeps what the reader refused for the next flush and beyond ``MAX_UNSENT`` bytes drops lines,
    counting them with ``on_drop(n)``."""
    sys.stdout.flush()
    os.set_blocking(sys.stdout.fileno(), False)
    output = LogOutput(
        sys.stdout,
        fmt,
        level,
        timestamps=not stdout_is_journal(sys.stdout),
        schedule=schedule,
    )
    output.on_drop = on_drop
    return output
