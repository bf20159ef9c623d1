"""``make matrix``: the unit suite again on Debian 12's libraries and under every other Python.

``make test`` runs the whole suite once in ``.venv`` (the newest releases, the Python that made
``.venv``) and, side by side with it, this script runs it once more in each of:

- **debian**: ``/usr/bin/python3`` in a venv with ``--system-site-packages`` over Debian's
  ``python3-twisted``, ``python3-cryptography`` and ``python3-prometheus-client`` (``make
  system-deps`` installs them as root); pytest and hypothesis come from PyPI, the package is
  installed without dependencies, and the script checks that the three libraries really are
  Debian's before it runs anything.
- **python3.X** for every Python that ``setup.cfg``'s classifiers list, except the one of
  ``.venv``: ``python3.X`` on PATH, or else the newest ``3.X.N`` that pyenv has installed (its
  shims on PATH only answer for the selected versions). A venv with the package and its newest
  libraries, and of the ``[test]`` extra only what the suite imports (pytest, hypothesis,
  import-linter; not the linters, mypy or the build tools, which run once in ``.venv``).

Each venv lives beside ``.venv`` (``.venv-debian``, ``.venv-py3.12``, ...) and is rebuilt when
``setup.cfg``, ``pyproject.toml`` or the interpreter changes. An interpreter or library set that
is not on this machine is reported as absent, not failed; under ``CI`` the Debian one is
required (SPEC §2: CI tests the oldest and the newest versions).

Markers: ``postfix``, ``deb`` and ``slow`` run once, in ``.venv``; the other runs take the rest
(``$MATRIX_MARKERS`` overrides the expression, e.g. ``MATRIX_MARKERS="not postfix and not deb"
make matrix`` adds the slow abuse, dashboard and build tests). That keeps ``make test`` well
under 15 minutes on two cores, venvs built from scratch included.

Exit status 1 when a suite failed or could not be set up, else 0. The last line adds up the
runs: ``matrix: N passed, N failed, N skipped``.
"""

from __future__ import annotations

