"""Outcomes (SPEC §8): what Microsoft 365 really answered, joined with what the daemon predicted.

Two layers in one file, in this order:

- **Domain** (no reactor, no clock reads): ``parse_delivery`` reads one Postfix log line and
  returns a ``Delivery`` for an smtp/lmtp delivery attempt, ``None`` for any other line, or
  ``UNPARSEABLE`` for a line that starts like a delivery line but does not parse.
  ``OutcomeJoin`` remembers the predictions made at DATA (queue ID → final address / original
  recipient → predicted verdict), counts every delivery attempt to a Microsoft 365 relay into
  ``Stats.observed_replies[dsn]`` and, when the queue ID and the recipient (``to=``, else
  ``orig_to=``) match a prediction, into ``Stats.prediction_outcomes[(predicted, dsn)]``. The
  join state is bounded in size (``MAX_ENTRIES`` addresses, oldest message dropped first) and
  age (``MAX_AGE``, measured with the ``now`` its callers pass in).
- **Wiring**: ``FileFollower`` reads the new complete lines of a log file on each ``poll`` —
  starting at the end of a file that exists at start-up, across rotation (the path names a new
  inode: the old file is read to its end, then the new one from its start), truncation
  (``copytruncate``: the size dropped below the offset, so it starts over) and a file that
  appears later. ``JournalFollower`` runs ``journalctl -f -n 0 -o short-iso`` for Postfix's
  units and feeds its lines. ``OutcomeWatcher`` is what ``serve`` owns: the engine hands it the
  predictions (``expect``), a ``LoopingCall`` polls the follower every second, and reload
  (``configure``) switches the source or the relay patterns without losing the join state.

Each delivery attempt counts once: a recipient deferred with ``4.4.62`` and delivered later
counts ``4.4.62`` and then ``2.6.0``. Address-verification probes (``status=deliverable`` /
``undeliverable``) are not deliveries and are not counted.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import shutil
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from twisted.internet import protocol, task
from twisted.internet.error import ProcessExitedAlready
from twisted.logger import Logger

from policyd.defaults import RELAY_HOSTS
from policyd.stats import Stats

#: Relays that are Microsoft 365 (SPEC §8); ``[outcomes] relay_hosts`` may name others.
DEFAULT_RELAY_HOSTS: tuple[str, ...] = RELAY_HOSTS
#: Join state bounds: addresses remembered, and how long a message's predictions are kept
#: (longer than Postfix's default maximal_queue_lifetime of 5 days, so late retries still join).
MAX_ENTRIES = 100_000
MAX_AGE = 7 * 86400.0
#: Statuses of a delivery attempt that got (or failed to get) an answer from the relay.
COUNTED_STATUSES = frozenset({"sent", "deferred", "bounced", "softbounce"})
#: Predicted verdicts (``policyd.predict.ACCEPT`` / ``REJECT``).
ACCEPT = "accept"
REJECT = "reject"

#: How often the file follower looks for new lines, and how much it reads per look.
POLL_INTERVAL = 1.0
READ_CHUNK = 65536
MAX_READ_PER_POLL = 4 * 1024 * 1024
#: Longer lines are cut here (the rest is dropped): memory stays bounded on any input.
MAX_LINE = 16384
#: How long to wait before starting journalctl again after it exited.
JOURNAL_RESTART_DELAY = 10.0

_log = Logger(namespace="policyd.outcomes")


# --- domain: parsing one log line ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivery:
    """One delivery attempt as Postfix's smtp(8)/lmtp(8) (or local, pipe, ...) logged it."""

    service: str  # the syslog tag without pid: "postfix/smtp", "postfix-out/smtp"
    queue_id: str
    to: str  # the final recipient, as logged
    orig_to: str  # the original recipient ("" when Postfix logged none)
    relay: str  # as logged: "host[address]:port", "none", "local"
    relay_host: str  # "host" (or the whole value when it has no brackets)
    relay_address: str  # "address" inside the brackets, "" without
    dsn: str  # the enhanced status code: "2.6.0", "5.7.64", "4.4.62"
    status: str  # sent, deferred, bounced, ...


