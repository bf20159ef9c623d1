"""Client-submission routes (SPEC §5.4, issue 18 point 3): SMTP AUTH to smtp.office365.com, read
from private Postfix configurations with the real postconf and postmap."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from policyd.rules import outcomes, submission
from policyd.rules.assumptions import Assumptions
from policyd.rules.predict import RecipientPrediction
from policyd.rules.reasons import BY_ID
from policyd.sources.postfix import read_postfix
from policyd.sources.state import load_state
from policyd.tools import doctor
from policyd.tools.doctor import tenant
from policyd.tools.doctor.tenant import route_samples
from tests.test_postfix_source import check_json, first_address, settle, site

pytestmark = pytest.mark.postfix

NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
POSTMAP = "/usr/sbin/postmap"
SUBMISSION = "[smtp.office365.com]:587"
TENANT = '[tenant]\naccepted_domains = ["contoso.com"]\n'
#: The issue's first input: sender-dependent authentication, one entry for app@contoso.com.
FIRST_INPUT = {
    "relayhost": SUBMISSION,
    "smtp_sasl_auth_enable": "yes",
    "smtp_sender_dependent_authentication": "yes",
    "smtp_sasl_password_maps": "hash:@DIR@/sasl_passwd",
    "smtp_tls_security_level": "encrypt",
}
SECRET = "Tr0ub4dor-secret"


def submission_site(
    tmp_path: Path,
    main: dict[str, str] | None = None,
    toml: str = "",
    passwords: str = f"app@contoso.com app@contoso.com:{SECRET}\n",
    master_extra: str = "",
) -> Path:
    """The issue's first input (``main`` changes it), its hash: password map built with the real
    postmap; the m365-policyd.toml's path."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = site(
        tmp_path,
        {**FIRST_INPUT, **(main or {})},
        TENANT + toml,
        {"sasl_passwd": passwords},
        master_extra=master_extra,
    )
    table = tmp_path / "postfix" / "sasl_passwd"
    subprocess.run([POSTMAP, f"hash:{table}"], check=True)
    return config


def predict(
    config: Path, sender: str, recipient: str = "kate@fabrikam.example"
) -> RecipientPrediction:
    state = load_state(str(config), 0)
    prediction, _ = state.predictor.predict(sender, recipient, (recipient,), NOW)
    return prediction


# --- the first input ---------------------------------------------------------------------


def test_first_input_other_sender_and_null_sender_get_no_credentials(tmp_path: Path) -> None:
    """relayhost = [smtp.office365.com]:587 with sender-dependent authentication and an entry for
    app@contoso.com only: other@contoso.com and the null sender go out without AUTH (530 5.7.57);
    app@contoso.com logs in as itself; check's JSON and exit status say so and never show the
    password."""
    config = submission_site(tmp_path)
    status, result = check_json(config, "other@contoso.com", "kate@fabrikam.example")
    address = first_address(result)
    assert status == 1
    assert address["reason"] == "submission-no-credentials"
    assert address["reply"] == "530 5.7.57 Client not authenticated to send mail"
    assert "other@contoso.com, smtp.office365.com, [smtp.office365.com]:587" in str(
        address["explanation"]
    )
    assert "envelope only" in str(address["explanation"])
    status, result = check_json(config, "", "kate@fabrikam.example")
    assert (status, first_address(result)["reason"]) == (1, "submission-no-credentials")
    status, result = check_json(config, "app@contoso.com", "kate@fabrikam.example")
    address = first_address(result)
    assert (status, address["reason"]) == (0, "submission-accepted")
    assert "logs in as app@contoso.com" in str(address["explanation"])
    assert SECRET not in str(result)


