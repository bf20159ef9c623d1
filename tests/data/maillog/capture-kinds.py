"""Re-capture ``kinds.log``: run as root from the repository root with
``.venv/bin/python tests/data/maillog/capture-kinds.py OUTPUT``.

A private Postfix (``tests/e2e/postfix.py``) relays over mandatory TLS to the Microsoft 365
stand-in (``tests/e2e/standin.py``) and writes one delivery line for every observed kind of
SPEC §8, and for Postfix's own failures, which are no reply of Microsoft's:

- the stand-in's own rule, tenant switched between phases: ``accepted`` (2.6.0), ``attr36``
  (foreign sender through the IP connector), ``no-connector`` (the IP connector names another
  address), ``partner-restricted`` (a Partner connector with RestrictDomainsToIPAddresses and
  SenderDomains ``*``), ``direct-send`` (RejectDirectSend), ``wrong-region`` (the stand-in
  playing a retired smart host: 451 4.4.62 ATTR35, deferred);
- scripted replies, by the recipient's local part: ``unreg*`` 5.7.750, ``tls*`` 454 4.7.0,
  ``other*`` 5.1.10;
- Postfix's own failures, through ``transport_maps``: ``down.example`` (a closed port:
  ``relay=none``), ``drop.example`` (a server that closes the connection at once: lost
  connection), ``notls.example`` (a server that offers no STARTTLS: "TLS is required").

Every line that names a recipient comes from the real Postfix; the test reads the kind each
recipient's local part stands for (``tests/test_outcomes.py``).
"""

from __future__ import annotations

import os
import shutil
import socket
import socketserver
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, os.getcwd())

import tests.e2e.standin as standin_module
from tests.e2e.postfix import PostfixInstance
from tests.e2e.standin import Connector, PeerCertificate, StandIn, TenantView
from tests.pki import TestPKI
from tests.serverproc import free_port

SCRIPTED = {
    "unreg": (
        "550 5.7.750 Service unavailable. Client blocked from sending from unregistered domains. "
        "For more information please go to http://go.microsoft.com/fwlink/?LinkId=526653"
    ),
    "tls": "454 4.7.0 Failed to establish appropriate TLS channel: Access Denied",
    "other": (
        "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"
    ),
}
rule = standin_module.relay_verdict


def scripted(
    tenant: TenantView,
    *,
    source_ip: str,
    certificate: PeerCertificate | None,
    mail_from: str,
    recipient: str,
    now: datetime,
) -> str:
    """The stand-in's rule, except for the scripted local parts."""
    for prefix, reply in SCRIPTED.items():
        if recipient.startswith(prefix):
            return reply
    return rule(
        tenant,
        source_ip=source_ip,
        certificate=certificate,
        mail_from=mail_from,
        recipient=recipient,
        now=now,
    )


class _Dropper(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.close()


class _NoTls(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(b"220 notls.example ESMTP\r\n")
        while line := self.rfile.readline(1024):
            verb = line[:4].upper()
            if verb == b"EHLO":
                self.wfile.write(b"250-notls.example\r\n250 8BITMIME\r\n")
            elif verb == b"QUIT":
                self.wfile.write(b"221 2.0.0 Bye\r\n")
                return
            else:
                self.wfile.write(b"502 5.5.2 Command not implemented\r\n")


def serve(handler: type[socketserver.BaseRequestHandler]) -> socketserver.ThreadingTCPServer:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(output: str) -> None:
    standin_module.relay_verdict = scripted
    root = Path(tempfile.mkdtemp(prefix="m365-capture-"))
    os.chmod(root, 0o755)
    pki = TestPKI()
    ca = pki.write_ca_bundle(root)
    cert, key = pki.write(
        root, pki.leaf("standin.mail.protection.outlook.example", ["localhost"]), "standin"
    )
    ip_connector = Connector("IP", sender_ip_addresses=("127.0.0.10/32",))
    elsewhere = Connector("IP", sender_ip_addresses=("127.0.0.99/32",))
    filtering = Connector(
        "Mail from the filtering service",
        connector_type="Partner",
        sender_ip_addresses=("127.0.0.30/32",),
        sender_domains=("*",),
        restrict_domains_to_ip_addresses=True,
    )
    tenant = TenantView(accepted_domains=("contoso.com",), connectors=(ip_connector,))
    standin = StandIn(cert_file=cert, key_file=key, ca_file=ca, tenant=tenant).start()
    dropper, no_tls = serve(_Dropper), serve(_NoTls)
    closed = free_port()
    transport = root / "transport"
    transport.write_text(
        f"down.example smtp:[127.0.0.1]:{closed}\n"
        f"drop.example smtp:[127.0.0.1]:{dropper.server_address[1]}\n"
        f"notls.example smtp:[127.0.0.1]:{no_tls.server_address[1]}\n"
    )
    past = time.time() - 10  # trivial-rewrite waits for younger tables
    os.utime(transport, (past, past))
    postfix = PostfixInstance.create(
        relayhost=standin.relayhost,
        settings={
            "smtp_tls_security_level": "encrypt",
            "smtp_tls_CAfile": str(ca),
            "smtp_bind_address": "127.0.0.10",
            "transport_maps": f"texthash:{transport}",
            "smtp_connect_timeout": "5s",
        },
    )

    def phase(view: TenantView, envelopes: list[tuple[str, str]]) -> None:
        standin.tenant = view
        mark = len(standin.transactions)
        for sender, recipient in envelopes:
            postfix.send(sender, [recipient])
        for _, recipient in envelopes:
            standin.wait_for(lambda t, r=recipient: r in t.replies, since=mark)

    try:
        phase(
            tenant,
            [
                ("app@contoso.com", "accepted@tailspintoys.com"),
                ("john@fabrikam.com", "attr36@tailspintoys.com"),
                ("app@contoso.com", "unreg@tailspintoys.com"),
                ("app@contoso.com", "tls@tailspintoys.com"),
                ("app@contoso.com", "other@tailspintoys.com"),
            ],
        )
        phase(
            TenantView(accepted_domains=("contoso.com",), connectors=(elsewhere, filtering)),
            [
                ("app@contoso.com", "noconnector@tailspintoys.com"),
                ("app@contoso.com", "partner@contoso.com"),
            ],
        )
        phase(
            TenantView(
                accepted_domains=("contoso.com",), connectors=(elsewhere,), reject_direct_send=True
            ),
            [("app@contoso.com", "directsend@contoso.com")],
        )
        phase(
            TenantView(accepted_domains=("contoso.com",), retired_smart_host=True),
            [("app@contoso.com", "region@tailspintoys.com")],
        )
        for domain in ("down.example", "drop.example", "notls.example"):
            postfix.send("app@contoso.com", [f"own@{domain}"])
        for domain in ("down.example", "drop.example", "notls.example"):
            postfix.wait_log(rf"to=<own@{domain}>.*status=deferred", timeout=30)
        time.sleep(3)  # Postfix's own bounces and retries (short backoff) reach the stand-in
        shutil.copy(postfix.log_path, output)
    finally:
        postfix.close()
        standin.stop()
        for server in (dropper, no_tls):
            server.shutdown()
            server.server_close()
        with socket.socket() as probe:  # nothing may listen on the closed port by now
            assert probe.connect_ex(("127.0.0.1", closed)) != 0
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1])
