"""Building the state from one path (policyd.sources.state): every input file read in one place."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from policyd.daemon import serve
from policyd.errors import ConfigError
from policyd.sources import config, state
from policyd.sources.state import load_state
from policyd.tools import cli
from tests.pki import TestPKI

EXPORTS = Path(__file__).parent / "data" / "exports"


def setup(directory: Path, *, alias_map: str = "virtual") -> Path:
    """A configuration naming both exports, a certificate with its roots and a texthash map."""
    shutil.copy(EXPORTS / "accepted-domains-select.json", directory / "domains.json")
    shutil.copy(EXPORTS / "inbound-connectors-select.json", directory / "connectors.json")
    pki = TestPKI(now=datetime(2025, 6, 1, tzinfo=UTC))
    pki.write(directory / "certs", pki.leaf("mail.contoso.com", ["mail.contoso.com"]), "client")
    pki.write_ca_bundle(directory / "certs")
    (directory / "virtual").write_text("alias@contoso.com kate@tailspintoys.com\n")
    path = directory / "m365-policyd.toml"
    path.write_text(
        "[tenant]\n"
        'accepted_domains_file = "domains.json"\n'
        'inbound_connectors_file = "connectors.json"\n'
        "[onprem]\n"
        'certificate = "certs/client.pem"\n'
        'ca_bundle = "certs/ca.pem"\n'
        f'alias_maps = ["texthash:{alias_map}"]\n'
    )
    return path


def test_load_state_reads_exports_certificate_and_alias_maps(tmp_path: Path) -> None:
    """One call reads the configuration, both exports, the certificate and the alias tables."""
    built = load_state(str(setup(tmp_path)), 7)
    assert built.generation == 7
    assert built.config.tenant.accepted_domains
    assert built.config.tenant.connectors
    assert built.config.onprem.certificate is not None
    assert built.config.onprem.certificate.common_name == "mail.contoso.com"
    assert built.aliases.expand("alias@contoso.com") == ("kate@tailspintoys.com",)
    names = (
        "m365-policyd.toml",
        "domains.json",
        "connectors.json",
        "certs/client.pem",
        "certs/ca.pem",
    )
    assert built.config.input_files == tuple(str(tmp_path / name) for name in names)


def test_an_unusable_alias_map_fails_the_whole_load(tmp_path: Path) -> None:
    """An alias table that cannot be read is a ConfigError of the load, like a bad export."""
    with pytest.raises(ConfigError) as caught:
        load_state(str(setup(tmp_path, alias_map="missing")), 1)
    assert "missing" in str(caught.value)


def test_reading_the_file_alone_reads_no_named_file(tmp_path: Path) -> None:
    """read_config_file validates the TOML only: its tenant is the inline part, no certificate."""
    file = config.read_config_file(str(setup(tmp_path)))
    assert (file.tenant.accepted_domains, file.tenant.connectors) == ((), ())
    assert file.onprem.certificate is None
    assert file.accepted_domains_file == str(tmp_path / "domains.json")


def test_check_and_serve_load_through_the_same_function(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``check`` calls state.load_state, and it is serve's default loader too."""
    calls: list[tuple[str, int]] = []

    def spy(path: str, generation: int) -> state.State:
        calls.append((path, generation))
        return load_state(path, generation)

    monkeypatch.setattr(state, "load_state", spy)
    path = str(setup(tmp_path))
    argv = ["check", "-c", path, "--sender", "a@contoso.com", "--recipient", "b@fabrikam.com"]
    cli.main(argv)
    capsys.readouterr()
    assert calls == [(path, 0)]
    assert serve.load_state is load_state  # what Server uses unless a test passes `load`


def test_config_load_config_is_the_state_loader(tmp_path: Path) -> None:
    """The name kept in sources.config gives the same Config as sources.state.load_config."""
    path = str(setup(tmp_path))
    assert config.load_config(path) == state.load_config(path)
