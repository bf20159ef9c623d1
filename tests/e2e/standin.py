"""A Microsoft 365 stand-in: an SMTP server on loopback that refuses relays as Exchange Online does.

Postfix uses it as ``relayhost``. It offers STARTTLS, asks for a client certificate, and for
every ``RCPT TO`` applies Microsoft's documented relay rule (``reference/m365-relay-rules.md``
§1), and for mail into the tenant the Partner connectors' restrictions and RejectDirectSend
(§7: ``550 5.7.51``, ``550 5.7.68``), to what it actually saw on the wire:

* the connection's source address (its view of the "egress address"), and
* the client certificate Postfix presented (CN and SAN DNS names, validity window),
* the envelope sender (P1 ``MAIL FROM``) and the recipient.

The rule is implemented here, independently of ``policyd.rules.predict``, so the daemon's prediction
and this server's verdict check each other in the end-to-end tests. Every transaction is
recorded (envelope, per-recipient replies, the message with its headers) for assertions.

With ``submission=SubmissionView(...)`` it also listens on a second loopback port as Microsoft
365's SMTP AUTH client-submission endpoint (``smtp.office365.com:587``, SPEC §5.4): AUTH PLAIN
and LOGIN offered only after STARTTLS, a login table (login -> password) and a send-as table
(login -> addresses and ``*@domain``), judged by ``submission_verdict``: ``530 5.7.57`` to
``MAIL FROM`` without AUTH, ``535 5.7.3`` to a wrong password, ``550 5.7.60`` for a sender the
login may not use. Microsoft decides SendAs after DATA; the stand-in answers it at ``RCPT``
instead, once per recipient: the verdict depends on the login and ``MAIL FROM`` only, so every
recipient of a transaction is refused wherever it is said, and at RCPT each recipient's reply is
recorded (and logged by Postfix) like the relay rule's.

Stdlib only (``socketserver`` + ``ssl``): one thread per SMTP connection.

Limits of the stand-in, on purpose: the client certificate's chain is checked by OpenSSL
against the test root during the handshake (a certificate that does not chain up fails the
handshake instead of yielding ``TenantAttribution``), while the validity window is checked here
(OpenSSL is told not to check time) so an expired certificate is seen and refused the way
Microsoft 365 refuses it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ipaddress
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import BinaryIO

from cryptography import x509
from cryptography.x509.oid import NameOID

#: OpenSSL's X509_V_FLAG_NO_CHECK_TIME: the handshake accepts expired certificates, we judge them.
_NO_CHECK_TIME = 0x200000

OK = "250 2.1.5 Recipient OK"
NO_CONNECTOR = "550 5.7.64 TenantAttribution; Relay Access Denied"
ATTR36 = "550 5.7.64 Relay Access Denied ATTR36"
PARTNER_RESTRICTED = (
    "550 5.7.51 TenantInboundAttribution; There is a partner connector configured that matched "
    "the message's recipient domain. The connector had either the RestrictDomainsToIPAddresses "
    "or RestrictDomainsToCertificate set"
)
DIRECT_SEND = (
    "550 5.7.68 TenantInboundAttribution; Direct Send not allowed for this organization from "
    "unauthorized sources"
)
AUTH_REQUIRED = "530 5.7.57 Client not authenticated to send mail"
AUTH_FAILED = "535 5.7.3 Authentication unsuccessful"
AUTH_OK = "235 2.7.0 Authentication successful"
SEND_AS_DENIED = "550 5.7.60 SMTP; Client does not have permissions to send as this sender"
WRONG_REGION = (
    "451 4.4.62 Mail sent to the wrong Office 365 region. ATTR35. For more information please "
    "go to https://go.microsoft.com/fwlink/?linkid=865268"
)


# -- the rule -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Connector:
    """An inbound connector as the stand-in tenant knows it."""

    name: str
    connector_type: str = "OnPremises"
    enabled: bool = True
    sender_ip_addresses: tuple[str, ...] = ()  # "127.0.0.10" or "127.0.0.0/24"
    tls_sender_certificate_name: str = ""  # "*.contoso.com", "mail.contoso.com" or ""
    sender_domains: tuple[str, ...] = ()  # Partner: "*", "contoso.com" or "*.contoso.com"
    restrict_domains_to_ip_addresses: bool = False  # Partner: covered senders only from its IPs
    restrict_domains_to_certificate: bool = False  # Partner: ... only with its certificate


@dataclass(frozen=True)
class TenantView:
    """The tenant the stand-in enforces: accepted domains and inbound connectors."""

    accepted_domains: tuple[str, ...] = ("contoso.com",)
    connectors: tuple[Connector, ...] = ()
    subdomain_domains: tuple[str, ...] = ()  # accepted domains with MatchSubDomains
    reject_direct_send: bool = False  # Set-OrganizationConfig -RejectDirectSend
    #: Play a retired smart host (mail.messaging.microsoft.com): every RCPT gets 4.4.62 ATTR35.
    retired_smart_host: bool = False
    #: A host-name TlsSenderCertificateName (``mail.contoso.com``, no ``*``) attributes only
    #: when it is itself an accepted domain (the stricter reading of SPEC §5.3's
    #: ``host_connector_name_must_be_accepted``); False: the daemon's default reading.
    host_connector_name_must_be_accepted: bool = False
    #: Answer STARTTLS with 454 (a server that refuses TLS).
    refuse_starttls: bool = False


@dataclass(frozen=True)
class PeerCertificate:
    """What the stand-in learnt from the client certificate in the handshake."""

    names: tuple[str, ...]  # CN first, then SAN DNS names; lower case, no trailing dot
    not_before: datetime
    not_after: datetime

    @classmethod
    def from_der(cls, der: bytes) -> PeerCertificate:
        """Read CN, SAN DNS names and the validity window from a DER certificate."""
        cert = x509.load_der_x509_certificate(der)
        names: list[str] = []
        for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
            names.append(_norm(str(attr.value)))
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            san = None
        if san is not None:
            names.extend(_norm(n) for n in san.get_values_for_type(x509.DNSName))
        return cls(tuple(dict.fromkeys(names)), *_validity(cert))


def _validity(cert: x509.Certificate) -> tuple[datetime, datetime]:
    """Aware UTC validity bounds: ``*_utc`` from cryptography 42, naive UTC before (38)."""
    if hasattr(cert, "not_valid_before_utc"):
        return cert.not_valid_before_utc, cert.not_valid_after_utc
    return (
        cert.not_valid_before.replace(tzinfo=UTC),
        cert.not_valid_after.replace(tzinfo=UTC),
    )


def _norm(domain: str) -> str:
    return domain.strip().rstrip(".").lower()


def _domain(address: str) -> str:
    return _norm(address.rpartition("@")[2]) if "@" in address else ""


def _accepted(tenant: TenantView, domain: str) -> bool:
    if domain in {_norm(d) for d in tenant.accepted_domains}:
        return True
    return any(domain.endswith("." + _norm(p)) for p in tenant.subdomain_domains)


def _connector_name_matches(pattern: str, cert_name: str) -> bool:
    """``TlsSenderCertificateName`` against one certificate name (both lower case)."""
    if not pattern:
        return False
    if pattern.startswith("*."):
        base = pattern[2:]
        # "*.contoso.com": the domain and all its subdomains (a wildcard cert under it too)
        bare = cert_name[2:] if cert_name.startswith("*.") else cert_name
        return bare == base or bare.endswith("." + base)
    if cert_name.startswith("*."):
        # a wildcard certificate covers exactly one label in front of its base
        head, _, rest = pattern.partition(".")
        return bool(head) and rest == cert_name[2:]
    return pattern == cert_name


def _cert_domain_accepted(tenant: TenantView, cert_name: str) -> bool:
    """The certificate name is an accepted domain or exactly one host label below one."""
    if cert_name.startswith("*."):
        return _accepted(tenant, cert_name[2:])
    if _accepted(tenant, cert_name):
        return True
    _, _, parent = cert_name.partition(".")
    return bool(parent) and _accepted(tenant, parent)


def _covers(connector: Connector, sender_domain: str) -> bool:
    """``SenderDomains``: ``*`` covers every sender (the null sender too)."""
    for entry in (_norm(e) for e in connector.sender_domains):
        if entry == "*":
            return True
        if sender_domain and entry.startswith("*."):
            if sender_domain == entry[2:] or sender_domain.endswith(entry[1:]):
                return True
        elif sender_domain and sender_domain == entry:
            return True
    return False


def relay_verdict(
    tenant: TenantView,
    *,
    source_ip: str,
    certificate: PeerCertificate | None,
    mail_from: str,
    recipient: str,
    now: datetime,
) -> str:
    """The SMTP reply Exchange Online gives to one RCPT, per Microsoft's relay rule.

    A connector matches by certificate name (checked first) or by source IPv4 address. A
    recipient in an accepted domain is delivered into the tenant, unless no OnPremises connector
    matches and either a Partner connector with RestrictDomainsTo* covers the sender's domain
    while the connection does not satisfy it (5.7.51), or RejectDirectSend is on, no Partner
    connector matches either, and the sender's domain is accepted (5.7.68). Any other recipient
    is a relay: it needs an enabled OnPremises connector, and then an accepted certificate
    domain (certificate path only) or an accepted P1 ``MAIL FROM`` domain.
    """
    if tenant.retired_smart_host:
        return WRONG_REGION
    cert_names: tuple[str, ...] = ()
    if certificate is not None and certificate.not_before <= now <= certificate.not_after:
        cert_names = certificate.names
    address = ipaddress.ip_address(source_ip)

    def by_cert(connector: Connector) -> list[str]:
        wanted = _norm(connector.tls_sender_certificate_name)
        if (
            tenant.host_connector_name_must_be_accepted
            and wanted
            and not wanted.startswith("*.")
            and not _accepted(tenant, wanted)
        ):
            return []
        return [name for name in cert_names if _connector_name_matches(wanted, name)]

    def by_ip(connector: Connector) -> bool:
        return address.version == 4 and any(
            address in ipaddress.ip_network(net, strict=False)
            for net in connector.sender_ip_addresses
        )

    enabled = [c for c in tenant.connectors if c.enabled]
    relay = [c for c in enabled if c.connector_type == "OnPremises"]
    partners = [c for c in enabled if c.connector_type == "Partner"]
    matched_names = [name for c in relay for name in by_cert(c)]
    attributed = bool(matched_names) or any(by_ip(c) for c in relay)
    sender_domain = _domain(mail_from)
    if _accepted(tenant, _domain(recipient)):
        if attributed:
            return OK
        for partner in partners:
            restricted = partner.restrict_domains_to_ip_addresses and not by_ip(partner)
            restricted |= partner.restrict_domains_to_certificate and not by_cert(partner)
            if restricted and _covers(partner, sender_domain):
                return PARTNER_RESTRICTED
        authenticated = any(by_ip(p) or by_cert(p) for p in partners)
        if tenant.reject_direct_send and not authenticated and _accepted(tenant, sender_domain):
            return DIRECT_SEND
        return OK
    if not attributed:
        return NO_CONNECTOR
    if any(_cert_domain_accepted(tenant, name) for name in matched_names):
        return OK
    if mail_from and _accepted(tenant, sender_domain):
        return OK
    return ATTR36


@dataclass(frozen=True)
class SubmissionView:
    """The accounts of the SMTP AUTH endpoint: who may log in, and as whom each may send."""

    logins: Mapping[str, str]  # login mailbox -> password
    send_as: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # "a@b" or "*@domain"
    #: Refuse the null sender from a mailbox login (SPEC §5.3 submission_null_sender_refused).
    null_sender_refused: bool = False


def submission_verdict(view: SubmissionView, *, login: str, mail_from: str) -> str:
    """The reply Microsoft 365's SMTP AUTH endpoint gives to one recipient of mail from
    ``mail_from`` ("" = null sender) on a session logged in as ``login`` ("" = no AUTH).

    Without a login: 530 5.7.57. With one: the login itself, or an address or ``*@domain`` the
    send-as table lists for it, is accepted; anything else 550 5.7.60.
    """
    if not login:
        return AUTH_REQUIRED
    if not mail_from:
        return SEND_AS_DENIED if view.null_sender_refused else OK
    sender = mail_from.casefold()
    if sender == login.casefold():
        return OK
    allowed = {entry.casefold() for entry in view.send_as.get(login.casefold(), ())}
    if sender in allowed or f"*@{_domain(sender)}" in allowed:
        return OK
    return SEND_AS_DENIED


# -- what was seen --------------------------------------------------------------------------


@dataclass
class SessionLog:
    """Every command one SMTP connection sent, by verb, in order (the probe tests read it)."""

    source_ip: str
    verbs: list[str] = field(default_factory=list)  # "EHLO", "STARTTLS", "MAIL", "RCPT", ...
    certificate: PeerCertificate | None = None
    closed: bool = False
    submission: bool = False  # on the SMTP AUTH port
    login: str = ""  # the login that authenticated ("" = none)

    @property
    def ended_with_quit(self) -> bool:
        return bool(self.verbs) and self.verbs[-1] == "QUIT"


@dataclass
class Transaction:
    """One SMTP transaction as the stand-in saw it."""

    source_ip: str
    helo: str
    tls: bool
    certificate: PeerCertificate | None
    mail_from: str
    replies: dict[str, str] = field(default_factory=dict)  # recipient -> the RCPT reply
    data: bytes = b""  # the message as received (empty when no recipient was accepted)
    finished: bool = False
    submission: bool = False  # on the SMTP AUTH port
    login: str = ""  # the SMTP AUTH login of the session ("" = none)
    mail_reply: str = "250 2.1.0 Sender OK"  # the reply to MAIL FROM

    @property
    def accepted(self) -> list[str]:
        """Recipients answered 250."""
        return [r for r, reply in self.replies.items() if reply.startswith("250")]

    @property
    def refused(self) -> list[str]:
        """Recipients answered with a refusal (anything but 250)."""
        return [r for r, reply in self.replies.items() if not reply.startswith("250")]

    @property
    def message(self) -> Message:
        """The received message, parsed (headers and body)."""
        return message_from_bytes(self.data)


class StandIn:
    """A threaded SMTP server on loopback that judges relays like Microsoft 365.

    ``tenant=None`` makes it a plain sink that accepts every recipient (the second relay for
    ``reroute``). Replace ``tenant`` at any time; each RCPT reads the current value.

    ``submission`` (a ``SubmissionView``) opens a second port, ``submission_port`` on the same
    host, that plays the SMTP AUTH endpoint (the module docstring); it can be replaced at any
    time too. Its transactions are recorded in ``transactions`` with ``submission`` set.

    Use as a context manager, or call ``start()``/``stop()``; ``port`` is chosen by the kernel.
    """

    def __init__(
        self,
        *,
        cert_file: Path,
        key_file: Path,
        ca_file: Path,
        tenant: TenantView | None = None,
        host: str = "127.0.0.1",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        hostname: str = "standin.mail.protection.outlook.example",
        submission: SubmissionView | None = None,
    ) -> None:
        self.tenant = tenant
        self.submission = submission
        self.clock = clock
        self.hostname = hostname
        self.transactions: list[Transaction] = []
        self.sessions: list[SessionLog] = []
        self._changed = threading.Condition()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(cert_file), str(key_file))
        context.load_verify_locations(cafile=str(ca_file))
        context.verify_mode = ssl.CERT_OPTIONAL
        context.verify_flags = ssl.VerifyFlags(int(context.verify_flags) | _NO_CHECK_TIME)
        self.context = context
        standin = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                _Session(standin, self.request).run()

        class SubmissionHandler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                _Session(standin, self.request, submission=True).run()

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self._servers = [Server((host, 0), Handler, bind_and_activate=True)]
        if submission is not None:
            self._servers.append(Server((host, 0), SubmissionHandler, bind_and_activate=True))
        self.host = host
        self.port: int = self._servers[0].server_address[1]
        #: The SMTP AUTH port (0 without ``submission``).
        self.submission_port: int = (
            self._servers[1].server_address[1] if len(self._servers) > 1 else 0
        )
        self._threads: list[threading.Thread] = []

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> StandIn:
        """Serve in background threads (one per port)."""
        for server in self._servers:
            thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop serving and close the listening sockets."""
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def relayhost(self) -> str:
        """The Postfix ``relayhost`` / nexthop value for this server."""
        return f"[{self.host}]:{self.port}"

    # -- recording ------------------------------------------------------------------------

    def _record(self, transaction: Transaction) -> None:
        with self._changed:
            self.transactions.append(transaction)
            self._changed.notify_all()

    def _touch(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def find(self, predicate: Callable[[Transaction], bool]) -> list[Transaction]:
        """Finished transactions that satisfy ``predicate``."""
        with self._changed:
            return [t for t in self.transactions if t.finished and predicate(t)]

    def wait_for(
        self,
        predicate: Callable[[Transaction], bool],
        timeout: float = 20.0,
        count: int = 1,
        since: int = 0,
    ) -> list[Transaction]:
        """Wait until ``count`` finished transactions satisfy ``predicate``; return them.

        ``since`` skips the first transactions (``len(standin.transactions)`` taken earlier).
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [t for t in self.transactions[since:] if t.finished and predicate(t)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [(t.mail_from, t.replies) for t in self.transactions]
                    raise TimeoutError(f"stand-in: wanted {count} transaction(s), saw {seen}")
                self._changed.wait(left)

    def closed_sessions(self, count: int, timeout: float = 10.0) -> list[SessionLog]:
        """Wait until ``count`` connections have ended; return every session log so far."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while sum(1 for s in self.sessions if s.closed) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"stand-in: wanted {count} closed session(s)")
                self._changed.wait(left)
            return list(self.sessions)

    def with_header(self, name: str, value: str) -> Callable[[Transaction], bool]:
        """A predicate: the transaction carried a message whose header ``name`` is ``value``."""

        def predicate(t: Transaction) -> bool:
            return bool(t.data) and t.message.get(name, "").strip() == value

        return predicate


def rcpt_refused_for(token: str) -> Callable[[Transaction], bool]:
    """A predicate: some recipient in the transaction contains ``token`` and was refused."""

    def predicate(t: Transaction) -> bool:
        return any(token in r for r in t.refused)

    return predicate


class _Session:
    """One SMTP connection (runs in its own thread)."""

    def __init__(self, standin: StandIn, sock: socket.socket, *, submission: bool = False) -> None:
        self.standin = standin
        self.submission = submission
        self.login = ""
        self.sock: socket.socket = sock
        self.rfile: BinaryIO = sock.makefile("rb")
        self.source_ip = sock.getpeername()[0]
        self.helo = ""
        self.tls = False
        self.certificate: PeerCertificate | None = None
        self.current: Transaction | None = None
        self.log = SessionLog(self.source_ip, submission=submission)
        with standin._changed:
            standin.sessions.append(self.log)

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\r\n")

    def send_multi(self, code: int, lines: Sequence[str]) -> None:
        for i, line in enumerate(lines):
            sep = " " if i == len(lines) - 1 else "-"
            self.send(f"{code}{sep}{line}")

    def run(self) -> None:
        self.sock.settimeout(30)
        try:
            self.send(f"220 {self.standin.hostname} Microsoft ESMTP MAIL Service ready")
            while True:
                raw = self.rfile.readline(4096)
                if not raw:
                    break
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if not self.command(line):
                    break
        except (OSError, ssl.SSLError):
            pass
        finally:
            self._finish()
            with contextlib.suppress(OSError):
                self.sock.close()
            self.log.closed = True
            self.standin._touch()

    def _finish(self) -> None:
        if self.current is not None:
            self.current.finished = True
            self.standin._touch()
            self.current = None

    def command(self, line: str) -> bool:
        verb, _, arg = line.partition(" ")
        verb = verb.upper()
        self.log.verbs.append(verb)
        if verb in ("EHLO", "HELO"):
            self._finish()
            self.helo = arg.strip()
            if verb == "HELO":
                self.send(f"250 {self.standin.hostname}")
            else:
                ext = ["SIZE 157286400", "8BITMIME", "ENHANCEDSTATUSCODES"]
                if not self.tls:
                    ext.append("STARTTLS")
                elif self.submission:
                    ext.append("AUTH PLAIN LOGIN")  # like Microsoft 365: only after STARTTLS
                self.send_multi(250, [f"{self.standin.hostname} Hello [{self.source_ip}]", *ext])
        elif verb == "STARTTLS" and not self.tls and self._tenant_refuses_tls():
            self.send("454 4.7.0 TLS not available due to temporary reason")
        elif verb == "STARTTLS" and not self.tls:
            self.send("220 2.0.0 SMTP server ready")
            tls_sock = self.standin.context.wrap_socket(self.sock, server_side=True)
            self.sock = tls_sock
            self.rfile = tls_sock.makefile("rb")
            self.tls = True
            der = tls_sock.getpeercert(binary_form=True)
            self.certificate = PeerCertificate.from_der(der) if der else None
            self.log.certificate = self.certificate
            self.helo = ""
        elif verb == "AUTH":
            self.send(self._auth(arg))
        elif verb == "MAIL":
            self._finish()
            sender = _path(arg, "FROM:")
            transaction = Transaction(self.source_ip, self.helo, self.tls, self.certificate, sender)
            transaction.submission, transaction.login = self.submission, self.login
            if self.submission and not self.login:
                transaction.mail_reply = AUTH_REQUIRED
                transaction.finished = True
                self.standin._record(transaction)
                self.send(AUTH_REQUIRED)
                return True
            self.current = transaction
            self.standin._record(self.current)
            self.send(transaction.mail_reply)
        elif verb == "RCPT":
            if self.current is None:
                self.send("503 5.5.1 Need MAIL first")
                return True
            recipient = _path(arg, "TO:")
            tenant = self.standin.tenant
            view = self.standin.submission
            if self.submission and view is not None:
                reply = submission_verdict(view, login=self.login, mail_from=self.current.mail_from)
            elif tenant is None:
                reply = OK
            else:
                reply = relay_verdict(
                    tenant,
                    source_ip=self.source_ip,
                    certificate=self.certificate,
                    mail_from=self.current.mail_from,
                    recipient=recipient,
                    now=self.standin.clock(),
                )
            self.current.replies[recipient] = reply
            self.send(f"{reply} [{recipient}]" if not reply.startswith("250") else reply)
        elif verb == "DATA":
            if self.current is None or not self.current.accepted:
                self.send("503 5.5.1 Need valid RCPT first")
                return True
            self.send("354 Start mail input; end with <CRLF>.<CRLF>")
            self.current.data = self._read_data()
            self.send("250 2.6.0 Queued mail for delivery")
            self._finish()
        elif verb == "RSET":
            self._finish()
            self.send("250 2.0.0 Resetting")
        elif verb == "NOOP":
            self.send("250 2.0.0 OK")
        elif verb == "QUIT":
            self.send("221 2.0.0 Service closing transmission channel")
            return False
        else:
            self.send("500 5.3.3 Unrecognized command")
        return True

    def _auth(self, arg: str) -> str:
        """One AUTH command (PLAIN or LOGIN, with or without an initial response): the reply."""
        view = self.standin.submission
        mechanism, _, initial = arg.strip().partition(" ")
        mechanism = mechanism.upper()
        if not self.submission or view is None or not self.tls:
            return "504 5.7.4 Unrecognized authentication type"
        if self.login:
            return "503 5.5.1 Already authenticated"
        if mechanism == "PLAIN":
            response = initial.strip() or self._challenge("")
            parts = _b64(response).split("\0")
            if len(parts) != 3:
                return "501 5.5.2 Cannot decode AUTH parameter"
            user, password = parts[1], parts[2]
        elif mechanism == "LOGIN":
            user = _b64(initial.strip() or self._challenge("VXNlcm5hbWU6"))  # "Username:"
            password = _b64(self._challenge("UGFzc3dvcmQ6"))  # "Password:"
        else:
            return "504 5.7.4 Unrecognized authentication type"
        if view.logins.get(user.casefold()) != password or not password:
            return AUTH_FAILED
        self.login = self.log.login = user.casefold()
        return AUTH_OK

    def _challenge(self, text: str) -> str:
        """Send ``334 text`` and read the client's answer line."""
        self.send(f"334 {text}")
        return self.rfile.readline(4096).decode("ascii", "replace").strip()

    def _tenant_refuses_tls(self) -> bool:
        tenant = self.standin.tenant
        return tenant is not None and tenant.refuse_starttls

    def _read_data(self) -> bytes:
        lines: list[bytes] = []
        while True:
            raw = self.rfile.readline(1 << 20)
            if not raw or raw in (b".\r\n", b".\n"):
                break
            if raw.startswith(b".."):
                raw = raw[1:]
            lines.append(raw)
        return b"".join(lines)


def _b64(text: str) -> str:
    """A base64 AUTH response, decoded ("" for "*", the client's cancel, or bad base64)."""
    try:
        return base64.b64decode(text, validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return ""


def _path(arg: str, prefix: str) -> str:
    """``FROM:<a@b> SIZE=1`` -> ``a@b``."""
    rest = arg.strip()
    if rest.upper().startswith(prefix):
        rest = rest[len(prefix) :].strip()
    if rest.startswith("<"):
        return rest[1 : rest.find(">")] if ">" in rest else rest[1:]
    return rest.split(" ", 1)[0]


def addresses(transactions: Iterable[Transaction]) -> list[tuple[str, str]]:
    """All (recipient, reply) pairs across ``transactions``, for compact assertions."""
    return [(r, reply) for t in transactions for r, reply in t.replies.items()]
