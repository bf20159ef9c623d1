"""The outcome watcher (SPEC §8): Postfix log lines parsed, joined with predictions, followed.

Fixtures in ``tests/data/maillog/`` (see its README): ``e2e-standin.log`` is a real mail log of
the end-to-end harness's private Postfix delivering to the Microsoft 365 stand-in;
``kinds.log`` is another, with one recipient per observed kind and Postfix's own failures;
``microsoft-365.log`` holds delivery lines as Postfix writes them for Exchange Online's replies
under several log prefixes; ``garbled.log`` holds damaged delivery lines.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import task
from twisted.python.failure import Failure

from policyd.daemon.followers import JOURNALCTL_ARGS, FileFollower, JournalFollower, OutcomeWatcher
from policyd.engine.outcomes import DEFAULT_RELAY_HOSTS, OutcomeJoin
from policyd.engine.stats import Stats
from policyd.errors import ConfigError
from policyd.rules.endpoints import RELAY_HOST_GLOBS
from policyd.rules.outcomes import (
    OBSERVED_KINDS,
    UNPARSEABLE,
    Delivery,
    classify_reply,
    microsoft_reply,
    observed_kind,
    parse_delivery,
    relay_matcher,
)
from policyd.sources.config import load_config
from tests import needs
from tests.tenants import ip_tenant_toml

DATA = Path(__file__).parent / "data" / "maillog"
MX = "contoso-com.mail.protection.outlook.com"


def lines(name: str) -> list[str]:
    """The lines of a fixture log, decoded as the follower decodes them."""
    return (DATA / name).read_bytes().decode("utf-8", "replace").splitlines()


def deliveries(name: str) -> list[Delivery]:
    """Every delivery line of a fixture log, parsed."""
    found = []
    for line in lines(name):
        parsed = parse_delivery(line)
        if isinstance(parsed, Delivery):
            found.append(parsed)
    return found


#: Delivery details as Postfix writes them for Microsoft 365's replies.
SENT = "250 2.6.0 <4F1A2B3C@mx1.contoso.com> [InternalId=1, Hostname=AM0PR04MB1.eurprd04.prod.outlook.com] Queued mail for delivery"  # noqa: E501
TENANT_ATTRIBUTION = (
    f"host {MX}[52.101.68.10] said: 550 5.7.64 TenantAttribution; Relay Access Denied "
    "[AM0PEPF00000001.eurprd04.prod.outlook.com] (in reply to RCPT TO command)"
)
ATTR36_SAID = (
    f"host {MX}[52.101.68.10] said: 550 5.7.64 Relay Access Denied ATTR36 "
    "[AM0PEPF00000002.eurprd04.prod.outlook.com] (in reply to RCPT TO command)"
)


def smtp_line(
    queue_id: str,
    to: str,
    dsn: str,
    status: str = "bounced",
    *,
    orig_to: str = "",
    relay: str = f"{MX}[52.101.68.10]:25",
    reply: str = "",
) -> str:
    """A Postfix smtp(8) delivery line in syslog form; the detail defaults to Microsoft's 250
    reply for a 2.x.x code and to 5.7.64 TenantAttribution otherwise."""
    reply = reply or (SENT if dsn.startswith("2.") else TENANT_ATTRIBUTION)
    orig = f", orig_to=<{orig_to}>" if orig_to else ""
    return (
        f"Nov 27 10:00:02 mx1 postfix/smtp[4711]: {queue_id}: to=<{to}>{orig}, relay={relay}, "
        f"delay=1.4, delays=0.05/0.01/0.62/0.72, dsn={dsn}, status={status} ({reply})"
    )


# --- parsing ---------------------------------------------------------------------------------


def test_real_postfix_delivery_lines_from_the_e2e_harness_all_parse() -> None:
    """Every smtp(8) delivery line Postfix wrote in the e2e harness parses; nothing is skipped."""
    delivery_lines = [
        line for line in lines("e2e-standin.log") if "postfix/smtp[" in line and ", status=" in line
    ]
    parsed = [parse_delivery(line) for line in delivery_lines]
    assert len(parsed) >= 15
    assert UNPARSEABLE not in parsed
    assert all(isinstance(p, Delivery) and p.service == "postfix/smtp" for p in parsed)
    assert {p.dsn for p in parsed if isinstance(p, Delivery)} == {
        "2.6.0",
        "5.7.64",
        "4.4.62",
        "5.7.750",
    }


def test_real_postfix_lines_keep_recipient_orig_to_relay_and_code() -> None:
    """A forwarded bounce from the e2e log yields to=, orig_to=, the relay address and 5.7.64."""
    forwarded = [d for d in deliveries("e2e-standin.log") if d.orig_to == "kate@contoso.com"]
    assert len(forwarded) == 1
    delivery = forwarded[0]
    assert delivery.to == "kate.private@example.net"
    assert (delivery.relay_host, delivery.relay_address) == ("127.0.0.1", "127.0.0.1")
    assert (delivery.dsn, delivery.status) == ("5.7.64", "bounced")
    assert len(delivery.queue_id) == 11


def test_real_postfix_lines_show_both_5764_texts_and_the_retried_4462() -> None:
    """The e2e log has 5.7.64 with TenantAttribution and with ATTR36, and a 4.4.62 retried."""
    raw = [line for line in lines("e2e-standin.log") if "dsn=5.7.64" in line]
    assert any("TenantAttribution; Relay Access Denied" in line for line in raw)
    assert any("Relay Access Denied ATTR36" in line for line in raw)
    region = [d for d in deliveries("e2e-standin.log") if d.dsn == "4.4.62"]
    assert len(region) >= 2
    assert {d.status for d in region} == {"deferred"}
    assert len({d.queue_id for d in region}) == 1


def test_other_postfix_lines_of_the_e2e_log_are_not_delivery_lines() -> None:
    """smtpd, cleanup, qmgr (status=expired too), master, TLS and bounce lines are ignored."""
    others = [
        line
        for line in lines("e2e-standin.log")
        if "postfix/smtp[" not in line or ", status=" not in line
    ]
    assert any("status=expired" in line for line in others)
    assert len(others) > 50
    assert {parse_delivery(line) for line in others} == {None}


def test_microsoft_365_fixture_lines_parse_as_expected() -> None:
    """Each delivery line of the Exchange Online fixture gives its queue ID, recipients, relay,
    code and status, whatever the prefix (syslog, journalctl ISO, RFC 3339, instance names)."""
    got = [
        (d.service, d.queue_id, d.to, d.orig_to, d.relay_host, d.relay_address, d.dsn, d.status)
        for d in deliveries("microsoft-365.log")
    ]
    assert got == [
        ("postfix/smtp", "4F1A2B3C01", "kate@tailspintoys.com", "", MX, "52.101.68.10",
         "2.6.0", "sent"),
        ("postfix/smtp", "4F1A2B3C02", "kate@tailspintoys.com", "", MX, "52.101.68.10",
         "5.7.64", "bounced"),
        ("postfix/smtp", "4F1A2B3C03", "kate.private@example.net", "kate@contoso.com", MX,
         "52.101.68.10", "5.7.64", "bounced"),
        ("postfix/smtp", "4F1A2B3C04", "Ann@Fabrikam.COM", "", MX, "2a01:111:f403:c201::3",
         "4.4.62", "deferred"),
        ("postfix-out/smtp", "4dBvXq1Ssqz9tB7", "bob@tailspintoys.com", "", MX, "52.101.68.11",
         "5.7.750", "bounced"),
        ("postfix/lmtp", "4F1A2B3C05", "bob@lab.contoso.net", "", "mail.lab.contoso.net",
         "private/dovecot-lmtp", "2.0.0", "sent"),
        ("postfix/local", "4F1A2B3C06", "root@mx1.contoso.com", "root", "local", "", "2.0.0",
         "sent"),
        ("postfix/smtp", "4F1A2B3C07", "john@fabrikam.com", "", "none", "", "4.4.1", "deferred"),
        ("postfix/smtp", "4F1A2B3C08", "probe@tailspintoys.com", "", MX, "52.101.68.10",
         "2.1.5", "deliverable"),
        ("postfix/smtp", "4F1A2B3C0B", "eve@example.org", "", "mx.example.org", "192.0.2.25",
         "2.0.0", "sent"),
        ("postfix/relay/smtp", "4F1A2B3C0C", "carol@tailspintoys.com", "",
         "CONTOSO-COM.MAIL.PROTECTION.OUTLOOK.COM.", "52.101.68.12", "2.6.0", "sent"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    "prefix",
    [
        "Nov 27 10:00:02 mx1 postfix/smtp[4711]: ",
        "Nov  7 10:00:02 mx1 postfix/smtp[4711]: ",
        "2026-11-27T10:00:02+0000 mx1 postfix/smtp[4711]: ",
        "2026-11-27T10:00:02.123456+01:00 mx1 postfix/smtp[4711]: ",
        "<22>1 2026-11-27T10:00:02Z mx1 postfix/smtp[4711]: ",
    ],
)
def test_syslog_iso_and_journalctl_prefixes_parse_alike(prefix: str) -> None:
    """The same delivery text parses identically under each log prefix."""
    body = smtp_line("4F1A2B3C02", "kate@tailspintoys.com", "5.7.64").split(": ", 1)[1]
    parsed = parse_delivery(prefix + body)
    assert isinstance(parsed, Delivery)
    assert (parsed.queue_id, parsed.to, parsed.dsn, parsed.relay_host) == (
        "4F1A2B3C02",
        "kate@tailspintoys.com",
        "5.7.64",
        MX,
    )


def test_garbled_delivery_lines_are_unparseable_and_others_ignored() -> None:
    """Truncated or damaged delivery lines are UNPARSEABLE; lines without the delivery start and
    blank lines are None; an intact line among them still parses."""
    results = [parse_delivery(line) for line in lines("garbled.log")]
    assert results[:6] == [UNPARSEABLE] * 6
    assert isinstance(results[6], Delivery) and results[6].queue_id == "4F1A2B3C17"
    assert results[7] is None  # empty line
    assert results[8] is UNPARSEABLE  # dsn=9.9.9 is no status code
    assert results[9:] == [None, None, None]


def test_relay_matcher_uses_host_and_address_globs_case_insensitively() -> None:
    """Microsoft 365's relays match the default glob (any case, trailing dot); an address glob
    matches the bracketed address; other relays, none and local do not match."""
    default = relay_matcher(DEFAULT_RELAY_HOSTS)
    by_address = relay_matcher(["127.0.0.1", "2a01:111:*"])
    found = {d.queue_id: d for d in deliveries("microsoft-365.log")}
    assert default(found["4F1A2B3C01"]) and default(found["4F1A2B3C0C"])
    assert not default(found["4F1A2B3C0B"])  # mx.example.org
    assert not default(found["4F1A2B3C07"])  # relay=none
    assert not default(found["4F1A2B3C06"])  # relay=local
    assert by_address(found["4F1A2B3C04"])  # IPv6 address glob
    assert not by_address(found["4F1A2B3C01"])
    assert by_address(deliveries("e2e-standin.log")[0])
    assert DEFAULT_RELAY_HOSTS == RELAY_HOST_GLOBS


@pytest.mark.parametrize(
    ("relay", "counted"),
    [
        ("contoso-com.mail.protection.outlook.com[52.101.68.10]:25", True),
        ("contoso-com.a-v1.mx.microsoft[52.101.68.11]:25", True),
        ("contoso-com.mail.protection.office365.us[52.127.1.1]:25", True),
        ("contoso-com.mail.protection.partner.outlook.cn[42.159.1.1]:25", True),
        ("mail.messaging.microsoft.com[40.107.1.1]:25", True),
        ("mx.example.org[192.0.2.25]:25", False),
    ],
)
def test_default_relays_are_every_microsoft_365_endpoint(relay: str, counted: bool) -> None:
    """The watcher counts replies from every Microsoft 365 endpoint the routing knows (the
    new mx.microsoft hosts, sovereign clouds, retired smart hosts), and nothing else."""
    line = (
        "2026-11-27T10:00:00.000000+00:00 mta postfix/smtp[4242]: 4F1A2B3C99: "
        f"to=<kate@example.net>, relay={relay}, delay=0.2, delays=0.1/0/0.05/0.05, "
        "dsn=2.6.0, status=sent (250 2.6.0 Queued mail for delivery)"
    )
    stats = Stats()
    join = OutcomeJoin(stats)
    join.feed(line, 0.0)
    assert (stats.observed_replies[("2.6.0", "accepted")] == 1) is counted


# --- observed kinds (SPEC §8) ----------------------------------------------------------------

#: The kind each recipient of kinds.log stands for; None: Postfix's own failure, no reply.
KIND_OF: dict[str, str | None] = {
    "accepted@tailspintoys.com": "accepted",
    "noconnector@tailspintoys.com": "no-connector",
    "attr36@tailspintoys.com": "attr36",
    "directsend@contoso.com": "direct-send",
    "partner@contoso.com": "partner-restricted",
    "region@tailspintoys.com": "wrong-region",
    "unreg@tailspintoys.com": "unregistered-domain",
    "tls@tailspintoys.com": "tls",
    "other@tailspintoys.com": "other",
    "own@down.example": None,  # relay=none: connection refused
    "own@drop.example": None,  # lost connection while receiving the initial greeting
    "own@notls.example": None,  # "TLS is required, but was not offered"
}


def test_real_postfix_lines_classify_into_every_observed_kind() -> None:
    """Every delivery line a real Postfix wrote for the stand-in's (and scripted) replies is
    classified by its text into the kind its recipient stands for; the lines of Postfix's own
    failures hold no reply of Microsoft's; together they cover every observed kind."""
    seen: set[str] = set()
    for delivery in deliveries("kinds.log"):
        assert delivery.service == "postfix/smtp"
        if delivery.to in KIND_OF:
            assert observed_kind(delivery) == KIND_OF[delivery.to], delivery
            seen.add(delivery.to)
        else:  # Postfix's bounces to the senders: replies of the stand-in too
            assert observed_kind(delivery) in OBSERVED_KINDS, delivery
    assert seen == set(KIND_OF)
    # kinds.log was captured before the SMTP AUTH kinds existed: those four are classified from
    # Microsoft's reply texts in tests/test_submission.py::test_submission_replies_classify.
    submission = {"auth-required", "send-as-denied", "basic-auth-disabled", "auth-failed"}
    assert {kind for kind in KIND_OF.values() if kind} == set(OBSERVED_KINDS) - submission


