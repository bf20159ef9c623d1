"""``m365-policyd probe`` and ``doctor --probe`` against the Microsoft 365 stand-in on loopback.

The stand-in (``tests/e2e/standin.py``) applies Microsoft's relay rule independently of the
daemon; these tests run the real command (a subprocess, as an administrator would) and read the
stand-in's own log: every session's commands, the source address and the client certificate.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from policyd.constants import PROBE_MAX_RECIPIENTS
from policyd.rules.outcomes import classify_reply
from policyd.tools.probe import ProbeUsageError, parse_endpoint
from tests.e2e.standin import Connector, StandIn, TenantView
from tests.pki import TestPKI
from tests.serverproc import cli

IP_EGRESS = "127.0.0.10"  # inside the IP connector
OTHER_EGRESS = "127.0.0.20"  # in no connector: only the certificate can attribute it
OUTSIDE = "ext@example.net"
FORWARD = "fwd@contoso.com"  # an alias of OUTSIDE: forwarded mail

#: The mail classes of doctor's table as (sender, recipient).
CLASSES = {
    "own-domain": ("alerts@contoso.com", OUTSIDE),
    "foreign-sender": ("john@fabrikam.com", OUTSIDE),
    "forwarded": ("john@fabrikam.com", FORWARD),
    "null-sender-bounce": ("", OUTSIDE),
    "into-tenant": ("alerts@contoso.com", "user@contoso.com"),
}


@dataclass
class Files:
    root: Path
    ca: Path
    cert: Path
    key: Path
    standin: StandIn


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Files]:
    root = tmp_path_factory.mktemp("probe")
    pki = TestPKI()
    ca = pki.write_ca_bundle(root)
    server_cert, server_key = pki.write(
        root, pki.leaf("standin.mail.protection.outlook.example", ["localhost"]), "standin"
    )
    cert, key = pki.write(root, pki.leaf("mail.contoso.com", ["mail.contoso.com"]), "client")
    (root / "virtual").write_text(f"{FORWARD} {OUTSIDE}\n")
    standin = StandIn(cert_file=server_cert, key_file=server_key, ca_file=ca).start()
    try:
        yield Files(root, ca, cert, key, standin)
    finally:
        standin.stop()


@pytest.fixture
def standin(files: Files) -> StandIn:
    files.standin.tenant = None
    files.standin.sessions.clear()
    files.standin.transactions.clear()
    return files.standin


def config(
    files: Files,
    *,
    egress: str,
    cert_connector: str = "",
    ip_connector: str = "",
    certificate: bool = True,
) -> Path:
    lines = ["[tenant]", 'accepted_domains = ["contoso.com"]']
    if ip_connector:
        lines += [
            "[[tenant.inbound_connector]]",
            'name = "IP connector"',
            'connector_type = "OnPremises"',
            f'sender_ip_addresses = ["{ip_connector}"]',
        ]
    if cert_connector:
        lines += [
            "[[tenant.inbound_connector]]",
            'name = "Certificate connector"',
            'connector_type = "OnPremises"',
            f'tls_sender_certificate_name = "{cert_connector}"',
        ]
    lines += [
        "[onprem]",
        f'egress_addresses = ["{egress}"]',
        f'certificate = "{files.cert if certificate else ""}"',
        f'ca_bundle = "{files.ca}"',
        f'alias_maps = ["texthash:{files.root / "virtual"}"]',
    ]
    path = files.root / f"probe-{egress}-{cert_connector or 'ip'}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def view(*connectors: Connector, **switches: bool) -> TenantView:
    return TenantView(("contoso.com",), connectors, **switches)


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return cli(*args, timeout=timeout)


def probe(
    path: Path, standin: StandIn, sender: str, *recipients: str, extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return run(
        "probe",
        "-c",
        str(path),
        "--endpoint",
        f"127.0.0.1:{standin.port}",
        "--sender",
        sender,
        "--recipient",
        *recipients,
        "--json",
        *extra,
    )


def assert_never_data_always_quit(standin: StandIn, count: int) -> None:
    sessions = standin.closed_sessions(count)
    assert len(sessions) == count
    for session in sessions:
        assert "DATA" not in session.verbs, session.verbs
        assert session.ended_with_quit, session.verbs
        assert session.verbs[:3] == ["EHLO", "STARTTLS", "EHLO"], session.verbs


def probed_kinds(standin: StandIn) -> dict[tuple[str, str], str]:
    """The stand-in's own decisions, classified: (sender, recipient) -> kind."""
    return {
        (t.mail_from, r): classify_reply(reply)
        for t in standin.transactions
        for r, reply in t.replies.items()
    }


