"""The zoo's ground truth, checked without featureaudit: each model learns its drivers and survives a save.

Every check feeds the model through ``tests.zoo.model_feed`` (the zoo's own reference) and scores it
here, so a failure points at the zoo, not at the model adapter the zoo exists to test.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from tests import zoo

REPO = Path(__file__).resolve().parents[1]
NAMES = list(zoo.PATTERNS)
KERAS_FILE_NAMES = [name for name in NAMES if name != "legacy_h5"]  # the .h5 file has its own test

# A model "beats a constant" when its test loss is at most this fraction of the constant predictor's.
MAX_LOSS_RATIO = {"regression": 0.25, "binary": 0.75, "multiclass": 0.5}
# A driver's permutation importance must exceed every noise column's by this factor (noise floored at
# 1% of the constant predictor's loss, so that near-zero noise does not make the test trivial).
DRIVER_OVER_NOISE = 5.0


@functools.lru_cache(maxsize=None)
def built(name: str) -> zoo.Pattern:
    """Each pattern built once per session with seed 0."""
    return zoo.PATTERNS[name](0)


def _loss(task: str, y: np.ndarray, p: np.ndarray) -> float:
    """MSE for regression, log loss for binary (p = P(y=1)) and multiclass (p = class probabilities)."""
    if task == "regression":
        return float(np.mean((y - p.reshape(len(y))) ** 2))
    if task == "binary":
        p = np.clip(p.reshape(len(y)), 1e-7, 1 - 1e-7)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    p = np.clip(p, 1e-7, 1.0)
    return float(-np.mean(np.log(p[np.arange(len(y)), y])))


def _constant_loss(pattern: zoo.Pattern) -> float:
    """The test loss of the best constant learnt from train: its mean, or its class frequencies."""
    task, y, y_train = pattern.manifest["task"], pattern.test["y"].to_numpy(), pattern.train["y"].to_numpy()
    if task == "multiclass":
        frequencies = np.bincount(y_train, minlength=y.max() + 1) / len(y_train)
        return _loss(task, y, np.tile(frequencies, (len(y), 1)))
    return _loss(task, y, np.full(len(y), y_train.mean()))


def _target_head(pattern: zoo.Pattern) -> int:
    """The index of the head that predicts the target (the manifest's ``output``; the only one if absent)."""
    head = pattern.manifest.get("output", -1)
    return pattern.model.output_names.index(head) if isinstance(head, str) else head


def _heads(pattern: zoo.Pattern, frame: pd.DataFrame, model: keras.Model | None = None) -> list[np.ndarray]:
    model = pattern.model if model is None else model
    out = model.predict(zoo.model_feed(model, frame, pattern.manifest), batch_size=4096, verbose=0)
    return [np.asarray(o) for o in out] if isinstance(out, (list, tuple)) else [np.asarray(out)]


def _permutation_increase(pattern: zoo.Pattern, *, head: int = -1, n_repeats: int = 2, seed: int = 0) -> dict:
    """Mean loss increase when one raw test column is shuffled, for drivers and noise (one predict call)."""
    rng = np.random.default_rng(seed)
    task, test, y = pattern.manifest["task"], pattern.test, pattern.test["y"].to_numpy()
    columns = [*pattern.drivers, *pattern.noise]
    frames = [test]
    for column in columns:
        for _ in range(n_repeats):
            shuffled = test.copy()
            shuffled[column] = test[column].to_numpy()[rng.permutation(len(test))]
            frames.append(shuffled)
    p = _heads(pattern, pd.concat(frames, ignore_index=True))[head]
    n = len(test)
    losses = [_loss(task, y, p[i * n : (i + 1) * n]) for i in range(len(frames))]
    return {
        column: float(np.mean(losses[1 + j * n_repeats : 1 + (j + 1) * n_repeats]) - losses[0])
        for j, column in enumerate(columns)
    }


def _prediction_change(pattern: zoo.Pattern, *, head: int, seed: int = 0) -> dict:
    """Mean absolute change of one head's predictions when one raw test column is shuffled."""
    rng = np.random.default_rng(seed)
    test, columns = pattern.test, [*pattern.drivers, *pattern.noise]
    frames = [test]
    for column in columns:
        shuffled = test.copy()
        shuffled[column] = test[column].to_numpy()[rng.permutation(len(test))]
        frames.append(shuffled)
    p = _heads(pattern, pd.concat(frames, ignore_index=True))[head].reshape(len(frames), len(test))
    return {column: float(np.mean(np.abs(p[1 + j] - p[0]))) for j, column in enumerate(columns)}


@pytest.mark.parametrize("name", NAMES)
def test_frames_and_manifest_follow_the_raw_column_contract(name):
    pattern = built(name)
    manifest = pattern.manifest
    assert pattern.name == name and manifest["target"] == "y"
    assert manifest["task"] in ("regression", "binary", "multiclass")
    assert (len(pattern.train), len(pattern.test)) == (zoo.N_TRAIN, zoo.N_TEST)
    assert list(pattern.train.columns) == list(pattern.test.columns)

    features = manifest.get("features") or [c for c in pattern.test.columns if c != "y"]
    assert "y" not in features
    assert set(pattern.drivers) | set(pattern.noise) <= set(features)
    assert not set(pattern.drivers) & set(pattern.noise)
    for columns in manifest.get("inputs", {}).values():
        assert set(columns) <= set(features)
    for column in features:
        dtype = pattern.test[column].dtype
        assert dtype in (np.float32, np.int64) or pd.api.types.is_string_dtype(dtype), (column, dtype)

    several_outputs = len(pattern.model.outputs) > 1
    assert ("output" in manifest) == several_outputs
    assert pattern.model.compiled


@pytest.mark.parametrize("name", NAMES)
def test_model_beats_a_constant_predictor_on_test(name):
    pattern = built(name)
    task = pattern.manifest["task"]
    loss = _loss(task, pattern.test["y"].to_numpy(), zoo.predict_target(pattern, pattern.test))
    assert loss < MAX_LOSS_RATIO[task] * _constant_loss(pattern), (loss, _constant_loss(pattern))


@pytest.mark.parametrize("name", NAMES)
def test_shuffling_a_driver_hurts_far_more_than_shuffling_noise(name):
    pattern = built(name)
    increase = _permutation_increase(pattern, head=_target_head(pattern))
    weakest_driver = min(increase[c] for c in pattern.drivers)
    strongest_noise = max(max(increase[c] for c in pattern.noise), 0.01 * _constant_loss(pattern))
    assert weakest_driver > DRIVER_OVER_NOISE * strongest_noise, increase


@pytest.mark.parametrize("name", KERAS_FILE_NAMES)
def test_keras_file_round_trip_in_safe_mode(name, tmp_path):
    pattern = built(name)
    folder = zoo.write_pattern(tmp_path, pattern)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["manifest.json", "test.parquet", "train.parquet", pattern.model_file]
    )
    assert json.loads((folder / "manifest.json").read_text()) == pattern.manifest
    for split in ("train", "test"):
        pd.testing.assert_frame_equal(pd.read_parquet(folder / f"{split}.parquet"), getattr(pattern, split))

    loaded = keras.saving.load_model(folder / pattern.model_file, safe_mode=True)
    assert loaded.compiled
    assert [(t.name, tuple(t.shape), t.dtype) for t in loaded.inputs] == [
        (t.name, tuple(t.shape), t.dtype) for t in pattern.model.inputs
    ]
    for before, after in zip(_heads(pattern, pattern.test), _heads(pattern, pattern.test, loaded)):
        np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)


