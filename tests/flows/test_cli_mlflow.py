"""`featureaudit publish` into each backend and `featureaudit run --registry mlflow`, against real servers on loopback
(an MLflow tracking server, moto's S3), with the audited version, its run and alias read back from results.json and
the PDF's first page."""

from __future__ import annotations

import json
import re

import pypdf
import pytest

from flows.cli import main
from tasks.registry.base import Provenance
from tasks.report.document import read_results
from tests.mlflow_server import mlflow_tracking, model_files  # noqa: F401  fixtures

CHEAP = ["--methods", "weights,permutation", "--repeats", "2"]


def _publish(capsys, registry, model_file, files, *extra):
    code = main(["publish", "--registry", registry, "--model", "credit", "--model-file", str(model_file),
                 "--test", str(files["test"]), "--train", str(files["train"]), "--manifest", str(files["manifest"]),
                 *extra])
    captured = capsys.readouterr()
    assert code == 0 and captured.err == "", captured.err
    return captured.out.strip()


def _run(capsys, out, *args):
    code = main(["run", "--model", "credit", "--out", str(out), *CHEAP, *args])
    captured = capsys.readouterr()
    assert code == 0 and captured.err == "", captured.err
    (results,) = out.rglob("results.json")
    (pdf,) = out.rglob("report.pdf")
    first_page = " ".join(pypdf.PdfReader(pdf).pages[0].extract_text().split())
    return json.loads(results.read_text())["model"], first_page


@pytest.fixture(scope="module")
def published(mlflow_tracking, model_files, tmp_path_factory):  # noqa: F811
    """Versions 1 (seed 0, @champion) and 2 (seed 1) of 'credit', published through the command line; what it
    printed (a module fixture has no capsys: stdout goes to a file)."""
    import contextlib

    out = tmp_path_factory.mktemp("publish-out") / "stdout"
    references = []
    for model_file, extra in ((model_files["model0"], ["--alias", "@champion"]), (model_files["model1"], [])):
        with open(out, "w") as stream, contextlib.redirect_stdout(stream):
            assert main(["publish", "--registry", f"mlflow+{mlflow_tracking}", "--model", "credit", "--model-file",
                         str(model_file), "--test", str(model_files["test"]), "--train", str(model_files["train"]),
                         "--manifest", str(model_files["manifest"]), *extra]) == 0
        references.append(out.read_text().strip())
    return references


def test_runs_by_number_alias_and_newest_record_the_version_run_and_alias(published, mlflow_tracking,  # noqa: F811
                                                                         audit_cache, monkeypatch, tmp_path, capsys):
    from mlflow import MlflowClient

    assert published == ["models:/credit/1", "models:/credit/2"]
    client = MlflowClient(tracking_uri=mlflow_tracking)
    runs = {v: client.get_model_version("credit", v).run_id for v in ("1", "2")}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_tracking)

    model, page = _run(capsys, tmp_path / "alias", "--registry", "mlflow", "--version", "@champion")
    assert (model["version"], model["registry"]) == ("1", mlflow_tracking)
    assert model["provenance"] == {"kind": "mlflow", "run_id": runs["1"], "alias": "champion",
                                   "source": f"runs:/{runs['1']}/model"}
    assert f"Registry {mlflow_tracking}" in page and "alias @champion → version 1" in page
    (results,) = (tmp_path / "alias").rglob("results.json")
    assert read_results(results).model.provenance == Provenance(kind="mlflow", run_id=runs["1"], alias="champion",
                                                                source=f"runs:/{runs['1']}/model")
    assert runs["1"] in page.replace(" ", "") and model["sha256"]["model.keras"] in page.replace(" ", "")

    model, page = _run(capsys, tmp_path / "newest", "--registry", "mlflow")
    assert model["version"] == "2" and model["provenance"]["run_id"] == runs["2"]
    assert model["provenance"]["alias"] is None and "Asked for version 2" in page

    client.set_registered_model_alias("credit", "champion", "2")  # the alias moves: the next run audits its target
    try:
        model, page = _run(capsys, tmp_path / "moved", "--registry", f"mlflow+{mlflow_tracking}", "--version",
                           "@champion")
        assert (model["version"], model["provenance"]["alias"]) == ("2", "champion")
        assert "alias @champion → version 2" in page
    finally:
        client.set_registered_model_alias("credit", "champion", "1")

    model, _ = _run(capsys, tmp_path / "number", "--registry", f"mlflow+{mlflow_tracking}", "--version", "1")
    assert model["version"] == "1" and model["provenance"]["alias"] is None and model["provenance"]["run_id"] == runs["1"]
    assert sorted(p.name for p in (tmp_path / "number" / "credit").iterdir()) == ["1"]


