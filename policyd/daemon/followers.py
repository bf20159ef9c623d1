"""Following Postfix's log for ``serve``: the wiring half of the outcomes (docs/postfix.md).

``FileFollower`` reads the new complete lines of a log file on each ``poll`` — starting at the
end of a file that exists at start-up, across rotation (the path names a new inode: the old
file is read to its end, then the new one from its start), truncation (``copytruncate``: the
size dropped below the offset, so it starts over) and a file that appears later.
``JournalFollower`` runs ``journalctl -f -n 0 -o short-iso`` for Postfix's units and feeds its
lines. ``OutcomeWatcher`` is what ``serve`` owns: the engine hands it the predictions
(``expect``), a ``LoopingCall`` polls the follower every second, and reload (``configure``)
switches the source or the relay patterns without losing the join state, which lives in
``policyd.engine.outcomes.OutcomeJoin``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from twisted.internet import protocol, task
from twisted.internet.error import ProcessExitedAlready
from twisted.logger import Logger

from policyd.engine.outcomes import DEFAULT_RELAY_HOSTS, Expected, OutcomeJoin
from policyd.engine.stats import Stats
from policyd.sources.files import open_regular

#: How often the file follower looks for new lines, and how much it reads per look.
POLL_INTERVAL = 1.0
READ_CHUNK = 65536
MAX_READ_PER_POLL = 4 * 1024 * 1024
#: Longer lines are cut here (the rest is dropped): memory stays bounded on any input.
MAX_LINE = 16384
#: How long to wait before starting journalctl again after it exited.
JOURNAL_RESTART_DELAY = 10.0

_log = Logger(namespace="policyd.daemon.followers")


# --- domain: the join ------------------------------------------------------------------------

# --- wiring: following a log file ------------------------------------------------------------


class FileFollower:
    """Reads the complete lines appended to ``path`` and hands each to ``on_line``.

    ``start`` opens an existing file at its end; ``poll`` reads what was appended since, follows
    rotation (a new inode at ``path``: finish the old file, then read the new one from its
    start), truncation (size below the offset: start over) and a file that appears later. A
    line without its newline yet waits for the next poll.
    """

    def __init__(
        self,
        path: str,
        on_line: Callable[[str], None],
        *,
        max_read: int = MAX_READ_PER_POLL,
        max_line: int = MAX_LINE,
    ) -> None:
        self.path = path
        self._on_line = on_line
        self._max_read = max_read
        self._max_line = max_line
        self._handle: Any = None  # an unbuffered binary file (io.FileIO)
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file
        self._offset = 0
        self._partial = b""
        self._discarding = False  # inside a line that was cut at max_line
        self._problem = ""  # last open error logged, so it is logged once

    @property
    def offset(self) -> int:
        return self._offset

    def start(self) -> None:
        """Open the file at its end (history is not replayed)."""
        if not self._open():
            _log.info(
                "outcomes: {path} does not exist yet; reading it from its start once it appears",
                path=self.path,
            )
            return
        size = os.fstat(self._handle.fileno()).st_size
        if size:
            self._handle.seek(size - 1)
            # Started in the middle of a line: skip up to its newline.
            self._discarding = self._handle.read(1) != b"\n"
        self._offset = size

    def poll(self) -> None:
        """Read what was appended; follow a rotation or truncation."""
        if self._handle is None and not self._open():
            return
        if not self._read():
            return  # more than max_read waiting: the rest next time, before any switch
        try:
            info = os.stat(self.path)
        except OSError:
            return  # renamed away and not recreated yet: keep reading the old file
        if (info.st_dev, info.st_ino) == self._identity:
            return
        # Rotated: whatever the writer still put into the old file, then the new one.
        self._read()
        if self._partial and not self._discarding:
            self._emit(self._partial)
        self.close()
        _log.info("outcomes: {path} was rotated; reading the new file", path=self.path)
        if self._open():
            self._read()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self._handle = None
        self._identity = None
        self._offset = 0
        self._partial = b""
        self._discarding = False

    def _open(self) -> bool:
        try:
            # Non-blocking open, regular files only: a FIFO at the path must not hang the reactor.
            handle = os.fdopen(open_regular(self.path), "rb", buffering=0)
        except OSError as error:
            problem = error.strerror or str(error)
            if not isinstance(error, FileNotFoundError) and problem != self._problem:
                _log.error(
                    "outcomes: cannot read {path}: {problem}; outcomes are not counted until "
                    "it can be read",
                    path=self.path,
                    problem=problem,
                )
            self._problem = problem
            return False
        self._problem = ""
        info = os.fstat(handle.fileno())
        self._handle = handle
        self._identity = (info.st_dev, info.st_ino)
        self._offset = 0
        self._partial = b""
        self._discarding = False
        return True

    def _read(self) -> bool:
        """Read up to max_read bytes from the open file; True when its end was reached."""
        handle = self._handle
        if os.fstat(handle.fileno()).st_size < self._offset:
            _log.info("outcomes: {path} was truncated; reading it from its start", path=self.path)
            handle.seek(0)
            self._offset = 0
            self._partial = b""
            self._discarding = False
        budget = self._max_read
        while budget > 0:
            data = handle.read(min(READ_CHUNK, budget))
            if not data:
                return True
            self._offset += len(data)
            budget -= len(data)
            self._split(data)
        return False

    def _split(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for raw in lines:
            if self._discarding:
                self._discarding = False  # the end of a cut line
                continue
            self._emit(raw)
        if len(self._partial) > self._max_line:
            if not self._discarding:
                self._emit(self._partial[: self._max_line])
                self._discarding = True
            self._partial = b""

    def _emit(self, raw: bytes) -> None:
        self._on_line(raw[: self._max_line].decode("utf-8", "replace").rstrip("\r"))


# --- wiring: following journald --------------------------------------------------------------

#: journalctl's arguments: follow Postfix's units (Debian's postfix@-.service too), new lines only.
JOURNALCTL_ARGS = ("-f", "-n", "0", "-o", "short-iso", "-u", "postfix", "-u", "postfix@*")


class _LineProtocol(protocol.ProcessProtocol):
    """Splits a child's stdout into lines (bounded like ``FileFollower``)."""

    def __init__(self, on_line: Callable[[str], None], ended: Callable[[str], None]) -> None:
        self._on_line = on_line
        self._ended = ended
        self._partial = b""

    def outReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()[-MAX_LINE:]
        for raw in lines:
            self._on_line(raw[:MAX_LINE].decode("utf-8", "replace").rstrip("\r"))

    def errReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        text = data.decode("utf-8", "replace").strip()
        if text:
            _log.warn("outcomes: journalctl: {text}", text=text[:500])

    def processEnded(self, reason: Any) -> None:  # noqa: N802 - Twisted's name
        self._ended(reason.getErrorMessage())


