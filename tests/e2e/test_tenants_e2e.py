"""End to end with two tenants behind one Postfix: two Microsoft 365 stand-ins on two loopback
addresses, each holding its own tenant. Postfix routes contoso's mail to the first by
``relayhost``, fabrikam's to the second by ``sender_dependent_relayhost_maps``, and mail for
adatum.example through a per-tenant transport with its own client certificate. Under
``action = "defer"`` every recipient is deferred exactly when its own stand-in would refuse it,
and the prediction's ``tenant`` (log line and metric) names the tenant it went to."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from tests import needs
from tests.e2e.postfix import PostfixInstance, postfix_unavailable
from tests.e2e.standin import Connector, PeerCertificate, StandIn, TenantView, relay_verdict
from tests.e2e.world import Daemon, daemon_unavailable, one_session_per_smtpd
from tests.pki import Issued, TestPKI

pytestmark = pytest.mark.postfix

EGRESS = "127.0.0.10"
CONTOSO = TenantView(
    accepted_domains=("contoso.com",),
    connectors=(Connector("IP connector", sender_ip_addresses=(f"{EGRESS}/32",)),),
)
#: fabrikam's tenant trusts only its certificate: mail from the shared address is attributed
#: only when the per-tenant transport presents fabrikam's certificate.
FABRIKAM = TenantView(
    accepted_domains=("fabrikam.example",),
    connectors=(Connector("Certificate", tls_sender_certificate_name="*.fabrikam.example"),),
)


@dataclass
class TwoTenants:
    """Postfix, the daemon, and one stand-in per tenant."""

    postfix: PostfixInstance
    daemon: Daemon
    contoso: StandIn
    fabrikam: StandIn
    fabrikam_certificate: Issued


@pytest.fixture(scope="module")
def two() -> Iterator[TwoTenants]:
    needs.require(postfix_unavailable())
    needs.require(daemon_unavailable())
    root = Path(tempfile.mkdtemp(prefix="m365-tenants-"))
    os.chmod(root, 0o755)
    pki = TestPKI()
    ca_file = pki.write_ca_bundle(root)
    server_cert, server_key = pki.write(
        root, pki.leaf("standin.mail.protection.outlook.example", ["localhost"]), "standin"
    )
    leaf = pki.leaf("mail.fabrikam.example", ["mail.fabrikam.example"])
    client_cert, client_key = pki.write(root, leaf, "fabrikam-client")
    contoso = StandIn(
        cert_file=server_cert, key_file=server_key, ca_file=ca_file, tenant=CONTOSO
    ).start()
    fabrikam = StandIn(
        cert_file=server_cert,
        key_file=server_key,
        ca_file=ca_file,
        tenant=FABRIKAM,
        host="127.0.0.3",
    ).start()
    postfix: PostfixInstance | None = None
    daemon: Daemon | None = None
    try:
        postfix = PostfixInstance.create(
            relayhost=contoso.relayhost,
            settings={
                "smtp_tls_security_level": "encrypt",
                "smtp_tls_CAfile": str(ca_file),
                "smtp_bind_address": EGRESS,
            },
            master_extra=[
                "relay-fabrikam unix - - n - - smtp",
                f"  -o smtp_tls_cert_file={client_cert}",
                f"  -o smtp_tls_key_file={client_key}",
            ],
            start=False,
        )
        etc = postfix.config_dir
        (etc / "sender_relay").write_text(f"@fabrikam.example {fabrikam.relayhost}\n")
        (etc / "transport").write_text(f"adatum.example relay-fabrikam:{fabrikam.relayhost}\n")
        one_session_per_smtpd(postfix)
        postfix.apply_snippet(
            (Path(__file__).parents[2] / "contrib/postfix/main.cf.snippet").read_text()
        )
        daemon = Daemon(root, postfix.queue_dir / "private" / "m365-policyd")
        postfix.postconf(
            {
                "sender_dependent_relayhost_maps": f"texthash:{etc}/sender_relay",
                "transport_maps": f"texthash:{etc}/transport",
                "m365_policyd_service": f"inet:127.0.0.1:{daemon.port}",
            }
        )
        past = time.time() - 10
        for path in etc.iterdir():
            os.utime(path, (past, past))
        postfix.start()
        daemon.start(
            f"""
