"""``m365-policyd serve``: configuration → objects → reactor (the wiring layer).

``run(config_path)`` loads the configuration, builds the prediction state, the engine and the
protocol factory, listens on every ``server.listen`` endpoint (``tcp:``, ``unix:``, systemd
socket activation) and on ``server.metrics``, then runs the reactor until SIGTERM/SIGINT.

- **Reload** (SIGHUP, or the ``reload_interval`` check finding a changed file): a new
  configuration and state are built off to the side and swapped in one step; a failure keeps
  the old state, logs one line and is counted. Endpoints are not re-bound.
- **Shutdown**: stop listening, let the reactor read and answer what is already on the
  connections, close them, exit 0 — well within systemd's and the spec's 5 seconds.
- **systemd**: ``READY=1`` once listening, ``RELOADING=1``/``READY=1`` around reloads,
  ``STOPPING=1``.

Exit status: 0 after a clean stop, 1 when an endpoint cannot listen, 78 for a configuration
error (one line on stderr naming the file, the key and the fix).
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import UTC
from types import FrameType
from typing import Any

from twisted.internet import defer, task, threads
from twisted.logger import Logger

from policyd import __version__
from policyd.constants import EXIT_CONFIG, EXIT_OK
from policyd.daemon.endpoints import (
    Endpoint,
    ListenError,
    Reactor,
    exposed,
    parse_endpoint,
)
from policyd.daemon.followers import OutcomeWatcher
from policyd.daemon.log import FIELDS, AcceptErrors, LogOutput, default_output, start_logging
from policyd.daemon.metrics import MetricsSite, PolicydCollector, make_registry, metrics_site
from policyd.daemon.systemd import Notifier
from policyd.daemon.watch import FileWatcher, Stamp, StatFunction, watched_paths
from policyd.engine.policy import PolicyEngine
from policyd.engine.stats import ACCEPT_FAILED, Stats
from policyd.errors import ConfigError
from policyd.sources.postfix import stop_tools
from policyd.sources.schema import CONFIG_ENV, CONFIG_PATH
from policyd.sources.state import State, load_state
from policyd.wire.protocol import PolicyFactory
from policyd.wire.writer import EndOfTurn

#: After the listeners stop, how long connections may still deliver what Postfix already sent.
SHUTDOWN_GRACE = 0.1
#: How long to wait for closed connections to finish flushing before the reactor stops.
SHUTDOWN_DRAIN = 2.0

_log = Logger(namespace="policyd.daemon.serve")

# Twisted's reactor, endpoints and ports are zope interfaces, which mypy cannot check without
# the mypy-zope plugin; these aliases say what is meant where the type has to be ``Any``.
ListeningPort = Any  # IListeningPort
ProtocolFactory = Any  # IProtocolFactory: the PolicyFactory, the metrics Site, or a test double

# --- describing what was loaded -------------------------------------------------------------


def describe_state(state: State) -> dict[str, object]:
    """The start-up/reload log fields: what the daemon now predicts with."""
    config = state.config
    tenant = config.tenant
    fields: dict[str, object] = {
        "generation": state.generation,
        "accepted_domains": [
            d.domain + (" (+subdomains)" if d.match_subdomains else "")
            for d in tenant.accepted_domains
        ],
        "connectors": [
            f"{c.name} ({c.connector_type}, {'enabled' if c.enabled else 'disabled'})"
            for c in tenant.connectors
        ],
        "reject_direct_send": tenant.reject_direct_send,
        "egress_addresses": [str(a) for a in config.onprem.egress_addresses],
    }
    certificate = config.onprem.certificate
    if certificate is None:
        fields["certificate"] = "none"
    elif not certificate.readable:
        fields["certificate"] = f"{certificate.path}: {certificate.error}"
    else:
        expiry = (
            certificate.not_after.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            if certificate.not_after
            else "unknown"
        )
        fields["certificate"] = certificate.path
        fields["certificate_names"] = list(certificate.names)
        fields["certificate_not_after"] = expiry
    fields["alias_maps"] = list(config.alias_maps)
    fields["listen"] = list(config.server.listen)
    fields["metrics"] = config.server.metrics or "off"
    return fields


#: At most this many alias-map warnings are logged per load (a big map can have many).
ALIAS_WARNINGS_LOGGED = 20


def log_alias_warnings(state: State) -> None:
    """Log postmap-style warnings about the alias map sources (duplicates, odd lines)."""
    warnings = state.aliases.warnings
    for warning in warnings[:ALIAS_WARNINGS_LOGGED]:
        _log.warn("alias map: {warning}", warning=warning)
    if len(warnings) > ALIAS_WARNINGS_LOGGED:
        _log.warn(
            "alias map: {count} more warnings not shown",
            count=len(warnings) - ALIAS_WARNINGS_LOGGED,
        )


# --- the server -----------------------------------------------------------------------------


class Server:
    """One running daemon: owns the engine, the factory, the listeners and the reload logic."""

    def __init__(
        self,
        config_path: str,
        state: State,
        reactor: Reactor,
        output: LogOutput,
        *,
        stats: Stats | None = None,
        notifier: Notifier | None = None,
        stat: StatFunction = os.stat,
        load: Callable[[str, int], State] | None = None,
        factory: ProtocolFactory | None = None,
        handle_sighup: bool = False,
        end_of_turn: Callable[[Callable[[], None]], object] | None = None,
    ) -> None:
        """``load(path, generation)`` builds a new state (default: ``load_state``, as ``check``
        does); ``factory`` replaces the policy protocol factory (tests only);
        ``handle_sighup`` installs the process-wide SIGHUP handler (``run`` only);
        ``end_of_turn`` is the ``EndOfTurn`` the log output flushes with, which the replies
        then share (``run``)."""
        self.config_path = config_path
        self.reactor = reactor
        self.output = output
        self.stats = stats if stats is not None else Stats()
        self.notifier = notifier or Notifier()
        self._load = load or load_state
        self.exit_status = EXIT_OK
        self.ports: list[ListeningPort] = []
        self.metrics_site: MetricsSite | None = None  # once endpoints() made it
        self.outcomes = OutcomeWatcher(self.stats, reactor)  # follows [outcomes] once started
        self.engine: PolicyEngine = PolicyEngine(
            state,
            self.stats,
            reactor.seconds,
            output.emit,
            outcomes=self.outcomes,
            in_thread=_in_thread(reactor),
            predictions=output.prediction,
        )
        self.factory: ProtocolFactory = factory or PolicyFactory(
            self.engine, self.stats, state.config.server, reactor, end_of_turn
        )
        if hasattr(self.factory, "noisy"):
            self.factory.noisy = False  # no "Starting factory <object at 0x...>" lines
        self.collector = PolicydCollector(
            self.stats,
            clock=reactor.seconds,
            certificates=self.engine.certificate_matches,
            tenants=lambda: [t.name for t in self.engine.state.predictor.tenants],
        )
        self.watcher = FileWatcher(stat)
        self.watcher.watch(self.watcher.snapshot([config_path, *watched_paths(state)]))
        self._checker: task.LoopingCall | None = None
        self._handle_sighup = handle_sighup
        #: A SIGHUP that arrived before serving (``run`` shares its early handler's list here):
        #: reload once the real handler is installed.
        self.reload_requested = False
        self.pending_sighups: list[int] = []
        self._stopping = False
        self._sighup_queued = False
        self._reload_running = False
        self._reload_again: str | None = None
        self.stats.last_reload_success = reactor.seconds()

    @property
    def state(self) -> State:
        return self.engine.state

    # --- start ------------------------------------------------------------------------------

    def endpoints(self) -> list[tuple[str, str, Endpoint, ProtocolFactory]]:
        """(key, description, endpoint, factory) for every listener; raises ListenError."""
        server = self.state.config.server
        found = []
        for description in server.listen:
            endpoint = parse_endpoint(self.reactor, description, self.config_path, "server.listen")
            found.append(("server.listen", description, endpoint, self.factory))
        if server.metrics:
            endpoint = parse_endpoint(
                self.reactor, server.metrics, self.config_path, "server.metrics"
            )
            closed = self.stats.metrics_connections_closed

            def count(reason: str) -> None:
                closed[reason] += 1

            site = metrics_site(
                make_registry(self.collector),
                max_connections=server.metrics_max_connections,
                total_timeout=server.metrics_timeout,
                count=count,
                reactor=self.reactor,
            )
            self.metrics_site = site
            found.append(("server.metrics", server.metrics, endpoint, site))
        return found

    @defer.inlineCallbacks
    def start(self, endpoints: Sequence[tuple[str, str, Endpoint, ProtocolFactory]]) -> Any:
        """Listen everywhere, then announce readiness; on failure exit with status 1."""
        for key, description, endpoint, factory in endpoints:
            try:
                port = yield endpoint.listen(factory)
            except Exception as error:  # CannotListenError, OSError, ...: all mean "cannot listen"
                self.fail(ListenError(f"cannot listen on {description!r} ({key}): {_why(error)}"))
                return
            self.ports.append(port)
        _log.info(
            "m365-policyd {version} ready",
            version=__version__,
            **{FIELDS: describe_state(self.state) | {"config": self.config_path}},
        )
        log_alias_warnings(self.state)
        self.configure_outcomes()
        self.install_reload()
        settle_heap()
        self.notifier.ready(status=f"serving {len(self.ports)} endpoint(s)")

    def fail(self, error: ListenError) -> None:
        """Report a start-up failure on stderr and stop with its exit status."""
        sys.stderr.write(f"m365-policyd: {error}\n")
        sys.stderr.flush()
        self.exit_status = error.status
        if self.reactor.running:
            self.reactor.stop()

    def crashed(self, failure: Any) -> None:
        """A bug during start-up: log it with its traceback and exit 1 rather than hang."""
        _log.failure("start-up failed", failure)
        self.fail(ListenError(f"start-up failed: {failure.getErrorMessage()}"))

    def configure_outcomes(self) -> None:
        """Follow ``[outcomes] postfix_log`` (docs/postfix.md); a changed restarts the follower."""
        settings = self.state.config.outcomes
        self.outcomes.configure(settings.postfix_log, settings.relay_hosts)

    def install_reload(self) -> None:
        """SIGHUP and, when ``reload_interval`` > 0, the periodic changed-file check."""
        if self._handle_sighup:
            signal.signal(signal.SIGHUP, self._on_sighup)
        self._schedule_checks(self.state.config.server.reload_interval)
        if self.reload_requested or self.pending_sighups:
            self.reload_requested = False
            self.pending_sighups.clear()
            self.reactor.callLater(0, self.reload, "SIGHUP during start-up")

    def _on_sighup(self, number: int, frame: FrameType | None) -> None:
        # A storm of SIGHUPs coalesces: one reload is queued at a time (issue 16).
        if self._sighup_queued:
            return
        self._sighup_queued = True
        self.reactor.callFromThread(self._reload_for_sighup)

    def _reload_for_sighup(self) -> None:
        self._sighup_queued = False
        self.reload("SIGHUP")

    def _schedule_checks(self, interval: float) -> None:
        if self._checker is not None and self._checker.running:
            if self._checker.interval == interval:
                return
            self._checker.stop()
        self._checker = None
        if interval and interval > 0 and not self._stopping:
            self._checker = task.LoopingCall(self.check_files)
            self._checker.clock = self.reactor
            self._checker.start(interval, now=False).addErrback(
                lambda failure: _log.failure("changed-file check stopped", failure)
            )

    # --- reload -----------------------------------------------------------------------------

    def check_files(self) -> bool:
        """Reload when a watched file changed and has stopped changing (two checks in a row
        saw the same new stamps: a file caught mid-write is never loaded); True when a reload
        was attempted."""
        changed = self.watcher.settled()
        if not changed:
            return False
        self.reload("changed: " + ", ".join(changed))
        return True

    def reload(self, trigger: str) -> bool:
        """Build a new state off to the side and swap it in; True on success.

        With a real reactor the files are read and parsed in its thread pool and only the swap
        runs on the reactor, so a slow read (a big alias map, ``postmap``) never delays answers
        (issue 16); the result is then False here and the outcome is logged and counted when
        the load finishes. A reload asked for while one is running runs once after it.
        A failure keeps the current state, logs one line and counts
        ``reloads{result="failure"}``. The files seen before loading are remembered either
        way, so a broken file is retried when it changes again, not every interval.
        """
        if self._stopping:
            return False
        if self._reload_running:
            self._reload_again = trigger
            return False
        self._reload_running = True
        self.notifier.reloading()
        before = self.watcher.snapshot([self.config_path, *self.watcher.paths])
        generation = self.state.generation + 1
        run = _in_thread(self.reactor)
        if run is None:
            try:
                state = self._load(self.config_path, generation)
            except Exception as error:
                return self._reload_done(error, before, trigger)
            return self._reload_done(state, before, trigger)
        loading = run(self._load, self.config_path, generation)
        loading.addCallbacks(
            lambda state: self._reload_done(state, before, trigger),
            lambda failure: self._reload_done(failure.value, before, trigger),
        )
        loading.addErrback(lambda failure: _log.failure("reload", failure))
        return False

    def _reload_done(
        self, result: State | BaseException, before: dict[str, Stamp], trigger: str
    ) -> bool:
        try:
            if self._stopping:
                return False
            return self._apply(result, before, trigger)
        finally:
            self._reload_running = False
            self.notifier.ready()
            again, self._reload_again = self._reload_again, None
            if again is not None and not self._stopping:
                self.reactor.callLater(0, self.reload, again)

    def _apply(self, result: State | BaseException, before: dict[str, Stamp], trigger: str) -> bool:
        old = self.state
        if isinstance(result, BaseException):  # a bug while loading must not take us down
            self.stats.reloads["failure"] += 1
            if isinstance(result, ConfigError):
                problem = str(result)
                if result.file and result.file not in before:
                    before |= self.watcher.snapshot([result.file])
            else:
                problem = f"internal error {result!r}"
            self.watcher.watch(before)
            _log.error(
                "reload failed, still using generation {generation}: {problem}",
                generation=old.generation,
                problem=problem,
                **{FIELDS: {"trigger": trigger}},
            )
            return False
        state = result
        paths = [self.config_path, *watched_paths(state)]
        self.watcher.watch({p: before[p] if p in before else self.watcher.stamp(p) for p in paths})
        # The swap: everything the next request sees comes from the new state.
        config = state.config
        self.engine.replace_state(state)
        if hasattr(self.factory, "settings"):
            self.factory.settings = config.server
        if self.metrics_site is not None:  # the budget applies to connections from now on
            self.metrics_site.set_budget(
                config.server.metrics_max_connections, config.server.metrics_timeout
            )
        self.output.configure(config.log.format, config.log.level)
        self.stats.reloads["success"] += 1
        self.stats.last_reload_success = self.reactor.seconds()
        log_alias_warnings(state)
        _log.info(
            "reloaded configuration",
            **{FIELDS: describe_state(state) | {"trigger": trigger}},
        )
        old_server = old.config.server
        if (tuple(config.server.listen), config.server.metrics) != (
            tuple(old_server.listen),
            old_server.metrics,
        ):
            _log.warn(
                "server.listen/server.metrics changed; endpoints are bound at start only, "
                "restart m365-policyd to apply (still listening on {listen} and metrics {metrics})",
                listen=", ".join(old_server.listen),
                metrics=old_server.metrics or "off",
            )
        self._schedule_checks(config.server.reload_interval)
        self.configure_outcomes()
        replaced = [old]
        del old
        if settle_after_reload(replaced):
            _log.debug("reload: the replaced state was still referenced; collected the whole heap")
        return True

    # --- shutdown ---------------------------------------------------------------------------

    @defer.inlineCallbacks
    def shutdown(self) -> Any:
        """Stop listening, answer what was already received, close every connection."""
        if self._stopping:
            return
        self._stopping = True
        self.notifier.stopping()
        if self._checker is not None and self._checker.running:
            self._checker.stop()
        self.outcomes.stop()
        _log.info("stopping: no longer accepting connections")
        ports, self.ports = self.ports, []
        results = yield defer.DeferredList(
            [defer.maybeDeferred(port.stopListening) for port in ports], consumeErrors=True
        )
        for ok, failure in results:
            if not ok:
                _log.warn("stop listening failed: {why}", why=failure.getErrorMessage())
        # Requests are answered synchronously as they are read: one more turn of the reactor
        # (and a little slack for bytes in flight) answers everything Postfix already sent.
        yield task.deferLater(self.reactor, SHUTDOWN_GRACE, lambda: None)
        # Queued lookups behind a hanging postmap must not hold the exit (SPEC §6: 5 s):
        # running ones are killed, queued ones fail at once and answer on_error. Process-wide,
        # so only for a real reactor (the process is ending), never a test's memory reactor.
        if _in_thread(self.reactor) is not None:
            stop_tools()
        disconnect = getattr(self.factory, "disconnect_all", None)
        if disconnect is not None:
            disconnect()
        deadline = self.reactor.seconds() + SHUTDOWN_DRAIN
        while getattr(self.factory, "open_count", 0) and self.reactor.seconds() < deadline:
            yield task.deferLater(self.reactor, 0.01, lambda: None)
        self.output.flush()


#: At exit, how long a stalled stdout may take to accept the last log lines.
LOG_DRAIN_SECONDS = 1.0

#: File descriptors the daemon needs besides policy connections (listeners, metrics, log files,
#: postmap pipes, the outcome follower).
FD_MARGIN = 64


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit now in force.

    Each Postfix connection is a file descriptor. The usual soft limit (1024) is below the
    default ``max_connections`` (4096); past it, Twisted closes new connections at accept time
    (counted as ``accept-failed``, see ``policyd.daemon.log.AcceptErrors``).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # a container may refuse: keep what we have
            pass
    return soft


def _in_thread(reactor: Any) -> Callable[..., Any] | None:
    """Run blocking alias lookups (postmap) in the reactor's thread pool; None without one."""
    get_pool = getattr(reactor, "getThreadPool", None)
    if get_pool is None:  # a test reactor: lookups happen in place
        return None

    def run(function: Callable[..., Any], *args: Any) -> Any:
        return threads.deferToThreadPool(reactor, get_pool(), function, *args)

    return run


