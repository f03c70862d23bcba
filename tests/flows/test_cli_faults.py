"""Failures through the command line: one line naming the culprit and a documented exit status.

Bad input: exit 2, nothing written, earlier reports untouched. Storage: exit 3.
"""

import errno
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from flows.cli import main
from tests import helpers
from tests.flows.test_cli import featureaudit, finish


def _snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def earlier_reports(linear_registry, tmp_path_factory):
    """An output folder holding one earlier, good report."""
    out = tmp_path_factory.mktemp("earlier-out")
    assert main(["run", "--registry", str(linear_registry), "--model", "linear", "--out", str(out),
                 "--methods", "weights"]) == 0
    return out


def _lambda_model():
    import keras

    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(1)(keras.layers.Lambda(lambda x: x * 2.0, output_shape=(4,))(inputs))
    return keras.Model(inputs, outputs)


def _break(kind: str, folder: Path) -> None:
    import pandas as pd

    test = folder / "test.parquet"
    if kind == "empty-version":
        for path in folder.iterdir():
            path.unlink()
    elif kind == "truncated-model":
        data = (folder / "model.keras").read_bytes()
        (folder / "model.keras").write_bytes(data[: len(data) // 2])
    elif kind == "lambda-layer":
        _lambda_model().save(folder / "model.keras")
    elif kind == "manifest-not-json":
        (folder / "manifest.json").write_text("{target: y")
    elif kind == "manifest-unknown-task":
        (folder / "manifest.json").write_text(json.dumps({"target": "y", "task": "ranking"}))
    elif kind == "missing-feature":
        (folder / "manifest.json").write_text(json.dumps({"target": "y", "task": "regression",
                                                          "features": list(helpers.LINEAR_FEATURES)}))
        pd.read_parquet(test).drop(columns=["b"]).to_parquet(test)
    elif kind == "text-column":
        frame = pd.read_parquet(test)
        frame["c"] = "high"
        frame.to_parquet(test)
    elif kind == "infinite":
        frame = pd.read_parquet(test)
        frame.loc[3, "a"] = float("inf")
        frame.to_parquet(test)
    elif kind == "zero-rows":
        pd.read_parquet(test).iloc[:0].to_parquet(test)
    elif kind == "wrong-inputs":
        import keras

        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        model.save(folder / "model.keras")


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("empty-version", "v1 holds no model file"),
        ("truncated-model", "model.keras could not be loaded as a Keras model"),
        ("lambda-layer", "model.keras was refused by Keras safe mode: it contains a Python Lambda layer"),
        ("manifest-not-json", "manifest.json is not valid JSON"),
        ("manifest-unknown-task", "has task 'ranking'; expected one of regression, binary, multiclass"),
        ("missing-feature", "test.parquet has no column 'b'"),
        ("text-column", "test.parquet column 'c' holds strings"),
        ("infinite", "test.parquet column 'a' has 1 NaN or infinite values"),
        ("zero-rows", "test.parquet has zero rows"),
        ("wrong-inputs", "model.keras"),
    ],
)
def test_bad_registry_content_is_one_line_exit_2_and_earlier_reports_untouched(
    linear_registry, earlier_reports, tmp_path, capsys, kind, message
):
    registry = tmp_path / "registry"
    shutil.copytree(linear_registry, registry)
    _break(kind, registry / "linear" / "v1")
    out = tmp_path / "out"
    shutil.copytree(earlier_reports, out)
    before = _snapshot(out)
    capsys.readouterr()
    code = main(["run", "--registry", str(registry), "--model", "linear", "--out", str(out), "--methods", "weights"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and message in err, err
    assert _snapshot(out) == before


@pytest.mark.parametrize("model", ["../linear", "linear/..", "a\\b", ".."])
def test_names_with_path_separators_are_refused(linear_registry, tmp_path, capsys, model):
    code = main(["run", "--registry", str(linear_registry), "--model", model, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "is not a plain folder name" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_missing_registry_and_version_via_the_command_line(linear_registry, tmp_path, capsys):
    assert main(["run", "--registry", str(tmp_path / "nowhere"), "--model", "linear", "--out", str(tmp_path)]) == 2
    assert "does not exist or is not a folder" in capsys.readouterr().err
    assert main(["run", "--registry", str(linear_registry), "--model", "linear", "--version", "../v1",
                 "--out", str(tmp_path / "out")]) == 2
    assert "is not a plain folder name" in capsys.readouterr().err


def test_bad_email_address_and_missing_smtp_host_fail_before_the_run(linear_registry, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FEATUREAUDIT_SMTP_HOST", "127.0.0.1")
    assert main(["run", "--registry", str(linear_registry), "--model", "linear", "--out", str(tmp_path / "out"),
                 "--email-to", "not-an-address"]) == 1
    assert "'not-an-address' is not an email address" in capsys.readouterr().err
    monkeypatch.delenv("FEATUREAUDIT_SMTP_HOST")
    assert main(["run", "--registry", str(linear_registry), "--model", "linear", "--out", str(tmp_path / "out"),
                 "--email-to", "r@example.com"]) == 1
    assert "FEATUREAUDIT_SMTP_HOST is not set" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_bad_memory_budget_is_refused_before_the_run(linear_registry, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FEATUREAUDIT_MEMORY_MB", "lots")
    assert main(["run", "--registry", str(linear_registry), "--model", "linear", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "FEATUREAUDIT_MEMORY_MB" in err
    assert not (tmp_path / "out").exists()


def test_a_dask_cluster_needs_a_prefect_server_the_workers_can_reach(linear_registry, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert main(["run", "--registry", str(linear_registry), "--model", "linear", "--out", str(tmp_path / "out"),
                 "--dask-address", "tcp://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--dask-address needs PREFECT_API_URL" in err
    assert not (tmp_path / "out").exists()


def _run(registry: Path, out: Path, prefect_home: Path) -> tuple[int, str, str]:
    return finish(featureaudit("run", "--registry", str(registry), "--model", "linear", "--out", str(out),
                               "--methods", "weights", prefect_home=prefect_home, cwd=prefect_home.parent))


def test_an_output_folder_that_cannot_be_created_exits_3_in_one_line_naming_it(linear_registry, tmp_path):
    (tmp_path / "plain-file").write_text("not a folder")  # permission bits do not stop root; this does
    out = tmp_path / "plain-file" / "reports"
    code, stdout, err = _run(linear_registry, out, tmp_path / "prefect")
    assert code == 3, err
    assert len(err.splitlines()) == 1 and str(out) in err and "Traceback" not in err, err
    assert stdout == "" and (tmp_path / "plain-file").read_text() == "not a folder"


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A tmpfs with room for the up-front checks and the report's folders, but no inode left for its files."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=65m,nr_inodes=5", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_filesystem_while_writing_exits_3_in_one_line_naming_the_folder(linear_registry, tmp_path,
                                                                               tiny_filesystem):
    code, stdout, err = _run(linear_registry, tiny_filesystem, tmp_path / "prefect")
    assert code == 3, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert str(tiny_filesystem) in err and "No space left on device" in err, err
    assert stdout == ""


@pytest.mark.parametrize(
    ("raised", "status", "message"),
    [
        (OSError(errno.ENOSPC, "No space left on device", "{out}/linear/v1/.run/report.pdf"), 3,
         "cannot write the report under {out}: No space left on device"),
        (OSError(errno.EROFS, "Read-only file system"), 3,
         "cannot write the report under {out}: Read-only file system"),
        (PermissionError(errno.EACCES, "Permission denied", "/elsewhere/model.keras"), 3,
         "/elsewhere/model.keras: Permission denied"),
        (RuntimeError("a bug\nover two lines"), 4, "unexpected RuntimeError: a bug over two lines"),
    ],
)
def test_errors_outside_our_exception_tree_are_one_line_with_their_status(monkeypatch, tmp_path, capsys, raised, status,
                                                                          message):
    from flows import cli

    out = str(tmp_path / "out")
    if isinstance(raised, OSError) and raised.filename:
        raised.filename = raised.filename.format(out=out)

    def failing_run(args):
        raise raised

    monkeypatch.setattr(cli, "run", failing_run)
    code = main(["run", "--registry", str(tmp_path), "--model", "linear", "--out", out])
    err = capsys.readouterr().err.strip()
    assert code == status
    assert len(err.splitlines()) == 1 and message.format(out=out) in err, err


def test_storage_error_exits_3_and_delivery_error_1(monkeypatch, tmp_path, capsys):
    from flows import cli
    from tasks.core.errors import DeliveryError, StorageError

    for error, status in ((StorageError("output folder x is not writable"), 3), (DeliveryError("SMTP said no"), 1)):
        monkeypatch.setattr(cli, "run", lambda args, error=error: (_ for _ in ()).throw(error))
        assert main(["run", "--registry", str(tmp_path), "--model", "linear"]) == status
        assert capsys.readouterr().err == f"featureaudit: error: {error}\n"
