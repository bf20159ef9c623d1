"""The import contract of the layers (setup.cfg [importlinter]) holds and can fail."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter not installed")


def _copy_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    shutil.copytree(
        ROOT / "policyd", tree / "policyd", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "setup.cfg", tree / "setup.cfg")
    return tree


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
    )


def test_the_layers_are_kept(tmp_path: Path) -> None:
    """The package as it is keeps every contract."""
    done = _lint(_copy_tree(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "line", "verdict"),
    [
        (
            "rules/predict.py",
            "import twisted.internet",
            "policyd.rules is not allowed to import twisted",
        ),
        (
            "rules/predict.py",
            "import subprocess",
            "policyd.rules is not allowed to import subprocess",
        ),
        (
            "rules/model.py",
            "import policyd.sources.config",
            "policyd.rules is not allowed to import policyd.sources",
        ),
        (
            "wire/protocol.py",
            "import policyd.daemon.serve",
            "policyd.wire is not allowed to import policyd.daemon",
        ),
        (
            "engine/policy.py",
            "import twisted.internet.defer",
            "policyd.engine is not allowed to import twisted",
        ),
    ],
)
def test_a_forbidden_import_breaks_the_contract(
    tmp_path: Path, module: str, line: str, verdict: str
) -> None:
    """Adding one forbidden import to a copy of the package makes lint-imports fail on it."""
    tree = _copy_tree(tmp_path)
    path = tree / "policyd" / module
    path.write_text(path.read_text() + f"\n{line}  # noqa\n")
    done = _lint(tree)
    assert done.returncode != 0
    assert verdict in done.stdout