def settle_heap() -> None:
    """Collect once, then move every live object out of the garbage collector's way.

    The loaded state (tenant, alias maps: up to hundreds of thousands of objects) lives until the
    next reload; without ``gc.freeze()`` every full collection walks it and pauses request
    handling for milliseconds (measured: 17 ms at start-up, ~1 ms eleven times per 10 s).
    Frozen objects are still freed by reference counting; unfreezing first lets this collection
    also reclaim any cycles left over from a previous state. It walks the whole heap: at
    start-up, and after a reload only when needed (``settle_after_reload``).
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def settle_after_reload(replaced: list[State]) -> bool:
    """After a reload's swap: collect and freeze what is not frozen yet (the new state, what
    the load left behind); True when the whole heap had to be collected too.

    ``replaced`` holds the one reference left to the old state; it is emptied here. Walking
    the whole heap (``settle_heap``) paused answers for 55-75 ms at every reload, so it runs
    only when the old state is still held by something else once that reference is dropped:
    a reference cycle (which only a full collection of the unfrozen heap reclaims) or a lookup
    still in flight. A state holds no cycles below its root (``tests/test_hardening.py``
    checks that a dropped state leaves no cyclic garbage), so normally reference counting
    frees it whole, at once.
    """
    old = replaced.pop()
    held = sys.getrefcount(old) > 2  # this name and getrefcount's argument
    del old
    if held:
        settle_heap()
        return True
    gc.collect()  # what is not frozen: the new state; frozen objects are not walked
    gc.freeze()
    return False


def _why(error: BaseException) -> str:
    """The useful part of a listen error (Twisted wraps the OS error in CannotListenError)."""
    inner = getattr(error, "socketError", None)
    if isinstance(inner, OSError) and inner.strerror:
        return inner.strerror
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or repr(error)


def _global_reactor() -> Any:
    # Imported late: importing the module installs the default reactor, which only ``run``
    # (not a test building a Server on a memory reactor) may do.
    from twisted.internet import reactor

    return reactor


# --- entry point ----------------------------------------------------------------------------


def run(config_path: str, reactor: Reactor | None = None) -> int:
    """``m365-policyd serve``: run in the foreground until SIGTERM/SIGINT; the exit status."""
    # Until the reactor runs, a SIGHUP (systemctl reload while a big alias map loads) must not
    # kill the process (its default action); remember it and reload once serving.
    early_hups: list[int] = []
    previous = signal.signal(signal.SIGHUP, lambda number, frame: early_hups.append(number))
    try:
        state = load_state(config_path, 0)
    except ConfigError as error:
        signal.signal(signal.SIGHUP, previous)
        sys.stderr.write(f"m365-policyd: configuration error: {error}\n")
        return EXIT_CONFIG
    if reactor is None:
        reactor = _global_reactor()
    assert reactor is not None
    config = state.config
    stats = Stats()

    def dropped(lines: int) -> None:
        stats.log_lines_dropped += lines

    # One call at the end of each reactor turn sends its replies, then writes its log lines.
    end_of_turn = EndOfTurn(reactor.callLater)
    output = default_output(config.log.format, config.log.level, end_of_turn.last, dropped)
    server = Server(
        config_path,
        state,
        reactor,
        output,
        stats=stats,
        handle_sighup=True,
        end_of_turn=end_of_turn,
    )
    del state  # the server owns it now: a reload frees it whole (settle_after_reload)
    try:
        endpoints = server.endpoints()
    except ListenError as error:
        signal.signal(signal.SIGHUP, previous)
        sys.stderr.write(f"m365-policyd: {error}\n")
        return error.status

    def accept_failed(connections: int) -> None:
        stats.protocol_errors[ACCEPT_FAILED] += connections

    start_logging(AcceptErrors(output, accept_failed, reactor.seconds))
    for key, description in [
        *(("server.listen", item) for item in config.server.listen),
        ("server.metrics", config.server.metrics),
    ]:
        where = exposed(description) if description else None
        if where is not None:
            _log.warn(
                "{key} {endpoint} listens on {where}, not only loopback: anyone who can reach "
                "it can ask (and load) the daemon; bind interface=127.0.0.1, use a unix: "
                "endpoint, or firewall the port",
                key=key,
                endpoint=description,
                where=where,
            )
    limit = raise_open_files_limit()
    if limit < config.server.max_connections + FD_MARGIN:
        _log.warn(
            "server.max_connections = {wanted} but only {limit} file descriptors are allowed; "
            "connections beyond about {usable} are closed at accept (accept-failed): raise "
            "LimitNOFILE= (systemd) "
            "or ulimit -n, or lower server.max_connections",
            wanted=config.server.max_connections,
            limit=limit,
            usable=max(limit - FD_MARGIN, 0),
        )
    reactor.addSystemEventTrigger("before", "shutdown", server.shutdown)

    server.pending_sighups = early_hups
    reactor.callWhenRunning(lambda: server.start(endpoints).addErrback(server.crashed))
    # A process started in the background by a non-interactive shell inherits SIGINT as
    # ignored, and Twisted installs its SIGINT handler only over Python's default one: restore
    # the default so that SIGINT stops the daemon wherever it was started from.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        reactor.run()
    finally:  # the lines of the last turn, also when the reactor itself fails
        output.drain(LOG_DRAIN_SECONDS)
    return server.exit_status


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m policyd.daemon.serve [-c FILE]``: the same as ``m365-policyd serve``."""
    parser = argparse.ArgumentParser(
        prog="python -m policyd.daemon.serve", description="run m365-policyd serve"
    )
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        default=os.environ.get(CONFIG_ENV) or CONFIG_PATH,
        help=f"configuration file (default: ${CONFIG_ENV}, else {CONFIG_PATH})",
    )
    args = parser.parse_args(argv)
    return run(args.config)


if __name__ == "__main__":
    sys.exit(main())
