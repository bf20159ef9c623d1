"""The end-to-end harness's own logic that needs no Postfix: skip rules and snippet parsing."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import SNIPPET, _require
from tests.e2e.postfix import parse_main_cf


def test_missing_postfix_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without CI a missing Postfix skips the test and says why."""
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="needs root"):
        _require("a private Postfix instance needs root")


def test_missing_postfix_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """With CI set a missing Postfix is a failure, not a skip."""
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        _require("/usr/sbin/postfix is missing")


def test_nothing_missing_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """No reason means the test goes ahead."""
    monkeypatch.setenv("CI", "true")
    _require(None)


def test_snippet_parses_to_the_documented_wiring() -> None:
    """The contrib snippet wires the policy into RCPT and DATA with default_action=DUNNO."""
    settings = parse_main_cf(SNIPPET.read_text())
    check = "check_policy_service { $m365_policyd_service, default_action=DUNNO }"
    assert settings["smtpd_recipient_restrictions"] == check
    assert settings["smtpd_data_restrictions"] == check
    assert settings["smtpd_relay_restrictions"].split()[-1] == "reject_unauth_destination"
    assert "permit_mynetworks" not in settings["smtpd_recipient_restrictions"]


def test_main_cf_continuation_lines() -> None:
    """Indented lines continue the previous parameter; comments and blanks are ignored."""
    text = "# c\na = 1\n\nb =\n    x\n    y\n"
    assert parse_main_cf(text) == {"a": "1", "b": "x y"}
