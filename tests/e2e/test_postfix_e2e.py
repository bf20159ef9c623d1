"""Real Postfix end to end: client -> Postfix (+ m365-policyd) -> Microsoft 365 stand-in.

Every scenario sends real mail over SMTP into a private Postfix wired with
``contrib/postfix/main.cf.snippet`` and reads the outcome from the SMTP replies, Postfix's queue
and the stand-in, which applies Microsoft's relay rule on its own. For every recipient the
daemon's logged prediction must agree with what the stand-in said (or would say, when the
daemon kept the mail from reaching it).
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.postfix import SendResult
from tests.e2e.standin import ATTR36, NO_CONNECTOR, OK, Transaction
from tests.e2e.world import ALIASES, OTHER_IP, REPO, Setup, World

pytestmark = pytest.mark.postfix

_counter = itertools.count(1)

FORWARD_TARGET = ALIASES["kate@contoso.com"]


def token() -> str:
    """A short unique tag for recipient addresses of one test."""
    return f"{int(time.time()) % 100000}x{next(_counter)}"


@dataclass(frozen=True)
class Envelope:
    """One message: who sends, to whom, and where the stand-in sees it (after forwarding)."""

    kind: str
    sender: str
    recipient: str
    final: str


def envelopes(tag: str) -> list[Envelope]:
    """Own-domain sender, foreign sender, forwarding (kate@contoso -> outside), null sender."""
    return [
        Envelope("own", "app@contoso.com", f"own-{tag}@example.net", f"own-{tag}@example.net"),
        Envelope(
            "foreign",
            "john@fabrikam.com",
            f"foreign-{tag}@example.net",
            f"foreign-{tag}@example.net",
        ),
        Envelope("forward", "john@fabrikam.com", "kate@contoso.com", FORWARD_TARGET),
        Envelope("null", "", f"null-{tag}@example.net", f"null-{tag}@example.net"),
    ]


# The scenario table, written from Microsoft's rule (reference/m365-relay-rules.md §1, §4):
# what Microsoft 365 answers for each kind of envelope, and the daemon's reason id.
ACCEPTED = "250"
SETUPS: dict[str, tuple[Setup, dict[str, tuple[str, str | None]]]] = {
    "ip-connector": (
        Setup(),
        {
            "own": (ACCEPTED, "sender-accepted-domain"),
            "foreign": (ATTR36, "sender-not-accepted"),
            "forward": (ATTR36, "forwarded"),
            "null": (ATTR36, "null-sender"),
        },
    ),
    "no-connector": (
        Setup(egress=OTHER_IP),
        {k: (NO_CONNECTOR, "no-connector") for k in ("own", "foreign", "forward", "null")},
    ),
    "certificate": (
        Setup(egress=OTHER_IP, cert_connector="*.contoso.com", certificate="good"),
        {k: (ACCEPTED, "certificate-connector") for k in ("own", "foreign", "forward", "null")},
    ),
    "certificate-expired": (
        Setup(egress=OTHER_IP, cert_connector="*.contoso.com", certificate="expired"),
        {k: (NO_CONNECTOR, "no-connector") for k in ("own", "foreign", "forward", "null")},
    ),
    "certificate-too-deep": (
        Setup(egress=OTHER_IP, cert_connector="*.contoso.com", certificate="deep"),
        {
            "own": (ACCEPTED, "sender-accepted-domain"),
            "foreign": (ATTR36, "sender-not-accepted"),
            "forward": (ATTR36, "forwarded"),
            "null": (ATTR36, "null-sender"),
        },
    ),
    "srs": (
        Setup(srs=True),
        {
            "own": (ACCEPTED, None),
            "foreign": (ACCEPTED, "srs-rewritten"),
            "forward": (ACCEPTED, "srs-rewritten"),
            "null": (ATTR36, "null-sender"),
        },
    ),
}


def assert_agree(prediction: dict[str, Any], reply: str, where: str) -> None:
    """The daemon's logged prediction says what the stand-in said (accept / which 5.7.64)."""
    if reply.startswith("250"):
        assert prediction["verdict"] == "accept", (where, prediction, reply)
        return
    assert prediction["verdict"] == "reject", (where, prediction, reply)
    assert prediction["code"] == "5.7.64", (where, prediction, reply)
    tenant_attribution = "TenantAttribution" in reply
    assert (prediction["reason"] == "no-connector") == tenant_attribution, (
        where,
        prediction,
        reply,
    )


