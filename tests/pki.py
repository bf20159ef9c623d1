"""A throw-away certificate authority for tests: root, intermediate and leaves, all in memory.

Keys are EC P-256 (generated in well under a millisecond), so every test can build its own PKI.
Nothing touches the disk unless ``write``/``write_ca_bundle`` is called, and no private key ever
lives in the repository.

Typical use::

    pki = TestPKI(now=NOW)
    leaf = pki.leaf("mail.contoso.com", ["mail.contoso.com", "*.contoso.com"])
    cert_path, key_path = pki.write(tmp_path, leaf)        # leaf + intermediate, key 0600
    bundle = pki.write_ca_bundle(tmp_path)                 # the root, for ca_bundle= / TLS

The certificates carry the extensions a real CA puts in (BasicConstraints, KeyUsage,
ExtendedKeyUsage, SubjectAlternativeName, AuthorityKeyIdentifier, SubjectKeyIdentifier), so
OpenSSL-based peers (Postfix, Twisted TLS, swaks) accept them as they would a public one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT_NAME = "m365-policyd Test Root"
INTERMEDIATE_NAME = "m365-policyd Test Intermediate"
ORGANIZATION = "m365-policyd tests"

#: Default validity of issued certificates, relative to the PKI's ``now``.
DEFAULT_BEFORE = timedelta(days=1)
DEFAULT_AFTER = timedelta(days=90)
CA_LIFETIME = timedelta(days=3650)


@dataclass
class Issued:
    """A certificate together with its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def cert_pem(self) -> bytes:
        """The certificate alone, PEM encoded."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        """The private key, unencrypted PKCS#8 PEM (what Postfix and OpenSSL read)."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def common_name(self) -> str:
        """The subject CN, or "" when the certificate has none."""
        attrs = self.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(attrs[0].value) if attrs else ""


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str | None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION)]
    if common_name is not None:
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def _dns_name(name: str) -> x509.DNSName:
    """A SAN dNSName; U-labels are converted to their xn-- form (case is kept)."""
    if not name.isascii():
        name = ".".join(
            label if label.isascii() else label.encode("idna").decode("ascii")
            for label in name.split(".")
        )
    return x509.DNSName(name)


