import json
import re
import resource
import shutil
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from tasks.core.errors import DataError, FeatureAuditError, ManifestError, ModelLoadError, RegistryError
from tasks.core.result import ImportanceResult
from tasks.registry.base import natural_key
from tasks.registry.versions import (
    MAX_MEMBERS,
    check_model_file,
    load_keras_model,
    read_split,
    resolve_version,
)
from tasks.report.render import RunInfo, results_document
from tasks.report.verdict import compare
from tasks.subject.loaded import check_version, load_subject
from tests import helpers


def _copy(registry, tmp_path, name="linear"):
    root = tmp_path / "reg"
    shutil.copytree(registry, root)
    return root, root / name / "v1"


def test_natural_sort_orders_numbers_and_dates():
    assert sorted(["v10", "v9", "v2"], key=natural_key) == ["v2", "v9", "v10"]
    assert sorted(["2026-11-02", "2026-01-15", "2025-12-31"], key=natural_key)[-1] == "2026-11-02"


def test_latest_version_is_the_natural_maximum(linear_registry, tmp_path):
    root, v1 = _copy(linear_registry, tmp_path)
    for name in ("v9", "v10"):
        shutil.copytree(v1, v1.parent / name)
    assert resolve_version(root, "linear").version == "v10"
    assert resolve_version(root, "linear", "v9").version == "v9"


def test_resolved_version_hashes_files_and_orders_features(linear_registry):
    version = resolve_version(linear_registry, "linear")
    assert version.features == helpers.LINEAR_FEATURES
    assert set(version.sha256) == {"model.keras", "test.parquet", "train.parquet"}
    assert all(len(h) == 64 for h in version.sha256.values())


@pytest.mark.parametrize(
    ("model", "version", "message"),
    [
        ("nope", None, "has no model 'nope'"),
        ("linear", "v7", "has no version 'v7'"),
        ("../linear", None, "not a plain folder name"),
        ("linear", "../v1", "not a plain folder name"),
    ],
)
def test_missing_or_unsafe_names_are_refused(linear_registry, model, version, message):
    with pytest.raises(RegistryError, match=message):
        resolve_version(linear_registry, model, version)


def test_missing_registry_and_empty_version(tmp_path):
    with pytest.raises(RegistryError, match="does not exist"):
        resolve_version(tmp_path / "absent", "m")
    (tmp_path / "m" / "v1").mkdir(parents=True)
    with pytest.raises(RegistryError, match="holds no model file"):
        resolve_version(tmp_path, "m")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not valid JSON"),
        (json.dumps({"task": "regression"}), "lacks 'target'"),
        (json.dumps({"target": "y", "task": "ranking"}), "has task 'ranking'"),
        (json.dumps({"target": "y", "task": "regression", "categorical": ["zzz"]}), "names 'zzz'"),
    ],
)
def test_bad_manifests(linear_registry, tmp_path, content, message):
    root, v1 = _copy(linear_registry, tmp_path)
    (v1 / "manifest.json").write_text(content)
    with pytest.raises(ManifestError, match=message):
        resolve_version(root, "linear")


def test_split_missing_target_names_the_column(linear_registry, tmp_path):
    root, v1 = _copy(linear_registry, tmp_path)
    frame = helpers.linear_frame(50, seed=0).drop(columns=["y"])
    frame.to_parquet(v1 / "test.parquet")
    with pytest.raises(DataError, match="no target column 'y'"):
        resolve_version(root, "linear")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.drop(columns=["b"]), "has no column 'b' \\(the manifest lists it as a feature\\)"),
        (lambda f: f.assign(a=np.nan), "column 'a' has 50 NaN or infinite values"),
        (lambda f: f.assign(c=np.inf), "column 'c' has 50 NaN or infinite"),
        (lambda f: f.assign(b="text"), "column 'b' holds strings, but train.parquet holds numbers"),
        (lambda f: f.iloc[:0], "has zero rows"),
    ],
)
def test_bad_splits_name_file_and_column(linear_registry, tmp_path, mutate, message):
    root, v1 = _copy(linear_registry, tmp_path)
    (v1 / "manifest.json").write_text(json.dumps({"target": "y", "task": "regression", "features": list(helpers.LINEAR_FEATURES)}))
    mutate(helpers.linear_frame(50, seed=0)).to_parquet(v1 / "test.parquet")
    version = resolve_version(root, "linear")
    with pytest.raises(DataError, match=f"test.parquet {message}"):
        check_version(version)


