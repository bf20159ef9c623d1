"""Waiting for something to happen: poll a condition until it holds, with a deadline.

Tests wait for an event this way rather than sleeping a fixed time: a fixed sleep is either too
short on a loaded machine (a flaky test) or longer than needed everywhere else.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(
    condition: Callable[[], bool], what: str, *, timeout: float = 10.0, interval: float = 0.02
) -> None:
    """Return as soon as ``condition()`` is true; raise ``AssertionError`` naming ``what`` when
    it is still false after ``timeout`` seconds (polled every ``interval`` seconds)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(interval)
