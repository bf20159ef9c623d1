"""The Microsoft 365 stand-in's own rule and SMTP behaviour (no Postfix needed)."""

from __future__ import annotations

import smtplib
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.e2e.standin import (
    ATTR36,
    AUTH_FAILED,
    AUTH_REQUIRED,
    DIRECT_SEND,
    NO_CONNECTOR,
    OK,
    PARTNER_RESTRICTED,
    SEND_AS_DENIED,
    WRONG_REGION,
    Connector,
    PeerCertificate,
    StandIn,
    SubmissionView,
    TenantView,
    relay_verdict,
    submission_verdict,
)
from tests.pki import TestPKI

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
VALID = (NOW - timedelta(days=1), NOW + timedelta(days=30))

IP_TENANT = TenantView(("contoso.com",), (Connector("ip", sender_ip_addresses=("127.0.0.10/32",)),))
CERT_TENANT = TenantView(
    ("contoso.com",), (Connector("cert", tls_sender_certificate_name="*.contoso.com"),)
)


def cert(*names: str, window: tuple[datetime, datetime] = VALID) -> PeerCertificate:
    return PeerCertificate(names, *window)


def verdict(
    tenant: TenantView,
    mail_from: str,
    rcpt: str = "ext@example.net",
    *,
    ip: str = "127.0.0.10",
    certificate: PeerCertificate | None = None,
) -> str:
    return relay_verdict(
        tenant, source_ip=ip, certificate=certificate, mail_from=mail_from, recipient=rcpt, now=NOW
    )


def test_ip_connector_relays_accepted_sender() -> None:
    """An IP-attributed connection relays mail whose P1 sender domain is accepted."""
    assert verdict(IP_TENANT, "app@contoso.com") == OK


@pytest.mark.parametrize("sender", ["john@fabrikam.com", ""])
def test_ip_connector_refuses_foreign_and_null_sender(sender: str) -> None:
    """An IP-attributed connection refuses a foreign or null sender with ATTR36."""
    assert verdict(IP_TENANT, sender) == ATTR36


def test_unknown_source_is_tenant_attribution() -> None:
    """A source address in no connector and no certificate gives TenantAttribution."""
    assert verdict(IP_TENANT, "app@contoso.com", ip="127.0.0.20") == NO_CONNECTOR


def test_recipient_in_tenant_is_not_a_relay() -> None:
    """A recipient in an accepted domain is delivered whatever the attribution."""
    assert verdict(IP_TENANT, "john@fabrikam.com", "kate@CONTOSO.com.", ip="127.0.0.99") == OK


@pytest.mark.parametrize("sender", ["john@fabrikam.com", "", "app@contoso.com"])
def test_certificate_connector_with_accepted_name_relays_anything(sender: str) -> None:
    """A certificate one label under an accepted domain relays foreign and null senders too."""
    assert verdict(CERT_TENANT, sender, ip="127.0.0.20", certificate=cert("mail.contoso.com")) == OK


def test_certificate_too_deep_is_attr36_for_foreign_sender() -> None:
    """A certificate two labels under the accepted domain matches the connector but gives ATTR36."""
    deep = cert("mail.eu.contoso.com")
    assert verdict(CERT_TENANT, "john@fabrikam.com", ip="127.0.0.20", certificate=deep) == ATTR36
    assert verdict(CERT_TENANT, "app@contoso.com", ip="127.0.0.20", certificate=deep) == OK


def test_expired_certificate_does_not_attribute() -> None:
    """An expired certificate matches no connector: TenantAttribution."""
    old = cert("mail.contoso.com", window=(NOW - timedelta(days=90), NOW - timedelta(seconds=1)))
    assert verdict(CERT_TENANT, "app@contoso.com", ip="127.0.0.20", certificate=old) == NO_CONNECTOR


def test_certificate_outside_connector_name() -> None:
    """A certificate named outside the connector's domain matches no connector."""
    other = cert("mail.fabrikam.com")
    assert (
        verdict(CERT_TENANT, "app@contoso.com", ip="127.0.0.20", certificate=other) == NO_CONNECTOR
    )


