"""doctor's vocabulary and output: statuses, areas, one ``Check``, the ``Report`` and its text.

Each check has a stable kebab-case ``id``, an ``area`` (certificate, tenant, postfix,
assumptions, summary),
a ``status`` (ok, warning, error, note), a one-line ``finding`` and a one-sentence ``fix`` (empty
when ok). ``Report.exit_code`` is 0 without errors and 1 with errors.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TextIO

from policyd.constants import EXIT_ERRORS, EXIT_OK

# Statuses and areas.
OK = "ok"


WARNING = "warning"


ERROR = "error"


NOTE = "note"


STATUSES = (OK, WARNING, ERROR, NOTE)


CERTIFICATE = "certificate"


TENANT = "tenant"


POSTFIX = "postfix"


ASSUMPTIONS = "assumptions"


SUMMARY = "summary"


AREAS = (CERTIFICATE, TENANT, POSTFIX, ASSUMPTIONS, SUMMARY)


#: Characters written escaped (``\\uXXXX``) in the text report: C0 and C1 controls (a
#: certificate name or connector name with ESC or a newline could redraw the terminal or fake a
#: line), DEL, line and paragraph separators, and the bidi marks, overrides and isolates.
_UNPRINTABLE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)


def printable(text: str) -> str:
    """``text`` with every control, separator and bidi character as ``\\uXXXX``."""
    if _UNPRINTABLE.search(text) is None:
        return text
    return _UNPRINTABLE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


#: Text markers of the checklist.
MARKERS = {OK: "[ ok ]", WARNING: "[warn]", ERROR: "[FAIL]", NOTE: "[note]"}


AREA_TITLES = {
    CERTIFICATE: "Certificate",
    TENANT: "Tenant",
    POSTFIX: "Postfix",
    ASSUMPTIONS: "Assumptions (where Microsoft's texts disagree; docs/relay-rules.md)",
    SUMMARY: "Summary",
}


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the checklist."""

    id: str
    area: str
    status: str
    finding: str
    fix: str = ""
    tenant: str = ""  # with several tenants: the tenant this check is about ("" = all)

    def as_json(self) -> dict[str, str]:
        found = {
            "id": self.id,
            "area": self.area,
            "status": self.status,
            "finding": self.finding,
            "fix": self.fix,
        }
        if self.tenant:
            found["tenant"] = self.tenant
        return found


@dataclass(frozen=True, slots=True)
class MailClass:
    """One row of the closing table: will Microsoft 365 relay this class of mail?"""

    id: str
    label: str
    sender: str
    recipient: str
    final: tuple[str, ...]
    relayed: bool
    reason: str
    code: str | None
    reply: str | None
    explanation: str
    fix: str
    tenant: str = ""  # with several tenants: the tenant whose own-domain senders the row uses
    assumptions: tuple[str, ...] = ()  # the docs/relay-rules.md keys the prediction depends on

    def as_json(self) -> dict[str, object]:
        return {
            "tenant": self.tenant or None,
            "class": self.id,
            "label": self.label,
            "sender": self.sender,
            "recipient": self.recipient,
            "final": list(self.final),
            "relayed": self.relayed,
            "reason": self.reason,
            "code": self.code,
            "reply": self.reply,
            "explanation": self.explanation,
            "fix": self.fix,
            "assumptions": list(self.assumptions),
        }


@dataclass(frozen=True, slots=True)
class KeyCheck:
    """The result of comparing a private key with the certificate's leaf."""

    path: str
    result: bool | str  # True/False, or "unreadable: ..." from key_matches_certificate


@dataclass(frozen=True, slots=True)
class Report:
    """The whole audit: the checklist and the closing table."""

    checks: tuple[Check, ...]
    classes: tuple[MailClass, ...]

    @property
    def errors(self) -> int:
        return sum(1 for c in self.checks if c.status == ERROR)

    @property
    def warnings(self) -> int:
        return sum(1 for c in self.checks if c.status == WARNING)

    @property
    def exit_code(self) -> int:
        return EXIT_ERRORS if self.errors else EXIT_OK

    def status_of(self, check_id: str, tenant: str = "") -> str | None:
        """The status of the check ``check_id`` (about ``tenant``), None when not made."""
        for check in self.checks:
            if check.id == check_id and check.tenant == tenant:
                return check.status
        return None

    def as_json(self) -> dict[str, object]:
        return {
            "errors": self.errors,
            "warnings": self.warnings,
            "checks": [c.as_json() for c in self.checks],
            "classes": [c.as_json() for c in self.classes],
        }


def write_text(report: Report, out: TextIO, *, title: str = "") -> None:
    """The checklist grouped by area, then the closing table and the totals."""
    if title:
        out.write(f"{printable(title)}\n")
    tenants = list(dict.fromkeys(c.tenant for c in report.checks if c.tenant))
    for tenant in ["", *tenants]:
        if tenant:
            out.write(f"\n== Tenant {printable(tenant)} ==\n")
        for area in AREAS:
            checks = [c for c in report.checks if c.area == area and c.tenant == tenant]
            if not checks:
                continue
            out.write(f"\n{AREA_TITLES[area]}\n")
            for check in checks:
                out.write(f"  {MARKERS[check.status]} {check.id}: {printable(check.finding)}\n")
                if check.fix:
                    out.write(f"         fix: {printable(check.fix)}\n")
        _table(report, out, tenant)
    out.write(f"\n{report.errors} errors, {report.warnings} warnings\n")


def _table(report: Report, out: TextIO, tenant: str) -> None:
    rows = [c for c in report.classes if c.tenant == tenant]
    if not rows:
        return
    out.write(
        "\nWill Microsoft 365 relay it?"
        + (f" (tenant {printable(tenant)})" if tenant else "")
        + "\n"
    )
    width = max(len(c.label) for c in rows)
    for row in rows:
        envelope = f"<{row.sender}> -> {', '.join(row.final)}"
        answer = "yes" if row.relayed else "NO "
        reason = f"[{row.reason}]"
        out.write(f"  {row.label:<{width}}  {answer}  {reason:<24}  {printable(envelope)}\n")
        if row.fix:
            out.write(f"  {'':<{width}}       fix: {printable(row.fix)}\n")
        if row.assumptions:
            out.write(f"  {'':<{width}}       assumes: {', '.join(row.assumptions)}\n")


def write_json(report: Report, out: TextIO) -> None:
    json.dump(report.as_json(), out, indent=2)
    out.write("\n")
