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

import multiprocessing
import os
import time
from pathlib import Path
from types import TracebackType

from tests.serverproc import PolicyServer, rcpt

#: Issue 16: every answer to a well-behaved client comes within this many seconds.
BUDGET = 0.1

#: The request the steady client sends by default: a foreign sender, which the default tenant
#: (``tests/tenants.py``) refuses (no-connector); under action = "defer" the answer is a 450.
STEADY_SENDER = "app@fabrikam.com"
STEADY_RECIPIENT = "kate@tailspintoys.com"


class Steady:
    """Asks one known request over and over on one connection; see the module docstring.

    The client runs in its own process (forked), so the test's own work (log polling,
    scrapes, file writes) cannot delay it through the GIL and spoil the latency it measures.
    """

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
        self.request = rcpt(sender, recipient)
        self.expect = expect if expect is not None else server.ask(self.request)
        self.period = period
        self.budget = budget
        self.answers: list[tuple[float, str]] = []
        self.errors: list[str] = []
        context = multiprocessing.get_context("fork")
        self._stop = context.Event()
        self._ready = context.Event()
        self._results, self._sink = context.Pipe(duplex=False)
        self._process = context.Process(target=self._run, daemon=True)
        self._stopped = False

    def __enter__(self) -> Steady:
        """Start the client; returns once its connection has had one (unmeasured) answer, so
        the measured window is the hostile action, not connection set-up and warm-up."""
        self._process.start()
        if not self._ready.wait(10):
            self.errors.append("the steady client did not get its first answer within 10 s")
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop asking and collect the answers (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        if self._results.poll(30):
            self.answers, self.errors = self._results.recv()
        else:
            self.errors.append("the steady client sent no results")
        self._process.join(timeout=10)

    def _run(self) -> None:
        answers: list[tuple[float, str]] = []
        errors: list[str] = []
        try:
            client = self.server.client(timeout=5)
        except OSError as error:
            errors.append(f"connect: {error}")
            self._ready.set()
        else:
            try:
                try:
                    client.ask(self.request)  # warm-up, not measured
                except OSError as error:
                    errors.append(f"first ask: {error!r}")
                self._ready.set()
                while not errors and not self._stop.is_set():
                    began = time.monotonic()
                    try:
                        answer = client.ask(self.request)
                    except OSError as error:
                        errors.append(f"ask: {error!r}")
                        break
                    answers.append((time.monotonic() - began, answer))
                    self._stop.wait(self.period)
            finally:
                client.close()
        self._sink.send((answers, errors))

    def check(self, minimum: int = 3) -> None:
        """Every answer was the expected one and within the budget; at least ``minimum``."""
        self.stop()
        assert not self.errors, self.errors
        assert len(self.answers) >= minimum, self.answers
        wrong = [answer for _, answer in self.answers if answer != self.expect]
        assert not wrong, f"expected {self.expect!r}, got {wrong[:3]}"
        slowest, index = max((took, index) for index, (took, _) in enumerate(self.answers))
        assert slowest < self.budget, (
            f"answer {index + 1} of {len(self.answers)} took {slowest * 1000:.0f} ms"
        )


def make_fifo(path: Path) -> Path:
    """Replace ``path`` by a FIFO nobody writes to (what ``mkfifo`` does)."""
    if path.exists() or path.is_symlink():
        path.unlink()
    os.mkfifo(path)
    return path