def test_csv_split_is_accepted(linear_registry, tmp_path):
    root, v1 = _copy(linear_registry, tmp_path)
    (v1 / "test.parquet").unlink()
    helpers.linear_frame(30, seed=0).to_csv(v1 / "test.csv", index=False)
    version = resolve_version(root, "linear")
    assert load_subject(version).test.X.shape == (30, 4)


def test_corrupt_model_file(linear_registry, tmp_path):
    root, v1 = _copy(linear_registry, tmp_path)
    data = (v1 / "model.keras").read_bytes()
    (v1 / "model.keras").write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelLoadError, match="model.keras could not be loaded"):
        check_version(resolve_version(root, "linear"))


def test_lambda_layer_is_refused_by_safe_mode(linear_registry, tmp_path):
    import keras

    root, v1 = _copy(linear_registry, tmp_path)
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(1)(keras.layers.Lambda(lambda x: x * 2.0, output_shape=(4,))(inputs))
    keras.Model(inputs, outputs).save(v1 / "model.keras")
    with pytest.raises(ModelLoadError, match="refused by Keras safe mode"):
        check_version(resolve_version(root, "linear"))


def test_model_inputs_must_match_features(linear_registry, tmp_path):
    root, v1 = _copy(linear_registry, tmp_path)
    helpers.linear_model(np.ones(3)).save(v1 / "model.keras")
    with pytest.raises(ModelLoadError, match="input 'x' takes 3 values per row.*4 feature columns"):
        check_version(resolve_version(root, "linear"))


def test_named_inputs_must_match_columns(embedding_registry, tmp_path):
    root, v1 = _copy(embedding_registry, tmp_path, "embed")
    frame = helpers.embedding_frame(40, seed=0).rename(columns={"noise": "other"})
    frame.to_parquet(v1 / "test.parquet")
    frame.to_parquet(v1 / "train.parquet")
    with pytest.raises(ModelLoadError, match="input named 'noise'"):
        check_version(resolve_version(root, "embed"))


def test_test_split_over_the_row_cap_is_sampled_with_the_seed(linear_registry):
    uncapped = resolve_version(linear_registry, "linear")
    full = read_split(uncapped.test_path, uncapped).to_numpy()
    capped = resolve_version(linear_registry, "linear", max_test_rows=500, seed=7)
    sample = read_split(capped.test_path, capped).to_numpy()
    again = read_split(capped.test_path, resolve_version(linear_registry, "linear", max_test_rows=500, seed=7)).to_numpy()
    other = read_split(capped.test_path, resolve_version(linear_registry, "linear", max_test_rows=500, seed=8)).to_numpy()
    assert len(full) == 4000 and len(sample) == 500
    np.testing.assert_array_equal(sample, again)
    assert not np.array_equal(sample, other)
    assert {tuple(r) for r in sample} <= {tuple(r) for r in full}
    subject = load_subject(capped)  # what the methods see
    assert subject.test.n_rows == 500 and subject.train.n_rows == 2000  # only the test split is capped
    info = capped.test_sampling()
    assert info["sampled"] and (info["in_file"], info["used"], info["seed"]) == (4000, 500, 7)
    assert "4,000 rows, over the cap of 500" in info["note"] and "seed 7" in info["note"]
    assert resolve_version(linear_registry, "linear", max_test_rows=5000).test_sampling()["note"] is None


def test_row_cap_must_be_positive(linear_registry):
    with pytest.raises(FeatureAuditError, match="max_test_rows must be a positive number of rows"):
        resolve_version(linear_registry, "linear", max_test_rows=0)


