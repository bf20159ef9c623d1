"""The ``m365-policyd bench`` command line: its options, the text report, the exit status.

``add_arguments`` fills the ``bench`` sub-parser of ``policyd.tools.cli`` and ``command`` runs
the parsed arguments, like every other subcommand; ``main`` parses a bare argument list the same
way (tests, ``python -m policyd.tools.bench``). Exit status: 0 when every request was answered
well, 1 on errors (or when nothing connected), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from policyd.constants import EXIT_ERRORS, EXIT_OK, EXIT_USAGE
from policyd.tools.bench.endpoint import Endpoint, UsageError, parse_endpoint
from policyd.tools.bench.runner import (
    DEFAULT_CONNECTIONS,
    DEFAULT_DURATION,
    DEFAULT_TIMEOUT,
    BenchResult,
    run,
)

PROG = "m365-policyd bench"
HELP = "drive a running policy server with realistic Postfix traffic"
DESCRIPTION = (
    "Drive a running policy server with realistic Postfix traffic "
    "(RCPT, RCPT, DATA per message over lockstep connections) and report requests/s "
    "and latency percentiles."
)


def _endpoint(text: str) -> Endpoint:
    try:
        return parse_endpoint(text)
    except UsageError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _number(
    convert: Callable[[str], float], ok: Callable[[float], bool], rule: str
) -> Callable[[str], float]:
    """An argparse ``type`` that converts and checks one value; ``rule`` completes "must ..."."""

    def parse(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or not ok(value):
            raise argparse.ArgumentTypeError(f"must {rule}, not {text!r}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``bench`` options to ``parser`` (the ``bench`` sub-parser, or a parser of its own).

    Every value is checked here, so a bad one is an argparse usage error (exit 2) that names the
    option, as in every other subcommand.
    """
    parser.add_argument(
        "--connect",
        required=True,
        type=_endpoint,
        metavar="ENDPOINT",
        help="tcp:HOST:PORT, inet:HOST:PORT, HOST:PORT or unix:/path",
    )
    parser.add_argument(
        "--connections", type=_number(int, lambda n: n >= 1, "be at least 1"),
        default=DEFAULT_CONNECTIONS, metavar="N",
        help=f"lockstep connections, like busy smtpd processes (default {DEFAULT_CONNECTIONS})",
    )  # fmt: skip
    parser.add_argument(
        "--duration", type=_number(float, lambda s: s > 0, "be positive"),
        default=DEFAULT_DURATION, metavar="S",
        help=f"seconds to measure (default {DEFAULT_DURATION:g})",
    )  # fmt: skip
    parser.add_argument(
        "--rate", type=_number(float, lambda r: r >= 0, "not be negative"),
        default=0.0, metavar="R",
        help="offered load in requests/s, paced per connection (default: as fast as answered)",
    )  # fmt: skip
    parser.add_argument(
        "--processes", type=_number(int, lambda n: n >= 0, "not be negative"),
        default=0, metavar="P",
        help="generator processes (default 0: one per 50 connections, at most half the CPUs)",
    )  # fmt: skip
    parser.add_argument(
        "--requests", type=_number(int, lambda n: n >= 0, "not be negative"),
        default=0, metavar="N",
        help="stop after N answered requests (default: run for --duration)",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", type=_number(float, lambda s: s > 0, "be positive"),
        default=DEFAULT_TIMEOUT, metavar="S",
        help=f"seconds to wait for a reply before counting a timeout (default {DEFAULT_TIMEOUT:g})",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=1, help="traffic seed (default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def write_text(result: BenchResult, out: TextIO) -> None:
    """The human-readable report."""
    latency = result.latencies_ms
    mode = f"offered {result.offered_rate:g} req/s" if result.offered_rate else "closed loop"
    out.write(
        f"endpoint     {result.endpoint}\n"
        f"load         {result.connections} connections ({result.connected} connected), "
        f"{result.processes} process(es), {mode}, {result.duration:.2f} s\n"
        f"requests     {result.requests} answered, {result.requests_per_second:,.0f} req/s\n"
        f"latency ms   p50 {latency['p50']:.3f}  p99 {latency['p99']:.3f}  "
        f"p99.9 {latency['p99.9']:.3f}  max {latency['max']:.3f}\n"
    )
    if result.offered_rate:
        lag = result.send_lag_ms
        out.write(f"send lag ms  p99 {lag['p99']:.3f}  max {lag['max']:.3f} (generator lateness)\n")
    details = ", ".join(f"{kind} {count}" for kind, count in result.errors.items() if count)
    out.write(f"errors       {result.error_total}{f' ({details})' if details else ''}\n")


def command(args: argparse.Namespace) -> int:
    """Run ``m365-policyd bench`` with arguments parsed by a parser ``add_arguments`` filled.

    Prints the report (``--json``: one JSON object) on stdout; returns 0 when every request was
    answered well, 1 on errors or when nothing connected, 2 on a usage error.
    """
    endpoint: Endpoint = args.connect
    try:
        result = run(
            endpoint,
            int(args.connections),
            float(args.duration),
            rate=float(args.rate),
            processes=int(args.processes),
            timeout=float(args.timeout),
            seed=int(args.seed),
            max_requests=int(args.requests),
        )
    except UsageError as error:  # values argparse let through that ``run`` still refuses
        sys.stderr.write(f"{PROG}: error: {error}\n")
        return EXIT_USAGE
    if args.json:
        sys.stdout.write(json.dumps(result.as_dict()) + "\n")
    else:
        write_text(result, sys.stdout)
    if result.connected == 0:
        sys.stderr.write(f"{PROG}: could not connect to {endpoint}\n")
    return EXIT_OK if result.error_total == 0 and result.requests > 0 else EXIT_ERRORS


def parser() -> argparse.ArgumentParser:
    """A stand-alone parser for ``bench``, the same options and prog as the subcommand's."""
    standalone = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
    add_arguments(standalone)
    return standalone


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) as the ``bench`` options and run them."""
    try:
        args = parser().parse_args(argv)
    except SystemExit as exit_:  # argparse: --help exits 0, usage errors exit 2
        return int(exit_.code or 0)
    return command(args)
