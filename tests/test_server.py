"""serve wiring: change detection, reload, endpoints, shutdown, logs, and the real process."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel

from policyd.constants import EXIT_LISTEN
from policyd.daemon.log import LogOutput, stdout_is_journal, text_line, text_value
from policyd.daemon.serve import (
    EXIT_CONFIG,
    ListenError,
    Server,
    describe_state,
    parse_endpoint,
)
from policyd.daemon.systemd import Notifier
from policyd.daemon.watch import FileWatcher
from policyd.errors import ConfigError
from policyd.sources.config import load_config
from policyd.sources.pem import not_valid_after
from policyd.sources.state import State, build_state
from tests.pki import TestPKI
from tests.serverproc import (
    CERT_BODY,
    DEFAULT_BODY,
    PolicyClient,
    PolicyServer,
    data,
    rcpt,
    request_text,
)
from tests.tenants import ip_tenant_toml

# --- file-change detection ------------------------------------------------------------------


class FakeStat:
    """An injectable ``os.stat``: path -> (mtime_ns, size, inode), missing paths raise."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[int, int, int]] = {}

    def __call__(self, path: str) -> os.stat_result:
        if path not in self.files:
            raise FileNotFoundError(path)
        mtime, size, inode = self.files[path]
        # st_mode, st_ino, st_dev, st_nlink, st_uid, st_gid, st_size, st_atime, st_mtime,
        # st_ctime; then the float times and the _ns fields
        return os.stat_result(
            (
                0o100644,
                inode,
                1,
                1,
                0,
                0,
                size,
                0,
                mtime // 10**9,
                0,
                0.0,
                mtime / 1e9,
                0.0,
                0,
                mtime,
                0,
            )
        )


def test_watcher_sees_mtime_size_and_inode_changes() -> None:
    """Any change of mtime, size or inode (a rename over the file) counts as changed."""
    stat = FakeStat()
    stat.files = {"/a": (1, 10, 100), "/b": (1, 10, 200), "/c": (1, 10, 300)}
    watcher = FileWatcher(stat)
    watcher.watch(watcher.snapshot(["/a", "/b", "/c"]))
    assert watcher.changed() == []
    stat.files["/a"] = (2, 10, 100)
    stat.files["/b"] = (1, 11, 200)
    stat.files["/c"] = (1, 10, 301)
    assert watcher.changed() == ["/a", "/b", "/c"]


def test_watcher_counts_appearing_and_disappearing_files() -> None:
    """A watched file that disappears, or a missing one that appears, is a change."""
    stat = FakeStat()
    stat.files = {"/present": (1, 1, 1)}
    watcher = FileWatcher(stat)
    watcher.watch(watcher.snapshot(["/present", "/missing"]))
    assert watcher.changed() == []
    del stat.files["/present"]
    stat.files["/missing"] = (5, 5, 5)
    assert watcher.changed() == ["/present", "/missing"]


def test_watcher_forgets_nothing_until_rewatched() -> None:
    """changed() does not reset: only watch() with a new snapshot does."""
    stat = FakeStat()
    stat.files = {"/a": (1, 1, 1)}
    watcher = FileWatcher(stat)
    watcher.watch(watcher.snapshot(["/a"]))
    stat.files["/a"] = (2, 1, 1)
    assert watcher.changed() == ["/a"]
    assert watcher.changed() == ["/a"]
    watcher.watch(watcher.snapshot(["/a"]))
    assert watcher.changed() == []


def test_watcher_reports_a_change_only_once_it_has_settled() -> None:
    """settled() waits until two calls see the same new stamps: a file still being written is
    never reported, however often it changes (issue 16, class 2)."""
    stat = FakeStat()
    stat.files = {"/a": (1, 1, 1), "/b": (1, 1, 2)}
    watcher = FileWatcher(stat)
    watcher.watch(watcher.snapshot(["/a", "/b"]))
    assert watcher.settled() == []
    for size in range(2, 6):  # written again between every two checks
        stat.files["/a"] = (size, size, 1)
        assert watcher.settled() == []
    assert watcher.settled() == ["/a"]
    stat.files["/b"] = (2, 2, 2)
    assert watcher.settled() == []  # /b is new to the settling set
    assert watcher.settled() == ["/a", "/b"]


# --- a Server on a memory reactor -----------------------------------------------------------