def test_the_reply_is_what_the_server_said() -> None:
    """The reply is the server's text after "said:", without Postfix's "(in reply to ...)"; a
    delivered message's reply is Postfix's quote of the final 250."""
    found = {d.to: d for d in deliveries("kinds.log")}
    assert microsoft_reply(found["partner@contoso.com"]) == (
        "550 5.7.51 TenantInboundAttribution; There is a partner connector configured that "
        "matched the message's recipient domain. The connector had either the "
        "RestrictDomainsToIPAddresses or RestrictDomainsToCertificate set [partner@contoso.com]"
    )
    assert microsoft_reply(found["accepted@tailspintoys.com"]) == (
        "250 2.6.0 Queued mail for delivery"
    )
    assert microsoft_reply(found["own@down.example"]) is None


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        ("250 2.6.0 <id@host> [InternalId=1] Queued mail for delivery", "accepted"),
        ("550 5.7.64 TenantAttribution; Relay Access Denied [AM0PEPF1.prod.outlook.com]",
         "no-connector"),
        ("550 5.7.64 Relay Access Denied ATTR36 [AM0PEPF2.prod.outlook.com]", "attr36"),
        ("550 5.7.64 Relay Access Denied", "other"),  # neither word: not guessed
        ("550 5.7.68 TenantInboundAttribution; Direct Send not allowed", "direct-send"),
        ("550 5.7.51 TenantInboundAttribution; Rejecting", "partner-restricted"),
        ("451 4.4.62 Mail sent to the wrong Office 365 region. ATTR35.", "wrong-region"),
        ("550 5.7.750 Service unavailable. Client blocked from sending from unregistered domains",
         "unregistered-domain"),
        ("454 4.7.0 Failed to establish appropriate TLS channel: Access Denied", "tls"),
        ("454 4.7.0 Temporary authentication failure: ATTR41: CertificateExpired", "tls"),
        ("451 4.7.0 Temporary server error. Please try again later", "other"),
        ("421 4.3.2 Service not available", "other"),
        ("550 5.7.708 Service unavailable. Access denied, traffic not accepted from this IP",
         "other"),
    ],
)  # fmt: skip
def test_reply_texts_classify_by_their_words(reply: str, kind: str) -> None:
    """Each of Microsoft's reply texts gives its kind; codes and words decide, not the status."""
    assert classify_reply(reply) == kind


