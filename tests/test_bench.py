"""The load generator (``policyd.tools.bench``) and the bare responder (``benchmarks.bare``).

The generator runs for about a second against real loopback servers: the bare Twisted
responder in a child process, and tiny threaded servers that misbehave on purpose. No test
asserts on timing; they assert that requests were answered, counted and validated.
"""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import StringTransport

from benchmarks.bare import REPLY, BareFactory
from policyd.tools import bench

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def bare_endpoint() -> Iterator[str]:
    """A ``benchmarks.bare`` child process on a free loopback port; yields ``HOST:PORT``."""
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.bare", "--listen", "tcp:0:interface=127.0.0.1"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("listening on "), line + (
            process.stderr.read() if process.stderr else ""
        )
        yield line.split()[-1]
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextmanager
def tcp_server(handle: Callable[[socket.socket], None]) -> Iterator[str]:
    """A threaded loopback server running ``handle(conn)`` per connection; yields ``HOST:PORT``."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=_guarded, args=(handle, conn), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def _guarded(handle: Callable[[socket.socket], None], conn: socket.socket) -> None:
    try:
        with conn:
            handle(conn)
    except OSError:
        pass


def read_request(conn: socket.socket, pending: bytearray) -> bytes | None:
    """One request (through its blank line) from ``conn``; None when the peer closed."""
    while b"\n\n" not in pending:
        data = conn.recv(65536)
        if not data:
            return None
        pending.extend(data)
    end = pending.index(b"\n\n") + 2
    request = bytes(pending[:end])
    del pending[:end]
    return request


def answer_with(reply: Callable[[int, bytes], bytes | None]) -> Callable[[socket.socket], None]:
    """A handler that answers request number N with ``reply(N, request)``; None closes."""

    def handle(conn: socket.socket) -> None:
        pending = bytearray()
        number = 0
        while (request := read_request(conn, pending)) is not None:
            answer = reply(number, request)
            number += 1
            if answer is None:
                return
            conn.sendall(answer)

    return handle


# ----------------------------------------------------------------------------- endpoints


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tcp:127.0.0.1:10040", bench.Endpoint("tcp", host="127.0.0.1", port=10040)),
        ("inet:localhost:10040", bench.Endpoint("tcp", host="localhost", port=10040)),
        ("127.0.0.1:9998", bench.Endpoint("tcp", host="127.0.0.1", port=9998)),
        ("[::1]:10040", bench.Endpoint("tcp", host="::1", port=10040)),
        ("tcp:[::1]:10040", bench.Endpoint("tcp", host="::1", port=10040)),
        (
            "unix:/run/m365-policyd/policy.sock",
            bench.Endpoint("unix", path="/run/m365-policyd/policy.sock"),
        ),
    ],
)
def test_parse_endpoint_accepts_documented_forms(text: str, expected: bench.Endpoint) -> None:
    """Every endpoint form the brief documents parses to the right family, host, port or path."""
    assert bench.parse_endpoint(text) == expected


@pytest.mark.parametrize(
    "text",
    ["10040", "tcp:127.0.0.1", "127.0.0.1:http", "127.0.0.1:0", "::1:10040", "unix:", "[::1:5"],
)
def test_parse_endpoint_rejects_malformed_forms(text: str) -> None:
    """A malformed endpoint raises a UsageError whose message quotes the input."""
    with pytest.raises(bench.UsageError, match=re.escape(f"endpoint {text!r}")):
        bench.parse_endpoint(text)


def test_endpoint_str_round_trips() -> None:
    """An endpoint's text form parses back to the same endpoint (brackets for IPv6)."""
    for text in ("tcp:127.0.0.1:10040", "tcp:[::1]:25", "unix:/tmp/p.sock"):
        endpoint = bench.parse_endpoint(text)
        assert str(endpoint) == text
        assert bench.parse_endpoint(str(endpoint)) == endpoint


# ----------------------------------------------------------------------------- traffic


def parse(request: bytes) -> dict[str, str]:
    """A request's attributes, asserting the wire framing on the way."""
    assert request.endswith(b"\n\n")
    lines = request[:-2].decode().split("\n")
    pairs = [line.split("=", 1) for line in lines]
    assert all(len(pair) == 2 for pair in pairs)
    return dict(pairs)  # type: ignore[arg-type] # pairs of two, asserted above


