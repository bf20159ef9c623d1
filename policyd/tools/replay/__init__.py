"""``m365-policyd replay``: backtest the predictions against Postfix's mail log.

The README's "Before you turn on defer: replay your mail log" is the user's description.

Reads the logs (``policyd.sources.maillog``), predicts every delivery attempt to a Microsoft
365 endpoint again with today's configuration and compares kinds
(``policyd.tools.replay.compare``), then prints the result (``policyd.tools.replay.report``).
Microsoft 365 endpoints are ``[outcomes] relay_hosts`` (by default the shared list of
``policyd.rules.endpoints``) and every tenant's ``endpoints`` globs.

Exit codes: 0 every compared delivery agrees, 1 some disagree, 2 usage (a bad option, a missing
or unreadable log), 78 configuration error.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from typing import IO

from policyd.constants import EXIT_CONFIG, EXIT_OK, EXIT_REFUSED, EXIT_USAGE
from policyd.errors import ConfigError
from policyd.sources.maillog import (
    LogCounts,
    LogError,
    open_logs,
    read_records,
    relay_prefilter,
)
from policyd.tools.replay import report, sweep
from policyd.tools.replay.compare import Comparison, Variant

HELP = "backtest the predictions against Postfix's mail log"
DESCRIPTION = (
    "Predict every delivery to Microsoft 365 found in Postfix logs with today's configuration "
    "and compare with what Microsoft 365 really answered (see the README). LOG is a file, a .gz "
    "file or - for `journalctl -o short-iso` output on standard input; a rotated set may be "
    "given in any order."
)
#: Disagreements listed when --limit is not given.
DEFAULT_LIMIT = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options after ``replay`` (``-c`` is added by the caller)."""
    parser.add_argument("logs", nargs="+", metavar="LOG", help="mail log files, .gz, or -")
    parser.add_argument(
        "--since", metavar="T", type=_time, help="only attempts at or after T (ISO 8601)"
    )
    parser.add_argument("--until", metavar="T", type=_time, help="only attempts before T")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--sweep-assumptions",
        action="store_true",
        help="compare under every combination of the [assumptions] and rank them",
    )
    parser.add_argument(
        "--limit",
        metavar="N",
        type=_count,
        default=DEFAULT_LIMIT,
        help=f"list the first N disagreements (default {DEFAULT_LIMIT})",
    )


def _time(text: str) -> datetime:
    """An ISO 8601 date or time; without a zone, this machine's (as syslog times are)."""
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (2026-11-01 or 2026-11-01T10:00:00+01:00)"
        ) from None
    return parsed if parsed.tzinfo is not None else parsed.astimezone()


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (0 or more)")
    return value


def command(
    args: argparse.Namespace,
    config_path: str,
    *,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
    stdin: IO[bytes] | None = None,
) -> int:
    """Run ``replay`` with parsed ``args``; returns the exit code."""
    from policyd.sources.state import load_state

    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    now = datetime.now().astimezone()
    try:
        logs = open_logs(args.logs, now)
    except LogError as error:
        err.write(f"m365-policyd replay: cannot read {error}\n")
        return EXIT_USAGE
    try:
        state = load_state(config_path, generation=0)
    except ConfigError as error:
        err.write(f"m365-policyd: configuration error: {error}\n")
        return EXIT_CONFIG
    variants = [Variant("today", state)]
    if args.sweep_assumptions:
        base = sweep.today(state)
        variants += [
            Variant(sweep.label(a, base), sweep.with_assumptions(state, a))
            for a in sweep.combinations(base)
        ]
    config = state.config
    relay_hosts = (
        *config.outcomes.relay_hosts,
        *config.tenant_endpoints,
        *(glob for tenant in config.tenants for glob in tenant.endpoints),
    )
    comparison = Comparison(
        variants, relay_hosts, since=args.since, until=args.until, limit=args.limit
    )
    counts = LogCounts()
    progress = _Progress(err) if _is_terminal(err) else None
    # the reader keeps the comparison's queue and hands it each attempt as it reads: feeding
    # the comparison its (empty) records reads the logs through
    records = read_records(
        logs,
        counts,
        stdin=stdin,
        progress=progress,
        relays=relay_prefilter(relay_hosts),
        messages=comparison.queue,
        attempts=comparison.attempt,
    )
    comparison.feed(records)
    if progress is not None:
        progress.done()
    data = report.result(comparison, counts, config.path)
    if args.json:
        report.write_json(data, out)
    else:
        report.write_text(data, out)
    for damaged in counts.damaged:
        err.write(f"m365-policyd replay: damaged log, read what was there: {damaged}\n")
    tally = comparison.today.tally
    return EXIT_OK if tally.agreed == tally.compared else EXIT_REFUSED


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class _Progress:
    """Lines and bytes read and the rate, rewritten in place on a terminal."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.start = time.monotonic()
        self.shown = False

    def __call__(self, counts: LogCounts) -> None:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        self.stream.write(
            f"\rreplay: {counts.lines:,} lines, {counts.bytes / 1e6:,.1f} MB, "
            f"{counts.lines / elapsed:,.0f} lines/s "
        )
        self.stream.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