def test_feature_space_inference_model_retrains_on_raw_values_after_loading(tmp_path):
    """The inference model was never fitted itself: after a safe-mode load it still trains on raw dicts."""
    pattern = built("feature_space")
    folder = zoo.write_pattern(tmp_path, pattern)
    loaded = keras.saving.load_model(folder / "model.keras", safe_mode=True)
    history = loaded.fit(
        zoo.model_feed(loaded, pattern.train, pattern.manifest),
        pattern.train["y"].to_numpy(np.float32),
        epochs=1,
        batch_size=zoo.BATCH_SIZE,
        verbose=0,
    )
    assert np.isfinite(history.history["loss"][-1])


def test_legacy_h5_loads_only_without_compiling(tmp_path):
    """Keras 3 cannot deserialize the string loss "mse" of a legacy .h5: it loads with compile=False only."""
    pattern = built("legacy_h5")
    folder = zoo.write_pattern(tmp_path, pattern)
    assert (folder / "model.h5").is_file()
    with pytest.raises(ValueError, match="Could not deserialize 'keras.metrics.mse'"):
        keras.saving.load_model(folder / "model.h5", safe_mode=True)
    loaded = keras.saving.load_model(folder / "model.h5", safe_mode=True, compile=False)
    assert not loaded.compiled
    np.testing.assert_allclose(_heads(pattern, pattern.test, loaded)[0], _heads(pattern, pattern.test)[0], rtol=1e-5)