@pytest.mark.parametrize(
    ("group", "egress", "connectors", "expected"),
    [
        (
            "ip",
            IP_EGRESS,
            {"ip_connector": f"{IP_EGRESS}/32"},
            {
                "own-domain": "accepted",
                "foreign-sender": "attr36",
                "forwarded": "attr36",
                "null-sender-bounce": "attr36",
                "into-tenant": "accepted",
            },
        ),
        (
            "certificate",
            OTHER_EGRESS,
            {"cert_connector": "*.contoso.com"},
            dict.fromkeys(CLASSES, "accepted"),
        ),
        (
            "no-connector",
            OTHER_EGRESS,
            {"ip_connector": f"{IP_EGRESS}/32"},
            {
                "own-domain": "no-connector",
                "foreign-sender": "no-connector",
                "forwarded": "no-connector",
                "null-sender-bounce": "no-connector",
                "into-tenant": "accepted",
            },
        ),
    ],
)
def test_probe_kinds_equal_the_standin_and_the_prediction(
    files: Files,
    standin: StandIn,
    group: str,
    egress: str,
    connectors: dict[str, str],
    expected: dict[str, str],
) -> None:
    """Each mail class probed from the egress address with the certificate gets the stand-in's
    decision as its kind, that kind is the predicted one (exit 0), and no session sent DATA."""
    standin.tenant = view(
        Connector("IP connector", sender_ip_addresses=(f"{IP_EGRESS}/32",))
        if "ip_connector" in connectors
        else Connector("Certificate connector", tls_sender_certificate_name="*.contoso.com")
    )
    path = config(files, egress=egress, **connectors)
    by_sender: dict[str, list[str]] = {}
    for class_id, (sender, _) in CLASSES.items():
        by_sender.setdefault(sender, []).append(class_id)
    for sender, class_ids in by_sender.items():
        recipients = [CLASSES[c][1] for c in class_ids]
        done = probe(path, standin, sender, *recipients, extra=("--key", str(files.key)))
        assert done.returncode == 0, (class_ids, done.stdout, done.stderr)
        results = json.loads(done.stdout)["results"]
        assert len(results) == len(class_ids)
        for class_id, result in zip(class_ids, results, strict=True):
            recipient = CLASSES[class_id][1]
            assert result["recipient"] == recipient
            assert result["kind"] == expected[class_id], (class_id, result)
            assert result["predicted"] == result["kind"] and result["agrees"] is True
            final = OUTSIDE if recipient == FORWARD else recipient
            assert result["address"] == final
            assert probed_kinds(standin)[(sender, final)] == result["kind"]
    assert_never_data_always_quit(standin, len(by_sender))  # one session per sender
    assert {s.source_ip for s in standin.sessions} == {egress}
    assert all(s.certificate is not None for s in standin.sessions)
    assert {s.certificate.names[0] for s in standin.sessions if s.certificate} == {
        "mail.contoso.com"
    }


