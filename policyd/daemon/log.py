"""Log lines on stdout (journald picks them up): one line per event, text or JSON.

Two sources feed one stream:

- ``twisted.logger`` events (start-up, reloads, errors, Twisted's own messages) go through
  ``LogOutput.__call__``, which filters by the configured level and writes and flushes one line;
- prediction records from ``PolicyEngine`` (one per recipient) go through ``LogOutput.emit``,
  the hot path: no ``Logger`` machinery, the line is formatted and appended to the stream's
  buffer, and one scheduled flush (``serve`` uses ``callLater(0.1)``) writes them all.

Both write to the same stream object, so lines keep their order. Text lines are ``key=value``
pairs (values with spaces, quotes, ``=`` or control characters are quoted JSON-style, so one
record is always one line); JSON lines are one object each. Lines carry an ISO 8601 UTC
timestamp unless stdout is the journal (``$JOURNAL_STREAM`` names our stdout), which stamps
lines itself.
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
from typing import Any, TextIO, cast

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
_encode_string = json.JSONEncoder(ensure_ascii=False).encode

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
    return _escape_unsafe(json.dumps(dict(pairs), ensure_ascii=False, default=str))


_second_cache: list[tuple[int, str]] = [(-1, "")]


def timestamp(now: float) -> str:
    """``2024-05-01T12:00:00.123Z``: UTC with milliseconds (the seconds part is cached)."""
    second = int(now // 1)
    cached_second, prefix = _second_cache[0]
    if second != cached_second:
        prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        _second_cache[0] = (second, prefix)
    return f"{prefix}{int((now - second) * 1000):03d}Z"


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
        """``schedule(f)`` arranges for ``f`` to run soon (``lambda f: reactor.callLater(0, f)``);
        without it every prediction line is flushed at once."""
        self._stream = stream
        self._clock = clock
        self._schedule = schedule
        self._timestamps = timestamps
        self._flush_pending = False
        self._format = TEXT
        self._level: LogLevel = LogLevel.info
        self._info = True
        self.configure(fmt, level)

    def configure(self, fmt: str, level: str) -> None:
        """Switch format and level (called at start-up and after each successful reload)."""
        self._format = fmt if fmt in FORMATS else TEXT
        self._level = level_for(level)
        self._info = self._level <= LogLevel.info

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

    # --- output -------------------------------------------------------------------------------

    def __call__(self, event: Mapping[str, Any]) -> None:
        """``ILogObserver``: write one line per event at or above the level, flushed at once."""
        line = self.render_event(event)
        if line is None:
            return
        self._write(line + "\n")
        self.flush()

    def emit(self, record: Mapping[str, object]) -> None:
        """The engine's ``emit``: one line per prediction, flushed once per reactor turn."""
        line = self.render_record(record)
        if line is None:
            return
        self._write(line + "\n")
        if record.get("event") == "error" or self._schedule is None:
            self.flush()
        elif not self._flush_pending:
            self._flush_pending = True
            self._schedule(self.flush)

    def _write(self, text: str) -> None:
        try:  # noqa: SIM105 - hot path: contextlib.suppress costs a context manager per line
            self._stream.write(text)
        except (OSError, ValueError):  # stdout closed or full: logging must never stop the daemon
            pass

    def flush(self) -> None:
        """Write buffered lines to the stream's file now; what the reader cannot take yet is
        tried again shortly (a ``NonBlockingStream`` never waits)."""
        self._flush_pending = False
        with contextlib.suppress(OSError, ValueError):  # see _write
            self._stream.flush()
        if getattr(self._stream, "pending", 0) and self._schedule is not None:
            self._flush_pending = True
            self._schedule(self.flush)

    def drain(self, seconds: float) -> None:
        """Flush and wait up to ``seconds`` for the reader (at exit)."""
        drain = getattr(self._stream, "drain", None)
        if drain is not None:
            drain(seconds)
        else:
            self.flush()


def start_logging(output: LogOutput) -> None:
    """Send every twisted.logger event to ``output`` from now on (once per process)."""
    # Twisted calls observers as plain callables; declaring the zope interface would only add
    # an untyped dependency, so the cast states the protocol instead.
    observer = cast(ILogObserver, output)
    globalLogBeginner.beginLoggingTo([observer], discardBuffer=False, redirectStandardIO=False)


#: Bytes of log lines held while stdout's reader does not keep up; lines beyond are dropped
#: and counted (``m365_policyd_log_lines_dropped_total``), never waited for (issue 16).
LOG_BUFFER_BYTES = 4 << 20

#: Buffered bytes at which a write tries to empty the buffer at once (like a full stdio buffer).
_WRITE_THROUGH = 64 << 10


class NonBlockingStream:
    """A text stream on a file descriptor that never blocks the reactor (issue 16, class 7).

    The descriptor is switched to ``O_NONBLOCK``; ``write`` appends to a buffer of at most
    ``limit`` bytes and ``flush`` writes what the reader takes now. A line that does not fit is
    dropped and ``on_drop(1)`` is called. A reader that has gone away (EPIPE) loses the buffer.
    ``drain(seconds)`` waits up to that long for the reader, for the last lines at exit.
    """

    def __init__(
        self,
        fd: int,
        *,
        limit: int = LOG_BUFFER_BYTES,
        on_drop: Callable[[int], None] = lambda lines: None,
    ) -> None:
        self._fd = fd
        self._limit = limit
        self._buffer = bytearray()
        self.on_drop = on_drop
        os.set_blocking(fd, False)

    def fileno(self) -> int:
        return self._fd

    @property
    def pending(self) -> int:
        """Bytes written but not yet taken by the reader."""
        return len(self._buffer)

    def write(self, text: str) -> int:
        data = text.encode("utf-8", "backslashreplace")
        if len(self._buffer) + len(data) > self._limit:
            self.flush()
            if len(self._buffer) + len(data) > self._limit:
                self.on_drop(max(text.count("\n"), 1))
                return 0
        self._buffer += data
        if len(self._buffer) >= _WRITE_THROUGH:
            self.flush()
        return len(text)

    def flush(self) -> None:
        while self._buffer:
            try:
                written = os.write(self._fd, self._buffer)
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            except OSError:  # the reader is gone: nobody will read these lines
                self._buffer.clear()
                return
            del self._buffer[:written]

    def drain(self, seconds: float) -> None:
        """Flush, waiting up to ``seconds`` for the reader to take everything."""
        deadline = time.monotonic() + seconds
        self.flush()
        while self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            with contextlib.suppress(OSError, ValueError):
                select.select([], [self._fd], [], remaining)
            self.flush()


def default_output(
    fmt: str,
    level: str,
    schedule: Callable[[Callable[[], None]], object],
    on_drop: Callable[[int], None] = lambda lines: None,
) -> LogOutput:
    """A ``LogOutput`` on stdout that never blocks (``NonBlockingStream``), without timestamps
    when stdout is the journal; ``on_drop(n)`` counts lines dropped while the reader stalls."""
    sys.stdout.flush()
    stream = NonBlockingStream(sys.stdout.fileno(), on_drop=on_drop)
    return LogOutput(
        cast(TextIO, stream),
        fmt,
        level,
        timestamps=not stdout_is_journal(sys.stdout),
        schedule=schedule,
    )
