"""Prediction log lines: the fast path writes what the slow path writes, whole, in order, once."""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.logger import LogLevel

from policyd.daemon import log
from policyd.daemon.log import JSON, TEXT, LogOutput
from policyd.engine.cache import PredictionLine
from tests.serverproc import PolicyServer, rcpt, request_text

CLOCK = 1_795_000_123.4567


def line_of(**fields: object) -> PredictionLine:
    """A prediction line with the engine's fixed fields (any values)."""
    names = ("sender", "recipient", "final", "verdict", "code", "reason", "action", "explanation")
    return PredictionLine(tuple((name, fields[name]) for name in names))


def both(output: LogOutput, line: PredictionLine, head: tuple[str, str, str]) -> tuple[str, str]:
    """(fast path, slow path) renderings of one prediction."""
    fast = output.render_prediction(line, *head)
    slow = output.render_record(line.record(*head))
    assert fast is not None and slow is not None
    return fast, slow


TEXTS = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
AWKWARD = st.sampled_from(
    ["", " ", "a b", 'q"uote', "k=v", "line\nbreak", "tab\t", "ü@bücher.example", "\\", "[::1]",
     "2001:db8::5", "\x7f", "{}", "#%!"]
)  # fmt: skip
VALUES = st.one_of(TEXTS, AWKWARD)


@settings(max_examples=400, deadline=None)
@given(
    fields=st.fixed_dictionaries(
        {
            "sender": VALUES,
            "recipient": VALUES,
            "final": st.lists(VALUES, max_size=3).map(tuple),
            "verdict": st.sampled_from(["accept", "reject"]),
            "code": st.one_of(st.none(), st.sampled_from(["5.7.64", "5.7.68"]), VALUES),
            "reason": VALUES,
            "action": st.sampled_from(["dunno", "defer", "reject", "hold", "reroute"]),
            "explanation": VALUES,
        }
    ),
    head=st.tuples(VALUES, VALUES, VALUES),
    fmt=st.sampled_from([TEXT, JSON]),
    timestamps=st.booleans(),
)
def test_pre_rendered_lines_are_the_slow_path_byte_for_byte(
    fields: dict[str, object], head: tuple[str, str, str], fmt: str, timestamps: bool
) -> None:
    """For any values, including ones that need quoting or escaping, in text and JSON, with and
    without timestamps, the line built from the kept rendering equals the line built from the
    whole record, the first time and every time after."""
    output = LogOutput(io.StringIO(), fmt, timestamps=timestamps, clock=lambda: CLOCK)
    line = line_of(**fields)
    fast, slow = both(output, line, head)
    assert fast == slow
    assert fmt in line.rendered
    assert both(output, line, head) == (slow, slow)  # now from the kept rendering
    if fmt == JSON:
        assert json.loads(fast)["final"] == list(fields["final"])  # type: ignore[call-overload]
    assert "\n" not in fast


def test_a_format_switch_renders_the_kept_line_again() -> None:
    """A reload to another format writes that format, though the line was rendered before."""
    output = LogOutput(io.StringIO(), TEXT, clock=lambda: CLOCK)
    line = line_of(sender="a b", recipient="r@x", final=("r@x",), verdict="reject", code="5.7.64",
                   reason="no-connector", action="defer", explanation='say "x"')  # fmt: skip
    assert both(output, line, ("Q1", "i.1", "10.0.0.5"))[0].startswith("time=")
    output.configure(JSON, "info")
    fast, slow = both(output, line, ("Q1", "i.1", "10.0.0.5"))
    assert fast == slow
    assert json.loads(fast)["sender"] == "a b"


def test_below_info_nothing_is_rendered() -> None:
    """At warn, prediction lines are neither built nor written."""
    stream = io.StringIO()
    output = LogOutput(stream, TEXT, "warn")
    line = line_of(sender="s", recipient="r", final=(), verdict="accept", code=None,
                   reason="local", action="dunno", explanation="e")  # fmt: skip
    output.prediction(line, "Q", "i", "c")
    output.flush()
    assert stream.getvalue() == ""
    assert line.rendered == {}


# --- batching ---------------------------------------------------------------------------------

LINE = line_of(sender="app@contoso.com", recipient="kate@tailspintoys.com",
               final=("kate@tailspintoys.com",), verdict="reject", code="5.7.64",
               reason="sender-not-accepted", action="defer", explanation="no")  # fmt: skip