def standin_reply(world: World, mark: int, final: str, timeout: float = 20.0) -> str:
    """The stand-in's RCPT reply to ``final`` in a transaction recorded after ``mark``."""
    seen: list[Transaction] = world.standin.wait_for(
        lambda t: final in t.replies, timeout=timeout, since=mark
    )
    return seen[0].replies[final]


def send(world: World, env: Envelope) -> SendResult:
    return world.postfix.send(env.sender, [env.recipient], subject=f"{env.kind} scenario")


# -- wiring ---------------------------------------------------------------------------------


def test_snippet_wiring_is_what_postfix_runs(world: World) -> None:
    """Postfix runs the contrib snippet: the policy at RCPT and DATA, with DUNNO as default."""
    world.apply(Setup())
    service = f"inet:127.0.0.1:{world.daemon.port}"
    check = f"check_policy_service {{ {service}, default_action=DUNNO }}"
    assert world.postfix.get("smtpd_recipient_restrictions") == check
    assert world.postfix.get("smtpd_data_restrictions") == check
    assert world.postfix.get("smtpd_relay_restrictions").split() == [
        "permit_mynetworks",
        "permit_sasl_authenticated",
        "reject_unauth_destination",
    ]


def test_relay_control_runs_before_the_policy(fresh: World) -> None:
    """A client outside mynetworks is refused as a relay attempt before the daemon is asked."""
    world = fresh.apply(Setup(action="defer"))
    world.postfix.postconf({"mynetworks": "127.0.0.1/32"}, reload=True)
    try:
        tag = token()
        outsider = world.postfix.send(
            "john@fabrikam.com", [f"relay-{tag}@example.net"], source_address="127.0.0.99"
        )
        insider = world.postfix.send("john@fabrikam.com", [f"local-{tag}@example.net"])
    finally:
        world.postfix.postconf({"mynetworks": "127.0.0.0/8"}, reload=True)
    code, text = outsider.rcpt[f"relay-{tag}@example.net"]
    assert (code, "Relay access denied" in text) == (554, True)
    assert world.daemon.predictions(f"relay-{tag}@example.net") == []
    # a client inside mynetworks (a local application) is still checked by the daemon
    assert insider.rcpt[f"local-{tag}@example.net"][0] == 450
    assert world.daemon.prediction(f"local-{tag}@example.net")["verdict"] == "reject"


# -- the scenario matrix --------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SETUPS))
def test_dunno_mail_reaches_microsoft_and_prediction_agrees(fresh: World, name: str) -> None:
    """With action=dunno every message reaches the stand-in, whose verdict is the one predicted."""
    setup, expected = SETUPS[name]
    world = fresh.apply(setup)
    mark = len(world.standin.transactions)
    envs = envelopes(token())
    for env in envs:
        result = send(world, env)
        assert result.queued, (env, result)
    for env in envs:
        reply = standin_reply(world, mark, env.final)
        want, reason = expected[env.kind]
        assert reply.startswith(want), (name, env.kind, reply)
        prediction = world.daemon.prediction(env.recipient)
        assert_agree(prediction, reply, f"{name}/{env.kind}")
        if reason is not None:
            assert prediction["reason"] == reason, (name, env.kind, prediction)
        assert prediction["final"] == [env.final]
    world.postfix.wait_queue_empty()


