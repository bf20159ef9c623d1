"""Re-capture ``e2e-standin.log``: run as root from the repository root with
``.venv/bin/python tests/data/maillog/capture-e2e.py OUTPUT``.

A private Postfix (``tests/e2e/postfix.py``) relays over TLS to the Microsoft 365 stand-in
(``tests/e2e/standin.py``); recipients whose local part starts with ``region`` or ``unreg`` get
scripted 4.4.62 / 5.7.750 replies, every other reply is the stand-in's relay rule.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, os.getcwd())

import tests.e2e.standin as standin_module
from tests.e2e.postfix import PostfixInstance
from tests.e2e.standin import Connector, PeerCertificate, StandIn, TenantView
from tests.pki import TestPKI

REGION = (
    "451 4.4.62 Mail sent to the wrong Office 365 region. ATTR35. For more information please "
    "go to https://go.microsoft.com/fwlink/?linkid=865268"
)
UNREGISTERED = (
    "550 5.7.750 Service unavailable. Client blocked from sending from unregistered domains. "
    "For more information please go to http://go.microsoft.com/fwlink/?LinkId=526653"
)
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
    if recipient.startswith("region"):
        return REGION
    if recipient.startswith("unreg"):
        return UNREGISTERED
    return rule(
        tenant,
        source_ip=source_ip,
        certificate=certificate,
        mail_from=mail_from,
        recipient=recipient,
        now=now,
    )


def main(output: str) -> None:
    standin_module.relay_verdict = scripted
    root = Path(tempfile.mkdtemp(prefix="m365-capture-"))
    os.chmod(root, 0o755)
    pki = TestPKI()
    ca = pki.write_ca_bundle(root)
    cert, key = pki.write(
        root, pki.leaf("standin.mail.protection.outlook.example", ["localhost"]), "standin"
    )
    (root / "virtual").write_text(
        "kate@contoso.com kate.private@example.net\n"
        "sales@contoso.com ann@fabrikam.com, Bob@Tailspintoys.com\n"
    )
    ip_connector = Connector("IP", sender_ip_addresses=("127.0.0.10/32",))
    tenant = TenantView(accepted_domains=("contoso.com",), connectors=(ip_connector,))
    standin = StandIn(cert_file=cert, key_file=key, ca_file=ca, tenant=tenant).start()
    postfix = PostfixInstance.create(
        relayhost=standin.relayhost,
        settings={
            "smtp_tls_security_level": "encrypt",
            "smtp_tls_CAfile": str(ca),
            "smtp_tls_loglevel": "1",
            "virtual_alias_maps": f"texthash:{root / 'virtual'}",
            "smtp_bind_address": "127.0.0.10",
            "maximal_queue_lifetime": "3s",
            "bounce_queue_lifetime": "3s",
        },
    )
    try:
        postfix.send("app@contoso.com", ["kate.external@tailspintoys.com"])  # 2.6.0
        postfix.send("john@fabrikam.com", ["kate.external@tailspintoys.com"])  # ATTR36
        postfix.send("john@fabrikam.com", ["kate@contoso.com"])  # forwarded, ATTR36
        postfix.send("app@contoso.com", ["sales@contoso.com"])  # two final addresses
        postfix.send("app@contoso.com", ["region1@tailspintoys.com"])  # 4.4.62, expires
        postfix.send("app@contoso.com", ["unreg1@tailspintoys.com"])  # 5.7.750
        postfix.send("app@contoso.com", ["ok1@tailspintoys.com", "Mixed.Case@Tailspintoys.com"])
        time.sleep(4)
        standin.tenant = TenantView(accepted_domains=("contoso.com",), connectors=())
        postfix.send("app@contoso.com", ["nobody@tailspintoys.com"])  # TenantAttribution
        time.sleep(8)
        postfix.flush()
        time.sleep(3)
        shutil.copy(postfix.log_path, output)
    finally:
        postfix.close()
        standin.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1])
