"""Named assumptions (SPEC §5.3): each key at both settings, named where a prediction depends on it.

Each key decides one point where Microsoft's texts disagree (``policyd/rules/assumptions.py``).
For every key the table below gives one envelope whose predicted kind changes with the key: the
prediction at each setting, and that it names the key in ``assumptions`` and in its explanation.
Then the places that show it: ``check`` (text and ``--json``), the prediction log line, the
configuration, and the rule that the defaults never predict a refusal on a doubtful point.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from policyd.constants import REJECT
from policyd.daemon.log import LogOutput
from policyd.engine.policy import PolicyEngine
from policyd.engine.stats import Stats
from policyd.errors import ConfigError
from policyd.rules import predict
from policyd.rules.assumptions import DEFAULT, DOUBTS, KEYS, Assumptions
from policyd.rules.model import (
    PARTNER,
    AcceptedDomain,
    CertificateFacts,
    InboundConnector,
    OnPrem,
    Tenant,
)
from policyd.rules.reasons import predicted_kind
from policyd.sources.config import load_config
from policyd.sources.state import load_state
from policyd.tools import cli
from tests.pki import TestPKI
from tests.tenants import IP_CONNECTOR

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
FAR_EGRESS = "198.51.100.7"  # in no connector
OUTSIDE = "kate@tailspintoys.com"

WILDCARD = InboundConnector("By certificate", tls_sender_certificate_name="*.contoso.com")
HOST_NAME = InboundConnector("Inbound from HCW", tls_sender_certificate_name="mail.contoso.com")


def cert(*sans: str, cn: str = "") -> CertificateFacts:
    """A valid, CA-issued certificate with subject CN ``cn`` and these SAN DNS names."""
    return CertificateFacts(
        path="/etc/postfix/client.pem",
        common_name=cn,
        dns_names=sans,
        not_before=NOW - 30 * DAY,
        not_after=NOW + 60 * DAY,
        chain_complete=True,
    )


def tenant(
    *connectors: InboundConnector,
    accepted: tuple[AcceptedDomain, ...] = (AcceptedDomain("contoso.com"),),
    reject_direct_send: bool = False,
) -> Tenant:
    return Tenant(accepted, connectors, reject_direct_send)


def onprem(egress: str = FAR_EGRESS, certificate: CertificateFacts | None = None) -> OnPrem:
    return OnPrem(egress_addresses=(ipaddress.ip_address(egress),), certificate=certificate)


def run(
    t: Tenant, o: OnPrem, sender: str, recipient: str = OUTSIDE, final: tuple[str, ...] = ()
) -> predict.RecipientPrediction:
    return predict.predict_recipient(
        recipient,
        final or (recipient,),
        sender=predict.sender_view(sender, t, o),
        tenant=t,
        onprem=o,
        attribution=predict.attribute(t, o, NOW),
    )


SUBDOMAINS = (AcceptedDomain("contoso.com", match_subdomains=True),)

# (case, key, tenant, onprem, sender, recipient, final, reason when true, reason when false)
CASES = [
    (
        "apex certificate name against *.contoso.com",
        "wildcard_connector_covers_apex",
        tenant(WILDCARD),
        onprem(certificate=cert("contoso.com", cn="contoso.com")),
        "",
        OUTSIDE,
        (),
        predict.CERTIFICATE_CONNECTOR,
        predict.NO_CONNECTOR,
    ),
    (
        "the matching name is only a SAN",
        "san_names_count",
        tenant(WILDCARD),
        onprem(certificate=cert("mail.contoso.com", cn="Contoso relay")),
        "",
        OUTSIDE,
        (),
        predict.CERTIFICATE_CONNECTOR,
        predict.NO_CONNECTOR,
    ),
    (
        "a host-name connector (the Hybrid Configuration Wizard's), only contoso.com accepted",
        "host_connector_name_must_be_accepted",
        tenant(HOST_NAME),
        onprem(certificate=cert("mail.contoso.com", cn="mail.contoso.com")),
        "",
        OUTSIDE,
        (),
        predict.NO_CONNECTOR,
        predict.CERTIFICATE_CONNECTOR,
    ),
    (
        "a subdomain sender under MatchSubDomains",
        "match_subdomains_covers_senders",
        tenant(IP_CONNECTOR, accepted=SUBDOMAINS),
        onprem("203.0.113.10"),
        "app@apps.contoso.com",
        OUTSIDE,
        (),
        predict.SENDER_ACCEPTED_DOMAIN,
        predict.SENDER_NOT_ACCEPTED,
    ),
    (
        "a certificate name under a MatchSubDomains domain, two labels deep",
        "match_subdomains_covers_senders",
        tenant(WILDCARD, accepted=SUBDOMAINS),
        onprem(certificate=cert("mail.eu.contoso.com", cn="mail.eu.contoso.com")),
        "",
        OUTSIDE,
        (),
        predict.CERTIFICATE_CONNECTOR,
        predict.NULL_SENDER,
    ),
    (
        "a foreign sender through a certificate connector",
        "foreign_sender_via_certificate",
        tenant(WILDCARD),
        onprem(certificate=cert("mail.contoso.com", cn="mail.contoso.com")),
        "john@fabrikam.com",
        OUTSIDE,
        (),
        predict.CERTIFICATE_CONNECTOR,
        predict.SENDER_NOT_ACCEPTED,
    ),
    (
        "a forward of a foreign sender through a certificate connector",
        "foreign_sender_via_certificate",
        tenant(WILDCARD),
        onprem(certificate=cert("mail.contoso.com", cn="mail.contoso.com")),
        "john@fabrikam.com",
        "kate@contoso.com",
        (OUTSIDE,),
        predict.CERTIFICATE_CONNECTOR,
        predict.FORWARDED,
    ),
]


def with_setting(t: Tenant, key: str, setting: bool) -> Tenant:
    return replace(t, assumptions=replace(DEFAULT, **{key: setting}))


@pytest.mark.parametrize("setting", [True, False])
@pytest.mark.parametrize(
    ("key", "t", "o", "sender", "recipient", "final", "if_true", "if_false"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_each_assumption_at_both_settings(
    key: str,
    t: Tenant,
    o: OnPrem,
    sender: str,
    recipient: str,
    final: tuple[str, ...],
    if_true: str,
    if_false: str,
    setting: bool,
) -> None:
    """At each setting the prediction is the one that setting means, and it names the key with
    its setting in ``assumptions`` and in the explanation, with the other setting's reason."""
    prediction = run(with_setting(t, key, setting), o, sender, recipient, final)
    expected, other = (if_true, if_false) if setting else (if_false, if_true)
    assert prediction.reason == expected
    assert key in prediction.assumptions
    setting_text = f"{key} = {'true' if setting else 'false'}"
    assert f"the assumption {setting_text}" in prediction.explanation
    assert f"set the other way, the prediction is {other}." in prediction.explanation


