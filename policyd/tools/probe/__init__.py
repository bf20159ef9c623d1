"""``m365-policyd probe``: ask Microsoft 365 itself, without sending mail (README, `probe`).

For each recipient the probe finds what the daemon would predict (``check``'s
``run_check``, so the two cannot disagree on the prediction) and where Postfix would deliver
it: the next hop, the client certificate and key, the source address (``[postfix]``'s route,
else ``onprem.certificate`` / ``--key`` / ``onprem.egress_addresses`` and ``--endpoint``). One
SMTP session per sender and target (``policyd.tools.probe.client``) asks at ``RCPT TO`` and
quits before ``DATA``. Each reply is classified into an observed kind
(``policyd.rules.outcomes.classify_reply``) and set beside the predicted kind.

Exit codes: 0 every probe agrees, 1 some disagree, 2 usage (too many recipients, no endpoint),
69 the endpoint cannot be reached or TLS fails, 78 configuration error (a key or certificate
that cannot be read is one line too).
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TextIO

from policyd.constants import (
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    PROBE_MAX_RECIPIENTS,
    PROBE_TIMEOUT,
)
from policyd.rules import endpoints
from policyd.rules.outcomes import classify_reply
from policyd.rules.predict import AddressPrediction, RecipientPrediction, RouteContext
from policyd.rules.reasons import LOCAL, OTHER_ROUTE, SUBMISSION_REASONS, predicted_kind
from policyd.tools.check import run_check
from policyd.tools.probe.client import ProbeError, Target, Transcript, client_context, session

if TYPE_CHECKING:
    from policyd.sources.state import State

SMTP_PORT = 25


class ProbeUsageError(Exception):
    """The question cannot be asked as given (exit 2): one line saying what to add."""


class ProbeConfigError(Exception):
    """A file the probe must present cannot be read (exit 78): one line naming it."""


@dataclass(frozen=True, slots=True)
class Question:
    """One ``RCPT TO`` to ask: the final address, its prediction and where to ask."""

    sender: str
    recipient: str  # as given
    address: str  # the final address (after alias expansion) Microsoft 365 sees
    predicted: str  # the predicted kind (README: observed kinds)
    reason: str
    tenant: str | None
    route: str  # "transport:nexthop" with [postfix], "" without
    target: Target


@dataclass(frozen=True, slots=True)
class Answer:
    """Microsoft's reply to one question, its kind, and whether it agrees with the prediction."""

    question: Question
    reply: str
    kind: str

    @property
    def agrees(self) -> bool:
        return self.kind == self.question.predicted

    def as_json(self) -> dict[str, object]:
        q = self.question
        return {
            "sender": q.sender,
            "recipient": q.recipient,
            "address": q.address,
            "reply": self.reply,
            "kind": self.kind,
            "predicted": q.predicted,
            "reason": q.reason,
            "agrees": self.agrees,
            "tenant": q.tenant,
            "route": q.route or None,
        }