class Writes:
    """Counts the descriptor writes LogOutput makes (monkeypatched ``os.write``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[bytes] = []
        real = os.write

        def write(fd: int, data: bytes) -> int:
            self.calls.append(bytes(data))
            return real(fd, data)

        monkeypatch.setattr(log.os, "write", write)


def test_a_turns_lines_are_written_once_at_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Predictions wait for the scheduled flush and go out in one write to the descriptor."""
    writes = Writes(monkeypatch)
    scheduled: list[Callable[[], None]] = []
    with open(tmp_path / "out", "w") as stream:
        output = LogOutput(stream, timestamps=False, schedule=scheduled.append)
        for number in range(100):
            output.prediction(LINE, f"Q{number}", "i", "c")
        assert len(scheduled) == 1
        assert writes.calls == []
        scheduled.pop()()
    assert len(writes.calls) == 1
    lines = (tmp_path / "out").read_text().splitlines()
    assert [re.search(r"queue_id=(\S+)", line)[1] for line in lines] == [  # type: ignore[index]
        f"Q{number}" for number in range(100)
    ]


def test_errors_and_events_keep_their_place_behind_waiting_lines() -> None:
    """An error record or a Twisted event is written at once, after the predictions before it."""
    scheduled: list[Callable[[], None]] = []
    stream = io.StringIO()
    output = LogOutput(stream, timestamps=False, schedule=scheduled.append)
    output.prediction(LINE, "Q1", "i", "c")
    output.emit({"event": "error", "problem": "boom"})
    output.prediction(LINE, "Q2", "i", "c")
    output({"log_level": LogLevel.warn, "log_format": "careful", "log_namespace": "t"})
    events = [line.split()[1] for line in stream.getvalue().splitlines()]
    assert events == ["event=prediction", "event=error", "event=prediction", "logger=t"]


def test_a_big_turn_is_written_before_it_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory waiting for the end of a turn is bounded by FLUSH_CHARS."""
    monkeypatch.setattr(log, "FLUSH_CHARS", 1000)
    stream = io.StringIO()
    output = LogOutput(stream, timestamps=False, schedule=lambda flush: None)
    for number in range(50):
        output.prediction(LINE, f"Q{number}", "i", "c")
    written = stream.getvalue()
    assert written.endswith("\n")
    assert output._chars < 1000
    assert len(written.splitlines()) + len(output._lines) == 50


def test_a_stalled_reader_never_gets_a_split_line_and_memory_stays_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a non-blocking pipe nobody reads, flushing never blocks or raises; refused bytes wait
    (bounded by MAX_UNSENT, later lines are dropped and counted); once the reader drains, it
    reads only whole lines, the first ones in order, and then one warning with the count."""
    monkeypatch.setattr(log, "MAX_UNSENT", 100_000)
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETFL, fcntl.fcntl(write_end, fcntl.F_GETFL) | os.O_NONBLOCK)
    scheduled: list[Callable[[], None]] = []
    with os.fdopen(write_end, "w") as stream:
        output = LogOutput(stream, timestamps=False, schedule=scheduled.append)
        for number in range(20_000):  # ~3 MB against a 64 KiB pipe
            output.prediction(LINE, f"Q{number}", "i", "c")
            if number % 100 == 99:
                output.flush()
        assert output.lines_dropped > 0
        assert len(output._unsent) <= 100_000 + log.FLUSH_CHARS + 1000
        received = b""
        os.set_blocking(read_end, False)
        for _ in range(10_000):
            output.flush()
            try:
                chunk = os.read(read_end, 1 << 16)
            except BlockingIOError:
                if not output._unsent and not output._lines:
                    break
                continue
            received += chunk
        os.close(read_end)
    assert received.endswith(b"\n")
    warning = received.splitlines()[-1]
    assert (
        warning
        == (
            f'level=warning logger=policyd.daemon.log msg="{output.lines_dropped} prediction lines '
            f'dropped: stdout did not take them" dropped={output.lines_dropped}'
        ).encode()
    )
    received = received[: -len(warning) - 1]
    numbers = [int(re.search(rb"queue_id=Q(\d+) ", line)[1]) for line in received.splitlines()]  # type: ignore[index]
    assert numbers[: numbers.index(numbers[-1]) + 1] == sorted(numbers)
    assert numbers[:100] == list(range(100))
    assert len(numbers) + output.lines_dropped == 20_000