def test_every_deciding_key_has_a_case() -> None:
    """The table covers every key of the relay rule; the two submission keys, which need an SMTP
    AUTH route, have theirs in tests/test_submission.py; every key decides something."""
    deciding = {doubt.key for doubt in DOUBTS if doubt.decides}
    submission = {"submission_sender_must_be_login", "submission_null_sender_refused"}
    assert {case[1] for case in CASES} == deciding - submission
    assert deciding == {doubt.key for doubt in DOUBTS}


def test_a_prediction_that_does_not_depend_on_an_assumption_names_none() -> None:
    """The apex doubt does not matter when another name of the certificate matches for sure,
    nor does foreign_sender_via_certificate for an accepted-domain sender."""
    t = tenant(WILDCARD)
    o = onprem(certificate=cert("contoso.com", "mail.contoso.com", cn="mail.contoso.com"))
    prediction = run(t, o, "alerts@contoso.com")
    assert prediction.reason == predict.CERTIFICATE_CONNECTOR
    assert prediction.assumptions == ()
    assert "assumption" not in prediction.explanation


def test_a_doubt_that_changes_only_the_accepting_reason_is_not_named() -> None:
    """An own-domain sender relays by certificate or, without it, by the IP connector: both
    accepted, so the apex doubt is not named."""
    t = tenant(WILDCARD, IP_CONNECTOR)
    o = onprem("203.0.113.10", certificate=cert("contoso.com", cn="contoso.com"))
    prediction = run(with_setting(t, "wildcard_connector_covers_apex", False), o, "a@contoso.com")
    assert prediction.reason == predict.SENDER_ACCEPTED_DOMAIN
    assert prediction.assumptions == ()


