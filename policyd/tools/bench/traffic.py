"""The traffic ``m365-policyd bench`` sends: Postfix 3.7 requests, and what a valid reply is.

All requests are encoded before the clock starts, so generating them costs nothing while
measuring.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from policyd.constants import POSTFIX_ATTRIBUTE_ORDER

#: Domains of the generated traffic; ``benchmarks/run.py`` builds matching configs and maps.
OWN_DOMAIN = "contoso.com"
OWN_SUBDOMAIN = "mail.contoso.com"
FOREIGN_SENDER_DOMAINS = ("fabrikam.com", "tailspintoys.com", "adatum.com", "northwind.example")
RECIPIENT_DOMAINS = (
    "fabrikam.com",
    "gmail.example",
    "outlook.example",
    "woodgrovebank.com",
    "litware.example",
)
#: Own-domain recipients are ``user<N>@contoso.com`` with N below this (alias map keys match).
LOCAL_PART_RANGE = 200_000

#: Messages encoded per worker; connections start at different offsets in the pool.
MESSAGE_POOL = 2048

END = b"\n\n"
MAX_REPLY = 8192


#: The attributes Postfix sends, in its order (``policyd.constants``).
ATTRIBUTE_ORDER = POSTFIX_ATTRIBUTE_ORDER


def _request(attributes: Sequence[tuple[str, str]]) -> bytes:
    return "".join(f"{name}={value}\n" for name, value in attributes).encode() + b"\n"


def build_messages(count: int, seed: int) -> list[tuple[bytes, bytes, bytes]]:
    """``count`` messages as encoded (RCPT, RCPT, DATA) requests, as Postfix 3.7 sends them.

    Senders: 55 % own domain (some from a subdomain), 30 % foreign, 15 % null (bounces).
    Recipients: mostly outside domains, one in four in the own domain (``user<N>@contoso.com``,
    which the benchmark alias map forwards). Deterministic for a given ``seed``.
    """
    rng = random.Random(seed)
    pid = rng.randrange(1000, 60000)
    base_time = 1_760_000_000 + rng.randrange(10**6)
    messages = []
    for number in range(count):
        roll = rng.random()
        if roll < 0.45:
            sender = f"app{rng.randrange(40)}@{OWN_DOMAIN}"
        elif roll < 0.55:
            sender = f"scanner{rng.randrange(8)}@{OWN_SUBDOMAIN}"
        elif roll < 0.85:
            domain = rng.choice(FOREIGN_SENDER_DOMAINS)
            sender = f"{rng.choice(('john', 'mary', 'noreply', 'billing'))}@{domain}"
        else:
            sender = ""
        recipients = []
        for _ in range(2):
            if rng.random() < 0.25:
                recipients.append(f"user{rng.randrange(LOCAL_PART_RANGE)}@{OWN_DOMAIN}")
            else:
                recipients.append(f"r{rng.randrange(5000)}@{rng.choice(RECIPIENT_DOMAINS)}")
        client_octet = rng.randrange(2, 250)
        seconds = base_time + number
        instance = f"{pid:x}.{seconds:x}.{rng.randrange(10**6):x}.{number:x}"
        queue_id = f"{rng.getrandbits(40):010X}"
        common = {
            "request": "smtpd_access_policy",
            "protocol_name": "ESMTP",
            "helo_name": f"app{client_octet}.corp.{OWN_DOMAIN}",
            "sender": sender,
            "client_address": f"10.20.{client_octet // 16}.{client_octet}",
            "client_name": f"app{client_octet}.corp.{OWN_DOMAIN}",
            "reverse_client_name": f"app{client_octet}.corp.{OWN_DOMAIN}",
            "instance": instance,
            "sasl_method": "",
            "sasl_username": "",
            "sasl_sender": "",
            "size": str(rng.randrange(2_000, 2_000_000)),
            "ccert_subject": "",
            "ccert_issuer": "",
            "ccert_fingerprint": "",
            "ccert_pubkey_fingerprint": "",
            "encryption_protocol": "TLSv1.3",
            "encryption_cipher": "TLS_AES_256_GCM_SHA384",
            "encryption_keysize": "256",
            "etrn_domain": "",
            "stress": "",
            "client_port": str(rng.randrange(32768, 61000)),
            "policy_context": "",
            "server_address": "10.20.0.1",
            "server_port": "25",
        }

        def request(
            state: str, queue: str, recipient: str, recipient_count: int, fields: dict[str, str]
        ) -> bytes:
            attributes = {
                **fields,
                "protocol_state": state,
                "queue_id": queue,
                "recipient": recipient,
                "recipient_count": str(recipient_count),
            }
            return _request([(name, attributes[name]) for name in ATTRIBUTE_ORDER])

        messages.append(
            (
                request("RCPT", "", recipients[0], 0, common),
                request("RCPT", queue_id, recipients[1], 0, common),
                # DATA names no recipient when more than one was accepted
                request("DATA", queue_id, "", 2, common),
            )
        )
    return messages


def request_stream(messages: Sequence[tuple[bytes, bytes, bytes]]) -> list[bytes]:
    """The requests of ``messages`` in sending order (RCPT, RCPT, DATA, RCPT, ...)."""
    return [request for message in messages for request in message]


def reply_is_valid(reply: bytes) -> bool:
    """True for exactly one policy reply: ``name=value`` lines including ``action=``, blank line."""
    if reply.startswith(b"action=") and reply.find(END) == len(reply) - 2:
        return len(reply) > len(b"action=\n\n")
    if not reply.endswith(END) or reply.find(END) != len(reply) - 2:
        return False
    lines = reply[:-2].split(b"\n")
    if not all(b"=" in line for line in lines):
        return False
    return any(line.startswith(b"action=") and len(line) > len(b"action=") for line in lines)
