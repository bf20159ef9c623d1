"""policyd.rules.rewrite on in-memory tables: the corners of Postfix's mail_addr_map() and
cleanup_map11() that the real-Postfix tests (tests/test_rewrite.py,
tests/e2e/test_rewrite_agreement.py) do not reach cheaply."""

from __future__ import annotations

import pytest

from policyd.errors import RewriteLookupError, RouteLookupError
from policyd.rules.predict import sender_view
from policyd.rules.rewrite import (
    MAX_RECURSION,
    Listener,
    SenderRewrite,
    cleanup_sender,
    generic_sender,
    is_srs_address,
)
from policyd.rules.routing import PostfixView, Service
from tests.test_predict import DictTables, onprem, tenant

CANONICAL = "texthash:/etc/postfix/canonical"
GENERIC = "texthash:/etc/postfix/generic"


def view(tables: dict[str, dict[str, str]], **parameters: str) -> PostfixView:
    base = {
        "myhostname": "mta.contoso.com",
        "myorigin": "contoso.com",
        "mydestination": "mta.contoso.com",
        "inet_interfaces": "loopback-only",
        "append_at_myorigin": "yes",
        "recipient_delimiter": "+",
        "propagate_unmatched_extensions": "canonical, virtual",
        "sender_canonical_classes": "envelope_sender, header_sender",
        "canonical_classes": "envelope_sender, envelope_recipient",
        "masquerade_classes": "envelope_sender",
        "cleanup_service_name": "cleanup",
    }
    return PostfixView(
        {**base, **parameters},
        {"smtp": Service("smtp", "smtp"), "cleanup": Service("cleanup", "cleanup")},
        DictTables(tables),
    )


def test_at_domain_result_keeps_the_local_part_without_the_extension() -> None:
    """A result "@domain" keeps the local part; an extension the matching key dropped is left
    out of it (mail_addr_map: the user without the unmatched extension)."""
    pf = view({CANONICAL: {"ops@app.contoso.local": "@contoso.com"}}, canonical_maps=CANONICAL)
    assert cleanup_sender(pf, "ops+night@app.contoso.local").after == "ops@contoso.com"


@pytest.mark.parametrize(
    ("propagate", "expected"),
    [("canonical", "team+night@contoso.com"), ("virtual", "team@contoso.com")],
)
def test_unmatched_extension_comes_back_only_when_propagated(propagate: str, expected: str) -> None:
    """propagate_unmatched_extensions = canonical puts the extension back into the result."""
    pf = view(
        {CANONICAL: {"ops@contoso.com": "team@contoso.com"}},
        canonical_maps=CANONICAL,
        propagate_unmatched_extensions=propagate,
    )
    assert cleanup_sender(pf, "ops+night@contoso.com").after == expected


def test_a_mapping_loop_stops_after_ten_rounds() -> None:
    """cleanup applies a map to its own result at most MAX_RECURSION times."""
    pf = view(
        {CANONICAL: {"a@contoso.com": "b@contoso.com", "b@contoso.com": "a@contoso.com"}},
        canonical_maps=CANONICAL,
    )
    rewrite = cleanup_sender(pf, "a@contoso.com")
    assert len(rewrite.steps) == MAX_RECURSION


def test_bare_local_part_gets_myorigin_and_mailer_daemon_becomes_null() -> None:
    """An address without @ gets @$myorigin; MAILER-DAEMON@$myorigin is the null sender."""
    pf = view({})
    assert cleanup_sender(pf, "root").after == "root@contoso.com"
    assert cleanup_sender(pf, "mailer-daemon").after == ""
    assert cleanup_sender(pf, "").after == ""


def test_classes_without_envelope_sender_leave_it_alone() -> None:
    """sender_canonical_classes = header_sender: the envelope sender is not mapped."""
    pf = view(
        {CANONICAL: {"root@contoso.com": "app@contoso.com"}},
        sender_canonical_maps=CANONICAL,
        sender_canonical_classes="header_sender",
    )
    assert cleanup_sender(pf, "root@contoso.com").after == "root@contoso.com"


def test_listener_overrides_win_over_main_cf() -> None:
    """The listener's -o receive_override_options=no_address_mappings turns the maps off."""
    pf = view({CANONICAL: {"root@contoso.com": "app@contoso.com"}}, canonical_maps=CANONICAL)
    off = Listener("smtp/inet", {"receive_override_options": "no_address_mappings"})
    rewrite = cleanup_sender(pf, "root@contoso.com", off)
    assert (rewrite.after, rewrite.steps) == ("root@contoso.com", ())
    assert "no_address_mappings" in rewrite.notes[0]


def test_generic_maps_never_touch_the_null_sender_and_only_smtp_services() -> None:
    """smtp_generic_maps is for smtp(8) services and never for the null sender."""
    pf = view({GENERIC: {"@contoso.com": "@mail.contoso.com"}}, smtp_generic_maps=GENERIC)
    assert generic_sender(pf, "smtp", "a@contoso.com").after == "a@mail.contoso.com"
    assert generic_sender(pf, "smtp", "").after == ""
    assert generic_sender(pf, "local", "a@contoso.com").after == "a@contoso.com"


def test_a_failing_table_is_a_rewrite_lookup_error() -> None:
    """A table that fails raises RewriteLookupError (the engine answers on_error)."""

    class Failing(DictTables):
        def find(self, table: str, key: str, *, partial: bool) -> str | None:
            raise RouteLookupError(f"{table}: connection refused")

    pf = view({}, sender_canonical_maps="tcp:127.0.0.1:10001")
    broken = PostfixView(pf.parameters, pf.services, Failing({}))
    with pytest.raises(RewriteLookupError, match="connection refused"):
        cleanup_sender(broken, "alerts@contoso.com")


def test_srs_addresses_and_the_guess() -> None:
    """An asked service's SRS result is judged as written; without a service the
    onprem.srs_domain guess still applies to the rewritten sender."""
    assert is_srs_address("SRS0=abcd=TT=contoso.com=alerts@relay.contoso.com")
    assert not is_srs_address("srs@contoso.com")
    accepted = tenant("contoso.com")
    asked = SenderRewrite(
        "alerts@contoso.com",
        "alerts@contoso.com",
        services=("tcp:127.0.0.1:10001",),
    )
    kept = sender_view("alerts@contoso.com", accepted, onprem(srs_domain="srs.example"), asked)
    assert (kept.p1_domain, kept.srs_rewritten) == ("contoso.com", False)
    plain = SenderRewrite("john@fabrikam.example", "john@fabrikam.example")
    guessed = sender_view(
        "john@fabrikam.example", accepted, onprem(srs_domain="contoso.com"), plain
    )
    assert (guessed.p1_domain, guessed.srs_rewritten) == ("contoso.com", True)