def test_text_output_says_the_safety_line_before_the_answers(
    files: Files, standin: StandIn
) -> None:
    """The text output starts with where, from where and as whom, and that no mail is sent,
    then Microsoft's reply, its kind and the prediction for each recipient."""
    standin.tenant = view(Connector("IP connector", sender_ip_addresses=(f"{IP_EGRESS}/32",)))
    path = config(files, egress=IP_EGRESS, ip_connector=f"{IP_EGRESS}/32")
    done = run(
        "probe", "-c", str(path), "--endpoint", f"127.0.0.1:{standin.port}",
        "--key", str(files.key), "--sender", "john@fabrikam.com",
        "--recipient", OUTSIDE, "user@contoso.com",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    first, *rest = done.stdout.splitlines()
    assert first == (
        f"probing 127.0.0.1:{standin.port} from {IP_EGRESS} with CN=mail.contoso.com; "
        "no mail is sent"
    )
    text = "\n".join(rest)
    assert "Microsoft 365  550 5.7.64 Relay Access Denied ATTR36" in text
    assert "predicted      attr36 [sender-not-accepted" in text
    assert "Agreement  2 of 2 probed addresses" in text
    assert_never_data_always_quit(standin, 1)  # one session per sender
    assert [v for v in standin.sessions[0].verbs if v == "RCPT"] == ["RCPT", "RCPT"]
    assert standin.sessions[0].verbs[-2:] == ["RSET", "QUIT"]


@pytest.mark.slow
def test_disagreement_exits_1_and_doctor_probe_names_the_assumption(
    files: Files, standin: StandIn
) -> None:
    """A stand-in that refuses a host-name TlsSenderCertificateName that is not itself an
    accepted domain disagrees with the default prediction: probe exits 1, and doctor --probe
    names host_connector_name_must_be_accepted and the change that would agree."""
    standin.tenant = view(
        Connector("Certificate connector", tls_sender_certificate_name="mail.contoso.com"),
        host_connector_name_must_be_accepted=True,
    )
    path = config(files, egress=OTHER_EGRESS, cert_connector="mail.contoso.com")
    done = probe(path, standin, "john@fabrikam.com", OUTSIDE, extra=("--key", str(files.key)))
    assert done.returncode == 1, done.stderr
    (result,) = json.loads(done.stdout)["results"]
    assert (result["kind"], result["predicted"], result["agrees"]) == (
        "no-connector",
        "accepted",
        False,
    )
    doctor = run(
        "doctor", "-c", str(path), "--postfix-dir", str(files.root / "no-postfix"),
        "--key", str(files.key), "--probe", "--endpoint", f"127.0.0.1:{standin.port}", "--json",
    )  # fmt: skip
    assert doctor.returncode == 1, doctor.stderr
    rows = {row["class"]: row for row in json.loads(doctor.stdout)["probe"]}
    foreign = rows["foreign-sender"]
    assert (foreign["predicted"], foreign["observed"], foreign["agrees"]) == (
        "accepted",
        "no-connector",
        False,
    )
    keys = [a["key"] for a in foreign["assumptions"]]
    assert keys == ["host_connector_name_must_be_accepted"]
    assert foreign["assumptions"][0]["change"] == (
        "[assumptions] host_connector_name_must_be_accepted = true"
    )
    assert rows["into-tenant"]["agrees"] is True
    assert "probing 127.0.0.1" in doctor.stderr  # the safety line, apart from the JSON
    assert_never_data_always_quit(standin, 1 + 3)  # 3 senders: own, foreign, null
    text = run(
        "doctor", "-c", str(path), "--postfix-dir", str(files.root / "no-postfix"),
        "--key", str(files.key), "--probe", "--endpoint", f"127.0.0.1:{standin.port}",
    )  # fmt: skip
    assert "host_connector_name_must_be_accepted = true would agree" in text.stdout


@pytest.mark.slow
def test_doctor_probe_agrees_with_the_default_reading(files: Files, standin: StandIn) -> None:
    """With the stand-in on the daemon's default reading, doctor --probe shows every class
    agreeing, so the probe does not invent disagreements."""
    standin.tenant = view(
        Connector("Certificate connector", tls_sender_certificate_name="mail.contoso.com")
    )
    path = config(files, egress=OTHER_EGRESS, cert_connector="mail.contoso.com")
    doctor = run(
        "doctor", "-c", str(path), "--postfix-dir", str(files.root / "no-postfix"),
        "--key", str(files.key), "--probe", "--endpoint", f"127.0.0.1:{standin.port}", "--json",
    )  # fmt: skip
    rows = json.loads(doctor.stdout)["probe"]
    assert {row["class"] for row in rows} >= {
        "own-domain", "foreign-sender", "forwarded", "null-sender-bounce", "into-tenant",
    }  # fmt: skip
    assert all(row["agrees"] for row in rows), rows
    assert all(row["observed"] == "accepted" for row in rows)


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The one error line (--json puts the safety line on stderr too, before it)."""
    lines = [line for line in done.stderr.strip().splitlines() if not line.startswith("probing ")]
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_unreachable_endpoint_exits_69_with_one_line(files: Files) -> None:
    """A port nobody listens on: exit 69 with one line naming the endpoint, at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = config(files, egress=IP_EGRESS, ip_connector=f"{IP_EGRESS}/32")
    started = time.monotonic()
    done = run(
        "probe", "-c", str(path), "--endpoint", f"127.0.0.1:{port}", "--key", str(files.key),
        "--recipient", OUTSIDE, "--timeout", "2",
    )  # fmt: skip
    assert done.returncode == 69
    assert f"cannot connect to 127.0.0.1:{port} from {IP_EGRESS}" in one_line(done)
    assert time.monotonic() - started < 15


def test_starttls_refused_exits_69_and_still_says_quit(files: Files, standin: StandIn) -> None:
    """A server that answers STARTTLS with 454: exit 69 with one line, MAIL never sent, QUIT
    said (the probe never falls back to plain text)."""
    standin.tenant = view(refuse_starttls=True)
    path = config(files, egress=IP_EGRESS, ip_connector=f"{IP_EGRESS}/32")
    done = probe(path, standin, "alerts@contoso.com", OUTSIDE, extra=("--key", str(files.key)))
    assert done.returncode == 69
    assert "STARTTLS refused: 454 4.7.0" in one_line(done)
    (session,) = standin.closed_sessions(1)
    assert session.verbs == ["EHLO", "STARTTLS", "QUIT"]


def test_silent_server_exits_69_within_the_timeout(files: Files) -> None:
    """A server that accepts the connection and never answers: exit 69 with one line naming
    the greeting, within a few timeouts."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(5)  # the kernel completes the handshake; nobody ever writes
        port = silent.getsockname()[1]
        path = config(files, egress=IP_EGRESS, ip_connector=f"{IP_EGRESS}/32")
        started = time.monotonic()
        done = run(
            "probe", "-c", str(path), "--endpoint", f"127.0.0.1:{port}",
            "--key", str(files.key), "--recipient", OUTSIDE, "--timeout", "1",
        )  # fmt: skip
        elapsed = time.monotonic() - started
    assert done.returncode == 69
    assert "no reply to the greeting within 1 s" in one_line(done)
    assert elapsed < 10


def test_unreadable_key_exits_78_with_one_line(files: Files, standin: StandIn) -> None:
    """A key file that cannot be read, and one that does not belong to the certificate:
    exit 78 with one line each, before any connection is made."""
    path = config(files, egress=IP_EGRESS, ip_connector=f"{IP_EGRESS}/32")
    missing = files.root / "missing.key"
    done = probe(path, standin, "a@contoso.com", OUTSIDE, extra=("--key", str(missing)))
    assert done.returncode == 78
    assert f"private key {missing}: No such file or directory" in one_line(done)
    other = TestPKI().leaf("other.contoso.com")
    _, wrong = TestPKI().write(files.root / "wrong", other, "other")
    done = probe(path, standin, "a@contoso.com", OUTSIDE, extra=("--key", str(wrong)))
    assert done.returncode == 78
    assert "cannot load the client certificate" in one_line(done)
    assert standin.sessions == []


def test_recipient_cap_is_a_usage_error_before_connecting(files: Files, standin: StandIn) -> None:
    """More addresses than the cap per run: exit 2, and no connection is made."""
    path = config(files, egress=IP_EGRESS, ip_connector=f"{IP_EGRESS}/32")
    many = [f"u{i}@example.net" for i in range(PROBE_MAX_RECIPIENTS + 1)]
    done = probe(path, standin, "a@contoso.com", *many, extra=("--key", str(files.key)))
    assert done.returncode == 2
    assert f"at most {PROBE_MAX_RECIPIENTS} per run" in one_line(done)
    assert standin.sessions == []


def test_an_address_cannot_smuggle_a_command(files: Files, standin: StandIn) -> None:
    """A recipient carrying a line break and DATA is a usage error before any connection."""
    path = config(files, egress=IP_EGRESS, ip_connector=f"{IP_EGRESS}/32")
    done = probe(
        path, standin, "a@contoso.com", f"{OUTSIDE}>\r\nDATA", extra=("--key", str(files.key))
    )
    assert done.returncode == 2
    assert "cannot be probed" in one_line(done)
    assert standin.sessions == []


def test_the_client_refuses_to_write_data() -> None:
    """The SMTP client itself refuses DATA, BDAT and embedded line breaks, whoever calls it."""
    from policyd.tools.probe.client import ProbeError, _SMTPClient

    client = _SMTPClient()
    for line in ("DATA", "data", "BDAT 10 LAST", "RCPT TO:<a@b>\r\nDATA"):
        with pytest.raises(ProbeError):
            client.send(line)


def test_no_endpoint_without_postfix_is_a_usage_error(files: Files) -> None:
    """Without [postfix] and without --endpoint the probe does not guess a host: exit 2."""
    path = config(files, egress=IP_EGRESS, ip_connector=f"{IP_EGRESS}/32")
    done = run("probe", "-c", str(path), "--recipient", OUTSIDE)
    assert done.returncode == 2
    assert "--endpoint" in one_line(done)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "contoso-com.mail.protection.outlook.com",
            ("contoso-com.mail.protection.outlook.com", 25),
        ),
        ("[127.0.0.1]:2525", ("127.0.0.1", 2525)),
        ("127.0.0.1:2525", ("127.0.0.1", 2525)),
        ("[::1]:26", ("::1", 26)),
    ],
)
def test_parse_endpoint(text: str, expected: tuple[str, int]) -> None:
    """--endpoint takes Postfix's next-hop forms; the port defaults to 25."""
    assert parse_endpoint(text) == expected


@pytest.mark.parametrize("text", ["", "a b", "host:0", "host:70000"])
def test_parse_endpoint_refuses_bad_forms(text: str) -> None:
    """Zero or several hosts and ports outside 1-65535 are usage errors."""
    with pytest.raises(ProbeUsageError):
        parse_endpoint(text)


def test_compare_names_only_the_assumption_that_agrees(files: Files) -> None:
    """Given observed kinds (no network), a row that disagrees names exactly the assumptions
    whose other setting predicts the observed kind, and rows that agree name none."""
    from datetime import UTC, datetime

    from policyd.sources.state import load_state
    from policyd.tools.doctor import audit, live
    from policyd.tools.probe import Answer

    now = datetime.now(UTC)
    path = config(files, egress=OTHER_EGRESS, cert_connector="mail.contoso.com")
    state = load_state(str(path), generation=0)
    report = audit(state.config, now=now, predictor=state.predictor)
    asked = live.questions(state, report.classes, now, endpoint="127.0.0.1:1", key=str(files.key))
    observed = {"user@contoso.com": "accepted"}  # into the tenant; every relay refused
    answers = [
        Answer(q, "550 5.7.64 TenantAttribution; Relay Access Denied", "no-connector")
        if q.address not in observed
        else Answer(q, "250 2.1.5 Recipient OK", "accepted")
        for q in asked
    ]
    rows = {row.row.id: row for row in live.compare(state, report.classes, answers, now)}
    assert rows["into-tenant"].agrees and rows["into-tenant"].would_agree == ()
    for class_id in ("own-domain", "foreign-sender", "forwarded", "null-sender-bounce"):
        assert not rows[class_id].agrees
        assert rows[class_id].would_agree == (
            ("host_connector_name_must_be_accepted", "host_connector_name_must_be_accepted = true"),
        )
