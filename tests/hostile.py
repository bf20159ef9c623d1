"""A well-behaved Postfix-like client that keeps asking while a test attacks the daemon.

``Steady(server)`` opens one persistent policy connection (as smtpd does) and, in a thread,
asks the same known request every ``period`` seconds, recording the reply and how long it
took. ``steady.check()`` asserts every reply was the expected one and came within ``budget``
seconds (100 ms: issue 16's "keeps getting correct answers within 100 ms throughout").

Use it as a context manager around the hostile action::

    with Steady(server) as steady:
        ...  # mkfifo, SIGHUP, flood
    steady.check()
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from types import TracebackType

from tests.serverproc import PolicyServer, rcpt

#: Issue 16: every answer to a well-behaved client comes within this many seconds.
BUDGET = 0.1

#: The request the steady client sends, and the answer the default tenant gives it: a foreign
#: sender from the egress address is refused (no-connector), deferred under action = "defer".
STEADY_SENDER = "app@fabrikam.com"
STEADY_RECIPIENT = "kate@contoso.com"


class Steady:
    """Asks one known request over and over on one connection; see the module docstring."""

    def __init__(
        self,
        server: PolicyServer,
        *,
        sender: str = STEADY_SENDER,
        recipient: str = STEADY_RECIPIENT,
        expect: str | None = None,
        period: float = 0.02,
        budget: float = BUDGET,
    ) -> None:
        self.server = server
        self.request = rcpt(sender, recipient, client_address="203.0.113.10")
        self.expect = expect if expect is not None else server.ask(self.request)
        self.period = period
        self.budget = budget
        self.answers: list[tuple[float, str]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Steady:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        try:
            client = self.server.client(timeout=5)
        except OSError as error:
            self.errors.append(f"connect: {error}")
            return
        try:
            while not self._stop.is_set():
                began = time.monotonic()
                try:
                    answer = client.ask(self.request)
                except OSError as error:
                    self.errors.append(f"ask: {error!r}")
                    return
                self.answers.append((time.monotonic() - began, answer))
                self._stop.wait(self.period)
        finally:
            client.close()

    def check(self, minimum: int = 3) -> None:
        """Every answer was the expected one and within the budget; at least ``minimum``."""
        assert not self.errors, self.errors
        assert len(self.answers) >= minimum, self.answers
        wrong = [answer for _, answer in self.answers if answer != self.expect]
        assert not wrong, f"expected {self.expect!r}, got {wrong[:3]}"
        slowest = max(took for took, _ in self.answers)
        assert slowest < self.budget, f"slowest answer took {slowest * 1000:.0f} ms"


def make_fifo(path: Path) -> Path:
    """Replace ``path`` by a FIFO nobody writes to (what ``mkfifo`` does)."""
    if path.exists() or path.is_symlink():
        path.unlink()
    os.mkfifo(path)
    return path
