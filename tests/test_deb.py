"""The Debian package (SPEC §10): ``make deb``, lintian, install, use, purge — on this machine.

The module builds ``dist/m365-policyd_VERSION_all.deb`` with ``make deb``, installs it with
``apt-get install ./dist/…deb`` (its dependencies are Debian's python3-twisted,
python3-cryptography and python3-prometheus-client), drives the installed command and unit, and
purges it again at the end. It needs root on Debian; elsewhere every test is skipped with the
reason, except under ``CI``, where that is a failure. A machine where m365-policyd is already
installed is left alone (skipped, failed under ``CI``): the tests would purge it.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from policyd import __version__

pytestmark = pytest.mark.deb

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "m365-policyd"
DEB = REPO / "dist" / f"{PACKAGE}_{__version__}_all.deb"
CONFIG = Path("/etc/m365-policyd/m365-policyd.toml")
SHARE = Path("/usr/share/m365-policyd")
DOC = Path("/usr/share/doc/m365-policyd")
#: Debian 12 installs units under /lib/systemd/system, later releases under /usr/lib.
UNIT_DIRS = (Path("/lib/systemd/system"), Path("/usr/lib/systemd/system"))
#: What the example configuration listens on (the installed conffile is that example).
POLICY_PORT, METRICS_PORT = 10040, 9464
#: The environment systemd gives a service, near enough: no venv, no pyenv, no PYTHONPATH.
SERVICE_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", **SERVICE_ENV}

#: lintian warnings we accept, each with the reason (any other warning fails the test).
JUSTIFIED_WARNINGS = {
    "non-standard-dir-perm": "/etc/m365-policyd is 0750 root:m365-policyd: only the service "
    "reads the configuration and the tenant exports kept beside it",
    "non-standard-file-perm": "the conffile is 0640 root:m365-policyd for the same reason",
}

REQUEST = (
    b"request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
    b"client_address=192.0.2.1\nsender=john@fabrikam.com\nrecipient=kate@tailspintoys.com\n"
    b"instance=deb.1\n\n"
)


def _unavailable() -> str | None:
    """Why the package cannot be built and installed here, or None."""
    if not Path("/etc/debian_version").exists():
        return "not a Debian system"
    if os.geteuid() != 0:
        return "installing a Debian package needs root (`make test` as root runs these tests)"
    for tool in ("make", "apt-get", "dpkg", "dpkg-query", "setpriv"):
        if shutil.which(tool) is None:
            return f"{tool} is missing"
    if _installed_version() is not None:
        return f"{PACKAGE} is installed on this machine; these tests would purge it"
    return None


def _require() -> None:
    reason = _unavailable()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI is set, so the Debian package tests must run: {reason}")
    pytest.skip(reason)


def _run(
    args: list[str],
    *,
    timeout: float = 600,
    env: dict[str, str] | None = None,
    cwd: Path | str | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, check=False, env=env, cwd=cwd
    )


def _installed_version() -> str | None:
    result = _run(["dpkg-query", "-W", "-f=${db:Status-Status} ${Version}", PACKAGE])
    status, _, version = result.stdout.partition(" ")
    return version if result.returncode == 0 and status == "installed" else None


def _unit(name: str) -> Path:
    for directory in UNIT_DIRS:
        if (directory / name).exists():
            return directory / name
    raise AssertionError(f"{name} is not installed in {' or '.join(map(str, UNIT_DIRS))}")


def _settings(unit: Path) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit file (comments skipped), values in order per key."""
    settings: dict[str, list[str]] = {}
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


