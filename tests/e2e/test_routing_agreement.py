"""The route the daemon computes is the route Postfix really takes (policyd.rules.routing).

One private Postfix with several transports, relays, sender-dependent maps and address classes
delivers one message per (sender, recipient) pair to smtp-sink processes on loopback ports; each
pair is a test case comparing the daemon's (service, next hop) with the service and relay
Postfix logged for that recipient.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from policyd.rules.routing import resolve
from policyd.sources.routes import read_postfix_view
from tests.e2e.postfix import PostfixInstance, free_port, postfix_unavailable

pytestmark = pytest.mark.postfix

SENDMAIL = "/usr/sbin/sendmail"
SMTP_SINK = "/usr/sbin/smtp-sink"
POSTMAP = "/usr/sbin/postmap"
POSTCONF = "/usr/sbin/postconf"

HOPS = ("relayhost", "fabrikam", "boss", "null", "partner", "sub", "odd", "virtual", "adatum")


@dataclass(frozen=True)
class Pair:
    """One envelope: ``final`` is the address Postfix delivers to (after alias expansion)."""

    sender: str
    recipient: str
    final: str = ""

    @property
    def delivered_to(self) -> str:
        return self.final or self.recipient


PAIRS = [
    Pair("a@contoso.com", "r1@example.net"),
    Pair("a@contoso.com", "r2@example.org"),
    Pair("helpdesk@fabrikam.example", "r3@example.net"),
    Pair("boss@fabrikam.example", "r4@example.net"),
    Pair("boss+x@fabrikam.example", "r5@example.net"),
    Pair("", "r6@example.net"),
    Pair("a@contoso.com", "r7@partner.example"),
    Pair("helpdesk@fabrikam.example", "r8@partner.example"),
    Pair("", "r9@partner.example"),
    Pair("a@contoso.com", "r10@a.sub.example"),
    Pair("a@contoso.com", "r11@x.y.sub.example"),
    Pair("a@contoso.com", "r12@sub.example"),
    Pair("a@contoso.com", "user@odd.example"),
    Pair("helpdesk@fabrikam.example", "user+t14@odd.example"),
    Pair("a@contoso.com", "other15@odd.example"),
    Pair("a@contoso.com", "r16@drop.example"),
    Pair("a@contoso.com", "r17@bad.example"),
    Pair("a@tailspin.example", "r18@example.net"),
    Pair("a@tailspin.example", "r19@partner.example"),
    Pair("a@adatum.example", "r20@example.net"),
    Pair("a@adatum.example", "r21@partner.example"),
    Pair("a@contoso.com", "r22@relay.example"),
    Pair("helpdesk@fabrikam.example", "r23@relay.example"),
    Pair("a@contoso.com", "r24@sub.relay.example"),
    Pair("a@contoso.com", "nouser25@mta.contoso.com"),
    Pair("a@contoso.com", "nouser26@localhost"),
    Pair("a@contoso.com", "known27@alias.example", final="aliased27@partner.example"),
    Pair("a@contoso.com", "unknown28@alias.example"),
    Pair("a@contoso.com", "r29@vmail.example"),
    Pair("", "r30@vmail.example"),
    Pair("a@adatum.example", "r31@relay.example"),
    Pair("a@tailspin.example", "r32@a.sub.example"),
    Pair("", "r33@relay.example"),
    Pair("boss@fabrikam.example", "r34@a.sub.example"),
]

# postfix[/service]/program[pid]: QUEUEID: to=<...>, [orig_to=<...>, ]relay=...,
_DELIVERY = re.compile(
    r"postfix(?:/(?P<service>[\w.-]+))?/(?P<program>[\w.-]+)\[\d+\]: \w+: "
    r"to=<(?P<to>[^>]*)>, (?:orig_to=<[^>]*>, )?relay=(?P<relay>[^,]+),"
)


@dataclass
class Run:
    """The instance after every pair was delivered, and what its log says per recipient."""

    config_dir: Path
    ports: dict[str, int]
    seen: dict[str, tuple[str, str]]  # final recipient -> (service, relay as logged)


def _settle(directory: Path) -> None:
    past = time.time() - 10
    for path in directory.iterdir():
        os.utime(path, (past, past))


@pytest.fixture(scope="module")
def run() -> Iterator[Run]:
    """Start the sinks and the instance, send every pair once, read the delivery log."""
    reason = postfix_unavailable()
    if reason or not os.access(SMTP_SINK, os.X_OK):
        if os.environ.get("CI"):
            pytest.fail(reason or "smtp-sink is missing")
        pytest.skip(reason or "smtp-sink is missing")
    ports = {hop: free_port() for hop in HOPS}
    sinks = [
        subprocess.Popen(
            [SMTP_SINK, "-u", "nobody", f"127.0.0.1:{port}", "64"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in ports.values()
    ]

    def hop(name: str) -> str:
        return f"[127.0.0.1]:{ports[name]}"

    instance = PostfixInstance.create(
        relayhost=hop("relayhost"),
        settings={
            "mydestination": "$myhostname, localhost",
            "recipient_delimiter": "+",
            "relay_domains": "relay.example",
            "parent_domain_matches_subdomains": "relay_domains",
            "virtual_alias_domains": "alias.example",
            "virtual_mailbox_domains": "vmail.example",
            "virtual_transport": f"relay-c:{hop('virtual')}",
            "smtp_tls_security_level": "none",
        },
        master_extra=[
            "relay-b unix - - n - - smtp -o syslog_name=postfix/$service_name",
            "relay-c unix - - n - - smtp -o syslog_name=postfix/$service_name",
        ],
        start=False,
    )
    try:
        etc = instance.config_dir
        (etc / "sender_relay").write_text(
            f"@fabrikam.example {hop('fabrikam')}\n"
            f"boss@fabrikam.example {hop('boss')}\n"
            f"<> {hop('null')}\n"
        )
        (etc / "sender_transport").write_text(
            f"@tailspin.example relay-b\n@adatum.example relay-c:{hop('adatum')}\n"
        )
        (etc / "transport").write_text(
            f"partner.example smtp:{hop('partner')}\n"
            f".sub.example :{hop('sub')}\n"
            f"user@odd.example relay-b:{hop('odd')}\n"
            "drop.example discard:\n"
            "bad.example error:5.1.2 bad destination\n"
        )
        (etc / "virtual").write_text("known27@alias.example aliased27@partner.example\n")
        subprocess.run([POSTMAP, f"hash:{etc}/transport"], check=True, timeout=30)
        # The relay service logs under its own name, so the log tells it apart from smtp.
        subprocess.run(
            [POSTCONF, "-c", str(etc), "-P", "relay/unix/syslog_name=postfix/$service_name"],
            check=True,
            timeout=30,
        )
        instance.postconf(
            {
                "sender_dependent_relayhost_maps": f"texthash:{etc}/sender_relay",
                "sender_dependent_default_transport_maps": f"texthash:{etc}/sender_transport",
                "transport_maps": f"hash:{etc}/transport",
                "virtual_alias_maps": f"texthash:{etc}/virtual",
            }
        )
        _settle(etc)
        instance.start()
        for pair in PAIRS:
            subprocess.run(
                [SENDMAIL, "-C", str(etc), "-f", pair.sender, "--", pair.recipient],
                input=b"Subject: routing agreement\n\nbody\n",
                check=True,
                timeout=30,
            )
        wanted = {pair.delivered_to for pair in PAIRS}
        seen: dict[str, tuple[str, str]] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not wanted <= seen.keys():
            for match in _DELIVERY.finditer(instance.log()):
                service = match.group("service") or match.group("program")
                seen.setdefault(match.group("to").lower(), (service, match.group("relay")))
            time.sleep(0.2)
        yield Run(etc, ports, seen)
    finally:
        instance.close()
        for sink in sinks:
            sink.terminate()
            sink.wait(timeout=10)


def _as_logged(nexthop: str) -> str:
    """How Postfix logs a delivery to a bracketed loopback next hop: 127.0.0.1[127.0.0.1]:P."""
    match = re.fullmatch(r"\[([\d.]+)\]:(\d+)", nexthop)
    return f"{match.group(1)}[{match.group(1)}]:{match.group(2)}" if match else nexthop


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p.sender or '<>'}->{p.recipient}")
def test_route_matches_postfix(run: Run, pair: Pair) -> None:
    """The daemon's route for this pair names the service and relay Postfix used."""
    assert pair.delivered_to in run.seen, f"Postfix logged no delivery to {pair.delivered_to}"
    service, relay = run.seen[pair.delivered_to]
    route = resolve(read_postfix_view(str(run.config_dir)).view, pair.sender, pair.delivered_to)
    assert route.transport == service
    if route.relays:
        assert _as_logged(route.nexthop) == relay
    else:
        assert relay in ("local", "none")
