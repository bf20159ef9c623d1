"""What the real Postfix writes on a policy connection: the attribute order the codec expects."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from policyd.constants import POSTFIX_ATTRIBUTE_ORDER
from policyd.wire.codec import POSTFIX_LAYOUT, RequestDecoder
from tests import needs
from tests.e2e.postfix import PostfixInstance, postfix_unavailable

pytestmark = pytest.mark.postfix

#: Attributes that Postfix versions after 3.7 add (SMTPD_POLICY_README).
NEWER = {"compatibility_level", "mail_version", "tls_sni"}


class Recorder:
    """A policy server on loopback that answers DUNNO and keeps every request's bytes."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.requests: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(None)
                buffer = b""
                while chunk := conn.recv(65536):
                    buffer += chunk
                    while b"\n\n" in buffer:
                        request, buffer = buffer.split(b"\n\n", 1)
                        self.requests.append(request + b"\n\n")
                        conn.sendall(b"action=DUNNO\n\n")
                    if self._stop.is_set():
                        break

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.listener.close()


@pytest.fixture(scope="module")
def recorded() -> Iterator[list[bytes]]:
    """The requests a private Postfix sends for one message to two recipients (RCPT, RCPT, DATA)."""
    needs.require(postfix_unavailable())
    recorder = Recorder()
    check = f"check_policy_service inet:127.0.0.1:{recorder.port}"
    try:
        with PostfixInstance.create(
            relayhost="[127.0.0.1]:9",
            settings={"smtpd_recipient_restrictions": check, "smtpd_data_restrictions": check},
        ) as postfix:
            postfix.send("app@contoso.com", ["kate@tailspintoys.com", "john@fabrikam.com"])
        yield list(recorder.requests)
    finally:
        recorder.close()


def names(request: bytes) -> list[str]:
    return [line.split(b"=", 1)[0].decode() for line in request[:-2].split(b"\n")]


def test_postfix_writes_the_attributes_in_the_documented_constant_order(
    recorded: list[bytes],
) -> None:
    """Every request the real Postfix sends lists POSTFIX_ATTRIBUTE_ORDER in that order (plus,
    on versions after 3.7, only the attributes those versions added)."""
    assert [request.split(b"\n", 2)[1] for request in recorded] == [
        b"protocol_state=RCPT",
        b"protocol_state=RCPT",
        b"protocol_state=DATA",
    ]
    for request in recorded:
        assert [name for name in names(request) if name not in NEWER] == list(
            POSTFIX_ATTRIBUTE_ORDER
        )


def test_the_codec_reads_real_postfix_requests_through_its_first_layout(
    recorded: list[bytes],
) -> None:
    """The Postfix layout matches what Postfix 3.7 sends, so its requests take the one-match
    path from the first request of a connection on, and read the same values."""
    decoder = RequestDecoder(65536)
    read = decoder.feed(b"".join(recorded))
    for request, attrs in zip(recorded, read, strict=True):
        text = request.decode()
        if not set(names(request)) & NEWER:
            assert POSTFIX_LAYOUT.pattern.fullmatch(text) is not None
        sent = dict(line.split("=", 1) for line in text[:-2].split("\n"))
        assert attrs == {name: sent[name] for name in attrs}
        assert set(attrs) == {"request", "protocol_state", "sender", "recipient", "instance",
                              "queue_id", "client_address"}  # fmt: skip