@pytest.fixture(scope="module")
def deb() -> Path:
    """``make deb`` from this tree: the path of the built package."""
    _require()
    result = _run(["make", "-C", str(REPO), "deb"], timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert DEB.exists(), f"make deb did not write {DEB}: {sorted(DEB.parent.glob('*'))}"
    return DEB


@pytest.fixture(scope="module")
def installed(deb: Path) -> Iterator[list[str]]:
    """The package installed with apt-get from ``dist/``; yields ``dpkg -L``; purged after."""
    try:
        update = _run(["apt-get", "update", "-qq"], env=APT_ENV)
        assert update.returncode == 0, update.stderr
        result = _run(
            ["apt-get", "install", "-y", "-q", f"./{deb.relative_to(REPO)}"], cwd=REPO, env=APT_ENV
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert _installed_version() == __version__
        yield _run(["dpkg", "-L", PACKAGE]).stdout.split("\n")
    finally:
        _run(["apt-get", "purge", "-y", "-q", PACKAGE], env=APT_ENV)


def test_lintian_reports_no_error_and_only_justified_warnings(deb: Path) -> None:
    """lintian finds no error in the package, and every warning is one we justified."""
    if shutil.which("lintian") is None:
        pytest.fail("lintian is missing (make deb installs it as root)")
    result = _run(["lintian", "--fail-on", "error", "--no-tag-display-limit", str(deb)])
    tags = re.findall(r"^([EWIXP]): \S+: (\S+)", result.stdout, re.MULTILINE)
    errors = [tag for level, tag in tags if level == "E"]
    warnings = {tag for level, tag in tags if level == "W"}
    assert errors == [], result.stdout
    assert result.returncode == 0, result.stdout + result.stderr
    assert warnings <= set(JUSTIFIED_WARNINGS), result.stdout


def test_installs_command_units_user_conffile_contrib_and_docs(installed: list[str]) -> None:
    """The package puts every piece where SPEC §10 says, the conffile readable by the service
    group only, and the unit's Documentation= pointing at installed files."""
    assert os.access("/usr/bin/m365-policyd", os.X_OK)
    user = pwd.getpwnam(PACKAGE)
    assert user.pw_shell == "/usr/sbin/nologin"
    assert Path("/usr/lib/sysusers.d/m365-policyd.conf").exists()
    for path, mode in ((CONFIG.parent, 0o750), (CONFIG, 0o640)):
        st = path.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, user.pw_gid, mode), path
    conffiles = _run(["dpkg-query", "-W", "-f=${Conffiles}", PACKAGE]).stdout
    assert str(CONFIG) in conffiles
    assert CONFIG.read_bytes() == (REPO / "contrib" / "m365-policyd.example.toml").read_bytes()
    contrib = {
        p.relative_to(REPO / "contrib") for p in (REPO / "contrib").rglob("*") if p.is_file()
    }
    shared = {p.relative_to(SHARE) for p in SHARE.rglob("*") if p.is_file()}
    assert shared == contrib
    assert (DOC / "README.md").read_bytes() == (REPO / "README.md").read_bytes()
    assert (DOC / "changelog.gz").exists()
    assert Path("/usr/share/man/man1/m365-policyd.1.gz").exists()
    service = _settings(_unit("m365-policyd.service"))
    assert service["ExecStart"] == [f"/usr/bin/m365-policyd serve -c {CONFIG}"]
    for unit in ("m365-policyd.service", "m365-policyd.socket"):
        documentation = _settings(_unit(unit))["Documentation"][0].split()
        files = [url.removeprefix("file://") for url in documentation if url.startswith("file://")]
        assert files, documentation
        for path in files:
            assert Path(path).is_file(), f"{unit}: Documentation={path} is not installed"


def test_service_is_installed_disabled(installed: list[str]) -> None:
    """Nothing starts on installation: neither unit is enabled until the administrator has
    read the configuration and enables one (README "Install on Debian")."""
    for unit in ("m365-policyd.service", "m365-policyd.socket"):
        state = _run(["systemctl", "is-enabled", unit])
        assert state.stdout.strip() == "disabled", state.stdout + state.stderr
    for target in ("multi-user.target.wants", "sockets.target.wants"):
        assert not list(Path("/etc/systemd/system", target).glob("m365-policyd*")), target


def test_check_explains_an_envelope_with_the_installed_configuration(installed: list[str]) -> None:
    """``/usr/bin/m365-policyd check`` reads /etc/m365-policyd/m365-policyd.toml by default:
    contoso.com passes (exit 0), fabrikam.com is predicted to be refused (exit 1)."""
    env = {**SERVICE_ENV, "HOME": "/root"}
    accept = _run(
        [
            "/usr/bin/m365-policyd",
            "check",
            "--sender",
            "alerts@contoso.com",
            "--recipient",
            "kate@tailspintoys.com",
        ],
        env=env,
        cwd="/",
    )
    assert accept.returncode == 0, accept.stdout + accept.stderr
    assert "Verdict   accept" in accept.stdout
    refuse = _run(
        [
            "/usr/bin/m365-policyd",
            "check",
            "--sender",
            "john@fabrikam.com",
            "--recipient",
            "kate@tailspintoys.com",
        ],
        env=env,
        cwd="/",
    )
    assert refuse.returncode == 1, refuse.stdout + refuse.stderr
    assert "550 5.7.64 Relay Access Denied ATTR36" in refuse.stdout


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[0].decode(errors="replace")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"serve did not listen on {port} within {timeout} s")