def test_next_hop_entry_serves_every_sender_and_the_null_sender(tmp_path: Path) -> None:
    """An entry for the next hop [smtp.office365.com]:587 logs every sender in (the sender step
    finds nothing first); the null sender then follows submission_null_sender_refused."""
    config = submission_site(
        tmp_path, passwords=f"[smtp.office365.com]:587 app@contoso.com:{SECRET}\n"
    )
    assert predict(config, "app@contoso.com").reason == "submission-accepted"
    null = predict(config, "")
    assert null.reason == "submission-accepted"
    assert null.assumptions == ("submission_null_sender_refused",)
    assert "submission_null_sender_refused = false" in null.explanation
    refused = submission_site(
        tmp_path / "refused",
        toml="[assumptions]\nsubmission_null_sender_refused = true\n",
        passwords=f"[smtp.office365.com]:587 app@contoso.com:{SECRET}\n",
    )
    null = predict(refused, "")
    assert (null.verdict, null.reason) == ("reject", "submission-sender-not-login")
    assert null.reply == BY_ID["submission-sender-not-login"].reply


def test_host_name_entry_is_found_before_the_next_hop(tmp_path: Path) -> None:
    """smtp(8) asks the remote host name (smtp.office365.com) before the next hop as written."""
    config = submission_site(
        tmp_path,
        passwords=(
            f"smtp.office365.com host@contoso.com:{SECRET}\n"
            f"[smtp.office365.com]:587 hop@contoso.com:{SECRET}\n"
        ),
    )
    assert "logs in as host@contoso.com" in predict(config, "host@contoso.com").explanation


def test_sender_without_the_login_follows_submission_sender_must_be_login(tmp_path: Path) -> None:
    """A sender that is not the login and that no send_as list covers is accepted under the
    default and refused 5.7.60 under submission_sender_must_be_login = true, naming the key."""
    passwords = f"[smtp.office365.com]:587 app@contoso.com:{SECRET}\n"
    config = submission_site(tmp_path, passwords=passwords)
    accepted = predict(config, "alerts@contoso.com")
    assert accepted.reason == "submission-accepted"
    assert accepted.assumptions == ("submission_sender_must_be_login",)
    strict = submission_site(
        tmp_path / "strict",
        toml="[assumptions]\nsubmission_sender_must_be_login = true\n",
        passwords=passwords,
    )
    refused = predict(strict, "alerts@contoso.com")
    assert (refused.verdict, refused.reason) == ("reject", "submission-sender-not-login")
    assert refused.code == "5.7.60"
    assert "submission_sender_must_be_login = true" in refused.explanation


def test_send_as_list_decides_without_assumption(tmp_path: Path) -> None:
    """With a send_as list for the login, listed addresses and *@domain patterns pass, anything
    else is refused 5.7.60 whatever the assumption, and no assumption is named."""
    config = submission_site(
        tmp_path,
        toml='[submission]\nsend_as = { "App@Contoso.com" = ["*@Fabrikam.example", '
        '"alerts@contoso.com"] }\n',
        passwords=f"[smtp.office365.com]:587 app@contoso.com:{SECRET}\n",
    )
    for sender in ("alerts@contoso.com", "noreply@fabrikam.example", "APP@contoso.com"):
        prediction = predict(config, sender)
        assert (prediction.reason, prediction.assumptions) == ("submission-accepted", ()), sender
    refused = predict(config, "other@contoso.com")
    assert (refused.reason, refused.assumptions) == ("submission-sender-not-login", ())
    assert "neither that mailbox nor listed" in refused.explanation


def test_sasl_off_in_master_cf_means_no_credentials(tmp_path: Path) -> None:
    """A master.cf -o smtp_sasl_auth_enable=no on the delivering service wins over main.cf."""
    config = submission_site(
        tmp_path,
        main={"relayhost": "", "default_transport": f"submit:{SUBMISSION}"},
        master_extra=(
            "submit    unix  -       -       n       -       -       smtp\n"
            "  -o smtp_sasl_auth_enable=no\n"
        ),
    )
    prediction = predict(config, "app@contoso.com")
    assert prediction.reason == "submission-no-credentials"
    assert "master.cf: submit/unix -o smtp_sasl_auth_enable" in prediction.explanation


