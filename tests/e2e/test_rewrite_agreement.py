"""The sender the daemon predicts from is the sender Postfix really queues and sends
(policyd.rules.rewrite), and sender-dependent routes use it as Postfix does.

One private Postfix with sender_canonical_maps, canonical_maps (with an address extension),
masquerade_domains / masquerade_exceptions, sender_dependent_relayhost_maps keyed on rewritten
senders and the null sender, and a master.cf service with its own smtp_generic_maps delivers one
message per pair to smtp-sink processes that dump every transaction. Each pair compares:

* cleanup's sender with the ``from=<…>`` qmgr logged for the message (the queued sender);
* the route (service, relay) with the delivery Postfix logged;
* the service's MAIL FROM with the ``X-Mail-Args`` the sink recorded.

Pairs submitted with sendmail go through pickup (main.cf's settings); pairs sent over SMTP go
through the instance's one smtpd listener, which has ``-o
receive_override_options=no_address_mappings``: cleanup maps nothing for them.
"""

from __future__ import annotations

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

from policyd.rules.rewrite import cleanup_sender, generic_sender
from policyd.rules.routing import resolve
from policyd.sources.routes import read_postfix_view
from tests.e2e.postfix import PostfixInstance, free_port
from tests.e2e.test_routing_agreement import SMTP_SINK, _as_logged, _settle, need_postfix_and_sink

pytestmark = pytest.mark.postfix

SENDMAIL = "/usr/sbin/sendmail"
POSTCONF = "/usr/sbin/postconf"

HOPS = ("relayhost", "app", "null", "generic")


@dataclass(frozen=True)
class Pair:
    """One envelope; ``smtp``: sent over SMTP to the listener instead of with sendmail."""

    sender: str
    recipient: str
    smtp: bool = False


PAIRS = [
    Pair("root@app01.contoso.local", "r1@example.net"),
    Pair("x@app02.eu.contoso.com", "r2@example.net"),
    Pair("keep@app02.eu.contoso.com", "r3@example.net"),
    Pair("ops+alerts@contoso.com", "r4@example.net"),
    Pair("", "r5@example.net"),
    Pair("y@app03.contoso.com", "r6@generic.example"),
    Pair("root@app01.contoso.local", "r7@generic.example"),
    Pair("app@contoso.com", "r8@example.net"),
    Pair("MAILER-DAEMON@contoso.com", "r9@example.net"),
    Pair("root@app01.contoso.local", "r10@example.net", smtp=True),
    Pair("y@app03.contoso.com", "r11@generic.example", smtp=True),
]

_QUEUED = re.compile(r"postfix/qmgr\[\d+\]: (?P<id>\w+): from=<(?P<from>[^>]*)>")
_DELIVERY = re.compile(
    r"postfix(?:/(?P<service>[\w.-]+))?/(?P<program>[\w.-]+)\[\d+\]: (?P<id>\w+): "
    r"to=<(?P<to>[^>]*)>, (?:orig_to=<[^>]*>, )?relay=(?P<relay>[^,]+),"
)


@dataclass
class Delivered:
    """What Postfix and the sink saw for one recipient."""

    queued: str  # from=<…> of the message
    service: str
    relay: str
    mail_from: str  # MAIL FROM as the sink received it


@dataclass
class Run:
    config_dir: Path
    seen: dict[str, Delivered]


def _sink_envelopes(dumps: Path) -> dict[str, str]:
    """Recipient -> MAIL FROM, from smtp-sink's dump files (X-Mail-Args, X-Rcpt-Args)."""
    found: dict[str, str] = {}
    for path in dumps.iterdir():
        text = path.read_text(errors="replace")
        mail = re.search(r"^X-Mail-Args: <([^>]*)>", text, re.MULTILINE)
        for rcpt in re.finditer(r"^X-Rcpt-Args: <([^>]*)>", text, re.MULTILINE):
            if mail:
                found[rcpt.group(1).lower()] = mail.group(1)
    return found


