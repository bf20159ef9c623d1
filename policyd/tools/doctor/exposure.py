"""doctor's checks of what the daemon exposes: endpoints beyond loopback, a key beside the
certificate (issue 16, SPEC §6).

``exposure_checks`` is pure: the configuration, and the certificate files found to hold a
private key (``files_with_keys`` reads them: the wiring's part).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from policyd.daemon.endpoints import exposed
from policyd.sources.config import Config
from policyd.sources.files import MAX_PEM_BYTES, read_capped
from policyd.sources.state import State
from policyd.tools.doctor.report import CERTIFICATE, OK, POSTFIX, WARNING, Check

#: A PEM private key of any kind: PKCS#8 (plain or encrypted), PKCS#1 RSA, SEC 1 EC, DSA.
_PRIVATE_KEY = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")


def exposure_checks(config: Config, keyed: Sequence[str]) -> list[Check]:
    """``listen-exposed`` for the daemon's endpoints, and ``certificate-holds-key`` for the
    certificate files in ``keyed`` (those that hold a private key)."""
    return [_listen_check(config), _key_beside_check(keyed)]


def _listen_check(config: Config) -> Check:
    server = config.server
    endpoints = [("server.listen", item) for item in server.listen]
    if server.metrics:
        endpoints.append(("server.metrics", server.metrics))
    found = [(key, item, where) for key, item in endpoints if (where := exposed(item))]
    if not found:
        return Check(
            "listen-exposed",
            POSTFIX,
            OK,
            "The policy and metrics endpoints listen on loopback or unix sockets only.",
        )
    named = "; ".join(f"{key} {item} listens on {where}" for key, item, where in found)
    return Check(
        "listen-exposed",
        POSTFIX,
        WARNING,
        f"{named}: anyone who can reach it can ask the daemon (and load it), not only Postfix "
        "and Prometheus.",
        "Bind interface=127.0.0.1 (or the one address Postfix or Prometheus connects from), use "
        "a unix: endpoint, or firewall the port.",
    )


def _key_beside_check(keyed: Sequence[str]) -> Check:
    if not keyed:
        return Check(
            "certificate-holds-key",
            CERTIFICATE,
            OK,
            "No certificate file the daemon reads holds a private key.",
        )
    return Check(
        "certificate-holds-key",
        CERTIFICATE,
        WARNING,
        f"{', '.join(keyed)} holds a private key besides the certificate, and m365-policyd "
        "reads that file: the daemon needs only the certificate, so a flaw in it could "
        "disclose the key Postfix signs with.",
        "Give m365-policyd a copy without the key (openssl x509 -in FILE -out cert-only.pem; "
        "append the intermediates) and point onprem.certificate at it; Postfix keeps its own.",
    )


def certificate_paths(state: State) -> list[str]:
    """Every certificate file the daemon reads: each tenant's (or onprem's), and with
    ``[postfix]`` each smtp(8) service's."""
    predictor = state.predictor
    pictures = [predictor.onprem_for(tenant) for tenant in predictor.tenants]
    if state.router is not None:
        pictures.extend(service.onprem for service in state.router.services.values())
    paths = (p.certificate.path for p in pictures if p.certificate is not None)
    return list(dict.fromkeys(paths))


def files_with_keys(paths: Iterable[str]) -> list[str]:
    """The files among ``paths`` that hold a PEM private key (unreadable ones are left to the
    certificate checks)."""
    found = []
    for path in paths:
        try:
            content = read_capped(path, MAX_PEM_BYTES)
        except OSError:
            continue
        if _PRIVATE_KEY.search(content):
            found.append(path)
    return found
