"""Hard facts and fixed vocabulary shared by every layer; user-settable defaults are elsewhere.

Nothing here is configurable: these are Postfix's and the product's fixed words and limits.
"""

from __future__ import annotations

#: The attributes Postfix 3.7 sends in a policy request, in its order (smtpd_check.c,
#: SMTPD_POLICY_README); 29 in all. The protocol's positional fast path, ``bench`` and the
#: tests all read this one tuple.
POSTFIX_ATTRIBUTE_ORDER: tuple[str, ...] = (
    "request",
    "protocol_state",
    "protocol_name",
    "helo_name",
    "queue_id",
    "sender",
    "recipient",
    "recipient_count",
    "client_address",
    "client_name",
    "reverse_client_name",
    "instance",
    "sasl_method",
    "sasl_username",
    "sasl_sender",
    "size",
    "ccert_subject",
    "ccert_issuer",
    "ccert_fingerprint",
    "ccert_pubkey_fingerprint",
    "encryption_protocol",
    "encryption_cipher",
    "encryption_keysize",
    "etrn_domain",
    "stress",
    "client_port",
    "policy_context",
    "server_address",
    "server_port",
)
