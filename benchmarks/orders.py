"""The generator's traffic in another attribute order (SPEC §9 row 2).

``m365-policyd bench`` sends requests in Postfix's order (``POSTFIX_ATTRIBUTE_ORDER``).
``attribute_order(order)`` makes the same generator, in this process, send the very same
requests with their lines in ``order`` instead: the bytes, values and sizes are unchanged, only
the order of the lines differs, as it would for another client or another Postfix version. The
generator has no option for it, so this wraps the function its worker module calls to build the
traffic, for the duration of a ``with`` block (``processes=1`` runs the worker in this process).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from policyd.constants import POSTFIX_ATTRIBUTE_ORDER
from policyd.tools import bench

#: Another order: alphabetical, as a client that writes a sorted map would send it. Every
#: wanted attribute moves (``request`` from first to 25th, ``sender`` to 21st).
ALPHABETICAL = tuple(sorted(POSTFIX_ATTRIBUTE_ORDER))


def reorder(request: bytes, order: Sequence[str]) -> bytes:
    """``request`` (``name=value`` lines and a blank line) with its lines in ``order``."""
    lines = {line.split(b"=", 1)[0].decode(): line for line in request[:-2].split(b"\n")}
    if set(lines) != set(order):
        raise ValueError(f"the request's attributes are not those of {order!r}")
    return b"\n".join(lines[name] for name in order) + b"\n\n"


#: Encoded traffic by (order, count, seed): the generator builds the same messages for every
#: run, and with runs of 0.5 s building them again each time took a fifth of the run's wall time
#: (the servers idle meanwhile, which made their CPU shares look lower than they were).
_traffic: dict[tuple[tuple[str, ...] | None, int, int], list[tuple[bytes, ...]]] = {}


@contextmanager
def attribute_order(order: Sequence[str] | None) -> Iterator[None]:
    """Within the block the in-process generator sends its requests in ``order`` (None: as is),
    each message list built once per process and order."""
    worker = sys.modules[bench.run_worker.__module__]
    original: Callable[..., Any] = worker.build_messages
    key_order = None if order is None else tuple(order)

    def build_messages(count: int, seed: int) -> list[tuple[bytes, ...]]:
        key = (key_order, count, seed)
        messages = _traffic.get(key)
        if messages is None:
            messages = original(count, seed)
            if key_order is not None:
                messages = [
                    tuple(reorder(request, key_order) for request in message)
                    for message in messages
                ]
            _traffic[key] = messages
        return messages

    worker.build_messages = build_messages
    try:
        yield
    finally:
        worker.build_messages = original
