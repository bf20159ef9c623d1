"""Postfix request streams replayed through the real protocol and engine at every read size.

This is the daemon as Postfix sees it, minus the socket: recorded-style requests (the ~30
attributes Postfix 3.7 sends) go through ``PolicyProtocol.dataReceived`` in chunks from one byte
to the whole stream, and the bytes written back must be exactly the expected replies.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from policyd.engine.policy import PolicyEngine
from policyd.engine.stats import Stats
from policyd.sources.config import load_config
from policyd.sources.state import build_state
from policyd.wire.protocol import PolicyFactory

ROOT = Path(__file__).resolve().parent.parent

TEMPLATE = """request=smtpd_access_policy
protocol_state={state}
protocol_name=ESMTP
helo_name=app01.contoso.com
queue_id={queue_id}
sender={sender}
recipient={recipient}
recipient_count={count}
client_address=10.1.2.3
client_name=app01.contoso.com
reverse_client_name=app01.contoso.com
instance={instance}
sasl_method=
sasl_username=
sasl_sender=
size=2048
ccert_subject=
ccert_issuer=
ccert_fingerprint=
encryption_protocol=TLSv1.3
encryption_cipher=TLS_AES_256_GCM_SHA384
encryption_keysize=256
etrn_domain=
stress=
ccert_pubkey_fingerprint=
client_port=40112
policy_context=
server_address=10.1.2.1
server_port=25
compatibility_level=3.6
mail_version=3.7.11

