"""The end-to-end world: one private Postfix, one Microsoft 365 stand-in, the daemon.

One ``World`` per test session holds a private Postfix instance wired with
``contrib/postfix/main.cf.snippet``, the stand-in (Postfix's ``relayhost``), a second plain
sink (the ``reroute`` target), a postsrsd, the test PKI and the real ``m365-policyd serve``
process. ``World.apply(Setup(...))`` reconfigures all of them for one scenario: the stand-in's
tenant, Postfix's source address / client certificate / alias and SRS maps (``postconf -e`` +
``postfix reload`` only when something changed), and a fresh daemon with the matching TOML.
The fixtures that build it are in ``tests/e2e/conftest.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

from tests.e2e.postfix import PostfixInstance
from tests.e2e.standin import Connector, PeerCertificate, StandIn, TenantView, relay_verdict
from tests.pki import Issued, TestPKI
from tests.serverproc import PolicyServer, free_port

REPO = Path(__file__).resolve().parents[2]
SNIPPET = REPO / "contrib" / "postfix" / "main.cf.snippet"

#: Loopback addresses Postfix binds to for delivery: the stand-in's "egress address".
EGRESS_IP = "127.0.0.10"  # inside the tenant's IP connector
OTHER_IP = "127.0.0.20"  # inside no connector

#: Where forwarded mail goes (virtual_alias_maps, and the daemon's alias_maps).
ALIASES = {"kate@contoso.com": "kate.private@example.net"}


def daemon_unavailable() -> str | None:
    """Why the daemon cannot be started from this tree, or None."""
    try:
        import policyd.daemon.serve
        import policyd.sources.config  # noqa: F401 - probing that the modules exist
    except ImportError as error:
        return f"m365-policyd serve is not available in this tree: {error}"
    return None


@dataclass(frozen=True)
class Setup:
    """One scenario's tenant, on-premises side and policy, applied to every component."""

    egress: str = EGRESS_IP  # smtp_bind_address, and onprem.egress_addresses
    ip_connector: tuple[str, ...] = (f"{EGRESS_IP}/32",)
    cert_connector: str = ""  # TlsSenderCertificateName of a second connector
    certificate: str = (
        ""  # "", "good", "expired", "deep": which client certificate Postfix presents
    )
    action: str = "dunno"
    accepted: tuple[str, ...] = ("contoso.com",)
    srs: bool = False
    reroute: bool = False
    tag: bool = True
    listen_unix: bool = False  # daemon on unix:private/m365-policyd instead of TCP
    #: [postfix] config_directory: the daemon reads Postfix's own configuration instead of
    #: [onprem] egress/certificate/alias keys (the stand-in's 127.0.0.1 is a tenant endpoint).
    postfix_routing: bool = False
    #: A recipient domain that transport_maps sends to the plain sink, around the stand-in.
    around: str = ""
    #: SenderIPAddresses of a Partner connector (SenderDomains *); with ``partner_restricts``
    #: it has RestrictDomainsToIPAddresses (a filtering service locking the tenant down).
    partner_ips: tuple[str, ...] = ()
    partner_restricts: bool = True
    reject_direct_send: bool = False