@pytest.fixture(scope="module")
def run() -> Iterator[Run]:
    """Start the sinks and the instance, send every pair once, read the log and the dumps."""
    need_postfix_and_sink()
    dumps = Path(tempfile.mkdtemp(prefix="m365-sink-"))
    os.chmod(dumps, 0o1777)  # smtp-sink writes as nobody
    ports = {hop: free_port() for hop in HOPS}
    sinks = [
        subprocess.Popen(
            [SMTP_SINK, "-u", "nobody", "-d", f"{dumps}/{hop}.", f"127.0.0.1:{port}", "64"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for hop, port in ports.items()
    ]

    def hop(name: str) -> str:
        return f"[127.0.0.1]:{ports[name]}"

    instance = PostfixInstance.create(
        relayhost=hop("relayhost"),
        settings={"recipient_delimiter": "+", "smtp_tls_security_level": "none"},
        master_extra=["relay-g unix - - n - - smtp -o syslog_name=postfix/$service_name"],
        start=False,
    )
    try:
        etc = instance.config_dir
        (etc / "sender_canonical").write_text("/^root@app01\\.contoso\\.local$/ app@contoso.com\n")
        (etc / "canonical").write_text(
            "@app02.eu.contoso.com @app02.contoso.com\nops@contoso.com ops-team@contoso.com\n"
        )
        (etc / "sender_relay").write_text(f"app@contoso.com {hop('app')}\n<> {hop('null')}\n")
        (etc / "transport").write_text(f"generic.example relay-g:{hop('generic')}\n")
        (etc / "generic").write_text("@contoso.com @generic.contoso.com\n")
        listener = f"{instance.host}:{instance.port}/inet"
        for override in (
            f"relay-g/unix/smtp_generic_maps=texthash:{etc}/generic",
            f"{listener}/receive_override_options=no_address_mappings",
        ):
            subprocess.run([POSTCONF, "-c", str(etc), "-P", override], check=True, timeout=30)
        instance.postconf(
            {
                "sender_canonical_maps": f"regexp:{etc}/sender_canonical",
                "canonical_maps": f"texthash:{etc}/canonical",
                "masquerade_domains": "contoso.com",
                "masquerade_exceptions": "keep",
                "sender_dependent_relayhost_maps": f"texthash:{etc}/sender_relay",
                "transport_maps": f"texthash:{etc}/transport",
            }
        )
        _settle(etc)
        instance.start()
        for pair in PAIRS:
            if pair.smtp:
                sent = instance.send(pair.sender, [pair.recipient])
                assert sent.data is not None and sent.data[0] == 250, sent.rcpt
                continue
            subprocess.run(
                [SENDMAIL, "-C", str(etc), "-f", pair.sender, "--", pair.recipient],
                input=b"Subject: rewrite agreement\n\nbody\n",
                check=True,
                timeout=30,
            )
        wanted = {pair.recipient for pair in PAIRS}
        seen: dict[str, Delivered] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not wanted <= seen.keys():
            log = instance.log()
            queued = {m.group("id"): m.group("from") for m in _QUEUED.finditer(log)}
            envelopes = _sink_envelopes(dumps)
            for match in _DELIVERY.finditer(log):
                to = match.group("to").lower()
                if to in envelopes and match.group("id") in queued:
                    seen[to] = Delivered(
                        queued[match.group("id")],
                        match.group("service") or match.group("program"),
                        match.group("relay"),
                        envelopes[to],
                    )
            time.sleep(0.2)
        yield Run(etc, seen)
    finally:
        instance.close()
        for sink in sinks:
            sink.terminate()
            sink.wait(timeout=10)
        shutil.rmtree(dumps, ignore_errors=True)


@pytest.mark.parametrize(
    "pair", PAIRS, ids=lambda p: f"{p.sender or '<>'}->{p.recipient}{' (smtp)' if p.smtp else ''}"
)
def test_sender_and_route_match_postfix(run: Run, pair: Pair) -> None:
    """The queued sender, the route chosen with it and the MAIL FROM the delivering service
    writes are the ones Postfix logged and the sink received."""
    assert pair.recipient in run.seen, f"no delivery of {pair.recipient} was seen"
    delivered = run.seen[pair.recipient]
    loaded = read_postfix_view(str(run.config_dir))
    view = loaded.view
    assert loaded.listener is not None
    assert loaded.listener.overrides == {"receive_override_options": "no_address_mappings"}
    # sendmail goes through pickup, which has main.cf's receive_override_options
    queued = cleanup_sender(view, pair.sender, loaded.listener if pair.smtp else None)
    assert queued.after == delivered.queued
    route = resolve(view, queued.after, pair.recipient)
    assert (route.transport, _as_logged(route.nexthop)) == (delivered.service, delivered.relay)
    assert generic_sender(view, route.transport, queued.after).after == delivered.mail_from