def test_disabled_and_partner_connectors_never_attribute() -> None:
    """Disabled or Partner connectors do not match, by IP or certificate."""
    tenant = TenantView(
        ("contoso.com",),
        (
            Connector("off", enabled=False, sender_ip_addresses=("127.0.0.10",)),
            Connector(
                "partner", connector_type="Partner", tls_sender_certificate_name="*.contoso.com"
            ),
        ),
    )
    good = cert("mail.contoso.com")
    assert verdict(tenant, "app@contoso.com", certificate=good) == NO_CONNECTOR


def test_exact_connector_name_and_wildcard_certificate() -> None:
    """A connector naming one host matches a wildcard certificate covering it, not a deeper one."""
    tenant = TenantView(
        ("contoso.com",), (Connector("c", tls_sender_certificate_name="mail.contoso.com"),)
    )
    assert verdict(tenant, "", ip="127.0.0.20", certificate=cert("*.contoso.com")) == OK
    assert (
        verdict(tenant, "", ip="127.0.0.20", certificate=cert("*.eu.contoso.com")) == NO_CONNECTOR
    )


def test_ipv6_source_never_matches_ip_connector() -> None:
    """SenderIPAddresses are IPv4 only; an IPv6 source is not attributed by address."""
    tenant = TenantView(("contoso.com",), (Connector("ip", sender_ip_addresses=("0.0.0.0/0",)),))
    assert verdict(tenant, "app@contoso.com", ip="::1") == NO_CONNECTOR


FILTER = Connector(
    "filtering service",
    connector_type="Partner",
    sender_ip_addresses=("127.0.0.30/32",),
    tls_sender_certificate_name="*.filter.example",
    sender_domains=("*",),
    restrict_domains_to_ip_addresses=True,
)
LOCKED = TenantView(
    ("contoso.com",), (Connector("ip", sender_ip_addresses=("127.0.0.10/32",)), FILTER)
)


@pytest.mark.parametrize(
    ("ip", "sender", "rcpt", "reply"),
    [
        ("127.0.0.20", "app@contoso.com", "kate@contoso.com", PARTNER_RESTRICTED),
        ("127.0.0.20", "", "kate@contoso.com", PARTNER_RESTRICTED),  # "*" covers the null sender
        ("127.0.0.30", "app@contoso.com", "kate@contoso.com", OK),  # from the partner's address
        ("127.0.0.10", "app@contoso.com", "kate@contoso.com", OK),  # OnPremises attributes it
        ("127.0.0.20", "app@contoso.com", "ext@example.net", NO_CONNECTOR),  # relay: 5.7.64
    ],
)
def test_restricting_partner_connector(ip: str, sender: str, rcpt: str, reply: str) -> None:
    """A Partner connector with RestrictDomainsToIPAddresses and SenderDomains * refuses mail
    into the tenant from other addresses with 5.7.51, unless an OnPremises connector matches."""
    assert verdict(LOCKED, sender, rcpt, ip=ip) == reply


def test_restricting_partner_connector_by_certificate_and_domain_list() -> None:
    """RestrictDomainsToCertificate is met by its certificate; a SenderDomains list covers only
    its domains."""
    by_cert = TenantView(
        ("contoso.com",),
        (
            Connector(
                "filter",
                connector_type="Partner",
                tls_sender_certificate_name="*.filter.example",
                sender_domains=("contoso.com",),
                restrict_domains_to_certificate=True,
            ),
        ),
    )
    mine = cert("mx1.filter.example")
    assert verdict(by_cert, "a@contoso.com", "b@contoso.com", certificate=mine) == OK
    assert verdict(by_cert, "a@contoso.com", "b@contoso.com") == PARTNER_RESTRICTED
    assert verdict(by_cert, "a@fabrikam.com", "b@contoso.com") == OK


