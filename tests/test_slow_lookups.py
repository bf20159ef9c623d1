"""Alias tables queried through postmap never stall other connections.

A recipient whose expansion needs ``postmap -q`` (hash:, ldap:, ...) is expanded in a worker
thread; the engine answers that one request with a Deferred, and the protocol holds only that
connection's later bytes until the answer is written, in order.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from policyd.engine.policy import PolicyEngine, Session
from policyd.engine.stats import TOO_LARGE, Stats
from policyd.errors import AliasLookupError
from policyd.rules.model import AcceptedDomain, InboundConnector, OnPrem, Tenant
from policyd.sources.config import PolicySettings
from policyd.sources.state import State
from policyd.sources.tables import load_alias_maps
from policyd.wire.protocol import PolicyFactory
from tests.doubles import FakePostmap, Limits
from tests.serverproc import DEFAULT_BODY, PolicyServer, rcpt
from tests.tenants import model_config
from tests.waiting import wait_until

# --- the protocol holds a connection while its answer is a Deferred ------------------------


class SlowHandler:
    """Answers ``protocol_state=SLOW`` requests with Deferreds fired later by the test."""

    def __init__(self) -> None:
        self.waiting: list[tuple[Deferred[str], str]] = []
        self.count = 0

    def new_session(self) -> object:
        return None

    def handle(self, attrs: Mapping[str, str], session: object) -> str | Deferred[str]:
        self.count += 1
        answer = f"INFO {self.count} {attrs.get('recipient', '-')}"
        if attrs.get("protocol_state") == "SLOW":
            deferred: Deferred[str] = Deferred()
            self.waiting.append((deferred, answer))
            return deferred
        return answer

    def fire_all(self) -> None:
        while self.waiting:
            deferred, answer = self.waiting.pop(0)
            deferred.callback(answer)


def stream(*states: str) -> bytes:
    return b"".join(
        f"protocol_state={state}\nrecipient=r{n}@x.example\n\n".encode()
        for n, state in enumerate(states, 1)
    )


def expected(count: int) -> bytes:
    return b"".join(f"action=INFO {n} r{n}@x.example\n\n".encode() for n in range(1, count + 1))


def connection(handler: SlowHandler) -> tuple[Any, StringTransport, PolicyFactory]:
    factory = PolicyFactory(handler, Stats(), Limits(max_request_bytes=4096), Clock())
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport, factory


def test_deferred_answers_keep_their_order_at_every_read_size() -> None:
    """Slow and fast requests mixed, split anywhere: every reply in request order, once."""
    data = stream("RCPT", "SLOW", "RCPT", "SLOW", "SLOW", "DATA")
    for size in range(1, len(data) + 1):
        handler = SlowHandler()
        protocol, transport, _ = connection(handler)
        for start in range(0, len(data), size):
            protocol.dataReceived(data[start : start + size])
            if start % 3 == 0:
                handler.fire_all()  # answers arrive while more data is still coming
        handler.fire_all()
        assert transport.value() == expected(6), f"read size {size}"
        assert not transport.disconnecting


def test_nothing_is_read_past_a_pending_answer() -> None:
    """While one answer is pending, later requests on that connection wait their turn."""
    handler = SlowHandler()
    protocol, transport, _ = connection(handler)
    protocol.dataReceived(stream("SLOW", "RCPT"))
    assert transport.value() == b""
    assert handler.count == 1
    handler.fire_all()
    assert transport.value() == expected(2)


def test_other_connections_are_answered_meanwhile() -> None:
    """A pending answer holds one connection only."""
    handler = SlowHandler()
    factory = PolicyFactory(handler, Stats(), Limits(max_request_bytes=4096), Clock())
    slow, fast = factory.buildProtocol(None), factory.buildProtocol(None)
    slow_t, fast_t = StringTransport(), StringTransport()
    slow.makeConnection(slow_t)
    fast.makeConnection(fast_t)
    slow.dataReceived(b"protocol_state=SLOW\nrecipient=a@x\n\n")
    fast.dataReceived(b"protocol_state=RCPT\nrecipient=b@x\n\n")
    assert fast_t.value() == b"action=INFO 2 b@x\n\n"
    assert slow_t.value() == b""
    handler.fire_all()
    assert slow_t.value() == b"action=INFO 1 a@x\n\n"


def test_half_close_while_waiting_answers_then_closes() -> None:
    """A client that shuts down its side while we wait still gets its answer, then the close."""
    handler = SlowHandler()
    protocol, transport, _ = connection(handler)
    protocol.dataReceived(stream("SLOW", "RCPT"))
    protocol.readConnectionLost()
    assert not transport.disconnecting
    handler.fire_all()
    assert transport.value() == expected(2)
    assert transport.disconnecting


def test_lost_connection_gets_no_late_answer() -> None:
    """When the connection is gone before the answer, nothing is written."""
    handler = SlowHandler()
    protocol, transport, factory = connection(handler)
    protocol.dataReceived(stream("SLOW"))
    protocol.connectionLost(None)
    handler.fire_all()
    assert transport.value() == b""
    assert factory.stats.connections == 0


def test_failed_deferred_answers_dunno_and_counts() -> None:
    """A Deferred that fails is our bug: DUNNO (fail open) and one internal error."""

    class Failing(SlowHandler):
        def handle(self, attrs: Mapping[str, str], session: object) -> str | Deferred[str]:
            return fail(RuntimeError("boom"))

    protocol, transport, factory = connection(Failing())
    protocol.dataReceived(stream("SLOW"))
    assert transport.value() == b"action=DUNNO\n\n"
    assert factory.stats.internal_errors == 1
    assert factory.stats.duration_count == 1


def test_a_flood_while_waiting_is_bounded() -> None:
    """Data piling up behind a pending answer beyond max_request_bytes closes the connection."""
    handler = SlowHandler()
    protocol, transport, factory = connection(handler)
    protocol.dataReceived(stream("SLOW"))
    protocol.dataReceived(b"x=" + b"y" * 5000)
    assert transport.disconnecting
    assert factory.stats.protocol_errors[TOO_LARGE] == 1


# --- the engine expands postmap-backed recipients in a thread --------------------------------


def engine_with(runner: FakePostmap, tmp_path: Path) -> tuple[PolicyEngine, Stats, list[Any]]:
    ldap_cf = tmp_path / "ldap-aliases.cf"
    ldap_cf.write_text("server_host = ldap://127.0.0.1\n")
    config = model_config(
        Tenant(
            (AcceptedDomain("contoso.com"),),
            (InboundConnector("ip", sender_ip_addresses=()),),
        ),
        OnPrem(),
        policy=PolicySettings(action="defer"),
        alias_maps=(f"ldap:{ldap_cf}",),
    )
    aliases = load_alias_maps(config.alias_maps, runner=runner)
    assert aliases.uses_subprocess
    calls: list[Any] = []

    def in_thread(function: Any, *args: Any) -> Deferred[Any]:
        calls.append(args)
        try:
            return succeed(function(*args))
        except Exception as error:
            return fail(error)

    stats = Stats()
    clock = Clock()
    engine = PolicyEngine(
        State(config, aliases, 1), stats, clock.seconds, lambda r: None, in_thread=in_thread
    )
    return engine, stats, calls


def request(recipient: str) -> dict[str, str]:
    return {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "sender": "john@contoso.com",
        "recipient": recipient,
        "instance": "i.1",
    }


def test_engine_expands_in_a_thread_once_then_answers_from_cache(tmp_path: Path) -> None:
    """The first request for a postmap-backed recipient goes through the thread; the next not."""
    runner = FakePostmap({"kate@contoso.com": "kate@example.net"})
    engine, stats, calls = engine_with(runner, tmp_path)
    answer = engine.handle(request("kate@contoso.com"), Session())
    assert isinstance(answer, Deferred)
    results: list[str] = []
    answer.addCallback(results.append)
    # no connector matches (no egress address): the forward is refused and deferred
    assert results[0].startswith("450 4.7.64 ")
    assert [call[-1] for call in calls] == ["kate@contoso.com"]  # predicted in the thread
    assert engine.handle(request("kate@contoso.com"), Session()) == results[0]
    assert len(calls) == 1  # the second answer came from the cache
    assert stats.predictions[("default", "reject", "no-connector")] == 2


def test_engine_thread_failure_answers_on_error(tmp_path: Path) -> None:
    """A table that fails in the thread answers on_error (DUNNO) and is counted."""

    runner = FakePostmap({})
    engine, stats, _ = engine_with(runner, tmp_path)

    def down(key: str) -> Any:
        raise AliasLookupError("ldap server down")

    runner.fail = down
    answer = engine.handle(request("bob@contoso.com"), Session())
    assert isinstance(answer, Deferred)
    results: list[str] = []
    answer.addCallback(results.append)
    assert results == ["DUNNO"]
    assert stats.internal_errors == 1


# --- the real process: a slow postmap does not stall other connections ----------------------

SLOW_POSTMAP = """#!/bin/sh
# postmap -q KEY TABLE, as a slow directory server would answer it ({started}: the slow one began)
case "$2" in
  slow@contoso.com) : > "{started}"; sleep 2; echo "slow@tailspintoys.example"; exit 0 ;;
  *) exit 1 ;;
