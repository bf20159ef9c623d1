"""Certificate facts (``policyd.sources.pem``): names, validity, chain, EKU, key, connectors."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyd.rules.certnames import connector_name_matches, validity_problem
from policyd.rules.model import CertificateFacts
from policyd.sources.pem import key_matches_certificate, read_certificate
from tests.pki import Issued, TestPKI

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
ROOT = "CN=m365-policyd Test Root,O=m365-policyd tests"
INTERMEDIATE = "CN=m365-policyd Test Intermediate,O=m365-policyd tests"


@pytest.fixture
def pki() -> TestPKI:
    return TestPKI(now=NOW)


def facts_for(
    tmp_path: Path,
    pki: TestPKI,
    leaf: Issued,
    *,
    bundle: TestPKI | None = None,
    include_intermediate: bool = True,
    include_root: bool = False,
) -> CertificateFacts:
    """Write ``leaf`` with its chain and read it back, trusting ``bundle``'s root (default pki)."""
    cert_path, _ = pki.write(
        tmp_path, leaf, include_intermediate=include_intermediate, include_root=include_root
    )
    ca = (bundle or pki).write_ca_bundle(tmp_path / "trust")
    return read_certificate(str(cert_path), ca_bundle=str(ca))


# -- names -----------------------------------------------------------------------------------


def test_cn_only(tmp_path: Path, pki: TestPKI) -> None:
    """A certificate with only a CN has that CN as its single name."""
    facts = facts_for(tmp_path, pki, pki.leaf("mail.contoso.com"))
    assert facts.common_name == "mail.contoso.com"
    assert facts.dns_names == ()
    assert facts.names == ("mail.contoso.com",)


def test_san_only(tmp_path: Path, pki: TestPKI) -> None:
    """A certificate without CN is known by its SAN DNS names, in order."""
    facts = facts_for(tmp_path, pki, pki.leaf(None, ["a.contoso.com", "b.contoso.com"]))
    assert facts.common_name == ""
    assert facts.dns_names == ("a.contoso.com", "b.contoso.com")
    assert facts.names == ("a.contoso.com", "b.contoso.com")


def test_cn_and_san(tmp_path: Path, pki: TestPKI) -> None:
    """With CN and SAN both, names lists the CN first and does not repeat it."""
    leaf = pki.leaf("mail.contoso.com", ["mail.contoso.com", "relay.fabrikam.com"])
    facts = facts_for(tmp_path, pki, leaf)
    assert facts.common_name == "mail.contoso.com"
    assert facts.dns_names == ("mail.contoso.com", "relay.fabrikam.com")
    assert facts.names == ("mail.contoso.com", "relay.fabrikam.com")


def test_wildcard_names_are_kept(tmp_path: Path, pki: TestPKI) -> None:
    """Wildcard certificate names keep their leading ``*.`` label."""
    leaf = pki.leaf("*.contoso.com", ["*.contoso.com", "*.eu.contoso.com"])
    facts = facts_for(tmp_path, pki, leaf)
    assert facts.common_name == "*.contoso.com"
    assert facts.dns_names == ("*.contoso.com", "*.eu.contoso.com")


def test_idn_names_in_ascii_form(tmp_path: Path, pki: TestPKI) -> None:
    """An IDN SAN stays in xn-- form and a Unicode CN is converted to it."""
    leaf = pki.leaf("bücher.example", ["mail.bücher.example"])
    facts = facts_for(tmp_path, pki, leaf)
    assert facts.dns_names == ("mail.xn--bcher-kva.example",)
    assert facts.common_name == "xn--bcher-kva.example"


def test_upper_case_and_trailing_dot_normalised(tmp_path: Path, pki: TestPKI) -> None:
    """Names are lower-cased and lose a trailing dot, as Microsoft 365 compares them."""
    leaf = pki.leaf("MAIL.Contoso.COM.", ["Relay.CONTOSO.com", "*.EU.Contoso.Com."])
    facts = facts_for(tmp_path, pki, leaf)
    assert facts.common_name == "mail.contoso.com"
    assert facts.dns_names == ("relay.contoso.com", "*.eu.contoso.com")