_LOAD_IN_A_FRESH_PROCESS = textwrap.dedent(
    """
    import sys
    import keras, numpy as np
    path, x_path, out_path = sys.argv[1:]
    try:
        keras.saving.load_model(path, safe_mode=True)
    except Exception as error:
        print("without import:", type(error).__name__, error)
    else:
        print("without import: loaded")
    import tests.zoo_layers  # registers featureaudit_zoo>ScaledDense
    model = keras.saving.load_model(path, safe_mode=True)
    np.save(out_path, model.predict(np.load(x_path), verbose=0))
    print("after import: loaded")
    """
)


def test_custom_layer_loads_in_a_fresh_process_only_after_importing_its_module(tmp_path):
    pattern = built("custom_layer")
    folder = zoo.write_pattern(tmp_path, pattern)
    x = zoo.model_feed(pattern.model, pattern.test, pattern.manifest)
    np.save(tmp_path / "x.npy", x)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", _LOAD_IN_A_FRESH_PROCESS, str(folder / "model.keras"), str(tmp_path / "x.npy"),
         str(tmp_path / "y.npy")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    without_import, after_import = done.stdout.split("after import: loaded")
    assert without_import.startswith("without import: TypeError"), done.stdout
    assert "Could not locate class 'ScaledDense'" in without_import  # the class is named in full
    assert after_import.strip() == ""
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), pattern.model.predict(x, verbose=0), rtol=1e-5)


def test_two_outputs_scoring_the_aux_head_is_visibly_wrong():
    pattern = built("two_outputs")
    y = pattern.test["y"].to_numpy()
    aux, main = _heads(pattern, pattern.test)
    assert pattern.model.output_names == ["aux", "main"] and pattern.manifest["output"] == "main"
    assert _loss("regression", y, main) < 0.1 * _constant_loss(pattern)
    assert _loss("regression", y, aux) > _constant_loss(pattern)  # worse than predicting the mean
    # What each head responds to: explaining the aux head would put season and footfall first.
    aux_change, main_change = _prediction_change(pattern, head=0), _prediction_change(pattern, head=1)
    assert min(aux_change["season"], aux_change["footfall"]) > 5 * max(aux_change["price"], aux_change["promo"])
    assert min(main_change["price"], main_change["promo"]) > 5 * max(main_change["season"], main_change["footfall"])


def test_same_seed_builds_the_same_model():
    first, again = built("string_lookup"), zoo.build_string_lookup(0)
    pd.testing.assert_frame_equal(again.test, first.test)
    np.testing.assert_allclose(
        zoo.predict_target(again, again.test), zoo.predict_target(first, first.test), rtol=1e-5, atol=1e-6
    )


def test_write_pattern_names_the_folder_and_version(tmp_path):
    folder = zoo.write_pattern(tmp_path, built("legacy_h5"), name="credit", version="v7")
    assert folder == tmp_path / "credit" / "v7"
    assert json.loads((folder / "manifest.json").read_text())["features"] == ["x0", "x1", "x2", "x3", "x4"]
