"""The Postfix policy protocol over Twisted: one connection's bytes in, one reply per request out.

Postfix treats any byte it did not ask for as a dead connection, so this layer writes exactly one
``action=TEXT\n\n`` reply per request and nothing else. It is thin: the framing, limits and
reading of requests are the codec's (``policyd.wire.codec``), the writing of replies is
``policyd.wire.writer``'s, and the answers are the handler's (``policyd.engine.policy``). What
is left here:

* **Batching.** Every complete request found in one read is answered, and the replies of the
  whole reactor turn are sent when its reads are done, one ``send`` per connection
  (``policyd.wire.writer.EndOfTurn``).
* **Malformed requests** (the codec's ``MalformedRequestError``) close the connection without a
  reply (Postfix logs, reconnects and retries) and are counted in ``Stats.protocol_errors`` by
  kind; requests before it in the same read are answered first. Other connections are not
  affected.
* **Limits.** Beyond ``max_connections`` open connections a new one is closed at once; a
  connection without data for ``idle_timeout`` seconds is closed. Both are counted. The idle
  check is one timer per factory that sweeps the connections at the earliest possible deadline,
  so a request costs only one clock read.
* **Slow answers.** A handler may answer with a Deferred (a postmap lookup in a thread); that
  connection alone waits, and what it sends meanwhile is held (up to ``max_request_bytes``) and
  read in order afterwards.
* **Fail open.** The ``Handler`` never raises by contract; if it does anyway, or answers
  something that cannot be sent, the request is answered ``DUNNO``, counted in
  ``Stats.internal_errors`` and logged (rate-limited).

Request counting by stage is the engine's; this layer measures each ``handle`` call into the
duration histogram and keeps the open-connection gauge.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from time import perf_counter
from typing import TYPE_CHECKING, Any
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import classImplements  # type: ignore[import-untyped]  # no stubs shipped

from policyd.engine.stats import (
    IDLE_TIMEOUT,
    TOO_LARGE,
    TOO_MANY_CONNECTIONS,
    LogThrottle,
    Stats,
)
from policyd.wire.codec import (
    WANTED_ATTRIBUTES,
    MalformedRequestError,
    Request,
    RequestDecoder,
    add_piece,
)
from policyd.wire.writer import EndOfTurn, ReplyWriter

if TYPE_CHECKING:
    from twisted.internet.interfaces import IAddress, IReactorTime

__all__ = [
    "FALLBACK_ACTION",
    "WANTED_ATTRIBUTES",
    "Handler",
    "PolicyFactory",
    "PolicyProtocol",
    "ServerLimits",
    "describe_peer",
]

#: What a request gets when our own code fails: never refuse mail for our own bug.
FALLBACK_ACTION = "DUNNO"

#: Longest action text we send. Postfix reads attribute values up to 4 x line_length_limit
#: (8192 bytes by default); a longer reply would make Postfix drop the connection and retry.
MAX_ACTION_BYTES = 8000

#: Longest stretch, in seconds, one connection's pipelined requests are answered in a row before
#: the reactor serves the others: a flood on one connection (issue 16) must not hold back
#: Postfix's answers on another. Postfix itself sends one request at a time, so it never waits.
TURN_BUDGET = 0.005

#: Distinct encoded replies kept; answers repeat ("DUNNO" above all), so this is plenty.
REPLY_CACHE_LIMIT = 4096

#: Shortest delay between two idle sweeps (guards against float rounding at the deadline).
MIN_SWEEP_DELAY = 0.001


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
        self.decoder = RequestDecoder(factory.settings.max_request_bytes)
        # Replies go through a ReplyWriter once connected; before that (a test double answering
        # inside makeConnection) straight to the transport.
        self._writer: ReplyWriter | None = None
        self._write: Callable[[bytes], None] = self._write_to_transport
        self._closing = False
        self._counted = False  # in factory's open set and stats.connections
        self._waiting = False  # an answer is a Deferred that has not fired yet
        self._queued: list[Request] = []  # decoded requests behind the one being waited for
        self._fault: str | None = None  # a malformed request behind them: close once answered
        self._held: list[bytes | bytearray] = []  # received meanwhile, fed in order afterwards
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
        self._writer = ReplyWriter(self.transport, factory.end_of_turn)
        self._write = self._writer.write
        # Back-pressure: when a client sends requests faster than it reads the replies, the
        # transport's write buffer fills and pauses us, and we stop reading from it.
        self._transport().registerProducer(self, True)
        try:
            self._session = factory.handler.new_session()
        except Exception:  # fail open: the handler copes with a None session
            factory.internal_error("new_session failed", {})

    def connectionLost(self, reason: object = None) -> None:  # noqa: N802 - Twisted name
        self._closing = True
        self._queued = []
        self._held = []
        if self._writer is not None:
            self._writer.discard()
        if self._counted:
            self._counted = False
            self._factory.closed(self)

    def close(self, kind: str | None = None) -> None:
        """Close after flushing replies already written; ``kind`` counts a protocol error."""
        if self._closing:
            return
        self._closing = True
        self._queued = []
        self._held = []
        self.last_activity = self._seconds()  # the sweep aborts it if the flush never ends
        if kind is not None:
            self._factory.protocol_error(kind, self)
        if self._writer is not None:  # the replies of this turn go before the close
            self._writer.flush()
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
        if self._writer is not None:
            self._writer.discard()
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
            add_piece(self._held, data)
            self._held_len += len(data)
            if self._held_len >= self._factory.settings.max_request_bytes:
                self.close(TOO_LARGE)
            return
        try:
            requests = self.decoder.feed(data)
        except MalformedRequestError as error:
            self._answer(error.requests, error.kind)
            return
        if requests:
            self._answer(requests, None)

    def _answer(self, requests: list[Request], fault: str | None) -> None:
        """Answer ``requests`` in order with one write; then close for ``fault``, if any.

        A Deferred answer stops here: what is answered is sent, and the rest waits for it.
        """
        factory = self._factory
        handle = self._handle
        session = self._session
        observe = factory.stats.observe_duration
        cache = factory.replies
        replies: list[bytes] = []
        began = perf_counter()
        turn_ends = began + factory.turn_budget
        for attrs in requests:
            try:
                answer = handle(attrs, session)
            except Exception:  # fail open: a bug must never refuse mail
                factory.internal_error("policy handler raised", attrs)
                answer = FALLBACK_ACTION
            if type(answer) is not str and isinstance(answer, Deferred):  # str: skip the ABC
                # The handler waits on something slow (a postmap lookup): send what is
                # answered, hold the rest of this connection until the answer comes.
                if replies:
                    self._write(b"".join(replies))
                self._waiting = True
                self._queued = requests[len(replies) + 1 :]  # one reply per request before it
                self._fault = fault
                answer.addBoth(self._answered, attrs, began)
                return
            answered = perf_counter()
            observe(answered - began)
            began = answered  # the next request's clock starts where this one's stopped
            try:
                replies.append(cache[answer])
            except (KeyError, TypeError):
                replies.append(factory.encode_reply(answer, attrs))
            if answered > turn_ends and len(replies) < len(requests):
                # Give the other connections their turn; read on where this one stopped.
                self._write(b"".join(replies))
                self._pause_turn(requests[len(replies) :], fault)
                return
        if replies:
            self._write(replies[0] if len(replies) == 1 else b"".join(replies))
        if fault is not None:
            self.close(fault)

    def _answered(self, answer: object, attrs: Mapping[str, str], began: float) -> None:
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
            return
        reply = factory.replies.get(answer) if isinstance(answer, str) else None
        self._write(reply or factory.encode_reply(answer, attrs))
        self._read_on()

    def _pause_turn(self, rest: list[Request], fault: str | None) -> None:
        """Stop reading this connection until the reactor's next turn, then answer ``rest``."""
        self._waiting = True
        self._queued = rest
        self._fault = fault
        self._transport().pauseProducing()
        self._factory.call_soon(self._next_turn)

    def _next_turn(self) -> None:
        self._waiting = False
        if self._closing:
            return
        self._transport().resumeProducing()
        self._read_on()

    def _read_on(self) -> None:
        """Answer what queued up behind a wait, then the data held meanwhile, in order."""
        queued, self._queued = self._queued, []
        fault, self._fault = self._fault, None
        held, self._held, self._held_len = self._held, [], 0
        if queued or fault is not None:
            self._answer(queued, fault)
        for data in held:
            if self._waiting:  # the rest waits again: keep the later data behind it
                self._held.append(data)
                self._held_len += len(data)
            else:
                self.dataReceived(bytes(data))
        if self._close_when_answered and not self._waiting:
            self.close()

    def _write_to_transport(self, data: bytes) -> None:
        self._transport().write(data)