def test_messages_look_like_postfix_37_requests() -> None:
    """Each message is RCPT (empty queue_id), RCPT, DATA of 29 attributes sharing one instance."""
    messages = bench.build_messages(200, seed=7)
    instances = set()
    for first, second, data in messages:
        rcpt1, rcpt2, last = parse(first), parse(second), parse(data)
        assert list(rcpt1) == list(bench.ATTRIBUTE_ORDER)
        assert len(rcpt1) == 29
        assert (rcpt1["protocol_state"], rcpt2["protocol_state"], last["protocol_state"]) == (
            "RCPT",
            "RCPT",
            "DATA",
        )
        assert rcpt1["queue_id"] == ""
        assert rcpt2["queue_id"] != "" and rcpt2["queue_id"] == last["queue_id"]
        assert rcpt1["instance"] == rcpt2["instance"] == last["instance"]
        assert rcpt1["recipient"] and rcpt2["recipient"]
        assert last["recipient"] == "" and last["recipient_count"] == "2"
        instances.add(rcpt1["instance"])
    assert len(instances) == len(messages)


def test_traffic_is_varied() -> None:
    """The pool mixes own-domain, foreign and null senders and several recipient domains."""
    messages = bench.build_messages(500, seed=1)
    senders = [parse(rcpt)["sender"] for rcpt, _, _ in messages]
    recipient_domains = {parse(rcpt)["recipient"].split("@")[1] for rcpt, _, _ in messages}
    assert any(s.endswith("@" + bench.OWN_DOMAIN) for s in senders)
    assert any(s.endswith("@" + bench.OWN_SUBDOMAIN) for s in senders)
    assert any(s.split("@")[-1] in bench.FOREIGN_SENDER_DOMAINS for s in senders)
    assert "" in senders
    assert bench.OWN_DOMAIN in recipient_domains
    assert len(recipient_domains & set(bench.RECIPIENT_DOMAINS)) >= 3


def test_traffic_is_deterministic_per_seed() -> None:
    """The same seed gives the same bytes; another seed gives other bytes."""
    assert bench.build_messages(20, seed=3) == bench.build_messages(20, seed=3)
    assert bench.build_messages(20, seed=3) != bench.build_messages(20, seed=4)


@pytest.mark.parametrize(
    ("reply", "valid"),
    [
        (b"action=DUNNO\n\n", True),
        (b"action=PREPEND X-M365-Relay: verdict=accept\n\n", True),
        (b"extra=1\naction=450 4.7.64 no\n\n", True),
        (b"action=\n\n", False),
        (b"DUNNO\n\n", False),
        (b"result=ok\n\n", False),
        (b"action=DUNNO\n", False),
        (b"action=DUNNO\n\naction=DUNNO\n\n", False),
        (b"action=DUNNO\n\n\n", False),
    ],
)
def test_reply_validation(reply: bytes, valid: bool) -> None:
    """Only one reply of name=value lines with a non-empty action and one blank line is valid."""
    assert bench.reply_is_valid(reply) is valid


def test_percentiles_use_nearest_rank() -> None:
    """p50/p99/p99.9 of 1..1000 ms are 500, 990 and 999 ms; an empty run reports zeros."""
    samples = [n / 1000 for n in range(1000, 0, -1)]
    summary = bench.summarize(samples)
    assert (summary["p50"], summary["p99"], summary["p99.9"], summary["max"]) == (
        500.0,
        990.0,
        999.0,
        1000.0,
    )
    assert bench.summarize([])["p99"] == 0.0


def test_default_processes_leave_a_cpu_for_the_server() -> None:
    """Auto mode uses one worker on two CPUs and grows with connections on bigger machines."""
    assert bench.default_processes(50, cpus=2) == 1
    assert bench.default_processes(2000, cpus=2) == 1
    assert bench.default_processes(200, cpus=8) == 4
    assert bench.default_processes(10, cpus=8) == 1


# ----------------------------------------------------------------------------- bare responder


def test_bare_responder_answers_every_terminator_across_splits() -> None:
    """The bare responder answers once per blank line, whatever the read boundaries."""
    protocol = BareFactory().buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    stream = b"".join(bench.request_stream(bench.build_messages(3, seed=2)))
    for start in range(0, len(stream), 7):
        protocol.dataReceived(stream[start : start + 7])
    assert transport.value() == REPLY * 9