class TestPKI:
    """A root CA, an intermediate CA signed by it, and a factory for leaf certificates.

    ``now`` anchors every default validity window (now - 1 day .. now + 90 days for leaves),
    so a test with an injected clock gets certificates that are valid at that instant.
    ``label`` is appended to the CA names so two PKIs in one test have distinct roots
    (``TestPKI(label="other")`` -> "m365-policyd Test Root other").
    """

    __test__ = False  # a helper, not a pytest test class

    def __init__(self, now: datetime | None = None, *, label: str = "") -> None:
        self.now = now if now is not None else datetime.now(UTC)
        if self.now.tzinfo is None:
            raise ValueError("TestPKI needs a timezone-aware now")
        suffix = f" {label}" if label else ""
        self.root = self.ca(ROOT_NAME + suffix, issuer=None)
        self.intermediate = self.ca(INTERMEDIATE_NAME + suffix, issuer=self.root, path_length=0)

    # -- building blocks -------------------------------------------------------------------

    def ca(
        self,
        common_name: str,
        *,
        issuer: Issued | None,
        path_length: int | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> Issued:
        """A CA certificate: self-signed when ``issuer`` is None, else signed by ``issuer``."""
        key = _new_key()
        subject = _name(common_name)
        builder = self._base(
            subject=subject,
            issuer_name=issuer.cert.subject if issuer else subject,
            public_key=key.public_key(),
            not_before=not_before or self.now - CA_LIFETIME / 10,
            not_after=not_after or self.now + CA_LIFETIME,
            authority_key=(issuer.key if issuer else key).public_key(),
        )
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=path_length), critical=True
        ).add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        return Issued(builder.sign((issuer.key if issuer else key), hashes.SHA256()), key)

    def leaf(
        self,
        common_name: str | None,
        dns_names: Sequence[str] = (),
        *,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        issuer: Issued | None = None,
        client_auth: bool = True,
        server_auth: bool = True,
    ) -> Issued:
        """An end-entity certificate signed by ``issuer`` (default: the intermediate).

        ``common_name=None`` leaves the CN out of the subject (SAN-only certificate). With both
        ``client_auth`` and ``server_auth`` False the ExtendedKeyUsage extension is omitted
        entirely (a certificate usable for any purpose).
        """
        return self._end_entity(
            common_name,
            dns_names,
            issuer=issuer or self.intermediate,
            not_before=not_before,
            not_after=not_after,
            client_auth=client_auth,
            server_auth=server_auth,
        )

    def self_signed(
        self,
        common_name: str | None,
        dns_names: Sequence[str] = (),
        *,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        client_auth: bool = True,
        server_auth: bool = True,
    ) -> Issued:
        """A self-signed end-entity certificate (issuer == subject, signed with its own key)."""
        return self._end_entity(
            common_name,
            dns_names,
            issuer=None,
            not_before=not_before,
            not_after=not_after,
            client_auth=client_auth,
            server_auth=server_auth,
        )

    def _end_entity(
        self,
        common_name: str | None,
        dns_names: Sequence[str],
        *,
        issuer: Issued | None,
        not_before: datetime | None,
        not_after: datetime | None,
        client_auth: bool,
        server_auth: bool,
    ) -> Issued:
        key = _new_key()
        subject = _name(common_name)
        signing_key = issuer.key if issuer else key
        builder = self._base(
            subject=subject,
            issuer_name=issuer.cert.subject if issuer else subject,
            public_key=key.public_key(),
            not_before=not_before or self.now - DEFAULT_BEFORE,
            not_after=not_after or self.now + DEFAULT_AFTER,
            authority_key=signing_key.public_key(),
        )
        builder = builder.add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True
        ).add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        usages = []
        if server_auth:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if client_auth:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        if dns_names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_dns_name(n) for n in dns_names]),
                # RFC 5280 4.2.1.6: critical when the subject has no CN to identify it
                critical=common_name is None,
            )
        return Issued(builder.sign(signing_key, hashes.SHA256()), key)

    def _base(
        self,
        *,
        subject: x509.Name,
        issuer_name: x509.Name,
        public_key: ec.EllipticCurvePublicKey,
        not_before: datetime,
        not_after: datetime,
        authority_key: ec.EllipticCurvePublicKey,
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer_name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(authority_key),
                critical=False,
            )
        )

    # -- output ----------------------------------------------------------------------------

    def chain_pem(
        self, leaf: Issued, *, include_intermediate: bool = True, include_root: bool = False
    ) -> bytes:
        """The leaf PEM followed by its chain, as a server or Postfix would present it.

        The intermediate is added only when it actually issued the leaf (a leaf signed directly
        by the root or self-signed has none); the root only when asked.
        """
        parts = [leaf.cert_pem()]
        issued_by_intermediate = leaf.cert.issuer == self.intermediate.cert.subject
        if include_intermediate and issued_by_intermediate:
            parts.append(self.intermediate.cert_pem())
        if include_root and leaf.cert.issuer != leaf.cert.subject:
            parts.append(self.root.cert_pem())
        return b"".join(parts)

    def write(
        self,
        directory: Path,
        leaf: Issued,
        name: str = "client",
        *,
        include_intermediate: bool = True,
        include_root: bool = False,
    ) -> tuple[Path, Path]:
        """Write ``<name>.pem`` (leaf + chain) and ``<name>.key`` (mode 0600).

        Returns ``(cert_path, key_path)``.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cert_path = directory / f"{name}.pem"
        key_path = directory / f"{name}.key"
        cert_path.write_bytes(
            self.chain_pem(
                leaf, include_intermediate=include_intermediate, include_root=include_root
            )
        )
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(leaf.key_pem())
        os.chmod(key_path, 0o600)  # O_CREAT's mode does not apply to an existing file
        return cert_path, key_path

    def write_ca_bundle(self, directory: Path, name: str = "ca.pem") -> Path:
        """Write the root CA certificate (the trust anchor) and return its path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / name
        path.write_bytes(self.root.cert_pem())
        return path


def load_certificates(pem: bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM text, in order (``x509.load_pem_x509_certificates`` of
    cryptography 39 and later, written out for Debian 12's cryptography 38)."""
    end = b"-----END CERTIFICATE-----"
    blocks = [block + end for block in pem.split(end) if b"-----BEGIN CERTIFICATE-----" in block]
    return [x509.load_pem_x509_certificate(block) for block in blocks]