def test_serve_answers_as_the_package_user_with_the_unit_command_line(
    installed: list[str],
) -> None:
    """The unit's ExecStart, run as its User=/Group= (setpriv, as systemd would), answers a
    policy request on loopback from the installed configuration and stops cleanly on SIGTERM."""
    for port in (POLICY_PORT, METRICS_PORT):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                pytest.fail(f"127.0.0.1:{port} is taken; the installed configuration needs it")
    service = _settings(_unit("m365-policyd.service"))
    argv = shlex.split(service["ExecStart"][0])
    user, group = service["User"][0], service["Group"][0]
    setpriv = ["setpriv", f"--reuid={user}", f"--regid={group}", "--init-groups", "--"]
    process = subprocess.Popen(
        setpriv + argv, env=SERVICE_ENV, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        _wait_for_port(POLICY_PORT, process, timeout=20)
        status = Path(f"/proc/{process.pid}/status").read_text()
        uid = re.search(r"^Uid:\s+(\d+)", status, re.MULTILINE)
        assert uid is not None and int(uid.group(1)) == pwd.getpwnam(user).pw_uid
        with socket.create_connection(("127.0.0.1", POLICY_PORT), timeout=10) as client:
            client.sendall(REQUEST)
            reply = b""
            while not reply.endswith(b"\n\n"):
                chunk = client.recv(4096)
                assert chunk, reply
                reply += chunk
        # The example configuration's action is "dunno": the refusal is predicted, not enforced.
        assert reply == b"action=DUNNO\n\n"
        process.terminate()
        assert process.wait(timeout=5) == 0
        log = process.communicate()[0].decode(errors="replace")
        assert "reason=sender-not-accepted" in log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_installed_units_pass_systemd_analyze_verify(installed: list[str]) -> None:
    """``systemd-analyze verify`` accepts the installed units as they are (ExecStart exists)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing (Debian package systemd)")
    units = [str(_unit("m365-policyd.service")), str(_unit("m365-policyd.socket"))]
    result = _run([analyze, "verify", *units], env={**os.environ, "SYSTEMD_LOG_COLOR": "0"})
    problems = [
        line for line in (result.stdout + result.stderr).splitlines() if "m365-policyd" in line
    ]
    assert result.returncode == 0, result.stderr
    assert problems == []


def test_purge_leaves_nothing_but_the_system_user(installed: list[str]) -> None:
    """``apt-get purge`` removes every file, the configuration, byte-code and unit state; only
    the system user stays, as Debian policy has it (its files' owner must not be recycled)."""
    files = [path for path in installed if path and not Path(path).is_dir()]
    pycache = list(Path("/usr/lib/python3/dist-packages/policyd").rglob("*.pyc"))
    assert pycache, "py3compile did not compile the package"
    result = _run(["apt-get", "purge", "-y", "-q", PACKAGE], env=APT_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _installed_version() is None
    left = [path for path in files if os.path.lexists(path)]
    assert left == []
    for directory in (CONFIG.parent, SHARE, DOC, Path("/usr/lib/python3/dist-packages/policyd")):
        assert not directory.exists(), directory
    # Anything else named after us in the system's directories (the man page cache is man-db's).
    found = _run(
        [
            "find",
            "/etc",
            "/usr",
            "/lib",
            "/var",
            "/run",
            "-xdev",
            "-path",
            "/var/cache/man",
            "-prune",
            "-o",
            "(",
            "-name",
            "*m365-policyd*",
            "-o",
            "-name",
            "*m365_policyd*",
            ")",
            "-print",
        ],
        timeout=300,
    )
    leftovers = [line for line in found.stdout.splitlines() if not line.startswith(str(REPO))]
    assert leftovers == []
    assert pwd.getpwnam(PACKAGE).pw_name == PACKAGE