def test_bare_responder_batches_pipelined_requests() -> None:
    """Several requests in one read are answered with one write of that many replies."""
    protocol = BareFactory().buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b"a=1\n\nb=2\n\nc=")
    assert transport.value() == REPLY * 2
    protocol.dataReceived(b"3\n\n")
    assert transport.value() == REPLY * 3


def test_bare_reports_bad_listen_endpoint() -> None:
    """An invalid --listen exits 2 with a message naming it."""
    process = subprocess.run(
        [sys.executable, "-m", "benchmarks.bare", "--listen", "nonsense:1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert process.returncode == 2
    assert "nonsense:1" in process.stderr


# ----------------------------------------------------------------------------- end to end


def test_closed_loop_against_bare_responder(
    bare_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A one-second closed-loop run answers and counts requests, no errors; JSON has every key."""
    status = bench.main(
        ["--connect", bare_endpoint, "--connections", "4", "--duration", "1", "--json"]
    )
    result = json.loads(capsys.readouterr().out)
    assert status == 0
    assert result["requests"] > 0
    assert result["connected"] == 4
    assert result["error_total"] == 0
    assert result["requests_per_second"] == pytest.approx(
        result["requests"] / result["duration_s"], rel=0.01
    )
    assert set(result["latency_ms"]) == {"p50", "p99", "p99.9", "max", "mean"}
    assert (
        0
        < result["latency_ms"]["p50"]
        <= result["latency_ms"]["p99"]
        <= result["latency_ms"]["p99.9"]
    )
    assert result["send_lag_ms"] is None
    assert set(result["errors"]) == set(bench.ERROR_KINDS)


def test_open_loop_paces_the_offered_rate(bare_endpoint: str) -> None:
    """With --rate the answered requests follow the offered rate, not the server's speed."""
    result = bench.run(bench.parse_endpoint(bare_endpoint), 10, 1.0, rate=200)
    assert result.error_total == 0
    assert 150 <= result.requests <= 210  # 200 offered over one second, phases spread evenly
    assert result.send_lag_ms["max"] >= 0


def test_several_processes_merge_their_samples(bare_endpoint: str) -> None:
    """Two forked workers connect their share each and their counts and samples are merged."""
    result = bench.run(bench.parse_endpoint(bare_endpoint), 6, 0.5, processes=2)
    assert result.processes == 2
    assert result.connected == 6
    assert result.requests > 0
    assert result.error_total == 0
    assert result.latencies_ms["p50"] > 0


def test_request_budget_stops_the_run(bare_endpoint: str) -> None:
    """--requests stops after that many answers and progress is reported along the way."""
    seen: list[int] = []
    result = bench.run(
        bench.parse_endpoint(bare_endpoint),
        3,
        30.0,
        processes=1,
        max_requests=300,
        progress_every=100,
        progress=seen.append,
    )
    assert result.requests == 300
    assert seen == [100, 200, 300]
    assert result.duration < 30.0


def test_every_request_reaches_the_server_intact() -> None:
    """The server receives well-formed requests in RCPT, RCPT, DATA order on each connection."""
    states: list[str] = []
    lock = threading.Lock()

    def reply(number: int, request: bytes) -> bytes:
        attributes = parse(request)
        with lock:
            states.append(attributes["protocol_state"])
        return b"action=DUNNO\n\n"

    with tcp_server(answer_with(reply)) as endpoint:
        result = bench.run(bench.parse_endpoint(endpoint), 1, 0.3, processes=1)
    assert result.error_total == 0
    assert result.requests > 3
    expected = ["RCPT", "RCPT", "DATA"] * (len(states) // 3 + 1)
    assert states == expected[: len(states)]


def test_garbage_replies_are_counted_as_errors() -> None:
    """A server answering without ``action=`` gets every reply counted as bad, none as answered."""
    with tcp_server(answer_with(lambda number, request: b"hello=world\n\n")) as endpoint:
        result = bench.run(bench.parse_endpoint(endpoint), 2, 0.6, processes=1)
    assert result.requests == 0
    assert result.errors[bench.BAD_REPLY] >= 2
    assert result.connected == 2


def test_unrequested_bytes_are_counted_as_errors() -> None:
    """Two replies to one request (what makes Postfix drop the connection) is a bad reply."""
    with tcp_server(
        answer_with(lambda number, request: b"action=DUNNO\n\naction=DUNNO\n\n")
    ) as endpoint:
        result = bench.run(bench.parse_endpoint(endpoint), 1, 0.6, processes=1)
    assert result.errors[bench.BAD_REPLY] >= 1
    assert result.requests == 0


def test_server_closing_is_counted_and_reconnected() -> None:
    """A server that closes after two answers costs one 'closed' per connection, then reconnects."""
    with tcp_server(
        answer_with(lambda number, request: b"action=OK\n\n" if number < 2 else None)
    ) as endpoint:
        result = bench.run(bench.parse_endpoint(endpoint), 2, 0.8, processes=1)
    assert result.errors[bench.CLOSED] >= 2
    assert result.requests >= 2 * result.errors[bench.CLOSED]  # two answers before each close
    assert result.error_total == result.errors[bench.CLOSED]


def test_silent_server_times_out() -> None:
    """A server that never answers is counted as a timeout after --timeout seconds."""

    def silent(conn: socket.socket) -> None:
        read_request(conn, bytearray())
        conn.recv(1)  # until the generator gives up and closes

    with tcp_server(silent) as endpoint:
        result = bench.run(bench.parse_endpoint(endpoint), 1, 1.0, processes=1, timeout=0.3)
    assert result.errors[bench.TIMEOUT] >= 1
    assert result.requests == 0


def test_nothing_listening_counts_connect_failures(capsys: pytest.CaptureFixture[str]) -> None:
    """With no server the run exits 1, counts connect failures and says it could not connect."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    status = bench.main(
        ["--connect", f"127.0.0.1:{port}", "--connections", "2", "--duration", "0.3"]
    )
    captured = capsys.readouterr()
    assert status == 1
    assert "connect-failed" in captured.out
    assert "could not connect" in captured.err


def test_unix_socket_endpoint(tmp_path: Path) -> None:
    """The generator drives a server on a unix socket just like TCP."""
    path = tmp_path / "policy.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(8)

    def serve() -> None:
        conn, _ = listener.accept()
        _guarded(answer_with(lambda number, request: b"action=DUNNO\n\n"), conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        result = bench.run(bench.parse_endpoint(f"unix:{path}"), 1, 0.3, processes=1)
    finally:
        listener.close()
        thread.join(timeout=5)
    assert result.requests > 0
    assert result.error_total == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--connect", "nowhere"], "endpoint"),
        (["--connect", "127.0.0.1:1", "--connections", "0"], "--connections"),
        (["--connect", "127.0.0.1:1", "--duration", "0"], "--duration"),
        (["--connect", "127.0.0.1:1", "--rate", "-1"], "--rate"),
        (["--connect", "127.0.0.1:1", "--processes", "-1"], "--processes"),
        (["--connect", "127.0.0.1:1", "--requests", "-1"], "--requests"),
        (["--connect", "127.0.0.1:1", "--timeout", "0"], "--timeout"),
        (["--connect", "127.0.0.1:1", "--duration", "inf"], "--duration"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad option values exit 2 with an error line naming the option."""
    assert bench.main(argv) == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith("m365-policyd bench: error: ")
    assert message in error


def test_text_report_names_the_figures() -> None:
    """The text report shows rate, the three percentiles and error kinds that occurred."""
    result = bench.BenchResult(
        endpoint="tcp:127.0.0.1:1",
        connections=5,
        processes=1,
        duration=2.0,
        offered_rate=0.0,
        requests=1000,
        errors={**dict.fromkeys(bench.ERROR_KINDS, 0), bench.CLOSED: 3},
        latencies_ms={"p50": 0.1, "p99": 0.5, "p99.9": 0.9, "max": 1.0, "mean": 0.2},
        send_lag_ms=bench.summarize([]),
        connected=5,
    )
    out = io.StringIO()
    bench.write_text(result, out)
    text = out.getvalue()
    assert "500 req/s" in text
    assert "p99 0.500" in text and "p99.9 0.900" in text
    assert "errors       3 (closed 3)" in text


# ----------------------------------------------------------------------------- make bench


def test_benchmark_config_is_a_valid_daemon_config(tmp_path: Path) -> None:
    """The configuration ``make bench`` gives the daemon loads, with the alias map it writes."""
    from benchmarks import run
    from policyd.sources.config import load_config
    from policyd.sources.tables import load_alias_maps

    virtual = tmp_path / "virtual"
    run.write_alias_map(virtual, 50)
    config_path = tmp_path / "bench.toml"
    config_path.write_text(run.daemon_config(10040, alias_maps=[f"texthash:{virtual}"]))
    config = load_config(str(config_path))
    assert config.server.listen == ("tcp:10040:interface=127.0.0.1",)
    maps = load_alias_maps([f"texthash:{virtual}"])
    assert maps.expand(f"user7@{bench.OWN_DOMAIN}") == ("user7@partner7.example",)
    assert set(maps.expand(f"user10@{bench.OWN_DOMAIN}")) == {
        "user10@partner10.example",
        f"archive10@{bench.OWN_DOMAIN}",
    }


def measured(rate: float, seconds: float = 0.5) -> Any:
    """A ``benchmarks.common.Measured`` of a run that answered at ``rate`` for ``seconds``."""
    from benchmarks.common import Measured

    result = bench.BenchResult(
        endpoint="127.0.0.1:1",
        connections=1,
        processes=1,
        duration=seconds,
        offered_rate=0.0,
        requests=int(rate * seconds),
        errors={},
        latencies_ms={"p50": 1.0, "p99": 2.0, "p99.9": 3.0, "max": 4.0},
        send_lag_ms={},
        connected=1,
    )
    return Measured(result, generator_cpu=0.5, server_cpu=0.9)


def test_rate_ratio_compares_all_the_requests_of_alternating_runs() -> None:
    """Runs of equal length taken in turn: the ratio is the requests one server answered for
    each request of the other, so a slow moment weighs the same in both."""
    from benchmarks.common import Scale, mean_rate, rate_ratio, versus

    daemon = [measured(rate) for rate in (30_000, 10_000, 20_000)]
    bare = [measured(rate) for rate in (40_000, 12_000, 28_000)]
    assert mean_rate(daemon) == pytest.approx(20_000)
    assert rate_ratio(daemon, bare) == pytest.approx(60_000 / 80_000)
    assert rate_ratio(daemon, []) == 0.0
    text = versus(daemon, bare, Scale(rounds=3, seconds=0.5))
    assert text == "0.75 × (3 alternating 0.5 s runs each; mean rates 20,000 vs 26,667 req/s)"


def test_the_postfix_rows_sent_counter_reads_only_new_whole_lines(tmp_path: Path) -> None:
    """The Postfix row counts deliveries from where it stopped reading, and a line still being
    written is counted once it is whole."""
    from benchmarks.postfix import SentCounter

    log = tmp_path / "maillog"
    counter = SentCounter(log)
    assert counter.update() == 0  # no log yet
    sent = "postfix/smtp[1]: 4Q: to=<a@b>, relay=x, delay=0, dsn=2.0.0, status=sent (250 ok)\n"
    log.write_text(sent * 2 + "postfix/qmgr[2]: 4Q: removed\n" + sent[:40])
    assert counter.update() == 2
    with log.open("a") as out:
        out.write(sent[40:] + sent)
    assert counter.update() == 4
    assert counter.update() == 4


def test_the_postfix_rows_variants_differ_only_in_their_smtpd_options() -> None:
    """Each variant is an smtpd with ``-o`` overrides of the contrib snippet's main.cf."""
    from benchmarks.postfix import WIRINGS, master_options

    assert master_options(None, "") == [
        "  -o smtpd_recipient_restrictions=",
        "  -o smtpd_data_restrictions=",
    ]
    tcp_both, tcp_rcpt = WIRINGS[0], WIRINGS[1]
    assert master_options(tcp_both, "inet:127.0.0.1:10040") == [
        "  -o m365_policyd_service=inet:127.0.0.1:10040"
    ]
    assert master_options(tcp_rcpt, "unix:private/bare") == [
        "  -o m365_policyd_service=unix:private/bare",
        "  -o smtpd_data_restrictions=",
    ]


def postfix_runs(rates: list[float], messages: int = 300) -> list[Any]:
    """Postfix-row runs of ``messages`` each, delivered at these rates (msg/s)."""
    from benchmarks.postfix import PostfixRun

    return [PostfixRun(messages, messages / rate / 1.1, messages / rate) for rate in rates]


def test_the_postfix_rows_interval_says_how_far_the_noise_moves_the_ratio() -> None:
    """The interval brackets the ratio of all runs, is the same for the same runs, collapses
    when every round has the same ratio, and widens when the rounds disagree."""
    from benchmarks.postfix import delivered_rate, ratio_interval

    steady_bare = postfix_runs([500, 400, 600, 450])
    steady = postfix_runs([475, 380, 570, 427.5])  # 0.95 in every round
    low, high = ratio_interval(steady, steady_bare)
    assert low == pytest.approx(0.95) and high == pytest.approx(0.95)

    bare = postfix_runs([500, 400, 600, 450, 520, 480, 410, 590])
    daemon = postfix_runs([530, 350, 610, 400, 470, 500, 380, 560])
    ratio = delivered_rate(daemon) / delivered_rate(bare)
    low, high = ratio_interval(daemon, bare)
    assert low < ratio < high
    assert high - low > 0.04  # rounds from 0.87 to 1.06
    assert ratio_interval(daemon, bare) == (low, high)
    with pytest.raises(ValueError):
        ratio_interval(daemon, bare[:-1])  # every run belongs to a round


def test_the_postfix_rows_judge_each_wiring_on_its_ratio_and_show_the_interval() -> None:
    """One row per wiring: met when m365-policyd reaches 0.97 times the bare responder in that
    wiring, with the interval, the rates and the ratio to no check; then the cheapest wiring."""
    from benchmarks.common import Report, Scale
    from benchmarks.postfix import WIRINGS, add_rows

    bare = [500.0, 400.0, 600.0]
    runs = {"none": postfix_runs([550.0, 440.0, 660.0])}
    for wiring, factor in zip(WIRINGS, (0.96, 0.99, 0.98, 1.0), strict=True):
        runs[f"daemon {wiring.transport} {int(wiring.data_check)}"] = postfix_runs(
            [rate * factor for rate in bare]
        )
        runs[f"bare {wiring.transport} {int(wiring.data_check)}"] = postfix_runs(bare)
    report = Report()
    add_rows(report, runs, Scale(postfix_rounds=3), "`x postfix`")
    assert [row.met for row in report.rows] == [False, True, True, True, None, None]
    first = report.rows[0]
    assert "contrib snippet" in first.what
    interval = "0.960 × (95 % interval 0.960–0.960 over 3 rounds; 467 vs 486 msg/s)"
    assert first.measured.startswith(interval)
    assert "vs no check 0.87 ×" in first.measured
    assert "per message" in report.rows[-2].what  # server_cost, tested above
    assert "least: unix socket in private/, RCPT check only (0.91 × no check)" in (
        report.rows[-1].measured
    )


def test_the_postfix_rows_server_cost_is_cpu_per_message_as_a_share_of_the_machine() -> None:
    """The daemon's CPU per message minus the bare responder's, and that as a share of the
    machine's CPU time per message at the bare responder's rate."""
    from benchmarks.postfix import WIRINGS, PostfixRun, server_cost

    wiring = WIRINGS[0]
    runs = {  # 600 messages in 1.2 s each way (500 msg/s); 0.18 vs 0.12 s of server CPU
        "daemon tcp 1": [PostfixRun(300, 0.5, 0.6, 0.1), PostfixRun(300, 0.5, 0.6, 0.08)],
        "bare tcp 1": [PostfixRun(300, 0.5, 0.6, 0.06), PostfixRun(300, 0.5, 0.6, 0.06)],
    }
    assert server_cost(wiring, runs, cpus=2) == (
        "TCP loopback, RCPT and DATA checks: 300 vs 200 µs, +100 µs = 2.5% of the machine's "
        "time per message"
    )


def test_benchmarks_markdown_marks_missed_targets() -> None:
    """BENCHMARKS.md shows the machine, every row, and a missed target as a bold no."""
    from benchmarks import run

    report = run.Report()
    report.rows.append(run.Row("latency", "p99 ≤ 1 ms", "p99 2.000 ms", False, "`x latency`"))
    report.rows.append(run.Row("memory", "≤ 80 MB", "50 MB", True, "`x memory`"))
    report.details["latency"] = ["round 1: slow"]
    text = run.markdown(report, [("CPUs (nproc)", "2")], partial=True)
    assert "| CPUs (nproc) | 2 |" in text
    assert "| latency | p99 ≤ 1 ms | p99 2.000 ms | **no** | `x latency` |" in text
    assert "| memory | ≤ 80 MB | 50 MB | yes | `x memory` |" in text
    assert "Partial run" in text
    assert "- round 1: slow" in text