def test_subject_issuer_fingerprint(tmp_path: Path, pki: TestPKI) -> None:
    """Subject and issuer are RFC 4514 strings and the fingerprint is the leaf's SHA-256."""
    leaf = pki.leaf("mail.contoso.com")
    facts = facts_for(tmp_path, pki, leaf)
    assert facts.subject == "CN=mail.contoso.com,O=m365-policyd tests"
    assert facts.issuer == INTERMEDIATE
    assert facts.fingerprint_sha256 == leaf.cert.fingerprint(hashes.SHA256()).hex()
    assert facts.readable and facts.error == ""


# -- validity --------------------------------------------------------------------------------

NOT_BEFORE = datetime(2025, 3, 1, 8, 0, 0, tzinfo=UTC)
NOT_AFTER = datetime(2025, 9, 30, 23, 59, 59, tzinfo=UTC)
SECOND = timedelta(seconds=1)


def test_validity_dates_are_aware_utc(tmp_path: Path, pki: TestPKI) -> None:
    """not_before and not_after are the leaf's dates as timezone-aware UTC datetimes."""
    leaf = pki.leaf("a.contoso.com", not_before=NOT_BEFORE, not_after=NOT_AFTER)
    facts = facts_for(tmp_path, pki, leaf)
    assert facts.not_before == NOT_BEFORE and facts.not_after == NOT_AFTER
    assert facts.not_before is not None and facts.not_before.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (NOT_BEFORE - SECOND, "not yet valid until 2025-03-01"),
        (NOT_BEFORE, ""),
        (NOT_BEFORE + SECOND, ""),
        (NOT_AFTER - SECOND, ""),
        (NOT_AFTER, ""),
        (NOT_AFTER + SECOND, "expired on 2025-09-30"),
        (NOT_AFTER + timedelta(days=400), "expired on 2025-09-30"),
    ],
)
def test_validity_problem_boundaries(
    tmp_path: Path, pki: TestPKI, now: datetime, expected: str
) -> None:
    """Validity is judged at the injected now, both bounds inclusive, dates shown in UTC."""
    leaf = pki.leaf("a.contoso.com", not_before=NOT_BEFORE, not_after=NOT_AFTER)
    assert validity_problem(facts_for(tmp_path, pki, leaf), now) == expected


def test_validity_problem_uses_utc_date() -> None:
    """The date in the phrase is the UTC date, even when now is given in another zone."""
    late = datetime(2025, 9, 30, 23, 0, 0, tzinfo=UTC)  # 2025-10-01 04:00 at +05:00
    facts = CertificateFacts(path="x", not_before=NOT_BEFORE, not_after=late)
    plus_five = timezone(timedelta(hours=5))
    assert validity_problem(facts, datetime(2025, 10, 1, 8, 0, tzinfo=plus_five)) == (
        "expired on 2025-09-30"
    )
    assert validity_problem(facts, datetime(2025, 10, 1, 3, 59, tzinfo=plus_five)) == ""


def test_validity_problem_of_unreadable_certificate() -> None:
    """An unreadable certificate is never valid: the phrase is its error."""
    facts = CertificateFacts(path="x", error="unreadable: empty file")
    assert validity_problem(facts, NOW) == "unreadable: empty file"


# -- self-signed and chain -------------------------------------------------------------------


def test_self_signed(tmp_path: Path, pki: TestPKI) -> None:
    """A self-signed leaf is flagged and its chain is incomplete with the phrase "self-signed"."""
    facts = facts_for(tmp_path, pki, pki.self_signed("mail.contoso.com"))
    assert facts.self_signed
    assert not facts.chain_complete
    assert facts.chain_problem == "self-signed"
    assert facts.issuer == facts.subject


def test_issuer_equal_to_subject_but_foreign_signature_is_not_self_signed(
    tmp_path: Path,
) -> None:
    """Issuer == subject alone is not self-signed: the signature must verify with its own key."""
    key = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mail.contoso.com")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
        .sign(other, hashes.SHA256())
    )
    path = tmp_path / "c.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    facts = read_certificate(str(path), ca_bundle=str(TestPKI(NOW).write_ca_bundle(tmp_path)))
    assert not facts.self_signed
    assert not facts.chain_complete