# A call rather than @implementer, whose untyped decorator strict mypy refuses.
classImplements(PolicyProtocol, IHalfCloseableProtocol)


class PolicyFactory(ServerFactory):
    """Builds ``PolicyProtocol``s; owns the connection limit, idle sweep and reply cache."""

    log = Logger()
    noisy = False  # no "Starting factory" line per listening port

    def __init__(
        self,
        handler: Handler,
        stats: Stats,
        settings: ServerLimits,
        clock: IReactorTime,
        end_of_turn: Callable[[Callable[[], None]], object] | None = None,
    ) -> None:
        """``end_of_turn(f)`` runs ``f`` when the reactor turn's I/O is done (an ``EndOfTurn``
        shared with the log output; by default one of this factory's own)."""
        self.handler = handler
        self.stats = stats
        self.clock = clock
        # Without the mypy-zope plugin mypy misreads zope interface methods (no ``self``), so
        # the reactor is called through an untyped alias.
        self._reactor: Any = clock
        #: Seconds of answering one connection's pipelined requests per reactor turn.
        self.turn_budget = TURN_BUDGET
        #: Sends every connection's replies (held by its ReplyWriter) at the end of the turn.
        self.end_of_turn = end_of_turn or EndOfTurn(self._reactor.callLater)
        self.seconds: Callable[[], float] = clock.seconds  # type: ignore[misc]  # see above
        self._settings = settings
        self._open: set[PolicyProtocol] = set()
        self._sweep_call: Any = None  # IDelayedCall
        self.replies: dict[str, bytes] = {}
        self._throttle = LogThrottle(self.seconds)  # one line per error kind per minute

    # --- settings and connections -----------------------------------------------------------

    @property
    def settings(self) -> ServerLimits:
        """The limits in force; assign a new object on reload (read per connection and read)."""
        return self._settings

    @settings.setter
    def settings(self, settings: ServerLimits) -> None:
        self._settings = settings
        for protocol in self._open:  # the new request limit applies from the next read on
            protocol.decoder.max_request_bytes = settings.max_request_bytes
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

    def call_soon(self, call: Callable[[], None]) -> None:
        """Run ``call`` in the reactor's next turn, after the I/O that is ready now."""
        self._reactor.callLater(0, call)

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
        suppressed = self._throttle.allow("internal")
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
        suppressed = self._throttle.allow(kind)
        if suppressed is None:
            return
        text = "closed policy connection from {peer} without a reply: {kind}"
        if suppressed:
            text += " ({suppressed} more of this kind not logged since the last)"
        self.log.warn(text, peer=describe_peer(protocol), kind=kind, suppressed=suppressed)


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