def test_the_join_counts_no_failure_of_postfix_and_agrees_by_kind() -> None:
    """Fed the real kinds log with agreeing predictions for three messages, the join counts
    them as agreements, and the lines of Postfix's own failures count nowhere."""
    stats = Stats()
    join = OutcomeJoin(stats, ["127.0.0.1"])
    found = {d.to: d for d in deliveries("kinds.log")}
    for to, reason in (
        ("accepted@tailspintoys.com", "sender-accepted-domain"),
        ("partner@contoso.com", "partner-restricted"),
        ("directsend@contoso.com", "direct-send-rejected"),
        ("own@drop.example", "sender-accepted-domain"),
    ):
        join.expect(found[to].queue_id, [(to, to, reason)], 0)
    feed_all(join, "kinds.log", now=1)
    assert dict(stats.prediction_outcomes) == {
        ("default", "accepted", "accepted"): 1,
        ("default", "partner-restricted", "partner-restricted"): 1,
        ("default", "direct-send", "direct-send"): 1,
    }
    codes = {code for code, _ in stats.observed_replies}
    assert codes.isdisjoint({"4.4.1", "4.4.2", "4.7.4"})
    assert stats.observed_replies[("5.7.51", "partner-restricted")] >= 1
    assert stats.log_lines_skipped == 0


# --- counting and the join -------------------------------------------------------------------


def feed_all(join: OutcomeJoin, name: str, now: float = 0.0) -> None:
    for line in lines(name):
        join.feed(line, now)


def test_replies_from_microsoft_365_are_counted_by_code_and_kind() -> None:
    """Only sent/deferred/bounced attempts to Microsoft 365 relays count, by their dsn code and
    the kind their text says (the two 5.7.64 texts apart): not the probe, not relay=none, not
    other relays, not local or LMTP delivery."""
    stats = Stats()
    feed_all(OutcomeJoin(stats), "microsoft-365.log")
    assert dict(stats.observed_replies) == {
        ("2.6.0", "accepted"): 2,
        ("5.7.64", "no-connector"): 1,
        ("5.7.64", "attr36"): 1,
        ("4.4.62", "wrong-region"): 1,
        ("5.7.750", "unregistered-domain"): 1,
    }
    assert stats.log_lines_skipped == 0
    assert dict(stats.prediction_outcomes) == {}


def test_garbled_delivery_lines_are_counted_as_skipped() -> None:
    """Each damaged delivery line adds one to log_lines_skipped; the intact one is observed."""
    stats = Stats()
    feed_all(OutcomeJoin(stats), "garbled.log")
    assert stats.log_lines_skipped == 7
    assert dict(stats.observed_replies) == {("2.6.0", "accepted"): 1}


def test_join_by_queue_id_and_final_address() -> None:
    """A delivery whose queue ID and to= match a prediction counts (predicted, observed) kinds."""
    stats = Stats()
    join = OutcomeJoin(stats)
    join.expect(
        "4F1A2B3C02", [("kate@tailspintoys.com", "kate@tailspintoys.com", "no-connector")], 0
    )
    join.feed(smtp_line("4F1A2B3C02", "kate@tailspintoys.com", "5.7.64"), 1)
    assert dict(stats.prediction_outcomes) == {("default", "no-connector", "no-connector"): 1}


@pytest.mark.parametrize(
    ("reason", "reply", "outcome"),
    [
        ("no-connector", ATTR36_SAID, ("no-connector", "attr36")),
        ("sender-not-accepted", TENANT_ATTRIBUTION, ("attr36", "no-connector")),
        ("forwarded", ATTR36_SAID, ("attr36", "attr36")),
        ("null-sender", ATTR36_SAID, ("attr36", "attr36")),
    ],
)
def test_a_refusal_predicted_for_the_wrong_reason_is_a_disagreement(
    reason: str, reply: str, outcome: tuple[str, str]
) -> None:
    """5.7.64 TenantAttribution and 5.7.64 ATTR36 are different kinds: a no-connector
    prediction answered with ATTR36 (or the reverse) joins as a disagreement, not as 5.7.64."""
    stats = Stats()
    join = OutcomeJoin(stats)
    join.expect("4F1A2B3C02", [("kate@tailspintoys.com", "kate@tailspintoys.com", reason)], 0)
    join.feed(smtp_line("4F1A2B3C02", "kate@tailspintoys.com", "5.7.64", reply=reply), 1)
    assert dict(stats.prediction_outcomes) == {("default", *outcome): 1}


