"""Fixtures shared by the test modules (pytest finds them here; no test module imports another).

Plain helpers that are not fixtures live in helper modules: ``tests/doubles.py`` (test doubles:
limits, a fake ``postmap``), ``tests/pki.py``, ``tests/serverproc.py``.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _unfrozen_heap() -> Iterator[None]:
    """Start and end every test with nothing frozen: ``serve`` calls ``gc.freeze()`` (settle_heap)
    at start-up and reload, and a test that runs it in-process must not leave that to the next."""
    gc.unfreeze()
    yield
    gc.unfreeze()
