"""End to end with ``[postfix] config_directory``: the daemon reads Postfix's own routing, and
under action = "defer" nothing routed around Microsoft 365 is deferred, while every recipient
routed to the stand-in is deferred exactly when the stand-in would refuse it."""

from __future__ import annotations

import itertools
import time

import pytest

from tests.e2e.world import OTHER_IP, Setup, World

pytestmark = pytest.mark.postfix

_counter = itertools.count(1)

AROUND = "partner.example"

#: Setups whose stand-in answers differ: IP connector (foreign senders refused ATTR36), no
#: connector at all (everything refused), certificate connector (everything relayed).
SCENARIOS = {
    "ip-connector": Setup(),
    "no-connector": Setup(egress=OTHER_IP),
    "certificate": Setup(egress=OTHER_IP, cert_connector="*.contoso.com", certificate="good"),
}


def tag() -> str:
    return f"{int(time.time()) % 100000}r{next(_counter)}"


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_defer_follows_postfix_routing(fresh: World, name: str) -> None:
    """Recipients transport_maps sends to the second sink are accepted (other-route) and
    delivered there; recipients relayed to the stand-in are deferred iff it would refuse."""
    base = SCENARIOS[name]
    world = fresh.apply(
        Setup(**{**base.__dict__, "action": "defer", "postfix_routing": True, "around": AROUND})
    )
    t = tag()
    envelopes = [
        ("app@contoso.com", f"own-{t}@example.net"),
        ("john@fabrikam.com", f"foreign-{t}@example.net"),
        ("", f"null-{t}@example.net"),
        ("john@fabrikam.com", f"around-{t}@{AROUND}"),
        ("", f"around-null-{t}@{AROUND}"),
    ]
    sink_mark = len(world.sink.transactions)
    for sender, recipient in envelopes:
        result = world.postfix.send(sender, [recipient], subject=f"routing {name}")
        code, text = result.rcpt[recipient]
        prediction = world.daemon.prediction(recipient)
        if recipient.endswith("@" + AROUND):
            assert code == 250, (name, recipient, code, text)
            assert prediction["reason"] == "other-route"
            assert prediction["action"] == "dunno"
            continue
        refused = not world.standin_would_say(sender, recipient).startswith("250")
        assert (code == 450) is refused, (name, recipient, code, text)
        assert prediction["verdict"] == ("reject" if refused else "accept")
    around = [r for _, r in envelopes if r.endswith("@" + AROUND)]
    seen = world.sink.wait_for(
        lambda tr: any(r in tr.replies for r in around), since=sink_mark, count=len(around)
    )
    assert {r for tr in seen for r in tr.replies} >= set(around)