def write_config(directory: Path, body: str = DEFAULT_BODY, server: str = "") -> str:
    path = directory / "m365-policyd.toml"
    path.write_text(
        '[server]\nlisten = ["tcp:10040:interface=127.0.0.1"]\nmetrics = ""\n'
        + server
        + "\n"
        + body
    )
    return str(path)


def load(path: str, generation: int = 0) -> State:
    return build_state(load_config(path), generation)


class Recorder:
    """Collects sd_notify states."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def __call__(self, state: str) -> bool:
        self.sent.append(state)
        return True


@pytest.fixture
def output() -> Iterator[LogOutput]:
    """A LogOutput on a StringIO that sees every twisted.logger event during the test."""
    from twisted.logger import globalLogPublisher

    sink = LogOutput(io.StringIO(), timestamps=False)
    globalLogPublisher.addObserver(sink)
    yield sink
    globalLogPublisher.removeObserver(sink)


def logged(output: LogOutput) -> str:
    stream = output._stream
    assert isinstance(stream, io.StringIO)
    return stream.getvalue()


def make_server(
    tmp_path: Path, output: LogOutput | None = None, **kwargs: Any
) -> tuple[Server, MemoryReactorClock, Recorder]:
    path = write_config(tmp_path, server=kwargs.pop("server", ""))
    reactor = MemoryReactorClock()
    reactor.advance(1_700_000_000)
    recorder = Recorder()
    server = Server(
        path,
        load(path),
        reactor,
        output or LogOutput(io.StringIO(), timestamps=False),
        notifier=Notifier(send=recorder, monotonic=lambda: 42),
        **kwargs,
    )
    return server, reactor, recorder


def test_reload_swaps_state_and_settings(tmp_path: Path, output: LogOutput) -> None:
    """A successful reload swaps engine state and factory settings in one step and counts it."""
    server, reactor, recorder = make_server(tmp_path, output)
    old_settings = server.factory.settings
    write_config(
        tmp_path,
        ip_tenant_toml(accepted=("contoso.com", "fabrikam.com")),
        "idle_timeout = 60",
    )
    reactor.advance(5)
    assert server.reload("SIGHUP") is True
    assert server.state.generation == 1
    assert server.state.config.tenant.accepts("fabrikam.com")
    assert server.factory.settings is server.state.config.server
    assert server.factory.settings is not old_settings
    assert server.factory.settings.idle_timeout == 60
    assert server.stats.reloads["success"] == 1
    assert server.stats.last_reload_success == reactor.seconds()
    assert recorder.sent == ["RELOADING=1\nMONOTONIC_USEC=42", "READY=1"]
    assert "reloaded configuration" in logged(output)
    assert "fabrikam.com" in logged(output)


def test_failed_reload_keeps_state_and_logs_one_line(tmp_path: Path, output: LogOutput) -> None:
    """A broken configuration keeps the old state, counts a failure and logs exactly one line."""
    server, _reactor, recorder = make_server(tmp_path, output)
    old = server.state
    write_config(tmp_path, DEFAULT_BODY + "\n[bogus]\nkey = 1\n")
    assert server.reload("SIGHUP") is False
    lines = logged(output).splitlines()
    assert server.state is old
    assert server.stats.reloads["failure"] == 1
    assert server.stats.reloads["success"] == 0
    assert len(lines) == 1
    assert "reload failed" in lines[0]
    assert "bogus" in lines[0]
    assert server.config_path in lines[0]
    assert recorder.sent[-1] == "READY=1"


def test_changed_file_triggers_reload_once(tmp_path: Path) -> None:
    """The check reloads a change once it has settled (the same on two checks); a broken file
    is not retried until it changes again."""
    stat = FakeStat()
    loads: list[int] = []
    path = write_config(tmp_path)
    real = load(path)

    def fake_load(config_path: str, generation: int) -> State:
        loads.append(generation)
        if stat.files[config_path][1] == 666:
            raise ConfigError(config_path, "server.listen", "broken on purpose")
        return State(real.config, real.aliases, generation)

    stat.files = {p: (1, 1, i) for i, p in enumerate([path, *real.config.input_files])}
    server, _reactor, _ = make_server(tmp_path, stat=stat, load=fake_load)
    assert server.check_files() is False
    stat.files[path] = (2, 666, 0)
    assert server.check_files() is False  # first seen: wait until it stops changing
    assert server.check_files() is True
    assert server.stats.reloads["failure"] == 1
    assert server.check_files() is False  # same broken file: no retry storm
    stat.files[path] = (3, 10, 0)
    assert server.check_files() is False
    assert server.check_files() is True
    assert server.stats.reloads["success"] == 1
    assert server.state.generation == 1
    assert loads == [1, 1]


def test_looping_call_checks_every_reload_interval(tmp_path: Path) -> None:
    """With reload_interval set, the check runs on the reactor clock and picks up a change one
    interval after it was first seen (once it has stopped changing)."""
    stat = FakeStat()
    path = str(tmp_path / "m365-policyd.toml")
    server, reactor, _ = make_server(tmp_path, stat=stat, server="reload_interval = 2")
    stat.files[path] = (1, 1, 1)  # the config "appears" to the fake stat: a change
    server.install_reload()
    reactor.advance(2.1)
    assert server.stats.reloads["success"] == 0
    reactor.advance(1.8)
    assert server.stats.reloads["success"] == 0
    reactor.advance(0.2)
    assert server.stats.reloads["success"] == 1


def test_sighup_before_start_reloads_once_serving(tmp_path: Path) -> None:
    """A SIGHUP remembered during start-up becomes one reload as soon as the server runs."""
    server, reactor, _ = make_server(tmp_path)
    server.reload_requested = True
    server.install_reload()
    assert server.stats.reloads["success"] == 0
    reactor.advance(0)
    assert server.stats.reloads["success"] == 1
    assert server.state.generation == 1
    assert server.reload_requested is False


def test_zero_reload_interval_means_sighup_only(tmp_path: Path) -> None:
    """reload_interval = 0 schedules no periodic check."""
    server, reactor, _ = make_server(tmp_path, server="reload_interval = 0")
    server.install_reload()
    assert reactor.getDelayedCalls() == []


class FakePort:
    def __init__(self, events: list[str], name: str) -> None:
        self.events = events
        self.name = name

    def stopListening(self) -> defer.Deferred[None]:  # noqa: N802 - Twisted's method name
        self.events.append(f"stop {self.name}")
        return defer.succeed(None)


class FakeFactory:
    noisy = True

    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.open_count = 2
        self.settings: object = None

    def disconnect_all(self) -> None:
        self.events.append("disconnect")
        self.open_count = 0


def test_shutdown_stops_listening_before_disconnecting(tmp_path: Path) -> None:
    """Shutdown stops every listener, waits a moment for pending requests, then disconnects."""
    events: list[str] = []
    factory = FakeFactory(events)
    server, reactor, recorder = make_server(tmp_path, factory=factory)
    server.ports = [FakePort(events, "policy"), FakePort(events, "metrics")]
    done = server.shutdown()
    assert events == ["stop policy", "stop metrics"]
    assert recorder.sent == ["STOPPING=1"]
    assert not done.called
    reactor.advance(0.2)
    assert events == ["stop policy", "stop metrics", "disconnect"]
    assert done.called


def test_invalid_endpoint_is_a_configuration_error() -> None:
    """A typo in an endpoint string is exit status 78 with file, key and an example."""
    with pytest.raises(ListenError) as caught:
        parse_endpoint(MemoryReactorClock(), "tcpp:10040", "/etc/x.toml", "server.listen")
    assert caught.value.status == EXIT_CONFIG
    assert "/etc/x.toml: server.listen" in str(caught.value)
    assert "tcp:10040:interface=127.0.0.1" in str(caught.value)
    with pytest.raises(ListenError) as caught:
        parse_endpoint(MemoryReactorClock(), "tcp:notaport", "/etc/x.toml", "server.metrics")
    assert caught.value.status == EXIT_CONFIG


def test_systemd_endpoint_without_socket_is_a_listen_failure() -> None:
    """systemd:... without a passed socket is exit status 1 and says to use the socket unit."""
    with pytest.raises(ListenError) as caught:
        parse_endpoint(
            MemoryReactorClock(), "systemd:domain=INET:index=7", "/x.toml", "server.listen"
        )
    assert caught.value.status == EXIT_LISTEN
    assert "m365-policyd.socket" in str(caught.value)


def test_describe_state_names_what_was_loaded(tmp_path: Path) -> None:
    """The start-up fields list domains, connectors (type, state), certificate and listeners."""
    fields = describe_state(load(write_config(tmp_path)))
    assert fields["accepted_domains"] == ["contoso.com"]
    assert fields["connectors"] == ["From on-premises (OnPremises, enabled)"]
    assert fields["certificate"] == "none"
    assert fields["listen"] == ["tcp:10040:interface=127.0.0.1"]
    assert fields["metrics"] == "off"


# --- log formatting -------------------------------------------------------------------------

RECORD = {
    "event": "prediction",
    "queue_id": "4Xyz1",
    "instance": "1a.2b.3c",
    "client_address": "10.0.0.5",
    "sender": "",
    "recipient": "kate@tailspintoys.com",
    "final": ["kate@tailspintoys.com", "x@y.example"],
    "verdict": "reject",
    "code": "5.7.64",
    "reason": "null-sender",
    "action": "defer",
    "explanation": 'no "connector" matches\nsecond line',
}


def test_text_values_are_quoted_only_when_needed() -> None:
    """Plain tokens stay bare; spaces, quotes, '=', newlines and empty values are quoted."""
    assert text_value("a@b.example") == "a@b.example"
    assert text_value("") == '""'
    assert text_value(None) == '""'
    assert text_value("two words") == '"two words"'
    assert text_value("k=v") == '"k=v"'
    assert text_value('say "hi"') == '"say \\"hi\\""'
    assert text_value(["a@x", "b@y"]) == "a@x,b@y"
    assert text_value(True) == "true"
    assert "\n" not in text_value("line1\nline2")


def test_prediction_record_is_one_text_line() -> None:
    """A prediction becomes one key=value line carrying every record field."""
    stream = io.StringIO()
    output = LogOutput(stream, timestamps=False)
    output.emit(RECORD)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("level=info event=prediction queue_id=4Xyz1 ")
    assert 'sender="" ' in lines[0]
    assert "final=kate@tailspintoys.com,x@y.example" in lines[0]
    assert 'explanation="no \\"connector\\" matches\\nsecond line"' in lines[0]


def test_prediction_record_is_one_json_object() -> None:
    """In json format each prediction is one object per line with the record's values."""
    stream = io.StringIO()
    output = LogOutput(stream, "json", timestamps=True, clock=lambda: 0.5)
    output.emit(RECORD)
    output.emit(RECORD)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    obj = json.loads(lines[0])
    assert obj["time"] == "1970-01-01T00:00:00.500Z"
    assert obj["level"] == "info"
    assert obj["final"] == RECORD["final"]
    assert obj["explanation"] == RECORD["explanation"]


