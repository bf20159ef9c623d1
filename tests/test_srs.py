"""The SRS domain read from postsrsd's own configuration (policyd.sources.srs), and what the
prediction and doctor make of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from policyd.sources.srs import postsrsd_table, read_srs_domain

TCP = {"sender_canonical_maps": "tcp:127.0.0.1:10001", "mydomain": "contoso.com"}


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ({"sender_canonical_maps": "tcp:127.0.0.1:10001"}, "tcp:127.0.0.1:10001"),
        ({"sender_canonical_maps": "tcp:localhost:10001"}, "tcp:localhost:10001"),
        (
            {"sender_canonical_maps": "socketmap:unix:/run/postsrsd/postsrsd.sock:forward"},
            "socketmap:unix:/run/postsrsd/postsrsd.sock:forward",
        ),
        ({"recipient_canonical_maps": "tcp:127.0.0.1:10001"}, "tcp:127.0.0.1:10001"),
        ({"sender_canonical_maps": "hash:/etc/postfix/canonical"}, ""),
        ({"sender_canonical_maps": "tcp:127.0.0.1:2525"}, ""),
        ({}, ""),
    ],
)
def test_postsrsd_is_recognised_in_canonical_maps(
    parameters: dict[str, str], expected: str
) -> None:
    """A tcp: map on postsrsd's forward port or a socketmap ...:forward map is postsrsd."""
    assert postsrsd_table(parameters)[1] == expected


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("text", "domain", "problem"),
    [
        ("SRS_DOMAIN=relay.contoso.com\n", "relay.contoso.com", ""),
        ('SRS_DOMAIN="Relay.Contoso.COM"  # ours\n', "relay.contoso.com", ""),
        ("# SRS_DOMAIN=old.example\nSRS_DOMAIN=new.contoso.com\n", "new.contoso.com", ""),
        ("SRS_DOMAIN=`postconf -h mydomain`\n", "contoso.com", ""),
        ("SRS_DOMAIN='$myhostname'\n", "$myhostname", "501 5.1.7 Invalid address"),
        ("SRS_DOMAIN=$myhostname\n", "", "is empty"),
        ("SRS_SECRET=/etc/postsrsd.secret\n", "contoso.com", ""),
    ],
)
def test_postsrsd_1_defaults_file(tmp_path: Path, text: str, domain: str, problem: str) -> None:
    """/etc/default/postsrsd as Debian's launcher sources it: quotes, comments, postconf,
    unexpanded literals, and mydomain when SRS_DOMAIN is unset."""
    path = write(tmp_path, "postsrsd", text)
    srs = read_srs_domain(TCP, path)
    assert srs is not None
    assert srs.domain == domain
    assert (problem in srs.problem) if problem else srs.problem == ""
    assert srs.file == path


@pytest.mark.parametrize(
    ("text", "domain"),
    [
        (
            'domains = {"contoso.com", "fabrikam.example"}\nsrs-domain = "srs.contoso.com"\n',
            "srs.contoso.com",
        ),
        ('domains = {"contoso.com", "fabrikam.example"}\n', "contoso.com"),
    ],
)
def test_postsrsd_2_configuration(tmp_path: Path, text: str, domain: str) -> None:
    """postsrsd.conf: srs-domain, else the first of domains."""
    path = write(tmp_path, "postsrsd.conf", text)
    srs = read_srs_domain(
        {"sender_canonical_maps": "socketmap:unix:/run/postsrsd/postsrsd.sock:forward"}, path
    )
    assert srs is not None and (srs.domain, srs.problem) == (domain, "")


def test_no_configuration_means_postsrsd_default(tmp_path: Path) -> None:
    """Without a configuration file postsrsd writes $mydomain (Debian's launcher)."""
    srs = read_srs_domain(TCP, candidates=[str(tmp_path / "missing")])
    assert srs is not None
    assert (srs.domain, srs.file) == ("contoso.com", "")
    assert "mydomain" in srs.source


def test_without_postsrsd_nothing_is_read(tmp_path: Path) -> None:
    """No canonical map asks postsrsd: no SRS domain is derived."""
    path = write(tmp_path, "postsrsd", "SRS_DOMAIN=relay.contoso.com\n")
    assert read_srs_domain({"mydomain": "contoso.com"}, path) is None