class Daemon:
    """``m365-policyd serve`` (through ``tests.serverproc.PolicyServer``) with a JSON log.

    The TCP port stays the same across restarts, so Postfix's ``m365_policyd_service`` does
    not change when a scenario restarts the daemon with a new configuration.
    """

    def __init__(self, workdir: Path, unix_path: Path) -> None:
        self.unix_path = unix_path
        self.server = PolicyServer(workdir / "daemon", "", metrics=False, log_format="json")

    @property
    def port(self) -> int:
        """The daemon's TCP port on 127.0.0.1."""
        return self.server.port

    def start(self, body: str, *, unix: bool = False) -> None:
        """(Re)start the daemon with ``body`` (TOML without [server] and [log])."""
        self.stop()
        self.server.body = body
        self.server.listen = [f"unix:{self.unix_path}:mode=666"] if unix else None
        self.server.start()

    def stop(self) -> None:
        """SIGTERM and wait (SPEC §6: exits within 5 s)."""
        if self.server.running:
            self.server.stop()

    def output(self) -> str:
        """The daemon's stdout since the last start."""
        return self.server.log()

    def records(self) -> list[dict[str, Any]]:
        """The JSON log records since the last start."""
        out = []
        for raw in self.output().splitlines():
            line = raw.strip()
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def predictions(self, recipient: str) -> list[dict[str, Any]]:
        """Every logged RCPT prediction for ``recipient`` since the last start."""
        return [
            r
            for r in self.records()
            if r.get("event") == "prediction" and r.get("recipient") == recipient
        ]

    def prediction(self, recipient: str, timeout: float = 10.0) -> dict[str, Any]:
        """The last logged RCPT prediction for ``recipient`` (waits for it to appear)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.predictions(recipient)
            if found:
                return found[-1]
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no prediction logged for {recipient}: {self.output()[-3000:]}"
                )
            time.sleep(0.05)


@dataclass
class World:
    """Everything one end-to-end session drives (see the module docstring)."""

    root: Path
    pki: TestPKI
    ca_file: Path
    certs: dict[str, tuple[Path, Path, Issued]]
    standin: StandIn
    sink: StandIn
    postfix: PostfixInstance
    daemon: Daemon
    srs_port: int
    setup: Setup = field(default_factory=Setup)
    _postfix_settings: dict[str, str] = field(default_factory=dict)

    # -- scenario configuration -----------------------------------------------------------

    def tenant_view(self, setup: Setup) -> TenantView:
        """The stand-in's tenant for ``setup``."""
        connectors = [Connector("IP connector", sender_ip_addresses=setup.ip_connector)]
        if setup.cert_connector:
            connectors.append(
                Connector("Certificate connector", tls_sender_certificate_name=setup.cert_connector)
            )
        if setup.partner_ips:
            connectors.append(
                Connector(
                    "Partner connector",
                    connector_type="Partner",
                    sender_ip_addresses=setup.partner_ips,
                    sender_domains=("*",),
                    restrict_domains_to_ip_addresses=setup.partner_restricts,
                )
            )
        return TenantView(
            accepted_domains=setup.accepted,
            connectors=tuple(connectors),
            reject_direct_send=setup.reject_direct_send,
        )

    def postfix_settings(self, setup: Setup) -> dict[str, str]:
        """The main.cf parameters that differ between scenarios."""
        cert_file, key_file = ("", "")
        if setup.certificate:
            cert_path, key_path, _ = self.certs[setup.certificate]
            cert_file, key_file = str(cert_path), str(key_path)
        service = (
            "unix:private/m365-policyd"
            if setup.listen_unix
            else f"inet:127.0.0.1:{self.daemon.port}"
        )
        transport = ""
        if setup.around:
            table = self.root / "transport"
            table.write_text(f"{setup.around} smtp:{self.sink.relayhost}\n")
            past = time.time() - 10  # postmap and trivial-rewrite wait for younger files
            os.utime(table, (past, past))
            transport = f"texthash:{table}"
        return {
            "transport_maps": transport,
            "smtp_bind_address": setup.egress,
            "smtp_tls_cert_file": cert_file,
            "smtp_tls_key_file": key_file,
            "sender_canonical_maps": f"tcp:127.0.0.1:{self.srs_port}" if setup.srs else "",
            "m365_policyd_service": service,
        }

    def daemon_toml(self, setup: Setup) -> str:
        """The daemon's configuration for ``setup`` (SPEC §4)."""
        cert = str(self.certs[setup.certificate][0]) if setup.certificate else ""
        lines = [
            "[tenant]",
            f"accepted_domains = {json.dumps(list(setup.accepted))}",
            f"reject_direct_send = {'true' if setup.reject_direct_send else 'false'}",
            "",
            "[[tenant.inbound_connector]]",
            'name = "IP connector"',
            'connector_type = "OnPremises"',
            "enabled = true",
            f"sender_ip_addresses = {json.dumps(list(setup.ip_connector))}",
        ]
        if setup.cert_connector:
            lines += [
                "",
                "[[tenant.inbound_connector]]",
                'name = "Certificate connector"',
                'connector_type = "OnPremises"',
                "enabled = true",
                f'tls_sender_certificate_name = "{setup.cert_connector}"',
            ]
        if setup.partner_ips:
            lines += [
                "",
                "[[tenant.inbound_connector]]",
                'name = "Partner connector"',
                'connector_type = "Partner"',
                f"sender_ip_addresses = {json.dumps(list(setup.partner_ips))}",
                'sender_domains = ["smtp:*;1"]',
                f"restrict_domains_to_ip_addresses = {str(setup.partner_restricts).lower()}",
            ]
        if setup.postfix_routing:
            lines.insert(2, 'endpoints = ["127.0.0.1"]')
            lines += [
                "",
                "[postfix]",
                f'config_directory = "{self.postfix.config_dir}"',
                "",
                "[onprem]",
                f'ca_bundle = "{self.ca_file}"',
                f'srs_domain = "{"contoso.com" if setup.srs else ""}"',
            ]
        else:
            lines += [
                "",
                "[onprem]",
                f'egress_addresses = ["{setup.egress}"]',
                f'certificate = "{cert}"',
                f'ca_bundle = "{self.ca_file}"',
                f'srs_domain = "{"contoso.com" if setup.srs else ""}"',
                f'alias_maps = ["texthash:{self.root / "virtual"}"]',
            ]
        lines += [
            "",
            "[policy]",
            f'action = "{setup.action}"',
            f'reroute = "{f"smtp:{self.sink.relayhost}" if setup.reroute else ""}"',
            f"tag = {'true' if setup.tag else 'false'}",
            "",
        ]
        return "\n".join(lines)

    def apply(self, setup: Setup) -> World:
        """Reconfigure stand-in, Postfix and daemon for ``setup``."""
        self.setup = setup
        self.standin.tenant = self.tenant_view(setup)
        settings = self.postfix_settings(setup)
        changed = {k: v for k, v in settings.items() if self._postfix_settings.get(k) != v}
        if changed:
            self.postfix.postconf(changed, reload=True)
            self._postfix_settings.update(changed)
            past = time.time() - 10  # the daemon's postconf must not wait for a fresh main.cf
            os.utime(self.postfix.config_dir / "main.cf", (past, past))
        # The daemon starts after Postfix changed: with [postfix] it reads what Postfix runs.
        self.daemon.start(self.daemon_toml(setup), unix=setup.listen_unix)
        return self

    # -- expectations ---------------------------------------------------------------------

    def peer_certificate(self) -> PeerCertificate | None:
        """The client certificate the stand-in receives in the current setup."""
        if not self.setup.certificate:
            return None
        return PeerCertificate.from_der(
            self.certs[self.setup.certificate][2].cert.public_bytes(Encoding.DER)
        )

    def standin_would_say(self, mail_from: str, recipient: str) -> str:
        """The stand-in's rule for an envelope it did not get to see (deferred before relay)."""
        return relay_verdict(
            self.tenant_view(self.setup),
            source_ip=self.setup.egress,
            certificate=self.peer_certificate(),
            mail_from=mail_from,
            recipient=recipient,
            now=datetime.now(UTC),
        )


