"""Hard facts and fixed vocabulary shared by every layer; user-settable defaults are elsewhere.

Nothing here is configurable: these are Postfix's and the product's fixed words and limits.
Each word is defined here once and imported wherever it is used: in code, metrics labels, log
lines, ``check --json`` and the README. The reason ids and what Microsoft 365 answers for each
live in ``policyd.rules.reasons``; configuration keys and their defaults in
``policyd.sources.schema``.
"""

from __future__ import annotations

#: The attributes Postfix 3.7 sends in a policy request, in the order it writes them on the wire
#: (smtpd_check.c; SMTPD_POLICY_README lists them in another order); 29 in all. Recorded from
#: the real Postfix by ``tests/e2e/test_wire_order.py``. Postfix 3.8 adds compatibility_level
#: and mail_version, 3.12 tls_sni. The codec's first layout, ``bench`` and the tests read it.
POSTFIX_ATTRIBUTE_ORDER: tuple[str, ...] = (
    "request",
    "protocol_state",
    "protocol_name",
    "client_address",
    "client_name",
    "client_port",
    "reverse_client_name",
    "server_address",
    "server_port",
    "helo_name",
    "sender",
    "recipient",
    "recipient_count",
    "queue_id",
    "instance",
    "size",
    "etrn_domain",
    "stress",
    "sasl_method",
    "sasl_username",
    "sasl_sender",
    "ccert_subject",
    "ccert_issuer",
    "ccert_fingerprint",
    "ccert_pubkey_fingerprint",
    "encryption_protocol",
    "encryption_cipher",
    "encryption_keysize",
    "policy_context",
)

# --- verdicts (docs/relay-rules.md): what Microsoft 365 does with one recipient ----------------

ACCEPT = "accept"
REJECT = "reject"
VERDICTS: tuple[str, ...] = (ACCEPT, REJECT)

# --- actions (``[policy]``, docs/postfix.md): the answer for a recipient predicted refused ------

ACTION_DUNNO = "dunno"  # DUNNO: let Postfix decide (the default)
ACTION_DEFER = "defer"  # 450 4.7.NN <reason>
ACTION_REJECT = "reject"  # 550 5.7.NN <reason>
ACTION_HOLD = "hold"  # HOLD <reason>
ACTION_REROUTE = "reroute"  # FILTER <policy.reroute>
#: ``policy.action`` and ``policy.by_reason`` values.
ACTIONS: tuple[str, ...] = (
    ACTION_DUNNO,
    ACTION_DEFER,
    ACTION_REJECT,
    ACTION_HOLD,
    ACTION_REROUTE,
)
#: ``policy.on_error`` values: the daemon fails open, so its own bug never refuses mail.
ON_ERROR_WARN = "warn"
ON_ERROR_ACTIONS: tuple[str, ...] = (ACTION_DUNNO, ON_ERROR_WARN)
#: ``m365_policyd_actions_total{action}`` also counts the DATA header and our own failures.
ACTION_PREPEND = "prepend"
ACTION_ON_ERROR = "on_error"
ACTION_LABELS: tuple[str, ...] = (*ACTIONS, ACTION_PREPEND, ACTION_ON_ERROR)

# --- stages: ``m365_policyd_requests_total{stage}`` ---------------------------------------------

STAGE_RCPT = "rcpt"
STAGE_DATA = "data"
STAGE_OTHER = "other"
STAGES: tuple[str, ...] = (STAGE_RCPT, STAGE_DATA, STAGE_OTHER)

# --- log levels and formats (``[log]``) ----------------------------------------------------------

LOG_DEBUG = "debug"
LOG_INFO = "info"  # predictions are logged at info
LOG_WARN = "warn"  # as Postfix and syslog spell it
LOG_ERROR = "error"
#: ``log.level`` values, lowest first.
LOG_LEVELS: tuple[str, ...] = (LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR)
LOG_TEXT = "text"  # key=value
LOG_JSON = "json"  # one JSON object per line
LOG_FORMATS: tuple[str, ...] = (LOG_TEXT, LOG_JSON)

# --- exit statuses of the command line (the README) ----------------------------------------------

EXIT_OK = 0
EXIT_REFUSED = 1  # check: a refusal is predicted
EXIT_ERRORS = 1  # doctor: the audit found errors
EXIT_LISTEN = 1  # serve: an endpoint could not listen, or start-up failed
EXIT_USAGE = 2  # argparse's status for a usage error
EXIT_CONFIG = 78  # EX_CONFIG from sysexits.h: one line naming the file, the key and the fix

# -- probe (README: "Ask Microsoft 365 itself") --
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE from sysexits.h: the endpoint cannot be reached, TLS failed
PROBE_MAX_RECIPIENTS = 20  # RCPT TO commands per probe run: a probe asks, it never sweeps
PROBE_TIMEOUT = 30.0  # seconds for each step of a probe session (connect, every reply, TLS)