def test_postfix_own_failures_are_not_microsoft_replies() -> None:
    """relay=none, a lost connection, a timeout and Postfix's own TLS failures to a Microsoft 365
    relay are counted nowhere, not even for a predicted message; a 421 greeting is a reply."""
    stats = Stats()
    join = OutcomeJoin(stats)
    join.expect("4F1A2B3C02", [("kate@tailspintoys.com", "", "sender-accepted-domain")], 0)
    own = [
        ("4.4.1", "none", "connect to contoso-com.mail.protection.outlook.com[52.101.68.10]:25: "
         "Connection timed out"),
        ("4.4.2", f"{MX}[52.101.68.10]:25", f"lost connection with {MX}[52.101.68.10] while "
         "receiving the initial server greeting"),
        ("4.4.2", f"{MX}[52.101.68.10]:25", f"conversation with {MX}[52.101.68.10] timed out "
         "while sending RCPT TO"),
        ("4.7.5", f"{MX}[52.101.68.10]:25", "Cannot start TLS: handshake failure"),
        ("4.7.4", f"{MX}[52.101.68.10]:25", f"TLS is required, but was not offered by host {MX}"
         "[52.101.68.10]"),
    ]  # fmt: skip
    for dsn, relay, detail in own:
        join.feed(smtp_line("4F1A2B3C02", "kate@tailspintoys.com", dsn, "deferred",
                            relay=relay, reply=detail), 1)  # fmt: skip
    assert dict(stats.observed_replies) == {}
    assert dict(stats.prediction_outcomes) == {}
    greeting = f"host {MX}[52.101.68.10] refused to talk to me: 421 4.3.2 Service not available"
    join.feed(smtp_line("4F1A2B3C02", "kate@tailspintoys.com", "4.3.2", "deferred",
                        reply=greeting), 1)  # fmt: skip
    assert dict(stats.prediction_outcomes) == {("default", "accepted", "other"): 1}


def test_join_by_orig_to_when_the_final_address_differs() -> None:
    """A delivery whose to= is unknown but whose orig_to= is a predicted recipient joins by it."""
    stats = Stats()
    join = OutcomeJoin(stats)
    join.expect("4F1A2B3C03", [("kate.old@example.net", "kate@contoso.com", "forwarded")], 0)
    join.feed(
        smtp_line(
            "4F1A2B3C03",
            "kate.private@example.net",
            "5.7.64",
            orig_to="kate@contoso.com",
            reply=ATTR36_SAID,
        ),
        1,
    )
    assert dict(stats.prediction_outcomes) == {("default", "attr36", "attr36"): 1}


def test_original_recipient_is_refused_when_any_final_address_is() -> None:
    """An original recipient expanding to one accepted and two refused addresses joins with the
    kind of the first refused one."""
    stats = Stats()
    join = OutcomeJoin(stats)
    join.expect(
        "4F1A2B3C0D",
        [("ann@fabrikam.com", "sales@contoso.com", "sender-accepted-domain"),
         ("bob@tailspintoys.com", "sales@contoso.com", "no-connector"),
         ("eve@tailspintoys.com", "sales@contoso.com", "forwarded")],
        0,
    )  # fmt: skip
    join.feed(smtp_line("4F1A2B3C0D", "ann@fabrikam.com", "2.6.0", "sent"), 1)
    join.feed(smtp_line("4F1A2B3C0D", "x@y.example", "5.7.64", orig_to="SALES@contoso.com"), 1)
    assert dict(stats.prediction_outcomes) == {
        ("default", "accepted", "accepted"): 1,
        ("default", "no-connector", "no-connector"): 1,
    }


def test_join_ignores_case_of_addresses() -> None:
    """Addresses match whatever their case in the prediction and in the log."""
    stats = Stats()
    join = OutcomeJoin(stats)
    join.expect(
        "4F1A2B3C04", [("ann@fabrikam.com", "ANN@fabrikam.com", "certificate-connector")], 0
    )
    feed_all(join, "microsoft-365.log", now=1)
    assert dict(stats.prediction_outcomes) == {("default", "accepted", "wrong-region"): 1}


def test_unknown_queue_id_is_observed_but_not_joined() -> None:
    """A reply for a queue ID without predictions counts as observed only."""
    stats = Stats()
    join = OutcomeJoin(stats)
    join.expect(
        "4F1A2B3C99", [("kate@tailspintoys.com", "kate@tailspintoys.com", "no-connector")], 0
    )
    join.feed(smtp_line("4F1A2B3C02", "kate@tailspintoys.com", "5.7.64"), 1)
    assert dict(stats.observed_replies) == {("5.7.64", "no-connector"): 1}
    assert dict(stats.prediction_outcomes) == {}


def test_each_delivery_attempt_counts_once() -> None:
    """A recipient deferred with 4.4.62 and then delivered counts wrong-region, then accepted."""
    stats = Stats()
    join = OutcomeJoin(stats)
    join.expect("4F1A2B3C04", [("ann@fabrikam.com", "ann@fabrikam.com", "srs-rewritten")], 0)
    region = (
        f"host {MX}[52.101.68.10] said: 451 4.4.62 Mail sent to the wrong Office 365 region. "
        "ATTR35. (in reply to RCPT TO command)"
    )
    join.feed(smtp_line("4F1A2B3C04", "ann@fabrikam.com", "4.4.62", "deferred", reply=region), 1)
    join.feed(smtp_line("4F1A2B3C04", "ann@fabrikam.com", "2.6.0", "sent"), 600)
    assert dict(stats.prediction_outcomes) == {
        ("default", "accepted", "wrong-region"): 1,
        ("default", "accepted", "accepted"): 1,
    }


def test_other_relays_do_not_count_even_for_a_predicted_message() -> None:
    """A delivery of a predicted message to a relay that is not Microsoft 365 counts nothing."""
    stats = Stats()
    join = OutcomeJoin(stats)
    join.expect(
        "4F1A2B3C02", [("kate@tailspintoys.com", "kate@tailspintoys.com", "no-connector")], 0
    )
    join.feed(smtp_line("4F1A2B3C02", "kate@tailspintoys.com", "2.0.0", "sent",
                        relay="mx.example.org[192.0.2.25]:25"), 1)  # fmt: skip
    assert dict(stats.observed_replies) == {}
    assert dict(stats.prediction_outcomes) == {}
    join.relay_hosts = ["mx.example.org"]
    join.feed(smtp_line("4F1A2B3C02", "kate@tailspintoys.com", "2.0.0", "sent",
                        relay="mx.example.org[192.0.2.25]:25"), 1)  # fmt: skip
    assert dict(stats.prediction_outcomes) == {("default", "no-connector", "accepted"): 1}


def test_join_state_is_bounded_in_size_dropping_the_oldest_message() -> None:
    """Beyond max_entries addresses the oldest messages are forgotten first."""
    stats = Stats()
    join = OutcomeJoin(stats, max_entries=5)
    for n in range(4):
        join.expect(f"QID{n}", [(f"a{n}@example.net", f"a{n}@example.net", "local")], n)
    assert len(join) <= 5
    assert join.messages() == 2  # each message holds its final address and its recipient
    join.feed(smtp_line("QID0", "a0@example.net", "2.6.0", "sent"), 10)
    join.feed(smtp_line("QID3", "a3@example.net", "2.6.0", "sent"), 10)
    assert dict(stats.prediction_outcomes) == {("default", "accepted", "accepted"): 1}


def test_join_state_is_bounded_in_age_on_the_injected_clock() -> None:
    """Predictions older than max_age are forgotten; younger ones still join."""
    stats = Stats()
    join = OutcomeJoin(stats, max_age=100)
    join.expect("OLD", [("a@example.net", "a@example.net", "no-connector")], 0)
    join.expect("NEW", [("b@example.net", "b@example.net", "no-connector")], 50)
    join.feed(smtp_line("OLD", "a@example.net", "5.7.64"), 120)
    join.feed(smtp_line("NEW", "b@example.net", "5.7.64"), 120)
    assert dict(stats.prediction_outcomes) == {("default", "no-connector", "no-connector"): 1}
    assert join.messages() == 1
    join.prune(151)
    assert (join.messages(), len(join)) == (0, 0)


