"""Sanity checks of the shared test certificate authority in ``tests/pki.py``."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from policyd.sources.pem import not_valid_after, not_valid_before, verify_issued_by
from tests.pki import ROOT_NAME, TestPKI, load_certificates

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


def test_chain_verifies_from_leaf_to_root() -> None:
    """A default leaf is signed by the intermediate, which is signed by the self-signed root."""
    pki = TestPKI(now=NOW)
    leaf = pki.leaf("mail.contoso.com")
    verify_issued_by(leaf.cert, pki.intermediate.cert)
    verify_issued_by(pki.intermediate.cert, pki.root.cert)
    verify_issued_by(pki.root.cert, pki.root.cert)
    assert pki.root.common_name == ROOT_NAME


def test_default_validity_is_anchored_on_now() -> None:
    """Leaves are valid from now - 1 day to now + 90 days of the PKI's injected now."""
    leaf = TestPKI(now=NOW).leaf("a.contoso.com")
    assert not_valid_before(leaf.cert) == NOW - timedelta(days=1)
    assert not_valid_after(leaf.cert) == NOW + timedelta(days=90)


def test_leaf_extensions_look_like_a_real_ca() -> None:
    """A leaf carries BasicConstraints(ca=False), KeyUsage, EKU, SAN, AKI and SKI."""
    pki = TestPKI(now=NOW)
    cert = pki.leaf("mail.contoso.com", ["mail.contoso.com"]).cert
    ext = cert.extensions
    assert ext.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert ext.get_extension_for_class(x509.KeyUsage).value.digital_signature
    eku = ext.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}
    assert ext.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    ) == ["mail.contoso.com"]
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    ski = pki.intermediate.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert aki == ski.value.digest


def test_no_eku_when_both_usages_are_off() -> None:
    """With client_auth and server_auth both False the EKU extension is left out."""
    cert = TestPKI(now=NOW).leaf("a.contoso.com", client_auth=False, server_auth=False).cert
    assert not any(isinstance(e.value, x509.ExtendedKeyUsage) for e in cert.extensions)


def test_san_only_leaf_has_no_cn_and_critical_san() -> None:
    """common_name=None leaves the CN out and marks the SAN critical (RFC 5280)."""
    cert = TestPKI(now=NOW).leaf(None, ["a.contoso.com"]).cert
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME) == []
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical


def test_self_signed_is_its_own_issuer() -> None:
    """self_signed() makes a certificate whose issuer is its subject and whose key signs it."""
    issued = TestPKI(now=NOW).self_signed("host.example")
    assert issued.cert.issuer == issued.cert.subject
    verify_issued_by(issued.cert, issued.cert)


def test_chain_pem_contents() -> None:
    """chain_pem puts the leaf first, then the intermediate, and the root only when asked."""
    pki = TestPKI(now=NOW)
    leaf = pki.leaf("a.contoso.com")
    only = load_certificates(pki.chain_pem(leaf, include_intermediate=False))
    default = load_certificates(pki.chain_pem(leaf))
    full = load_certificates(pki.chain_pem(leaf, include_root=True))
    assert only == [leaf.cert]
    assert default == [leaf.cert, pki.intermediate.cert]
    assert full == [leaf.cert, pki.intermediate.cert, pki.root.cert]
    direct = pki.leaf("b.contoso.com", issuer=pki.root)
    assert load_certificates(pki.chain_pem(direct)) == [direct.cert]


def test_write_files_and_modes(tmp_path: Path) -> None:
    """write() produces <name>.pem with the chain and a 0600 <name>.key holding the leaf's key."""
    pki = TestPKI(now=NOW)
    leaf = pki.leaf("a.contoso.com")
    cert_path, key_path = pki.write(tmp_path / "sub", leaf, name="relay")
    assert cert_path.name == "relay.pem" and key_path.name == "relay.key"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    certs = load_certificates(cert_path.read_bytes())
    assert certs == [leaf.cert, pki.intermediate.cert]
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.public_key().public_bytes(*spki) == leaf.cert.public_key().public_bytes(*spki)
    bundle = pki.write_ca_bundle(tmp_path)
    assert load_certificates(bundle.read_bytes()) == [pki.root.cert]


def test_labels_give_distinct_roots() -> None:
    """Two PKIs with different labels have differently named roots."""
    assert TestPKI(now=NOW).root.cert.subject != TestPKI(now=NOW, label="x").root.cert.subject