def test_prediction_lines_are_flushed_once_per_turn() -> None:
    """Predictions are buffered and one scheduled flush writes them; errors flush at once."""
    scheduled: list[Any] = []

    class Stream(io.StringIO):
        flushes = 0

        def flush(self) -> None:
            self.flushes += 1

    stream = Stream()
    output = LogOutput(stream, timestamps=False, schedule=scheduled.append)
    output.emit(RECORD)
    output.emit(RECORD)
    assert len(scheduled) == 1
    assert stream.flushes == 0
    scheduled[0]()
    assert stream.flushes == 1
    output.emit({"event": "error", "problem": "boom"})
    assert stream.flushes == 2
    assert "level=error event=error" in stream.getvalue()


def test_level_filters_predictions_and_events() -> None:
    """At level warn, predictions and info events are dropped; warnings are kept."""
    stream = io.StringIO()
    output = LogOutput(stream, level="warn", timestamps=False)
    output.emit(RECORD)
    output({"log_level": LogLevel.info, "log_format": "hello", "log_namespace": "t"})
    output({"log_level": LogLevel.warn, "log_format": "careful {x}", "x": 1, "log_namespace": "t"})
    assert stream.getvalue() == 'level=warning logger=t msg="careful 1"\n'
    output.configure("text", "debug")
    output.emit(RECORD)
    assert "event=prediction" in stream.getvalue()