def _outside(tmp_path, v1, name):
    """Move ``name`` out of the registry and leave a symbolic link to it in its place."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    (v1 / name).rename(elsewhere / name)
    (v1 / name).symlink_to(elsewhere / name)
    return elsewhere / name


@pytest.mark.parametrize("name", ["test.parquet", "train.parquet", "model.keras", "manifest.json"])
def test_a_link_out_of_the_registry_is_refused_in_one_line(linear_registry, tmp_path, name):
    root, v1 = _copy(linear_registry, tmp_path)
    target = _outside(tmp_path, v1, name)
    message = f"{v1 / name} is a symbolic link to {target}, outside the registry {root}"
    with pytest.raises(RegistryError, match=re.escape(message)) as info:
        resolve_version(root, "linear")
    assert "FEATUREAUDIT_ALLOW_EXTERNAL_LINKS=1" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("level", ["model", "version"])
def test_a_model_or_version_folder_linked_out_of_the_registry_is_refused(linear_registry, tmp_path, level):
    root, v1 = _copy(linear_registry, tmp_path)
    folder = v1.parent if level == "model" else v1
    shutil.move(folder, tmp_path / "elsewhere")
    folder.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(RegistryError, match=re.escape(f"{folder} is a symbolic link to {tmp_path / 'elsewhere'}")):
        resolve_version(root, "linear")


def test_the_operator_may_allow_links_out_of_the_registry(linear_registry, tmp_path, monkeypatch):
    root, v1 = _copy(linear_registry, tmp_path)
    target = _outside(tmp_path, v1, "test.parquet")
    monkeypatch.setenv("FEATUREAUDIT_ALLOW_EXTERNAL_LINKS", "1")
    version = resolve_version(root, "linear")
    assert version.test_path == v1 / "test.parquet" and version.resolved["test.parquet"] == target
    assert check_version(version).rows["test"] == 4000


def test_links_inside_the_registry_are_followed_and_their_targets_reach_results_json(linear_registry, tmp_path):
    root, v1 = _copy(linear_registry, tmp_path)
    v2 = v1.parent / "v2"
    v2.mkdir()
    for name in ("model.keras", "test.parquet", "train.parquet"):
        (v2 / name).symlink_to(Path("..") / "v1" / name)  # a new version sharing the data of the last one
    shutil.copy(v1 / "manifest.json", v2 / "manifest.json")
    version = resolve_version(root, "linear")
    assert version.version == "v2" and version.sha256 == resolve_version(root, "linear", "v1").sha256

    weights = ImportanceResult.from_samples("weights", "weight-based", version.features, np.array([3.0, 2.0, 1.0, 0.5]))
    run = RunInfo(run_id="run", started=datetime(2026, 1, 1, tzinfo=timezone.utc), seed=0)
    document = results_document(version, [weights], compare([weights]), run)
    assert document.model.paths == {name: str((v1 / name).resolve())
                                          for name in ("model.keras", "test.parquet", "train.parquet")}


def _bomb(path: Path, *, mib: int) -> Path:
    """A .keras zip whose config.json is ``mib`` MiB of zeros, deflated ~1000:1, written in 1 MiB chunks."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open("config.json", "w", force_zip64=True) as member:
            for _ in range(mib):
                member.write(bytes(2**20))
    return path


def test_a_zip_bomb_is_refused_in_one_line_without_loading(linear_registry, tmp_path, monkeypatch):
    import keras

    root, v1 = _copy(linear_registry, tmp_path)
    _bomb(v1 / "model.keras", mib=512)
    assert (v1 / "model.keras").stat().st_size < 2**20
    monkeypatch.setattr(keras.saving, "load_model", lambda *a, **k: pytest.fail("the bomb reached Keras"))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with pytest.raises(ModelLoadError, match=re.escape(f"{v1 / 'model.keras'} member config.json inflates")) as info:
        check_version(resolve_version(root, "linear"))
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert "over the limit of 200:1" in str(info.value) and "512.0 MiB" in str(info.value)
    assert "\n" not in str(info.value)
    assert grown_mib < 200


def test_an_archive_over_the_size_limit_is_refused(linear_registry, tmp_path, monkeypatch):
    root, v1 = _copy(linear_registry, tmp_path)
    with zipfile.ZipFile(v1 / "model.keras", "w") as archive:  # stored, as Keras writes: 1:1, no bomb
        archive.writestr("model.weights.h5", np.random.default_rng(0).bytes(2 * 2**20))
    monkeypatch.setenv("FEATUREAUDIT_MAX_MODEL_BYTES", str(2**20))
    message = f"{v1 / 'model.keras'} inflates to 2.0 MiB, over the limit of 1.0 MiB for a model"
    with pytest.raises(ModelLoadError, match=re.escape(message)) as info:
        check_model_file(v1 / "model.keras")
    assert "FEATUREAUDIT_MAX_MODEL_BYTES" in str(info.value)
    monkeypatch.setenv("FEATUREAUDIT_MAX_MODEL_BYTES", str(4 * 2**20))
    check_model_file(v1 / "model.keras")  # under the limit: passed on to Keras
    monkeypatch.setenv("FEATUREAUDIT_MAX_MODEL_BYTES", "lots")
    with pytest.raises(FeatureAuditError, match="FEATUREAUDIT_MAX_MODEL_BYTES='lots' must be a positive number"):
        check_model_file(v1 / "model.keras")


def test_an_archive_of_too_many_members_is_refused(tmp_path):
    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w") as archive:
        for i in range(MAX_MEMBERS + 1):
            archive.writestr(f"assets/{i}", b"")
    with pytest.raises(ModelLoadError, match=re.escape(f"{path} holds 10,001 files, over the limit of 10,000")):
        check_model_file(path)