@pytest.mark.parametrize("name", list(SETUPS))
def test_defer_keeps_refused_mail_from_microsoft(fresh: World, name: str) -> None:
    """With action=defer a predicted refusal gets 450 4.7.64 and never reaches the stand-in."""
    setup, expected = SETUPS[name]
    world = fresh.apply(Setup(**{**setup.__dict__, "action": "defer"}))
    mark = len(world.standin.transactions)
    envs = envelopes(token())
    results = {env.kind: send(world, env) for env in envs}
    for env in envs:
        want, _ = expected[env.kind]
        code, text = results[env.kind].rcpt[env.recipient]
        prediction = world.daemon.prediction(env.recipient)
        if want == ACCEPTED:
            assert (code, results[env.kind].queued) == (250, True), (name, env.kind, text)
            assert_agree(prediction, standin_reply(world, mark, env.final), f"{name}/{env.kind}")
        else:
            assert code == 450 and text.startswith("4.7.64"), (name, env.kind, code, text)
            assert results[env.kind].data is None
            sender = env.sender
            assert_agree(prediction, world.standin_would_say(sender, env.final), name)
    world.postfix.wait_queue_empty()
    late = [
        t
        for t in world.standin.transactions[mark:]
        for env in envs
        if expected[env.kind][0] != ACCEPTED and env.final in t.replies
    ]
    assert late == []


# -- mail into the tenant: Partner connectors and RejectDirectSend (SPEC §5 step 2) ------------

PARTNER_IP = "127.0.0.30/32"  # a filtering service's address: not ours

INTO_TENANT: dict[str, tuple[Setup, str, str, str | None]] = {
    # (setup, stand-in reply starts with, predicted reason, predicted code)
    "partner restriction, no OnPremises connector matches": (
        Setup(egress=OTHER_IP, partner_ips=(PARTNER_IP,)),
        "550 5.7.51 TenantInboundAttribution",
        "partner-restricted",
        "5.7.51",
    ),
    "partner restriction, the OnPremises connector matches": (
        Setup(partner_ips=(PARTNER_IP,)),
        ACCEPTED,
        "recipient-in-tenant",
        None,
    ),
    "RejectDirectSend, no connector matches": (
        Setup(egress=OTHER_IP, reject_direct_send=True),
        "550 5.7.68 TenantInboundAttribution",
        "direct-send-rejected",
        "5.7.68",
    ),
    "RejectDirectSend, a Partner connector authenticates": (
        Setup(
            egress=OTHER_IP,
            reject_direct_send=True,
            partner_ips=(f"{OTHER_IP}/32",),
            partner_restricts=False,
        ),
        ACCEPTED,
        "recipient-in-tenant",
        None,
    ),
}


@pytest.mark.parametrize("name", list(INTO_TENANT))
def test_mail_into_the_tenant_agrees_with_the_standin(fresh: World, name: str) -> None:
    """A private Postfix sends own-domain mail into the tenant: from an address a restricting
    Partner connector does not know the stand-in answers 5.7.51 and the daemon predicted
    partner-restricted; RejectDirectSend gives 5.7.68 unless a Partner connector matches."""
    setup, reply, reason, code = INTO_TENANT[name]
    world = fresh.apply(setup)
    rcpt = f"into-{token()}@contoso.com"
    mark = len(world.standin.transactions)
    assert send(world, Envelope("into", "app@contoso.com", rcpt, rcpt)).queued
    said = standin_reply(world, mark, rcpt)
    assert said.startswith(reply), (name, said)
    prediction = world.daemon.prediction(rcpt)
    assert (prediction["reason"], prediction["code"]) == (reason, code), prediction
    assert prediction["verdict"] == ("accept" if code is None else "reject")
    world.postfix.wait_queue_empty()


def test_defer_keeps_partner_restricted_mail_with_its_code(fresh: World) -> None:
    """Under action=defer a predicted 5.7.51 is answered 450 4.7.51 at RCPT and never reaches
    the stand-in."""
    world = fresh.apply(Setup(egress=OTHER_IP, partner_ips=(PARTNER_IP,), action="defer"))
    rcpt = f"held-{token()}@contoso.com"
    mark = len(world.standin.transactions)
    result = world.postfix.send("app@contoso.com", [rcpt])
    code, text = result.rcpt[rcpt]
    assert (code, text.split(" ", 1)[0]) == (450, "4.7.51"), text
    assert "reason=partner-restricted" in text
    assert world.standin_would_say("app@contoso.com", rcpt).startswith("550 5.7.51")
    assert [t for t in world.standin.transactions[mark:] if rcpt in t.replies] == []