def test_null_sender_still_relays_through_a_certificate_without_foreign_senders() -> None:
    """foreign_sender_via_certificate = false refuses foreign senders, never the null sender,
    which only the certificate path can relay."""
    t = with_setting(tenant(WILDCARD), "foreign_sender_via_certificate", False)
    o = onprem(certificate=cert("mail.contoso.com", cn="mail.contoso.com"))
    prediction = run(t, o, "")
    assert prediction.reason == predict.CERTIFICATE_CONNECTOR
    assert prediction.assumptions == ()


# --- doubtful points never refuse with the defaults ---------------------------------------------


def test_defaults_never_predict_a_refusal_on_a_doubtful_point() -> None:
    """For every case of the table, whatever the default setting is, it accepts (or refuses
    anyway under the other setting too): no default refusal depends on an assumption."""
    for _, key, t, o, sender, recipient, final, if_true, if_false in CASES:
        default = if_true if DEFAULT.value(key) else if_false
        prediction = run(t, o, sender, recipient, final)
        assert prediction.reason == default
        if prediction.verdict == REJECT:
            assert key not in prediction.assumptions, key


@pytest.mark.parametrize("setting", [True, False])
def test_a_subdomain_sender_is_never_predicted_to_get_5768(setting: bool) -> None:
    """RejectDirectSend with no connector and a sender accepted only through MatchSubDomains:
    no 5.7.68 at either setting; at true (where it would count) the explanation says why and
    names match_subdomains_covers_senders."""
    t = with_setting(
        tenant(IP_CONNECTOR, accepted=SUBDOMAINS, reject_direct_send=True),
        "match_subdomains_covers_senders",
        setting,
    )
    prediction = run(t, onprem(), "app@apps.contoso.com", "kate@contoso.com")
    assert prediction.reason == predict.RECIPIENT_IN_TENANT
    if setting:
        assert prediction.assumptions == ("match_subdomains_covers_senders",)
        assert "no 5.7.68 is predicted" in prediction.explanation
    else:
        assert prediction.assumptions == ()
    exact = run(t, onprem(), "app@contoso.com", "kate@contoso.com")
    assert exact.reason == predict.DIRECT_SEND_REJECTED  # the exact domain: no doubt


def test_partner_certificate_match_may_depend_on_an_assumption() -> None:
    """A restricting Partner connector matched only by the certificate's apex name: 5.7.51
    depends on wildcard_connector_covers_apex, and the default lets the mail in."""
    partner = InboundConnector(
        "Filtering service",
        connector_type=PARTNER,
        tls_sender_certificate_name="*.filter.example",
        sender_domains=("*",),
        restrict_domains_to_certificate=True,
    )
    o = onprem(certificate=cert("filter.example", cn="filter.example"))
    accepted = run(tenant(IP_CONNECTOR, partner), o, "a@contoso.com", "kate@contoso.com")
    assert accepted.reason == predict.RECIPIENT_IN_TENANT
    assert accepted.assumptions == ("wildcard_connector_covers_apex",)
    refused = run(
        with_setting(tenant(IP_CONNECTOR, partner), "wildcard_connector_covers_apex", False),
        o,
        "a@contoso.com",
        "kate@contoso.com",
    )
    assert refused.reason == predict.PARTNER_RESTRICTED
    assert refused.assumptions == ("wildcard_connector_covers_apex",)


def test_kinds_decide_dependence_not_reasons() -> None:
    """A flip that turns no-connector into ATTR36 changes the kind, so it is named even though
    both are refusals."""
    t = tenant(HOST_NAME)
    o = onprem(certificate=cert("mail.contoso.com", cn="mail.contoso.com"))
    prediction = run(t, o, "", OUTSIDE)  # null sender; certificate passes step 4
    assert prediction.reason == predict.CERTIFICATE_CONNECTOR
    strict = with_setting(t, "host_connector_name_must_be_accepted", True)
    refused = run(strict, o, "")
    assert (refused.reason, predicted_kind(refused.reason)) == (
        predict.NO_CONNECTOR,
        "no-connector",
    )


# --- configuration, check and the log line ------------------------------------------------------