def test_chain_with_intermediate_is_complete(tmp_path: Path, pki: TestPKI) -> None:
    """Leaf plus intermediate in the PEM, root in the bundle: the chain is complete."""
    facts = facts_for(tmp_path, pki, pki.leaf("mail.contoso.com"))
    assert facts.chain_complete
    assert facts.chain_problem == ""
    assert not facts.self_signed


def test_chain_with_root_included_is_complete(tmp_path: Path, pki: TestPKI) -> None:
    """Presenting the trusted root as well does not hurt."""
    facts = facts_for(tmp_path, pki, pki.leaf("mail.contoso.com"), include_root=True)
    assert facts.chain_complete


def test_leaf_issued_by_root_is_complete(tmp_path: Path, pki: TestPKI) -> None:
    """A leaf signed directly by a trusted root needs no intermediate."""
    facts = facts_for(tmp_path, pki, pki.leaf("mail.contoso.com", issuer=pki.root))
    assert facts.chain_complete


def test_chain_order_after_leaf_does_not_matter(tmp_path: Path, pki: TestPKI) -> None:
    """Certificates after the leaf are found by name, whatever their order."""
    leaf = pki.leaf("mail.contoso.com")
    path = tmp_path / "c.pem"
    path.write_bytes(leaf.cert_pem() + pki.root.cert_pem() + pki.intermediate.cert_pem())
    facts = read_certificate(str(path), ca_bundle=str(pki.write_ca_bundle(tmp_path)))
    assert facts.chain_complete
    assert facts.common_name == "mail.contoso.com"


def test_intermediate_missing(tmp_path: Path, pki: TestPKI) -> None:
    """Leaf alone, root trusted: the missing intermediate is named."""
    facts = facts_for(tmp_path, pki, pki.leaf("mail.contoso.com"), include_intermediate=False)
    assert not facts.chain_complete
    assert facts.chain_problem == f"intermediate certificate for {INTERMEDIATE} missing"


def test_intermediate_as_trust_anchor(tmp_path: Path, pki: TestPKI) -> None:
    """A bundle holding the intermediate itself is a trust anchor for the leaf."""
    leaf = pki.leaf("mail.contoso.com")
    cert_path, _ = pki.write(tmp_path, leaf, include_intermediate=False)
    bundle = tmp_path / "anchor.pem"
    bundle.write_bytes(pki.intermediate.cert_pem())
    assert read_certificate(str(cert_path), ca_bundle=str(bundle)).chain_complete


def test_root_not_in_bundle(tmp_path: Path, pki: TestPKI) -> None:
    """A chain ending at a presented root the bundle does not hold names that root."""
    other = TestPKI(now=NOW, label="other")
    facts = facts_for(tmp_path, pki, pki.leaf("a.contoso.com"), bundle=other, include_root=True)
    assert not facts.chain_complete
    assert facts.chain_problem == f"root {ROOT} is not trusted"


def test_root_not_in_bundle_and_not_presented(tmp_path: Path, pki: TestPKI) -> None:
    """When the intermediate's issuer is nowhere to be found, that issuer is named as missing."""
    other = TestPKI(now=NOW, label="other")
    facts = facts_for(tmp_path, pki, pki.leaf("a.contoso.com"), bundle=other)
    assert not facts.chain_complete
    assert facts.chain_problem == f"intermediate certificate for {ROOT} missing"


def test_same_named_root_with_other_key(tmp_path: Path, pki: TestPKI) -> None:
    """A trusted root with the right name but another key: the signature does not verify."""
    impostor = TestPKI(now=NOW)  # same root name, different key
    facts = facts_for(tmp_path, pki, pki.leaf("a.contoso.com"), bundle=impostor)
    assert not facts.chain_complete
    assert facts.chain_problem == f"signature by {ROOT} does not verify"


def test_presented_intermediate_with_wrong_key(tmp_path: Path, pki: TestPKI) -> None:
    """An intermediate of the right name but another key in the PEM does not verify the leaf."""
    stranger = TestPKI(now=NOW)
    leaf = pki.leaf("a.contoso.com")
    path = tmp_path / "c.pem"
    path.write_bytes(leaf.cert_pem() + stranger.intermediate.cert_pem())
    facts = read_certificate(str(path), ca_bundle=str(pki.write_ca_bundle(tmp_path)))
    assert facts.chain_problem == f"signature by {INTERMEDIATE} does not verify"


