"""Asking Postfix itself: one runner for ``postconf`` and ``postmap``, and what doctor reads.

Every Postfix program the daemon or a tool runs goes through ``run_tool``: found on ``PATH``
or in the sbin directories Debian puts them in (``POSTFIX_PATH``; a unit's or cron's ``PATH``
often lacks ``/usr/sbin``), run with ``LC_ALL=C`` so messages are the ones we parse, and with a
timeout, so a hanging table server never hangs us.

``read_postfix`` reads the parameters doctor audits (``postconf -c DIR -x PARAM...``) and the
TLS policy for the relay host (``postmap -c DIR -q KEY MAP``). A missing or failing
``postconf`` is a ``PostfixFacts.error``, never a crash.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from policyd.errors import ConfigError, LookupFailureError
from policyd.rules import endpoints
from policyd.rules.routing import (
    ClientTls,
    PostfixView,
    Route,
    client_tls,
    resolve,
    split_list,
)
from policyd.rules.routing import tls_policy_keys as routing_tls_policy_keys
from policyd.sources.detours import Detour
from policyd.sources.instances import Instance, SecondaryRoutes, describe, secondary_routes

#: ``subprocess.run``'s shape; tests inject fakes.
Runner = Callable[..., "subprocess.CompletedProcess[str]"]

#: Where Postfix's programs live when ``PATH`` lacks them (Debian: /usr/sbin).
POSTFIX_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

#: Seconds a ``postconf`` run may take (doctor; start-up).
POSTCONF_TIMEOUT = 10.0


def find_tool(name: str) -> str | None:
    """The path of Postfix program ``name`` (``PATH`` first, then ``POSTFIX_PATH``), or None."""
    return shutil.which(name) or shutil.which(name, path=POSTFIX_PATH)


def run_tool(
    argv: Sequence[str], *, timeout: float, runner: Runner | None = None
) -> subprocess.CompletedProcess[str]:
    """Run one Postfix program with ``LC_ALL=C`` and ``timeout`` seconds.

    Raises ``subprocess.TimeoutExpired`` after ``timeout`` and ``OSError`` when it cannot start
    or when ``stop_tools()`` was called (the daemon is stopping: queued lookups must not hold
    the exit, issue 16); the exit status is the caller's to judge (``postmap -q`` exits 1 for
    "not found").
    """
    if _stopping.is_set():
        raise OSError("not started: the daemon is stopping")
    env = {**os.environ, "LC_ALL": "C"}
    if runner is not None:
        return runner(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False, env=env
        )
    with subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as process:
        with _live_lock:
            _live.add(process)
        try:
            if _stopping.is_set():
                process.kill()
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise
        finally:
            with _live_lock:
                _live.discard(process)
    if _stopping.is_set():
        raise OSError("killed: the daemon is stopping")
    return subprocess.CompletedProcess(list(argv), process.returncode, stdout, stderr)


_stopping = threading.Event()
_live: set[subprocess.Popen[str]] = set()
_live_lock = threading.Lock()


def stop_tools() -> None:
    """Kill every running Postfix program and refuse new runs (serve's shutdown): a lookup
    queued behind a hanging ``postmap`` then fails at once instead of holding the exit."""
    _stopping.set()
    with _live_lock:
        running = list(_live)
    for process in running:
        with contextlib.suppress(OSError):
            process.kill()


def last_line(text: str) -> str:
    """The last non-blank line of a program's output ("" when there is none)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


#: The Postfix parameters doctor reads (``postconf -x``: ``$name`` expanded).
POSTFIX_PARAMETERS = (
    "mail_version",
    "relayhost",
    "smtp_tls_security_level",
    "smtp_enforce_tls",
    "smtp_use_tls",
    "smtp_tls_policy_maps",
    "smtp_tls_cert_file",
    "smtp_tls_key_file",
    "smtp_tls_chain_files",
    "smtp_tls_CAfile",
    "smtpd_relay_restrictions",
    "smtpd_recipient_restrictions",
    "smtpd_data_restrictions",
    "smtpd_policy_service_default_action",
    "queue_directory",
    "notify_classes",
    "bounce_notice_recipient",
    "2bounce_notice_recipient",
    "delay_notice_recipient",
    "multi_instance_name",
    "multi_instance_directories",
)


#: What decides the source address Microsoft 365 sees (postconf(5)), read per service.
EGRESS_PARAMETERS = (
    "inet_protocols",
    "smtp_address_preference",
    "smtp_bind_address",
    "smtp_bind_address6",
    "smtp_bind_address_enforce",
)


@dataclass(frozen=True, slots=True)
class TlsPolicy:
    """What ``smtp_tls_policy_maps`` says for the relay host."""

    key: str = ""  # the lookup key that matched, "" when none did
    value: str = ""  # the policy, e.g. "encrypt protocols=>=TLSv1.2"
    error: str = ""  # a lookup that failed (postmap error), "" otherwise


@dataclass(frozen=True, slots=True)
class RouteSample:
    """How Postfix routes one sample envelope, and what its service presents."""

    label: str  # e.g. "own-domain senders"
    sender: str
    recipient: str
    route: Route | None  # None when routing failed (``error``)
    kind: str = endpoints.OTHER  # policyd.rules.endpoints kind of the next hop
    tls: ClientTls | None = None
    error: str = ""
    #: TLS towards the later destinations of a next-hop list and the ``smtp_fallback_relay``
    #: hosts (each looked up in ``smtp_tls_policy_maps`` on its own, smtp(8)).
    more_tls: tuple[ClientTls, ...] = ()
    #: The service's ``smtp_fallback_relay`` ("" = none), and where it was set.
    fallback_relay: str = ""
    fallback_from: str = ""
    #: The service's egress settings (``EGRESS_PARAMETERS``): name -> (value, where it was set).
    egress: Mapping[str, tuple[str, str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PostfixFacts:
    """Postfix's configuration as ``postconf -x`` printed it (or why it could not be read)."""

    directory: str
    parameters: Mapping[str, str] = field(default_factory=dict)
    error: str = ""  # non-empty: postconf is missing or failed
    tls_policy: TlsPolicy | None = None  # None: no smtp_tls_policy_maps or not looked up
    routes: tuple[RouteSample, ...] = ()  # the sample envelopes doctor asked for, routed
    route_error: str = ""  # why the routes could not be computed ("" when they were)
    #: content_filter / FILTER detours, reported only (``policyd.sources.detours``).
    detours: tuple[Detour, ...] = ()
    #: This instance, and its secondary instances' routes to Microsoft 365 (when primary).
    instance: Instance | None = None
    secondaries: tuple[SecondaryRoutes, ...] = ()

    @property
    def microsoft_route(self) -> RouteSample | None:
        """The first sample that reaches Microsoft 365 (relay or legacy endpoint), or None."""
        for sample in self.routes:
            if sample.route is not None and sample.kind in (endpoints.RELAY, endpoints.LEGACY):
                return sample
        return None

    def get(self, name: str) -> str:
        return self.parameters.get(name, "").strip()


def tls_policy_keys(relayhost: str) -> list[str]:
    """The ``smtp_tls_policy_maps`` keys Postfix would look up for the relay, in order: each
    destination of the list as ``policyd.rules.routing.tls_policy_keys`` gives them."""
    keys = [key for item in split_list(relayhost) for key in routing_tls_policy_keys(item)]
    return list(dict.fromkeys(keys))


#: Postfix list splitting (commas and whitespace, ``{ ... }`` kept whole).
split_postfix_list = split_list


def parse_postconf(output: str) -> dict[str, str]:
    """``name = value`` lines as printed by ``postconf`` into a mapping."""
    parameters: dict[str, str] = {}
    for line in output.splitlines():
        name, equals, value = line.partition("=")
        if equals and name.strip():
            parameters[name.strip()] = value.strip()
    return parameters


def read_postfix(
    directory: str,
    samples: Sequence[tuple[str, str, str]] = (),
    view: PostfixView | None = None,
    detours: tuple[Detour, ...] = (),
) -> PostfixFacts:
    """Read Postfix's parameters with ``postconf -c DIR -x``, route the ``samples``
    (label, sender, recipient) as trivial-rewrite would, and read the TLS policy for the
    next hop that reaches Microsoft 365 (else ``relayhost``). ``view``: the routing picture of
    ``directory`` already loaded (``State.postfix.view``, with its ``detours``); without it,
    both are read here."""
    postconf = find_tool("postconf")
    if postconf is None:
        return PostfixFacts(directory, error="postconf not found (is Postfix installed?)")
    try:
        done = run_tool(
            [postconf, "-c", directory, "-x", *POSTFIX_PARAMETERS], timeout=POSTCONF_TIMEOUT
        )
    except (OSError, subprocess.SubprocessError) as error:
        return PostfixFacts(directory, error=f"postconf failed: {error}")
    if done.returncode != 0:
        message = last_line(done.stderr) or f"exit status {done.returncode}"
        return PostfixFacts(directory, error=message)
    parameters = parse_postconf(done.stdout)
    routes, route_error, found = _route_samples(directory, samples, view)
    detours = detours or found
    policy = None
    maps = parameters.get("smtp_tls_policy_maps", "").strip()
    if maps:
        nexthop = parameters.get("relayhost", "")
        for sample in routes:
            if sample.route is not None and sample.kind != endpoints.OTHER:
                nexthop = sample.route.nexthop
                break
        policy = _lookup_tls_policy(directory, maps, nexthop)
    instance = describe(directory, parameters)

    def route(other: str) -> tuple[tuple[str, ...], Mapping[str, str], str]:
        from policyd.sources.routes import read_postfix_view  # it imports this module

        try:
            loaded = read_postfix_view(other)
        except ConfigError as problem:
            return (), {}, str(problem)
        found, failed, _ = _route_samples(other, samples, loaded.view)
        reached = tuple(
            f"{s.label} -> {s.route}"
            for s in found
            if s.route is not None and s.kind in (endpoints.RELAY, endpoints.LEGACY)
        )
        return reached, loaded.view.parameters, failed

    return PostfixFacts(
        directory,
        parameters,
        tls_policy=policy,
        routes=routes,
        route_error=route_error,
        detours=detours,
        instance=instance,
        secondaries=secondary_routes(instance, route) if samples else (),
    )


def _route_samples(
    directory: str, samples: Sequence[tuple[str, str, str]], view: PostfixView | None
) -> tuple[tuple[RouteSample, ...], str, tuple[Detour, ...]]:
    if not samples:
        return (), "", ()
    detours: tuple[Detour, ...] = ()
    if view is None:
        from policyd.sources.routes import read_postfix_view  # it imports this module

        try:
            loaded = read_postfix_view(directory)
        except ConfigError as error:
            return (), str(error), ()
        view, detours = loaded.view, loaded.detours
    routed: list[RouteSample] = []
    for label, sender, recipient in samples:
        try:
            route = resolve(view, sender, recipient)
            kind = endpoints.classify_nexthop(route.nexthop) if route.relays else endpoints.OTHER
            nexthop = route.nexthop if kind != endpoints.OTHER else ""
            tls = client_tls(view, route.transport, nexthop) if route.relays else None
            fallback, fallback_from = ("", "")
            more: tuple[ClientTls, ...] = ()
            egress: dict[str, tuple[str, str]] = {}
            if route.relays:
                fallback, fallback_from = view.service_parameter(
                    route.transport, "smtp_fallback_relay"
                )
                later = [*split_list(nexthop)[1:], *split_list(fallback)] if nexthop else []
                more = tuple(client_tls(view, route.transport, hop) for hop in later)
                egress = {
                    name: view.service_parameter(route.transport, name)
                    for name in EGRESS_PARAMETERS
                }
        except LookupFailureError as error:
            routed.append(RouteSample(label, sender, recipient, None, error=str(error)))
            continue
        routed.append(
            RouteSample(
                label,
                sender,
                recipient,
                route,
                kind,
                tls,
                "",
                more,
                fallback,
                fallback_from,
                egress,
            )
        )
    return tuple(routed), "", detours


def _lookup_tls_policy(directory: str, maps: str, relayhost: str) -> TlsPolicy:
    postmap = find_tool("postmap")
    if postmap is None:
        return TlsPolicy(error="postmap not found")
    errors: list[str] = []
    for key in tls_policy_keys(relayhost):
        for table in split_postfix_list(maps):
            try:
                done = run_tool(
                    [postmap, "-c", directory, "-q", key, table], timeout=POSTCONF_TIMEOUT
                )
            except (OSError, subprocess.SubprocessError) as error:
                errors.append(f"{table}: {error}")
                continue
            if done.returncode == 0 and done.stdout.strip():
                return TlsPolicy(key=key, value=done.stdout.strip().splitlines()[0])
            if done.returncode not in (0, 1) or "fatal" in done.stderr:
                errors.append(f"{table}: {last_line(done.stderr)}")
    return TlsPolicy(error="; ".join(dict.fromkeys(errors)))
