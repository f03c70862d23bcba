"""An image version: the registry layout (test.npz, the manifest's modality, class names and patch grid), the image
adapter that feeds the flattened pixels back as images, the patches as units, and each bad input in one line."""

import json
import re

import numpy as np
import pytest

from flows.cli import main
from tasks.core.errors import DataError, ManifestError, ModelLoadError
from tasks.registry.images import default_grid, patch_units, pixel_names
from tasks.registry.versions import resolve_version
from tasks.subject.loaded import build_subject

SHAPE = (16, 16, 1)


@pytest.fixture(scope="module")
def cnn():
    """A small untrained CNN on 16×16 grey images, 3 classes (feeding, not learning, is under test)."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input(SHAPE),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(3, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def _images(n: int, seed: int, shape=SHAPE):
    rng = np.random.default_rng(seed)
    return rng.random((n, *shape)).astype("float32"), rng.integers(0, 3, n)


def write_image_version(root, model, *, name="digits", test=None, train=None, **manifest):
    folder = root / name / "v1"
    folder.mkdir(parents=True)
    model.save(folder / "model.keras")
    x, y = test if test is not None else _images(40, 1)
    np.savez(folder / "test.npz", x=x, y=y)
    if train is not None:
        np.savez(folder / "train.npz", x=train[0], y=train[1])
    (folder / "manifest.json").write_text(json.dumps({"modality": "image", "task": "multiclass", **manifest}))
    return folder


def test_an_image_version_resolves_from_its_headers(tmp_path, cnn):
    write_image_version(tmp_path, cnn, train=_images(30, 2), class_names=["a", "b", "c"], patch_grid=[2, 4])
    version = resolve_version(tmp_path, "digits")
    assert version.image_shape == SHAPE and version.test_rows == 40
    assert version.test_path.name == "test.npz" and version.train_path.name == "train.npz"
    assert version.features[:2] == ("px0_0_0", "px0_1_0") and len(version.features) == 256
    assert version.manifest.class_names == ("a", "b", "c") and version.manifest.patch_grid == (2, 4)
    assert set(version.sha256) == {"model.keras", "test.npz", "train.npz"}


def test_the_adapter_feeds_the_images_the_model_would_get(tmp_path, cnn):
    x, y = _images(40, 1)
    write_image_version(tmp_path, cnn, test=(x, y), train=_images(30, 2))
    subject = build_subject(resolve_version(tmp_path, "digits"))
    assert subject.test.X.shape == (40, 256) and subject.train.X.shape == (30, 256)
    assert subject.test.y.dtype == np.int64 and subject.test.y.tolist() == y.tolist()
    np.testing.assert_allclose(subject.forward()(subject.test.X), cnn.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    [feed] = subject.adapter.inputs
    assert feed.shape == SHAPE and not subject.adapter.plain
    assert sorted(subject.patches()) == sorted(f"r{i}c{j}" for i in range(4) for j in range(4))


def test_a_capped_test_split_is_sampled_with_its_labels(tmp_path, cnn):
    x, y = _images(40, 1)
    write_image_version(tmp_path, cnn, test=(x, y))
    subject = build_subject(resolve_version(tmp_path, "digits", max_test_rows=10, seed=3))
    rows = [int(np.flatnonzero((x.reshape(40, -1) == r).all(axis=1))[0]) for r in subject.test.X]
    assert len(rows) == 10 and rows == sorted(rows) and subject.test.y.tolist() == y[rows].tolist()


@pytest.mark.parametrize(("shape", "grid", "patches", "size"), [
    ((16, 16, 1), None, 16, 16),
    ((32, 32, 3), None, 64, 48),
    ((16, 16, 1), (3, 3), 9, None),
    ((8, 6, 2), (8, 6), 48, 2),
])
def test_the_patches_hold_every_value_once(shape, grid, patches, size):
    units = patch_units(shape, grid)
    members = sorted(j for columns in units.values() for j in columns)
    assert len(units) == patches and members == list(range(int(np.prod(shape))))
    if size is not None:
        assert {len(c) for c in units.values()} == {size}
    names = pixel_names(shape)
    rows, cols = grid or default_grid(shape)
    assert names[units["r0c0"][0]] == "px0_0_0"
    last = units[f"r{rows - 1}c{cols - 1}"]
    assert names[last[-1]] == f"px{shape[0] - 1}_{shape[1] - 1}_{shape[2] - 1}"


def test_row_zero_is_the_top_of_the_image():
    units = patch_units((4, 4, 1), (2, 2))
    names = pixel_names((4, 4, 1))
    assert [names[j] for j in units["r0c1"]] == ["px0_2_0", "px0_3_0", "px1_2_0", "px1_3_0"]


@pytest.mark.parametrize(("manifest", "error", "message"), [
    ({"modality": "video"}, ManifestError, "has modality 'video'; expected one of tabular, image"),
    ({"features": ["px0_0_0"]}, ManifestError, "'features' names columns, but an image version has none"),
    ({"target": "label"}, ManifestError, "'target' names columns, but an image version has none"),
    ({"patch_grid": [4]}, ManifestError, "'patch_grid' must be [rows, columns] of patches"),
    ({"patch_grid": [32, 4]}, DataError, "'patch_grid' [32, 4] is finer than the images, 16×16 pixels"),
    ({"class_names": "abc"}, ManifestError, "'class_names' must be a list of names"),
])
def test_a_bad_manifest_is_one_line(tmp_path, cnn, manifest, error, message):
    write_image_version(tmp_path, cnn, **manifest)
    with pytest.raises(error, match=re.escape(message)) as refused:
        resolve_version(tmp_path, "digits")
    assert "\n" not in str(refused.value)


def test_a_patch_grid_on_a_tabular_version_is_refused(linear_registry, tmp_path):
    import shutil

    root = tmp_path / "reg"
    shutil.copytree(linear_registry, root)
    manifest = root / "linear" / "v1" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "patch_grid": [4, 4]}))
    with pytest.raises(ManifestError, match="'patch_grid' is for image versions"):
        resolve_version(root, "linear")


def test_bad_splits_and_models_are_one_line(tmp_path, cnn):
    import keras

    write_image_version(tmp_path, cnn, name="no_split")
    (tmp_path / "no_split" / "v1" / "test.npz").rename(tmp_path / "no_split" / "v1" / "test.parquet")
    with pytest.raises(Exception, match=re.escape("holds no test split (expected test.npz, as manifest.json says "
                                                  "modality image)")):
        resolve_version(tmp_path, "no_split")

    write_image_version(tmp_path, cnn, name="train_shape", train=_images(5, 2, (8, 8, 1)))
    with pytest.raises(DataError, match=re.escape("its images are (8, 8, 1), but test.npz's are (16, 16, 1)")):
        resolve_version(tmp_path, "train_shape")

    x, _ = _images(10, 1)
    write_image_version(tmp_path, cnn, name="labels", test=(x, np.full(10, 1.5)))
    with pytest.raises(DataError, match=re.escape("array 'y' must hold class codes 0..K-1 for a multiclass task")):
        build_subject(resolve_version(tmp_path, "labels"))

    wide = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(3, activation="softmax")])
    write_image_version(tmp_path, wide, name="shape")
    with pytest.raises(ModelLoadError, match=re.escape("model.keras: the model takes inputs of shape (28, 28, 1), but "
                                                       "the split holds images of shape (16, 16, 1)")):
        build_subject(resolve_version(tmp_path, "shape"))


def test_the_command_line_refuses_a_bad_image_split_with_exit_2(tmp_path, cnn, capsys):
    x, y = _images(10, 1)
    x[3, 2, 5, 0] = np.nan
    write_image_version(tmp_path / "reg", cnn, test=(x, y))
    out = tmp_path / "out"
    code = main(["run", "--registry", str(tmp_path / "reg"), "--model", "digits", "--out", str(out),
                 "--methods", "permutation"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "test.npz: array 'x' holds NaN or infinite values, the first at index (3, 2, 5, 0)" in err
    assert not out.exists()


def test_methods_that_measure_columns_are_skipped_on_an_image_version_saying_why(tmp_path, cnn):
    write_image_version(tmp_path / "reg", cnn)
    out = tmp_path / "out"
    code = main(["run", "--registry", str(tmp_path / "reg"), "--model", "digits", "--out", str(out),
                 "--methods", "shap,ablation"])
    assert code == 0
    [document] = out.glob("digits/v1/*/results.json")
    methods = json.loads(document.read_text())["methods"]
    assert {name: m["status"] for name, m in methods.items()} == {"ablation": "skipped", "shap": "skipped"}
    assert methods["shap"]["reason"] == "it measures columns, not the patches of an image (r<row>c<column>)"
    assert methods["ablation"]["reason"] == ("it measures columns, groups and correlated clusters, not the patches "
                                             "of an image (r<row>c<column>)")