def test_reject_direct_send_and_partner_authentication() -> None:
    """RejectDirectSend refuses accepted-domain senders that no connector matches with 5.7.68;
    a matching Partner connector authenticates them; foreign senders are not Direct Send."""
    scanner = Connector("scanner", connector_type="Partner", sender_ip_addresses=("127.0.0.30",))
    tenant = TenantView(("contoso.com",), (scanner,), reject_direct_send=True)
    assert verdict(tenant, "scan@contoso.com", "b@contoso.com", ip="127.0.0.20") == DIRECT_SEND
    assert verdict(tenant, "scan@contoso.com", "b@contoso.com", ip="127.0.0.30") == OK
    assert verdict(tenant, "john@fabrikam.com", "b@contoso.com", ip="127.0.0.20") == OK


def test_retired_smart_host_answers_wrong_region() -> None:
    """Playing a retired smart host, the stand-in defers every recipient with 4.4.62 ATTR35."""
    tenant = TenantView(("contoso.com",), retired_smart_host=True)
    assert verdict(tenant, "app@contoso.com", "b@contoso.com") == WRONG_REGION
    assert WRONG_REGION.startswith("451 4.4.62 ")


def test_smtp_session_records_certificate_and_verdicts(tmp_path: Path) -> None:
    """Over STARTTLS with a client certificate the rule is applied per RCPT and recorded."""
    pki = TestPKI()
    server_cert, server_key = pki.write(tmp_path, pki.leaf("standin", ["localhost"]), "server")
    client_cert, client_key = pki.write(
        tmp_path, pki.leaf("mail.contoso.com", ["mail.contoso.com"])
    )
    ca = pki.write_ca_bundle(tmp_path)
    with StandIn(cert_file=server_cert, key_file=server_key, ca_file=ca, tenant=CERT_TENANT) as srv:
        context = ssl.create_default_context(cafile=str(ca))
        context.check_hostname = False
        context.load_cert_chain(str(client_cert), str(client_key))
        with smtplib.SMTP(srv.host, srv.port, timeout=10) as smtp:
            smtp.starttls(context=context)
            smtp.ehlo("mta.contoso.com")
            smtp.mail("john@fabrikam.com")
            assert smtp.rcpt("ext@example.net")[0] == 250
            smtp.sendmail("", ["ext2@example.net"], b"Subject: x\r\n\r\nbody\r\n")
        with smtplib.SMTP(srv.host, srv.port, timeout=10) as plain:
            plain.mail("john@fabrikam.com")
            code, text = plain.rcpt("ext@example.net")
            assert (code, text.decode()) == (550, NO_CONNECTOR[4:] + " [ext@example.net]")
        done = srv.wait_for(lambda t: True, count=3, timeout=5)
    tls = [t for t in done if t.tls]
    assert tls[0].certificate is not None and tls[0].certificate.names == ("mail.contoso.com",)
    assert tls[1].mail_from == "" and tls[1].accepted == ["ext2@example.net"]
    assert tls[1].message["Subject"] == "x"
    assert [t.refused for t in done if not t.tls] == [["ext@example.net"]]


ACCOUNTS = SubmissionView(
    logins={"app@contoso.com": "app-secret", "relay@contoso.com": "relay-secret"},
    send_as={"relay@contoso.com": ("*@contoso.com", "partner@fabrikam.example")},
)


@pytest.mark.parametrize(
    ("login", "sender", "reply"),
    [
        ("", "app@contoso.com", AUTH_REQUIRED),
        ("", "", AUTH_REQUIRED),
        ("app@contoso.com", "App@Contoso.com", OK),
        ("app@contoso.com", "alerts@contoso.com", SEND_AS_DENIED),
        ("relay@contoso.com", "alerts@contoso.com", OK),
        ("relay@contoso.com", "partner@fabrikam.example", OK),
        ("relay@contoso.com", "john@fabrikam.example", SEND_AS_DENIED),
        ("relay@contoso.com", "x@sub.contoso.com", SEND_AS_DENIED),
        ("relay@contoso.com", "", OK),
    ],
)
def test_submission_verdict(login: str, sender: str, reply: str) -> None:
    """No AUTH: 530 5.7.57; the login itself or a send-as entry (address or *@domain, exact
    domain): accepted; anything else 550 5.7.60; the null sender as null_sender_refused says."""
    assert submission_verdict(ACCOUNTS, login=login, mail_from=sender) == reply
    assert AUTH_REQUIRED.startswith("530 5.7.57 ") and SEND_AS_DENIED.startswith("550 5.7.60 ")


