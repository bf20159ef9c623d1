"""What a test needs from the machine: skip without it, but fail when ``CI`` is set.

One rule for every test that drives a Debian program (postfix, postmap, postconf, promtool,
prometheus): on a developer's machine without it the test is skipped with the reason; under
``CI`` (where ``make test`` installs them as root) a missing program is a failure, so a green CI
run cannot hide a skipped Postfix test.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence

import pytest

#: Where Debian puts Postfix's programs when they are not on ``PATH`` (non-root shells).
SBIN = ("/usr/sbin", "/usr/bin")


def require(reason: str | None) -> None:
    """Return when ``reason`` is None; else skip the test with it, or fail it when CI is set."""
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI is set, so this test must run: {reason}")
    pytest.skip(reason)


def program(name: str, package: str, *, also_in: Sequence[str] = SBIN) -> str:
    """The path of program ``name`` (on ``PATH``, else in ``also_in``), or skip/fail naming
    the Debian ``package`` that provides it (see ``require``)."""
    found = shutil.which(name) or shutil.which(name, path=os.pathsep.join(also_in))
    if found is None:
        require(f"{name} not found (Debian package {package!r}; `make test` installs it as root)")
        raise AssertionError("unreachable: require() skips or fails")  # pragma: no cover
    return found