def _ca(
    name: str, issuer: str, key: ec.EllipticCurvePrivateKey, signer: ec.EllipticCurvePrivateKey
) -> x509.Certificate:
    """A bare CA certificate ``name`` issued by ``issuer`` and signed with ``signer``."""
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(signer, hashes.SHA256())
    )


def test_chain_loop_is_detected(tmp_path: Path, pki: TestPKI) -> None:
    """Two CAs that sign each other end the walk with a loop phrase instead of spinning."""
    ka, kb = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    a, b = _ca("A", "B", ka, kb), _ca("B", "A", kb, ka)
    leaf = _ca("mail.contoso.com", "A", ec.generate_private_key(ec.SECP256R1()), ka)
    path = tmp_path / "c.pem"
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, a, b)))
    facts = read_certificate(str(path), ca_bundle=str(pki.write_ca_bundle(tmp_path)))
    assert not facts.chain_complete
    assert facts.chain_problem == "chain loops back to CN=A"


def test_missing_bundle_is_tolerated_and_named(tmp_path: Path, pki: TestPKI) -> None:
    """A missing trust bundle makes the chain untrusted and the phrase names the bundle."""
    cert_path, _ = pki.write(tmp_path, pki.leaf("a.contoso.com"), include_root=True)
    bundle = tmp_path / "nope.pem"
    facts = read_certificate(str(cert_path), ca_bundle=str(bundle))
    assert facts.readable
    assert not facts.chain_complete
    assert facts.chain_problem == (
        f"root {ROOT} is not trusted (trust bundle {bundle}: no such file or directory)"
    )


def test_system_bundle_does_not_trust_the_test_root(tmp_path: Path, pki: TestPKI) -> None:
    """Without ca_bundle the system bundle is used, and it does not hold our test root."""
    cert_path, _ = pki.write(tmp_path, pki.leaf("a.contoso.com"), include_root=True)
    facts = read_certificate(str(cert_path))
    assert not facts.chain_complete
    assert facts.chain_problem.startswith(f"root {ROOT} is not trusted")


def test_changed_bundle_is_reread(tmp_path: Path, pki: TestPKI) -> None:
    """The parsed bundle is cached, but replacing the file is noticed on the next read."""
    cert_path, _ = pki.write(tmp_path, pki.leaf("a.contoso.com"))
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(TestPKI(now=NOW, label="other").root.cert_pem())
    assert not read_certificate(str(cert_path), ca_bundle=str(bundle)).chain_complete
    assert not read_certificate(str(cert_path), ca_bundle=str(bundle)).chain_complete
    replacement = tmp_path / "bundle.new"
    replacement.write_bytes(pki.root.cert_pem())
    os.replace(replacement, bundle)
    assert read_certificate(str(cert_path), ca_bundle=str(bundle)).chain_complete


# -- files that are not a certificate --------------------------------------------------------


def test_pem_with_key_included(tmp_path: Path, pki: TestPKI) -> None:
    """A PEM holding the key (before or after the certificates) is read; the key is ignored."""
    leaf = pki.leaf("mail.contoso.com")
    ca = str(pki.write_ca_bundle(tmp_path))
    for order, content in {
        "key-last": pki.chain_pem(leaf) + leaf.key_pem(),
        "key-first": leaf.key_pem() + pki.chain_pem(leaf),
    }.items():
        path = tmp_path / f"{order}.pem"
        path.write_bytes(content)
        facts = read_certificate(str(path), ca_bundle=ca)
        assert facts.common_name == "mail.contoso.com", order
        assert facts.chain_complete, order


def test_crlf_pem_is_read(tmp_path: Path, pki: TestPKI) -> None:
    """A PEM saved with Windows line endings is read like any other."""
    leaf = pki.leaf("mail.contoso.com")
    path = tmp_path / "crlf.pem"
    path.write_bytes(pki.chain_pem(leaf).replace(b"\n", b"\r\n"))
    facts = read_certificate(str(path), ca_bundle=str(pki.write_ca_bundle(tmp_path)))
    assert facts.common_name == "mail.contoso.com"
    assert facts.chain_complete


