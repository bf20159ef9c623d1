"""Release artefacts that need no root: the sdist and wheel, and the metadata they and the Debian
package must agree on (versions, minimum library versions, supported Pythons)."""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from policyd import __version__
from tests import matrix

REPO = Path(__file__).resolve().parent.parent
#: setup.cfg's distribution names and the Debian packages that provide them.
DEBIAN_NAMES = {
    "twisted": "python3-twisted",
    "cryptography": "python3-cryptography",
    "prometheus-client": "python3-prometheus-client",
}


def setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    return parser


def minimum_versions() -> dict[str, str]:
    """``{"twisted": "22.4", ...}`` from setup.cfg's install_requires."""
    found = {}
    for line in setup_cfg().get("options", "install_requires").split():
        name, _, version = line.partition(">=")
        found[name.strip()] = version.strip()
    return found


@pytest.mark.slow
def test_sdist_and_wheel_pass_twine_check_and_carry_the_contrib_files(tmp_path: Path) -> None:
    """``python -m build`` gives an sdist and a wheel that ``twine check --strict`` accepts; the
    wheel installs every contrib file under share/m365-policyd and the command's entry point,
    and the sdist carries contrib, the units, the Debian packaging and the tests."""
    pytest.importorskip("build", reason="the build module is not installed (pip install .[test])")
    pytest.importorskip("twine", reason="twine is not installed (pip install .[test])")
    built = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(tmp_path), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    wheel = tmp_path / f"m365_policyd-{__version__}-py3-none-any.whl"
    sdist = tmp_path / f"m365_policyd-{__version__}.tar.gz"
    checked = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(wheel), str(sdist)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

    contrib = {p.relative_to(REPO / "contrib").as_posix() for p in (REPO / "contrib").rglob("*")}
    contrib = {name for name in contrib if (REPO / "contrib" / name).is_file()}
    data = f"m365_policyd-{__version__}.data/data/share/m365-policyd/"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = archive.read(f"m365_policyd-{__version__}.dist-info/entry_points.txt")
    assert {name.removeprefix(data) for name in names if name.startswith(data)} == contrib
    assert "m365-policyd = policyd.tools.cli:main" in entry_points.decode()
    assert "policyd/sources/pem.py" in names

    with tarfile.open(sdist) as archive:
        members = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    expected = {f"contrib/{name}" for name in contrib} | {
        "systemd/m365-policyd.service",
        "systemd/m365-policyd.socket",
        "debian/control",
        "debian/rules",
        "tests/test_deb.py",
        "README.md",
        "CHANGELOG.md",
        "Makefile",
    }
    assert expected <= members, sorted(expected - members)


def test_debian_changelog_version_is_the_package_version() -> None:
    """debian/changelog's newest entry is policyd.__version__, so `make deb` names the file
    dist/m365-policyd_VERSION_all.deb with the version the command reports."""
    first = (REPO / "debian" / "changelog").read_text().splitlines()[0]
    found = re.match(r"m365-policyd \(([^)]+)\) ", first)
    assert found is not None, first
    assert found.group(1) == __version__


def test_debian_depends_on_the_minimum_library_versions_of_setup_cfg() -> None:
    """debian/control's Depends names Debian's package for each runtime dependency, with the
    same minimum version as setup.cfg's install_requires."""
    control = (REPO / "debian" / "control").read_text()
    depends = re.search(r"^Depends:(.*?)(?=^\S)", control, re.MULTILINE | re.DOTALL)
    assert depends is not None
    relations = dict(re.findall(r"([a-z0-9.+-]+) \(>= ([^)]+)\)", depends.group(1)))
    for name, version in minimum_versions().items():
        assert relations.get(DEBIAN_NAMES[name]) == version, (name, relations)


def test_minimum_versions_are_what_debian_12_ships() -> None:
    """The supported minimum versions are Debian 12's (SPEC §2): Twisted 22.4,
    cryptography 38, prometheus-client 0.16."""
    assert minimum_versions() == {
        "twisted": "22.4",
        "cryptography": "38",
        "prometheus-client": "0.16",
    }


def test_python_requires_and_classifiers_name_the_tested_pythons() -> None:
    """python_requires starts at the oldest Python the classifiers list, and the classifiers
    (which `make test` runs the suite under) are 3.11, 3.12 and 3.13."""
    versions = matrix.supported_versions()
    assert versions == ["3.11", "3.12", "3.13"]
    assert setup_cfg().get("options", "python_requires").strip() == f">={versions[0]}"