def test_a_version_without_splits_is_exit_2_naming_what_is_missing(published, mlflow_tracking, audit_cache,  # noqa: F811
                                                                   tmp_path, capsys):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_tracking)
    source = client.get_model_version("credit", "1")
    import mlflow.artifacts

    model = mlflow.artifacts.download_artifacts(f"runs:/{source.run_id}/model", dst_path=str(tmp_path / "m"),
                                                tracking_uri=mlflow_tracking)
    run = client.create_run(client.get_experiment_by_name("featureaudit").experiment_id)
    client.log_artifacts(run.info.run_id, model, "model")
    bare = client.create_model_version("credit", source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    try:
        code = main(["run", "--registry", f"mlflow+{mlflow_tracking}", "--model", "credit", "--out",
                     str(tmp_path / "out"), *CHEAP])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        assert re.search(rf"model 'credit' version {bare.version} in MLflow registry .* has no test split: log "
                         rf"featureaudit/test.parquet to its run {run.info.run_id}", err)
        assert not (tmp_path / "out").exists()
    finally:
        client.delete_model_version("credit", bare.version)


def test_publish_into_a_folder_and_s3_round_trips_through_run(model_files, s3_endpoint, audit_cache, tmp_path,  # noqa: F811
                                                              capsys):
    from tests import s3

    folder = tmp_path / "registry"
    reference = _publish(capsys, str(folder), model_files["model0"], model_files)
    assert reference == str((folder / "credit" / "v1").absolute())
    model, page = _run(capsys, tmp_path / "folder-out", "--registry", str(folder))
    assert model["version"] == "v1" and "registry" not in model and "provenance" not in model

    s3.filesystem(s3_endpoint).mkdir("publish-round-trip")
    uri = "s3://publish-round-trip/registry"
    assert _publish(capsys, uri, model_files["model0"], model_files) == f"{uri}/credit/v1"
    assert _publish(capsys, uri, model_files["model1"], model_files) == f"{uri}/credit/v2"
    remote, page = _run(capsys, tmp_path / "s3-out", "--registry", uri)
    assert (remote["version"], remote["registry"]) == ("v2", uri) and f"Registry {uri}" in page
    assert remote["sha256"]["test.parquet"] == model["sha256"]["test.parquet"]
    assert remote["sha256"]["model.keras"] != model["sha256"]["model.keras"]  # v2 is the seed-1 model

    code = main(["run", "--registry", uri, "--model", "credit", "--version", "@champion", "--out",
                 str(tmp_path / "alias-out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "has no aliases ('@champion')" in err and len(err.splitlines()) == 1


def test_publish_into_mlflow_prints_only_the_reference_and_refuses_a_version_or_bad_alias(
        mlflow_tracking, model_files, capfd):  # noqa: F811
    registry = f"mlflow+{mlflow_tracking}"
    files = ["--model-file", str(model_files["model0"]), "--test", str(model_files["test"]), "--manifest",
             str(model_files["manifest"])]
    assert main(["publish", "--registry", registry, "--model", "quiet", *files, "--alias", "blue"]) == 0
    assert capfd.readouterr() == ("models:/quiet/1\n", "")
    for extra, message in ((["--version", "5"], "--version 5: an MLflow Model Registry numbers its versions itself"),
                           (["--alias", "latest"], "--alias 'latest': an MLflow alias is letters, digits")):
        assert main(["publish", "--registry", registry, "--model", "quiet", *files, *extra]) == 2
        out, err = capfd.readouterr()
        assert out == "" and message in err and len(err.strip().splitlines()) == 1
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_tracking)
    assert [v.version for v in client.search_model_versions("name='quiet'")] == ["1"]  # nothing else registered
    assert client.get_registered_model("quiet").aliases == {"blue": "1"}