def test_expecting_the_same_queue_id_again_merges_and_refreshes_it() -> None:
    """A second hand-over for one queue ID adds its addresses and counts as the newest."""
    stats = Stats()
    join = OutcomeJoin(stats, max_entries=4)
    accept = "sender-accepted-domain"
    join.expect("A", [("a@example.net", "", accept)], 0)
    join.expect("B", [("b@example.net", "", accept)], 1)
    join.expect("A", [("c@example.net", "", "no-connector")], 2)
    join.expect("C", [("d@example.net", "", accept), ("e@example.net", "", accept)], 3)
    assert join.messages() == 2  # B, the oldest, went
    join.feed(smtp_line("A", "a@example.net", "2.6.0", "sent"), 4)
    join.feed(smtp_line("A", "c@example.net", "5.7.64"), 4)
    join.feed(smtp_line("B", "b@example.net", "2.6.0", "sent"), 4)
    assert dict(stats.prediction_outcomes) == {
        ("default", "accepted", "accepted"): 1,
        ("default", "no-connector", "no-connector"): 1,
    }


def test_e2e_log_joined_with_the_predictions_for_its_messages() -> None:
    """Fed the real e2e log with predictions for four of its messages (relay 127.0.0.1), each
    joins with what the stand-in answered, the forwarded one through its final address."""
    stats = Stats()
    join = OutcomeJoin(stats, ["127.0.0.1"])
    external = "kate.external@tailspintoys.com"
    join.expect("D0A2720C6C2", [(external, external, "sender-accepted-domain")], 0)
    join.expect("D1FCD20C379", [(external, external, "sender-not-accepted")], 0)
    join.expect("D2BD420C6D2", [("kate.private@example.net", "kate@contoso.com", "forwarded")], 0)
    join.expect(
        "D6D1F20C712",
        [("region1@tailspintoys.com", "region1@tailspintoys.com", "sender-accepted-domain")],
        0,
    )
    feed_all(join, "e2e-standin.log", now=10)
    assert dict(stats.prediction_outcomes) == {
        ("default", "accepted", "accepted"): 1,
        ("default", "attr36", "attr36"): 2,
        ("default", "accepted", "wrong-region"): 4,
    }
    assert stats.observed_replies[("5.7.750", "unregistered-domain")] == 1
    assert stats.observed_replies[("5.7.64", "no-connector")] == 1
    assert stats.log_lines_skipped == 0


# --- following a file ------------------------------------------------------------------------


class Collect:
    """The follower's line callback, recording."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)


def append(path: Path, text: str | bytes) -> None:
    with open(path, "ab") as handle:
        handle.write(text.encode() if isinstance(text, str) else text)


def test_follower_starts_at_the_end_and_reads_appended_lines(tmp_path: Path) -> None:
    """History present at start is not replayed; lines appended later are read in order."""
    log = tmp_path / "mail.log"
    log.write_text("old line 1\nold line 2\n")
    seen = Collect()
    follower = FileFollower(str(log), seen)
    follower.start()
    follower.poll()
    assert seen.lines == []
    append(log, "new 1\nnew 2\n")
    follower.poll()
    append(log, "new 3\n")
    follower.poll()
    follower.poll()
    assert seen.lines == ["new 1", "new 2", "new 3"]


def test_follower_waits_for_the_end_of_a_partial_line(tmp_path: Path) -> None:
    """A line written in two pieces is handed on once, whole, when its newline arrives."""
    log = tmp_path / "mail.log"
    log.write_text("")
    seen = Collect()
    follower = FileFollower(str(log), seen)
    follower.start()
    append(log, "first half, ")
    follower.poll()
    assert seen.lines == []
    append(log, "second half\r\nnext")
    follower.poll()
    assert seen.lines == ["first half, second half"]


def test_follower_started_mid_line_skips_the_fragment(tmp_path: Path) -> None:
    """Started while the last line is incomplete, the follower skips the rest of that line."""
    log = tmp_path / "mail.log"
    log.write_text("complete\nhalf of a li")
    seen = Collect()
    follower = FileFollower(str(log), seen)
    follower.start()
    append(log, "ne\nwhole\n")
    follower.poll()
    assert seen.lines == ["whole"]


def test_follower_reads_across_rotation(tmp_path: Path) -> None:
    """After rename + new file: the rest of the old file, then the new one from its start."""
    log = tmp_path / "mail.log"
    log.write_text("")
    seen = Collect()
    follower = FileFollower(str(log), seen)
    follower.start()
    append(log, "before rotation\n")
    follower.poll()
    os.rename(log, tmp_path / "mail.log.1")
    append(tmp_path / "mail.log.1", "late line in the old file\n")
    follower.poll()  # the new file does not exist yet: keep reading the old one
    append(tmp_path / "mail.log.1", "another late line\nunfinished")
    log.write_text("first in the new file\n")
    follower.poll()
    append(log, "second in the new file\n")
    follower.poll()
    assert seen.lines == [
        "before rotation",
        "late line in the old file",
        "another late line",
        "unfinished",
        "first in the new file",
        "second in the new file",
    ]


def test_follower_starts_over_after_copytruncate(tmp_path: Path) -> None:
    """A file truncated in place (logrotate copytruncate) is read again from its start."""
    log = tmp_path / "mail.log"
    log.write_text("")
    seen = Collect()
    follower = FileFollower(str(log), seen)
    follower.start()
    append(log, "a rather long line before truncation\n")
    follower.poll()
    with open(log, "r+b") as handle:
        handle.truncate(0)
    append(log, "after\n")
    follower.poll()
    assert seen.lines == ["a rather long line before truncation", "after"]
    assert follower.offset == len("after\n")


def test_follower_reads_a_file_created_later_from_its_start(tmp_path: Path) -> None:
    """A log that does not exist at start is read from its first line once it appears."""
    log = tmp_path / "mail.log"
    seen = Collect()
    follower = FileFollower(str(log), seen)
    follower.start()
    follower.poll()
    log.write_text("first\nsecond\n")
    follower.poll()
    assert seen.lines == ["first", "second"]


def test_follower_cuts_overlong_lines_and_keeps_memory_bounded(tmp_path: Path) -> None:
    """A line longer than max_line is handed on cut at max_line once; the next line is intact."""
    log = tmp_path / "mail.log"
    log.write_text("")
    seen = Collect()
    follower = FileFollower(str(log), seen, max_line=10)
    follower.start()
    append(log, "x" * 25)
    follower.poll()
    append(log, "y" * 25 + "\nshort\n")
    follower.poll()
    assert seen.lines == ["x" * 10, "short"]


def test_follower_reads_a_bounded_amount_per_poll(tmp_path: Path) -> None:
    """A large backlog is read max_read bytes per poll, without losing or repeating a line."""
    log = tmp_path / "mail.log"
    log.write_text("")
    seen = Collect()
    follower = FileFollower(str(log), seen, max_read=100)
    follower.start()
    expected = [f"line {n:04d}" for n in range(100)]
    append(log, "".join(f"{line}\n" for line in expected))
    follower.poll()
    assert 0 < len(seen.lines) < 100
    for _ in range(20):
        follower.poll()
    assert seen.lines == expected


def test_follower_decodes_invalid_utf8_with_replacement(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 are replaced, not fatal."""
    log = tmp_path / "mail.log"
    log.write_text("")
    seen = Collect()
    follower = FileFollower(str(log), seen)
    follower.start()
    append(log, b"caf\xe9\n")
    follower.poll()
    assert seen.lines == ["caf\ufffd"]


# --- the watcher on a task.Clock -------------------------------------------------------------


