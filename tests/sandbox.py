"""Run a command under the system-call filter of the shipped systemd unit, without systemd.

``python -m tests.sandbox UNIT -- COMMAND...`` reads ``SystemCallFilter=``,
``SystemCallErrorNumber=`` and ``MemoryDenyWriteExecute=`` from UNIT, expands the named sets
with ``systemd-analyze syscall-filter`` (systemd's own lists), loads the same seccomp filter
through libseccomp (which also sets no_new_privs, as ``NoNewPrivileges=yes`` does), sets the
unit's ``UMask=`` and execs COMMAND. A call outside the list fails with the unit's errno, as
under systemd; MemoryDenyWriteExecute= is rebuilt as systemd does it (no mmap that is both
writable and executable, no mprotect/pkey_mprotect to executable, no shmat with SHM_EXEC).

The tests use it where systemd is not PID 1 (a container): the daemon's whole life under the
unit's filter is then checked by ``tests/test_hardening.py``. Mount-namespace settings
(ProtectSystem=, ProtectProc=, ProcSubset=, PrivateMounts=, PrivateTmp=) are not rebuilt here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import re
import subprocess
import sys
from pathlib import Path

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_MASKED_EQ = 7
PROT_WRITE = 0x2
PROT_EXEC = 0x4
SHM_EXEC = 0o100000

#: The calls MemoryDenyWriteExecute= restricts by argument: (name, argument index, flag sets
#: of which the call is allowed when the argument has none of the bits of one set).
_MDWE = {
    "mmap": (2, (PROT_WRITE, PROT_EXEC)),  # allowed unless both writable and executable
    "mprotect": (2, (PROT_EXEC,)),
    "pkey_mprotect": (2, (PROT_EXEC,)),
    "shmat": (2, (SHM_EXEC,)),
}


class _ArgCmp(ctypes.Structure):
    _fields_ = (
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    )


def unit_values(unit: Path, key: str) -> list[str]:
    """Every value of ``key=`` in the unit file, in order."""
    return [
        line.split("=", 1)[1].strip()
        for line in unit.read_text().splitlines()
        if line.startswith(key + "=")
    ]


def expand(name: str, seen: set[str] | None = None) -> set[str]:
    """System calls of a ``@set`` (recursively, with systemd-analyze) or the name itself."""
    if not name.startswith("@"):
        return {name}
    seen = seen if seen is not None else set()
    if name in seen:
        return set()
    seen.add(name)
    listing = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager", name],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    calls: set[str] = set()
    for line in listing.splitlines()[1:]:
        item = line.strip()
        if item and not item.startswith("#"):
            calls |= expand(item, seen)
    return calls


def allowed_calls(unit: Path) -> set[str]:
    """The allow list the unit's SystemCallFilter= lines make (systemd.exec(5): the first
    line sets an allow list unless it starts with ~; later ~ lines take calls away)."""
    allowed: set[str] = set()
    for value in unit_values(unit, "SystemCallFilter"):
        deny = value.startswith("~")
        names = set()
        for item in value.lstrip("~").split():
            names |= expand(item)
        allowed = allowed - names if deny else allowed | names
    return allowed


def load_filter(unit: Path) -> None:
    """Load the unit's system-call filter into this process (inherited across exec)."""
    library = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    seccomp = ctypes.CDLL(library, use_errno=True)
    seccomp.seccomp_init.restype = ctypes.c_void_p
    seccomp.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
    seccomp.seccomp_rule_add_array.argtypes = (
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    )
    seccomp.seccomp_load.argtypes = (ctypes.c_void_p,)
    error_names = unit_values(unit, "SystemCallErrorNumber") or ["EPERM"]
    number = getattr(errno, error_names[-1])
    context = seccomp.seccomp_init(0x00050000 | number)  # SCMP_ACT_ERRNO(number)
    if not context:
        raise OSError("seccomp_init failed")
    restrict = unit_values(unit, "MemoryDenyWriteExecute")[-1:] == ["yes"]
    for name in sorted(allowed_calls(unit)):
        call = seccomp.seccomp_syscall_resolve_name(name.encode())
        if call < 0:  # not a call on this architecture
            continue
        if restrict and name in _MDWE:
            index, flag_sets = _MDWE[name]
            for flags in flag_sets:
                rule = _ArgCmp(index, SCMP_CMP_MASKED_EQ, flags, 0)
                if seccomp.seccomp_rule_add_array(context, SCMP_ACT_ALLOW, call, 1, rule) < 0:
                    raise OSError(f"seccomp_rule_add {name} failed")
            continue
        if seccomp.seccomp_rule_add_array(context, SCMP_ACT_ALLOW, call, 0, None) < 0:
            raise OSError(f"seccomp_rule_add {name} failed")
    if seccomp.seccomp_load(context) < 0:
        raise OSError("seccomp_load failed")


def main(argv: list[str]) -> int:
    unit = Path(argv[0])
    command = argv[argv.index("--") + 1 :]
    umask = unit_values(unit, "UMask")
    if umask:
        os.umask(int(umask[-1], 8))
    load_filter(unit)
    os.execvp(command[0], command)
    return 127  # pragma: no cover - execvp does not return


if __name__ == "__main__":
    if not re.fullmatch(r".*\.service", sys.argv[1] if len(sys.argv) > 1 else ""):
        sys.exit("usage: python -m tests.sandbox UNIT.service -- COMMAND...")
    sys.exit(main(sys.argv[1:]))