esac
"""


def slow_postmap_server(tmp_path: Path) -> PolicyServer:
    """serve with an ldap: alias table behind a postmap that takes 2 s for slow@contoso.com
    (and creates ``tmp_path/slow-lookup-started`` when that lookup begins)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "postmap"
    fake.write_text(SLOW_POSTMAP.format(started=tmp_path / "slow-lookup-started"))
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    assert "[onprem]\n" in DEFAULT_BODY and 'action = "defer"' in DEFAULT_BODY
    ldap_cf = tmp_path / "ldap-aliases.cf"
    ldap_cf.write_text("server_host = ldap://127.0.0.1\n")
    body = DEFAULT_BODY.replace("[onprem]\n", f'[onprem]\nalias_maps = ["ldap:{ldap_cf}"]\n', 1)
    return PolicyServer(
        tmp_path / "srv",
        body=body,
        env={"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"},
    ).start()


@pytest.mark.slow
def test_sigterm_during_a_slow_lookup_exits_within_5_s(tmp_path: Path) -> None:
    """A postmap still running at SIGTERM does not hold the exit past the 5 s budget."""
    server = slow_postmap_server(tmp_path)

    def ask() -> None:
        with contextlib.suppress(Exception):  # the connection may close unanswered
            server.ask(rcpt("john@fabrikam.com", "slow@contoso.com"))

    asker = threading.Thread(target=ask)
    asker.start()
    started = tmp_path / "slow-lookup-started"
    wait_until(started.exists, "the slow postmap lookup started")
    try:
        assert server.stop(timeout=5) == 0
    finally:
        server.kill()
        asker.join(10)


@pytest.mark.slow
def test_serve_answers_others_while_postmap_is_slow(tmp_path: Path) -> None:
    """serve: while one recipient waits 2 s for postmap, another connection gets its answer."""
    server = slow_postmap_server(tmp_path)
    try:
        results: dict[str, Any] = {}

        def slow() -> None:
            started = time.monotonic()
            results["slow"] = server.ask(rcpt("john@fabrikam.com", "slow@contoso.com"))
            results["slow_seconds"] = time.monotonic() - started

        thread = threading.Thread(target=slow)
        thread.start()
        lookup = tmp_path / "slow-lookup-started"
        wait_until(lookup.exists, "the slow postmap lookup started")
        started = time.monotonic()
        fast = server.ask(rcpt("alerts@contoso.com", "kate@tailspintoys.example"))
        fast_seconds = time.monotonic() - started
        thread.join(10)
        assert fast == "DUNNO"
        assert fast_seconds < 1.0  # not behind the 2 s postmap run
        assert results["slow"].startswith("450 4.7.64 ")
        assert "reason=forwarded" in results["slow"]
        assert results["slow_seconds"] >= 1.5
    finally:
        server.stop()