class JournalFollower:
    """Runs ``journalctl`` and hands its lines on; restarts it if it exits unasked."""

    def __init__(
        self,
        reactor: Any,
        on_line: Callable[[str], None],
        *,
        which: Callable[[str], str | None] = shutil.which,
        restart_delay: float = JOURNAL_RESTART_DELAY,
    ) -> None:
        self._reactor = reactor
        self._on_line = on_line
        self._which = which
        self._restart_delay = restart_delay
        self._transport: Any = None
        self._restart: Any = None
        self._stopped = False

    @property
    def running(self) -> bool:
        return self._transport is not None

    def start(self) -> None:
        """Spawn journalctl; when it is not installed, say so once and count nothing."""
        self._restart = None
        if self._stopped:
            return
        executable = self._which("journalctl")
        if executable is None:
            _log.error(
                'outcomes: postfix_log = "journal" but journalctl is not installed (not in '
                "PATH); no outcomes are counted. Install systemd's journalctl or name the "
                'log file, e.g. postfix_log = "/var/log/mail.log"'
            )
            return
        self._transport = self._reactor.spawnProcess(
            _LineProtocol(self._on_line, self._ended),
            executable,
            ["journalctl", *JOURNALCTL_ARGS],
            env=dict(os.environ),
        )
        _log.info("outcomes: following journald ({command})", command=" ".join(JOURNALCTL_ARGS))

    def stop(self) -> None:
        self._stopped = True
        if self._restart is not None and self._restart.active():
            self._restart.cancel()
        self._restart = None
        transport, self._transport = self._transport, None
        if transport is not None:
            # ProcessExitedAlready: it has ended on its own, nothing to stop.
            with contextlib.suppress(ProcessExitedAlready):
                transport.signalProcess("TERM")

    def _ended(self, why: str) -> None:
        self._transport = None
        if self._stopped:
            return
        _log.warn(
            "outcomes: journalctl exited ({why}); starting it again in {delay:g} s",
            why=why,
            delay=self._restart_delay,
        )
        self._restart = self._reactor.callLater(self._restart_delay, self.start)


