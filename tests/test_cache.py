"""The prediction cache: what it keeps, for whom, and when it forgets."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyd.engine import cache as cache_module
from policyd.engine.cache import PredictionCache
from policyd.engine.policy import PolicyEngine, Session, _answer, tag_value
from policyd.engine.stats import Stats
from policyd.rules.model import AcceptedDomain, CertificateFacts, OnPrem, Tenant
from policyd.sources.config import PolicySettings
from policyd.sources.state import State
from policyd.sources.tables import load_alias_maps
from tests.doubles import Clock
from tests.tenants import IP_AND_CERTIFICATE_TENANT, ONPREM, model_config

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
TENANT = IP_AND_CERTIFICATE_TENANT
CERTIFICATE = CertificateFacts(
    path="c.pem",
    common_name="mail.contoso.com",
    not_before=NOW - timedelta(days=10),
    not_after=NOW + timedelta(hours=1),
    chain_complete=True,
)
#: Attributed by IP address: a foreign sender's domain is not accepted.
BY_IP = ONPREM
#: Attributed by a certificate valid for one more hour only.
BY_CERTIFICATE = OnPrem(
    egress_addresses=(ipaddress.ip_address("198.51.100.1"),), certificate=CERTIFICATE
)
OUTSIDE = "kate@tailspintoys.com"


def state(generation: int = 1, tenant: Tenant = TENANT, onprem: OnPrem = BY_IP) -> State:
    config = model_config(tenant, onprem, policy=PolicySettings(action="defer"))
    return State(config, load_alias_maps(()), generation)


def test_an_entry_is_built_once_per_exact_pair_and_found_by_lookup() -> None:
    """lookup misses until entry builds the answer; then both return that same object."""
    cache = PredictionCache(state(), Clock(NOW), _answer)
    assert cache.lookup("a@fabrikam.com", OUTSIDE) is None
    entry = cache.entry("a@fabrikam.com", OUTSIDE)
    assert cache.lookup("a@fabrikam.com", OUTSIDE) is entry
    assert cache.entry("a@fabrikam.com", OUTSIDE) is entry
    assert entry.answer.startswith("450 4.7.64 ")
    assert (entry.action, entry.counted) == ("defer", ("default", "reject", "sender-not-accepted"))


def test_senders_of_one_domain_share_the_prediction_not_the_entry() -> None:
    """Another local part or case of the sender's domain reuses the prediction; the entry (and
    its log line) stays per exact sender, and a recipient in another case shows as sent."""
    cache = PredictionCache(state(), Clock(NOW), _answer)
    first = cache.entry("a@fabrikam.com", OUTSIDE)
    other = cache.entry("b@FABRIKAM.com", OUTSIDE)
    assert other is not first
    assert other.prediction.addresses is first.prediction.addresses
    assert dict(other.line.fields)["sender"] == "b@FABRIKAM.com"
    upper = cache.entry("a@fabrikam.com", OUTSIDE.upper())
    assert upper.prediction.recipient == OUTSIDE.upper()
    assert upper.prediction.addresses is first.prediction.addresses
    assert cache.knows("c@fabrikam.com", OUTSIDE.upper())
    assert not cache.knows("c@adatum.com", OUTSIDE)


def test_replacing_the_state_forgets_every_answer() -> None:
    """After a reload the new state decides at once: nothing of the old one is looked up."""
    cache = PredictionCache(state(), Clock(NOW), _answer)
    assert cache.entry("a@fabrikam.com", OUTSIDE).prediction.reason == "sender-not-accepted"
    wider = replace(
        TENANT, accepted_domains=(*TENANT.accepted_domains, AcceptedDomain("fabrikam.com"))
    )
    cache.replace(state(2, wider))
    assert cache.state.generation == 2
    assert cache.lookup("a@fabrikam.com", OUTSIDE) is None
    assert not cache.knows("a@fabrikam.com", OUTSIDE)
    assert cache.entry("a@fabrikam.com", OUTSIDE).prediction.reason == "sender-accepted-domain"


def test_a_passing_validity_boundary_forgets_every_answer() -> None:
    """Once the injected clock passes the certificate's notAfter, lookups miss and the next
    answer is computed with the new attribution, without a reload."""
    clock = Clock(NOW)
    cache = PredictionCache(state(onprem=BY_CERTIFICATE), clock, _answer)
    sender = "app@contoso.com"
    assert cache.entry(sender, OUTSIDE).prediction.reason == "certificate-connector"
    clock.now += 3599
    assert cache.lookup(sender, OUTSIDE) is not None
    clock.now += 2
    assert cache.lookup(sender, OUTSIDE) is None
    assert cache.entry(sender, OUTSIDE).prediction.reason == "no-connector"
    assert cache.lookup(sender, OUTSIDE) is not None


def test_each_map_is_cleared_whole_when_full(monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory stays bounded: at CACHE_LIMIT entries a map starts again from empty."""
    monkeypatch.setattr(cache_module, "CACHE_LIMIT", 3)
    cache = PredictionCache(state(), Clock(NOW), _answer)
    for number in range(3):
        cache.entry(f"a@d{number}.example", OUTSIDE)
    assert cache.lookup("a@d0.example", OUTSIDE) is not None
    cache.entry("a@d3.example", OUTSIDE)
    assert cache.lookup("a@d0.example", OUTSIDE) is None
    assert not cache.knows("a@d0.example", OUTSIDE)
    assert cache.lookup("a@d3.example", OUTSIDE) is not None