def _corrupt_body(pem: bytes) -> bytes:
    lines = pem.splitlines(keepends=True)
    lines[3] = b"!!!!" + lines[3][4:]
    return b"".join(lines)


UNREADABLE: list[tuple[str, Callable[[Path, TestPKI], bytes | None], str]] = [
    ("missing", lambda d, p: None, "unreadable: no such file or directory"),
    ("empty", lambda d, p: b"", "unreadable: empty file"),
    ("blank", lambda d, p: b"\n  \n", "unreadable: empty file"),
    ("text", lambda d, p: b"hello world\n", "unreadable: not PEM (no -----BEGIN line)"),
    ("binary", lambda d, p: bytes(range(256)) * 4, "unreadable: not PEM (no -----BEGIN line)"),
    (
        "der",
        lambda d, p: p.leaf("a.contoso.com").cert.public_bytes(serialization.Encoding.DER),
        "unreadable: DER-encoded, Postfix needs PEM",
    ),
    (
        "key-only",
        lambda d, p: p.leaf("a.contoso.com").key_pem(),
        "unreadable: no CERTIFICATE block in the PEM (found PRIVATE KEY)",
    ),
    (
        "truncated",
        lambda d, p: p.leaf("a.contoso.com").cert_pem()[:-30],
        "unreadable: truncated CERTIFICATE block (no matching -----END line)",
    ),
    (
        "corrupt",
        lambda d, p: _corrupt_body(p.leaf("a.contoso.com").cert_pem()),
        "unreadable: certificate 1 in the file is corrupt",
    ),
    (
        "corrupt-intermediate",
        lambda d, p: p.leaf("a.contoso.com").cert_pem() + _corrupt_body(p.intermediate.cert_pem()),
        "unreadable: certificate 2 in the file is corrupt",
    ),
    ("too-big", lambda d, p: b"A" * (2 << 20), "unreadable: larger than 1024 KiB"),
]


@pytest.mark.parametrize(
    ("content", "expected"),
    [(c, e) for _, c, e in UNREADABLE],
    ids=[name for name, _, _ in UNREADABLE],
)
def test_unreadable_files(
    tmp_path: Path,
    pki: TestPKI,
    content: Callable[[Path, TestPKI], bytes | None],
    expected: str,
) -> None:
    """A file that is not a usable certificate gives an "unreadable: ..." phrase, no exception."""
    path = tmp_path / "cert.pem"
    data = content(tmp_path, pki)
    if data is not None:
        path.write_bytes(data)
    facts = read_certificate(str(path), ca_bundle=str(pki.write_ca_bundle(tmp_path)))
    assert facts.error.startswith(expected), facts.error
    assert facts == CertificateFacts(path=str(path), error=facts.error)
    assert not facts.readable and facts.names == ()


def test_directory_and_empty_path_are_unreadable(tmp_path: Path) -> None:
    """A directory or an empty path is reported, not raised."""
    assert read_certificate(str(tmp_path)).error == "unreadable: is a directory"
    assert read_certificate("").error == "unreadable: no file path given"


def test_devzero_does_not_hang() -> None:
    """An endless device such as /dev/zero is refused as not a regular file, unread."""
    assert read_certificate("/dev/zero").error == (
        "unreadable: not a regular file (a character device)"
    )


# tmp_path is shared by the examples of one test; every example overwrites the same file.
FIXTURE_OK = [HealthCheck.function_scoped_fixture]
_PKI_FOR_FUZZ = TestPKI(now=NOW)
_FUZZ_LEAF = _PKI_FOR_FUZZ.leaf("mail.contoso.com", ["a.contoso.com"])
_FUZZ_PEM = _PKI_FOR_FUZZ.chain_pem(_FUZZ_LEAF)
_FUZZ_DER = _FUZZ_LEAF.cert.public_bytes(serialization.Encoding.DER)


