"""The cache key's code digest covers every module of featureaudit, in every sub-package."""

import shutil
from pathlib import Path

import pytest

from tasks.methods.cache import SOURCE_PACKAGES, SOURCE_ROOT, code_digest, source_digest

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture()
def tree(tmp_path):
    for package in SOURCE_PACKAGES:
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_the_digest_is_over_this_checkout():
    assert SOURCE_ROOT == REPO
    assert source_digest() == source_digest(REPO) and len(code_digest()) == 64


@pytest.mark.parametrize("module", ["tasks/methods/weights.py", "tasks/core/ranking.py", "tasks/subject/adapter.py",
                                    "tasks/registry/versions.py", "tasks/report/verdict.py", "tasks/demo.py",
                                    "flows/audit.py"])
def test_editing_any_module_changes_the_digest(tree, module):
    before = source_digest(tree)
    path = tree / module
    path.write_text(path.read_text() + "\n# an edit\n")
    assert source_digest(tree) != before


def test_moving_a_module_changes_the_digest(tree):
    before = source_digest(tree)
    (tree / "tasks/methods/weights.py").rename(tree / "tasks/methods/weights_moved.py")
    assert source_digest(tree) != before
