"""SMTP AUTH client submission end to end (SPEC §5.4, issue 18): client -> Postfix (+ m365-policyd)
-> the stand-in's SMTP AUTH port, as ``[smtp.office365.com]:PORT``.

A private Postfix relays with ``smtp_sasl_auth_enable``, a ``hash:`` password map built with the
real postmap and ``smtp_sender_dependent_authentication``. Its ``relayhost`` names
``smtp.office365.com`` itself: Postfix runs in a private mount namespace whose ``/etc/hosts``
points that name at the stand-in's loopback address (``smtp_host_lookup = native``;
``tests.e2e.postfix``), so the daemon reads the very main.cf Postfix runs and recognises the
client-submission endpoint by its name, with no setting of its own bent for the test.

Senders: one whose own credential logs in as itself, two that a shared login may send as
(``*@contoso.com`` and one listed address), one that login may not send as, one with no
credential at all, and the null sender (never looked up by sender; no next-hop entry). Under
``action = "defer"`` the recipients the daemon defers must be exactly those the stand-in
refuses: the accepted ones are delivered there (and the stand-in recorded the login the daemon
named), the deferred ones are sent again with ``action = "dunno"`` and Postfix's delivery log
must show the stand-in refusing each with the reply the daemon predicted.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import needs
from tests.e2e.postfix import PostfixInstance, hosts_unavailable, postfix_unavailable
from tests.e2e.standin import AUTH_REQUIRED, SEND_AS_DENIED, StandIn, SubmissionView
from tests.e2e.world import SNIPPET, Daemon, daemon_unavailable, one_session_per_smtpd
from tests.pki import TestPKI

pytestmark = pytest.mark.postfix

SUBMISSION_HOST = "smtp.office365.com"
POSTMAP = "/usr/sbin/postmap"

#: The stand-in's accounts, and the daemon's [submission] send_as (the same lists).
ACCOUNTS = SubmissionView(
    logins={"app@contoso.com": "app-secret", "relay@contoso.com": "relay-secret"},
    send_as={
        "app@contoso.com": (),
        "relay@contoso.com": ("*@contoso.com", "partner@fabrikam.example"),
    },
)
#: smtp_sasl_password_maps: by sender (exact address, then @domain); no next-hop entry.
PASSWORDS = (
    "app@contoso.com app@contoso.com:app-secret\n"
    "@contoso.com relay@contoso.com:relay-secret\n"
    "@fabrikam.example relay@contoso.com:relay-secret\n"
)


@dataclass(frozen=True)
class Case:
    """One sender, and what the scenario was written for (the stand-in decides the test)."""

    kind: str
    sender: str
    reason: str  # the daemon's reason id
    login: str  # the login smtp(8) uses ("" = none)


CASES = (
    Case("login", "app@contoso.com", "submission-accepted", "app@contoso.com"),
    Case("send-as-domain", "alerts@contoso.com", "submission-accepted", "relay@contoso.com"),
    Case("send-as-address", "partner@fabrikam.example", "submission-accepted", "relay@contoso.com"),
    Case(
        "not-allowed", "john@fabrikam.example", "submission-sender-not-login", "relay@contoso.com"
    ),
    Case("no-credential", "nobody@tailspin.example", "submission-no-credentials", ""),
    Case("null", "", "submission-no-credentials", ""),
)

_counter = itertools.count(1)


@dataclass
class AuthWorld:
    """Postfix relaying to the stand-in's SMTP AUTH port, and the daemon reading Postfix."""

    standin: StandIn
    postfix: PostfixInstance
    daemon: Daemon

    def start_daemon(self, action: str) -> None:
        entries = ", ".join(
            f"{json.dumps(login)} = {json.dumps(list(allowed))}"
            for login, allowed in ACCOUNTS.send_as.items()
        )
        self.daemon.start(
            "[tenant]\n"
            'accepted_domains = ["contoso.com"]\n\n'
            "[postfix]\n"
            f'config_directory = "{self.postfix.config_dir}"\n\n'
            "[submission]\n"
            f"send_as = {{ {entries} }}\n\n"
            "[policy]\n"
            f'action = "{action}"\n'
            "tag = true\n"
        )


