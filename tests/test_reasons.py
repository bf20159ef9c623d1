"""The one table of reasons (policyd.rules.reasons): well formed, the only home of its words."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

from policyd.constants import ACCEPT, REJECT
from policyd.rules import outcomes, reasons
from policyd.rules.reasons import Reason

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "policyd"
README = ROOT / "README.md"

#: Every text the table holds, with the reason and field it belongs to.
TEXTS = sorted(
    {
        text: f"{reason.id}.{field}"
        for reason in reasons.TABLE
        for field, text in (("reply", reason.reply), ("short", reason.short), ("fix", reason.fix))
        if text
    }.items()
)


@functools.cache
def _sources() -> dict[Path, str]:
    return {path: path.read_text("utf-8") for path in sorted(PACKAGE.rglob("*.py"))}


@functools.cache
def _literals() -> dict[Path, list[str]]:
    return {path: _string_constants(source) for path, source in _sources().items()}


def _string_constants(source: str) -> list[str]:
    """Every string literal of a module, implicit concatenations joined (as the parser does)."""
    return [
        node.value
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]


@pytest.mark.parametrize(("text", "where"), TEXTS, ids=[where for _, where in TEXTS])
def test_each_text_has_exactly_one_home(text: str, where: str) -> None:
    """Each reply text, short phrase and fix of the table is written once in policyd/, no copy.

    Counted twice: as grep sees the files (one line each), and as string literals, so a copy
    split over two source lines or inside an f-string is found too.
    """
    sources = _sources()
    lines = [
        f"{path.relative_to(ROOT)}:{number}"
        for path, source in sources.items()
        for number, line in enumerate(source.splitlines(), 1)
        if text in line
    ]
    assert lines == ["policyd/rules/reasons.py:" + lines[0].rsplit(":", 1)[-1]], lines
    literals = [
        path.name for path, strings in _literals().items() for literal in strings if text in literal
    ]
    assert literals == ["reasons.py"], literals


def test_the_uniqueness_scan_sees_a_copy(tmp_path: Path) -> None:
    """A copy of a phrase split over two lines of a literal is found by the literal scan."""
    phrase = reasons.BY_ID[reasons.NO_CONNECTOR].short
    head, tail = phrase[:20], phrase[20:]
    source = f'X = (\n    "{head}"\n    "{tail}"\n)\n'
    assert not any(phrase in line for line in source.splitlines())
    assert [text for text in _string_constants(source) if phrase in text] == [phrase]


def test_ids_are_unique_and_complete() -> None:
    """Every id appears once; the verdict lists partition the table in table order."""
    ids = [reason.id for reason in reasons.TABLE]
    assert len(ids) == len(set(ids)) == len(reasons.BY_ID)
    assert tuple(ids) == reasons.REASON_IDS
    assert tuple(ids) == reasons.ACCEPT_REASONS + reasons.REFUSE_REASONS


@pytest.mark.parametrize("reason", reasons.TABLE, ids=lambda reason: reason.id)
def test_each_row_is_complete_for_its_verdict(reason: Reason) -> None:
    """A refusing reason has a code, Microsoft's reply carrying that code, a phrase and a fix;
    an accepting one has none of them."""
    assert reason.verdict in (ACCEPT, REJECT)
    if reason.verdict == ACCEPT:
        assert (reason.code, reason.reply, reason.short, reason.fix) == (None, None, "", "")
        return
    assert reason.code is not None and re.fullmatch(r"5\.7\.\d+", reason.code)
    # 550 for every relay refusal; the SMTP AUTH endpoint answers a missing login with 530.
    basic = "530" if reason.id == "submission-no-credentials" else "550"
    assert reason.reply is not None and reason.reply.startswith(f"{basic} {reason.code} ")
    assert reason.short and "\n" not in reason.short and not reason.short.endswith(".")
    assert reason.fix[0].isupper() and reason.fix.endswith(".")
    assert reason.fix.count(". ") == 0  # one sentence


def test_microsoft_reply_texts_are_spelled_as_the_spec() -> None:
    """The reply texts are exactly SPEC §5's table, including 5.7.68's full wording."""
    assert {r.id: r.reply for r in reasons.TABLE if r.verdict == REJECT} == {
        "no-connector": "550 5.7.64 TenantAttribution; Relay Access Denied",
        "null-sender": "550 5.7.64 Relay Access Denied ATTR36",
        "forwarded": "550 5.7.64 Relay Access Denied ATTR36",
        "sender-not-accepted": "550 5.7.64 Relay Access Denied ATTR36",
        "direct-send-rejected": (
            "550 5.7.68 TenantInboundAttribution; Direct Send not allowed for this organization "
            "from unauthorized sources"
        ),
        "partner-restricted": (
            "550 5.7.51 TenantInboundAttribution; There is a partner connector configured that "
            "matched the message's recipient domain. The connector had either the "
            "RestrictDomainsToIPAddresses or RestrictDomainsToCertificate set"
        ),
        "submission-no-credentials": "530 5.7.57 Client not authenticated to send mail",
        "submission-sender-not-login": (
            "550 5.7.60 SMTP; Client does not have permissions to send as this sender"
        ),
    }


def test_each_reason_has_its_predicted_kind() -> None:
    """Accepting reasons are the kind accepted; each refusal's kind is the one SPEC §8 gives its
    reply, and the reply classifier reads that kind back from Microsoft's own text."""
    assert {r.id: r.kind for r in reasons.TABLE} == {
        "local": "accepted",
        "other-route": "accepted",
        "recipient-in-tenant": "accepted",
        "certificate-connector": "accepted",
        "sender-accepted-domain": "accepted",
        "srs-rewritten": "accepted",
        "no-connector": "no-connector",
        "null-sender": "attr36",
        "forwarded": "attr36",
        "sender-not-accepted": "attr36",
        "direct-send-rejected": "direct-send",
        "partner-restricted": "partner-restricted",
        "submission-accepted": "accepted",
        "submission-no-credentials": "auth-required",
        "submission-sender-not-login": "send-as-denied",
    }
    for reason in reasons.TABLE:
        if reason.reply is not None:
            assert outcomes.classify_reply(reason.reply) == reason.kind, reason.id
        assert reason.kind in outcomes.PREDICTED_KINDS
        assert reasons.predicted_kind(reason.id) == reason.kind


def _readme_reason_rows() -> dict[str, tuple[str, str]]:
    """The README's "Reasons" table: id -> (verdict, Microsoft 365's answer or "—")."""
    text = README.read_text("utf-8")
    section = text[text.index("\n## Reasons\n") :]
    section = section[: section.index("\n## ", 1)]
    rows: dict[str, tuple[str, str]] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = (cells[1], cells[2].strip("`"))
    return rows


def test_readme_reasons_table_agrees_with_the_table() -> None:
    """The README lists every reason with the table's verdict and Microsoft's exact reply."""
    assert _readme_reason_rows() == {
        reason.id: (reason.verdict, reason.reply or "—") for reason in reasons.TABLE
    }
