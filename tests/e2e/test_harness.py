"""The end-to-end harness's own logic that needs no Postfix: skip rules and snippet parsing."""

from __future__ import annotations

import pytest

from tests.e2e.postfix import parse_main_cf
from tests.e2e.world import SNIPPET
from tests.needs import require


def outcome(reason: str | None) -> str:
    """What ``require(reason)`` does to the test calling it: "skip", "fail" or "run" on."""
    try:
        require(reason)
    except pytest.skip.Exception:
        return "skip"
    except pytest.fail.Exception:
        return "fail"
    return "run"


@pytest.mark.parametrize(
    ("reason", "ci", "expected"),
    [
        ("a private Postfix instance needs root", False, "skip"),
        ("/usr/sbin/postfix is missing", True, "fail"),
        (None, False, "run"),
        (None, True, "run"),
    ],
    ids=["missing-outside-ci", "missing-under-ci", "nothing-missing", "nothing-missing-ci"],
)
def test_a_missing_program_skips_outside_ci_and_fails_under_it(
    monkeypatch: pytest.MonkeyPatch, reason: str | None, ci: bool, expected: str
) -> None:
    """A missing Postfix skips the test, or fails it when CI is set; nothing missing runs on."""
    if ci:
        monkeypatch.setenv("CI", "true")
    else:
        monkeypatch.delenv("CI", raising=False)
    assert outcome(reason) == expected


def test_the_skip_and_the_failure_say_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """The skip carries the reason; the failure names CI and the reason."""
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="needs root"):
        require("a private Postfix instance needs root")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"CI is set.*postfix is missing"):
        require("/usr/sbin/postfix is missing")


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