@pytest.fixture(scope="module")
def auth_world() -> Iterator[AuthWorld]:
    needs.require(postfix_unavailable())
    needs.require(daemon_unavailable())
    needs.require(hosts_unavailable())
    root = Path(tempfile.mkdtemp(prefix="m365-e2e-auth-"))
    root.chmod(0o755)
    pki = TestPKI()
    ca_file = pki.write_ca_bundle(root)
    cert, key = pki.write(root, pki.leaf(SUBMISSION_HOST, [SUBMISSION_HOST]), "standin")
    standin = StandIn(cert_file=cert, key_file=key, ca_file=ca_file, submission=ACCOUNTS).start()
    daemon = Daemon(root, root / "unused.sock")
    postfix: PostfixInstance | None = None
    try:
        postfix = PostfixInstance.create(
            relayhost=f"[{SUBMISSION_HOST}]:{standin.submission_port}",
            settings={
                "smtp_sasl_auth_enable": "yes",
                "smtp_sasl_security_options": "noanonymous",
                "smtp_sasl_tls_security_options": "noanonymous",
                "smtp_sender_dependent_authentication": "yes",
                "smtp_tls_security_level": "encrypt",
                "smtp_tls_loglevel": "1",
                "smtp_host_lookup": "native",  # the name through /etc/hosts, not DNS
            },
            start=False,
            hosts={SUBMISSION_HOST: standin.host},
        )
        table = postfix.config_dir / "sasl_passwd"
        table.write_text(PASSWORDS)
        subprocess.run([POSTMAP, "-c", str(postfix.config_dir), f"hash:{table}"], check=True)
        postfix.postconf({"smtp_sasl_password_maps": f"hash:{table}"})
        one_session_per_smtpd(postfix)
        postfix.apply_snippet(
            SNIPPET.read_text(), {"m365_policyd_service": f"inet:127.0.0.1:{daemon.port}"}
        )
        past = time.time() - 10  # the daemon's postconf/postmap must not wait for fresh files
        for path in postfix.config_dir.iterdir():
            os.utime(path, (past, past))
        postfix.start()
        yield AuthWorld(standin, postfix, daemon)
    finally:
        daemon.stop()
        if postfix is not None:
            postfix.close()
        standin.stop()
        shutil.rmtree(root, ignore_errors=True)


def recipients(kind: str, tag: str) -> list[str]:
    """Three recipients of one message: two outside the tenant, one inside."""
    return [
        f"{kind}-a-{tag}@example.net",
        f"{kind}-b-{tag}@example.org",
        f"{kind}-{tag}@contoso.com",
    ]


def delivery(postfix: PostfixInstance, recipient: str, since: int) -> tuple[str, str, str]:
    """Postfix's delivery log for ``recipient`` after offset ``since``: (relay, status, text)."""
    found = postfix.wait_log(
        rf"(?m)to=<{re.escape(recipient)}>, relay=(\S+), .*?status=(\w+) \((.*)\)$",
        since=since,
        timeout=30,
    )
    return found.group(1), found.group(2), found.group(3)


def test_defer_exactly_what_the_smtp_auth_endpoint_refuses(auth_world: AuthWorld) -> None:
    """Under action = "defer" the daemon defers exactly the recipients the stand-in's SMTP AUTH
    port refuses; the rest reach it through smtp.office365.com, logged in as predicted."""
    world = auth_world
    world.postfix.clear_queue()
    tag = f"{int(time.time()) % 100000}s{next(_counter)}"
    world.start_daemon("defer")
    mark = len(world.postfix.log())
    deferred: list[tuple[Case, list[str]]] = []
    accepted: list[tuple[Case, list[str]]] = []
    for case in CASES:
        rcpts = recipients(case.kind, tag)
        result = world.postfix.send(case.sender, rcpts, subject=f"submission {case.kind}")
        codes = {r: result.rcpt[r][0] for r in rcpts}
        for rcpt in rcpts:
            prediction = world.daemon.prediction(rcpt)
            assert prediction["reason"] == case.reason, (case, prediction)
            refused = prediction["verdict"] == "reject"
            assert codes[rcpt] == (450 if refused else 250), (case, rcpt, result)
        (deferred if set(codes.values()) == {450} else accepted).append((case, rcpts))
        assert set(codes.values()) in ({450}, {250}), (case, result)
    assert {c.kind for c, _ in deferred} == {"not-allowed", "no-credential", "null"}
    # the accepted recipients reach the stand-in under the login the daemon named, and pass
    for case, rcpts in accepted:
        for rcpt in rcpts:
            relay, status, text = delivery(world.postfix, rcpt, mark)
            assert relay.startswith(f"{SUBMISSION_HOST}[{world.standin.host}]:"), relay
            assert (status, text.split()[0]) == ("sent", "250"), (case, rcpt, text)
            explanation = world.daemon.prediction(rcpt)["explanation"]
            assert f"logs in as {case.login} " in explanation, explanation
        seen = world.standin.find(lambda t, want=rcpts: set(want) <= set(t.replies))
        assert [(t.login, sorted(t.accepted)) for t in seen] == [(case.login, sorted(rcpts))]
    # the deferred ones, let through, are refused by the stand-in with the predicted reply
    world.start_daemon("dunno")
    mark = len(world.postfix.log())
    for case, rcpts in deferred:
        result = world.postfix.send(case.sender, rcpts, subject=f"submission {case.kind} again")
        assert result.queued, (case, result)
    for case, rcpts in deferred:
        for rcpt in rcpts:
            prediction = world.daemon.prediction(rcpt)
            assert (prediction["verdict"], prediction["action"]) == ("reject", "dunno")
            relay, status, text = delivery(world.postfix, rcpt, mark)
            assert relay.startswith(f"{SUBMISSION_HOST}[{world.standin.host}]:"), relay
            assert status == "bounced", (case, rcpt, text)
            reply = text.split(" said: ", 1)[1]
            want, where = (
                (AUTH_REQUIRED, "MAIL FROM")
                if prediction["code"] == "5.7.57"
                else (SEND_AS_DENIED, "RCPT TO")
            )
            assert reply.startswith(want), (case, rcpt, prediction, reply)
            assert reply.endswith(f"(in reply to {where} command)"), reply
            assert prediction["code"] == want.split()[1]
    world.postfix.clear_queue()
