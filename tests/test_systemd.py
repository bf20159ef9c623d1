"""sd_notify over a real datagram socket, and the shipped systemd units."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

from policyd.daemon.systemd import Notifier, notify_address, sd_notify

UNITS = Path(__file__).resolve().parent.parent / "systemd"
SERVICE = UNITS / "m365-policyd.service"
SOCKET = UNITS / "m365-policyd.socket"


def receiver(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2)
    return sock


def test_no_notify_socket_is_a_no_op() -> None:
    """Without $NOTIFY_SOCKET nothing is sent and nothing fails."""
    assert sd_notify("READY=1", environ={}) is False
    assert notify_address({}) is None


def test_notify_to_a_path_socket(tmp_path: Path) -> None:
    """A filesystem NOTIFY_SOCKET receives the state as one datagram."""
    path = str(tmp_path / "notify")
    with receiver(path) as sock:
        assert sd_notify("READY=1\nSTATUS=ok", environ={"NOTIFY_SOCKET": path}) is True
        assert sock.recv(4096) == b"READY=1\nSTATUS=ok"


def test_notify_to_an_abstract_socket() -> None:
    """A NOTIFY_SOCKET starting with @ is the Linux abstract namespace (leading NUL)."""
    name = f"m365-policyd-test-{uuid.uuid4().hex}"
    with receiver(b"\0" + name.encode()) as sock:
        assert sd_notify("STOPPING=1", environ={"NOTIFY_SOCKET": "@" + name}) is True
        assert sock.recv(4096) == b"STOPPING=1"


def test_notify_failure_is_not_raised(tmp_path: Path) -> None:
    """A NOTIFY_SOCKET nobody listens on returns False instead of raising."""
    assert sd_notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False


def test_notifier_messages() -> None:
    """Reloading carries MONOTONIC_USEC from the injected clock; ready and stopping are plain."""
    sent: list[str] = []

    def send(state: str) -> bool:
        sent.append(state)
        return True

    notifier = Notifier(send=send, monotonic=lambda: 123456789)
    notifier.reloading()
    notifier.ready()
    notifier.ready(status="serving 2 endpoint(s)")
    notifier.stopping()
    assert sent == [
        "RELOADING=1\nMONOTONIC_USEC=123456789",
        "READY=1",
        "READY=1\nSTATUS=serving 2 endpoint(s)",
        "STOPPING=1",
    ]


def unit_settings(path: Path) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit file (comments skipped), values in order per key."""
    settings: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_service_unit_has_the_promised_settings() -> None:
    """The service is Type=notify, runs serve from the Debian package's path, reloads by SIGHUP."""
    s = unit_settings(SERVICE)
    assert s["Type"] == ["notify"]
    assert s["ExecStart"] == ["/usr/bin/m365-policyd serve -c /etc/m365-policyd/m365-policyd.toml"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["User"] == ["m365-policyd"]
    assert s["Restart"] == ["on-failure"]
    assert s["RestartPreventExitStatus"] == ["78"]
    for key, value in {
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
    }.items():
        assert s[key] == [value], key


def test_socket_unit_listens_where_postfix_connects() -> None:
    """The socket unit listens on 127.0.0.1:10040 and documents the matching listen line."""
    s = unit_settings(SOCKET)
    assert s["ListenStream"] == ["127.0.0.1:10040"]
    assert 'listen = ["systemd:domain=INET:index=0"]' in SOCKET.read_text()
    assert 'listen = ["systemd:domain=INET:index=0"]' in SERVICE.read_text()


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """``systemd-analyze verify`` accepts both units without a single warning."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    # verify insists that ExecStart exists; point it at an executable that does.
    executable = shutil.which("true") or "/bin/true"
    text = SERVICE.read_text().replace("/usr/bin/m365-policyd", executable)
    (tmp_path / SERVICE.name).write_text(text)
    shutil.copy(SOCKET, tmp_path / SOCKET.name)
    result = subprocess.run(
        [analyze, "verify", SERVICE.name, SOCKET.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0"},
        check=False,
    )
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if "m365-policyd" in line or "Unknown" in line or "Failed" in line
    ]
    assert result.returncode == 0, result.stderr
    assert problems == []


#: Issue 16: the unit's ``systemd-analyze security`` exposure (0 best, 10 worst) stays at or
#: below this; the unit's comment says what was left out and why.
EXPOSURE_TARGET = 2.0


def test_the_service_units_security_exposure_is_at_most_two(tmp_path: Path) -> None:
    """``systemd-analyze security --offline=true`` rates the shipped unit (the Debian package
    installs the same file) at an exposure of at most 2.0, with the hardening the daemon is
    tested under (tests/test_hardening.py runs it with the same system-call filter)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    debian = SERVICE.parent.parent / "debian" / SERVICE.name
    assert debian.read_text() == SERVICE.read_text()
    shutil.copy(SERVICE, tmp_path / SERVICE.name)
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", SERVICE.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_COLORS": "0"},
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found is not None, result.stdout + result.stderr
    exposure = float(found.group(1))
    assert exposure <= EXPOSURE_TARGET, result.stdout
    assert f"rates this unit {exposure}" in SERVICE.read_text()  # the comment tells the truth
    s = unit_settings(SERVICE)
    for key in ("ProtectProc", "ProcSubset", "RemoveIPC", "SystemCallErrorNumber"):
        assert key in s, key
    assert s["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