def write_certs(pki: TestPKI, directory: Path) -> dict[str, tuple[Path, Path, Issued]]:
    """Postfix's client certificates by ``Setup.certificate`` name: (cert, key, issued)."""
    now = datetime.now(UTC)
    leaves = {
        "good": pki.leaf("mail.contoso.com", ["mail.contoso.com"]),
        "expired": pki.leaf(
            "mail.contoso.com",
            ["mail.contoso.com"],
            not_before=now - timedelta(days=100),
            not_after=now - timedelta(days=1),
        ),
        "deep": pki.leaf("mail.eu.contoso.com", ["mail.eu.contoso.com"]),
    }
    out = {}
    for name, leaf in leaves.items():
        cert, key = pki.write(directory, leaf, name)
        out[name] = (cert, key, leaf)
    return out


def start_postsrsd(
    root: Path,
    domain: str = "contoso.com",
    excludes: Sequence[str] = (),
    *,
    listen: str = "127.0.0.1",
    forward: int = 0,
) -> tuple[subprocess.Popen[bytes], int]:
    """Debian's postsrsd (1.x) started directly with a private secret: SRS domain ``domain``,
    ``excludes`` as its ``-X`` list (what ``SRS_EXCLUDE_DOMAINS`` sets), listening on ``listen``
    (forward port ``forward``, else a free one); polled until it listens. (process, forward
    port); the caller stops it."""
    secret = root / f"postsrsd-{os.urandom(4).hex()}.secret"
    secret.write_bytes(os.urandom(24).hex().encode() + b"\n")
    os.chmod(secret, 0o600)
    forward, reverse = forward or free_port(), free_port()
    proc = subprocess.Popen(
        [
            shutil.which("postsrsd") or "/usr/sbin/postsrsd",
            f"-s{secret}",
            f"-d{domain}",
            *([f"-X{','.join(excludes)}"] if excludes else []),
            f"-l{listen}",
            f"-f{forward}",
            f"-r{reverse}",
            "-4",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection((listen, forward), timeout=1).close()
            return proc, forward
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("postsrsd did not start")


def one_session_per_smtpd(postfix: PostfixInstance) -> None:
    """Add ``-o max_use=1`` to smtpd: each SMTP session starts with a fresh policy client."""
    master = postfix.config_dir / "master.cf"
    lines = master.read_text().splitlines()
    lines[0] = lines[0] + " -o max_use=1"
    master.write_text("\n".join(lines) + "\n")