def test_drain_at_exit_waits_for_a_slow_reader() -> None:
    """What a stalled stdout refused is written once the reader comes back within the drain's
    time, whole, in order; drain returns at its deadline when nobody reads."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    with os.fdopen(write_end, "w") as stream:
        output = LogOutput(stream, timestamps=False, schedule=lambda flush: None)
        for number in range(1000):  # ~230 KB against a 64 KiB pipe
            output.prediction(LINE, f"Q{number}", "i", "c")
        output.flush()
        assert output._unsent
        started = time.monotonic()
        output.drain(0.2)  # nobody reads: gives up at the deadline
        assert 0.2 <= time.monotonic() - started < 2
        chunks: list[bytes] = []

        def read() -> None:
            time.sleep(0.2)
            while chunk := os.read(read_end, 1 << 16):
                chunks.append(chunk)

        reader = threading.Thread(target=read)
        reader.start()
        output.drain(10)
        assert not output._unsent
    reader.join(timeout=10)
    os.close(read_end)
    lines = b"".join(chunks).decode().splitlines()
    assert [line.split()[2] for line in lines] == [f"queue_id=Q{n}" for n in range(1000)]


def test_stdout_unbuffered_or_not_a_batch_is_one_write(tmp_path: Path) -> None:
    """Under PYTHONUNBUFFERED (write-through stdout) the daemon still writes once per batch:
    the lines go straight to the descriptor, not line by line through the stream."""
    raw = open(tmp_path / "out", "wb", buffering=0)  # noqa: SIM115 - closed by the wrapper
    stream = io.TextIOWrapper(raw, write_through=True)  # what -u makes of sys.stdout
    writes: list[int] = []
    real_write = raw.write

    def counted(data: Any) -> int:
        writes.append(len(data))
        return real_write(data)

    raw.write = counted  # type: ignore[method-assign]
    scheduled: list[Callable[[], None]] = []
    output = LogOutput(stream, timestamps=False, schedule=scheduled.append)
    for number in range(10):
        output.prediction(LINE, f"Q{number}", "i", "c")
    scheduled.pop()()
    stream.close()
    assert writes == []  # nothing went through the stream's own writes
    assert len((tmp_path / "out").read_text().splitlines()) == 10


# --- the real process under load --------------------------------------------------------------


def _client(port: int, stop: threading.Event, answered: list[tuple[str, str]]) -> None:
    """A lockstep client (one smtpd): RCPT requests until the server closes the connection."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    except OSError:
        return
    with sock:
        number = 0
        while not stop.is_set():
            number += 1
            instance = f"{threading.get_ident():x}.{number}"
            request = rcpt("app@fabrikam.com", f"r{number % 50}@tailspintoys.com",
                           instance=instance)  # fmt: skip
            try:
                sock.sendall(request_text(request))
                reply = b""
                while not reply.endswith(b"\n\n"):
                    chunk = sock.recv(4096)
                    if not chunk:
                        return
                    reply += chunk
            except OSError:
                return
            answered.append((instance, request["recipient"]))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", [TEXT, JSON])
def test_no_line_is_lost_or_split_when_the_daemon_stops_under_load(
    tmp_path: Path, fmt: str
) -> None:
    """SIGTERM while 20 connections send as fast as they are answered: the daemon exits 0, its
    log holds only whole lines, and exactly one prediction line for every answered request."""
    answered: list[tuple[str, str]] = []
    stop = threading.Event()
    with PolicyServer(tmp_path, log_format=fmt, metrics=False) as server:
        clients = [
            threading.Thread(target=_client, args=(server.port, stop, answered)) for _ in range(20)
        ]
        for client in clients:
            client.start()
        deadline = time.monotonic() + 10
        while len(answered) < 3000 and time.monotonic() < deadline:
            time.sleep(0.01)
        status = server.stop(signal.SIGTERM)
        stop.set()
        for client in clients:
            client.join(timeout=10)
        text = server.log()
    assert status == 0
    assert len(answered) >= 3000
    assert text.endswith("\n")
    predictions = []
    for line in text.splitlines():
        if fmt == JSON:
            record = json.loads(line)  # a split line would not parse
        else:
            assert re.fullmatch(r'(time=\S+ )?level=\w+( \w+=("([^"\\]|\\.)*"|\S+))+', line), line
            record = dict(re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line))
            record = {key: json.loads(v) if v.startswith('"') else v for key, v in record.items()}
        if record.get("event") == "prediction":
            predictions.append((record["instance"], record["recipient"]))
    assert sorted(predictions) == sorted(answered)
