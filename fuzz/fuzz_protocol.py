"""Coverage-guided fuzzing of the policy protocol with atheris (``make fuzz``).

Each input drives one fresh connection: the real ``PolicyProtocol`` and the real engine on the
shipped example configuration (``action = "defer"``), behind an in-memory transport and a fixed
clock. When the first byte has its high bit set, the first four bytes choose
``max_request_bytes`` and how the rest is cut into reads; otherwise the whole input is one read
under the configured limit, so the seed requests in ``tests/data/requests`` work as they are.
After the input, the invariant must hold:

* nothing raised;
* the transport holds whole ``action=...\\n\\n`` replies and nothing else, one per request the
  engine was handed;
* the engine never failed on its own (``internal_errors == 0``);
* the connection was closed exactly when one malformed request was counted.

Run it directly (libFuzzer options pass through)::

    .venv/bin/python fuzz/fuzz_protocol.py -max_total_time=300 CORPUS_DIR tests/data/requests

``check(data)`` is the same check without atheris; the test suite runs it on the seed inputs so
the harness cannot rot between fuzzing sessions.
"""

from __future__ import annotations

import re
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from policyd.engine.policy import PolicyEngine  # noqa: E402 - after the path set-up above
from policyd.engine.stats import Stats  # noqa: E402 - same
from policyd.sources.config import Config, load_config  # noqa: E402 - same
from policyd.sources.state import State, build_state  # noqa: E402 - same
from policyd.wire.protocol import PolicyFactory  # noqa: E402 - same

EXAMPLE = ROOT / "contrib" / "m365-policyd.example.toml"
NOW = 1_795_000_000.0  # late 2026; the engine reads only this injected clock
REPLY = re.compile(rb"action=[^\n\x00]+\n\n")
#: Read sizes the cut bytes choose from: byte-at-a-time up to whole requests.
READ_SIZES = (1, 2, 3, 7, 16, 64, 512, 4096, 65536)
#: max_request_bytes values the first byte chooses from (small ones reach the limit quickly).
LIMITS = (16, 64, 256, 1024, 8192, 65536)


def load_example() -> Config:
    """The example configuration, deferring predicted refusals so they show in the answers."""
    text = EXAMPLE.read_text().replace('action = "dunno"', 'action = "defer"', 1)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "m365-policyd.toml"
        path.write_text(text)
        return load_config(str(path))


_CONFIG: Config | None = None
_STATE: State | None = None


def _state() -> tuple[Config, State]:
    global _CONFIG, _STATE  # noqa: PLW0603 - built once per fuzzing process, not per input
    if _CONFIG is None or _STATE is None:
        _CONFIG = load_example()
        _STATE = build_state(_CONFIG, 1)
    return _CONFIG, _STATE


def check(data: bytes) -> None:
    """Feed one fuzz input to a fresh connection; raise AssertionError if the invariant breaks."""
    config, state = _state()
    if not data:
        return
    if data[0] & 0x80:  # a control header: limit and read sizes, then the stream
        limit = LIMITS[data[0] % len(LIMITS)]
        sizes = [READ_SIZES[byte % len(READ_SIZES)] for byte in data[1:4]] or [1]
        stream = data[4:]
    else:  # plain text (the seed requests): the defaults, in one read
        limit, sizes, stream = config.server.max_request_bytes, [len(data)], data
    clock = Clock()
    clock.advance(NOW)
    stats = Stats()
    engine = PolicyEngine(state, stats, clock.seconds, lambda record: None)
    factory = PolicyFactory(engine, stats, replace(config.server, max_request_bytes=limit), clock)
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    position = 0
    turn = 0
    while position < len(stream):
        size = sizes[turn % len(sizes)]
        protocol.dataReceived(stream[position : position + size])
        position += size
        turn += 1
    output = transport.value()
    replies = REPLY.findall(output)
    if REPLY.sub(b"", output):
        raise AssertionError(f"bytes other than whole replies were written: {output!r}")
    handled = sum(stats.requests.values())
    if len(replies) != handled:
        raise AssertionError(f"{handled} requests handled but {len(replies)} replies written")
    if stats.internal_errors:
        raise AssertionError(f"the engine failed {stats.internal_errors} times on {stream!r}")
    errors = sum(stats.protocol_errors.values())
    if errors != (1 if transport.disconnecting else 0):
        raise AssertionError(
            f"closed={transport.disconnecting} but protocol errors={dict(stats.protocol_errors)}"
        )
    protocol.connectionLost(None)


def main() -> None:
    import atheris  # only `make fuzz` needs it; it installs it on demand

    _state()  # load the configuration before instrumenting: it is not what we fuzz
    atheris.instrument_all()
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
