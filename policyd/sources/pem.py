"""Reading the client certificate Postfix presents into plain ``CertificateFacts``.

relay-rules.md step 3 attributes a connection to an OnPremises connector by certificate when the
certificate is readable, currently valid, not self-signed, presented with its chain up to a
trusted root, and one of its names (CN or SAN DNS name) matches the connector's
``TlsSenderCertificateName``. This module turns the PEM file into plain ``CertificateFacts``
once per configuration generation; the pure comparisons the predictor and ``doctor`` make on
those facts are in ``policyd.rules.certnames``.

Reading never raises for a bad file: the problem becomes ``CertificateFacts.error``
("unreadable: ..."), because a broken certificate must show up in predictions and in
``doctor``, not stop the daemon.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, SignatureAlgorithmOID

from policyd.rules.model import CertificateFacts, normalize_domain
from policyd.sources.files import MAX_PEM_BYTES, open_regular

#: Where Debian (and derivatives) keep the trust roots OpenSSL uses; the public CAs Microsoft
#: 365 trusts are the same public CAs, so this is the best local stand-in for its trust store.
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

#: Longest chain walked before giving up (protects against loops and absurd files).
MAX_CHAIN_DEPTH = 10

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(?:.*?)-----END \1-----", re.DOTALL)
_PEM_BEGIN = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")
_PRIVATE_KEY_LABELS = (b"PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY", b"DSA PRIVATE KEY")
_ENCRYPTED_KEY_LABEL = b"ENCRYPTED PRIVATE KEY"
#: What cryptography raises for a certificate whose DER does not decode (cryptography 38, in
#: Debian 12, raises KeyError for a name attribute with an unknown string tag).
_CORRUPT = (
    ValueError,
    KeyError,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)


# -- cryptography 38 (Debian 12) to today -----------------------------------------------------


def not_valid_before(cert: x509.Certificate) -> datetime:
    """The start of the validity period as an aware UTC datetime.

    cryptography 42 added ``not_valid_before_utc`` and deprecated the naive ``not_valid_before``
    (a UTC time without tzinfo), which is all that cryptography 38 (Debian 12) has.
    """
    aware: datetime | None = getattr(cert, "not_valid_before_utc", None)
    if aware is not None:
        return aware
    return cert.not_valid_before.replace(tzinfo=UTC)


def not_valid_after(cert: x509.Certificate) -> datetime:
    """The end of the validity period as an aware UTC datetime (see ``not_valid_before``)."""
    aware: datetime | None = getattr(cert, "not_valid_after_utc", None)
    if aware is not None:
        return aware
    return cert.not_valid_after.replace(tzinfo=UTC)


def verify_issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    """Raise unless ``issuer``'s subject is ``cert``'s issuer and its key verifies the signature.

    cryptography 40 added ``Certificate.verify_directly_issued_by``; on older versions (Debian
    12 ships 38) ``_verify_signature`` does the same check. Raises ValueError (names differ),
    TypeError (a key type that cannot sign certificates), ``InvalidSignature`` or
    ``UnsupportedAlgorithm``.
    """
    native = getattr(cert, "verify_directly_issued_by", None)
    if native is not None:
        native(issuer)
        return
    _verify_signature(cert, issuer)


def _verify_signature(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    """``verify_directly_issued_by`` for cryptography < 40, with the same errors.

    RFC 5280 4.1.1.3: the issuer's public key verifies the signature over the DER
    TBSCertificate with the algorithm the certificate names (RSA PKCS#1 v1.5 or PSS, ECDSA,
    DSA, Ed25519, Ed448).
    """
    if cert.issuer != issuer.subject:
        raise ValueError("Issuer certificate subject does not match certificate issuer.")
    key = issuer.public_key()
    signature, data = cert.signature, cert.tbs_certificate_bytes
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        key.verify(signature, data)
        return
    algorithm = cert.signature_hash_algorithm
    if algorithm is None:
        raise UnsupportedAlgorithm("signature algorithm without a hash for this key type")
    if isinstance(key, rsa.RSAPublicKey):
        if cert.signature_algorithm_oid == SignatureAlgorithmOID.RSASSA_PSS:
            pss = padding.PSS(mgf=padding.MGF1(algorithm), salt_length=padding.PSS.AUTO)
            key.verify(signature, data, pss, algorithm)
        else:
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, data, ec.ECDSA(algorithm))
    elif isinstance(key, dsa.DSAPublicKey):
        key.verify(signature, data, algorithm)
    else:
        raise TypeError(f"{type(key).__name__} cannot verify a certificate signature")


# -- reading ---------------------------------------------------------------------------------


class _UnreadableError(Exception):
    """Internal: the file cannot be used; ``str()`` is the phrase after "unreadable: "."""


def _read_bytes(path: str, what: str = "file") -> bytes:
    if not path:
        raise _UnreadableError(f"no {what} path given")
    try:
        with os.fdopen(open_regular(path), "rb") as f:
            data = f.read(MAX_PEM_BYTES + 1)
    except OSError as e:
        raise _UnreadableError((e.strerror or str(e)).lower()) from e
    if len(data) > MAX_PEM_BYTES:
        raise _UnreadableError(f"larger than {MAX_PEM_BYTES // 1024} KiB, not a PEM {what}")
    if not data.strip():
        raise _UnreadableError(f"empty {what}")
    return data


def _pem_blocks(data: bytes) -> list[tuple[bytes, bytes]]:
    """Every complete PEM block as (label, whole block text)."""
    return [(m.group(1), m.group(0)) for m in _PEM_BLOCK.finditer(data)]


def _parse_certificates(data: bytes) -> list[x509.Certificate]:
    """All CERTIFICATE blocks of a PEM file, in file order; other blocks (keys) are ignored."""
    blocks = _pem_blocks(data)
    begun = _PEM_BEGIN.findall(data)
    if not begun:
        if _looks_like_der_certificate(data):
            raise _UnreadableError(
                "DER-encoded, Postfix needs PEM "
                "(convert with: openssl x509 -inform der -in FILE -out FILE.pem)"
            )
        raise _UnreadableError("not PEM (no -----BEGIN line)")
    if begun.count(b"CERTIFICATE") != sum(1 for label, _ in blocks if label == b"CERTIFICATE"):
        raise _UnreadableError("truncated CERTIFICATE block (no matching -----END line)")
    cert_blocks = [block for label, block in blocks if label == b"CERTIFICATE"]
    if not cert_blocks:
        found = ", ".join(sorted({label.decode("ascii") for label in begun}))
        raise _UnreadableError(f"no CERTIFICATE block in the PEM (found {found})")
    certs = []
    for index, block in enumerate(cert_blocks, start=1):
        try:
            certs.append(_load_fully(block))
        except UnsupportedAlgorithm as e:
            raise _UnreadableError(
                f"certificate {index} in the file uses an unsupported algorithm ({e})"
            ) from e
        except _CORRUPT as e:
            detail = f"unknown ASN.1 tag {e}" if isinstance(e, KeyError) else str(e)
            raise _UnreadableError(f"certificate {index} in the file is corrupt ({detail})") from e
    return certs


def _load_fully(block: bytes) -> x509.Certificate:
    """Load one PEM certificate and parse every lazily decoded field now.

    cryptography decodes names, dates and extensions on first access; touching them here means
    a corrupt field is reported as an unreadable file instead of raising later.
    """
    with warnings.catch_warnings():
        # e.g. a non-positive serial number in an old root: tolerated, not ours to report
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        cert = x509.load_pem_x509_certificate(block)
        _ = (cert.subject, cert.issuer, cert.extensions, not_valid_before(cert))
        _ = (not_valid_after(cert), cert.public_key())
    return cert


def _looks_like_der_certificate(data: bytes) -> bool:
    try:
        x509.load_der_x509_certificate(data)
    except ValueError:
        return False
    return True


# -- trust roots -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _TrustStore:
    path: str
    problem: str  # "" when the bundle was read; else why it could not be
    by_subject: dict[x509.Name, tuple[x509.Certificate, ...]]


_trust_cache: dict[str, tuple[tuple[int, int, int], _TrustStore]] = {}


def _trust_store(path: str) -> _TrustStore:
    """The certificates of a CA bundle, parsed once per (path, mtime, size, inode).

    A missing or unreadable bundle is tolerated: the store is empty and ``problem`` says why,
    so chain checks fail with a phrase that names the bundle instead of raising.
    """
    try:
        st = os.stat(path)
    except OSError as e:
        return _TrustStore(path, (e.strerror or str(e)).lower(), {})
    key = (st.st_mtime_ns, st.st_size, st.st_ino)
    cached = _trust_cache.get(path)
    if cached is not None and cached[0] == key:
        return cached[1]
    problem = ""
    certs: list[x509.Certificate] = []
    try:
        data = _read_bytes(path, "CA bundle")
        for label, block in _pem_blocks(data):
            if label != b"CERTIFICATE":
                continue
            try:
                certs.append(_load_fully(block))
            except (*_CORRUPT, UnsupportedAlgorithm):
                continue  # one bad entry must not distrust the whole bundle
        if not certs:
            problem = "no certificates in the CA bundle"
    except _UnreadableError as e:
        problem = str(e)
    by_subject: dict[x509.Name, list[x509.Certificate]] = {}
    for cert in certs:
        by_subject.setdefault(cert.subject, []).append(cert)
    store = _TrustStore(
        path,
        problem,
        {name: tuple(found) for name, found in by_subject.items()},
    )
    _trust_cache[path] = (key, store)
    return store


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True when ``issuer``'s name and key verify ``cert``'s signature."""
    try:
        verify_issued_by(cert, issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _is_self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject and _issued_by(cert, cert)


def _name_text(name: x509.Name) -> str:
    return name.rfc4514_string()


def _chain_problem(certs: list[x509.Certificate], trust: _TrustStore) -> str:
    """Walk from the leaf to a trust anchor; "" when the chain is complete, else one phrase.

    Each step looks for the issuer first among the trust anchors (as OpenSSL does, so a
    cross-signed root in the PEM does not hide the anchor), then among the other certificates
    of the file. The walk succeeds when an issuer is found among the trust anchors (a root, or
    any certificate the bundle holds), so presenting the root as well does no harm.
    """
    leaf = certs[0]
    if _is_self_signed(leaf):
        return "self-signed"
    presented = certs[1:]
    current = leaf
    seen = {leaf.fingerprint(hashes.SHA256())}
    for _ in range(MAX_CHAIN_DEPTH):
        issuer_name = current.issuer
        anchors = trust.by_subject.get(issuer_name, ())
        if any(_issued_by(current, anchor) for anchor in anchors):
            return ""
        if current is not leaf and _is_self_signed(current):
            return f"root {_name_text(current.subject)} is not trusted"
        candidates = [c for c in presented if c.subject == issuer_name]
        issuer = next((c for c in candidates if _issued_by(current, c)), None)
        if issuer is None:
            if candidates or anchors:
                return f"signature by {_name_text(issuer_name)} does not verify"
            return f"intermediate certificate for {_name_text(issuer_name)} missing"
        fingerprint = issuer.fingerprint(hashes.SHA256())
        if fingerprint in seen:
            return f"chain loops back to {_name_text(issuer.subject)}"
        seen.add(fingerprint)
        current = issuer
    return f"chain longer than {MAX_CHAIN_DEPTH} certificates"


# -- facts -----------------------------------------------------------------------------------


def _common_name(cert: x509.Certificate) -> str:
    # RFC 6125 6.4.4: when a subject has several CNs the most specific (last) one counts.
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        return ""
    value = attrs[-1].value
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return normalize_domain(text)


def _dns_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    # A dict keeps the first-seen order and de-duplicates in linear time (issue 16: a
    # 40,000-name SAN was quadratic with a list).
    names: dict[str, None] = {}
    for raw in san.value.get_values_for_type(x509.DNSName):
        name = normalize_domain(raw)
        if name:
            names[name] = None
    return tuple(names)


def _client_auth_eku(cert: x509.Certificate) -> bool | None:
    """None without an EKU extension (any use allowed); else whether clientAuth is allowed.

    ``anyExtendedKeyUsage`` counts as allowing clientAuth (RFC 5280 4.2.1.12).
    """
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except x509.ExtensionNotFound:
        return None
    usages = set(eku.value)
    return (
        ExtendedKeyUsageOID.CLIENT_AUTH in usages
        or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in usages
    )


def read_certificate(path: str, *, ca_bundle: str = "") -> CertificateFacts:
    """Read the PEM Postfix presents (``smtp_tls_cert_file``) and describe its first certificate.

    The first CERTIFICATE block is the leaf (what Postfix sends); the following ones are its
    chain. Private key blocks in the same file are ignored (Postfix allows cert and key in one
    file). ``ca_bundle`` is a PEM file of trust roots; "" means the system bundle
    (``/etc/ssl/certs/ca-certificates.crt``). Never raises for a bad file: the facts then carry
    ``error = "unreadable: <why>"`` and nothing else. The bundle is parsed once per change of
    the file (cached by path, mtime, size and inode), so reloads are cheap; a directory of
    hashed certificates (OpenSSL's CApath) is not supported, give a bundle file.
    """
    try:
        certs = _parse_certificates(_read_bytes(path))
        leaf = certs[0]
        common_name = _common_name(leaf)
        dns_names = _dns_names(leaf)
        client_auth = _client_auth_eku(leaf)
    except _UnreadableError as e:
        return CertificateFacts(path=path, error=f"unreadable: {e}")
    except _CORRUPT as e:
        # Defensive: _load_fully has decoded every field already, so this is not expected.
        return CertificateFacts(path=path, error=f"unreadable: corrupt certificate ({e})")

    trust = _trust_store(ca_bundle or SYSTEM_CA_BUNDLE)
    problem = _chain_problem(certs, trust)
    if problem and problem != "self-signed" and trust.problem:
        problem += f" (trust bundle {trust.path}: {trust.problem})"
    return CertificateFacts(
        path=path,
        common_name=common_name,
        dns_names=dns_names,
        not_before=not_valid_before(leaf),
        not_after=not_valid_after(leaf),
        self_signed=_is_self_signed(leaf),
        chain_complete=not problem,
        chain_problem=problem,
        client_auth_eku=client_auth,
        issuer=_name_text(leaf.issuer),
        subject=_name_text(leaf.subject),
        fingerprint_sha256=leaf.fingerprint(hashes.SHA256()).hex(),
    )


# -- private key (doctor --key) --------------------------------------------------------------


def key_matches_certificate(cert_path: str, key_path: str = "") -> bool | str:
    """Does the private key belong to the certificate's leaf? For ``doctor --key``.

    ``key_path`` "" means the key is in the certificate file itself (Postfix's
    ``smtp_tls_key_file`` defaults to ``smtp_tls_cert_file``). Returns True or False when both
    files could be read, else an "unreadable: ..." phrase naming which file failed; Postfix
    cannot use a passphrase-protected key, so an encrypted key is reported as such.
    """
    try:
        certs = _parse_certificates(_read_bytes(cert_path))
    except _UnreadableError as e:
        return f"unreadable: certificate {cert_path}: {e}"
    key_file = key_path or cert_path
    try:
        data = _read_bytes(key_file, "key file")
    except _UnreadableError as e:
        return f"unreadable: key {key_file}: {e}"
    blocks = _pem_blocks(data)
    if (
        any(label == _ENCRYPTED_KEY_LABEL for label, _ in blocks)
        or b"Proc-Type: 4,ENCRYPTED" in data
    ):
        return f"unreadable: key {key_file}: encrypted with a passphrase, which Postfix cannot use"
    key_blocks = [block for label, block in blocks if label in _PRIVATE_KEY_LABELS]
    if not key_blocks:
        return f"unreadable: key {key_file}: no PRIVATE KEY block in the PEM"
    try:
        key = serialization.load_pem_private_key(key_blocks[0], password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        return f"unreadable: key {key_file}: corrupt private key ({e})"
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    try:
        return key.public_key().public_bytes(*spki) == certs[0].public_key().public_bytes(*spki)
    except (ValueError, UnsupportedAlgorithm) as e:
        return f"unreadable: certificate {cert_path}: unsupported public key ({e})"