[postfix]
config_directory = "{etc}"

[onprem]
ca_bundle = "{ca_file}"

[policy]
action = "defer"

[tenants.contoso]
endpoints = ["{contoso.host}"]
accepted_domains = ["contoso.com"]
[[tenants.contoso.inbound_connector]]
name = "IP connector"
sender_ip_addresses = ["{EGRESS}/32"]

[tenants.fabrikam]
endpoints = ["{fabrikam.host}"]
accepted_domains = ["fabrikam.example"]
[[tenants.fabrikam.inbound_connector]]
name = "Certificate"
tls_sender_certificate_name = "*.fabrikam.example"
"""
        )
        yield TwoTenants(postfix, daemon, contoso, fabrikam, leaf)
    finally:
        if daemon is not None:
            daemon.stop()
        if postfix is not None:
            postfix.close()
        contoso.stop()
        fabrikam.stop()
        shutil.rmtree(root, ignore_errors=True)


_counter = iter(range(1, 10_000))


def tag() -> str:
    return f"{int(time.time()) % 100000}t{next(_counter)}"


#: (case, sender, recipient domain, which stand-in's tenant, does the route present the
#: fabrikam certificate)
CASES = [
    ("contoso own domain", "app@contoso.com", "example.net", "contoso", False),
    ("contoso foreign sender", "john@tailspin.example", "example.net", "contoso", False),
    ("fabrikam by sender map", "help@fabrikam.example", "example.net", "fabrikam", False),
    (
        "fabrikam transport with certificate",
        "john@tailspin.example",
        "adatum.example",
        "fabrikam",
        True,
    ),
    ("fabrikam null sender with certificate", "", "adatum.example", "fabrikam", True),
]


def standin_says(two: TwoTenants, tenant: str, certified: bool, sender: str, rcpt: str) -> str:
    view = CONTOSO if tenant == "contoso" else FABRIKAM
    certificate = (
        PeerCertificate.from_der(two.fabrikam_certificate.cert.public_bytes(Encoding.DER))
        if certified
        else None
    )
    return relay_verdict(
        view,
        source_ip=EGRESS,
        certificate=certificate,
        mail_from=sender,
        recipient=rcpt,
        now=datetime.now(UTC),
    )


@pytest.mark.parametrize(
    ("case", "sender", "domain", "tenant", "certified"), CASES, ids=[c[0] for c in CASES]
)
def test_each_recipient_is_judged_by_its_own_tenant(
    two: TwoTenants, case: str, sender: str, domain: str, tenant: str, certified: bool
) -> None:
    """Deferred exactly when its own stand-in would refuse; accepted mail reaches that
    stand-in; the prediction names the tenant."""
    recipient = f"r-{tag()}@{domain}"
    standin = two.contoso if tenant == "contoso" else two.fabrikam
    mark = len(standin.transactions)
    result = two.postfix.send(sender, [recipient], subject=case)
    code, text = result.rcpt[recipient]
    prediction: dict[str, Any] = two.daemon.prediction(recipient)
    assert prediction["tenant"] == tenant, prediction
    expected = standin_says(two, tenant, certified, sender, recipient)
    refused = not expected.startswith("250")
    assert (code == 450) is refused, (case, code, text, expected)
    if not refused:
        (seen,) = standin.wait_for(lambda t: recipient in t.replies, since=mark)
        assert seen.replies[recipient].startswith("250")
        assert (seen.certificate is not None) is certified


def test_log_lines_carry_the_tenant(two: TwoTenants) -> None:
    """The daemon's JSON prediction lines name both tenants (the tenant label's values)."""
    tenants = {
        json.loads(line).get("tenant")
        for line in two.daemon.output().splitlines()
        if line.startswith("{") and '"prediction"' in line
    }
    assert {"contoso", "fabrikam"} <= tenants
