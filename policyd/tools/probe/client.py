"""A small SMTP client on Twisted that asks, and never sends (README: "Ask Microsoft 365 itself").

One ``session`` per sender: EHLO, STARTTLS (mandatory; the server's certificate is not
verified, as Postfix's ``encrypt`` level), EHLO, ``MAIL FROM``, one ``RCPT TO`` per recipient,
``RSET``, ``QUIT``. **Never DATA**: this module has no code path that writes it. Every step
waits at most ``timeout`` seconds; the TCP connection is opened from the egress address.

TLS runs over the standard library's ``ssl.MemoryBIO`` (no pyOpenSSL, which Twisted's own
``startTLS`` needs and which is not one of our dependencies): the client certificate and key
are loaded with ``SSLContext.load_cert_chain``, exactly the PEM files Postfix uses.

Failures before the first RCPT reply raise ``ProbeError`` with one line naming the step;
the command turns it into exit 69 (``EX_UNAVAILABLE``).
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, error
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

#: Commands that would start a message: never written, whatever the caller asks.
_NEVER = frozenset({"DATA", "BDAT"})

#: Longest reply line we keep (RFC 5321 allows 512 octets; Microsoft's stay well below).
_MAX_LINE = 4096


class ProbeError(Exception):
    """The session could not ask its question: one line saying which step failed and why."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where and as whom to connect: Postfix's next hop, certificate, key and egress address."""

    host: str
    port: int
    egress: str = ""  # "" lets the kernel choose the source address
    certificate: str = ""  # PEM file with the client certificate (and chain); "" presents none
    key: str = ""  # PEM private key; "" means the key is in ``certificate``
    helo: str = "localhost"


@dataclass(slots=True)
class Transcript:
    """What one session said and heard: each command and its reply, in order."""

    sender: str
    replies: dict[str, str] = field(default_factory=dict)  # recipient -> RCPT reply
    mail_reply: str = ""
    dialogue: list[tuple[str, str]] = field(default_factory=list)  # (command, reply)
    quit: bool = False


