"""``probe`` with ``[postfix]``: the endpoint, certificate, key and source address come from
the real Postfix's route and delivering service, and the stand-in sees exactly them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from policyd.rules.outcomes import classify_reply
from tests.e2e.world import OTHER_IP, Setup, World

pytestmark = pytest.mark.postfix

#: The connector groups: IP connector (foreign senders ATTR36), certificate connector (every
#: sender relays), no connector at all (TenantAttribution).
SCENARIOS = {
    "ip-connector": Setup(),
    "certificate": Setup(egress=OTHER_IP, cert_connector="*.contoso.com", certificate="good"),
    "no-connector": Setup(egress=OTHER_IP),
}

ENVELOPES = {
    "app@contoso.com": ["own@example.net", "user@contoso.com"],
    "john@fabrikam.com": ["foreign@example.net"],
    "": ["null@example.net"],
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_probe_uses_postfix_route_certificate_and_bind_address(fresh: World, name: str) -> None:
    """Without --endpoint or --key the probe connects to the route's next hop from
    smtp_bind_address with smtp_tls_cert_file/smtp_tls_key_file; every kind equals the
    stand-in's decision and the prediction; no session sent DATA and each ended with QUIT."""
    setup = SCENARIOS[name]
    world = fresh.apply(Setup(**{**setup.__dict__, "postfix_routing": True}))
    config = world.root / f"probe-{name}.toml"
    config.write_text(world.daemon_toml(world.setup))
    standin = world.standin
    standin.sessions.clear()
    for sender, recipients in ENVELOPES.items():
        done = subprocess.run(
            [sys.executable, "-m", "policyd.tools.cli", "probe", "-c", str(config),
             "--sender", sender, "--recipient", *recipients, "--json", "--timeout", "10"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, (name, sender, done.stdout, done.stderr)
        cn = "CN=mail.contoso.com" if setup.certificate else "no certificate"
        assert done.stderr.startswith(
            f"probing 127.0.0.1:{standin.port} from {setup.egress} with {cn}; no mail is sent"
        ), done.stderr
        for result in json.loads(done.stdout)["results"]:
            said = world.standin_would_say(sender, result["address"])
            assert result["kind"] == classify_reply(said), (name, result)
            assert result["agrees"] is True
            assert result["route"].endswith(standin.relayhost)
    sessions = standin.closed_sessions(len(ENVELOPES))
    assert len(sessions) == len(ENVELOPES)
    for session in sessions:
        assert "DATA" not in session.verbs and session.verbs[-1] == "QUIT", session.verbs
        assert session.source_ip == setup.egress
        names = session.certificate.names if session.certificate else ()
        assert ("mail.contoso.com" in names) is bool(setup.certificate)