import configparser
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEBIAN_PYTHON = Path("/usr/bin/python3")
DEBIAN_DIST_PACKAGES = "/usr/lib/python3/dist-packages/"
LIBRARIES = (
    ("twisted", "Twisted"),
    ("cryptography", "cryptography"),
    ("prometheus_client", "prometheus-client"),
)
PYTEST = ["-m", "pytest", "-q", "-p", "no:cacheprovider"]
MARKERS = os.environ.get("MATRIX_MARKERS") or "not postfix and not deb and not slow"
#: Of setup.cfg's ``[test]`` extra, what the suite itself imports.
TEST_TOOLS = ("pytest", "hypothesis", "import-linter")
PIP = ["-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
_PYTEST_TOTALS = re.compile(r"(\d+) (passed|failed|errors?|skipped|deselected|xfailed|xpassed)")


@dataclass
class Suite:
    """One run of the unit suite: which interpreter, which libraries, and how it went."""

    name: str
    venv: Path
    python: str = ""  # the interpreter the venv is made from
    system_site: bool = False
    markers: str = MARKERS
    absent: str = ""  # why it cannot run here
    libraries: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    failed: str = ""  # why it failed, "" when it passed
    seconds: float = 0.0


def _setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    return parser


def supported_versions() -> list[str]:
    """The ``3.X`` versions listed as ``Programming Language :: Python :: 3.X`` in setup.cfg."""
    classifiers = _setup_cfg().get("metadata", "classifiers").splitlines()
    found = (
        re.fullmatch(r"Programming Language :: Python :: (3\.\d+)", c.strip()) for c in classifiers
    )
    return sorted({m.group(1) for m in found if m}, key=lambda v: tuple(map(int, v.split("."))))


def suite_tools() -> list[str]:
    """The requirement lines of ``TEST_TOOLS`` as setup.cfg's ``[test]`` extra spells them."""
    extra = _setup_cfg().get("options.extras_require", "test").split()
    wanted = [line for line in extra if re.split(r"[<>=!~ ]", line, maxsplit=1)[0] in TEST_TOOLS]
    assert len(wanted) == len(TEST_TOOLS), (wanted, extra)
    return wanted


def _version_of(python: str) -> str:
    """``3.X.Y`` of an interpreter, or "" when it does not run (a pyenv shim not selected)."""
    try:
        result = subprocess.run(
            [python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except OSError:
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


def find_python(version: str) -> tuple[str, str]:
    """(path, "") of a working ``python3.X``, or ("", why not)."""
    name = f"python{version}"
    on_path = shutil.which(name)
    if on_path and _version_of(on_path).startswith(version + "."):
        return on_path, ""
    pyenv = shutil.which("pyenv")
    if pyenv:
        root = subprocess.run([pyenv, "root"], capture_output=True, text=True, check=False)
        installed = Path(root.stdout.strip() or "~/.pyenv").expanduser() / "versions"
        releases = [
            p for p in installed.glob(f"{version}.*") if re.fullmatch(r"\d+\.\d+\.\d+", p.name)
        ]
        for release in sorted(releases, key=lambda p: [int(n) for n in p.name.split(".")])[::-1]:
            candidate = release / "bin" / name
            if candidate.exists() and _version_of(str(candidate)).startswith(version + "."):
                return str(candidate), ""
    return "", f"no {name} on PATH" + (" nor in pyenv's versions" if pyenv else "")


def _stamp(suite: Suite) -> str:
    digest = hashlib.sha256()
    for name in ("setup.cfg", "pyproject.toml"):
        digest.update((REPO / name).read_bytes())
    digest.update(f"{suite.python} {_version_of(suite.python)} {suite.system_site}".encode())
    return digest.hexdigest()


def _quiet(args: list[str]) -> None:
    """Run a set-up command; its output is shown only when it fails."""
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
        )


def prepare(suite: Suite) -> None:
    """Create (or reuse) the suite's venv with the package and the test tools installed."""
    stamp = suite.venv / ".matrix-stamp"
    expected = _stamp(suite)
    if stamp.exists() and stamp.read_text() == expected:
        return
    shutil.rmtree(suite.venv, ignore_errors=True)
    venv = [
        suite.python,
        "-m",
        "venv",
        *(["--system-site-packages"] if suite.system_site else []),
        str(suite.venv),
    ]
    _quiet(venv)
    python = str(suite.venv / "bin" / "python")
    if suite.system_site:
        # Debian's libraries stay the ones imported: only pytest and hypothesis come from PyPI
        # (import-linter would bring its own click, and the layer contract does not depend on
        # library versions), and the package is installed without dependencies.
        tools = [tool for tool in suite_tools() if not tool.startswith("import-linter")]
        _quiet([python, *PIP, *tools])
        _quiet([python, *PIP, "--no-deps", "--no-build-isolation", "-e", "."])
    else:
        _quiet([python, *PIP, "-e", ".", *suite_tools()])
    stamp.write_text(expected)


def library_versions(suite: Suite) -> str:
    """ "Twisted 22.4.0, ..." as the suite's interpreter imports them; checks Debian's origin."""
    code = (
        "import importlib, importlib.metadata as m, sys\n"
        f"for module, dist in {LIBRARIES!r}:\n"
        "    print(dist, m.version(dist), importlib.import_module(module).__file__)\n"
    )
    result = subprocess.run(
        [str(suite.venv / "bin" / "python"), "-c", code],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"cannot import the libraries:\n{result.stderr}")
    described = []
    for line in result.stdout.splitlines():
        dist, version, origin = line.split(" ", 2)
        if suite.system_site and not origin.startswith(DEBIAN_DIST_PACKAGES):
            raise RuntimeError(f"{dist} {version} comes from {origin}, not from Debian's package")
        described.append(f"{dist} {version}")
    return ", ".join(described)


def set_up(suite: Suite) -> None:
    """Prepare the suite's venv and read its library versions; a failure fills ``failed``."""
    started = time.monotonic()
    try:
        prepare(suite)
        suite.libraries = library_versions(suite)
    except (RuntimeError, OSError) as error:
        suite.failed = f"set-up failed: {error}"
    suite.seconds = time.monotonic() - started


def run(suite: Suite) -> None:
    """Run pytest in a set-up suite, streaming its output; fills counts/failed."""
    started = time.monotonic()
    print(
        f"\n=== matrix: {suite.name}: {suite.python} ({_version_of(suite.python)}); "
        f"{suite.libraries}",
        flush=True,
    )
    process = subprocess.Popen(
        [str(suite.venv / "bin" / "python"), *PYTEST, "-m", suite.markers],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    last = ""
    for line in process.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        if _PYTEST_TOTALS.search(line):
            last = line
    status = process.wait()
    suite.seconds += time.monotonic() - started
    for number, word in _PYTEST_TOTALS.findall(last):
        suite.counts["errors" if word.startswith("error") else word] = int(number)
    if status != 0:
        suite.failed = f"pytest exited {status}"


def suites() -> list[Suite]:
    """The Debian run, then one per supported Python other than this interpreter's."""
    ours = f"{sys.version_info.major}.{sys.version_info.minor}"
    found: list[Suite] = []
    debian = Suite("Debian's libraries", REPO / ".venv-debian", str(DEBIAN_PYTHON), True)
    if not DEBIAN_PYTHON.exists():
        debian.absent = f"no {DEBIAN_PYTHON} (not a Debian system)"
    else:
        missing = [
            dist
            for module, dist in LIBRARIES
            if subprocess.run(
                [str(DEBIAN_PYTHON), "-c", f"import {module}"], capture_output=True, check=False
            ).returncode
        ]
        if missing:
            debian.absent = (
                f"Debian's python3-{' python3-'.join(m.lower() for m in missing)} not installed "
                "(`make test` as root installs them)"
            )
    found.append(debian)
    for version in supported_versions():
        if version == ours:
            continue
        python, why = find_python(version)
        found.append(Suite(f"python{version}", REPO / f".venv-py{version}", python, absent=why))
    return found


def main() -> int:
    ours = f"{sys.version_info.major}.{sys.version_info.minor}"
    started = time.monotonic()
    planned = suites()
    present = [suite for suite in planned if not suite.absent]
    # Every venv first: `make test` runs this beside the main suite, whose packaging tests read
    # the tree that `pip install -e .` writes into; after this point nothing writes there.
    for suite in present:
        set_up(suite)
    for suite in present:
        if not suite.failed:
            run(suite)
    print(f"\n=== matrix summary ({time.monotonic() - started:.0f} s)")
    print(f"matrix: python{ours} ({sys.executable}): the full suite above, newest libraries")
    totals = {"passed": 0, "failed": 0, "skipped": 0}
    status = 0
    for suite in planned:
        if suite.absent:
            required = suite.system_site and os.environ.get("CI")
            state = "MISSING (required under CI)" if required else "absent"
            print(f"matrix: {suite.name}: {state}: {suite.absent}")
            status |= 1 if required else 0
            continue
        counts = ", ".join(f"{n} {word}" for word, n in suite.counts.items()) or "no result"
        verdict = f"FAILED ({suite.failed})" if suite.failed else "ok"
        print(
            f"matrix: {suite.name}: {verdict}: {counts} in {suite.seconds:.0f} s "
            f"[{suite.python}; {suite.libraries or 'libraries unknown'}; -m '{suite.markers}']"
        )
        for word in totals:
            totals[word] += suite.counts.get(word, 0)
        totals["failed"] += suite.counts.get("errors", 0)
        if suite.failed and not suite.counts.get("failed") and not suite.counts.get("errors"):
            totals["failed"] += 1  # it could not run (set-up) or pytest failed without a test
        status |= 1 if suite.failed else 0
    print(
        f"matrix: {totals['passed']} passed, {totals['failed']} failed, {totals['skipped']} skipped"
    )
    return status


if __name__ == "__main__":
    sys.exit(main())