def test_the_log_line_holds_the_fixed_fields_in_record_order() -> None:
    """An entry's line gives the whole record with the per-request fields first."""
    entry = PredictionCache(state(), Clock(NOW), _answer).entry("", OUTSIDE)
    record = entry.line.record("4Q", "m.9", "10.0.0.5")
    assert list(record) == [
        "event",
        "queue_id",
        "instance",
        "client_address",
        "sender",
        "recipient",
        "final",
        "tenant",
        "verdict",
        "code",
        "reason",
        "action",
        "explanation",
        "assumptions",
    ]
    assert record["event"] == "prediction"
    assert (record["sender"], record["final"], record["reason"]) == ("", (OUTSIDE,), "null-sender")


SENDERS = ["app@contoso.com", "a@fabrikam.com", ""]
RECIPIENTS = [OUTSIDE, "kate@contoso.com", "x@adatum.example", "KATE@tailspintoys.com"]


@settings(max_examples=200, deadline=None)
@given(
    pairs=st.lists(
        st.tuples(st.sampled_from(SENDERS), st.sampled_from(RECIPIENTS)), min_size=1, max_size=6
    ),
    action=st.sampled_from(["dunno", "defer", "hold"]),
)
def test_the_session_header_is_tag_value_of_its_recipients(
    pairs: list[tuple[str, str]], action: str
) -> None:
    """The header kept up per RCPT equals tag_value over the message's recipients, and a
    message without a relayed recipient gets none."""
    base = state()
    settings_ = replace(base.config, policy=PolicySettings(action=action))
    engine = PolicyEngine(State(settings_, base.aliases, 1), Stats(), Clock(NOW), lambda r: None)
    session = Session()
    for sender, recipient in pairs:
        engine.handle(
            {
                "request": "smtpd_access_policy",
                "protocol_state": "RCPT",
                "sender": sender,
                "recipient": recipient,
                "instance": "m.1",
            },
            session,
        )
    answer = engine.handle(
        {"request": "smtpd_access_policy", "protocol_state": "DATA", "instance": "m.1"}, session
    )
    if any(p.relayed for p in session.recipients):
        assert answer == f"PREPEND X-M365-Relay: {tag_value(session.recipients)}"
    else:
        assert answer == "DUNNO"
