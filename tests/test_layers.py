"""The layers import one way, downwards: the contract in pyproject.toml, checked by lint-imports."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120)


def test_the_layers_contract_is_kept():
    run = _lint(REPO)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Layers import downwards only KEPT" in run.stdout


def test_an_import_that_runs_back_up_breaks_the_contract(tmp_path):
    for folder in ("tasks", "flows"):
        shutil.copytree(REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    result = tmp_path / "tasks" / "core" / "result.py"
    result.write_text(result.read_text() + "\nfrom tasks.report import verdict  # noqa: E402,F401\n")
    run = _lint(tmp_path)
    assert run.returncode == 1
    assert "Layers import downwards only BROKEN" in run.stdout
    assert "tasks.core.result -> tasks.report.verdict" in run.stdout