class Unparseable:
    """A line that looks like a delivery line but cannot be read (counted as skipped)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNPARSEABLE"


UNPARSEABLE: Final = Unparseable()

# "<tag>[pid]: <queue id>: to=<" anywhere in the line: syslog, ISO-8601 and journalctl
# prefixes all come before it; the tag is syslog_name/service ("postfix/smtp",
# "postfix-out/smtp", "postfix/relay/smtp").
_DELIVERY_START = re.compile(
    r"(?:^|\s)(?P<service>[^\s\[\]/:]+(?:/[^\s\[\]/:]+)+)\[\d+\]: (?P<queue_id>[0-9A-Za-z]+): to=<"
)
_DELIVERY_REST = re.compile(
    r"(?P<to>[^>]*)>"
    r"(?:, orig_to=<(?P<orig_to>[^>]*)>)?"
    r", relay=(?P<relay>[^\s,]+)"
    r"(?:, [a-z_]+=[^\s,]*)*?"  # conn_use=, delay=, delays=
    r", dsn=(?P<dsn>[245]\.\d{1,3}\.\d{1,3})"
    r", status=(?P<status>[A-Za-z]+)(?:\s|$)"
)
_RELAY = re.compile(r"(?P<host>[^\[\]]*)(?:\[(?P<address>[^\[\]]*)\](?::\d+)?)?")


def parse_delivery(line: str) -> Delivery | Unparseable | None:
    """Read one Postfix log line: a ``Delivery``, ``None`` (not a delivery line) or
    ``UNPARSEABLE`` (starts like a delivery line, but the rest does not parse)."""
    if ": to=<" not in line:
        return None
    start = _DELIVERY_START.search(line)
    if start is None:
        return None
    rest = _DELIVERY_REST.match(line, start.end())
    if rest is None:
        return UNPARSEABLE
    relay = rest.group("relay")
    parts = _RELAY.fullmatch(relay)
    if parts is None:
        return UNPARSEABLE
    return Delivery(
        service=start.group("service"),
        queue_id=start.group("queue_id"),
        to=rest.group("to"),
        orig_to=rest.group("orig_to") or "",
        relay=relay,
        relay_host=parts.group("host"),
        relay_address=parts.group("address") or "",
        dsn=rest.group("dsn"),
        status=rest.group("status").lower(),
    )


def relay_matcher(patterns: Iterable[str]) -> Callable[[Delivery], bool]:
    """A test "is this delivery's relay one of ``patterns``" (shell globs, case-insensitive,
    against the relay's host name and its bracketed address)."""
    compiled = [re.compile(fnmatch.translate(p.strip().lower())) for p in patterns if p.strip()]

    def matches(delivery: Delivery) -> bool:
        host = delivery.relay_host.lower().rstrip(".")
        address = delivery.relay_address.lower()
        for pattern in compiled:
            if pattern.match(host) or (address and pattern.match(address)):
                return True
        return False

    return matches


# --- domain: the join ------------------------------------------------------------------------

#: What the engine hands over per relayed address: (final address, original recipient, verdict).
Expected = tuple[str, str, str]


class _Message:
    """One message's predictions: by final address and by original recipient (lower case)."""

    __slots__ = ("finals", "originals", "time")

    def __init__(self, time: float) -> None:
        self.time = time
        self.finals: dict[str, str] = {}
        self.originals: dict[str, str] = {}

    def size(self) -> int:
        return len(self.finals) + len(self.originals)


class OutcomeJoin:
    """Predictions at DATA joined with the replies Postfix logged (see the module docstring).

    Reactor-free: every method that needs the time takes ``now`` (Unix seconds).
    """

    def __init__(
        self,
        stats: Stats,
        relay_hosts: Iterable[str] = DEFAULT_RELAY_HOSTS,
        *,
        max_entries: int = MAX_ENTRIES,
        max_age: float = MAX_AGE,
    ) -> None:
        self._stats = stats
        self.max_entries = max_entries
        self.max_age = max_age
        self._messages: OrderedDict[str, _Message] = OrderedDict()  # oldest first
        self._size = 0
        self.relay_hosts = tuple(relay_hosts)

    @property
    def relay_hosts(self) -> tuple[str, ...]:
        return self._relay_hosts

    @relay_hosts.setter
    def relay_hosts(self, patterns: Iterable[str]) -> None:
        self._relay_hosts = tuple(patterns)
        self._is_microsoft = relay_matcher(self._relay_hosts)

    def __len__(self) -> int:
        """How many addresses (final and original) are remembered."""
        return self._size

    def messages(self) -> int:
        """How many messages (queue IDs) are remembered."""
        return len(self._messages)

    def expect(self, queue_id: str, entries: Iterable[Expected], now: float) -> None:
        """Remember a message's predictions: ``(final address, original recipient, verdict)``."""
        if not queue_id:
            return
        self.prune(now)
        message = self._messages.pop(queue_id, None)
        if message is None:
            message = _Message(now)
        else:
            self._size -= message.size()
            message.time = now
        for final, original, verdict in entries:
            final_key = final.lower()
            message.finals[final_key] = _worse(message.finals.get(final_key), verdict)
            if original:
                original_key = original.lower()
                message.originals[original_key] = _worse(
                    message.originals.get(original_key), verdict
                )
        self._messages[queue_id] = message
        self._size += message.size()
        while self._size > self.max_entries and self._messages:
            _, dropped = self._messages.popitem(last=False)
            self._size -= dropped.size()

    def prune(self, now: float) -> None:
        """Forget messages whose predictions are older than ``max_age``."""
        limit = now - self.max_age
        messages = self._messages
        while messages:
            queue_id, oldest = next(iter(messages.items()))
            if oldest.time >= limit:
                return
            del messages[queue_id]
            self._size -= oldest.size()

    def predicted(self, delivery: Delivery) -> str | None:
        """The verdict predicted for this delivery's recipient, or None when unknown."""
        message = self._messages.get(delivery.queue_id)
        if message is None:
            return None
        verdict = message.finals.get(delivery.to.lower())
        if verdict is None and delivery.orig_to:
            verdict = message.originals.get(delivery.orig_to.lower())
        return verdict

    def observe(self, delivery: Delivery, now: float) -> bool:
        """Count one delivery attempt if it went to a Microsoft 365 relay; True when counted."""
        if delivery.status not in COUNTED_STATUSES or not self._is_microsoft(delivery):
            return False
        stats = self._stats
        stats.observed_replies[delivery.dsn] += 1
        self.prune(now)
        verdict = self.predicted(delivery)
        if verdict is not None:
            stats.prediction_outcomes[(verdict, delivery.dsn)] += 1
        return True

    def feed(self, line: str, now: float) -> None:
        """Parse one log line and count it (an unparseable delivery line counts as skipped)."""
        parsed = parse_delivery(line)
        if parsed is None:
            return
        if isinstance(parsed, Unparseable):
            self._stats.log_lines_skipped += 1
            return
        self.observe(parsed, now)


def _worse(old: str | None, new: str) -> str:
    """Two predictions for one key: refused wins (SPEC §5: a refused final address refuses)."""
    return REJECT if REJECT in (old, new) else new


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
            handle = open(self.path, "rb", buffering=0)  # noqa: SIM115 - kept open across polls
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


class Expectations(Protocol):
    """What the policy engine needs: a place to hand a message's predictions at DATA."""

    @property
    def following(self) -> bool:
        """False while nothing is followed: the engine then skips building the entries."""
        ...

    def expect(self, queue_id: str, entries: Sequence[Expected]) -> None: ...


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