# -- header, reroute, hold ------------------------------------------------------------------


def test_mixed_recipients_carry_one_header_with_counts(fresh: World) -> None:
    """Three recipients of mixed verdicts: one X-M365-Relay header with the right counts arrives."""
    world = fresh.apply(Setup())
    tag = token()
    mark = len(world.standin.transactions)
    outside, inside = f"mixed-{tag}@example.net", f"boss-{tag}@contoso.com"
    result = world.postfix.send("john@fabrikam.com", [outside, "kate@contoso.com", inside])
    assert result.queued
    (seen,) = world.standin.wait_for(lambda t: inside in t.replies, since=mark)
    assert sorted(seen.refused) == sorted([outside, FORWARD_TARGET])
    assert seen.accepted == [inside]
    headers = seen.message.get_all("X-M365-Relay")
    assert headers == [
        "verdict=reject; code=5.7.64; reason=sender-not-accepted; refused=2; recipients=3"
    ]
    for rcpt, final in ((outside, outside), ("kate@contoso.com", FORWARD_TARGET), (inside, inside)):
        assert_agree(world.daemon.prediction(rcpt), seen.replies[final], rcpt)


def test_defer_and_reject_keep_refused_recipients_out_of_the_header(fresh: World) -> None:
    """Under defer (450) or reject (550) the refused recipient is turned away at RCPT and is
    not part of the message: the in-tenant rest is not a relay, so it carries no header, while
    a relayed message under the same action is tagged refused=0 (SPEC §6)."""
    for action, code in (("defer", 450), ("reject", 550)):
        world = fresh.apply(Setup(action=action))
        tag = token()
        mark = len(world.standin.transactions)
        outside, inside = f"{action}-{tag}@example.net", f"ok-{tag}@contoso.com"
        result = world.postfix.send("john@fabrikam.com", [outside, inside])
        assert result.rcpt[outside][0] == code, result
        assert result.rcpt[inside][0] == 250, result
        assert result.queued
        (seen,) = world.standin.wait_for(lambda t, inside=inside: inside in t.replies, since=mark)
        assert seen.accepted == [inside]
        assert outside not in seen.replies
        assert seen.message.get_all("X-M365-Relay") is None
        assert_agree(
            world.daemon.prediction(outside),
            world.standin_would_say("john@fabrikam.com", outside),
            action,
        )
        relayed = f"relayed-{tag}@example.net"
        mark = len(world.standin.transactions)
        assert world.postfix.send("alerts@contoso.com", [relayed]).queued
        (seen,) = world.standin.wait_for(
            lambda t, relayed=relayed: relayed in t.replies, since=mark
        )
        assert seen.accepted == [relayed]
        assert seen.message.get_all("X-M365-Relay") == [
            "verdict=accept; code=none; reason=sender-accepted-domain; refused=0; recipients=1"
        ]


def test_reroute_sends_the_message_to_the_second_relay(fresh: World) -> None:
    """action=reroute: the whole message goes to the second sink, none of it to the stand-in."""
    world = fresh.apply(Setup(action="reroute", reroute=True))
    tag = token()
    rcpt = f"reroute-{tag}@example.net"
    mark = len(world.standin.transactions)
    result = world.postfix.send("john@fabrikam.com", [rcpt])
    assert result.queued
    (seen,) = world.sink.wait_for(lambda t: rcpt in t.accepted)
    assert seen.message["Subject"] == "test"
    prediction = world.daemon.prediction(rcpt)
    assert prediction["action"] == "reroute"
    assert_agree(prediction, world.standin_would_say("john@fabrikam.com", rcpt), "reroute")
    world.postfix.wait_queue_empty()
    assert [t for t in world.standin.transactions[mark:] if rcpt in t.replies] == []


