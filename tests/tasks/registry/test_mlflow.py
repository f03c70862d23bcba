"""The MLflow Model Registry backend against a real tracking server on loopback (tests/mlflow_server.py)."""

from __future__ import annotations

import http.server
import json
import threading

import numpy as np
import pytest

from tasks.core.errors import RegistryError
from tasks.registry.mlflow import MlflowRegistry, public_uri
from tasks.registry.publish import publish
from tasks.registry.versions import load_keras_model, open_registry, resolve_version, sha256_file
from tests.mlflow_server import FEATURES, mlflow_tracking, model_files  # noqa: F401  fixtures


@pytest.fixture(scope="module")
def credit(mlflow_tracking, model_files):  # noqa: F811
    """Model 'credit': version 1 (seed 0, alias @champion), version 2 (seed 1); the registry reference."""
    registry = f"mlflow+{mlflow_tracking}"
    files = dict(model_files)
    first = publish(registry, "credit", model_file=files["model0"], test=files["test"], train=files["train"],
                    manifest=files["manifest"], alias="champion")
    second = publish(registry, "credit", model_file=files["model1"], test=files["test"], manifest=files["manifest"])
    return {"registry": registry, "first": first, "second": second, "files": files}


def test_published_versions_are_numbered_and_fetched_by_number_alias_and_newest(credit, audit_cache):
    first, second = credit["first"], credit["second"]
    assert (first.version, second.version) == ("1", "2") and first.reference == "models:/credit/1"
    assert first.run_id != second.run_id and first.alias == "champion"
    registry = open_registry(credit["registry"])
    assert isinstance(registry, MlflowRegistry)

    by_alias = registry.fetch("credit", "@champion")
    newest = registry.fetch("credit")
    by_number = registry.fetch("credit", "1")
    assert (by_alias.version, newest.version, by_number.version) == ("1", "2", "1")
    assert by_alias.provenance.run_id == first.run_id and by_alias.provenance.alias == "champion"
    assert newest.provenance.run_id == second.run_id and newest.provenance.alias is None
    assert by_alias.folder == by_number.folder == audit_cache / "mlflow" / by_alias.root.name / "credit" / "1"
    files = credit["files"]
    assert sha256_file(by_alias.folder / "model.keras") == sha256_file(files["model0"])
    assert sha256_file(newest.folder / "model.keras") == sha256_file(files["model1"])
    assert sha256_file(by_alias.folder / "train.parquet") == sha256_file(files["train"])
    assert not (newest.folder / "train.parquet").exists()  # version 2 was published without one
    assert registry.downloaded and all(u.startswith(("runs:/", "mlflow-artifacts:/")) for u in registry.downloaded)

    again = MlflowRegistry(credit["registry"])  # a new process's view: the cache is reused, nothing downloaded
    stamps = {p: p.stat().st_mtime_ns for p in by_alias.folder.iterdir()}
    assert again.fetch("credit", "1") == by_number and again.downloaded == []
    assert {p: p.stat().st_mtime_ns for p in by_alias.folder.iterdir()} == stamps

    version = resolve_version(credit["registry"], "credit", "@champion")
    assert version.version == "1" and version.provenance == by_alias.provenance
    assert version.uri == credit["registry"].removeprefix("mlflow+") and set(version.features) == set(FEATURES)


def test_a_model_logged_the_mlflow_way_is_read_and_predicts_as_logged(mlflow_tracking, model_files, audit_cache,  # noqa: F811
                                                                       monkeypatch, tmp_path):
    import mlflow

    from tests.mlflow_server import frame, mlp

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_tracking)
    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    model = mlp(5, frame(200, seed=3), epochs=1)
    with mlflow.start_run() as run:
        mlflow.keras.log_model(model, name="model", registered_model_name="logged")
        mlflow.log_artifact(str(model_files["test"]), artifact_path="featureaudit")
        mlflow.log_artifact(str(model_files["manifest"]), artifact_path="featureaudit")

    version = resolve_version("mlflow", "logged")  # MLFLOW_TRACKING_URI names the server
    assert version.version == "1" and version.provenance.run_id == run.info.run_id
    assert version.provenance.source.startswith("models:/") and version.train_path is None
    loaded, _ = load_keras_model(version.model_path, task="regression")  # featureaudit's own safe loader
    rows = frame(20, seed=4)[list(FEATURES)].to_numpy()
    np.testing.assert_allclose(loaded(rows).numpy(), model(rows).numpy(), rtol=1e-6)


