"""Builders for small, real registries: Keras models trained or set by hand on synthetic data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

LINEAR_WEIGHTS = np.array([3.0, -2.0, 1.0, 0.0])
LINEAR_FEATURES = ("a", "b", "c", "noise")


def write_version(
    root: Path,
    name: str,
    version: str,
    model,
    test: pd.DataFrame,
    train: pd.DataFrame | None = None,
    **manifest,
) -> Path:
    """Write one registry version folder the way a training pipeline would."""
    folder = Path(root) / name / version
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.keras")
    test.to_parquet(folder / "test.parquet", index=False)
    if train is not None:
        train.to_parquet(folder / "train.parquet", index=False)
    (folder / "manifest.json").write_text(json.dumps({"target": "y", "task": "regression", **manifest}))
    return folder


def linear_frame(n_rows: int, seed: int, scales=(1.0, 2.0, 0.5, 1.0)) -> pd.DataFrame:
    """Independent features with known variances; y = w·x exactly."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_rows, len(LINEAR_FEATURES))) * np.asarray(scales)
    frame = pd.DataFrame(X.astype(np.float32), columns=list(LINEAR_FEATURES))
    frame["y"] = (X @ LINEAR_WEIGHTS).astype(np.float32)
    return frame


def linear_model(weights=LINEAR_WEIGHTS):
    """y = w·x as a Keras Dense layer with its weights set by hand (compiled, so it can be retrained)."""
    import keras

    model = keras.Sequential([keras.Input((len(weights),), name="x"), keras.layers.Dense(1)])
    model.layers[0].set_weights([np.asarray(weights, np.float32)[:, None], np.zeros(1, np.float32)])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    return model


def embedding_frame(n_rows: int, seed: int) -> pd.DataFrame:
    """A numeric driver, a categorical driver behind an embedding, and a noise column."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "amount": rng.normal(size=n_rows).astype(np.float32),
            "region": rng.integers(0, 4, size=n_rows),
            "noise": rng.normal(size=n_rows).astype(np.float32),
        }
    )
    frame["y"] = (1.5 * frame["amount"] + np.array([-1.0, 0.0, 1.0, 2.0])[frame["region"]]).astype(np.float32)
    return frame


def embedding_model(seed: int = 0):
    """A fastai-style tabular net: one named input per column, an Embedding for the categorical."""
    import keras

    init = keras.initializers.GlorotUniform(seed=seed)
    amount = keras.Input((1,), name="amount")
    noise = keras.Input((1,), name="noise")
    region = keras.Input((1,), name="region", dtype="int32")
    embedded = keras.layers.Flatten()(keras.layers.Embedding(4, 3, embeddings_initializer="uniform")(region))
    hidden = keras.layers.Concatenate()([amount, embedded, noise])
    hidden = keras.layers.Dense(16, activation="relu", kernel_initializer=init)(hidden)
    model = keras.Model([amount, region, noise], keras.layers.Dense(1, kernel_initializer=init)(hidden))
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="mse")
    return model


def train_embedding_model(frame: pd.DataFrame, seed: int = 0, epochs: int = 30):
    model = embedding_model(seed)
    feed = {
        "amount": frame[["amount"]].to_numpy(np.float32),
        "region": frame[["region"]].to_numpy(np.int32),
        "noise": frame[["noise"]].to_numpy(np.float32),
    }
    model.fit(feed, frame["y"].to_numpy(np.float32), epochs=epochs, batch_size=64, shuffle=False, verbose=0)
    return model


def stop_group(process: subprocess.Popen, first: int = signal.SIGTERM, *, timeout: float = 20) -> None:
    """Stop a process started with ``start_new_session=True`` and everything it started: ``first`` to the group, then
    SIGKILL after ``timeout`` seconds. A group already gone is fine."""
    try:
        os.killpg(process.pid, first)
        process.wait(timeout=timeout)
    except ProcessLookupError:
        process.wait()
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
