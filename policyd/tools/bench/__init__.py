"""``m365-policyd bench``: drive a running policy server the way Postfix's smtpd processes do.

Each of N connections works in lockstep like one smtpd process with one policy client: send a
request, wait for the whole reply, send the next. Every message is three requests (RCPT, RCPT,
DATA) of the ~30 attributes Postfix 3.7 sends, with varied senders (own domain, foreign, null)
and recipients (several domains), a new ``instance`` per message and an empty ``queue_id`` on
the first RCPT. All requests are encoded before the clock starts, so generating them costs
nothing while measuring.

The generator is plain sockets and ``selectors`` (epoll): no Twisted, no per-request
allocation beyond the reply bytes. ``--processes`` splits the connections over forked workers
that start on the same monotonic instant and merge their latency samples.

Two load shapes:

* closed loop (default): every connection sends its next request as soon as the previous reply
  arrived; the result is the server's throughput at that concurrency;
* open loop (``--rate R``): each connection is paced to ``R / N`` requests per second. When the
  server falls behind, latency counts from the moment the request was *due*, not from when a
  busy connection could finally send it (no coordinated omission); when the generator itself
  wakes late, latency counts from the actual send, and the lateness is reported as
  ``send_lag_ms`` so an overloaded generator is visible rather than blamed on the server.

Every reply must be ``action=...`` lines ending in a blank line and nothing more; anything else
(a reply without ``action``, unrequested bytes, a close, a reset, no reply within ``--timeout``)
is counted as an error by kind, and the connection reconnects as Postfix would.

The package, by part: ``traffic`` (the requests and what a valid reply is), ``endpoint`` (where
to connect), ``worker`` (one process's connections), ``runner`` (workers, forking, merging,
percentiles), ``commandline`` (options, report, exit status). This module re-exports the names
callers use (``benchmarks/run.py``, the tests): ``bench.run``, ``bench.build_messages``,
``bench.main`` and the rest below.
"""

from __future__ import annotations

from policyd.tools.bench.commandline import add_arguments, command, main, parser, write_text
from policyd.tools.bench.endpoint import (
    Endpoint,
    UsageError,
    open_socket,
    parse_endpoint,
    raise_file_limit,
)
from policyd.tools.bench.runner import (
    DEFAULT_CONNECTIONS,
    DEFAULT_DURATION,
    DEFAULT_TIMEOUT,
    BenchResult,
    default_processes,
    percentile,
    run,
    summarize,
)
from policyd.tools.bench.traffic import (
    ATTRIBUTE_ORDER,
    END,
    FOREIGN_SENDER_DOMAINS,
    LOCAL_PART_RANGE,
    MAX_REPLY,
    MESSAGE_POOL,
    OWN_DOMAIN,
    OWN_SUBDOMAIN,
    RECIPIENT_DOMAINS,
    build_messages,
    reply_is_valid,
    request_stream,
)
from policyd.tools.bench.worker import (
    BAD_REPLY,
    CLOSED,
    CONNECT_FAILED,
    ERROR_KINDS,
    RESET,
    TIMEOUT,
    WorkerPlan,
    WorkerResult,
    run_worker,
)

__all__ = [
    "ATTRIBUTE_ORDER",
    "BAD_REPLY",
    "CLOSED",
    "CONNECT_FAILED",
    "DEFAULT_CONNECTIONS",
    "DEFAULT_DURATION",
    "DEFAULT_TIMEOUT",
    "END",
    "ERROR_KINDS",
    "FOREIGN_SENDER_DOMAINS",
    "LOCAL_PART_RANGE",
    "MAX_REPLY",
    "MESSAGE_POOL",
    "OWN_DOMAIN",
    "OWN_SUBDOMAIN",
    "RECIPIENT_DOMAINS",
    "RESET",
    "TIMEOUT",
    "BenchResult",
    "Endpoint",
    "UsageError",
    "WorkerPlan",
    "WorkerResult",
    "add_arguments",
    "build_messages",
    "command",
    "default_processes",
    "main",
    "open_socket",
    "parse_endpoint",
    "parser",
    "percentile",
    "raise_file_limit",
    "reply_is_valid",
    "request_stream",
    "run",
    "run_worker",
    "summarize",
    "write_text",
]