def test_snapshot_names_the_newest_version_and_where_each_alias_points(credit):
    from mlflow import MlflowClient

    registry = open_registry(credit["registry"])
    assert registry.snapshot("credit") == {"latest": "2", "@champion": "1"}
    client = MlflowClient(tracking_uri=registry.tracking_uri)
    client.set_registered_model_alias("credit", "challenger", "2")
    try:
        assert registry.snapshot("credit") == {"latest": "2", "@champion": "1", "@challenger": "2"}
    finally:
        client.delete_registered_model_alias("credit", "challenger")


def test_a_split_named_by_a_version_tag_is_read_from_that_run(credit, audit_cache):
    from mlflow import MlflowClient

    registry = open_registry(credit["registry"])
    client = MlflowClient(tracking_uri=registry.tracking_uri)
    first = credit["first"]
    client.set_model_version_tag("credit", "2", "featureaudit.train", f"runs:/{first.run_id}/featureaudit/train.parquet")
    try:
        local = registry.fetch("credit", "2")
        assert sha256_file(local.folder / "train.parquet") == sha256_file(credit["files"]["train"])
        client.set_model_version_tag("credit", "2", "featureaudit.train", "https://example.org/train.parquet")
        with pytest.raises(RegistryError, match=r"tag featureaudit.train='https://example.org/train.parquet' must "
                                                r"name a run artifact, runs:/<run-id>/<path>"):
            registry.fetch("credit", "2")
    finally:
        client.delete_model_version_tag("credit", "2", "featureaudit.train")


@pytest.mark.parametrize(
    ("model", "version", "message"),
    [
        ("nope", None, r"has no model 'nope'; registered models: .*credit"),
        ("credit", "7", r"model 'credit' in MLflow registry http://127\.0\.0\.1:\d+ has no version '7'; versions: 1, 2; "
                        r"aliases: @champion \(version 1\)$"),
        ("credit", "v1", r"has no version 'v1' \(MLflow numbers its versions; name one, or an alias as @name\)"),
        ("credit", "@gold", r"model 'credit' in MLflow registry .* has no alias '@gold'; aliases: @champion \(version 1\)$"),
    ],
)
def test_an_unknown_model_version_or_alias_is_one_line_listing_what_exists(credit, audit_cache, model, version,
                                                                           message):
    with pytest.raises(RegistryError, match=message) as caught:
        open_registry(credit["registry"]).fetch(model, version)
    assert "\n" not in str(caught.value)


def test_a_version_without_a_test_split_names_the_model_version_and_what_is_missing(credit, audit_cache, tmp_path):
    import mlflow.artifacts
    from mlflow import MlflowClient

    registry = open_registry(credit["registry"])
    client = MlflowClient(tracking_uri=registry.tracking_uri)
    model = mlflow.artifacts.download_artifacts(f"runs:/{credit['first'].run_id}/model", dst_path=str(tmp_path),
                                                tracking_uri=registry.tracking_uri)
    empty = client.create_run(client.get_experiment_by_name("featureaudit").experiment_id)  # the model, no splits
    client.log_artifacts(empty.info.run_id, model, "model")
    client.create_registered_model("bare")
    client.create_model_version("bare", source=f"runs:/{empty.info.run_id}/model", run_id=empty.info.run_id)
    with pytest.raises(RegistryError, match=rf"model 'bare' version 1 in MLflow registry .* has no test split: log "
                                            rf"featureaudit/test.parquet to its run {empty.info.run_id}"):
        registry.fetch("bare")


def test_without_a_tracking_uri_unreachable_or_refused_is_one_line_naming_the_setting(monkeypatch, audit_cache):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(RegistryError, match="--registry mlflow needs MLFLOW_TRACKING_URI"):
        open_registry("mlflow")

    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once the probe closes
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    with pytest.raises(RegistryError, match=rf"cannot reach the MLflow tracking server http://127.0.0.1:{port} "
                                            r"\(MLFLOW_TRACKING_URI\): Connection refused"):
        open_registry("mlflow").list_models()

    class Refusing(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps({"error_code": "UNAUTHENTICATED", "message": "bad credentials"}).encode())

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"http://reader:s3cret@127.0.0.1:{server.server_port}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        with pytest.raises(RegistryError, match=r"the MLflow tracking server http://reader@127.0.0.1:\d+ "
                                                r"\(MLFLOW_TRACKING_URI\) refused access") as caught:
            open_registry("mlflow").fetch("credit")
        assert "s3cret" not in str(caught.value)
    finally:
        server.shutdown()
    assert public_uri("https://u:p@host:5000/x") == "https://u@host:5000/x"


def test_folder_and_object_store_registries_refuse_an_alias(linear_registry, s3_linear_registry, audit_cache):
    for registry in (str(linear_registry), s3_linear_registry):
        with pytest.raises(RegistryError, match=r"has no aliases \('@champion'\): aliases belong to an MLflow Model "
                                                r"Registry \(--registry mlflow\)"):
            resolve_version(registry, "linear", "@champion")
