import shutil

import pytest

from flows.cli import main



@pytest.mark.parametrize(
    ("model", "extra", "message"),
    [
        ("nope", [], "has no model 'nope'"),
        ("linear", ["--version", "v9"], "has no version 'v9'"),
        ("linear", ["--methods", "weights,astrology"], "unknown method 'astrology'"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(linear_registry, tmp_path, capsys, model, extra, message):
    out = tmp_path / "out"
    code = main(["run", "--registry", str(linear_registry), "--model", model, "--out", str(out), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and message in err
    assert not out.exists()


def test_missing_target_column_exits_2_naming_the_column(linear_registry, tmp_path, capsys):
    import pandas as pd

    root = tmp_path / "reg"
    shutil.copytree(linear_registry, root)
    test = root / "linear" / "v1" / "test.parquet"
    pd.read_parquet(test).drop(columns=["y"]).to_parquet(test)
    code = main(["run", "--registry", str(root), "--model", "linear", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "test.parquet has no target column 'y'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_run_prints_the_paths_it_wrote(linear_registry, tmp_path, capsys):
    code = main(["run", "--registry", str(linear_registry), "--model", "linear", "--out", str(tmp_path),
                 "--methods", "weights,permutation"])
    printed = capsys.readouterr().out.split()
    assert code == 0
    paths = [p for p in printed if p.startswith(str(tmp_path))]
    assert {p.rsplit("/", 1)[1] for p in paths} == {"report.pdf", "report.html", "results.json"}
    assert all(__import__("pathlib").Path(p).is_file() for p in paths)
