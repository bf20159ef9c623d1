"""The ``m365-policyd`` command line (the README): serve, check, doctor, probe, bench, replay.

Exit codes: 0 fine, 1 a refusal predicted / doctor found errors, 2 usage error,
78 configuration error (one line naming the file, the key and the fix).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

from policyd import __version__
from policyd.constants import (
    ACCEPT,
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    PROBE_MAX_RECIPIENTS,
    PROBE_TIMEOUT,
)
from policyd.sources.config import default_config_path
from policyd.sources.schema import CONFIG_ENV, CONFIG_PATH
from policyd.tools.bench import commandline as bench_cli


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="m365-policyd",
        description="Postfix policy daemon that predicts Microsoft 365 relay refusals "
        "(550 5.7.64) before Postfix accepts the mail.",
    )
    parser.add_argument("--version", action="version", version=f"m365-policyd {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def config_option(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "-c",
            "--config",
            metavar="FILE",
            default=None,
            help=(f"configuration file (default: ${CONFIG_ENV}, else {CONFIG_PATH})"),
        )

    def recipient_option(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--recipient",
            required=True,
            nargs="+",
            action="extend",
            metavar="ADDR",
            help="one or more envelope recipients (the option may repeat)",
        )

    serve = commands.add_parser("serve", help="run the policy server in the foreground")
    config_option(serve)

    check = commands.add_parser("check", help="predict one envelope offline and explain it")
    config_option(check)
    check.add_argument(
        "--sender", required=True, metavar="ADDR", help="envelope sender; '' is the null sender"
    )
    recipient_option(check)
    check.add_argument("--json", action="store_true", help="print one JSON object")

    doctor = commands.add_parser(
        "doctor", help="audit certificate, tenant, connectors and Postfix configuration"
    )
    config_option(doctor)
    doctor.add_argument(
        "--postfix-dir", metavar="DIR", default="/etc/postfix", help="Postfix config_directory"
    )
    doctor.add_argument(
        "--key", metavar="FILE", help="private key to check against the certificate"
    )
    doctor.add_argument("--json", action="store_true", help="print one JSON object")
    doctor.add_argument(
        "--probe",
        action="store_true",
        help="also probe the mail-class table live at Microsoft 365 (SMTP up to RCPT TO, no DATA)",
    )
    doctor.add_argument(
        "--endpoint", metavar="HOST[:PORT]", default="", help="with --probe: where to connect"
    )

    probe = commands.add_parser(
        "probe",
        help="ask Microsoft 365 itself at RCPT TO, without sending mail (no DATA)",
        description="Connects as Postfix would (route, egress address, STARTTLS, client "
        "certificate), says MAIL FROM and RCPT TO, records each reply, and quits before DATA. "
        f"At most {PROBE_MAX_RECIPIENTS} addresses per run. Exit 0 every reply agrees with "
        "the prediction, 1 some disagree, 2 usage, 69 unreachable or TLS failed, 78 config.",
    )
    config_option(probe)
    probe.add_argument(
        "--endpoint",
        metavar="HOST[:PORT]",
        default="",
        help="where to connect (default: the route's next hop with [postfix]; port 25)",
    )
    probe.add_argument(
        "--key", metavar="FILE", default="", help="private key of the client certificate"
    )
    probe.add_argument(
        "--sender",
        metavar="ADDR",
        default=None,
        help="envelope sender; '' is the null sender (default: postmaster@ first accepted domain)",
    )
    recipient_option(probe)
    probe.add_argument(
        "--no-bind",
        action="store_true",
        help="let the kernel choose the source address (behind NAT) instead of the egress address",
    )
    probe.add_argument("--helo", metavar="NAME", default="", help="EHLO name (default: FQDN)")
    probe.add_argument(
        "--timeout",
        metavar="S",
        type=float,
        default=PROBE_TIMEOUT,
        help=f"seconds for each step: connect, every reply, TLS (default {PROBE_TIMEOUT:g})",
    )
    probe.add_argument("--json", action="store_true", help="print one JSON object")

    bench = commands.add_parser("bench", help=bench_cli.HELP, description=bench_cli.DESCRIPTION)
    bench_cli.add_arguments(bench)

    from policyd.tools import replay as replay_cli

    replay = commands.add_parser("replay", help=replay_cli.HELP, description=replay_cli.DESCRIPTION)
    config_option(replay)
    replay_cli.add_arguments(replay)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse: --help/--version exit 0, usage errors exit 2
        return int(exit_.code or 0)
    if args.command is None:
        parser.print_usage(sys.stderr)
        sys.stderr.write(
            "m365-policyd: error: a command is required "
            "(serve, check, doctor, probe, bench, replay)\n"
        )
        return EXIT_USAGE
    if args.command == "bench":
        return bench_cli.command(args)
    config_path = args.config or default_config_path(os.environ)
    if args.command == "serve":
        from policyd.daemon import serve as server

        return server.run(config_path)
    if args.command == "check":
        return _check(config_path, args.sender, args.recipient, as_json=args.json)
    if args.command == "replay":
        from policyd.tools import replay as replay_cli

        return replay_cli.command(args, config_path)
    if args.command == "doctor":
        from policyd.tools import doctor

        return doctor.main(
            config_path,
            postfix_dir=args.postfix_dir,
            key=args.key,
            as_json=args.json,
            probe=args.probe,
            endpoint=args.endpoint,
        )
    if args.command == "probe":
        from policyd.tools import probe as prober

        if args.timeout <= 0:
            sys.stderr.write("m365-policyd: probe: --timeout must be positive\n")
            return EXIT_USAGE
        return prober.main(
            config_path,
            sender=args.sender,
            recipients=args.recipient,
            endpoint=args.endpoint,
            key=args.key,
            bind=not args.no_bind,
            helo=args.helo,
            timeout=args.timeout,
            as_json_output=args.json,
        )
    return EXIT_USAGE  # pragma: no cover - argparse rejects unknown commands


def _check(config_path: str, sender: str, recipients: Sequence[str], *, as_json: bool) -> int:
    from policyd.errors import ConfigError
    from policyd.sources.state import load_state
    from policyd.tools import check

    try:
        state = load_state(config_path, generation=0)
    except ConfigError as error:
        sys.stderr.write(f"m365-policyd: configuration error: {error}\n")
        return EXIT_CONFIG
    result = check.run_check(state, sender, recipients, datetime.now(UTC))
    if as_json:
        check.write_json(result, sys.stdout)
    else:
        check.write_text(result, sys.stdout)
    return EXIT_OK if result.verdict == ACCEPT else EXIT_REFUSED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