def parse_endpoint(text: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[host]:port`` or ``[v6]:port`` -> (host, port); port 25."""
    hops = endpoints.parse_nexthop(text)
    if len(hops) != 1 or not hops[0].host:
        raise ProbeUsageError(f"--endpoint {text!r}: give one HOST[:PORT]")
    port = hops[0].port or str(SMTP_PORT)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ProbeUsageError(f"--endpoint {text!r}: the port must be 1-65535")
    return hops[0].host, int(port)


def _readable(path: str, what: str) -> None:
    """A one-line ``ProbeConfigError`` when ``path`` cannot be opened for reading."""
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as problem:
        raise ProbeConfigError(
            f"{what} {path}: {problem.strerror or problem}; the probe must present what "
            "Postfix presents, so run it as a user that can read it (as root, or as postfix)"
        ) from problem


def plan(
    state: State,
    sender: str,
    recipients: Sequence[str],
    now: datetime,
    *,
    endpoint: str = "",
    key: str = "",
    bind: bool = True,
    helo: str = "",
) -> tuple[list[Question], list[AddressPrediction]]:
    """The questions to ask for ``recipients`` of ``sender``, and the final addresses that
    are not relayed through Microsoft 365 (not probed).

    Raises ``ProbeUsageError`` (no endpoint known, too many addresses) and ``ProbeConfigError``
    (an unreadable certificate or key).
    """
    for given in (sender, *recipients):
        if any(ord(c) < 33 or c in "<>" for c in given):
            raise ProbeUsageError(
                f"{given!r}: an address with spaces, control characters or <> cannot be probed"
            )
    result = run_check(state, sender, recipients, now)
    questions: list[Question] = []
    skipped: list[AddressPrediction] = []
    for entry in result.recipients:
        if not isinstance(entry, RecipientPrediction):
            recipient, problem = entry
            raise ProbeUsageError(f"{recipient}: alias expansion failed: {problem}")
        for address in entry.addresses:
            if address.reason in (LOCAL, OTHER_ROUTE):  # Microsoft 365 never sees it
                skipped.append(address)
                continue
            if address.reason in SUBMISSION_REASONS:
                # The SMTP AUTH endpoint answers per login: a probe never logs in (it reads no
                # password), so it would only ever hear 530 5.7.57.
                skipped.append(address)
                continue
            context = result.routes.get(address.address)
            target = target_for(state, context, endpoint=endpoint, key=key, bind=bind, helo=helo)
            route = f"{context.route.transport}:{context.route.nexthop}" if context else ""
            questions.append(
                Question(
                    sender,
                    entry.recipient,
                    address.address,
                    predicted_kind(address.reason),
                    address.reason,
                    address.tenant,
                    route,
                    target,
                )
            )
    if len(questions) > PROBE_MAX_RECIPIENTS:
        raise ProbeUsageError(
            f"{len(questions)} addresses to probe; a probe asks about at most "
            f"{PROBE_MAX_RECIPIENTS} per run"
        )
    return questions, skipped


def target_for(
    state: State,
    context: RouteContext | None,
    *,
    endpoint: str = "",
    key: str = "",
    bind: bool = True,
    helo: str = "",
) -> Target:
    """Where and as whom Postfix would deliver: the route's next hop and service (with
    ``[postfix]``), else ``--endpoint``, ``onprem.certificate``, ``--key`` and the first
    ``onprem.egress_addresses``; ``--endpoint`` always wins for the host."""
    router = state.router
    name = helo
    if not name and router is not None:  # what smtp(8) says, when the picture holds it
        name = router.view.parameter("smtp_helo_name") or router.view.parameter("myhostname")
    name = name if name and "$" not in name else socket.getfqdn()
    if context is not None and router is not None:
        # The TLS level of this next hop (smtp_tls_policy_maps) decides whether smtp(8)
        # presents the certificate at all.
        tls = router.client_tls(context.route.transport, context.route.nexthop)
        host, port = _route_endpoint(context) if not endpoint else parse_endpoint(endpoint)
        certificate = tls.certificate_files[0] if tls.presents_certificate else ""
        if not key and certificate and tls.certificate_files == (certificate,):
            key_file, _ = router.view.service_parameter(
                context.route.transport, "smtp_tls_key_file"
            )
            key = "" if key_file in ("", "$smtp_tls_cert_file") else key_file
        egress = tls.bind_address if bind else ""
    else:
        if not endpoint:
            raise ProbeUsageError(
                "no route to ask: give --endpoint HOST[:PORT] (the tenant's MX, e.g. "
                "contoso-com.mail.protection.outlook.com), or configure [postfix]"
            )
        host, port = parse_endpoint(endpoint)
        config = state.config
        certificate = config.certificate_path
        egress_addresses = config.onprem.egress_addresses
        egress = str(egress_addresses[0]) if bind and egress_addresses else ""
    if certificate:
        _readable(certificate, "certificate")
    if key:
        _readable(key, "private key")
    target = Target(host, port, egress, certificate, key, name)
    try:
        client_context(target)  # the pair loads and matches, before anything is said
    except ProbeError as problem:
        raise ProbeConfigError(str(problem)) from problem
    return target


def _route_endpoint(context: RouteContext) -> tuple[str, int]:
    hops = endpoints.parse_nexthop(context.route.nexthop)
    if not hops:
        raise ProbeUsageError(
            f"the route {context.route} names no next hop: give --endpoint HOST[:PORT]"
        )
    return hops[0].host, int(hops[0].port or SMTP_PORT)


def certificate_label(target: Target) -> str:
    """``CN=mail.contoso.com`` of the certificate the probe presents, or ``no certificate``."""
    if not target.certificate:
        return "no certificate"
    from policyd.sources.pem import read_certificate

    facts = read_certificate(target.certificate)
    if facts.common_name:
        return f"CN={facts.common_name}"
    if facts.dns_names:
        return f"DNS={facts.dns_names[0]}"
    return target.certificate


def safety_line(target: Target) -> str:
    """The line said before connecting: where, from where, as whom, and that nothing is sent."""
    source = target.egress or "the address the kernel chooses"
    return (
        f"probing {target.host}:{target.port} from {source} with {certificate_label(target)}; "
        "no mail is sent"
    )


async def ask(
    reactor: Any,
    questions: Sequence[Question],
    *,
    timeout: float = PROBE_TIMEOUT,
    announce: TextIO | None = None,
) -> list[Answer]:
    """One session per (sender, target), in order; each reply classified. Raises
    ``ProbeError`` on the first session that cannot ask."""
    groups: dict[tuple[str, Target], list[Question]] = {}
    for question in questions:
        groups.setdefault((question.sender, question.target), []).append(question)
    answers: list[Answer] = []
    for (sender, target), group in groups.items():
        if announce is not None:
            announce.write(safety_line(target) + "\n")
            announce.flush()
        addresses = list(dict.fromkeys(q.address for q in group))
        transcript: Transcript = await session(reactor, target, sender, addresses, timeout=timeout)
        for question in group:
            reply = transcript.replies[question.address]
            answers.append(Answer(question, reply, classify_reply(reply)))
    return answers


def write_text(
    answers: Sequence[Answer], skipped: Sequence[AddressPrediction], out: TextIO
) -> None:
    """Per address: Microsoft's reply and kind beside the prediction; then the agreement."""
    for answer in answers:
        q = answer.question
        forwarded = f" (forwarded to {q.address})" if q.address != q.recipient else ""
        out.write(f"\n<{q.sender}> -> {q.recipient}{forwarded}\n")
        out.write(f"  Microsoft 365  {answer.reply}\n")
        out.write(f"  observed       {answer.kind}\n")
        where = f", tenant {q.tenant}" if q.tenant else ""
        where += f", route {q.route}" if q.route else ""
        out.write(f"  predicted      {q.predicted} [{q.reason}{where}]\n")
        out.write(f"  {'agrees' if answer.agrees else 'DISAGREES'}\n")
    for address in skipped:
        why = (
            "sent to the SMTP AUTH endpoint, where the login decides and a probe never logs in"
            if address.reason in SUBMISSION_REASONS
            else "not relayed through Microsoft 365"
        )
        out.write(f"\n{address.address}: {why} ({address.reason}), not probed\n")
    agreed = sum(1 for a in answers if a.agrees)
    out.write(f"\nAgreement  {agreed} of {len(answers)} probed addresses\n")


