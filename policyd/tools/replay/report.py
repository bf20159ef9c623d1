"""What ``replay`` prints: one JSON object (the README's keys) and the same as text for people."""

from __future__ import annotations

import json
from typing import IO, Any

from policyd.rules.outcomes import OBSERVED_KINDS, PREDICTED_KINDS
from policyd.sources.maillog import LogCounts
from policyd.tools.replay.compare import Comparison, Disagreement
from policyd.tools.replay.sweep import changed_keys, label, today

#: Said with every result: a log older than a configuration change gives disagreements.
TODAY_NOTE = "predictions use today's configuration (routing, tenants, assumptions)"


def result(comparison: Comparison, counts: LogCounts, config_path: str) -> dict[str, Any]:
    """The ``--json`` object: at least ``lines``, ``skipped``, ``compared``, ``agreed``,
    ``without_sender``, ``table`` and ``disagreements`` (the README, "Before you turn on defer")."""
    base = comparison.today
    tally = base.tally
    out: dict[str, Any] = {
        "lines": counts.lines,
        "bytes": counts.bytes,
        "skipped": counts.skipped,
        "files": list(counts.files),
        "damaged": list(counts.damaged),
        "compared": tally.compared,
        "agreed": tally.agreed,
        "agreement": round(tally.agreement, 2),
        "without_sender": comparison.without_sender,
        "own_failures": comparison.own_failures,
        "duplicates": comparison.duplicates,
        "unpredictable": comparison.unpredictable,
        "observed": {
            kind: comparison.observed[kind] for kind in OBSERVED_KINDS if comparison.observed[kind]
        },
        "table": tally.table_dict(),
        "reasons": {
            reason: {"compared": counts_[0], "agreed": counts_[1]}
            for reason, counts_ in sorted(tally.reasons.items())
        },
        "disagreements_total": tally.disagreements,
        "disagreements": [_disagreement(d) for d in comparison.disagreements],
        "config": config_path,
        "note": TODAY_NOTE,
    }
    if len(comparison.variants) > 1:
        base_assumptions = today(base.state)
        ranked = sorted(
            comparison.variants,
            key=lambda v: (
                -v.tally.agreement,
                v is not base,
                v.adds,
                len(changed_keys(today(v.state), base_assumptions)),
            ),
        )
        out["sweep"] = [
            {
                "assumptions": changed_keys(today(v.state), base_assumptions),
                "label": label(today(v.state), base_assumptions),
                "compared": v.tally.compared,
                "agreed": v.tally.agreed,
                "agreement": round(v.tally.agreement, 2),
                "removes": v.removes,
                "adds": v.adds,
                "removed": list(v.removed_examples),
                "added": list(v.added_examples),
            }
            for v in ranked
        ]
    return out


def _disagreement(item: Disagreement) -> dict[str, Any]:
    return {
        "queue_id": item.queue_id,
        "time": item.time.isoformat(),
        "sender": item.sender,
        "recipient": item.recipient,
        "orig_to": item.orig_to or None,
        "observed": item.observed,
        "predicted": item.predicted,
        "reason": item.reason,
        "explanation": item.explanation,
        "reply": item.reply,
        "relay": item.relay,
        "tenant": item.tenant,
        "assumptions": list(item.assumptions),
    }


def write_json(data: dict[str, Any], out: IO[str]) -> None:
    json.dump(data, out, indent=2)
    out.write("\n")


def write_text(data: dict[str, Any], out: IO[str]) -> None:
    """The same result for people: agreement, the table, reasons, disagreements, sweep."""
    w = out.write
    w(f"replay of {len(data['files'])} log(s): {data['lines']} lines, {data['skipped']} skipped\n")
    w(f"note: {TODAY_NOTE}\n")
    for damaged in data["damaged"]:
        w(f"  damaged: {damaged}\n")
    w(
        f"\ncompared {data['compared']} deliveries to Microsoft 365: {data['agreed']} agree "
        f"({data['agreement']:.2f} %)\n"
    )
    w(f"  without sender in the log (not guessed): {data['without_sender']}\n")
    w(f"  Postfix's own failures (no reply of Microsoft's): {data['own_failures']}\n")
    if data["duplicates"]:
        w(f"  logged twice, compared once: {data['duplicates']}\n")
    if data["unpredictable"]:
        w(f"  not predicted (a lookup table failed): {data['unpredictable']}\n")
    table = data["table"]
    if table:
        columns = [k for k in OBSERVED_KINDS if any(k in row for row in table.values())]
        rows = [k for k in PREDICTED_KINDS if k in table]
        width = max(len("predicted \\ observed"), *(len(r) for r in rows))
        w("\n" + "predicted \\ observed".ljust(width))
        for column in columns:
            w(f"  {column:>{max(len(column), 5)}}")
        w("\n")
        for row in rows:
            w(row.ljust(width))
            for column in columns:
                w(f"  {table[row].get(column, 0):>{max(len(column), 5)}}")
            w("\n")
    if data["reasons"]:
        w("\nby predicted reason (compared / agreed):\n")
        for reason, counts in data["reasons"].items():
            w(f"  {reason:<24} {counts['compared']:>8} {counts['agreed']:>8}\n")
    if data["disagreements"]:
        shown = len(data["disagreements"])
        w(f"\ndisagreements ({shown} of {data['disagreements_total']}):\n")
        for d in data["disagreements"]:
            forwarded = f" (orig_to {d['orig_to']})" if d["orig_to"] else ""
            envelope = f"from <{d['sender']}> to <{d['recipient']}>{forwarded}"
            w(f"- {d['time']} {d['queue_id']} {envelope}\n")
            w(f"    predicted {d['predicted']} ({d['reason']}), observed {d['observed']}\n")
            w(f"    Microsoft 365 said: {d['reply']}\n")
            w(f"    {d['explanation']}\n")
    sweep = data.get("sweep")
    if sweep:
        w(
            "\nassumptions ranked by agreement (removes / adds: today's disagreements it fixes "
            "/ new ones):\n"
        )
        for entry in sweep:
            w(
                f"  {entry['agreement']:6.2f} %  -{entry['removes']} +{entry['adds']}  "
                f"{entry['label']}\n"
            )