class ClockReactor(task.Clock):
    """A ``task.Clock`` that records spawned processes instead of starting them."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[Any, str, list[str]]] = []

    def spawnProcess(  # noqa: N802 - Twisted's name
        self, protocol: Any, executable: str, args: list[str], env: Mapping[str, str]
    ) -> FakeProcess:
        self.spawned.append((protocol, executable, args))
        return FakeProcess()


class FakeProcess:
    def __init__(self) -> None:
        self.signals: list[str] = []

    def signalProcess(self, name: str) -> None:  # noqa: N802 - Twisted's name
        self.signals.append(name)


def test_watcher_polls_the_file_every_second_and_counts(tmp_path: Path) -> None:
    """Configured with a path, the watcher polls on the clock and joins what it reads."""
    log = tmp_path / "mail.log"
    log.write_text(smtp_line("OLD", "x@example.net", "5.7.64") + "\n")
    stats = Stats()
    clock = ClockReactor()
    watcher = OutcomeWatcher(stats, clock)
    watcher.expect(
        "4F1A2B3C02", [("kate@tailspintoys.com", "kate@tailspintoys.com", "no-connector")]
    )
    assert len(watcher.join) == 0  # not following: predictions are not kept
    watcher.configure(str(log))
    watcher.expect(
        "4F1A2B3C02", [("kate@tailspintoys.com", "kate@tailspintoys.com", "no-connector")]
    )
    append(log, smtp_line("4F1A2B3C02", "kate@tailspintoys.com", "5.7.64") + "\n")
    clock.advance(0.5)
    assert dict(stats.observed_replies) == {}
    clock.advance(0.5)
    assert dict(stats.observed_replies) == {("5.7.64", "no-connector"): 1}
    assert dict(stats.prediction_outcomes) == {("default", "no-connector", "no-connector"): 1}
    watcher.stop()
    append(log, smtp_line("4F1A2B3C02", "kate@tailspintoys.com", "5.7.64") + "\n")
    clock.advance(5)
    assert dict(stats.observed_replies) == {("5.7.64", "no-connector"): 1}
    assert clock.getDelayedCalls() == []


def test_watcher_switches_source_and_keeps_the_predictions(tmp_path: Path) -> None:
    """A new postfix_log restarts the follower on the new file; earlier predictions still join;
    new relay patterns apply at once."""
    first, second = tmp_path / "a.log", tmp_path / "b.log"
    first.write_text("")
    second.write_text("")
    stats = Stats()
    clock = ClockReactor()
    watcher = OutcomeWatcher(stats, clock)
    watcher.configure(str(first))
    watcher.expect("Q1", [("kate@tailspintoys.com", "kate@tailspintoys.com", "no-connector")])
    watcher.configure(str(second), ["127.0.0.1"])
    assert watcher.source == str(second)
    append(
        first,
        smtp_line("Q1", "kate@tailspintoys.com", "5.7.64", relay="127.0.0.1[127.0.0.1]:25") + "\n",
    )
    append(
        second,
        smtp_line("Q1", "kate@tailspintoys.com", "5.7.64", relay="127.0.0.1[127.0.0.1]:25") + "\n",
    )
    clock.advance(1)
    assert dict(stats.prediction_outcomes) == {("default", "no-connector", "no-connector"): 1}
    watcher.configure("")
    assert clock.getDelayedCalls() == []


def test_watcher_survives_a_failing_poll(tmp_path: Path) -> None:
    """An exception while reading is logged and the next poll tries again."""
    log = tmp_path / "mail.log"
    log.write_text("")
    stats = Stats()
    clock = ClockReactor()
    watcher = OutcomeWatcher(stats, clock)
    watcher.configure(str(log))
    assert watcher.file is not None
    real_poll = watcher.file.poll
    calls = []

    def broken() -> None:
        calls.append(1)
        raise OSError("disk on fire")

    watcher.file.poll = broken  # type: ignore[method-assign]  # a failing read, injected
    clock.advance(1)
    clock.advance(1)
    watcher.file.poll = real_poll  # type: ignore[method-assign]  # restored
    append(log, smtp_line("Q", "a@example.net", "2.6.0", "sent") + "\n")
    clock.advance(1)
    assert len(calls) == 2
    assert dict(stats.observed_replies) == {("2.6.0", "accepted"): 1}


def test_journal_source_spawns_journalctl_and_counts_its_lines() -> None:
    """``journal`` runs journalctl for Postfix's units; its output, split anywhere, is joined."""
    stats = Stats()
    clock = ClockReactor()
    watcher = OutcomeWatcher(stats, clock, which=lambda name: f"/usr/bin/{name}")
    watcher.configure("journal")
    [(protocol, executable, args)] = clock.spawned
    assert executable == "/usr/bin/journalctl"
    assert args == ["journalctl", *JOURNALCTL_ARGS]
    assert {"-f", "short-iso", "postfix"} <= set(args)
    watcher.expect(
        "4F1A2B3C02", [("kate@tailspintoys.com", "kate@tailspintoys.com", "no-connector")]
    )
    line = (
        "2026-11-27T10:00:02+0000 mx1 "
        + smtp_line("4F1A2B3C02", "kate@tailspintoys.com", "5.7.64").split(" mx1 ", 1)[1]
    )
    data = ("-- Journal begins --\n" + line + "\n").encode()
    for n in range(0, len(data), 7):
        protocol.outReceived(data[n : n + 7])
    assert dict(stats.prediction_outcomes) == {("default", "no-connector", "no-connector"): 1}


def ended(why: str) -> Failure:
    """The reason a process protocol gets when its child ended."""
    return Failure(RuntimeError(why))  # type: ignore[no-untyped-call]  # Failure is untyped


def test_journalctl_that_exits_is_started_again_and_stop_terminates_it() -> None:
    """An unasked exit restarts journalctl after a delay; stop sends TERM and restarts nothing."""
    clock = ClockReactor()
    follower = JournalFollower(clock, Collect(), which=lambda name: "/bin/journalctl")
    follower.start()
    protocol = clock.spawned[0][0]
    protocol.processEnded(ended("exited with 1"))
    assert not follower.running
    clock.advance(10)
    assert len(clock.spawned) == 2 and follower.running
    transport = follower._transport
    follower.stop()
    assert transport.signals == ["TERM"]
    clock.spawned[1][0].processEnded(ended("terminated"))
    clock.advance(60)
    assert len(clock.spawned) == 2


def test_missing_journalctl_counts_nothing_and_spawns_nothing() -> None:
    """Without journalctl the watcher logs and stays idle (no process, no crash)."""
    stats = Stats()
    clock = ClockReactor()
    watcher = OutcomeWatcher(stats, clock, which=lambda name: None)
    watcher.configure("journal")
    assert clock.spawned == []
    assert watcher.journal is not None and not watcher.journal.running
    watcher.stop()


# --- the engine hook -------------------------------------------------------------------------


class Recorder:
    """An ``Expectations`` that records what the engine hands over."""

    def __init__(self, fail: bool = False, following: bool = True) -> None:
        self.calls: list[tuple[str, list[tuple[str, str, str]]]] = []
        self.fail = fail
        self.following = following

    def expect(self, queue_id: str, entries: Sequence[tuple[str, str, str]]) -> None:
        if self.fail:
            raise RuntimeError("join exploded")
        self.calls.append((queue_id, list(entries)))