def test_unreadable_password_map_predicts_no_refusal(tmp_path: Path) -> None:
    """A password map the daemon cannot open is a load warning, not a configuration error, and
    a submission route is then accepted under that doubt, saying why."""
    config = submission_site(tmp_path)
    (tmp_path / "postfix" / "sasl_passwd.db").unlink()
    state = load_state(str(config), 0)
    assert state.postfix is not None
    assert any("smtp_sasl_password_maps" in w for w in state.postfix.warnings)
    prediction = predict(config, "other@contoso.com")
    assert prediction.reason == "submission-accepted"
    assert "whether smtp(8) authenticates is unknown" in prediction.explanation


# --- doctor ---------------------------------------------------------------------------------------


def doctor_report(config: Path) -> doctor.Report:
    """doctor as ``m365-policyd doctor`` runs it: the state's router and the routed samples."""
    state = load_state(str(config), 0)
    assert state.postfix is not None
    facts = read_postfix(
        state.config.postfix.config_directory, route_samples(state.config), state.postfix.view
    )
    return doctor.audit(state.config, now=NOW, postfix=facts, router=state.router)


def check_of(report: doctor.Report, check_id: str) -> doctor.Check:
    return next(check for check in report.checks if check.id == check_id)


def test_doctor_on_the_first_input(tmp_path: Path) -> None:
    """The issue's first input: doctor's summary speaks of 530 5.7.57 and SMTP AUTH, never of
    5.7.64; Basic authentication (no xoauth2 in smtp_sasl_mechanism_filter) is reported as
    retiring; TLS is mandatory, so no TLS warning; no password appears anywhere."""
    report = doctor_report(submission_site(tmp_path))
    summary = check_of(report, "summary-mail-classes")
    assert "530 5.7.57 Client not authenticated to send mail" in summary.finding
    assert "5.7.64" not in summary.finding
    assert "smtp_sasl_auth_enable" in summary.fix
    assert {row.reason for row in report.classes} == {"submission-no-credentials"}
    basic = check_of(report, "postfix-submission-basic-auth")
    assert basic.status == "warning"
    assert "535 5.7.139" in basic.finding and "550 5.7.30" in basic.finding
    assert report.status_of("postfix-submission-tls") is None
    assert SECRET not in str(report.as_json())


def test_doctor_on_a_pure_smtp_auth_relay_skips_the_connector_checks(tmp_path: Path) -> None:
    """The issue's first input routes every class of mail to smtp.office365.com: the certificate
    and connector checks say they do not apply (notes, no 5.7.64 anywhere), and the bounce check
    speaks of the SMTP AUTH endpoint and 530 5.7.57, not of a certificate connector."""
    report = doctor_report(submission_site(tmp_path))
    scoped = [
        c for c in report.checks if c.area == "certificate" or c.id in tenant.CONNECTOR_CHECKS
    ]
    assert {c.id for c in scoped} >= {
        "certificate-configured",
        "tenant-onprem-connector",
        "tenant-attribution",
        "tenant-egress-addresses",
        "postfix-cert-file",
    }
    for check in scoped:
        assert (check.status, check.fix) == ("note", ""), check
        assert check.finding.startswith("Does not apply: "), check
    assert not [c for c in report.checks if "5.7.64" in c.finding + c.fix]
    bounces = check_of(report, "postfix-null-sender-bounces")
    assert "certificate connector" not in bounces.finding
    assert "SMTP AUTH client-submission endpoint" in bounces.finding
    assert "530 5.7.57" in bounces.finding and "[submission-no-credentials]" in bounces.finding
    assert check_of(report, "tenant-accepted-domains").status == "ok"


