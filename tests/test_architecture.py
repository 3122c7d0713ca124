"""The layers hold: import-linter's contracts in pyproject.toml ([tool.importlinter]) all pass.

shared/ imports neither edge/ nor cloud/, and cloud/ does not import edge/ (so a cloud-only
install runs `python -m shared.topology check` and the cloud CLI without the edge package).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def test_import_contracts_are_kept():
    assert LINT_IMPORTS.exists(), f"{LINT_IMPORTS} missing: install the dev extra (import-linter)"
    run = lint_imports(ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


def test_a_forbidden_import_breaks_the_build(tmp_path):
    """The contracts are not vacuous: a copy of the tree where shared/ imports edge/ fails."""
    for package in ("edge", "cloud"):
        (tmp_path / package).symlink_to(ROOT / package, target_is_directory=True)
    (tmp_path / "shared").mkdir()
    for f in (ROOT / "shared").glob("*.py"):
        (tmp_path / "shared" / f.name).write_text(f.read_text())
    (tmp_path / "shared" / "leak.py").write_text("import edge.doctor\n")
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    run = lint_imports(tmp_path)
    assert run.returncode != 0
    assert "shared.leak -> edge.doctor" in run.stdout and "1 broken" in run.stdout
