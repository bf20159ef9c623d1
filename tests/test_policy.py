"""The policy engine: requests in, Postfix actions out, one header per message, fail open."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from policyd.engine.policy import PolicyEngine, Session, tag_value
from policyd.engine.stats import Stats
from policyd.errors import AliasLookupError
from policyd.rules.aliases import AliasMaps
from policyd.rules.model import AcceptedDomain, CertificateFacts, OnPrem
from policyd.sources.config import Config, LogSettings, PolicySettings
from policyd.sources.state import State
from policyd.sources.tables import load_alias_maps
from tests.doubles import Clock
from tests.tenants import IP_AND_CERTIFICATE_TENANT, ONPREM, model_config

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)

TENANT = IP_AND_CERTIFICATE_TENANT


def config(policy: PolicySettings | None = None, onprem: OnPrem = ONPREM) -> Config:
    return model_config(TENANT, onprem, policy=policy)


def engine(
    policy: PolicySettings | None = None,
    *,
    aliases: AliasMaps | None = None,
    onprem: OnPrem = ONPREM,
    clock: Clock | None = None,
) -> tuple[PolicyEngine, Stats, list[Mapping[str, object]]]:
    stats = Stats()
    records: list[Mapping[str, object]] = []
    state = State(config(policy, onprem), aliases or load_alias_maps(()), 1)
    return PolicyEngine(state, stats, clock or Clock(NOW), records.append), stats, records


def rcpt(sender: str, recipient: str, instance: str = "a.1", queue_id: str = "") -> dict[str, str]:
    return {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "sender": sender,
        "recipient": recipient,
        "instance": instance,
        "queue_id": queue_id,
        "client_address": "127.0.0.1",
    }


def data(instance: str = "a.1", count: int = 1) -> dict[str, str]:
    return {
        "request": "smtpd_access_policy",
        "protocol_state": "DATA",
        "instance": instance,
        "queue_id": "4ABC",
        "recipient_count": str(count),
    }


FOREIGN = "john@fabrikam.com"
OUTSIDE = "kate@tailspintoys.com"


@pytest.mark.parametrize(
    ("policy", "answer"),
    [
        (PolicySettings(action="dunno"), "DUNNO"),
        (
            PolicySettings(action="defer"),
            "450 4.7.64 Microsoft 365 would refuse relay to this recipient "
            "(reason=sender-not-accepted: the sender domain is not an accepted domain of the "
            "tenant)",
        ),
        (
            PolicySettings(action="reject"),
            "550 5.7.64 Microsoft 365 would refuse relay to this recipient "
            "(reason=sender-not-accepted: the sender domain is not an accepted domain of the "
            "tenant)",
        ),
        (
            PolicySettings(action="hold"),
            "HOLD Microsoft 365 would refuse relay to this recipient "
            "(reason=sender-not-accepted: the sender domain is not an accepted domain of the "
            "tenant)",
        ),
        (
            PolicySettings(action="reroute", reroute="smtp:[relay2.example.net]:587"),
            "FILTER smtp:[relay2.example.net]:587",
        ),
        (
            PolicySettings(action="dunno", by_reason=(("sender-not-accepted", "defer"),)),
            "450 4.7.64 Microsoft 365 would refuse relay to this recipient "
            "(reason=sender-not-accepted: the sender domain is not an accepted domain of the "
            "tenant)",
        ),
        (
            PolicySettings(action="defer", by_reason=(("forwarded", "reroute"),), reroute="x:y"),
            "450 4.7.64 Microsoft 365 would refuse relay to this recipient "
            "(reason=sender-not-accepted: the sender domain is not an accepted domain of the "
            "tenant)",
        ),
    ],
    ids=["dunno", "defer", "reject", "hold", "reroute", "by_reason", "by_reason-other-reason"],
)
def test_refused_recipient_gets_the_configured_action(policy: PolicySettings, answer: str) -> None:
    """A recipient predicted to be refused is answered with its (per-reason) action."""
    handler, stats, _ = engine(policy)
    assert handler.handle(rcpt(FOREIGN, OUTSIDE), Session()) == answer
    assert stats.predictions[("default", "reject", "sender-not-accepted")] == 1


@pytest.mark.parametrize("action", ["dunno", "defer", "reject", "hold", "reroute"])
def test_accepted_recipient_is_always_dunno(action: str) -> None:
    """A recipient predicted to pass is never touched, whatever the action."""
    handler, stats, _ = engine(PolicySettings(action=action, reroute="smtp:[r]:25"))
    assert handler.handle(rcpt("alerts@contoso.com", OUTSIDE), Session()) == "DUNNO"
    assert stats.actions["dunno"] == 1
    assert stats.external_recipients["default"] == 1


def test_reply_is_one_line_and_short() -> None:
    """Reply texts never carry a line break and stay well inside an SMTP reply line."""
    handler, _, _ = engine(PolicySettings(action="reject"))
    answer = handler.handle(rcpt("", OUTSIDE), Session())
    assert "\n" not in answer
    assert "\r" not in answer
    assert len(answer) < 512
    assert "reason=null-sender" in answer


def test_direct_send_defer_uses_its_own_code() -> None:
    """A 5.7.68 prediction is deferred as 4.7.68, not mislabelled as 5.7.64."""
    tenant = replace(TENANT, reject_direct_send=True)
    stats = Stats()
    cfg = replace(
        config(PolicySettings(action="defer")),
        tenant=tenant,
        onprem=OnPrem(egress_addresses=(ipaddress.ip_address("198.51.100.1"),)),
    )
    handler = PolicyEngine(State(cfg, load_alias_maps(()), 1), stats, Clock(NOW), lambda r: None)
    answer = handler.handle(rcpt("john@contoso.com", "kate@contoso.com"), Session())
    assert answer.startswith("450 4.7.68 ")


def test_one_header_per_message_across_two_messages() -> None:
    """Two messages on one connection each get exactly one header built from their own RCPTs."""
    handler, stats, _ = engine(PolicySettings(action="dunno"))
    session = handler.new_session()
    # message 1: refused outside recipient, in-tenant recipient, passing... (foreign sender)
    assert handler.handle(rcpt(FOREIGN, OUTSIDE, "m.1"), session) == "DUNNO"
    assert handler.handle(rcpt(FOREIGN, "kate@contoso.com", "m.1", "4A"), session) == "DUNNO"
    assert handler.handle(rcpt(FOREIGN, "bob@fabrikam.net", "m.1", "4A"), session) == "DUNNO"
    assert handler.handle(data("m.1", 3), session) == (
        "PREPEND X-M365-Relay: verdict=reject; code=5.7.64; reason=sender-not-accepted; "
        "refused=2; recipients=3"
    )
    assert handler.handle(data("m.1", 3), session) == "DUNNO"  # never a second header
    # message 2: own-domain sender, one outside recipient
    assert handler.handle(rcpt("alerts@contoso.com", OUTSIDE, "m.2"), session) == "DUNNO"
    assert handler.handle(data("m.2", 1), session) == (
        "PREPEND X-M365-Relay: verdict=accept; code=none; reason=sender-accepted-domain; "
        "refused=0; recipients=1"
    )
    assert stats.actions["prepend"] == 2


def test_deferred_recipients_are_not_part_of_the_message() -> None:
    """Under defer, the header counts only the recipients Postfix accepted."""
    handler, _, _ = engine(PolicySettings(action="defer"))
    session = handler.new_session()
    assert handler.handle(rcpt(FOREIGN, OUTSIDE, "m.1"), session).startswith("450 4.7.64")
    assert handler.handle(rcpt(FOREIGN, "kate@contoso.com", "m.1"), session) == "DUNNO"
    assert handler.handle(rcpt(FOREIGN, "x@tailspintoys.com", "m.1"), session).startswith("450")
    # only the in-tenant recipient is left: nothing is relayed, so no header
    assert handler.handle(data("m.1"), session) == "DUNNO"


def test_hold_keeps_the_recipient_in_the_message_count() -> None:
    """HOLD applies to the whole message, so the held recipient still counts as refused."""
    handler, _, _ = engine(PolicySettings(action="hold"))
    session = handler.new_session()
    assert handler.handle(rcpt(FOREIGN, OUTSIDE, "m.1"), session).startswith("HOLD ")
    assert handler.handle(data("m.1"), session).endswith("refused=1; recipients=1")


def test_no_header_for_other_instance_or_when_tag_is_off() -> None:
    """DATA of an instance without predictions, or with tagging off, answers DUNNO."""
    handler, _, _ = engine()
    session = handler.new_session()
    handler.handle(rcpt(FOREIGN, OUTSIDE, "m.1"), session)
    assert handler.handle(data("m.2"), session) == "DUNNO"
    handler, _, _ = engine(PolicySettings(tag=False))
    session = handler.new_session()
    handler.handle(rcpt(FOREIGN, OUTSIDE, "m.1"), session)
    assert handler.handle(data("m.1"), session) == "DUNNO"


def test_header_name_is_configurable() -> None:
    """The configured header name is the one prepended."""
    handler, _, _ = engine(PolicySettings(header="X-Relay-Check"))
    session = handler.new_session()
    handler.handle(rcpt(FOREIGN, OUTSIDE), session)
    assert handler.handle(data(), session).startswith("PREPEND X-Relay-Check: verdict=reject;")


@pytest.mark.parametrize("state", ["CONNECT", "EHLO", "MAIL", "END-OF-MESSAGE", "VRFY", ""])
def test_other_states_are_dunno(state: str) -> None:
    """Requests outside RCPT and DATA are answered DUNNO and counted as 'other'."""
    handler, stats, _ = engine(PolicySettings(action="reject"))
    request = rcpt(FOREIGN, OUTSIDE)
    request["protocol_state"] = state
    assert handler.handle(request, Session()) == "DUNNO"
    assert stats.requests["other"] == 1
    assert not stats.predictions


@pytest.mark.parametrize("request_name", ["", "smtpd_other_policy", "SMTPD_ACCESS_POLICY"])
def test_other_requests_are_dunno(request_name: str) -> None:
    """A request that is not smtpd_access_policy is answered DUNNO and not predicted."""
    handler, stats, _ = engine(PolicySettings(action="reject"))
    request = rcpt(FOREIGN, OUTSIDE)
    request["request"] = request_name
    assert handler.handle(request, Session()) == "DUNNO"
    assert stats.requests["other"] == 1
    assert not stats.predictions


def test_predictions_are_not_built_below_info(tmp_path: Path) -> None:
    """At log level warn the engine emits no prediction records, but errors still go out."""
    stats = Stats()
    records: list[Mapping[str, object]] = []
    cfg = replace(config(PolicySettings(action="defer")), log=LogSettings(level="warn"))
    handler = PolicyEngine(State(cfg, load_alias_maps(()), 1), stats, Clock(NOW), records.append)
    assert handler.handle(rcpt(FOREIGN, OUTSIDE), Session()).startswith("450 ")
    assert records == []
    handler.replace_state(
        State(replace(cfg, log=LogSettings(level="info")), load_alias_maps(()), 2)
    )
    handler.handle(rcpt(FOREIGN, OUTSIDE), Session())
    assert [r["event"] for r in records] == ["prediction"]


class _Broken(AliasMaps):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def expand(self, address: str) -> tuple[str, ...]:
        raise self.error


@pytest.mark.parametrize(
    ("error", "on_error", "answer"),
    [
        (RuntimeError("bug"), "dunno", "DUNNO"),
        (RuntimeError("bug"), "warn", "WARN m365-policyd could not predict"),
        (AliasLookupError("ldap:/etc/postfix/ldap.cf failed"), "dunno", "DUNNO"),
    ],
)
def test_own_failure_answers_on_error(error: Exception, on_error: str, answer: str) -> None:
    """An exception inside prediction answers on_error, is counted and logged, never refuses."""
    handler, stats, records = engine(
        PolicySettings(action="reject", on_error=on_error), aliases=_Broken(error)
    )
    assert handler.handle(rcpt(FOREIGN, OUTSIDE, queue_id="4XYZ"), Session()) == answer
    assert stats.internal_errors == 1
    assert stats.actions["on_error"] == 1
    assert records[-1]["event"] == "error"
    assert records[-1]["queue_id"] == "4XYZ"
    assert str(error) in str(records[-1]["problem"])


def test_forward_through_alias_map(tmp_path: Path) -> None:
    """A texthash forward turns an in-tenant recipient into a refused forward."""
    table = tmp_path / "virtual"
    table.write_text("kate@contoso.com kate.home@tailspintoys.com\n")
    handler, stats, records = engine(
        PolicySettings(action="defer"), aliases=load_alias_maps([f"texthash:{table}"])
    )
    answer = handler.handle(rcpt(FOREIGN, "kate@contoso.com"), Session())
    assert answer.startswith("450 4.7.64 ") and "reason=forwarded" in answer
    assert records[-1]["final"] == ("kate.home@tailspintoys.com",)
    assert stats.predictions[("default", "reject", "forwarded")] == 1


def test_counters_for_relays() -> None:
    """External recipients and unregistered-sender relays are counted per relayed address."""
    cert = CertificateFacts(
        path="c.pem",
        common_name="mail.contoso.com",
        not_before=NOW - timedelta(days=1),
        not_after=NOW + timedelta(days=30),
        chain_complete=True,
    )
    handler, stats, _ = engine(onprem=replace(ONPREM, certificate=cert))
    session = handler.new_session()
    handler.handle(rcpt(FOREIGN, OUTSIDE), session)  # certificate relay of a foreign domain
    handler.handle(rcpt("a@contoso.com", OUTSIDE), session)  # accepted sender
    handler.handle(rcpt("", OUTSIDE), session)  # bounce: not an unregistered domain
    handler.handle(rcpt(FOREIGN, "kate@contoso.com"), session)  # in tenant: not external
    assert stats.external_recipients["default"] == 3
    assert stats.unregistered_sender_relays["default"] == 1
    assert stats.predictions[("default", "accept", "certificate-connector")] == 3
    assert stats.predictions[("default", "accept", "recipient-in-tenant")] == 1


def test_prediction_record_has_the_logged_fields() -> None:
    """Each prediction is emitted once with the fields the log line needs."""
    handler, _, records = engine(PolicySettings(action="defer"))
    handler.handle(rcpt(FOREIGN, OUTSIDE, "m.9", "4Q"), Session())
    (record,) = records
    assert record == {
        "event": "prediction",
        "queue_id": "4Q",
        "instance": "m.9",
        "client_address": "127.0.0.1",
        "sender": FOREIGN,
        "recipient": OUTSIDE,
        "final": (OUTSIDE,),
        "tenant": "default",
        "verdict": "reject",
        "code": "5.7.64",
        "reason": "sender-not-accepted",
        "action": "defer",
        "explanation": record["explanation"],
        "assumptions": (),
    }
    assert "fabrikam.com" in str(record["explanation"])


def test_cache_is_per_sender_domain_and_dropped_on_reload() -> None:
    """Senders of one domain share a prediction; a new state is used at once after a swap."""
    handler, _, _ = engine()
    first = handler.predict("a@fabrikam.com", OUTSIDE)
    assert handler.predict("b@FABRIKAM.com", OUTSIDE).addresses is first.addresses
    assert handler.predict("a@fabrikam.com", "KATE@tailspintoys.com").recipient == (
        "KATE@tailspintoys.com"
    )
    wider = replace(
        TENANT, accepted_domains=(*TENANT.accepted_domains, AcceptedDomain("fabrikam.com"))
    )
    handler.replace_state(
        State(replace(handler.state.config, tenant=wider), load_alias_maps(()), 2)
    )
    assert handler.predict("a@fabrikam.com", OUTSIDE).reason == "sender-accepted-domain"


def test_certificate_expiry_is_noticed_without_reload() -> None:
    """When the clock passes notAfter, the certificate stops attributing at once."""
    cert = CertificateFacts(
        path="c.pem",
        common_name="mail.contoso.com",
        not_before=NOW - timedelta(days=10),
        not_after=NOW + timedelta(hours=1),
        chain_complete=True,
    )
    clock = Clock(NOW)
    onprem = OnPrem(egress_addresses=(ipaddress.ip_address("198.51.100.1"),), certificate=cert)
    handler, _, _ = engine(onprem=onprem, clock=clock)
    assert handler.predict(FOREIGN, OUTSIDE).reason == "certificate-connector"
    assert handler.certificate_connector_match(clock.now) is True
    clock.now += 2 * 3600
    assert handler.predict(FOREIGN, OUTSIDE).reason == "no-connector"
    assert handler.certificate_connector_match(clock.now) is False


def test_certificate_connector_match_is_none_without_certificate() -> None:
    """No certificate configured: the connector-match gauge has nothing to say."""
    handler, _, _ = engine()
    assert handler.certificate_connector_match(NOW.timestamp()) is None


def test_tag_value_reason_for_accepted_message() -> None:
    """An accepted message names the reason of its first relayed recipient."""
    handler, _, _ = engine()
    local = handler.predict(FOREIGN, "kate@contoso.com")
    relayed = handler.predict("a@contoso.com", OUTSIDE)
    assert tag_value([local, relayed]) == (
        "verdict=accept; code=none; reason=sender-accepted-domain; refused=0; recipients=2"
    )


def test_recipient_delimiter_reaches_alias_expansion(tmp_path: Path) -> None:
    """With Postfix's recipient_delimiter configured, bob+news@ is expanded like bob@."""
    from policyd.sources.state import build_state

    table = tmp_path / "virtual"
    table.write_text("bob@contoso.com bob@tailspintoys.com\n")
    cfg = replace(config(), alias_maps=(f"texthash:{table}",), recipient_delimiter="+")
    handler = PolicyEngine(build_state(cfg, 1), Stats(), Clock(NOW), lambda record: None)
    prediction = handler.predict(FOREIGN, "bob+news@contoso.com")
    assert prediction.reason == "forwarded"
    assert prediction.final == ("bob+news@tailspintoys.com",)
    without = PolicyEngine(
        build_state(replace(cfg, recipient_delimiter=""), 1), Stats(), Clock(NOW), lambda r: None
    )
    assert without.predict(FOREIGN, "bob+news@contoso.com").reason == "recipient-in-tenant"
