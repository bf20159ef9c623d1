"""A private, throw-away Postfix instance for tests (Debian's ``postfix`` package, run as root).

Everything lives under one temporary directory: ``config_directory`` (``etc/``),
``queue_directory`` (``spool/``), ``data_directory`` (``data/``) and the mail log
(``maillog``, written by ``postlogd`` through ``maillog_file``, so no syslog is needed). smtpd
listens on one free loopback port; ``inet_interfaces = loopback-only``; nothing is chrooted.
The system's own Postfix configuration is never changed.

API (also used by the benchmarks)::

    from tests.e2e.postfix import PostfixInstance, postfix_unavailable

    reason = postfix_unavailable()          # None, or why Postfix cannot be run here
    with PostfixInstance.create(relayhost="[127.0.0.1]:2525",
                                settings={"smtp_tls_security_level": "none"}) as pf:
        pf.port, pf.host                    # where smtpd listens (127.0.0.1, a free port)
        pf.postconf({"relayhost": "..."})   # postconf -c DIR -e ..., then ``pf.reload()``
        pf.reload()                         # postfix -c DIR reload
        pf.send("a@contoso.com", ["b@example.net"], subject="x")   # smtplib; returns replies
        pf.flush(); pf.queue()              # postqueue -f / postqueue -j (list of dicts)
        pf.wait_queue_empty(); pf.log()     # mail log text; pf.wait_log(regex)
        pf.postqueue("-p"), pf.postsuper("-d", "ALL")

``create(hosts={"smtp.office365.com": "127.0.0.1"})`` starts Postfix in a private mount
namespace (``unshare --mount``) whose ``/etc/hosts`` is a copy of the system's with those lines
added, so its smtp(8) (with ``smtp_host_lookup = native``) reaches a real Microsoft 365 host name
on loopback while the system's ``/etc/hosts`` stays untouched; ``hosts_unavailable()`` says why
that cannot run here.

``create`` picks a free port for smtpd and starts the instance; ``close`` (or leaving the
``with`` block) stops it (``postfix -c DIR stop``, then kills any process whose pid file lies
in the instance's data or queue directory) and removes the directory.

Settings used by default are in ``BASE_SETTINGS``; anything passed in ``settings`` overrides
them. Queue and retry timings are short (1-2 s) so deferred mail is retried quickly.

Root is needed: ``postfix start`` and the set-gid ``postdrop``/``postqueue`` programs refuse a
non-default configuration directory for other users unless it is listed in the default
``main.cf`` (``alternate_config_directories``); as root they accept it, so nothing system-wide
is touched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from types import TracebackType

from tests.serverproc import free_port

POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"
POSTQUEUE = "/usr/sbin/postqueue"
POSTSUPER = "/usr/sbin/postsuper"
UNSHARE = "/usr/bin/unshare"
#: Bind-mounts $1 on /etc/hosts inside the new mount namespace, then runs the rest.
_WITH_HOSTS = 'mount --bind "$1" /etc/hosts && shift && exec "$@"'
#: The command line that runs ``HOSTS_FILE COMMAND...`` that way.
_NAMESPACE = (UNSHARE, "--mount", "--propagation", "private", "sh", "-ec", _WITH_HOSTS, "sh")

#: main.cf of every private instance (before the caller's settings).
BASE_SETTINGS: dict[str, str] = {
    "compatibility_level": "3.6",
    "myhostname": "mta.contoso.com",
    "mydomain": "contoso.com",
    "myorigin": "$mydomain",
    "mydestination": "",
    "local_recipient_maps": "",
    "inet_interfaces": "loopback-only",
    "inet_protocols": "ipv4",
    "mynetworks": "127.0.0.0/8",
    "alias_maps": "",
    "alias_database": "",
    "biff": "no",
    "append_dot_mydomain": "no",
    "smtputf8_enable": "no",
    # delivery: fast retries, no connection cache (a new source address takes effect at once)
    "queue_run_delay": "1s",
    "minimal_backoff_time": "1s",
    "maximal_backoff_time": "2s",
    "maximal_queue_lifetime": "1h",
    "bounce_queue_lifetime": "1h",
    "smtp_connection_cache_on_demand": "no",
    "smtp_connect_timeout": "5s",
    "in_flow_delay": "0",
    "smtpd_error_sleep_time": "0",
    "smtpd_soft_error_limit": "1000",
    "smtpd_hard_error_limit": "1000",
    "smtpd_client_connection_rate_limit": "0",
    "notify_classes": "",
    "maillog_file_prefixes": "/var, /dev/stdout, /tmp",
    "default_destination_concurrency_limit": "20",
}


class PostfixError(RuntimeError):
    """A Postfix command failed; the message carries its output."""


def postfix_unavailable() -> str | None:
    """Why a private Postfix cannot run here, or None when it can."""
    for tool in (POSTFIX, POSTCONF, POSTQUEUE):
        if not os.access(tool, os.X_OK):
            return f"{tool} is missing (install Debian's postfix package; `make test` does as root)"
    if os.geteuid() != 0:
        return "a private Postfix instance needs root (postfix start, postqueue -c)"
    return None


def hosts_unavailable() -> str | None:
    """Why ``create(hosts=...)`` cannot run here (no unshare, or no right to mount), or None."""
    if not os.access(UNSHARE, os.X_OK):
        return f"{UNSHARE} is missing (Debian's util-linux)"
    proc = subprocess.run(
        [*_NAMESPACE, "/etc/hosts", "true"], capture_output=True, text=True, timeout=10, check=False
    )
    if proc.returncode != 0:
        return (
            f"a private mount namespace for /etc/hosts is not allowed here: {proc.stderr.strip()}"
        )
    return None


def _run(args: Sequence[str], *, check: bool = True, timeout: float = 60) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise PostfixError(f"{' '.join(args)} exited {proc.returncode}: {proc.stdout}{proc.stderr}")
    return proc.stdout + proc.stderr


class PostfixInstance:
    """One private Postfix instance under ``root`` (see the module docstring)."""

    def __init__(self, root: Path, *, port: int, host: str = "127.0.0.1") -> None:
        self.root = root
        self.config_dir = root / "etc"
        self.queue_dir = root / "spool"
        self.data_dir = root / "data"
        self.log_path = root / "maillog"
        self.host = host
        self.port = port
        self.running = False
        #: Host name -> address lines of the private /etc/hosts ({} = the system's, no namespace).
        self.hosts: dict[str, str] = {}

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        *,
        relayhost: str = "",
        settings: Mapping[str, str] | None = None,
        master_extra: Iterable[str] = (),
        port: int | None = None,
        start: bool = True,
        hosts: Mapping[str, str] | None = None,
    ) -> PostfixInstance:
        """Write a fresh configuration in a new temporary directory and (by default) start it.

        ``master_extra`` lines are appended to master.cf (e.g. a second smtpd or a spawn
        service). The directory is world-traversable because Postfix's unprivileged daemons
        (user ``postfix``) must reach the queue.
        """
        root = Path(tempfile.mkdtemp(prefix="m365-postfix-"))
        os.chmod(root, 0o755)
        instance = cls(root, port=port or free_port())
        instance.hosts = dict(hosts or {})
        try:
            instance._write_config(relayhost, settings or {}, list(master_extra))
            if start:
                instance.start()
        except BaseException:
            instance.close()
            raise
        return instance

    def _write_config(
        self, relayhost: str, settings: Mapping[str, str], master_extra: list[str]
    ) -> None:
        self.config_dir.mkdir()
        self.queue_dir.mkdir()
        self.data_dir.mkdir(mode=0o700)
        # Postfix's master creates master.lock here as user postfix (mail_owner)
        shutil.chown(self.data_dir, user="postfix", group="postfix")
        main = dict(BASE_SETTINGS)
        main.update(
            {
                "queue_directory": str(self.queue_dir),
                "data_directory": str(self.data_dir),
                "maillog_file": str(self.log_path),
                "relayhost": relayhost,
            }
        )
        main.update(settings)
        (self.config_dir / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main.items()))
        master = [
            f"{self.host}:{self.port} inet n - n - - smtpd",
            "pickup    unix  n       -       n       60      1       pickup",
            "cleanup   unix  n       -       n       -       0       cleanup",
            "qmgr      unix  n       -       n       300     1       qmgr",
            "tlsmgr    unix  -       -       n       1000?   1       tlsmgr",
            "rewrite   unix  -       -       n       -       -       trivial-rewrite",
            "bounce    unix  -       -       n       -       0       bounce",
            "defer     unix  -       -       n       -       0       bounce",
            "trace     unix  -       -       n       -       0       bounce",
            "verify    unix  -       -       n       -       1       verify",
            "flush     unix  n       -       n       1000?   0       flush",
            "proxymap  unix  -       -       n       -       -       proxymap",
            "proxywrite unix -       -       n       -       1       proxymap",
            "smtp      unix  -       -       n       -       -       smtp",
            "relay     unix  -       -       n       -       -       smtp",
            "showq     unix  n       -       n       -       -       showq",
            "error     unix  -       -       n       -       -       error",
            "retry     unix  -       -       n       -       -       error",
            "discard   unix  -       -       n       -       -       discard",
            "local     unix  -       n       n       -       -       local",
            "virtual   unix  -       n       n       -       -       virtual",
            "lmtp      unix  -       -       n       -       -       lmtp",
            "anvil     unix  -       -       n       -       1       anvil",
            "scache    unix  -       -       n       -       1       scache",
            "postlog   unix-dgram n  -       n       -       1       postlogd",
            *master_extra,
        ]
        (self.config_dir / "master.cf").write_text("\n".join(master) + "\n")

    # -- lifecycle ------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["MAIL_CONFIG"] = str(self.config_dir)
        return env

    def start(self) -> None:
        """``postfix -c DIR start`` (checks and creates the queue directories first)."""
        _run([POSTFIX, "-c", str(self.config_dir), "check"])
        _run(self._with_hosts([POSTFIX, "-c", str(self.config_dir), "start"]))
        self.running = True
        self._wait_listening()

    def _with_hosts(self, argv: list[str]) -> list[str]:
        """``argv`` run in a private mount namespace seeing ``self.hosts`` (when any)."""
        if not self.hosts:
            return argv
        hosts = self.root / "hosts"
        hosts.write_text(
            Path("/etc/hosts").read_text()
            + "".join(f"{address} {name}\n" for name, address in self.hosts.items())
        )
        hosts.chmod(0o644)
        return [*_NAMESPACE, str(hosts), *argv]

    def _wait_listening(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise PostfixError(f"smtpd did not listen on {self.host}:{self.port}: {self.log()[-2000:]}")

    def reload(self) -> None:
        """``postfix -c DIR reload``: daemons pick up main.cf/master.cf changes.

        Waits until master has restarted its services and smtpd answers again.
        """
        mark = len(self.log())
        _run([POSTFIX, "-c", str(self.config_dir), "reload"])
        self.wait_log(r"reload -- version", since=mark, timeout=10)
        self._wait_listening()

    def stop(self) -> None:
        """``postfix -c DIR stop``, then kill whatever of this instance is still alive."""
        if self.running:
            _run([POSTFIX, "-c", str(self.config_dir), "stop"], check=False)
            self.running = False
        pid_file = self.data_dir / "master.lock"
        if not pid_file.exists():
            pid_file = self.queue_dir / "pid" / "master.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if _alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)  # master is a process group leader
            except OSError:
                os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        """Stop the instance and remove its directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostfixInstance:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- configuration --------------------------------------------------------------------

    def postconf(self, settings: Mapping[str, str], *, reload: bool = False) -> None:
        """Set main.cf parameters (``postconf -c DIR -e``); optionally reload."""
        if settings:
            _run(
                [POSTCONF, "-c", str(self.config_dir), "-e"]
                + [f"{k}={v}" for k, v in settings.items()]
            )
        if reload and self.running:
            self.reload()

    def get(self, name: str) -> str:
        """The effective value of one main.cf parameter (``postconf -c DIR -h -x``)."""
        return _run([POSTCONF, "-c", str(self.config_dir), "-h", "-x", name]).strip()

    def apply_snippet(
        self, text: str, overrides: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """Apply the ``name = value`` lines of a main.cf snippet (continuation lines allowed).

        ``overrides`` replace values after parsing (e.g. the policy endpoint). Returns what
        was applied. Postfix has no include directive, so this is what "main.cf includes the
        snippet" means here.
        """
        settings = parse_main_cf(text)
        settings.update(overrides or {})
        self.postconf(settings)
        return settings

    # -- mail -----------------------------------------------------------------------------

    def send(
        self,
        sender: str,
        recipients: Sequence[str],
        *,
        subject: str = "test",
        body: str = "test message\n",
        headers: Mapping[str, str] | None = None,
        source_address: str | None = None,
        message_id: str | None = None,
    ) -> SendResult:
        """Send one message with smtplib, one RCPT per recipient, and report every reply.

        Refused recipients do not raise; a message with no accepted recipient is not sent
        (``data`` is then None). ``message_id`` defaults to a fresh unique one.
        """
        msg = EmailMessage()
        msg["From"] = sender or "MAILER-DAEMON@mta.contoso.com"
        msg["To"] = ", ".join(recipients)
        msg["Subject"] = subject
        msg["Message-ID"] = message_id or make_msgid(domain="e2e.test")
        for k, v in (headers or {}).items():
            msg[k] = v
        msg.set_content(body)
        result = SendResult(message_id=str(msg["Message-ID"]))
        source = (source_address, 0) if source_address else None
        with smtplib.SMTP(self.host, self.port, timeout=30, source_address=source) as smtp:
            smtp.ehlo("client.e2e.test")
            code, text = smtp.mail(sender)
            result.mail = (code, text.decode())
            if code != 250:
                return result
            for rcpt in recipients:
                code, text = smtp.rcpt(rcpt)
                result.rcpt[rcpt] = (code, text.decode())
            if not any(c == 250 for c, _ in result.rcpt.values()):
                smtp.rset()
                return result
            code, text = smtp.data(msg.as_bytes())
            result.data = (code, text.decode())
        return result

    # -- queue and log --------------------------------------------------------------------

    def postqueue(self, *args: str) -> str:
        """Run ``postqueue -c DIR ARGS`` and return its output."""
        return _run([POSTQUEUE, "-c", str(self.config_dir), *args])

    def postsuper(self, *args: str) -> str:
        """Run ``postsuper -c DIR ARGS`` and return its output."""
        return _run([POSTSUPER, "-c", str(self.config_dir), *args])

    def queue(self) -> list[dict[str, object]]:
        """The queue as ``postqueue -j`` reports it: one dict per message."""
        out = _run([POSTQUEUE, "-c", str(self.config_dir), "-j"], check=False)
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    def flush(self) -> None:
        """``postqueue -f``: retry deferred mail now."""
        _run([POSTQUEUE, "-c", str(self.config_dir), "-f"], check=False)

    def wait_queue_empty(self, timeout: float = 20.0) -> None:
        """Wait until no message is in the active, incoming or deferred queue (hold ignored)."""
        deadline = time.monotonic() + timeout
        while True:
            left = [m for m in self.queue() if m.get("queue_name") != "hold"]
            if not left:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"Postfix queue not empty: {left}")
            time.sleep(0.1)

    def clear_queue(self) -> None:
        """Delete every message, in every queue (``postsuper -d ALL``)."""
        _run([POSTSUPER, "-c", str(self.config_dir), "-d", "ALL"], check=False)

    def log(self) -> str:
        """The whole mail log so far ("" before the first line is written)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern: str, *, since: int = 0, timeout: float = 20.0) -> re.Match[str]:
        """Wait until ``pattern`` (a regex) appears in the log after offset ``since``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = regex.search(self.log(), since)
            if found:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"{pattern!r} not in the mail log: {self.log()[since:][-3000:]}")
            time.sleep(0.05)