def test_submission_verdict_null_sender_refused() -> None:
    strict = SubmissionView(ACCOUNTS.logins, ACCOUNTS.send_as, null_sender_refused=True)
    assert submission_verdict(strict, login="app@contoso.com", mail_from="") == SEND_AS_DENIED


def test_smtp_auth_port(tmp_path: Path) -> None:
    """The second port: AUTH only after STARTTLS; MAIL without AUTH gets 530 5.7.57; a wrong
    password 535 5.7.3; PLAIN and LOGIN log in; send-as is answered per RCPT with 5.7.60; the
    relay port next to it knows nothing of AUTH."""
    pki = TestPKI()
    server_cert, server_key = pki.write(tmp_path, pki.leaf("standin", ["localhost"]), "server")
    ca = pki.write_ca_bundle(tmp_path)
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False
    with StandIn(
        cert_file=server_cert, key_file=server_key, ca_file=ca, submission=ACCOUNTS
    ) as srv:
        assert srv.submission_port not in (0, srv.port)
        with smtplib.SMTP(srv.host, srv.submission_port, timeout=10) as smtp:
            smtp.ehlo("mta.contoso.com")
            assert not smtp.has_extn("auth")
            smtp.starttls(context=context)
            smtp.ehlo("mta.contoso.com")
            assert smtp.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
            code, text = smtp.mail("app@contoso.com")
            assert f"{code} {text.decode()}" == AUTH_REQUIRED
            with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
                smtp.login("app@contoso.com", "wrong")
            assert f"{failed.value.smtp_code} {failed.value.smtp_error.decode()}" == AUTH_FAILED
        with smtplib.SMTP(srv.host, srv.submission_port, timeout=10) as smtp:
            smtp.starttls(context=context)
            smtp.ehlo("mta.contoso.com")
            smtp.user, smtp.password = "relay@contoso.com", "relay-secret"
            assert smtp.auth("LOGIN", smtp.auth_login)[0] == 235
            smtp.mail("john@fabrikam.example")
            code, text = smtp.rcpt("ext@example.net")
            assert f"{code} {text.decode()}" == f"{SEND_AS_DENIED} [ext@example.net]"
            smtp.rset()
            smtp.sendmail("alerts@contoso.com", ["ext@example.net"], b"Subject: y\r\n\r\nz\r\n")
        with smtplib.SMTP(srv.host, srv.submission_port, timeout=10) as smtp:
            smtp.starttls(context=context)
            smtp.ehlo("mta.contoso.com")
            smtp.user, smtp.password = "app@contoso.com", "app-secret"
            assert smtp.auth("PLAIN", smtp.auth_plain)[0] == 235
            smtp.sendmail("app@contoso.com", ["ext@example.net"], b"Subject: w\r\n\r\nz\r\n")
        with smtplib.SMTP(srv.host, srv.port, timeout=10) as relay:
            relay.starttls(context=context)
            relay.ehlo("mta.contoso.com")
            assert not relay.has_extn("auth")
        done = srv.wait_for(lambda t: t.submission, count=4, timeout=5)
    assert [(t.login, t.mail_from, t.mail_reply[:3]) for t in done] == [
        ("", "app@contoso.com", "530"),
        ("relay@contoso.com", "john@fabrikam.example", "250"),
        ("relay@contoso.com", "alerts@contoso.com", "250"),
        ("app@contoso.com", "app@contoso.com", "250"),
    ]
    assert done[1].refused == ["ext@example.net"]
    assert [t.accepted for t in done[2:]] == [["ext@example.net"], ["ext@example.net"]]
    assert done[3].message["Subject"] == "w"