def as_json(endpoint: str, answers: Sequence[Answer]) -> dict[str, object]:
    """The ``probe --json`` object of the README ("Ask Microsoft 365 itself")."""
    return {"endpoint": endpoint, "results": [a.as_json() for a in answers]}


def main(
    config_path: str,
    *,
    sender: str | None,
    recipients: Sequence[str],
    endpoint: str = "",
    key: str = "",
    bind: bool = True,
    helo: str = "",
    timeout: float = PROBE_TIMEOUT,
    as_json_output: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
    now: datetime | None = None,
) -> int:
    """``m365-policyd probe``; see the module docstring for the exit codes."""
    from datetime import UTC

    from policyd.errors import ConfigError
    from policyd.sources.state import load_state

    stdout = out if out is not None else sys.stdout
    stderr = err if err is not None else sys.stderr
    try:
        state = load_state(config_path, generation=0)
    except ConfigError as error:
        stderr.write(f"m365-policyd: configuration error: {error}\n")
        return EXIT_CONFIG
    if sender is None:
        domains = state.config.tenant.accepted_domains
        sender = f"postmaster@{domains[0].domain}" if domains else "postmaster@example.invalid"
    moment = now if now is not None else datetime.now(UTC)
    try:
        questions, skipped = plan(
            state, sender, recipients, moment, endpoint=endpoint, key=key, bind=bind, helo=helo
        )
    except ProbeUsageError as problem:
        stderr.write(f"m365-policyd: probe: {problem}\n")
        return EXIT_USAGE
    except ProbeConfigError as problem:
        stderr.write(f"m365-policyd: configuration error: {problem}\n")
        return EXIT_CONFIG
    announce = stderr if as_json_output else stdout
    try:
        answers = run_sessions(questions, timeout=timeout, announce=announce)
    except ProbeError as problem:
        stderr.write(f"m365-policyd: probe: {problem}\n")
        return EXIT_UNAVAILABLE
    shown = (
        f"{questions[0].target.host}:{questions[0].target.port}" if questions else endpoint or ""
    )
    if as_json_output:
        json.dump(as_json(shown, answers), stdout, indent=2)
        stdout.write("\n")
    else:
        write_text(answers, skipped, stdout)
    return EXIT_OK if all(a.agrees for a in answers) else EXIT_REFUSED


def run_sessions(
    questions: Sequence[Question],
    *,
    timeout: float = PROBE_TIMEOUT,
    announce: TextIO | None = None,
) -> list[Answer]:
    """Run ``ask`` to completion on Twisted's global reactor, started and stopped here (so
    once per process, as a command does). Raises ``ProbeError``."""
    if not questions:
        return []
    from twisted.internet import defer
    from twisted.internet import reactor as global_reactor
    from twisted.python.failure import Failure

    reactor: Any = global_reactor
    outcome: list[Any] = []

    def start() -> None:
        done = defer.ensureDeferred(ask(reactor, questions, timeout=timeout, announce=announce))
        done.addBoth(outcome.append)
        done.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run(installSignalHandlers=False)
    result = outcome[0]
    if isinstance(result, Failure):
        result.raiseException()
    answers: list[Answer] = result
    return answers


__all__ = [
    "Answer",
    "ProbeConfigError",
    "ProbeError",
    "ProbeUsageError",
    "Question",
    "Target",
    "as_json",
    "ask",
    "main",
    "plan",
    "safety_line",
    "target_for",
    "write_text",
]