def test_a_keras_file_that_is_not_a_zip_is_not_a_keras_archive(tmp_path):
    path = tmp_path / "model.keras"
    path.write_bytes(b"not a zip file")
    with pytest.raises(ModelLoadError, match=re.escape(f"{path} could not be loaded as a Keras model: not a Keras "
                                                       "archive (a .keras file is a zip")):
        load_keras_model(path, task="regression")


def test_an_h5_model_is_checked_by_its_size(tmp_path, monkeypatch):
    path = tmp_path / "model.h5"
    path.write_bytes(bytes(3000))
    monkeypatch.setenv("FEATUREAUDIT_MAX_MODEL_BYTES", "2048")
    with pytest.raises(ModelLoadError, match=re.escape(f"{path} is 2.9 KiB, over the limit of 2.0 KiB")):
        load_keras_model(path, task="regression")


def test_a_real_model_passes_the_archive_checks(linear_registry):
    path = linear_registry / "linear" / "v1" / "model.keras"
    check_model_file(path)
    with zipfile.ZipFile(path) as archive:  # Keras stores its members: they inflate 1:1
        assert sum(m.file_size for m in archive.infolist()) <= 1.01 * path.stat().st_size


def _legacy_h5(tmp_path):
    """A registry version whose model is a legacy model.h5 compiled with the string loss "mse"."""
    folder = helpers.write_version(tmp_path, "legacy", "v1", helpers.linear_model(), helpers.linear_frame(200, seed=1),
                                   helpers.linear_frame(200, seed=2))
    model = helpers.linear_model(np.array([1.0, 2.0, -1.0, 0.5]))
    model.save(folder / "model.h5")
    (folder / "model.keras").unlink()
    return folder / "model.h5", model


def legacy_note(file_name: str) -> str:
    return (f"{file_name}'s compiled loss could not be read by Keras 3; loaded without it and compiled with mean "
            "squared error, the loss the task implies, and a default Adam optimizer for retraining.")


def test_a_legacy_h5_compiled_with_mse_loads_with_the_task_loss_and_retrains(tmp_path):
    import keras

    from tasks.methods.ablation import _fresh_optimizer, seeded_clone

    path, saved = _legacy_h5(tmp_path)
    with pytest.raises(Exception, match="Could not deserialize 'keras.metrics.mse'"):  # Keras 3 alone fails
        keras.saving.load_model(path)
    model, notes = load_keras_model(path, task="regression")
    assert notes == (legacy_note("model.h5"),)
    X = helpers.linear_frame(64, seed=3)[list(helpers.LINEAR_FEATURES)].to_numpy(np.float32)
    np.testing.assert_allclose(model.predict_on_batch(X), saved.predict_on_batch(X), rtol=1e-6)
    fresh = seeded_clone(model, 0)  # as ablation retrains: a fresh optimizer like the compiled one, the compiled loss
    fresh.compile(optimizer=_fresh_optimizer(model), loss=model.loss)
    history = fresh.fit(X, X @ np.array([1.0, 2.0, -1.0, 0.5], np.float32), epochs=1, batch_size=32, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    subject = load_subject(resolve_version(tmp_path, "legacy"))  # the task from the version's manifest
    assert subject.model.loss.name == model.loss.name == "mean_squared_error"
    assert subject.notes == (legacy_note("model.h5"),)


@pytest.mark.parametrize(("task", "activation", "loss"), [
    ("regression", None, "mean squared error"),
    ("binary", "sigmoid", "binary cross-entropy"),
    ("binary", None, "binary cross-entropy on logits (the last layer has no sigmoid)"),
    ("multiclass", "softmax", "sparse categorical cross-entropy"),
])
def test_a_model_saved_without_compiling_gets_the_loss_its_task_implies(tmp_path, task, activation, loss):
    import keras

    units = 3 if task == "multiclass" else 1
    path = tmp_path / "model.keras"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(units, activation=activation)]).save(path)
    model, notes = load_keras_model(path, task=task)
    assert notes == (f"model.keras was saved without a compiled loss; compiled with {loss}, the loss the task "
                     "implies, and a default Adam optimizer for retraining.",)
    assert model.optimizer.__class__.__name__ == "Adam"
    assert getattr(model.loss, "from_logits", False) == ("logits" in loss)
    with pytest.raises(ModelLoadError, match="model.keras has no compiled loss Keras 3 can read; the task is needed"):
        load_keras_model(path, task=None)


