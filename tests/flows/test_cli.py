import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import main


@pytest.mark.parametrize(
    ("model", "extra", "message"),
    [
        ("nope", [], "has no model 'nope'"),
        ("linear", ["--version", "v9"], "has no version 'v9'"),
        ("linear", ["--methods", "weights,astrology"], "unknown method 'astrology'"),
        ("linear", ["--repeats", "0"], "--repeats 0: "),
        ("linear", ["--cluster-threshold", "1.5"], "--cluster-threshold 1.5: "),
        ("linear", ["--ablation-budget", "soon"], "--ablation-budget 'soon'"),
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


def featureaudit(*args: str, prefect_home: Path, cwd: Path) -> subprocess.Popen:
    """Start ``featureaudit`` as an operator would: a fresh process, none of the test session's quieting settings."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "PREFECT_SERVER_ANALYTICS_ENABLED", "PREFECT_API_URL", "DO_NOT_TRACK",
                        "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL")}
    env["PREFECT_HOME"] = str(prefect_home)
    return subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


def _run_linear(registry: Path, out: Path, *extra: str, prefect_home: Path) -> subprocess.Popen:
    return featureaudit("run", "--registry", str(registry), "--model", "linear", "--out", str(out),
                        "--methods", "weights,permutation", *extra, prefect_home=prefect_home, cwd=out.parent)


NOISE = ("Traceback", "telemetry", "absl", "UserWarning", "database is locked")


def test_a_successful_run_prints_its_paths_and_at_most_three_lines_on_stderr(linear_registry, tmp_path):
    code, out, err = finish(_run_linear(linear_registry, tmp_path / "out", prefect_home=tmp_path / "prefect"))
    assert code == 0, err
    assert sorted(Path(line).name for line in out.splitlines()) == ["report.html", "report.pdf", "results.json"]
    assert len(err.splitlines()) <= 3, err
    assert not [word for word in NOISE if word in err], err


def test_verbose_brings_back_prefect_info_logs(linear_registry, tmp_path):
    run = _run_linear(linear_registry, tmp_path / "out", "--verbose", prefect_home=tmp_path / "prefect")
    code, out, err = finish(run)
    assert code == 0, err
    assert "INFO" in err and "Finished in state Completed" in err
    assert "telemetry" not in err  # telemetry stays off: it is not detail about the run


def test_runs_at_once_sharing_a_prefect_home_print_no_traceback(linear_registry, tmp_path):
    home = tmp_path / "prefect"  # fresh: the runs' temporary servers would create and migrate its database at once
    runs = [_run_linear(linear_registry, tmp_path / f"out{i}", prefect_home=home) for i in range(3)]
    for code, out, err in map(finish, runs):
        assert code == 0, err
        assert len(out.splitlines()) == 3
        assert not [word for word in NOISE if word in err], err


def test_verbose_is_an_option_of_run_serve_and_demo():
    from flows.cli import _parser

    parser = _parser()
    assert parser.parse_args(["run", "--registry", "r", "--model", "m", "--verbose"]).verbose
    assert parser.parse_args(["serve", "--registry", "r", "--verbose"]).verbose
    assert parser.parse_args(["demo", "--verbose"]).verbose
    assert not parser.parse_args(["demo"]).verbose


def test_quiet_console_is_put_back_after_the_command(monkeypatch):
    import logging
    import warnings

    from flows import cli

    runs, seen = logging.getLogger("prefect.task_runs"), []
    monkeypatch.setattr(cli, "demo", lambda args: seen.append(runs.propagate) or 0)
    before = (runs.propagate, logging.getLogger("weasyprint").level, list(warnings.filters))
    assert main(["demo"]) == 0
    assert seen == [False]  # task run logs went to the Prefect API only, not the console
    assert (runs.propagate, logging.getLogger("weasyprint").level, list(warnings.filters)) == before


def test_an_import_that_fails_exits_2_with_one_line(linear_registry, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["run", "--registry", str(linear_registry), "--model", "linear", "--out", str(out),
                 "--import", "no.such.module"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == "featureaudit: error: --import no.such.module: No module named 'no'"
    assert not out.exists()


def test_import_registers_a_custom_layer_for_the_run(tmp_path, capsys, monkeypatch):
    from tests import custom_layers, helpers

    registry = tmp_path / "registry"
    helpers.write_version(registry, "custom", "v1", custom_layers.scaled_linear_model(helpers.LINEAR_WEIGHTS),
                          helpers.linear_frame(400, seed=1))
    custom_layers.forget(monkeypatch)
    run = ["run", "--registry", str(registry), "--model", "custom", "--out", str(tmp_path / "out"),
           "--methods", "permutation"]  # weights cannot look through a custom layer: a partial report
    assert main(run) == 2
    assert "custom class 'featureaudit_test>ScaledDense' that is not registered" in capsys.readouterr().err
    assert main([*run, "--import", "tests.custom_layers"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and sorted(Path(p).name for p in captured.out.split()) == [
        "report.html", "report.pdf", "results.json"]


def test_serve_refuses_a_negative_watch_interval_before_serving(linear_registry, capsys):
    from flows.cli import main

    assert main(["serve", "--registry", str(linear_registry), "--watch-interval", "-5"]) == 2
    assert capsys.readouterr().err.strip() == (
        "featureaudit: error: --watch-interval must be 0 (no watching) or a number of seconds, not -5")


FAST = """
import sys
from flows.cli import main
code = main(sys.argv[1:])
heavy = {m.split(".")[0] for m in sys.modules} & {"prefect", "tensorflow", "keras", "scipy", "pandas", "matplotlib"}
print(code, sorted(heavy))
"""


@pytest.mark.parametrize(("extra", "message"), [
    (["--repeats", "0"], "--repeats 0: Input should be greater than or equal to 1"),
    (["--cluster-threshold", "1.5"], "--cluster-threshold 1.5: Input should be less than or equal to 1"),
    (["--effects-grid", "many"], "--effects-grid 'many': Input should be a valid integer"),
    (["--methods", "weights,astrology"], "unknown method 'astrology'; choose from weights,permutation"),
])
def test_a_bad_option_value_is_refused_before_any_heavy_import(extra, message):
    done = subprocess.run([sys.executable, "-c", FAST, "run", "--registry", "nowhere", "--model", "m", *extra],
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2])
    assert done.stdout.strip() == "2 []"  # exit 2, and neither Prefect, TensorFlow, SciPy, pandas nor matplotlib
    err = done.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("featureaudit: error: --") and message in err


def test_a_mistyped_flag_shows_the_commands_usage_and_the_closest_flag(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["run", "--registry", "r", "--model", "m", "--repats", "2"])
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    assert err.startswith("usage: featureaudit run ")
    assert err.strip().endswith("featureaudit run: error: unrecognized arguments: --repats 2; did you mean --repeats?")


def test_the_option_spec_the_command_line_reads_first_is_the_tables():
    from flows.option_spec import SPEC_PATH, spec_text

    assert SPEC_PATH.read_text(encoding="utf-8") == spec_text(), (
        "flows/options.json is out of date with the table of methods: run .venv/bin/python -m flows.option_spec")