# --- wiring: what serve owns -----------------------------------------------------------------


class OutcomeWatcher:
    """The join plus the follower of ``[outcomes] postfix_log``, on the reactor's clock."""

    def __init__(
        self,
        stats: Stats,
        reactor: Any,
        *,
        join: OutcomeJoin | None = None,
        which: Callable[[str], str | None] = shutil.which,
        interval: float = POLL_INTERVAL,
    ) -> None:
        self.join = join if join is not None else OutcomeJoin(stats)
        self._reactor = reactor
        self._which = which
        self._interval = interval
        self.source = ""  # "" (off), "journal" or a file path
        self.file: FileFollower | None = None
        self.journal: JournalFollower | None = None
        self._loop: task.LoopingCall | None = None
        self._problem = ""  # the last poll failure logged, so a persistent one is logged once

    @property
    def active(self) -> bool:
        return bool(self.source)

    def configure(self, source: str, relay_hosts: Iterable[str] = DEFAULT_RELAY_HOSTS) -> None:
        """Follow ``source`` ("" = nothing) with these relay patterns; a new source restarts the
        follower, the remembered predictions stay."""
        self.join.relay_hosts = tuple(relay_hosts)
        if source == self.source:
            return
        self.stop()
        self.source = source
        if source == "journal":
            self.journal = JournalFollower(self._reactor, self._line, which=self._which)
            self.journal.start()
        elif source:
            self.file = FileFollower(source, self._line)
            self.file.start()
            self._loop = task.LoopingCall(self.poll)
            self._loop.clock = self._reactor
            self._loop.start(self._interval, now=False)
            _log.info("outcomes: following {path}", path=source)

    def stop(self) -> None:
        """Stop following (the remembered predictions stay for a later ``configure``)."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self.file is not None:
            self.file.close()
        self.file = None
        if self.journal is not None:
            self.journal.stop()
        self.journal = None
        self.source = ""

    def poll(self) -> None:
        """One look at the file; a failure is logged and the next poll tries again."""
        if self.file is None:
            return
        try:
            self.file.poll()
        except Exception as error:  # never let a log problem stop the loop or the daemon
            problem = repr(error)
            if problem != self._problem:
                _log.error(
                    "outcomes: reading {path} failed: {problem}; retrying every poll",
                    path=self.file.path,
                    problem=problem,
                )
            self._problem = problem
        else:
            self._problem = ""

    @property
    def following(self) -> bool:
        """True while ``[outcomes] postfix_log`` names something to follow."""
        return bool(self.source)

    def expect(self, queue_id: str, entries: Sequence[Expected]) -> None:
        """The engine's hook at DATA: remember the message's predictions (when following)."""
        if self.source:
            self.join.expect(queue_id, entries, self._reactor.seconds())

    def _line(self, line: str) -> None:
        self.join.feed(line, self._reactor.seconds())