@pytest.mark.parametrize("file_name", ["model.keras", "model.h5"])
def test_an_unregistered_custom_layer_is_named_in_full_and_loads_with_its_import(tmp_path, monkeypatch, file_name):
    from tests import custom_layers

    path = tmp_path / file_name
    saved = custom_layers.scaled_linear_model(helpers.LINEAR_WEIGHTS)
    saved.save(path)
    custom_layers.forget(monkeypatch)
    message = (f"{file_name} uses a custom class 'featureaudit_test>ScaledDense' that is not registered; pass --import "
               "with the module that registers it (@keras.saving.register_keras_serializable)")
    with pytest.raises(ModelLoadError, match=re.escape(message)) as refused:
        load_keras_model(path, task="regression")
    if file_name == "model.keras":  # the archive records the module; never imported on its word
        assert str(refused.value).endswith("; the file says it was defined in module 'tests.custom_layers'")
    model, notes = load_keras_model(path, task="regression", imports=("tests.custom_layers",))
    X = helpers.linear_frame(32, seed=5)[list(helpers.LINEAR_FEATURES)].to_numpy(np.float32)
    assert type(model.layers[0]).__name__ == "ScaledDense"
    assert notes == (() if file_name == "model.keras" else (legacy_note("model.h5"),))  # .h5: compiled with "mse"
    np.testing.assert_allclose(model.predict_on_batch(X), saved.predict_on_batch(X), rtol=1e-6)


def test_an_import_that_fails_is_one_line_naming_the_module(linear_registry):
    import pickle

    from tasks.core.errors import ModuleImportError
    from tasks.registry.versions import import_modules

    with pytest.raises(ModuleImportError, match=re.escape("--import no.such.module: No module named 'no'")):
        import_modules(("tests.custom_layers", "no.such.module"))
    version = resolve_version(linear_registry, "linear", imports=("tests.custom_layers",))
    assert pickle.loads(pickle.dumps(version)).imports == ("tests.custom_layers",)  # travels to Dask workers


def _tiny_archive(path: Path, n_members: int, *, name_length: int = 0, comment: bytes = b"") -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.comment = comment  # a comment follows the end record: it is then searched for
        for i in range(n_members):
            archive.writestr(f"assets/{i}".ljust(name_length, "_"), b"")
    return path


def _zipfile_must_not_parse(monkeypatch):
    import tasks.registry.versions

    monkeypatch.setattr(tasks.registry.versions.zipfile, "ZipFile", lambda *a, **k: pytest.fail("zipfile parsed the directory"))


def test_the_member_count_is_read_from_the_end_record_before_zipfile_parses(tmp_path, monkeypatch):
    monkeypatch.setattr("tasks.registry.versions.MAX_MEMBERS", 50)
    fits = _tiny_archive(tmp_path / "fits.keras", 50)
    check_model_file(fits)
    path = _tiny_archive(tmp_path / "model.keras", 51, comment=b"PK" * 30_000)
    _zipfile_must_not_parse(monkeypatch)
    with pytest.raises(ModelLoadError, match=re.escape(f"{path} holds 51 files, over the limit of 50 for a Keras "
                                                       "archive; refused without loading")) as info:
        check_model_file(path)
    assert "\n" not in str(info.value)


def test_a_zip64_end_record_is_read_for_the_member_count(tmp_path, monkeypatch):
    path = _tiny_archive(tmp_path / "model.keras", 70_000)  # over 65,535 entries: zipfile writes zip64 records
    assert path.read_bytes()[-22:][8:10] == b"\xff\xff"  # the plain end record only says "see zip64"
    _zipfile_must_not_parse(monkeypatch)
    with pytest.raises(ModelLoadError, match=re.escape(f"{path} holds 70,000 files, over the limit of 10,000")):
        check_model_file(path)


def test_a_large_zip_directory_is_refused_before_zipfile_parses(tmp_path, monkeypatch):
    monkeypatch.setattr("tasks.registry.versions.MAX_MEMBERS", 2)  # a directory of at most 1 KiB
    path = _tiny_archive(tmp_path / "model.keras", 2, name_length=700)
    _zipfile_must_not_parse(monkeypatch)
    with pytest.raises(ModelLoadError, match=re.escape(f"{path} has a zip directory of 1.5 KiB, over the limit of "
                                                       "1.0 KiB for a Keras archive of at most 2 files")):
        check_model_file(path)


def test_an_end_record_that_understates_the_members_is_still_refused(tmp_path, monkeypatch):
    monkeypatch.setattr("tasks.registry.versions.MAX_MEMBERS", 50)
    path = _tiny_archive(tmp_path / "model.keras", 60)
    data = bytearray(path.read_bytes())
    data[-14:-10] = (5).to_bytes(2, "little") * 2  # the end record claims 5 entries; the directory holds 60
    path.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=re.escape(f"{path} holds 60 files, over the limit of 50")):
        check_model_file(path)