@settings(max_examples=150, deadline=None, suppress_health_check=FIXTURE_OK)
@given(position=st.integers(0, len(_FUZZ_PEM) - 1), byte=st.integers(0, 255))
def test_mutated_pem_never_raises(tmp_path: Path, position: int, byte: int) -> None:
    """Any single-byte change to a valid PEM yields facts or an error phrase, never an exception."""
    path = tmp_path / "fuzz.pem"
    path.write_bytes(_FUZZ_PEM[:position] + bytes([byte]) + _FUZZ_PEM[position + 1 :])
    facts = read_certificate(str(path), ca_bundle=str(path))
    assert facts.error.startswith("unreadable: ") or facts.fingerprint_sha256


@settings(max_examples=200, deadline=None, suppress_health_check=FIXTURE_OK)
@given(
    changes=st.lists(
        st.tuples(st.integers(0, len(_FUZZ_DER) - 1), st.integers(0, 255)),
        min_size=1,
        max_size=3,
    )
)
def test_mutated_der_never_raises(tmp_path: Path, changes: list[tuple[int, int]]) -> None:
    """Corrupt DER inside a well-formed PEM (bad version, names, keys) never raises."""
    der = bytearray(_FUZZ_DER)
    for position, byte in changes:
        der[position] = byte
    body = base64.encodebytes(bytes(der))
    path = tmp_path / "fuzz.pem"
    path.write_bytes(b"-----BEGIN CERTIFICATE-----\n" + body + b"-----END CERTIFICATE-----\n")
    facts = read_certificate(str(path), ca_bundle=str(path))
    assert facts.error.startswith("unreadable: ") or facts.fingerprint_sha256
    result = key_matches_certificate(str(path), str(path))
    assert isinstance(result, str) and result.startswith("unreadable: ")


@settings(max_examples=100, deadline=None, suppress_health_check=FIXTURE_OK)
@given(data=st.binary(max_size=400))
def test_arbitrary_bytes_never_raise(tmp_path: Path, data: bytes) -> None:
    """Arbitrary bytes, even around a PEM header, give an error phrase, never an exception."""
    path = tmp_path / "fuzz.pem"
    path.write_bytes(b"-----BEGIN CERTIFICATE-----\n" + data + b"\n-----END CERTIFICATE-----\n")
    assert read_certificate(str(path)).error.startswith("unreadable: ")


# -- EKU -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client_auth", "server_auth", "expected"),
    [(True, True, True), (True, False, True), (False, True, False), (False, False, None)],
    ids=["both", "client-only", "server-only", "no-eku"],
)
def test_client_auth_eku(
    tmp_path: Path,
    pki: TestPKI,
    client_auth: bool,
    server_auth: bool,
    expected: bool | None,
) -> None:
    """client_auth_eku is True with clientAuth, False for serverAuth-only, None without EKU."""
    leaf = pki.leaf("a.contoso.com", client_auth=client_auth, server_auth=server_auth)
    assert facts_for(tmp_path, pki, leaf).client_auth_eku is expected


# -- private key -----------------------------------------------------------------------------


def test_key_matches(tmp_path: Path, pki: TestPKI) -> None:
    """The leaf's own key matches; another leaf's key does not."""
    leaf = pki.leaf("a.contoso.com")
    cert_path, key_path = pki.write(tmp_path, leaf)
    _, other_key = pki.write(tmp_path, pki.leaf("a.contoso.com"), name="other")
    assert key_matches_certificate(str(cert_path), str(key_path)) is True
    assert key_matches_certificate(str(cert_path), str(other_key)) is False


def test_key_in_certificate_file(tmp_path: Path, pki: TestPKI) -> None:
    """With no key path the key is looked for in the certificate file, as Postfix does."""
    leaf = pki.leaf("a.contoso.com")
    path = tmp_path / "combined.pem"
    path.write_bytes(pki.chain_pem(leaf) + leaf.key_pem())
    assert key_matches_certificate(str(path)) is True


