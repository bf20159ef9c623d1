"""Fixtures for the end-to-end suite: the session's ``World`` (``tests/e2e/world.py``).

When Postfix cannot run here (not root, package missing) every test marked ``postfix`` is
skipped with the reason, except under ``CI``, where that is a failure (``tests/needs.py``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import needs
from tests.e2e.postfix import PostfixInstance, postfix_unavailable
from tests.e2e.standin import StandIn
from tests.e2e.world import (
    ALIASES,
    SNIPPET,
    Daemon,
    World,
    daemon_unavailable,
    one_session_per_smtpd,
    start_postsrsd,
    write_certs,
)
from tests.pki import TestPKI


@pytest.fixture(scope="session")
def world() -> Iterator[World]:
    """The session's Postfix + stand-in + daemon (skipped without Postfix unless CI is set)."""
    needs.require(postfix_unavailable())
    needs.require(daemon_unavailable())
    root = Path(tempfile.mkdtemp(prefix="m365-e2e-"))
    os.chmod(root, 0o755)
    pki = TestPKI()
    ca_file = pki.write_ca_bundle(root)
    server_cert, server_key = pki.write(
        root, pki.leaf("standin.mail.protection.outlook.example", ["localhost"]), "standin"
    )
    certs = write_certs(pki, root / "client")
    (root / "virtual").write_text("".join(f"{k} {v}\n" for k, v in ALIASES.items()))
    srsd, srs_port = start_postsrsd(root)
    standin = StandIn(cert_file=server_cert, key_file=server_key, ca_file=ca_file).start()
    # the sink listens on its own loopback address, so a next hop tells it from the stand-in
    sink = StandIn(
        cert_file=server_cert, key_file=server_key, ca_file=ca_file, host="127.0.0.2"
    ).start()
    postfix: PostfixInstance | None = None
    daemon: Daemon | None = None
    try:
        postfix = PostfixInstance.create(
            relayhost=standin.relayhost,
            settings={
                "smtp_tls_security_level": "encrypt",
                "smtp_tls_CAfile": str(ca_file),
                "smtp_tls_loglevel": "1",
                "virtual_alias_maps": f"texthash:{root / 'virtual'}",
                "sender_canonical_classes": "envelope_sender",
            },
            # each SMTP session gets a fresh smtpd: no policy connection survives a daemon restart
            master_extra=[],
            start=False,
        )
        one_session_per_smtpd(postfix)
        postfix.apply_snippet(SNIPPET.read_text())
        postfix.start()
        daemon = Daemon(root, postfix.queue_dir / "private" / "m365-policyd")
        w = World(root, pki, ca_file, certs, standin, sink, postfix, daemon, srs_port)
        yield w
    finally:
        if daemon is not None:
            daemon.stop()
        if postfix is not None:
            postfix.close()
        standin.stop()
        sink.stop()
        srsd.terminate()
        srsd.wait(5)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def fresh(world: World) -> Iterator[World]:
    """The world with an empty Postfix queue before and after the test."""
    world.postfix.clear_queue()
    yield world
    world.postfix.clear_queue()