def test_doctor_with_some_mail_through_a_connector_scopes_the_checks(tmp_path: Path) -> None:
    """transport_maps sends mail for contoso.com to the tenant's MX endpoint, everything else
    goes to smtp.office365.com: the connector checks still report (no connector matches: error),
    naming the mail they apply to and the mail that goes to the SMTP AUTH endpoint."""
    mx = "[contoso-com.mail.protection.outlook.com]:25"
    config = submission_site(tmp_path, {"transport_maps": "texthash:@DIR@/transport"})
    (tmp_path / "postfix" / "transport").write_text(f"contoso.com smtp:{mx}\n")
    settle(tmp_path / "postfix")
    report = doctor_report(config)
    into = next(row for row in report.classes if row.id == "into-tenant")
    assert into.reason == "recipient-in-tenant"
    attribution = check_of(report, "tenant-attribution")
    assert attribution.status == "error"
    assert attribution.finding.startswith("For mail into the tenant (the mail that reaches a ")
    assert "own-domain senders, foreign senders" in attribution.finding
    assert "5.7.64 TenantAttribution" in attribution.finding
    assert check_of(report, "tenant-accepted-domains").finding.startswith("Accepted domains")


def test_doctor_without_submission_routes_is_unchanged(tmp_path: Path) -> None:
    """A connector relay (the MX endpoint for every route) keeps the checks as they were."""
    mx = "[contoso-com.mail.protection.outlook.com]:25"
    report = doctor_report(submission_site(tmp_path, {"relayhost": mx}))
    attribution = check_of(report, "tenant-attribution")
    assert attribution.status == "error"
    assert attribution.finding.startswith("No connector attributes this server")
    bounces = check_of(report, "postfix-null-sender-bounces")
    assert "relays only through a certificate connector" in bounces.finding


def test_doctor_xoauth2_and_weak_tls(tmp_path: Path) -> None:
    """smtp_sasl_mechanism_filter = xoauth2 is not Basic authentication; a submission route at
    TLS level may is warned about (AUTH is offered only after STARTTLS)."""
    report = doctor_report(
        submission_site(
            tmp_path,
            {"smtp_sasl_mechanism_filter": "xoauth2", "smtp_tls_security_level": "may"},
        )
    )
    assert report.status_of("postfix-submission-basic-auth") is None
    tls = check_of(report, "postfix-submission-tls")
    assert tls.status == "warning"
    assert "main.cf: smtp_tls_security_level = may" in tls.finding


def test_doctor_last_input_credentials_for_the_mx_endpoint(tmp_path: Path) -> None:
    """The issue's last input: relayhost = [contoso-com.mail.protection.outlook.com]:25 with a
    password map entry for it: doctor warns that the credentials are never used, naming the
    login and not the password; without such an entry it says nothing."""
    mx = "[contoso-com.mail.protection.outlook.com]:25"
    config = submission_site(
        tmp_path,
        {"relayhost": mx, "smtp_sender_dependent_authentication": "no"},
        passwords=f"{mx} relay@contoso.com:{SECRET}\n",
    )
    report = doctor_report(config)
    unused = check_of(report, "postfix-sasl-unused")
    assert unused.status == "warning"
    assert f"entry for {mx} (login relay@contoso.com)" in unused.finding
    assert "never used" in unused.finding
    assert SECRET not in str(report.as_json())
    assert report.status_of("postfix-submission-basic-auth") is None
    clean = submission_site(
        tmp_path / "clean",
        {"relayhost": mx},
        passwords=f"[smtp.office365.com]:587 relay@contoso.com:{SECRET}\n",
    )
    assert doctor_report(clean).status_of("postfix-sasl-unused") is None