def test_journal_detection(tmp_path: Path) -> None:
    """$JOURNAL_STREAM naming our stdout's device:inode means journald stamps lines itself."""
    with open(tmp_path / "out", "w") as stream:
        info = os.fstat(stream.fileno())
        assert stdout_is_journal(stream, {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"})
        assert not stdout_is_journal(stream, {"JOURNAL_STREAM": "1:2"})
        assert not stdout_is_journal(stream, {})


def test_text_line_joins_pairs() -> None:
    """text_line writes pairs in order separated by single spaces."""
    assert text_line([("a", 1), ("b", "x y")]) == 'a=1 b="x y"'


# --- the real process -----------------------------------------------------------------------

FABRIKAM_ACCEPTED = ip_tenant_toml(accepted=("contoso.com", "fabrikam.com"))


def test_concurrent_connections_each_get_their_own_answers(tmp_path: Path) -> None:
    """Twenty interleaved persistent connections each receive the answers to their own requests."""
    with PolicyServer(tmp_path) as server:
        clients = [server.client() for _ in range(20)]
        try:
            for round_ in range(5):
                expected = []
                for i, client in enumerate(clients):
                    refused = (i + round_) % 2 == 0
                    sender = "app@fabrikam.com" if refused else "app@contoso.com"
                    client.sock.sendall(request_text(rcpt(sender, f"user{i}@tailspintoys.com")))
                    expected.append(refused)
                for client, refused in zip(clients, expected, strict=True):
                    action = client.read_reply()
                    if refused:
                        assert action.startswith("450 4.7.64 ")
                        assert "sender-not-accepted" in action
                    else:
                        assert action == "DUNNO"
        finally:
            for client in clients:
                client.close()


def test_metrics_counters_move(tmp_path: Path) -> None:
    """/metrics parses with prometheus_client and its counters follow the traffic."""
    with PolicyServer(tmp_path) as server:
        before = server.scrape()
        assert before.value("m365_policyd_requests_total", stage="rcpt") == 0
        assert before.value("m365_policyd_config_reloads_total", result="failure") == 0
        assert (
            before.value("m365_policyd_build_info", version=__import__("policyd").__version__) == 1
        )
        with server.client() as client:
            instance = "1a2b.77.0"
            assert client.ask(
                rcpt("app@fabrikam.com", "a@tailspintoys.com", instance=instance)
            ).startswith("450")
            assert (
                client.ask(rcpt("app@fabrikam.com", "kate@contoso.com", instance=instance))
                == "DUNNO"
            )
            client.ask(data(instance))
            after = server.scrape()
            assert after.value("m365_policyd_connections") == 1
        assert after.value("m365_policyd_requests_total", stage="rcpt") == 2
        assert after.value("m365_policyd_requests_total", stage="data") == 1
        assert (
            after.value(
                "m365_policyd_predictions_total",
                tenant="default",
                verdict="reject",
                reason="sender-not-accepted",
            )
            == 1
        )
        assert (
            after.value(
                "m365_policyd_predictions_total",
                tenant="default",
                verdict="accept",
                reason="recipient-in-tenant",
            )
            == 1
        )
        assert after.value("m365_policyd_actions_total", action="defer") == 1
        assert after.value("m365_policyd_request_duration_seconds_count") == 3
        assert "m365_policyd_certificate_connector_match" not in after


def test_sighup_reload_valid_then_broken(tmp_path: Path) -> None:
    """SIGHUP applies a valid new config; a broken one keeps the old state, counted in /metrics."""
    with PolicyServer(tmp_path) as server:
        request = rcpt("app@fabrikam.com", "kate@tailspintoys.com")
        assert server.ask(request).startswith("450 4.7.64")
        mark = server.log_offset()
        server.write_config(FABRIKAM_ACCEPTED)
        server.reload()
        server.wait_for_log("reloaded configuration", after=mark)
        assert server.ask(request) == "DUNNO"

        mark = server.log_offset()
        server.write_config(FABRIKAM_ACCEPTED + "\n[policy.nonsense]\nfoo = 1\n")
        server.reload()
        line = server.wait_for_log("reload failed", after=mark)
        assert str(server.config_path) in line
        assert server.ask(request) == "DUNNO"  # the previous (valid) state still answers
        samples = server.scrape()
        assert samples.value("m365_policyd_config_reloads_total", result="success") == 1
        assert samples.value("m365_policyd_config_reloads_total", result="failure") == 1
        # the line is written in the same call that counted the failure, so it is in the log
        failures = [ln for ln in server.log_lines(mark) if "reload failed" in ln]
        assert len(failures) == 1


def test_changed_certificate_is_picked_up_without_a_signal(tmp_path: Path) -> None:
    """With a short reload_interval a replaced certificate changes predictions and gauges."""
    pki = TestPKI(now=datetime.now(UTC))
    server = PolicyServer(tmp_path, CERT_BODY, reload_interval=1)
    pki.write_ca_bundle(tmp_path)
    wrong = pki.leaf("mail.fabrikam.com", ["mail.fabrikam.com"])
    server.write_file("cert.pem", pki.chain_pem(wrong))
    path = str(server.directory / "cert.pem")
    with server:
        null_sender = rcpt("", "kate@tailspintoys.com")
        assert server.ask(null_sender).startswith("550 5.7.64")
        samples = server.scrape()
        match = {"tenant": "default", "certificate": path}
        assert samples.value("m365_policyd_certificate_connector_match", **match) == 0
        not_after = samples.value(
            "m365_policyd_certificate_not_after_timestamp_seconds", certificate=path
        )
        assert not_after == pytest.approx(not_valid_after(wrong.cert).timestamp())

        mark = server.log_offset()
        right = pki.leaf(
            "mail.contoso.com", ["mail.contoso.com"], not_after=pki.now + timedelta(days=30)
        )
        server.write_file("cert.pem", pki.chain_pem(right))
        server.wait_for_log("reloaded configuration", after=mark, timeout=10)
        assert server.ask(null_sender) == "DUNNO"
        samples = server.scrape()
        assert samples.value("m365_policyd_certificate_connector_match", **match) == 1
        assert samples.value(
            "m365_policyd_certificate_not_after_timestamp_seconds", certificate=path
        ) == pytest.approx(not_valid_after(right.cert).timestamp())
        assert "cert.pem" in server.wait_for_log("reloaded configuration", after=mark)


def test_sigterm_answers_pending_request_and_exits_zero(tmp_path: Path) -> None:
    """SIGTERM right after a request still answers it, closes connections and exits 0 within 5 s."""
    server = PolicyServer(tmp_path).start()
    try:
        client = server.client()
        client.ask(rcpt("app@contoso.com", "warmup@tailspintoys.com"))
        client.sock.sendall(request_text(rcpt("app@fabrikam.com", "kate@tailspintoys.com")))
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        assert client.read_reply().startswith("450 4.7.64")
        with pytest.raises(EOFError):
            client.read_reply()
        status = server.stop(timeout=5)
        elapsed = time.monotonic() - started
    finally:
        server.kill()
    assert status == 0
    assert elapsed < 5
    with pytest.raises(OSError):
        PolicyClient(server.port, timeout=1)


def test_sigint_also_exits_zero(tmp_path: Path) -> None:
    """SIGINT (Ctrl-C in a terminal) stops the daemon cleanly too."""
    server = PolicyServer(tmp_path, metrics=False).start()
    try:
        assert server.stop(signal.SIGINT, timeout=5) == 0
    finally:
        server.kill()


def test_sigint_stops_even_when_inherited_as_ignored(tmp_path: Path) -> None:
    """Started from a shell that ignores SIGINT (a background job), SIGINT still stops serve."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited by the child
    try:
        server = PolicyServer(tmp_path, metrics=False).start()
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        assert server.stop(signal.SIGINT, timeout=5) == 0
    finally:
        server.kill()


def test_socket_activation_with_passed_socket(tmp_path: Path) -> None:
    """A socket passed as LISTEN_FDS (fd 3) is served; READY/RELOADING/STOPPING are notified."""
    notify_path = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(10)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        server = PolicyServer(
            tmp_path,
            listen=["systemd:domain=INET:index=0"],
            listen_socket=listener,
            env={"NOTIFY_SOCKET": notify_path},
        )
        with server:
            assert server.port == listener.getsockname()[1]
            assert server.ask(rcpt("app@fabrikam.com", "kate@tailspintoys.com")).startswith("450")
            assert notify.recv(4096).startswith(b"READY=1")
            server.reload()
            reloading = notify.recv(4096).decode()
            assert reloading.startswith("RELOADING=1\nMONOTONIC_USEC=")
            assert int(reloading.split("MONOTONIC_USEC=")[1]) > 0
            assert notify.recv(4096) == b"READY=1"
            assert server.stop() == 0
            assert notify.recv(4096) == b"STOPPING=1"
    finally:
        listener.close()
        notify.close()


def test_unix_endpoint_with_mode(tmp_path: Path) -> None:
    """A unix: endpoint gets the requested mode and answers like TCP, with json log lines."""
    path = tmp_path / "policy.sock"
    server = PolicyServer(
        tmp_path, listen=[f"unix:{path}:mode=660"], metrics=False, log_format="json"
    )
    with server:
        assert oct(path.stat().st_mode & 0o777) == oct(0o660)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(path))
            sock.sendall(request_text(rcpt("app@contoso.com", "kate@tailspintoys.com")))
            reply = b""
            while not reply.endswith(b"\n\n"):
                reply += sock.recv(4096)
        assert reply == b"action=DUNNO\n\n"
        line = server.wait_for_log('"event": "prediction"')
        assert json.loads(line)["reason"] == "sender-accepted-domain"
    assert all(json.loads(ln) for ln in server.log().splitlines())


def test_listen_failure_exits_one_with_one_line(tmp_path: Path) -> None:
    """A port already in use is exit status 1 and one stderr line naming the endpoint."""
    from tests.serverproc import ServerProcessError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        server = PolicyServer(tmp_path, listen=[f"tcp:{port}:interface=127.0.0.1"], metrics=False)
        with pytest.raises(ServerProcessError) as caught:
            server.start()
    assert caught.value.status == EXIT_LISTEN
    lines = caught.value.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"tcp:{port}:interface=127.0.0.1" in lines[0]
    assert "in use" in lines[0]


def test_configuration_error_exits_78(tmp_path: Path) -> None:
    """An invalid configuration file is exit status 78 with one line naming file and key."""
    from tests.serverproc import ServerProcessError

    server = PolicyServer(tmp_path, DEFAULT_BODY + "\n[tenant.extra]\nx = 1\n", metrics=False)
    with pytest.raises(ServerProcessError) as caught:
        server.start()
    assert caught.value.status == EXIT_CONFIG
    lines = caught.value.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(server.config_path) in lines[0]


def test_memoized_text_values_render_like_fresh_ones() -> None:
    """A value rendered twice (the memoized path) is written exactly as the first time, and
    the memo stays bounded."""
    from policyd.daemon import log

    values = ["plain@x.example", "with space", "", 'quote"d', ("a@b", "c@d"), ("one",)]
    first = [text_value(v) for v in values]
    assert [text_value(v) for v in values] == first
    assert first == ["plain@x.example", '"with space"', '""', '"quote\\"d"', "a@b,c@d", "one"]
    for n in range(log._RENDERED_LIMIT + 10):
        text_value(f"v{n}")
    assert len(log._RENDERED) <= log._RENDERED_LIMIT


def test_settle_heap_freezes_the_loaded_state() -> None:
    """After start-up or a reload the live objects are frozen, so full collections skip them."""
    import gc

    from policyd.daemon.serve import settle_heap

    loaded = [{"tenant": "contoso.com"}]  # stands for the loaded state: a tracked container
    assert gc.get_freeze_count() == 0  # the autouse fixture unfroze whatever came before
    assert any(obj is loaded for obj in gc.get_objects())
    settle_heap()
    assert gc.get_freeze_count() > 0
    assert not any(obj is loaded for obj in gc.get_objects())  # out of every generation


def test_settle_heap_at_reload_reclaims_cycles_of_the_previous_state() -> None:
    """A cycle frozen with the old state is collected at the next settle (unfreeze, collect)."""
    import gc
    import weakref

    from policyd.daemon.serve import settle_heap

    class Node:
        def __init__(self) -> None:
            self.me = self

    old_state = Node()
    gone = weakref.ref(old_state)
    settle_heap()  # start-up: the old state is frozen
    del old_state
    gc.collect()
    assert gone() is not None  # frozen: a plain collection does not see the cycle
    settle_heap()  # reload
    assert gone() is None


def test_open_files_limit_is_raised_to_the_hard_limit() -> None:
    """serve raises its soft descriptor limit to the hard one (room for max_connections)."""
    import resource

    from policyd.daemon.serve import raise_open_files_limit

    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, before[1]))
        limit = raise_open_files_limit()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        assert limit == soft
        assert hard in (soft, resource.RLIM_INFINITY)
        assert soft > 256
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)
