"""The route the daemon computes is the route Postfix really takes (policyd.rules.routing).

One private Postfix with several transports, relays, sender-dependent maps and address classes
delivers one message per (sender, recipient) pair to smtp-sink processes on loopback ports; each
pair is a test case comparing the daemon's (service, next hop) with the service and relay
Postfix logged for that recipient, and the daemon's TLS level for that next hop
(``smtp_tls_policy_maps``, else the service's ``smtp_tls_security_level``) with what Postfix
did: smtp-sink offers no STARTTLS, so Postfix defers exactly where TLS is mandatory.
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

from policyd.rules.routing import client_tls, resolve
from policyd.sources.routes import read_postfix_view
from tests.e2e.postfix import PostfixInstance, free_port, postfix_unavailable

pytestmark = pytest.mark.postfix

SENDMAIL = "/usr/sbin/sendmail"
SMTP_SINK = "/usr/sbin/smtp-sink"
POSTMAP = "/usr/sbin/postmap"
POSTCONF = "/usr/sbin/postconf"

HOPS = (
    "relayhost",
    "fabrikam",
    "boss",
    "null",
    "partner",
    "sub",
    "odd",
    "virtual",
    "adatum",
    "star",
    "lmtp",
    "tls",
    "literal",
)

#: A loopback address Postfix does not count as local (inet_interfaces = loopback-only): a
#: recipient domain [LITERAL] is sent to it, on the ``literal`` service's smtp_tcp_port.
LITERAL = "127.0.0.2"


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
    # `smtp:` without next hop: the recipient domain, bypassing relayhost.
    Pair("a@contoso.com", f"r35@[{LITERAL}]"),
    Pair("helpdesk@fabrikam.example", f"r36@[{LITERAL}]"),
    # lmtp: is delivery to a mailbox store, never relayed.
    Pair("a@contoso.com", "r37@lmtp.example"),
    # TLS per next hop: a policy entry for the exact next hop, a policy that weakens a
    # service's encrypt, a service's encrypt without policy entry.
    Pair("a@contoso.com", "r38@tls.example"),
    Pair("a@contoso.com", "r39@odd.example"),
    Pair("a@contoso.com", "r40@parent.tls.example"),
]

# postfix[/service]/program[pid]: QUEUEID: to=<...>, [orig_to=<...>, ]relay=...,
_DELIVERY = re.compile(
    r"postfix(?:/(?P<service>[\w.-]+))?/(?P<program>[\w.-]+)\[\d+\]: \w+: "
    r"to=<(?P<to>[^>]*)>, (?:orig_to=<[^>]*>, )?relay=(?P<relay>[^,]+),"
    r".*? status=(?P<status>\w+) (?P<text>.*)"
)


@dataclass
class Run:
    """The instance after every pair was delivered, and what its log says per recipient."""

    config_dir: Path
    ports: dict[str, int]
    seen: dict[str, tuple[str, str]]  # final recipient -> (service, relay as logged)
    #: final recipient -> the status text of its first delivery attempt, e.g. "(250 2.0.0 Ok)"
    said: dict[str, str]


def _settle(directory: Path) -> None:
    past = time.time() - 10
    for path in directory.iterdir():
        os.utime(path, (past, past))


def need_postfix_and_sink() -> None:
    """Skip (fail under CI) when a private Postfix or smtp-sink cannot run here."""
    reason = postfix_unavailable()
    if reason or not os.access(SMTP_SINK, os.X_OK):
        if os.environ.get("CI"):
            pytest.fail(reason or "smtp-sink is missing")
        pytest.skip(reason or "smtp-sink is missing")


@pytest.fixture(scope="module")
def run() -> Iterator[Run]:
    """Start the sinks and the instance, send every pair once, read the delivery log."""
    need_postfix_and_sink()
    ports = {hop: free_port() for hop in HOPS}
    sinks = [
        subprocess.Popen(
            [
                SMTP_SINK,
                "-u",
                "nobody",
                *(["-L"] if hop == "lmtp" else []),
                f"{LITERAL if hop == 'literal' else '127.0.0.1'}:{port}",
                "64",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for hop, port in ports.items()
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
            "relay-b unix - - n - - smtp -o syslog_name=postfix/$service_name"
            " -o smtp_tls_security_level=encrypt",
            "relay-c unix - - n - - smtp -o syslog_name=postfix/$service_name",
            "literal unix - - n - - smtp -o syslog_name=postfix/$service_name"
            f" -o smtp_tcp_port={ports['literal']}",
            "tls unix - - n - - smtp -o syslog_name=postfix/$service_name"
            " -o smtp_tls_security_level=encrypt",
        ],
        start=False,
    )
    try:
        etc = instance.config_dir
        # "*" is a wild card only in transport tables: here it is an ordinary key.
        (etc / "sender_relay").write_text(
            f"@fabrikam.example {hop('fabrikam')}\n"
            f"boss@fabrikam.example {hop('boss')}\n"
            f"<> {hop('null')}\n"
            f"* {hop('star')}\n"
        )
        (etc / "sender_transport").write_text(
            f"@tailspin.example relay-b\n@adatum.example relay-c:{hop('adatum')}\n"
            f"* relay-c:{hop('star')}\n"
        )
        (etc / "transport").write_text(
            f"partner.example smtp:{hop('partner')}\n"
            f".sub.example :{hop('sub')}\n"
            f"user@odd.example relay-b:{hop('odd')}\n"
            f"r39@odd.example relay-b:{hop('odd')}\n"
            "drop.example discard:\n"
            "bad.example error:5.1.2 bad destination\n"
            f"[{LITERAL}] literal:\n"
            f"lmtp.example lmtp:{hop('lmtp')}\n"
            f"tls.example smtp:{hop('tls')}\n"
            f"parent.tls.example tls:{hop('tls')}\n"
        )
        # Keys as smtp(8) looks them up: the next hop verbatim ([host]:port); "[127.0.0.1]"
        # without the port and the recipient's parent domain match nothing here.
        (etc / "tls_policy").write_text(
            f"{hop('tls')} encrypt\n"
            f"{hop('odd')} may\n"
            "[127.0.0.1] encrypt\n"
            "127.0.0.1 encrypt\n"
            ".example.net encrypt\n"
            ".tls.example none\n"
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
                "smtp_tls_policy_maps": f"texthash:{etc}/tls_policy",
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
        said: dict[str, str] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not wanted <= seen.keys():
            for match in _DELIVERY.finditer(instance.log()):
                service = match.group("service") or match.group("program")
                seen.setdefault(match.group("to").lower(), (service, match.group("relay")))
                said.setdefault(match.group("to").lower(), match.group("text"))
            time.sleep(0.2)
        yield Run(etc, ports, seen, said)
    finally:
        instance.close()
        for sink in sinks:
            sink.terminate()
            sink.wait(timeout=10)


def _as_logged(nexthop: str, port: int = 25) -> str:
    """How Postfix logs a delivery to a bracketed loopback next hop: 127.0.0.1[127.0.0.1]:P
    (``port`` when the next hop names none: the service's smtp_tcp_port)."""
    match = re.fullmatch(r"\[([\d.]+)\](?::(\d+))?", nexthop)
    if match is None:
        return nexthop
    return f"{match.group(1)}[{match.group(1)}]:{match.group(2) or port}"


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p.sender or '<>'}->{p.recipient}")
def test_route_matches_postfix(run: Run, pair: Pair) -> None:
    """The daemon's route for this pair names the service and relay Postfix used; lmtp(8)
    delivers to its next hop but is never counted as relaying."""
    assert pair.delivered_to in run.seen, f"Postfix logged no delivery to {pair.delivered_to}"
    service, relay = run.seen[pair.delivered_to]
    route = resolve(read_postfix_view(str(run.config_dir)).view, pair.sender, pair.delivered_to)
    assert route.transport == service
    port = run.ports["literal"] if route.transport == "literal" else 25
    if route.relays or route.command == "lmtp":
        assert _as_logged(route.nexthop, port) == relay
    else:
        assert relay in ("local", "none")
    if route.command == "lmtp":
        assert not route.relays


#: Pairs whose TLS level tells the lookup rules apart (see the tls_policy table above).
TLS_PAIRS = [
    pair
    for pair in PAIRS
    if pair.recipient.split("@")[0]
    in ("r1", "r7", "user+t14", "r18", "r32", "r35", "r38", "r39", "r40")
]


@pytest.mark.parametrize("pair", TLS_PAIRS, ids=lambda p: f"{p.sender or '<>'}->{p.recipient}")
def test_tls_level_matches_postfix(run: Run, pair: Pair) -> None:
    """The daemon's TLS level for the route's next hop is mandatory exactly where Postfix
    refused to deliver to smtp-sink (which offers no STARTTLS): policy keys are the next hop
    verbatim, a policy entry beats the service's level, parent domains apply only to plain
    names."""
    view = read_postfix_view(str(run.config_dir)).view
    route = resolve(view, pair.sender, pair.delivered_to)
    assert route.relays
    tls = client_tls(view, route.transport, route.nexthop)
    said = run.said[pair.delivered_to]
    assert tls.mandatory == ("TLS is required" in said), (tls, said)
