"""The oldest supported libraries (Debian 12): fallbacks for APIs newer than what Debian ships.

Each fallback is tested here under every library version: by calling it directly (so the newest
libraries exercise the code Debian 12 runs), and through the public path that picks it.
"""

from __future__ import annotations

import base64
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import NameOID

from policyd.daemon.endpoints import systemd_by_index
from policyd.sources import pem
from tests.pki import TestPKI
from tests.serverproc import PolicyServer, ServerProcessError, rcpt

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)

Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def certificate(
    subject: str, key: Key, *, issuer: str | None = None, signer: Key | None = None
) -> x509.Certificate:
    """A minimal certificate for ``subject``'s key, signed by ``signer`` (default: itself)."""
    signing_key = signer or key
    algorithm = None if isinstance(signing_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer or subject)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
        .sign(signing_key, algorithm)
    )


KEYS = {
    "rsa": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ec": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ed25519": ed25519.Ed25519PrivateKey.generate,
}


@pytest.mark.parametrize("kind", sorted(KEYS))
def test_signature_fallback_accepts_the_issuer_and_refuses_another_key(kind: str) -> None:
    """The cryptography < 40 verifier accepts the real issuer's key and raises for a same-named
    issuer with another key, for RSA, ECDSA and Ed25519 signatures."""
    issuer_key, other_key, leaf_key = KEYS[kind](), KEYS[kind](), KEYS["ec"]()
    issuer = certificate("Issuing CA", issuer_key)
    impostor = certificate("Issuing CA", other_key)
    leaf = certificate("mail.contoso.com", leaf_key, issuer="Issuing CA", signer=issuer_key)
    pem._verify_signature(leaf, issuer)
    pem._verify_signature(issuer, issuer)
    with pytest.raises(InvalidSignature):
        pem._verify_signature(leaf, impostor)


def test_signature_fallback_checks_the_issuer_name_first() -> None:
    """A certificate whose issuer name differs from the candidate's subject is a ValueError,
    as ``verify_directly_issued_by`` raises, even when the key would verify."""
    key = KEYS["ec"]()
    issuer = certificate("Issuing CA", key)
    leaf = certificate("mail.contoso.com", KEYS["ec"](), issuer="Another CA", signer=key)
    with pytest.raises(ValueError, match="does not match"):
        pem._verify_signature(leaf, issuer)
    with pytest.raises(ValueError):
        pem.verify_issued_by(leaf, issuer)


def test_signature_fallback_verifies_rsa_pss() -> None:
    """An RSASSA-PSS signed certificate verifies with PSS padding (built only where the installed
    cryptography can sign one: 41 and later)."""
    key = KEYS["rsa"]()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "PSS CA")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "PSS CA")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
    )
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
    try:
        cert = builder.sign(key, hashes.SHA256(), rsa_padding=pss)
    except TypeError:
        pytest.skip("this cryptography cannot sign with RSA-PSS (needs 41)")
    pem._verify_signature(cert, cert)
    other = certificate("PSS CA", KEYS["rsa"]())
    with pytest.raises(InvalidSignature):
        pem._verify_signature(cert, other)


def test_fallback_and_native_verifier_agree_on_the_test_pki() -> None:
    """``verify_issued_by`` (native where it exists) and the fallback agree on a real chain."""
    pki = TestPKI(now=NOW)
    leaf = pki.leaf("mail.contoso.com")
    for cert, issuer in (
        (leaf.cert, pki.intermediate.cert),
        (pki.intermediate.cert, pki.root.cert),
    ):
        pem.verify_issued_by(cert, issuer)
        pem._verify_signature(cert, issuer)
    for verify in (pem.verify_issued_by, pem._verify_signature):
        with pytest.raises(InvalidSignature):
            verify(leaf.cert, TestPKI(now=NOW).intermediate.cert)


@pytest.mark.parametrize("tag", [0, 1, 13, 48, 128])
def test_name_with_an_unknown_string_tag_is_unreadable_not_raised(tmp_path: Path, tag: int) -> None:
    """A name attribute whose string tag was damaged is reported as a corrupt certificate, on
    every cryptography (38, in Debian 12, raises KeyError for it; newer ones ValueError)."""
    leaf = TestPKI(now=NOW).leaf("mail.contoso.com")
    der = bytearray(leaf.cert.public_bytes(serialization.Encoding.DER))
    common_name_oid = der.find(bytes.fromhex("0603550403"))  # the issuer's CN comes first
    der[common_name_oid + 5] = tag  # UTF8String (0x0c) becomes something no name holds
    path = tmp_path / "damaged.pem"
    body = base64.encodebytes(bytes(der))
    path.write_bytes(b"-----BEGIN CERTIFICATE-----\n" + body + b"-----END CERTIFICATE-----\n")
    facts = pem.read_certificate(str(path), ca_bundle=str(path))
    assert facts.error.startswith("unreadable: certificate 1 in the file is corrupt ("), facts
    assert pem.key_matches_certificate(str(path), str(path)) == (
        f"unreadable: certificate {path}: {facts.error.removeprefix('unreadable: ')}"
    )