# --- pure pieces ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sender", "expected"),
    [
        ("app@contoso.com", True),
        ("APP@contoso.com", True),
        ("x@fabrikam.example", True),
        ("x@sub.fabrikam.example", False),
        ("alerts@contoso.com", True),
        ("other@contoso.com", False),
    ],
)
def test_may_send_as(sender: str, expected: bool) -> None:
    """The login itself, listed addresses (any case) and *@domain (exact domain) may be used."""
    send_as = {"app@contoso.com": ("*@fabrikam.example", "alerts@contoso.com")}
    assert submission.may_send_as("app@contoso.com", sender, send_as) is expected
    assert submission.may_send_as("bob@contoso.com", sender, send_as) is (
        True if sender.casefold() == "bob@contoso.com" else None
    )


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        ("530 5.7.57 Client not authenticated to send mail [AM0PR01CA0001]", "auth-required"),
        (
            "550 5.7.60 SMTP; Client does not have permissions to send as this sender",
            "send-as-denied",
        ),
        (
            "554 5.2.252 SendAsDenied; app@contoso.com not allowed to send as other@contoso.com",
            "send-as-denied",
        ),
        (
            "554 5.2.0 STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAs"
            "Denied",
            "send-as-denied",
        ),
        (
            "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the "
            "Tenant",
            "basic-auth-disabled",
        ),
        (
            "550 5.7.30 Basic authentication is not supported for Client Submission",
            "basic-auth-disabled",
        ),
        ("535 5.7.3 Authentication unsuccessful", "auth-failed"),
        ("535 Authentication failed", "auth-failed"),
    ],
)
def test_submission_replies_classify(reply: str, kind: str) -> None:
    """The SMTP AUTH endpoint's replies get the observed kinds of SPEC §8."""
    assert outcomes.classify_reply(reply) == kind


def test_lookup_keys_follow_smtp_sasl_passwd_lookup() -> None:
    """Sender (only with sender-dependent authentication and a non-null sender), host, next hop."""
    sasl = submission.Sasl("smtp", True, "", "hash:x", "", True, "", ":", "", "")
    assert submission.lookup_keys(sasl, "a@contoso.com", SUBMISSION) == (
        ("a@contoso.com", True),
        ("smtp.office365.com", False),
        (SUBMISSION, False),
    )
    assert [k for k, _ in submission.lookup_keys(sasl, "", SUBMISSION)] == [
        "smtp.office365.com",
        SUBMISSION,
    ]


def test_assumption_defaults_never_refuse() -> None:
    """Both submission assumptions default to false (accept, and say so)."""
    defaults = Assumptions()
    assert not defaults.submission_sender_must_be_login
    assert not defaults.submission_null_sender_refused


def test_doctor_reads_the_tls_level_for_the_submission_next_hop(tmp_path: Path) -> None:
    """smtp_tls_security_level = may, but smtp_tls_policy_maps makes TLS mandatory for
    [smtp.office365.com]:587: the session is encrypted, so no postfix-submission-tls warning;
    the same map with `may` for that next hop is warned about, naming the map."""
    for level, warned in (("encrypt", False), ("may", True)):
        directory = tmp_path / level
        policy = directory / "postfix" / "tls_policy"
        main = {
            "smtp_sasl_mechanism_filter": "xoauth2",
            "smtp_tls_security_level": "may",
            "smtp_tls_policy_maps": f"texthash:{policy}",
        }
        config = submission_site(directory, main)
        policy.write_text(f"{SUBMISSION} {level}\n")
        report = doctor_report(config)
        tls = report.status_of("postfix-submission-tls")
        assert (tls == "warning") is warned, (level, tls)
        if warned:
            assert "smtp_tls_policy_maps" in check_of(report, "postfix-submission-tls").finding


def test_probe_does_not_ask_the_smtp_auth_endpoint(tmp_path: Path) -> None:
    """probe never logs in (it reads no password), so on an SMTP AUTH route Microsoft 365 could
    only answer 530 5.7.57: such addresses are listed as not probed, with the reason, and no
    question is planned (no session is opened)."""
    import io

    from policyd.tools import probe

    state = load_state(str(submission_site(tmp_path)), 0)
    questions, skipped = probe.plan(
        state, "app@contoso.com", ["kate@fabrikam.example", "joe@fabrikam.example"], NOW
    )
    assert questions == []
    assert [(a.address, a.reason) for a in skipped] == [
        ("kate@fabrikam.example", "submission-accepted"),
        ("joe@fabrikam.example", "submission-accepted"),
    ]
    out = io.StringIO()
    probe.write_text([], skipped, out)
    assert "kate@fabrikam.example: sent to the SMTP AUTH endpoint" in out.getvalue()
    assert "a probe never logs in (submission-accepted), not probed" in out.getvalue()