"""

FOREIGN = "john@fabrikam.com"
OWN = "alerts@contoso.com"


def request(
    state: str, sender: str, recipient: str, instance: str, queue_id: str = "", count: int = 0
) -> bytes:
    return TEMPLATE.format(
        state=state,
        sender=sender,
        recipient=recipient,
        instance=instance,
        queue_id=queue_id,
        count=count,
    ).encode()


#: Two messages on one connection. Message 1 (foreign sender): a refused outside recipient, an
#: in-tenant recipient, and a forward to the outside; message 2 (own domain): one relayed recipient.
STREAM = b"".join(
    [
        request("RCPT", FOREIGN, "kate@tailspintoys.com", "1a2b.6745a1c0.3f1.0"),
        request("RCPT", FOREIGN, "bob@contoso.com", "1a2b.6745a1c0.3f1.0", "4XyZ1"),
        request("RCPT", FOREIGN, "kate@contoso.com", "1a2b.6745a1c0.3f1.0", "4XyZ1"),
        request("DATA", FOREIGN, "", "1a2b.6745a1c0.3f1.0", "4XyZ1", 3),
        request("RCPT", OWN, "orders@tailspintoys.com", "1a2b.6745a1c9.77.1"),
        request("DATA", OWN, "orders@tailspintoys.com", "1a2b.6745a1c9.77.1", "4XyZ2", 1),
    ]
)

REFUSED = "Microsoft 365 would refuse relay to this recipient (reason={reason}: {short})"
NOT_ACCEPTED = REFUSED.format(
    reason="sender-not-accepted",
    short="the sender domain is not an accepted domain of the tenant",
)
FORWARD = REFUSED.format(
    reason="forwarded", short="forwarded mail from a sender domain the tenant does not accept"
)
ACCEPTED_TAG = (
    "PREPEND X-M365-Relay: verdict=accept; code=none; reason=sender-accepted-domain; "
    "refused=0; recipients=1"
)

EXPECTED = {
    "dunno": [
        "DUNNO",
        "DUNNO",
        "DUNNO",
        "PREPEND X-M365-Relay: verdict=reject; code=5.7.64; reason=sender-not-accepted; "
        "refused=2; recipients=3",
        "DUNNO",
        ACCEPTED_TAG,
    ],
    # Deferred recipients are not part of the message; only the in-tenant one is left, and
    # nothing relayed remains, so message 1 carries no header.
    "defer": [
        f"450 4.7.64 {NOT_ACCEPTED}",
        "DUNNO",
        f"450 4.7.64 {FORWARD}",
        "DUNNO",
        "DUNNO",
        ACCEPTED_TAG,
    ],
    "reject": [
        f"550 5.7.64 {NOT_ACCEPTED}",
        "DUNNO",
        f"550 5.7.64 {FORWARD}",
        "DUNNO",
        "DUNNO",
        ACCEPTED_TAG,
    ],
    "hold": [
        f"HOLD {NOT_ACCEPTED}",
        "DUNNO",
        f"HOLD {FORWARD}",
        "PREPEND X-M365-Relay: verdict=reject; code=5.7.64; reason=sender-not-accepted; "
        "refused=2; recipients=3",
        "DUNNO",
        ACCEPTED_TAG,
    ],
    "reroute": [
        "FILTER smtp:[relay2.example.net]:587",
        "DUNNO",
        "FILTER smtp:[relay2.example.net]:587",
        "PREPEND X-M365-Relay: verdict=reject; code=5.7.64; reason=sender-not-accepted; "
        "refused=2; recipients=3",
        "DUNNO",
        ACCEPTED_TAG,
    ],
}


def factory_for(tmp_path: Path, action: str) -> PolicyFactory:
    (tmp_path / "virtual").write_text("kate@contoso.com  kate.private@tailspintoys.com\n")
    example = (ROOT / "contrib" / "m365-policyd.example.toml").read_text()
    text = example.replace('action = "dunno"', f'action = "{action}"', 1)
    text = text.replace('reroute = ""', 'reroute = "smtp:[relay2.example.net]:587"', 1)
    text = text.replace("alias_maps = []", 'alias_maps = ["texthash:virtual"]', 1)
    assert text.count(f'action = "{action}"') == 1
    path = tmp_path / "m365-policyd.toml"
    path.write_text(text)
    config = load_config(str(path))
    assert config.policy.action == action
    clock = Clock()
    clock.advance(1_795_000_000)  # late 2026
    stats = Stats()
    engine = PolicyEngine(build_state(config, 1), stats, clock.seconds, lambda record: None)
    return PolicyFactory(engine, stats, config.server, clock)


def replay(factory: PolicyFactory, size: int) -> bytes:
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    for start in range(0, len(STREAM), size):
        protocol.dataReceived(STREAM[start : start + size])
    assert not transport.disconnecting
    protocol.connectionLost(None)
    return transport.value()


def expected_bytes(action: str) -> bytes:
    return b"".join(f"action={answer}\n\n".encode() for answer in EXPECTED[action])


@pytest.mark.parametrize("action", sorted(EXPECTED))
def test_each_action_at_many_read_sizes(tmp_path: Path, action: str) -> None:
    """Every action answers the same bytes however Postfix's stream is split into reads."""
    factory = factory_for(tmp_path, action)
    want = expected_bytes(action)
    sizes = [*range(1, 64), 97, 256, 511, 1024, 4096, len(STREAM) - 1, len(STREAM)]
    for size in sizes:
        assert replay(factory, size) == want, f"read size {size}"


def test_every_read_size_for_the_header_rule(tmp_path: Path) -> None:
    """One header per message, at every read size from 1 byte to the whole stream."""
    factory = factory_for(tmp_path, "dunno")
    want = expected_bytes("dunno")
    for size in range(1, len(STREAM) + 1):
        assert replay(factory, size) == want, f"read size {size}"


def test_counters_after_a_replay(tmp_path: Path) -> None:
    """A replay counts requests by stage, predictions by reason and actions taken."""
    factory = factory_for(tmp_path, "defer")
    replay(factory, len(STREAM))
    stats = factory.stats
    assert dict(stats.requests) == {"rcpt": 4, "data": 2}
    assert stats.predictions[("default", "reject", "sender-not-accepted")] == 1
    assert stats.predictions[("default", "reject", "forwarded")] == 1
    assert stats.predictions[("default", "accept", "recipient-in-tenant")] == 1
    assert stats.predictions[("default", "accept", "sender-accepted-domain")] == 1
    assert stats.actions["defer"] == 2
    assert stats.actions["prepend"] == 1
    assert stats.duration_count == 6
    assert stats.connections == 0
