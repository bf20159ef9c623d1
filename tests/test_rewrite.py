"""The sender Microsoft 365 sees (SPEC §5.1, policyd.rules.rewrite): cleanup(8)'s and smtp(8)'s
rewriting applied before the relay rule, read from private Postfix configurations with the real
``postconf`` and ``postmap``, and postsrsd asked for real (Debian's 1.x, started here on a free
loopback port with a private secret; never the system service)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from policyd.engine.policy import PolicyEngine, Session
from policyd.engine.stats import Stats
from policyd.sources.config import load_config
from policyd.sources.postfix import read_postfix
from policyd.sources.state import build_state
from policyd.tools import doctor
from policyd.tools.doctor.tenant import route_samples
from tests.e2e.world import start_postsrsd
from tests.pki import TestPKI
from tests.serverproc import free_port
from tests.test_postfix_source import (
    IP_TENANT,
    POSTMAP,
    check_json,
    first_address,
    rcpt,
    run_check,
    site,
)
from tests.test_submission import submission_site

pytestmark = pytest.mark.postfix

POSTSRSD = shutil.which("postsrsd") or "/usr/sbin/postsrsd"
BIND = {"smtp_bind_address": "203.0.113.10"}
LOGIN = "/.*/ app@contoso.com\n"


def check_text(config: Path, sender: str, recipient: str) -> str:
    return run_check(config, sender, (recipient,)).stdout


# --- rewriting to the login mailbox ----------------------------------------------------------


def test_sender_canonical_maps_rewrites_to_the_login_mailbox(tmp_path: Path) -> None:
    """sender_canonical_maps = regexp: with /.*/ app@contoso.com: a root@ sender of a host
    name is predicted from app@contoso.com (sender-accepted-domain), and check shows the sender
    before and after with the table that rewrote it."""
    config = site(
        tmp_path,
        {**BIND, "sender_canonical_maps": "regexp:@DIR@/sender_canonical"},
        IP_TENANT,
        {"sender_canonical": LOGIN},
    )
    table = f"regexp:{tmp_path / 'postfix' / 'sender_canonical'}"
    status, result = check_json(config, "root@app01.contoso.local", "kate@tailspintoys.example")
    address = first_address(result)
    assert (status, address["reason"]) == (0, "sender-accepted-domain")
    assert "Postfix rewrites <root@app01.contoso.local> into <app@contoso.com>" in str(
        address["explanation"]
    )
    sender = result["sender"]
    assert isinstance(sender, dict)
    assert (sender["before"], sender["after"]) == ("root@app01.contoso.local", "app@contoso.com")
    assert [(s["parameter"], s["table"]) for s in sender["rewritten_by"]] == [
        ("sender_canonical_maps", table)
    ]
    route = address["route"]
    assert isinstance(route, dict)
    assert route["sender"]["after"] == "app@contoso.com"
    text = check_text(config, "root@app01.contoso.local", "kate@tailspintoys.example")
    assert "<root@app01.contoso.local> -> <app@contoso.com>" in text
    assert f"main.cf: sender_canonical_maps ({table})" in text
    assert "[sender-accepted-domain]" in text


def test_without_rewriting_the_same_sender_is_refused(tmp_path: Path) -> None:
    """The control: the same Postfix without the rewriting table is refused ATTR36
    (sender-not-accepted) for root@app01.contoso.local, and check says nothing was rewritten."""
    config = site(tmp_path, BIND, IP_TENANT)
    status, result = check_json(config, "root@app01.contoso.local", "kate@tailspintoys.example")
    assert (status, first_address(result)["reason"]) == (1, "sender-not-accepted")
    sender = result["sender"]
    assert isinstance(sender, dict)
    assert (sender["after"], sender["rewritten_by"]) == ("root@app01.contoso.local", [])


@pytest.mark.parametrize("where", ["main.cf", "master.cf"])
def test_smtp_generic_maps_of_the_delivering_service(tmp_path: Path, where: str) -> None:
    """smtp_generic_maps rewrites MAIL FROM per delivering service: in main.cf it applies to
    the smtp service; as a master.cf -o of relay-m365 it applies to mail that service carries
    (default_transport = relay-m365), not to mail for the smtp service."""
    etc = tmp_path / "postfix"
    generic = f"regexp:{etc}/generic"
    if where == "main.cf":
        main, extra = {"smtp_generic_maps": generic}, ""
    else:
        main = {"default_transport": "relay-m365", "transport_maps": "texthash:@DIR@/transport"}
        extra = f"relay-m365 unix - - n - - smtp\n  -o smtp_generic_maps={generic}\n"
    config = site(
        tmp_path,
        {**BIND, **main},
        IP_TENANT,
        {"generic": LOGIN, "transport": "other.example smtp:\n"},
        extra,
    )
    status, result = check_json(config, "root@app01.contoso.local", "kate@tailspintoys.example")
    address = first_address(result)
    assert (status, address["reason"]) == (0, "sender-accepted-domain")
    sender = result["sender"]
    assert isinstance(sender, dict)
    assert sender["after"] == "root@app01.contoso.local"  # cleanup did not rewrite it
    route = address["route"]
    assert isinstance(route, dict)
    steps = route["sender"]["rewritten_by"]
    source = (
        "main.cf: smtp_generic_maps"
        if where == "main.cf"
        else "master.cf: relay-m365/unix -o smtp_generic_maps"
    )
    assert [(s["parameter"], s["table"], s["source"]) for s in steps] == [
        ("smtp_generic_maps", generic, source)
    ]
    assert route["sender"]["after"] == "app@contoso.com"
    if where == "master.cf":
        # other.example goes out through the smtp service, which has no smtp_generic_maps: not
        # relayed through Microsoft 365 there, but the route's sender shows no rewrite.
        _, other = check_json(config, "root@app01.contoso.local", "x@other.example")
        assert first_address(other)["route"]["service"] == "smtp"


def test_canonical_order_and_masquerading(tmp_path: Path) -> None:
    """sender_canonical_maps first, then canonical_maps (each again on its own result), then
    masquerade_domains, with masquerade_exceptions honoured."""
    config = site(
        tmp_path,
        {
            **BIND,
            "sender_canonical_maps": "texthash:@DIR@/sender_canonical",
            "canonical_maps": "texthash:@DIR@/canonical",
            "masquerade_domains": "!keep.contoso.com, contoso.com",
            "masquerade_exceptions": "root",
        },
        IP_TENANT,
        {
            "sender_canonical": "ops@app01.contoso.local ops@app01.eu.contoso.com\n",
            "canonical": "@app01.eu.contoso.com @app01.contoso.com\n",
        },
    )
    _, result = check_json(config, "ops@app01.contoso.local", "kate@tailspintoys.example")
    sender = result["sender"]
    assert isinstance(sender, dict)
    assert [(s["parameter"], s["after"]) for s in sender["rewritten_by"]] == [
        ("sender_canonical_maps", "ops@app01.eu.contoso.com"),
        ("canonical_maps", "ops@app01.contoso.com"),
        ("masquerade_domains", "ops@contoso.com"),
    ]
    assert first_address(result)["reason"] == "sender-accepted-domain"
    _, kept = check_json(config, "root@app01.contoso.com", "kate@tailspintoys.example")
    assert kept["sender"]["after"] == "root@app01.contoso.com"  # masquerade_exceptions
    _, bang = check_json(config, "x@a.keep.contoso.com", "kate@tailspintoys.example")
    assert bang["sender"]["after"] == "x@a.keep.contoso.com"  # "!keep.contoso.com" stops it


def test_listener_without_address_mappings(tmp_path: Path) -> None:
    """master.cf's port-25 smtpd listener with -o receive_override_options=no_address_mappings:
    cleanup rewrites nothing for mail it receives, so the sender is judged as given."""
    config = site(
        tmp_path,
        {**BIND, "sender_canonical_maps": "regexp:@DIR@/sender_canonical"},
        IP_TENANT,
        {"sender_canonical": LOGIN},
        "smtp inet n - n - - smtpd\n  -o receive_override_options=no_address_mappings\n",
    )
    _, result = check_json(config, "root@app01.contoso.local", "kate@tailspintoys.example")
    assert first_address(result)["reason"] == "sender-not-accepted"
    sender = result["sender"]
    assert isinstance(sender, dict)
    assert sender["after"] == "root@app01.contoso.local"
    assert "smtp/inet -o receive_override_options has no_address_mappings" in sender["notes"][0]


def test_cleanup_service_name_points_at_a_cleanup_without_mappings(tmp_path: Path) -> None:
    """The listener's -o cleanup_service_name names a cleanup service whose own -o empties
    sender_canonical_maps: that cleanup's settings apply, not main.cf's."""
    config = site(
        tmp_path,
        {**BIND, "sender_canonical_maps": "regexp:@DIR@/sender_canonical"},
        IP_TENANT,
        {"sender_canonical": LOGIN},
        "smtp inet n - n - - smtpd\n  -o cleanup_service_name=nomap\n"
        "nomap unix n - n - 0 cleanup\n  -o sender_canonical_maps=\n",
    )
    _, result = check_json(config, "root@app01.contoso.local", "kate@tailspintoys.example")
    assert result["sender"]["after"] == "root@app01.contoso.local"
    assert first_address(result)["reason"] == "sender-not-accepted"


# --- postsrsd, asked for real --------------------------------------------------------------------


@pytest.fixture
def postsrsd() -> Iterator[object]:
    """A factory: start Debian's postsrsd (SRS domain, excluded domains) on a free loopback
    port; every one started is stopped after the test."""
    if not os.access(POSTSRSD, os.X_OK):
        pytest.skip("Debian's postsrsd is not installed (make system-deps)")
    root = Path(tempfile.mkdtemp(prefix="m365-postsrsd-"))
    started: list[subprocess.Popen[bytes]] = []

    def start(domain: str, excludes: tuple[str, ...] = (), **where: object) -> int:
        proc, port = start_postsrsd(root, domain, excludes, **where)  # type: ignore[arg-type]
        started.append(proc)
        return port

    yield start
    for proc in started:
        proc.terminate()
        proc.wait(10)
    shutil.rmtree(root, ignore_errors=True)


def srs_site(tmp_path: Path, table: str, accepted: tuple[str, ...] = ("contoso.com",)) -> Path:
    tenant = IP_TENANT.replace(
        'accepted_domains = ["contoso.com"]',
        "accepted_domains = [" + ", ".join(f'"{d}"' for d in accepted) + "]",
    )
    return site(
        tmp_path,
        {**BIND, "sender_canonical_maps": table, "sender_canonical_classes": "envelope_sender"},
        tenant,
    )


def postmap_q(key: str, table: str) -> str:
    done = subprocess.run(
        [POSTMAP, "-q", key, table], capture_output=True, text=True, timeout=30, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else key


@pytest.mark.parametrize(
    ("excludes", "reason"),
    [((), "sender-not-accepted"), (("contoso.com",), "sender-accepted-domain")],
    ids=["no-exclusion", "SRS_EXCLUDE_DOMAINS=contoso.com"],
)
def test_postsrsd_rewrites_own_domain_senders_unless_excluded(
    tmp_path: Path, postsrsd: object, excludes: tuple[str, ...], reason: str
) -> None:
    """postsrsd with SRS domain relay.contoso.com (not accepted) rewrites alerts@contoso.com
    into SRS0=…@relay.contoso.com, refused ATTR36, unless contoso.com is excluded; the daemon's
    sender is exactly what that postsrsd writes (postmap -q asks it the same question)."""
    assert callable(postsrsd)
    port = postsrsd("relay.contoso.com", excludes)
    table = f"tcp:127.0.0.1:{port}"
    config = srs_site(tmp_path, table)
    status, result = check_json(config, "alerts@contoso.com", "kate@tailspintoys.example")
    address = first_address(result)
    written = postmap_q("alerts@contoso.com", table)
    sender = result["sender"]
    assert isinstance(sender, dict)
    assert sender["after"] == written
    assert sender["services_asked"] == [table]
    assert address["reason"] == reason
    if excludes:
        assert (status, written) == (0, "alerts@contoso.com")
    else:
        assert status == 1
        assert written.startswith("SRS0=") and written.endswith("@relay.contoso.com")
        assert address["reply"] == "550 5.7.64 Relay Access Denied ATTR36"
        assert "SRS_EXCLUDE_DOMAINS" in str(address["explanation"])


@pytest.mark.parametrize(
    ("accepted", "reason"),
    [
        (("contoso.com",), "sender-not-accepted"),
        (("contoso.com", "relay.contoso.com"), "srs-rewritten"),
    ],
)
def test_postsrsd_rewrites_a_foreign_sender(
    tmp_path: Path, postsrsd: object, accepted: tuple[str, ...], reason: str
) -> None:
    """A foreign sender leaves as what postsrsd writes: relayed when the SRS domain is
    accepted (srs-rewritten), refused when it is not."""
    assert callable(postsrsd)
    port = postsrsd("relay.contoso.com", ("contoso.com",))
    table = f"tcp:127.0.0.1:{port}"
    config = srs_site(tmp_path, table, accepted)
    _, result = check_json(config, "john@fabrikam.example", "kate@tailspintoys.example")
    assert result["sender"]["after"] == postmap_q("john@fabrikam.example", table)
    assert result["sender"]["after"].endswith("@relay.contoso.com")
    assert first_address(result)["reason"] == reason


def test_postsrsd_down_answers_on_error_and_counts(tmp_path: Path) -> None:
    """A rewriting service that does not answer is a lookup failure: the engine answers
    on_error (DUNNO), counts an internal error and logs "sender rewriting failed"; the
    daemon still starts (the service is not asked at load time), check reports an error for
    the recipient and doctor FAILs postfix-sender-rewriting instead of crashing."""
    config = srs_site(tmp_path, f"tcp:127.0.0.1:{free_port()}")
    state = build_state(load_config(str(config)), 1)
    stats = Stats()
    records: list[Mapping[str, object]] = []
    engine = PolicyEngine(state, stats, Clock().seconds, records.append)
    answer = engine.handle(rcpt("alerts@contoso.com", "kate@tailspintoys.example"), Session())
    assert answer == "DUNNO"
    assert stats.internal_errors == 1
    assert str(records[-1]["problem"]).startswith("sender rewriting failed: ")
    status, result = check_json(config, "alerts@contoso.com", "kate@tailspintoys.example")
    recipient = result["recipients"][0]
    assert (status, recipient["verdict"]) == (1, "error")
    assert "sender rewriting failed: " in recipient["explanation"]
    report = doctor.audit(state.config, now=TestPKI().now, router=state.router)
    assert report.status_of("postfix-sender-rewriting") == "error"


@pytest.mark.parametrize(
    ("srs_domain", "reason", "doctor_status"),
    [
        ("SRS_DOMAIN=contoso.com\n", "srs-rewritten", "ok"),
        ("SRS_DOMAIN='$myhostname'\n", "sender-not-accepted", "error"),
    ],
)
def test_postsrsd_configuration_and_what_it_writes(
    tmp_path: Path, postsrsd: object, srs_domain: str, reason: str, doctor_status: str
) -> None:
    """doctor judges the domain postsrsd's configuration names (a literal it does not expand
    FAILs), and the prediction follows what a postsrsd started with that domain writes: an
    accepted domain relays a foreign sender, the literal '$myhostname' does not."""
    assert callable(postsrsd)
    literal = srs_domain.partition("=")[2].strip().strip("'")
    listen = f"127.0.{os.getpid() % 200 + 20}.{free_port() % 200 + 20}"
    postsrsd(literal, listen=listen, forward=10001)  # 10001: how doctor recognises postsrsd
    (tmp_path / "postsrsd").write_text(srs_domain)
    config = srs_site(tmp_path, f"tcp:{listen}:10001")
    text = config.read_text().replace(
        "[postfix]\n", f'[postfix]\npostsrsd_config = "{tmp_path / "postsrsd"}"\n', 1
    )
    config.write_text(text)
    _, result = check_json(config, "john@fabrikam.example", "kate@tailspintoys.example")
    assert result["sender"]["after"].endswith("@" + literal)
    assert first_address(result)["reason"] == reason
    state = build_state(load_config(str(config)), 0)
    facts = read_postfix(state.config.postfix.config_directory, route_samples(state.config))
    report = doctor.audit(
        state.config, now=TestPKI().now, postfix=facts, router=state.router, srs=state.srs
    )
    assert report.status_of("postfix-srs-domain") == doctor_status


def test_rewriting_to_the_login_fixes_a_submission_relay(tmp_path: Path) -> None:
    """The issue's usual fix on an SMTP AUTH relay: sender_canonical_maps rewrites every sender
    to the login mailbox, so root@app01.contoso.local finds app@contoso.com's credential
    (smtp_sender_dependent_authentication) and sends as the login: submission-accepted, where
    the sender as given gets no credential (530 5.7.57)."""
    plain = submission_site(tmp_path / "plain")
    _, result = check_json(plain, "root@app01.contoso.local", "kate@fabrikam.example")
    assert first_address(result)["reason"] == "submission-no-credentials"
    etc = tmp_path / "fixed"
    config = submission_site(etc, {"sender_canonical_maps": f"regexp:{etc}/sender_canonical"})
    (etc / "sender_canonical").write_text(LOGIN)
    status, result = check_json(config, "root@app01.contoso.local", "kate@fabrikam.example")
    assert (status, first_address(result)["reason"]) == (0, "submission-accepted")
    assert result["sender"]["after"] == "app@contoso.com"
