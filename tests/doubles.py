"""Test doubles shared by several test modules (plain classes; fixtures are in conftest.py).

``Limits`` stands in for ``policyd.sources.config.ServerSettings`` where a protocol factory
needs only its three limits; ``FakePostmap`` stands in for ``subprocess.run`` behind the alias
tables' ``postmap -q`` lookups; ``Clock`` is the engine's clock, set by hand.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Limits:
    """The ``[server]`` limits a ``PolicyFactory`` reads (``policyd.wire.protocol.ServerLimits``),
    small enough for tests: 8 connections, 300 s idle, 64 KiB a request."""

    max_connections: int = 8
    idle_timeout: float = 300.0
    max_request_bytes: int = 65536


class FakePostmap:
    """Stands in for subprocess.run: answers ``postmap -q KEY TABLE`` from a dict, counts calls."""

    def __init__(
        self,
        table: Mapping[str, str],
        *,
        fail: Callable[[str], subprocess.CompletedProcess[str] | None] | None = None,
    ) -> None:
        self.table = {k.lower(): v for k, v in table.items()}
        self.fail = fail
        self.keys: list[str] = []

    def __call__(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        assert argv[1] == "-q"
        assert kwargs["timeout"] > 0
        key = argv[2]
        self.keys.append(key)
        if self.fail is not None:
            failed = self.fail(key)
            if failed is not None:
                return failed
        value = self.table.get(key.lower())
        if value is None:
            return subprocess.CompletedProcess(list(argv), 1, "", "")
        return subprocess.CompletedProcess(list(argv), 0, value + "\n", "")

    @property
    def lookups(self) -> list[str]:
        """The keys looked up after the load-time probe."""
        return [key for key in self.keys if "probe" not in key]


class Clock:
    """The engine's and the prediction cache's clock (seconds since the epoch): starts at
    ``now`` and moves only when a test sets ``now``."""

    def __init__(self, now: datetime) -> None:
        self.now = now.timestamp()

    def __call__(self) -> float:
        return self.now