class NaiveOnly:
    """What cryptography < 42 offers: naive UTC validity bounds and no ``*_utc`` accessors."""

    not_valid_before = datetime(2025, 5, 31, 12, 0, 0)  # naive, as cryptography 38 gives
    not_valid_after = datetime(2025, 6, 2, 12, 0, 0)  # naive, as cryptography 38 gives


def test_validity_fallback_makes_naive_utc_aware() -> None:
    """Without ``not_valid_*_utc`` the naive bounds are read as UTC and returned aware."""
    cert = NaiveOnly()
    assert pem.not_valid_before(cert) == NOW - timedelta(days=1)  # type: ignore[arg-type]
    assert pem.not_valid_after(cert) == NOW + timedelta(days=1)  # type: ignore[arg-type]
    assert pem.not_valid_after(cert).tzinfo is UTC  # type: ignore[arg-type]


def test_validity_of_a_real_certificate_is_aware_utc() -> None:
    """Whatever the installed cryptography, the bounds of a real certificate are aware UTC."""
    cert = certificate("mail.contoso.com", KEYS["ec"]())
    assert pem.not_valid_before(cert) == NOW - timedelta(days=1)
    assert pem.not_valid_after(cert) == NOW + timedelta(days=1)


@pytest.mark.parametrize(
    ("description", "names", "expected"),
    [
        ("systemd:domain=INET:name=policy", "policy", "systemd:domain=INET:index=0"),
        ("systemd:domain=INET:name=policy", "metrics:policy", "systemd:domain=INET:index=1"),
        ("systemd:name=b:domain=INET6", "a:b:c", "systemd:index=1:domain=INET6"),
        ("systemd:domain=INET:index=2", "a:b:c", "systemd:domain=INET:index=2"),
        ("tcp:10040:interface=127.0.0.1", "", "tcp:10040:interface=127.0.0.1"),
    ],
)
def test_systemd_name_becomes_the_index_of_listen_fdnames(
    description: str, names: str, expected: str
) -> None:
    """For Twisted < 22.10, ``name=`` becomes the name's position in $LISTEN_FDNAMES; other
    endpoints and ``index=`` pass unchanged."""
    assert systemd_by_index(description, {"LISTEN_FDNAMES": names}) == expected


@pytest.mark.parametrize("environ", [{}, {"LISTEN_FDNAMES": "metrics:other"}])
def test_systemd_name_not_passed_is_a_key_error(environ: dict[str, str]) -> None:
    """A name systemd did not pass raises KeyError, which serve reports as a listen failure."""
    with pytest.raises(KeyError):
        systemd_by_index("systemd:domain=INET:name=policy", environ)


def listening_socket() -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    return listener


def test_serve_adopts_a_socket_by_its_systemd_name(tmp_path: Path) -> None:
    """``systemd:domain=INET:name=policy`` (FileDescriptorName=policy) is served with the
    installed Twisted: natively from 22.10, through $LISTEN_FDNAMES before."""
    with listening_socket() as listener:
        server = PolicyServer(
            tmp_path, listen=["systemd:domain=INET:name=policy"], listen_socket=listener
        )
        with server:
            assert server.port == listener.getsockname()[1]
            assert server.ask(rcpt("app@fabrikam.com", "kate@tailspintoys.com")).startswith("450")


def test_serve_with_an_unknown_systemd_name_exits_1_naming_the_socket(tmp_path: Path) -> None:
    """A ``name=`` systemd did not pass stops serve with exit status 1 and says to start it
    through the socket unit, with old and new Twisted alike."""
    with listening_socket() as listener:
        server = PolicyServer(
            tmp_path, listen=["systemd:domain=INET:name=other"], listen_socket=listener
        )
        with pytest.raises(ServerProcessError) as caught:
            server.start()
        server.kill()
    assert caught.value.status == 1
    assert "systemd passed no such socket" in caught.value.stderr