def policy_engine(
    tmp_path: Path, recorder: Recorder, *, tag: bool = True, action: str = "dunno"
) -> tuple[Any, Stats]:
    from policyd.engine.policy import PolicyEngine
    from policyd.sources.state import build_state

    (tmp_path / "virtual").write_text(
        "kate@contoso.com kate.private@example.net, ops@lab.contoso.net\n"
    )
    path = tmp_path / "m365-policyd.toml"
    path.write_text(
        ip_tenant_toml(
            action=action,
            onprem='local_domains = ["lab.contoso.net"]\nalias_maps = ["texthash:virtual"]',
            policy=f"tag = {'true' if tag else 'false'}",
        )
    )
    stats = Stats()
    state = build_state(load_config(str(path)), 1)
    return PolicyEngine(state, stats, lambda: 0.0, lambda record: None, outcomes=recorder), stats


def ask(engine: Any, session: Any, stage: str, **attrs: str) -> str:
    request = {
        "request": "smtpd_access_policy",
        "protocol_state": stage,
        "instance": "i.1",
        "queue_id": "4F1A2B3C02",
    } | attrs
    return str(engine.handle(request, session))


@pytest.mark.parametrize("tag", [True, False])
def test_engine_hands_the_message_predictions_to_the_watcher_at_data(
    tmp_path: Path, tag: bool
) -> None:
    """At DATA the engine hands queue ID and (final, recipient, reason) for every address
    Microsoft 365 sees (forwarded and in-tenant ones, not local ones), whatever ``tag`` says."""
    recorder = Recorder()
    engine, _ = policy_engine(tmp_path, recorder, tag=tag)
    session = engine.new_session()
    ask(engine, session, "RCPT", sender="john@fabrikam.com", recipient="kate@contoso.com")
    ask(engine, session, "RCPT", sender="john@fabrikam.com", recipient="bob@contoso.com")
    assert recorder.calls == []
    ask(engine, session, "DATA")
    assert recorder.calls == [
        (
            "4F1A2B3C02",
            [
                ("kate.private@example.net", "kate@contoso.com", "forwarded", "default"),
                ("bob@contoso.com", "bob@contoso.com", "recipient-in-tenant", "default"),
            ],
        )
    ]


def test_engine_hands_nothing_without_queue_id_or_for_refused_recipients(tmp_path: Path) -> None:
    """No queue ID, another message's DATA, or only recipients deferred at RCPT: nothing."""
    recorder = Recorder()
    engine, _ = policy_engine(tmp_path, recorder, action="defer")
    session = engine.new_session()
    ask(engine, session, "RCPT", sender="john@fabrikam.com", recipient="kate@tailspintoys.com")
    ask(engine, session, "DATA")  # deferred at RCPT: not part of the message
    ask(engine, session, "RCPT", sender="app@contoso.com", recipient="kate@tailspintoys.com")
    ask(engine, session, "DATA", queue_id="")
    ask(engine, session, "DATA", instance="other")
    assert recorder.calls == []


def test_engine_hands_nothing_while_the_watcher_follows_nothing(tmp_path: Path) -> None:
    """With [outcomes] off the engine does not even build the entries."""
    recorder = Recorder(following=False)
    engine, _ = policy_engine(tmp_path, recorder)
    session = engine.new_session()
    ask(engine, session, "RCPT", sender="john@fabrikam.com", recipient="bob@contoso.com")
    ask(engine, session, "DATA")
    assert recorder.calls == []


def test_engine_answers_data_unchanged_when_the_watcher_fails(tmp_path: Path) -> None:
    """A failing outcome hand-over still answers the header and counts an internal error."""
    engine, stats = policy_engine(tmp_path, Recorder(fail=True))
    session = engine.new_session()
    ask(engine, session, "RCPT", sender="app@contoso.com", recipient="kate@tailspintoys.com")
    answer = ask(engine, session, "DATA")
    assert answer.startswith("PREPEND X-M365-Relay: verdict=accept;")
    assert stats.internal_errors == 1


# --- configuration ---------------------------------------------------------------------------


def write_config(tmp_path: Path, outcomes: str) -> str:
    path = tmp_path / "m365-policyd.toml"
    path.write_text('[tenant]\naccepted_domains = ["contoso.com"]\n\n[outcomes]\n' + outcomes)
    return str(path)


def test_relay_hosts_defaults_to_microsoft_365_and_can_be_set(tmp_path: Path) -> None:
    """relay_hosts is Microsoft 365's glob unless the file names others."""
    assert load_config(write_config(tmp_path, "")).outcomes.relay_hosts == RELAY_HOST_GLOBS
    config = load_config(write_config(tmp_path, 'relay_hosts = ["127.0.0.1", " *.example.net "]'))
    assert config.outcomes.relay_hosts == ("127.0.0.1", "*.example.net")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("relay_hosts = []", "is empty, so no reply would ever be counted"),
        ('relay_hosts = ["[52.101.68.10]:25"]', "is not a host name or address pattern"),
        ('relay_hosts = ["a b"]', "is not a host name or address pattern"),
        ('relay_hosts = "*.mail.protection.outlook.com"', "expected an array of strings"),
    ],
)
def test_relay_hosts_errors_name_file_key_and_fix(tmp_path: Path, text: str, problem: str) -> None:
    """A bad relay_hosts raises ConfigError naming the file, outcomes.relay_hosts and a fix."""
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert (caught.value.file, caught.value.key) == (path, "outcomes.relay_hosts")
    assert problem in caught.value.problem
    assert "*.mail.protection.outlook.com" in caught.value.problem


# --- through the real serve process ----------------------------------------------------------

SERVE_BODY = ip_tenant_toml(action="dunno", tail='[outcomes]\npostfix_log = "{postfix_log}"')


#: A delivery line serve cannot parse: it counts one ``log_lines_skipped_total`` when read.
GARBLED = "Nov 27 10:00:09 mx1 postfix/smtp[4711]: 4F1A2B3CFF: to=<garbled\n"


def wait_metric(server: Any, name: str, labels: dict[str, str], value: float) -> None:
    """Poll ``/metrics`` until the sample is ``value`` (10 s at most)."""
    deadline = time.monotonic() + 10
    while True:
        found = server.scrape().value(name, **labels)
        if found == value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}{labels} is {found}, not {value}")
        time.sleep(0.1)


def wait_for_two_polls(server: Any, log: Path) -> None:
    """Return once serve's follower of ``log`` has read everything written before the call, and
    a whole poll interval has passed since: a garbled line appended and waited for in the
    skipped-lines counter, twice (the second is read at a later poll than the first)."""
    skipped = "m365_policyd_log_lines_skipped_total"
    for _ in range(2):
        before = server.scrape().value(skipped) or 0
        append(log, GARBLED)
        wait_metric(server, skipped, {}, before + 1)


def send_message(server: Any, queue_id: str, sender: str, recipient: str) -> None:
    from tests.serverproc import data, rcpt

    instance = f"i.{queue_id}"
    with server.client() as client:
        assert client.ask(rcpt(sender, recipient, instance=instance)) == "DUNNO"
        client.ask(data(instance, queue_id=queue_id))