def test_key_problems_are_phrases(tmp_path: Path, pki: TestPKI) -> None:
    """Unreadable, keyless, encrypted or corrupt key files and bad certificates give phrases."""
    leaf = pki.leaf("a.contoso.com")
    cert_path, key_path = pki.write(tmp_path, leaf)
    missing = tmp_path / "missing.key"
    assert key_matches_certificate(str(cert_path), str(missing)) == (
        f"unreadable: key {missing}: no such file or directory"
    )
    assert key_matches_certificate(str(cert_path), str(cert_path)) == (
        f"unreadable: key {cert_path}: no PRIVATE KEY block in the PEM"
    )
    encrypted = tmp_path / "enc.key"
    encrypted.write_bytes(
        leaf.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    assert key_matches_certificate(str(cert_path), str(encrypted)) == (
        f"unreadable: key {encrypted}: encrypted with a passphrase, which Postfix cannot use"
    )
    corrupt = tmp_path / "corrupt.key"
    corrupt.write_bytes(_corrupt_body(key_path.read_bytes()))
    result = key_matches_certificate(str(cert_path), str(corrupt))
    assert isinstance(result, str) and result.startswith(f"unreadable: key {corrupt}: corrupt")
    empty = tmp_path / "empty.pem"
    empty.write_bytes(b"")
    assert key_matches_certificate(str(empty), str(key_path)) == (
        f"unreadable: certificate {empty}: empty file"
    )


# -- connector names (SPEC §5) ---------------------------------------------------------------

CONNECTOR_CASES = [
    # wildcard connector: the apex and every depth below it
    ("*.contoso.com", "contoso.com", True),
    ("*.contoso.com", "mail.contoso.com", True),
    ("*.contoso.com", "a.b.contoso.com", True),
    ("*.contoso.com", "*.contoso.com", True),
    ("*.contoso.com", "*.eu.contoso.com", True),
    ("*.contoso.com", "notcontoso.com", False),
    ("*.contoso.com", "mail.notcontoso.com", False),
    ("*.contoso.com", "contoso.com.evil.net", False),
    ("*.contoso.com", "com", False),
    ("*.contoso.com", "*.com", False),
    ("*.eu.contoso.com", "contoso.com", False),
    ("*.eu.contoso.com", "mail.contoso.com", False),
    ("*.eu.contoso.com", "eu.contoso.com", True),
    ("*.eu.contoso.com", "*.contoso.com", False),
    # exact connector: that name, or a certificate wildcard covering exactly one label
    ("mail.contoso.com", "mail.contoso.com", True),
    ("mail.contoso.com", "contoso.com", False),
    ("mail.contoso.com", "a.mail.contoso.com", False),
    ("mail.contoso.com", "mail2.contoso.com", False),
    ("mail.contoso.com", "*.contoso.com", True),
    ("contoso.com", "*.contoso.com", False),
    ("a.b.contoso.com", "*.contoso.com", False),
    ("a.b.contoso.com", "*.b.contoso.com", True),
    ("mail.contoso.com", "*.mail.contoso.com", False),
    ("mail.notcontoso.com", "*.contoso.com", False),
    ("contoso.com", "contoso.com", True),
    ("contoso.com", "notcontoso.com", False),
    ("contoso.com", "mail.contoso.com", False),
    # case, trailing dot, IDN
    ("*.Contoso.COM.", "MAIL.contoso.com", True),
    ("Mail.Contoso.com", "mail.contoso.com.", True),
    ("*.bücher.example", "mail.xn--bcher-kva.example", True),
    ("mail.xn--bcher-kva.example", "MAIL.bücher.example", True),
    # nonsense never matches
    ("", "contoso.com", False),
    ("contoso.com", "", False),
    ("*", "contoso.com", False),
    ("*.", "contoso.com", False),
    ("mail*.contoso.com", "mail*.contoso.com", False),
    ("*.*.contoso.com", "a.b.contoso.com", False),
    ("mail.contoso.com", "m*.contoso.com", False),
]


@pytest.mark.parametrize(
    ("connector", "cert_name", "expected"),
    CONNECTOR_CASES,
    ids=[f"{c or '<empty>'}~{n or '<empty>'}" for c, n, _ in CONNECTOR_CASES],
)
def test_connector_name_matches(connector: str, cert_name: str, expected: bool) -> None:
    """TlsSenderCertificateName matching follows SPEC §5 on both sides of every boundary."""
    assert connector_name_matches(connector, cert_name) is expected