def client_context(target: Target) -> ssl.SSLContext:
    """A TLS client context that presents ``target``'s certificate and verifies nothing.

    Raises ``ProbeError`` when the certificate or key cannot be read or do not match.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # Postfix's "encrypt": encrypted, not authenticated
    if target.certificate:
        try:
            context.load_cert_chain(target.certificate, target.key or None)
        except (OSError, ssl.SSLError) as problem:
            key = (
                f"key {target.key}"
                if target.key
                else "no key file (give --key, or put the key into the certificate file)"
            )
            raise ProbeError(
                f"cannot load the client certificate {target.certificate} with {key}: "
                f"{_reason(problem)}"
            ) from problem
    return context


def _reason(problem: BaseException) -> str:
    if isinstance(problem, OSError) and problem.strerror:
        return problem.strerror
    return str(problem) or type(problem).__name__


def _failure(problem: Exception) -> Failure:
    return Failure(problem)  # type: ignore[no-untyped-call]  # Twisted 22.4 leaves it untyped


def _transport(protocol: Protocol) -> Any:
    """The transport, typed loosely: without mypy-zope, mypy misreads interface methods."""
    return protocol.transport


class _SMTPClient(Protocol):
    """Reads SMTP replies (multi-line aware) and speaks TLS over a memory BIO once asked."""

    def __init__(self) -> None:
        self._buffer = b""
        self._lines: list[str] = []
        self._waiting: defer.Deferred[str] | None = None
        self._replies: list[str] = []
        self._tls: ssl.SSLObject | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._handshake: defer.Deferred[None] | None = None
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.closed = False
        self.failed = False  # the connection was aborted (TLS broke, or the server misbehaved)

    # -- bytes in -------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted callback name
        if self._tls is None:
            self._plain(data)
            return
        self._incoming.write(data)
        if self._handshake is not None:
            self._continue_handshake()
            return
        chunks: list[bytes] = []
        while True:
            try:
                chunk = self._tls.read(65536)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLError as problem:
                self._fail(ProbeError(f"TLS failed: {problem}"))
                return
            if not chunk:
                break
            chunks.append(chunk)
        self._flush()
        self._plain(b"".join(chunks))

    def _plain(self, data: bytes) -> None:
        self._buffer += data
        while b"\n" in self._buffer:
            raw, _, self._buffer = self._buffer.partition(b"\n")
            line = raw.rstrip(b"\r").decode("utf-8", "replace")[:_MAX_LINE]
            self._lines.append(line)
            if len(line) < 4 or line[3] != "-":  # "250 ..." ends a reply, "250-..." goes on
                self._replies.append("\n".join(self._lines))
                self._lines = []
        if len(self._buffer) > _MAX_LINE:
            self._fail(ProbeError("the server sent a line longer than 4096 octets"))
        self._deliver()

    def _deliver(self) -> None:
        if self._waiting is not None and self._replies:
            waiting, self._waiting = self._waiting, None
            waiting.callback(self._replies.pop(0))

    def _fail(self, problem: Exception) -> None:
        self.failed = True
        if self._waiting is not None:
            waiting, self._waiting = self._waiting, None
            waiting.errback(_failure(problem))
        if self._handshake is not None:
            handshake, self._handshake = self._handshake, None
            handshake.errback(_failure(problem))
        if self.transport is not None:
            _transport(self).abortConnection()

    def connectionLost(self, reason: object = connectionDone) -> None:  # noqa: N802 - Twisted name
        self.closed = True
        self._fail(ProbeError("the server closed the connection"))
        self.lost.callback(None)

    # -- bytes out ------------------------------------------------------------------------

    def reply(self) -> defer.Deferred[str]:
        """The next whole reply (all its lines, joined by newlines)."""
        waiting: defer.Deferred[str] = defer.Deferred()
        if self.closed:
            waiting.errback(_failure(ProbeError("the server closed the connection")))
            return waiting
        self._waiting = waiting
        self._deliver()
        return waiting

    def send(self, line: str) -> None:
        """Write one command line; a line break inside it, or DATA/BDAT, is refused."""
        if "\r" in line or "\n" in line or line.split(" ", 1)[0].upper() in _NEVER:
            raise ProbeError(f"refusing to send {line!r}: a probe never sends a message")
        data = line.encode("utf-8") + b"\r\n"
        if self._tls is None:
            _transport(self).write(data)
            return
        self._tls.write(data)
        self._flush()

    def _flush(self) -> None:
        pending = self._outgoing.read()
        if pending and self.transport is not None:
            _transport(self).write(pending)

    # -- TLS ------------------------------------------------------------------------------

    def start_tls(self, context: ssl.SSLContext, server_name: str | None) -> defer.Deferred[None]:
        """Wrap the connection in TLS; fires when the handshake is done."""
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_hostname=server_name)
        self._handshake = defer.Deferred()
        handshake = self._handshake
        self._continue_handshake()
        return handshake

    def _continue_handshake(self) -> None:
        assert self._tls is not None
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, OSError) as problem:
            self._flush()
            self._fail(ProbeError(f"TLS handshake failed: {_reason(problem)}"))
            return
        self._flush()
        if self._handshake is not None:
            handshake, self._handshake = self._handshake, None
            handshake.callback(None)
        if self._incoming.pending:
            self.dataReceived(b"")


def _last_line(reply: str) -> str:
    """A multi-line reply as one line: the lines joined by spaces, later codes dropped."""
    lines = reply.split("\n")
    return " ".join([lines[0], *(line[4:] for line in lines[1:])])


async def session(
    reactor: Any,
    target: Target,
    sender: str,
    recipients: Sequence[str],
    *,
    timeout: float,
) -> Transcript:
    """Ask ``target`` about ``recipients`` of ``sender`` in one SMTP session; see the module.

    ``reactor`` provides ``IReactorTCP`` and ``IReactorTime``. Raises ``ProbeError`` when
    the connection, STARTTLS, the handshake or a step before the first RCPT fails or times out.
    """
    context = client_context(target)
    transcript = Transcript(sender)
    bind = (target.egress, 0) if target.egress else None
    endpoint = HostnameEndpoint(
        reactor, target.host, target.port, timeout=timeout, bindAddress=bind
    )
    where = f"{target.host}:{target.port}" + (f" from {target.egress}" if target.egress else "")
    try:
        connecting: defer.Deferred[_SMTPClient] = connectProtocol(  # type: ignore[no-untyped-call]
            endpoint, _SMTPClient()
        )
        connecting.addTimeout(timeout * 2, reactor)  # name lookup and every address tried
        client: _SMTPClient = await connecting
    except (defer.TimeoutError, error.ConnectError, error.DNSLookupError, OSError) as problem:
        raise ProbeError(f"cannot connect to {where}: {_reason(problem)}") from problem

    async def ask(step: str, command: str | None, wanted: str) -> str:
        if command is not None:
            client.send(command)
        waiting = client.reply()
        waiting.addTimeout(timeout, reactor)
        try:
            reply = await waiting
        except defer.TimeoutError as problem:
            raise ProbeError(f"{where}: no reply to {step} within {timeout:g} s") from problem
        except ProbeError as problem:
            raise ProbeError(f"{where}: {step}: {problem}") from problem
        transcript.dialogue.append((command or "(greeting)", _last_line(reply)))
        if wanted and not reply.startswith(wanted):
            raise ProbeError(f"{where}: {step} refused: {_last_line(reply)}")
        return reply

    try:
        await ask("the greeting", None, "220")
        offer = await ask("EHLO", f"EHLO {target.helo}", "250")
        if not any(line[4:].strip().upper() == "STARTTLS" for line in offer.split("\n")):
            raise ProbeError(f"{where}: the server does not offer STARTTLS")
        await ask("STARTTLS", "STARTTLS", "220")
        handshake = client.start_tls(context, None)
        handshake.addTimeout(timeout, reactor)
        try:
            await handshake
        except defer.TimeoutError as problem:
            raise ProbeError(f"{where}: TLS handshake not done within {timeout:g} s") from problem
        except ProbeError as problem:
            raise ProbeError(f"{where}: {problem}") from problem
        await ask("EHLO after STARTTLS", f"EHLO {target.helo}", "250")
        mail = await ask("MAIL FROM", f"MAIL FROM:<{sender}>", "")
        transcript.mail_reply = _last_line(mail)
        for recipient in recipients:
            if not mail.startswith("2"):
                transcript.replies[recipient] = transcript.mail_reply
                continue
            reply = await ask("RCPT TO", f"RCPT TO:<{recipient}>", "")
            transcript.replies[recipient] = _last_line(reply)
        await ask("RSET", "RSET", "")
        await _quit(client, ask, transcript)
    except ProbeError:
        if not client.closed and not client.failed and not transcript.quit:
            # Say goodbye without waiting: the server may be the silent one that failed us.
            transcript.quit = True
            client.send("QUIT")
            transcript.dialogue.append(("QUIT", ""))
        raise
    finally:
        await _close(reactor, client, timeout)
    return transcript


async def _close(reactor: Any, client: _SMTPClient, timeout: float) -> None:
    """Close after what was written has left (a QUIT must reach the server before the
    command exits), waiting at most ``timeout`` for the connection to end."""
    if client.closed:
        return
    if client.transport is not None:
        _transport(client).loseConnection()
    lost = client.lost
    lost.addTimeout(timeout, reactor)
    try:
        await lost
    except defer.TimeoutError:
        _transport(client).abortConnection()


async def _quit(client: _SMTPClient, ask: Any, transcript: Transcript) -> None:
    """Say QUIT and read its reply; a server that hangs up instead is fine."""
    transcript.quit = True
    try:
        await ask("QUIT", "QUIT", "")
    except ProbeError:
        if not client.closed:
            raise


__all__ = ["ProbeError", "Target", "Transcript", "client_context", "session"]