@pytest.mark.slow
def test_serve_follows_the_postfix_log_and_exports_outcomes(tmp_path: Path) -> None:
    """A real serve process, told to follow a log, counts observed replies and joins them with
    the predictions it made at DATA; after a reload naming another log it follows that one."""
    from tests.serverproc import running_server

    first = tmp_path / "mail.log"
    first.write_text("Nov 27 09:00:00 mx1 postfix/smtp[1]: OLD: to=<a@b.c>, relay=x\n")
    body = SERVE_BODY.format(postfix_log=first)
    with running_server(tmp_path / "daemon", body) as server:
        send_message(server, "4F1A2B3C02", "john@fabrikam.com", "kate@tailspintoys.com")
        send_message(server, "4F1A2B3C01", "app@contoso.com", "kate@tailspintoys.com")
        refused = smtp_line("4F1A2B3C02", "kate@tailspintoys.com", "5.7.64", reply=ATTR36_SAID)
        append(first, refused + "\n")
        append(first, smtp_line("4F1A2B3C01", "kate@tailspintoys.com", "2.6.0", "sent") + "\n")
        append(first, "Nov 27 10:00:03 mx1 postfix/smtp[4711]: 4F1A2B3C03: to=<broken\n")
        outcomes = "m365_policyd_prediction_outcomes_total"
        wait_metric(
            server, outcomes, {"tenant": "default", "predicted": "attr36", "observed": "attr36"}, 1
        )
        wait_metric(
            server,
            outcomes,
            {"tenant": "default", "predicted": "accepted", "observed": "accepted"},
            1,
        )
        wait_metric(
            server, "m365_policyd_observed_replies_total", {"code": "5.7.64", "kind": "attr36"}, 1
        )
        wait_metric(server, "m365_policyd_log_lines_skipped_total", {}, 1)

        second = tmp_path / "other.log"
        second.write_text("")
        mark = server.log_offset()
        server.write_config(SERVE_BODY.format(postfix_log=second))
        server.reload()
        server.wait_for_log("reloaded configuration", after=mark)
        append(second, refused + "\n")
        append(first, smtp_line("4F1A2B3C01", "kate@tailspintoys.com", "2.6.0", "sent") + "\n")
        wait_metric(
            server, outcomes, {"tenant": "default", "predicted": "attr36", "observed": "attr36"}, 2
        )
        wait_for_two_polls(server, second)  # the old file would have been read meanwhile
        assert (
            server.scrape().value(
                outcomes, tenant="default", predicted="accepted", observed="accepted"
            )
            == 1
        )
        assert server.stop() == 0


@pytest.mark.skipif(sys.platform != "linux", reason="a shell-script journalctl stand-in")
def test_serve_follows_journald_through_journalctl(tmp_path: Path) -> None:
    """With postfix_log = "journal", serve reads what journalctl (a stand-in on PATH) prints."""
    from tests.serverproc import running_server

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    out = tmp_path / "journal.out"
    out.write_text("")
    fake = bin_dir / "journalctl"
    # Prints the arguments it got, then follows a file the test appends journal lines to.
    fake.write_text(f'#!/bin/sh\necho "args: $*" >&2\nexec tail -n +1 -f {out}\n')
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    body = SERVE_BODY.replace('"{postfix_log}"', '"journal"')
    with running_server(tmp_path / "daemon", body, env=env) as server:
        send_message(server, "4F1A2B3C02", "john@fabrikam.com", "kate@tailspintoys.com")
        line = smtp_line("4F1A2B3C02", "kate@tailspintoys.com", "5.7.64", reply=ATTR36_SAID)
        append(out, "2026-11-27T10:00:02+0000 mx1 " + line.split(" mx1 ", 1)[1] + "\n")
        wait_metric(
            server,
            "m365_policyd_prediction_outcomes_total",
            {"tenant": "default", "predicted": "attr36", "observed": "attr36"},
            1,
        )
        assert "-o short-iso" in server.wait_for_log("journalctl: args:")
        assert server.stop(signal.SIGTERM) == 0


# --- real Postfix, the stand-in and serve --------------------------------------------------------


@pytest.mark.postfix
def test_real_postfix_traffic_is_joined_with_the_predictions(tmp_path: Path) -> None:
    """A private Postfix wired with the shipped snippet relays through the Microsoft 365
    stand-in; serve follows Postfix's own log and joins each real reply with its prediction:
    the own-domain sender's mail accepted, a foreign sender's and a forwarded one refused."""
    from tests.e2e.postfix import PostfixInstance, postfix_unavailable
    from tests.e2e.standin import Connector, StandIn, TenantView
    from tests.pki import TestPKI
    from tests.serverproc import PolicyServer

    needs.require(postfix_unavailable())
    pki = TestPKI()
    ca_file = pki.write_ca_bundle(tmp_path)
    cert, key = pki.write(
        tmp_path, pki.leaf("standin.mail.protection.outlook.example", ["localhost"]), "standin"
    )
    virtual = tmp_path / "virtual"
    virtual.write_text("kate@contoso.com kate.private@example.net\n")
    tenant = TenantView(
        accepted_domains=("contoso.com",),
        connectors=(Connector("IP", sender_ip_addresses=("127.0.0.10/32",)),),
    )
    snippet = Path(__file__).parent.parent / "contrib" / "postfix" / "main.cf.snippet"
    with StandIn(cert_file=cert, key_file=key, ca_file=ca_file, tenant=tenant) as standin:
        postfix = PostfixInstance.create(
            relayhost=standin.relayhost,
            settings={
                "smtp_tls_security_level": "encrypt",
                "smtp_tls_CAfile": str(ca_file),
                "virtual_alias_maps": f"texthash:{virtual}",
                "smtp_bind_address": "127.0.0.10",
            },
            start=False,
        )
        with postfix:
            body = f"""
[tenant]
accepted_domains = ["contoso.com"]

[[tenant.inbound_connector]]
name = "IP"
sender_ip_addresses = ["127.0.0.10/32"]

[onprem]
egress_addresses = ["127.0.0.10"]
alias_maps = ["texthash:{virtual}"]

[policy]
action = "dunno"

[outcomes]
postfix_log = "{postfix.log_path}"
relay_hosts = ["127.0.0.1"]
"""
            server = PolicyServer(tmp_path / "daemon", body)
            postfix.apply_snippet(
                snippet.read_text(),
                {"m365_policyd_service": f"inet:127.0.0.1:{server.port}"},
            )
            postfix.start()
            with server.start():
                postfix.send("app@contoso.com", ["kate.external@tailspintoys.com"])
                postfix.send("john@fabrikam.com", ["kate.external@tailspintoys.com"])
                postfix.send("john@fabrikam.com", ["kate@contoso.com"])
                outcomes = "m365_policyd_prediction_outcomes_total"
                wait_metric(
                    server,
                    outcomes,
                    {"tenant": "default", "predicted": "attr36", "observed": "attr36"},
                    2,
                )
                wait_metric(
                    server,
                    outcomes,
                    {"tenant": "default", "predicted": "accepted", "observed": "accepted"},
                    1,
                )
                postfix.wait_queue_empty()
                wait_for_two_polls(server, postfix.log_path)  # Postfix's bounces are read
                samples = server.scrape()
                assert (
                    samples.value(
                        outcomes, tenant="default", predicted="accepted", observed="attr36"
                    )
                    == 0
                )
                assert (
                    samples.value(
                        outcomes, tenant="default", predicted="attr36", observed="accepted"
                    )
                    == 0
                )
                observed = samples.value(
                    "m365_policyd_observed_replies_total", code="5.7.64", kind="attr36"
                )
                assert observed is not None and observed >= 2
                assert samples.value("m365_policyd_log_lines_skipped_total") == 2  # GARBLED
                assert "orig_to=<kate@contoso.com>" in postfix.log()
