"""The Postfix policy protocol: bytes in, one ``action=...`` reply per request out.

Wire format (Postfix SMTPD_POLICY_README): a request is ``name=value`` lines, each ended by
``\\n``, and the request is ended by an empty line; the reply is ``action=TEXT\\n\\n``. Many
requests travel over one connection, and Postfix treats any byte it did not ask for as a dead
connection, so this layer writes exactly one reply per request and nothing else.

What the protocol layer decides, and nothing more:

* **Framing.** Requests are found by splitting on the empty line. A request split across reads
  is kept as bytes until its end arrives; every complete request found in one read is answered
  with one ``transport.write``. A line that starts a request empty is an empty request (zero
  attributes) and is answered like any other, as Postfix's line-oriented grammar reads it.
* **Validation.** The whole request must be UTF-8 without NUL bytes, every line must contain
  ``=``, and a request (with its blank line) may not exceed ``max_request_bytes``. A malformed
  request closes the connection without a reply (Postfix logs, reconnects and retries) and is
  counted in ``Stats.protocol_errors`` by kind; requests before it in the same read are
  answered first. Other connections are not affected.
* **CR LF.** Postfix never sends ``\\r``; a person typing into ``telnet`` does. A ``\\r\\n``
  pair is read as ``\\n`` (a bare ``\\r`` stays part of the value), so a hand-typed request is
  answered. The reply is always ``\\n``-terminated as the protocol says.
* **Limits.** Beyond ``max_connections`` open connections a new one is closed at once; a
  connection without data for ``idle_timeout`` seconds is closed. Both are counted. The idle
  check is one timer per factory that sweeps the connections at the earliest possible deadline,
  so a request costs only one clock read.
* **Fail open.** The ``Handler`` never raises by contract; if it does anyway, or answers
  something that cannot be sent, the request is answered ``DUNNO``, counted in
  ``Stats.internal_errors`` and logged (rate-limited).

Request counting by stage is the engine's (``policyd.engine.policy``); this layer measures each
``handle`` call into the duration histogram and keeps the open-connection gauge.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from time import perf_counter
from typing import TYPE_CHECKING, Any
from typing import Protocol as TypingProtocol

from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import classImplements  # type: ignore[import-untyped]  # no stubs shipped

from policyd.engine.stats import (
    IDLE_TIMEOUT,
    INVALID_UTF8,
    MAX_ADDRESS_CHARS,
    NO_EQUALS,
    NUL_BYTE,
    TOO_LARGE,
    TOO_MANY_CONNECTIONS,
    VALUE_TOO_LONG,
    Stats,
)

if TYPE_CHECKING:
    from twisted.internet.interfaces import IAddress, IReactorTime

#: The attributes handed to the engine; every line is validated, but only these are decoded
#: into the mapping (building a dict of all ~30 attributes costs more than the engine does).
#: A name sent twice keeps its first value, which the policy protocol allows.
WANTED_ATTRIBUTES = (
    "request",
    "protocol_state",
    "sender",
    "recipient",
    "instance",
    "queue_id",
    "client_address",
)
_MARKERS = tuple((name, f"\n{name}=", len(name) + 2) for name in WANTED_ATTRIBUTES)

#: What a request gets when our own code fails: never refuse mail for our own bug.
FALLBACK_ACTION = "DUNNO"

#: Longest action text we send. Postfix reads attribute values up to 4 x line_length_limit
#: (8192 bytes by default); a longer reply would make Postfix drop the connection and retry.
MAX_ACTION_BYTES = 8000

#: Distinct encoded replies kept; answers repeat ("DUNNO" above all), so this is plenty.
REPLY_CACHE_LIMIT = 4096

#: A protocol or internal error of one kind is logged at most once per this many seconds.
LOG_INTERVAL = 60.0

#: Shortest delay between two idle sweeps (guards against float rounding at the deadline).
MIN_SWEEP_DELAY = 0.001

_NL = 10  # b"\n"[0]
_ALL_BUT_EQUALS_AND_NEWLINE = bytes(sorted(set(range(256)) - {ord("="), _NL}))


def _postfix_layout(text: str) -> dict[str, str] | None:
    """Read a request laid out as Postfix writes it, by position; None for any other layout.

    smtpd_check.c sends the attributes in a fixed order (request, protocol_state,
    protocol_name, helo_name, queue_id, sender, recipient, recipient_count, client_address,
    client_name, reverse_client_name, instance, ...). Checking that each wanted line starts with
    its name is cheaper than searching for seven names; ``_search`` reads everything else.
    """
    lines = text.split("\n", 12)
    if len(lines) < 12:
        return None
    request, state, _, _, queue_id, sender, recipient, _, client, _, _, instance = lines[:12]
    if (
        request == "request=smtpd_access_policy"
        and state[:15] == "protocol_state="
        and queue_id[:9] == "queue_id="
        and sender[:7] == "sender="
        and recipient[:10] == "recipient="
        and client[:15] == "client_address="
        and instance[:9] == "instance="
    ):
        return {
            "request": "smtpd_access_policy",
            "protocol_state": state[15:],
            "queue_id": queue_id[9:],
            "sender": sender[7:],
            "recipient": recipient[10:],
            "client_address": client[15:],
            "instance": instance[9:],
        }
    return None


def _search(text: str) -> dict[str, str]:
    """Pick the wanted values out of a request in any order.

    ``"\nname="`` can only match at the start of a line, since values never contain a newline;
    a name sent twice keeps its first value.
    """
    text = "\n" + text
    attrs = {}
    for name, marker, skip in _MARKERS:
        at = text.find(marker)
        if at >= 0:
            stop = text.find("\n", at + skip)
            attrs[name] = text[at + skip : stop] if stop >= 0 else text[at + skip :]
    return attrs


def _direct_socket(transport: object) -> Any:
    """The socket of a plain Twisted TCP or UNIX connection, else None (TLS, test transports).

    ``PolicyProtocol._send`` reads the write buffer of ``twisted.internet.abstract.
    FileDescriptor`` (``dataBuffer``, ``_tempDataLen``); any transport without them, or of
    another kind, simply uses ``transport.write``.
    """
    if not isinstance(transport, tcp.Connection):
        return None
    if not all(hasattr(transport, name) for name in ("socket", "dataBuffer", "_tempDataLen")):
        return None
    return transport.socket


class Handler(TypingProtocol):
    """What the protocol hands well-formed requests to (``policyd.engine.policy.PolicyEngine``)."""

    def new_session(self) -> object:
        """Per-connection state, opaque to the protocol."""
        ...

    def handle(self, attrs: Mapping[str, str], session: object) -> str | Deferred[str]:
        """The action text for one request (without ``action=``); must not raise.

        A Deferred answer holds this connection (only) until it fires.
        """
        ...


class ServerLimits(TypingProtocol):
    """The ``[server]`` settings this layer reads (``policyd.sources.config.ServerSettings``)."""

    @property
    def max_connections(self) -> int: ...

    @property
    def idle_timeout(self) -> float: ...

    @property
    def max_request_bytes(self) -> int: ...


class PolicyProtocol(Protocol):
    """One Postfix policy client connection; also the push producer of its own replies.

    (It provides ``IPushProducer`` without ``@implementer``: ``registerProducer`` does not
    check, and zope.interface has no type information for strict mypy.)
    """

    def __init__(self, factory: PolicyFactory) -> None:
        self._factory = factory
        self._seconds = factory.seconds
        self._handle = factory.handler.handle
        self._session: object = None
        self._pending: list[bytes] = []  # an incomplete request, as received
        self._pending_len = 0
        self._cr = False  # the last read ended in "\r" (held back: it may start a "\r\n")
        self._closing = False
        self._counted = False  # in factory's open set and stats.connections
        self._direct: Any = None  # the socket, when replies may bypass Twisted's buffer
        self._waiting = False  # an answer is a Deferred that has not fired yet
        self._held: list[bytes] = []  # data received meanwhile, replayed in order afterwards
        self._held_len = 0
        self._close_when_answered = False  # the client half-closed while we were waiting
        self.last_activity = 0.0

    # --- connection life --------------------------------------------------------------------

    def connectionMade(self) -> None:  # noqa: N802 - Twisted callback name
        factory = self._factory
        self.last_activity = self._seconds()
        if factory.open_count >= factory.settings.max_connections:
            self._closing = True
            factory.protocol_error(TOO_MANY_CONNECTIONS, self)
            self._transport().loseConnection()
            return
        factory.opened(self)
        self._counted = True
        self._direct = _direct_socket(self.transport)
        # Back-pressure: when a client sends requests faster than it reads the replies, the
        # transport's write buffer fills and pauses us, and we stop reading from it.
        self._transport().registerProducer(self, True)
        try:
            self._session = factory.handler.new_session()
        except Exception:  # fail open: the handler copes with a None session
            factory.internal_error("new_session failed", {})

    def connectionLost(self, reason: object = None) -> None:  # noqa: N802 - Twisted name
        self._closing = True
        self._pending = []
        self._pending_len = 0
        if self._counted:
            self._counted = False
            self._factory.closed(self)

    def close(self, kind: str | None = None) -> None:
        """Close after flushing replies already written; ``kind`` counts a protocol error."""
        if self._closing:
            return
        self._closing = True
        self._pending = []
        self._pending_len = 0
        self.last_activity = self._seconds()  # the sweep aborts it if the flush never ends
        if kind is not None:
            self._factory.protocol_error(kind, self)
        transport = self._transport()
        if self._counted:
            transport.unregisterProducer()  # a registered producer would hold the close back
        transport.loseConnection()

    def _transport(self) -> Any:
        """The transport, typed loosely: without mypy-zope, mypy misreads interface methods."""
        transport = self.transport
        assert transport is not None, "used before makeConnection"
        return transport

    def abort(self) -> None:
        """Drop the connection now, unsent replies included (a peer that stopped reading)."""
        transport = self._transport()
        abort = getattr(transport, "abortConnection", None)  # ITCPTransport; not every transport
        (abort or transport.loseConnection)()

    # IPushProducer, towards our own transport (see connectionMade)

    def pauseProducing(self) -> None:  # noqa: N802 - Twisted interface name
        """The replies are piling up unread: stop reading requests."""
        self._transport().pauseProducing()

    def resumeProducing(self) -> None:  # noqa: N802 - Twisted interface name
        """The replies went out: read requests again."""
        self._transport().resumeProducing()

    def stopProducing(self) -> None:  # noqa: N802 - Twisted interface name
        """The connection is going away; connectionLost does the cleaning up."""

    # IHalfCloseableProtocol (declared below the class)

    def readConnectionLost(self) -> None:  # noqa: N802 - Twisted interface name
        """The client shut down its sending side: send the replies owed, then close.

        Without this Twisted drops the connection at the end of input, and a reply written in
        the same reactor turn would never leave (a client that sends a request and then
        ``shutdown(SHUT_WR)`` got nothing back).
        """
        if self._waiting:
            self._close_when_answered = True
            return
        self.close()

    def writeConnectionLost(self) -> None:  # noqa: N802 - Twisted interface name
        """We never shut down our own sending side on purpose; nothing to do."""

    @property
    def closing(self) -> bool:
        """True once the connection is being closed; no more data is read or answered."""
        return self._closing

    # --- requests ---------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted callback name
        if self._closing or not data:
            return
        self.last_activity = self._seconds()
        if self._waiting:  # Postfix waits for each answer; anyone else waits their turn
            self._held.append(data)
            self._held_len += len(data)
            if self._held_len >= self._factory.settings.max_request_bytes:
                self.close(TOO_LARGE)
            return
        if self._cr or b"\r" in data:
            data = self._without_crlf(data)
            if not data:
                return
        nul = data.find(b"\x00")  # the only scan for NUL: tails were checked when they came
        pending = self._pending
        if pending:
            if nul < 0 and b"\n\n" not in data and not (data[0] == _NL and pending[-1][-1] == _NL):
                pending.append(data)  # still no end of request: no join, no copy
                self._pending_len += len(data)
                if self._pending_len >= self._factory.settings.max_request_bytes:
                    self.close(TOO_LARGE)
                return
            if nul >= 0:
                nul += self._pending_len
            pending.append(data)
            data = b"".join(pending)
            self._pending = []
            self._pending_len = 0
        if nul >= 0:
            self._answer(data[:nul], NUL_BYTE)
        else:
            self._answer(data, None)

    def _answered(
        self, answer: object, attrs: Mapping[str, str], began: float, rest: bytes, error: str | None
    ) -> None:
        """A Deferred answer arrived: send it, then read on where the connection stopped."""
        self._waiting = False
        factory = self._factory
        if isinstance(answer, Failure):
            factory.internal_error(
                f"policy handler failed: {answer.getErrorMessage()}", attrs, with_traceback=False
            )
            answer = FALLBACK_ACTION
        factory.stats.observe_duration(perf_counter() - began)
        if self._closing:  # the connection went away meanwhile: nobody to answer
            self._held = []
            return
        reply = factory.replies.get(answer) if isinstance(answer, str) else None
        self._send(reply or factory.encode_reply(answer, attrs))
        held, self._held, self._held_len = self._held, [], 0
        if rest or error is not None:
            self._answer(rest, error)
        for data in held:
            if self._waiting:  # the rest waits again: keep the later data behind it
                self._held.append(data)
                self._held_len += len(data)
            else:
                self.dataReceived(data)
        if self._close_when_answered and not self._waiting:
            self.close()

    def _send(self, data: bytes) -> None:
        """Write replies: straight to the socket when nothing is queued ahead of them.

        Postfix waits for each reply before it sends the next request, so in the common case
        Twisted's write buffer is empty and the reply can go out at once, which saves a reactor
        turn and two epoll updates per request. Anything the kernel does not take at once, and
        every case where data is already queued, goes through ``transport.write`` as usual, so
        replies stay in order and back-pressure works as before.
        """
        transport = self._transport()
        sock = self._direct
        if sock is not None and not transport.dataBuffer and not transport._tempDataLen:
            try:
                sent = sock.send(data)
            except OSError:  # EAGAIN, EPIPE, ECONNRESET: Twisted's path handles each of them
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        transport.write(data)

    def _without_crlf(self, data: bytes) -> bytes:
        """Read ``\\r\\n`` as ``\\n``, also when the pair is split across two reads."""
        if self._cr:
            data = b"\r" + data
            self._cr = False
        if data[-1:] == b"\r":
            data = data[:-1]
            self._cr = True
        return data.replace(b"\r\n", b"\n")

    def _answer(self, buf: bytes, error: str | None) -> None:
        """Answer every complete request in ``buf``; keep an incomplete tail for later.

        ``error`` is the kind of a fault found just after ``buf`` (a NUL byte): the requests
        before it are answered, then the connection is closed.
        """
        factory = self._factory
        limit = factory.settings.max_request_bytes
        handle = self._handle
        session = self._session
        observe = factory.stats.observe_duration
        cache = factory.replies
        replies: list[bytes] = []
        start = 0
        size = len(buf)
        kind = None
        while start < size:
            if buf[start] == _NL:  # an empty line where a request starts: an empty request
                end = start
                after = start + 1
            else:
                end = buf.find(b"\n\n", start)
                if end < 0:
                    break
                after = end + 2
            if after - start > limit:
                kind = TOO_LARGE
                break
            raw = buf[start:end]
            try:
                text = raw.decode()
            except UnicodeDecodeError:
                kind = INVALID_UTF8
                break
            if text:
                # The request's "=" and "\n" bytes alone (UTF-8 never hides them inside a
                # character): "=\n=\n...=" when every line has exactly one "=".
                signs = raw.translate(None, _ALL_BUT_EQUALS_AND_NEWLINE)
                if not signs or signs[0] == _NL or signs[-1] == _NL or b"\n\n" in signs:
                    kind = NO_EQUALS  # some line has no "="
                    break
                attrs = _postfix_layout(text) or _search(text)
                if (
                    len(attrs.get("recipient", "")) > MAX_ADDRESS_CHARS
                    or len(attrs.get("sender", "")) > MAX_ADDRESS_CHARS
                ):
                    kind = VALUE_TOO_LONG  # no real address is this long (issue 16)
                    break
            else:
                attrs = {}
            began = perf_counter()
            try:
                answer = handle(attrs, session)
            except Exception:  # fail open: a bug must never refuse mail
                factory.internal_error("policy handler raised", attrs)
                answer = FALLBACK_ACTION
            if isinstance(answer, Deferred):
                # The handler waits on something slow (a postmap lookup): send what is
                # answered, hold the rest of this connection until the answer comes.
                if replies:
                    self._send(b"".join(replies))
                self._waiting = True
                answer.addBoth(self._answered, attrs, began, buf[after:], error)
                return
            observe(perf_counter() - began)
            try:
                replies.append(cache[answer])
            except (KeyError, TypeError):
                replies.append(factory.encode_reply(answer, attrs))
            start = after
        if kind is None:
            rest = size - start
            if error is not None:
                kind = TOO_LARGE if rest >= limit else error
            elif rest:
                if rest >= limit:
                    kind = TOO_LARGE
                else:
                    self._pending = [buf[start:]]
                    self._pending_len = rest
        if replies:
            self._send(replies[0] if len(replies) == 1 else b"".join(replies))
        if kind is not None:
            self.close(kind)


# A call rather than @implementer, whose untyped decorator strict mypy refuses.
classImplements(PolicyProtocol, IHalfCloseableProtocol)


class PolicyFactory(ServerFactory):
    """Builds ``PolicyProtocol``s; owns the connection limit, idle sweep and reply cache."""

    log = Logger()
    noisy = False  # no "Starting factory" line per listening port

    def __init__(
        self, handler: Handler, stats: Stats, settings: ServerLimits, clock: IReactorTime
    ) -> None:
        self.handler = handler
        self.stats = stats
        self.clock = clock
        # Without the mypy-zope plugin mypy misreads zope interface methods (no ``self``), so
        # the reactor is called through an untyped alias.
        self._reactor: Any = clock
        self.seconds: Callable[[], float] = clock.seconds  # type: ignore[misc]  # see above
        self._settings = settings
        self._open: set[PolicyProtocol] = set()
        self._sweep_call: Any = None  # IDelayedCall
        self.replies: dict[str, bytes] = {}
        self._log_state: dict[str, tuple[float, int]] = {}  # key -> (last logged, suppressed)

    # --- settings and connections -----------------------------------------------------------

    @property
    def settings(self) -> ServerLimits:
        """The limits in force; assign a new object on reload (read per connection and read)."""
        return self._settings

    @settings.setter
    def settings(self, settings: ServerLimits) -> None:
        self._settings = settings
        # A shorter idle_timeout must not wait for a sweep planned under the old one.
        self._cancel_sweep()
        if self._open:
            self._sweep_call = self._reactor.callLater(0, self._sweep)

    @property
    def open_count(self) -> int:
        """Connections open now (accepted and not yet lost)."""
        return len(self._open)

    def buildProtocol(self, addr: IAddress | None) -> PolicyProtocol:  # noqa: N802 - Twisted name
        protocol = PolicyProtocol(self)
        protocol.factory = self
        return protocol

    def opened(self, protocol: PolicyProtocol) -> None:
        """Count a connection accepted under the limit and make sure the idle sweep runs."""
        self._open.add(protocol)
        self.stats.connections += 1
        if self._sweep_call is None:
            timeout = self._settings.idle_timeout
            if timeout > 0:
                self._sweep_call = self._reactor.callLater(timeout, self._sweep)

    def closed(self, protocol: PolicyProtocol) -> None:
        """Forget a connection that was lost."""
        self._open.discard(protocol)
        self.stats.connections -= 1
        if not self._open:
            self._cancel_sweep()

    def disconnect_all(self) -> None:
        """Close every connection (shutdown); replies already written are flushed first."""
        for protocol in list(self._open):
            protocol.close()

    # --- idle timeout -----------------------------------------------------------------------

    def _cancel_sweep(self) -> None:
        call = self._sweep_call
        self._sweep_call = None
        if call is not None and call.active():
            call.cancel()

    def _sweep(self) -> None:
        """Close connections idle for ``idle_timeout``; plan the next sweep at the next deadline.

        Activity only moves deadlines later, so the earliest deadline seen now is never later
        than the next real one: no connection outstays its timeout.
        """
        self._sweep_call = None
        timeout = self._settings.idle_timeout
        if timeout <= 0 or not self._open:
            return
        now = self.seconds()
        earliest: float | None = None
        for protocol in list(self._open):
            deadline = protocol.last_activity + timeout
            if now >= deadline:
                if protocol.closing:  # the peer never read our last replies: give up on them
                    protocol.abort()
                else:
                    protocol.close(IDLE_TIMEOUT)
                    deadline = now + timeout
            if earliest is None or deadline < earliest:
                earliest = deadline
        if earliest is not None and self._open:
            self._sweep_call = self._reactor.callLater(
                max(earliest - now, MIN_SWEEP_DELAY), self._sweep
            )

    # --- replies and failures ---------------------------------------------------------------

    def encode_reply(self, answer: object, attrs: Mapping[str, str]) -> bytes:
        """``action=ANSWER\\n\\n`` for a well-formed answer (cached), else the fallback."""
        problem = None
        encoded = b""
        if not isinstance(answer, str) or not answer:
            problem = f"policy handler answered {answer!r}, not an action"
        elif "\n" in answer or "\r" in answer or "\x00" in answer:
            problem = f"policy handler answered {answer!r}, which would break the protocol"
        else:
            try:
                encoded = answer.encode()
            except UnicodeEncodeError:
                problem = f"policy handler answered {answer!r}, which is not UTF-8"
            else:
                if len(encoded) > MAX_ACTION_BYTES:
                    problem = f"policy handler answered {len(encoded)} bytes, too long for Postfix"
        if problem is not None:
            self.internal_error(problem, attrs, with_traceback=False)
            answer, encoded = FALLBACK_ACTION, FALLBACK_ACTION.encode()
        reply = b"action=" + encoded + b"\n\n"
        if problem is None:
            if len(self.replies) >= REPLY_CACHE_LIMIT:
                self.replies = {}
            assert isinstance(answer, str)
            self.replies[answer] = reply
        return reply

    def internal_error(
        self, problem: str, attrs: Mapping[str, str], *, with_traceback: bool = True
    ) -> None:
        """Count and log (rate-limited) one of our own failures; the caller answers DUNNO."""
        self.stats.internal_errors += 1
        suppressed = self._may_log("internal")
        if suppressed is None:
            return
        text = (
            "{problem}; answered DUNNO (protocol_state={protocol_state} queue_id={queue_id} "
            "instance={instance})"
        )
        if suppressed:
            text += "; {suppressed} similar errors not logged since the last"
        emit = self.log.failure if with_traceback else self.log.error
        emit(
            text,
            problem=problem,
            protocol_state=attrs.get("protocol_state", ""),
            queue_id=attrs.get("queue_id", ""),
            instance=attrs.get("instance", ""),
            suppressed=suppressed,
        )

    def protocol_error(self, kind: str, protocol: PolicyProtocol) -> None:
        """Count (and log, rate-limited per kind) a connection closed for ``kind``."""
        self.stats.protocol_errors[kind] += 1
        suppressed = self._may_log(kind)
        if suppressed is None:
            return
        text = "closed policy connection from {peer} without a reply: {kind}"
        if suppressed:
            text += " ({suppressed} more of this kind not logged since the last)"
        self.log.warn(text, peer=describe_peer(protocol), kind=kind, suppressed=suppressed)

    def _may_log(self, key: str) -> int | None:
        """None when ``key`` was logged within LOG_INTERVAL, else how many were suppressed."""
        now = self.seconds()
        last, suppressed = self._log_state.get(key, (-LOG_INTERVAL, 0))
        if key in self._log_state and now - last < LOG_INTERVAL:
            self._log_state[key] = (last, suppressed + 1)
            return None
        self._log_state[key] = (now, 0)
        return suppressed


def describe_peer(protocol: PolicyProtocol) -> str:
    """``host:port`` (``[v6]:port``) of the client, or the socket path, for log lines."""
    try:
        # The transport may be None, and mypy misreads zope interface methods (no mypy-zope).
        address: Any = protocol.transport.getPeer()  # type: ignore[union-attr, misc]
    except Exception:  # a log line must never fail the close it reports
        return "unknown peer"
    host = getattr(address, "host", None)
    if host is not None:
        return f"[{host}]:{address.port}" if ":" in host else f"{host}:{address.port}"
    name = getattr(address, "name", None)
    if isinstance(name, bytes):
        name = name.decode(errors="replace")
    return str(name or "unix socket")
