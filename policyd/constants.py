"""Hard facts and fixed vocabulary shared by every layer; user-settable defaults are elsewhere.

Nothing here is configurable: these are Postfix's and the product's fixed words and limits.
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