class SendResult:
    """The SMTP replies one ``PostfixInstance.send`` got."""

    def __init__(self, message_id: str) -> None:
        self.message_id = message_id
        self.mail: tuple[int, str] = (0, "")
        self.rcpt: dict[str, tuple[int, str]] = {}
        self.data: tuple[int, str] | None = None

    @property
    def queued(self) -> bool:
        """True when Postfix accepted the message (250 after DATA)."""
        return self.data is not None and self.data[0] == 250

    @property
    def queue_id(self) -> str:
        """Postfix's queue ID from the DATA reply ("250 2.0.0 Ok: queued as ABC123")."""
        if self.data is None:
            return ""
        m = re.search(r"queued as (\w+)", self.data[1])
        return m.group(1) if m else ""

    def __repr__(self) -> str:
        return f"SendResult(mail={self.mail}, rcpt={self.rcpt}, data={self.data})"


def parse_main_cf(text: str) -> dict[str, str]:
    """Parse main.cf syntax: ``name = value``, continuation lines start with whitespace."""
    settings: dict[str, str] = {}
    current: str | None = None
    for raw in text.splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if raw[0].isspace() and current is not None:
            settings[current] = f"{settings[current]} {raw.strip()}".strip()
            continue
        name, eq, value = raw.partition("=")
        if not eq:
            raise ValueError(f"not a main.cf line: {raw!r}")
        current = name.strip()
        settings[current] = value.strip()
    return settings


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
