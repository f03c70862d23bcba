"""Publishing a version into a folder and an object store: checked first, never over an existing version."""

from __future__ import annotations

import json

import pytest

from tasks.core.errors import DataError, ManifestError, ModelLoadError, RegistryError
from tasks.registry.publish import next_version, publish
from tasks.registry.versions import resolve_version, sha256_file
from tests.mlflow_server import model_files  # noqa: F401  fixture


def _files(model_files, **changes):  # noqa: F811
    files = {"model_file": model_files["model0"], "test": model_files["test"], "train": model_files["train"],
             "manifest": model_files["manifest"]}
    return {**files, **changes}


def test_a_folder_gets_the_next_version_written_whole_and_resolvable(model_files, tmp_path):  # noqa: F811
    registry = tmp_path / "registry"
    first = publish(str(registry), "credit", **_files(model_files))
    second = publish(str(registry), "credit", **_files(model_files, model_file=model_files["model1"], train=None,
                                                        manifest=None))  # the manifest of v1
    assert (first.version, second.version) == ("v1", "v2")
    assert second.reference == str((registry / "credit" / "v2").absolute())
    assert sorted(p.name for p in (registry / "credit").iterdir()) == ["v1", "v2"]  # no staging folder left
    assert sorted(p.name for p in (registry / "credit" / "v2").iterdir()) == ["manifest.json", "model.keras",
                                                                               "test.parquet"]
    version = resolve_version(registry, "credit")
    assert version.version == "v2" and version.sha256["model.keras"] == sha256_file(model_files["model1"])
    assert json.loads((registry / "credit" / "v2" / "manifest.json").read_text()) == json.loads(
        model_files["manifest"].read_text())
    assert next_version(["v2", "v10", "2026-11-01"]) == "v11" and next_version([]) == "v1"


def test_an_existing_version_is_never_overwritten(model_files, tmp_path):  # noqa: F811
    registry = tmp_path / "registry"
    publish(str(registry), "credit", version="v3", **_files(model_files))
    before = sha256_file(registry / "credit" / "v3" / "model.keras")
    with pytest.raises(RegistryError, match=r"credit/v3 already exists: a published version is never overwritten; "
                                            r"publish as v4"):
        publish(str(registry), "credit", version="v3", **_files(model_files, model_file=model_files["model1"]))
    assert sha256_file(registry / "credit" / "v3" / "model.keras") == before


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"manifest": "broken"}, ManifestError, "is not valid JSON"),
        ({"manifest": "wrong-target"}, DataError, "has no target column 'income'"),
        ({"model_file": "not-a-zip"}, ModelLoadError, "not a Keras archive"),
        ({"test": "missing"}, DataError, "does not exist"),
        ({"alias": "champion"}, RegistryError, "--alias champion: registry .* has no aliases"),
        ({"version": "@champion"}, RegistryError, "a version folder cannot be an alias"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(model_files, tmp_path, change, error, message):  # noqa: F811
    registry = tmp_path / "registry"
    bad = {"broken": "{not json", "wrong-target": json.dumps({"target": "income", "task": "regression"}),
           "not-a-zip": "plain text", "missing": None}
    (key, value), = change.items()
    if value in bad:
        path = tmp_path / {"manifest": "manifest.json", "model_file": "model.keras", "test": "test.parquet"}[key]
        if bad[value] is not None:
            path.write_text(bad[value])
        value = path
    with pytest.raises(error, match=message):
        publish(str(registry), "credit", **{**_files(model_files), key: value})
    assert not registry.exists()


def test_without_a_manifest_the_first_version_is_refused(model_files, tmp_path):  # noqa: F811
    with pytest.raises(RegistryError, match="--manifest is needed: model 'credit' has no version in"):
        publish(str(tmp_path / "registry"), "credit", **_files(model_files, manifest=None))


def test_an_object_store_gets_the_files_under_the_next_version(model_files, s3_endpoint, audit_cache):  # noqa: F811
    from tests import s3

    fs = s3.filesystem(s3_endpoint)
    fs.mkdir("published")
    uri = "s3://published/registry"
    first = publish(uri, "credit", **_files(model_files))
    second = publish(uri, "credit", **_files(model_files, model_file=model_files["model1"], manifest=None))
    assert (first.reference, second.reference) == (f"{uri}/credit/v1", f"{uri}/credit/v2")
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls("published/registry/credit/v2")) == [
        "manifest.json", "model.keras", "test.parquet", "train.parquet"]
    with pytest.raises(RegistryError, match="credit/v2 already exists"):
        publish(uri, "credit", version="v2", **_files(model_files))
    version = resolve_version(uri, "credit")
    assert version.version == "v2" and version.sha256["model.keras"] == sha256_file(model_files["model1"])
    with pytest.raises(RegistryError, match="the bucket missing-bucket does not exist"):
        publish("s3://missing-bucket/registry", "credit", **_files(model_files))
