"""Run the real ``serve`` process on loopback for end-to-end tests.

The helper writes a configuration into a temporary directory, starts
``python -m policyd.daemon.serve -c FILE`` (the same code as ``m365-policyd serve``) on a free
loopback port, waits until it has announced readiness, and stops it again. Everything it
needs is in this file; engineers reuse it from their own tests.

API
---
``PolicyServer(directory, body=DEFAULT_BODY, *, reload_interval=0, metrics=True, log_format="text",
log_level="info", listen=None, server_extra="", listen_socket=None, env=None, wrapper=())``
    ``body`` is TOML for everything except ``[server]`` and ``[log]`` (tenant, onprem, policy,
    outcomes...), which the helper writes itself: ``listen`` on a free 127.0.0.1 port (or the
    endpoint strings you pass in ``listen``), ``metrics`` on another free port (``metrics=False``
    turns it off), ``reload_interval``, plus any ``server_extra`` lines (e.g.
    ``"max_request_bytes = 4096"``). ``listen_socket`` (a bound, listening socket) is passed to
    the child as systemd socket activation (fd 3, ``LISTEN_FDS=1``, ``LISTEN_PID`` = the child);
    combine it with ``listen=["systemd:domain=INET:index=0"]``. ``wrapper`` is a command the
    process is started under (e.g. ``setpriv`` dropping capabilities).

``server.start(timeout=15)``
    Writes the configuration (``server.config_path``) and starts the process; returns once the
    "ready" line is logged (every endpoint listens). Raises ``ServerProcessError`` with the exit
    status and stderr if the process exits first. Retries with new ports when a port was taken.
``server.port`` / ``server.metrics_port`` / ``server.process`` (a ``subprocess.Popen``)
``server.ask(attrs)`` → the action Postfix would get (e.g. ``"DUNNO"``), on a fresh connection.
``server.client()`` → ``PolicyClient`` with ``.ask(attrs)`` and ``.close()``: one persistent
    connection, many requests, as Postfix uses it.
``rcpt(sender, recipient, **more)`` / ``data(**more)`` build realistic Postfix 3.x requests.
``server.scrape()`` → ``Samples``; ``samples.value(name, **labels)`` → float or None.
``server.write_config(body=None, **changes)`` rewrites the configuration (e.g. before SIGHUP);
    ``server.write_file(name, content)`` writes another file into the directory and returns its
    path (exports, alias maps, certificates).
``server.reload()`` sends SIGHUP. ``server.wait_for_log(text, timeout=10, after=0)`` waits for
    a log line containing ``text`` and returns it; ``server.log_offset()`` marks "from now on".
``server.log()`` is everything the process wrote to stdout; ``server.stderr()`` likewise.
``server.stop(sig=SIGTERM, timeout=5)`` → exit status (raises ``TimeoutError`` if the process
    does not exit in time; it is then killed). Use the object as a context manager to always
    stop it.

Example::

    with PolicyServer(tmp_path) as server:
        assert server.ask(rcpt("app@fabrikam.com", "kate@tailspintoys.com")).startswith("450")
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from prometheus_client.parser import text_string_to_metric_families

from tests.tenants import ip_tenant_toml

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """``m365-policyd ARGS`` as a process from this tree, with a timeout (a hang fails the
    test) and without an inherited ``M365_POLICYD_CONFIG``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "M365_POLICYD_CONFIG": ""}
    return subprocess.run(
        [sys.executable, "-m", "policyd.tools.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
        env=env,
    )


LOOPBACK = "127.0.0.1"

#: The IP-connector tenant (``tests/tenants.py``), deferring predicted refusals.
DEFAULT_BODY = ip_tenant_toml(action="defer")

#: A tenant whose only connector matches by certificate (``*.contoso.com``), refusing by
#: ``reject``; the test writes ``cert.pem`` and ``ca.pem`` into the server's directory.
CERT_BODY = """\
[tenant]
accepted_domains = ["contoso.com"]

[[tenant.inbound_connector]]
name = "Certificate connector"
connector_type = "OnPremises"
enabled = true
tls_sender_certificate_name = "*.contoso.com"

[onprem]
egress_addresses = ["198.51.100.7"]
certificate = "cert.pem"
ca_bundle = "ca.pem"

[policy]
action = "reject"
"""

#: The line ``serve`` logs once every endpoint listens.
READY_MARKER = " ready"


class ServerProcessError(RuntimeError):
    """The process exited (or never became ready); the message carries status and stderr."""

    def __init__(self, message: str, status: int | None, stderr: str) -> None:
        super().__init__(f"{message} (exit status {status}): {stderr.strip()}")
        self.status = status
        self.stderr = stderr


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on ``host`` that was free a moment ago (bind to port 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def toml_string(value: str) -> str:
    """A TOML basic string for ``value``."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def request_text(attrs: Mapping[str, str]) -> bytes:
    """One policy request on the wire."""
    return "".join(f"{k}={v}\n" for k, v in attrs.items()).encode() + b"\n"


_counter = iter(range(1, 1 << 30))


def rcpt(sender: str, recipient: str, **more: str) -> dict[str, str]:
    """A Postfix 3.x RCPT request as smtpd sends it (queue_id, instance etc. overridable)."""
    attrs = {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "protocol_name": "ESMTP",
        "helo_name": "app1.contoso.com",
        "queue_id": "",
        "sender": sender,
        "recipient": recipient,
        "recipient_count": "0",
        "client_address": "10.0.0.5",
        "client_name": "app1.contoso.com",
        "reverse_client_name": "app1.contoso.com",
        "instance": f"1a2b.{next(_counter):x}.0",
        "sasl_method": "",
        "sasl_username": "",
        "sasl_sender": "",
        "size": "1234",
        "ccert_subject": "",
        "ccert_issuer": "",
        "ccert_fingerprint": "",
        "encryption_protocol": "TLSv1.3",
        "encryption_cipher": "TLS_AES_256_GCM_SHA384",
        "encryption_keysize": "256",
        "etrn_domain": "",
        "stress": "",
        "client_port": "40000",
        "policy_context": "",
        "server_address": "10.0.0.1",
        "server_port": "25",
        "compatibility_level": "3.6",
        "mail_version": "3.7.11",
    }
    attrs.update(more)
    return attrs


def data(instance: str, **more: str) -> dict[str, str]:
    """A DATA request for the message ``instance`` (whose RCPTs were sent before)."""
    attrs = rcpt("", "", protocol_state="DATA", instance=instance, recipient_count="1")
    attrs.update(more)
    return attrs


class PolicyClient:
    """One persistent policy connection: many requests in lockstep, as Postfix sends them."""

    def __init__(self, port: int, host: str = LOOPBACK, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self._buffer = b""

    def ask(self, attrs: Mapping[str, str]) -> str:
        """Send one request; return the ``action=`` value of the reply."""
        self.sock.sendall(request_text(attrs))
        return self.read_reply()

    def read_reply(self) -> str:
        """Read one reply (``action=...`` then a blank line); raises EOFError on close."""
        while b"\n\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed; unparsed bytes: {self._buffer!r}")
            self._buffer += chunk
        reply, _, self._buffer = self._buffer.partition(b"\n\n")
        for line in reply.decode().split("\n"):
            if line.startswith("action="):
                return line[len("action=") :]
        raise ValueError(f"reply without action: {reply!r}")

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Samples:
    """Parsed ``/metrics``: ``value(name, **labels)`` finds one sample."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))

    def value(self, name: str, **labels: str) -> float | None:
        """The value of the sample with exactly these labels, or None when there is none."""
        for sample_labels, value in self.samples.get(name, []):
            if sample_labels == labels:
                return value
        return None

    def __contains__(self, name: str) -> bool:
        return name in self.samples


class PolicyServer:
    """A ``serve`` process on loopback; see the module docstring."""

    def __init__(
        self,
        directory: Path | str,
        body: str = DEFAULT_BODY,
        *,
        reload_interval: float = 0,
        metrics: bool = True,
        log_format: str = "text",
        log_level: str = "info",
        listen: Sequence[str] | None = None,
        server_extra: str = "",
        listen_socket: socket.socket | None = None,
        env: Mapping[str, str] | None = None,
        wrapper: Sequence[str] = (),
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path = self.directory / "m365-policyd.toml"
        self.body = body
        self.reload_interval = reload_interval
        self.metrics_enabled = metrics
        self.log_format = log_format
        self.log_level = log_level
        self.listen = list(listen) if listen is not None else None
        self.server_extra = server_extra
        self.listen_socket = listen_socket
        self.env = dict(env or {})
        self.wrapper = list(wrapper)
        self.port = listen_socket.getsockname()[1] if listen_socket is not None else free_port()
        self.metrics_port = free_port() if metrics else 0
        self.process: subprocess.Popen[bytes] | None = None
        self._stdout_path = self.directory / "serve.stdout"
        self._stderr_path = self.directory / "serve.stderr"

    # --- files ------------------------------------------------------------------------------

    def config_text(self, body: str | None = None) -> str:
        """The full TOML: the helper's [server] and [log] sections, then ``body``."""
        listen = (
            self.listen if self.listen is not None else [f"tcp:{self.port}:interface={LOOPBACK}"]
        )
        metrics = f"tcp:{self.metrics_port}:interface={LOOPBACK}" if self.metrics_enabled else ""
        lines = [
            "[server]",
            "listen = [" + ", ".join(toml_string(item) for item in listen) + "]",
            f"metrics = {toml_string(metrics)}",
            f"reload_interval = {self.reload_interval}",
        ]
        if self.server_extra:
            lines.append(self.server_extra)
        lines += [
            "",
            "[log]",
            f"format = {toml_string(self.log_format)}",
            f"level = {toml_string(self.log_level)}",
            "",
        ]
        return "\n".join(lines) + "\n" + (self.body if body is None else body)

    def write_config(self, body: str | None = None, **changes: object) -> Path:
        """(Re)write the configuration; ``body`` replaces the TOML body, ``changes`` set
        constructor options such as ``reload_interval`` or ``log_level`` first."""
        for key, value in changes.items():
            if not hasattr(self, key):
                raise TypeError(f"unknown option {key}")
            setattr(self, key, value)
        if body is not None:
            self.body = body
        _atomic_write(self.config_path, self.config_text())
        return self.config_path

    def write_file(self, name: str, content: str | bytes) -> Path:
        """Write ``content`` to ``name`` in the server's directory (atomically); the path."""
        path = self.directory / name
        _atomic_write(path, content)
        return path

    # --- process ----------------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> PolicyServer:
        """Start the process and wait until it is ready (see the module docstring)."""
        for attempt in range(3):
            self.write_config()
            self._spawn()
            try:
                self._wait_ready(timeout)
                return self
            except ServerProcessError as failure:
                in_use = "in use" in failure.stderr.lower()
                chose_ports = self.listen is None and self.listen_socket is None
                if not in_use or attempt == 2 or not chose_ports:
                    raise
                self.port = free_port()
                self.metrics_port = free_port() if self.metrics_enabled else 0
        raise AssertionError("unreachable")  # pragma: no cover

    def _spawn(self) -> None:
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_SOCKET"))
        }
        env.pop("M365_POLICYD_CONFIG", None)
        env.pop("JOURNAL_STREAM", None)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env.update(self.env)
        argv = [sys.executable, "-m", "policyd.daemon.serve", "-c", str(self.config_path)]
        pass_fds: tuple[int, ...] = ()
        if self.listen_socket is not None:
            fd = self.listen_socket.fileno()
            pass_fds = (fd,)
            env["LISTEN_FDS"] = "1"
            env["LISTEN_FDNAMES"] = "policy"
            # systemd's contract: the socket is fd 3 and LISTEN_PID is the daemon's own pid.
            # A tiny launcher arranges both in the child, then execs the daemon in place.
            move = "" if fd == 3 else f"os.dup2({fd}, 3); os.close({fd}); "
            launcher = (
                "import os, sys; "
                f"{move}"
                "os.environ['LISTEN_PID'] = str(os.getpid()); "
                "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
            )
            argv = [sys.executable, "-c", launcher, *argv[1:]]

        argv = [*self.wrapper, *argv]
        self._stdout_file = open(self._stdout_path, "ab")  # noqa: SIM115 - closed in stop()
        self._stderr_file = open(self._stderr_path, "ab")  # noqa: SIM115 - closed in stop()
        self._stdout_start = self._stdout_path.stat().st_size
        self._stderr_start = self._stderr_path.stat().st_size
        self.process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._stdout_file,
            stderr=self._stderr_file,
            pass_fds=pass_fds,
        )

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.process.poll()
            if status is not None:
                self._close_files()
                raise ServerProcessError("serve exited before it was ready", status, self.stderr())
            if READY_MARKER in self.log() and "m365-policyd" in self.log():
                return
            time.sleep(0.02)
        self.kill()
        raise ServerProcessError(
            f"serve was not ready within {timeout} s", None, self.stderr() + self.log()
        )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the process."""
        assert self.process is not None
        self.process.send_signal(sig)

    def reload(self) -> None:
        """Send SIGHUP."""
        self.send_signal(signal.SIGHUP)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int:
        """Send ``sig`` and wait for the exit status; kill and raise TimeoutError after timeout."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise TimeoutError(
                    f"serve did not exit within {timeout} s of signal {sig}"
                ) from None
        self._close_files()
        return int(self.process.returncode)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self._close_files()

    def _close_files(self) -> None:
        for name in ("_stdout_file", "_stderr_file"):
            handle = getattr(self, name, None)
            if handle is not None:
                handle.close()
                setattr(self, name, None)

    def __enter__(self) -> PolicyServer:
        if self.process is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.running:
            with contextlib.suppress(TimeoutError):
                self.stop()
        self.kill()

    # --- output -----------------------------------------------------------------------------

    def log(self) -> str:
        """Everything this process (the latest start) wrote to stdout."""
        return _read_from(self._stdout_path, getattr(self, "_stdout_start", 0))

    def stderr(self) -> str:
        """Everything this process (the latest start) wrote to stderr."""
        return _read_from(self._stderr_path, getattr(self, "_stderr_start", 0))

    def log_offset(self) -> int:
        """A mark for ``wait_for_log(after=...)``: lines logged from now on."""
        return len(self.log())

    def log_lines(self, after: int = 0) -> list[str]:
        return self.log()[after:].splitlines()

    def wait_for_log(self, text: str, timeout: float = 10.0, after: int = 0) -> str:
        """The first complete log line after offset ``after`` containing ``text``."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log()[after:]
            for line in log.splitlines(keepends=True):
                if text in line and line.endswith("\n"):
                    return line.rstrip("\n")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no log line with {text!r} within {timeout} s; log:\n{log}")
            if not self.running:
                raise ServerProcessError(
                    f"serve exited while waiting for {text!r}",
                    self.process and self.process.poll(),
                    self.stderr(),
                )
            time.sleep(0.02)

    # --- talking to it ----------------------------------------------------------------------

    def client(self, timeout: float = 10.0) -> PolicyClient:
        """A new persistent connection to the first listen endpoint."""
        return PolicyClient(self.port, timeout=timeout)

    def ask(self, attrs: Mapping[str, str]) -> str:
        """One request on a fresh connection; the action."""
        with self.client() as client:
            return client.ask(attrs)

    def scrape_text(self) -> str:
        url = f"http://{LOOPBACK}:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.read().decode())

    def scrape(self) -> Samples:
        """``GET /metrics`` parsed with prometheus_client's parser."""
        return Samples(self.scrape_text())


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def _atomic_write(path: Path, content: str | bytes) -> None:
    """Write via a temporary file and rename, as editors and config management do."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(content.encode() if isinstance(content, str) else content)
    os.replace(tmp, path)


@contextlib.contextmanager
def running_server(
    directory: Path | str, body: str = DEFAULT_BODY, **options: object
) -> Iterator[PolicyServer]:
    """``with running_server(tmp_path) as server:`` — start, yield, always stop."""
    server = PolicyServer(directory, body, **options)  # type: ignore[arg-type]
    with server.start():
        yield server