def write_setup(directory: Path, assumptions: str = "") -> Path:
    """The Hybrid Configuration Wizard's connector (mail.contoso.com, only contoso.com
    accepted) with a real certificate for mail.contoso.com; ``assumptions`` are TOML lines."""
    pki = TestPKI()
    bundle = pki.write_ca_bundle(directory)
    cert_path, _ = pki.write(directory, pki.leaf("mail.contoso.com", ["mail.contoso.com"]))
    config = directory / "m365-policyd.toml"
    config.write_text(
        "[tenant]\n"
        'accepted_domains = ["contoso.com"]\n'
        "[[tenant.inbound_connector]]\n"
        'name = "Inbound from HCW"\n'
        'tls_sender_certificate_name = "mail.contoso.com"\n'
        "[onprem]\n"
        f'egress_addresses = ["{FAR_EGRESS}"]\n'
        f'certificate = "{cert_path.name}"\n'
        f'ca_bundle = "{bundle.name}"\n'
        "[policy]\n"
        'action = "defer"\n'
        f"[assumptions]\n{assumptions}"
    )
    return config


def test_assumptions_section_defaults_and_settings(tmp_path: Path) -> None:
    """[assumptions] left out gives SPEC §5.3's defaults; each key can be set."""
    assert load_config(str(write_setup(tmp_path))).tenant.assumptions == Assumptions()
    lines = "".join(f"{key} = {'false' if DEFAULT.value(key) else 'true'}\n" for key in KEYS)
    flipped = load_config(str(write_setup(tmp_path, lines))).tenant.assumptions
    assert all(flipped.value(key) != DEFAULT.value(key) for key in KEYS)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('san_names_count = "yes"', "expected a boolean (true or false)"),
        ("san_name_count = true", "unknown key (did you mean san_names_count?)"),
    ],
)
def test_assumption_errors_name_the_key(tmp_path: Path, line: str, problem: str) -> None:
    """A wrong type or an unknown assumption is a configuration error naming the key."""
    with pytest.raises(ConfigError) as caught:
        load_config(str(write_setup(tmp_path, line + "\n")))
    assert caught.value.key.startswith("assumptions.san_name")
    assert problem in caught.value.problem


@pytest.mark.parametrize("setting", ["false", "true"])
def test_check_names_the_assumption_in_text_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setting: str
) -> None:
    """check shows the assumption a prediction depends on: an ``assumes`` line with its setting
    and the explanation (text), ``"assumptions"`` per recipient and per address (--json)."""
    config = str(write_setup(tmp_path, f"host_connector_name_must_be_accepted = {setting}\n"))
    args = ["check", "-c", config, "--sender", "", "--recipient", OUTSIDE]
    code = cli.main(args)
    out = capsys.readouterr().out
    assert code == (1 if setting == "true" else 0)
    assert f"assumes  host_connector_name_must_be_accepted = {setting}" in out
    assert f"the assumption host_connector_name_must_be_accepted = {setting}" in out
    cli.main([*args, "--json"])
    (recipient,) = json.loads(capsys.readouterr().out)["recipients"]
    assert recipient["assumptions"] == ["host_connector_name_must_be_accepted"]
    assert recipient["addresses"][0]["assumptions"] == ["host_connector_name_must_be_accepted"]
    assert recipient["reason"] == ("no-connector" if setting == "true" else "certificate-connector")


def test_check_json_lists_no_assumption_when_none_decides(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An own-domain recipient inside the tenant depends on nothing doubtful: empty lists."""
    config = str(write_setup(tmp_path))
    cli.main(["check", "-c", config, "--sender", "a@contoso.com", "--recipient", "b@contoso.com",
              "--json"])  # fmt: skip
    (recipient,) = json.loads(capsys.readouterr().out)["recipients"]
    assert recipient["assumptions"] == []
    assert recipient["addresses"][0]["assumptions"] == []


def test_the_prediction_log_line_names_the_assumption(tmp_path: Path) -> None:
    """The daemon's prediction record (one log line) carries the assumptions it depends on."""
    state = load_state(str(write_setup(tmp_path)), 1)
    records: list[Mapping[str, object]] = []
    engine = PolicyEngine(state, Stats(), time.time, records.append)  # the PKI's real clock
    request = {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "sender": "",
        "recipient": OUTSIDE,
        "instance": "a.1",
    }
    assert engine.handle(request, engine.new_session()) == "DUNNO"
    (record,) = records
    assert record["reason"] == "certificate-connector"
    assert record["assumptions"] == ("host_connector_name_must_be_accepted",)

    class Sink:
        text = ""

        def write(self, text: str) -> None:
            self.text += text

        def flush(self) -> None:
            pass

    sink = Sink()
    LogOutput(sink, timestamps=False).emit(record)  # type: ignore[arg-type]  # write/flush suffice
    assert " assumptions=host_connector_name_must_be_accepted" in sink.text
