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


class Terminal(__import__("io").StringIO):
    def isatty(self):
        return True


def test_progress_records_draw_a_bar_and_other_records_start_a_new_line():
    import logging

    from flows.cli import ProgressBar

    terminal = Terminal()
    bar = ProgressBar(terminal, width=10)
    console = logging.StreamHandler(terminal)
    console.addFilter(bar.console_filter)
    logger = logging.getLogger("featureaudit-test-progress")
    logger.propagate, logger.level = False, logging.INFO
    logger.handlers = [bar, console]
    for done, unit in enumerate(["a", "b"], start=1):
        logger.info("permutation: %s done", unit, extra={"progress": {"task": "permutation", "unit": unit, "done": done,
                                                                      "total": 4}})
    logger.info("something else")
    logger.info("x", extra={"progress": {"task": "permutation", "unit": "d", "done": 4, "total": 4}})
    assert terminal.getvalue() == (
        "\r\x1b[Kpermutation [##--------] 1/4 a\r\x1b[Kpermutation [#####-----] 2/4 b\n"
        "something else\n"
        "\r\x1b[Kpermutation [##########] 4/4 d\n"
    )


def test_bar_is_attached_to_prefect_task_logs_only_on_a_terminal():
    import io
    import logging

    from flows.cli import ProgressBar, progress_bar

    runs = logging.getLogger("prefect.task_runs")
    with progress_bar(io.StringIO()) as bar:
        assert bar is None and not any(isinstance(h, ProgressBar) for h in runs.handlers)
    with progress_bar(Terminal()) as bar:
        assert bar in runs.handlers
        assert all(bar.console_filter in h.filters for h in logging.getLogger().handlers)
    assert bar not in runs.handlers
    assert not any(bar.console_filter in h.filters for h in logging.getLogger().handlers)