def test_hold_leaves_the_message_in_the_hold_queue(fresh: World) -> None:
    """action=hold: the message waits in Postfix's hold queue and never reaches the stand-in."""
    world = fresh.apply(Setup(action="hold"))
    rcpt = f"hold-{token()}@example.net"
    mark = len(world.standin.transactions)
    result = world.postfix.send("", [rcpt])
    assert result.queued
    queue = world.postfix.queue()
    held = [m for m in queue if m.get("queue_id") == result.queue_id]
    assert [m.get("queue_name") for m in held] == ["hold"], queue
    assert world.daemon.prediction(rcpt)["reason"] == "null-sender"
    # A queue run, and a later message relayed through the stand-in: the held one would have
    # gone with them had it been in any queue Postfix delivers from.
    world.postfix.flush()
    later = f"after-hold-{token()}@example.net"
    assert world.postfix.send("alerts@contoso.com", [later]).queued
    world.standin.wait_for(lambda t: later in t.replies, since=mark)
    world.postfix.wait_queue_empty()
    assert [t for t in world.standin.transactions[mark:] if rcpt in t.replies] == []
    still = [
        m.get("queue_name") for m in world.postfix.queue() if m.get("queue_id") == result.queue_id
    ]
    assert still == ["hold"]


# -- the daemon itself ----------------------------------------------------------------------


def test_mail_flows_while_the_daemon_is_down_and_checks_resume(fresh: World) -> None:
    """Daemon stopped: default_action=DUNNO lets mail through; restarted: it defers again."""
    world = fresh.apply(Setup(action="defer"))
    tag = token()
    world.daemon.stop()
    mark = len(world.standin.transactions)
    down = world.postfix.send("john@fabrikam.com", [f"down-{tag}@example.net"])
    assert down.queued, down
    # without the daemon nothing stops the mail, and Microsoft 365 refuses it
    assert standin_reply(world, mark, f"down-{tag}@example.net").startswith(ATTR36)
    world.daemon.start(world.daemon_toml(world.setup))
    up = world.postfix.send("john@fabrikam.com", [f"up-{tag}@example.net"])
    assert up.rcpt[f"up-{tag}@example.net"][0] == 450
    assert world.daemon.prediction(f"up-{tag}@example.net")["reason"] == "sender-not-accepted"


def test_unix_socket_in_postfix_private_directory(fresh: World) -> None:
    """The daemon on unix:private/m365-policyd (the master.cf example's socket) is consulted too."""
    world = fresh.apply(Setup(action="defer", listen_unix=True))
    try:
        tag = token()
        mark = len(world.standin.transactions)
        refused = world.postfix.send("john@fabrikam.com", [f"sock-{tag}@example.net"])
        passed = world.postfix.send("app@contoso.com", [f"sockok-{tag}@example.net"])
        assert refused.rcpt[f"sock-{tag}@example.net"][0] == 450
        assert passed.queued
        assert standin_reply(world, mark, f"sockok-{tag}@example.net") == OK
        assert world.postfix.get("m365_policyd_service") == "unix:private/m365-policyd"
    finally:
        world.apply(Setup())


def test_master_cf_example_parses(world: World, tmp_path: Path) -> None:
    """The contrib master.cf example is valid: postconf reads its per-service overrides."""
    shutil.copy(world.postfix.config_dir / "main.cf", tmp_path / "main.cf")
    example = (REPO / "contrib" / "postfix" / "master.cf.example").read_text()
    (tmp_path / "master.cf").write_text(example)
    out = subprocess.run(
        ["postconf", "-c", str(tmp_path), "-P"], capture_output=True, text=True, check=True
    )
    overrides = set(out.stdout.splitlines())
    assert "127.0.0.1:10025/inet/smtpd_recipient_restrictions =" in overrides
    assert "127.0.0.1:10025/inet/smtpd_data_restrictions =" in overrides
    assert "warning" not in out.stderr
