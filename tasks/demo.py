"""A demo registry whose true drivers are known, so the report's claims can be checked by eye; and a small image
model beside it (:func:`build_image_demo`).

The target is a sum of known effects:
    y = 1.0·income/100 + 1.2·inter_a·inter_b + 0.6·(corr_1 + corr_2) + 0.5·tenure + region effect + ε
``income`` is on a scale ×100 larger than the rest, so its first-layer weights shrink and the
naive weight ranking under-ranks it; ``noise`` has no effect at all; ``inter_a`` and ``inter_b``
matter only through their product; ``corr_1`` and ``corr_2`` are correlated (ρ ≈ 0.9);
``region`` is an integer-coded categorical.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

FEATURES = ("income", "noise", "inter_a", "inter_b", "corr_1", "corr_2", "region", "tenure")
REGION_EFFECT = np.array([-1.0, 0.0, 0.5, 1.0])
MODEL_NAME = "credit-demo"


def demo_frame(n_rows: int, *, random_state: int | None = 0) -> pd.DataFrame:
    """Synthetic rows with the known effects described above."""
    rng = np.random.default_rng(random_state)
    corr_1 = rng.normal(size=n_rows)
    frame = pd.DataFrame(
        {
            "income": rng.normal(size=n_rows) * 100.0,
            "noise": rng.normal(size=n_rows),
            "inter_a": rng.normal(size=n_rows),
            "inter_b": rng.normal(size=n_rows),
            "corr_1": corr_1,
            "corr_2": 0.9 * corr_1 + np.sqrt(1 - 0.81) * rng.normal(size=n_rows),
            "region": rng.integers(0, len(REGION_EFFECT), size=n_rows),
            "tenure": rng.normal(size=n_rows),
        }
    )
    frame["target"] = (
        1.0 * frame["income"] / 100.0
        + 1.2 * frame["inter_a"] * frame["inter_b"]
        + 0.6 * (frame["corr_1"] + frame["corr_2"])
        + 0.5 * frame["tenure"]
        + REGION_EFFECT[frame["region"].to_numpy()]
        + 0.1 * rng.normal(size=n_rows)
    )
    return frame.astype({c: "float32" for c in FEATURES if c != "region"} | {"target": "float32"})


def build_demo_registry(root: str | Path, *, random_state: int = 0, epochs: int = 40) -> Path:
    """Train the demo MLP on raw (unscaled) inputs and write ``<root>/credit-demo/v1/``."""
    import keras

    root = Path(root)
    folder = root / MODEL_NAME / "v1"
    folder.mkdir(parents=True, exist_ok=True)
    train = demo_frame(3000, random_state=random_state)
    test = demo_frame(1000, random_state=random_state + 1)
    features = list(FEATURES)

    init = lambda k: keras.initializers.GlorotUniform(seed=random_state + k)  # noqa: E731
    model = keras.Sequential(
        [
            keras.Input((len(features),), name="features"),
            keras.layers.Dense(32, activation="relu", kernel_initializer=init(1)),
            keras.layers.Dense(16, activation="relu", kernel_initializer=init(2)),
            keras.layers.Dense(1, kernel_initializer=init(3)),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=3e-3), loss="mse")
    X = train[features].to_numpy(np.float32)
    y = train["target"].to_numpy(np.float32)
    order = np.random.default_rng(random_state).permutation(len(X))
    model.fit(X[order], y[order], epochs=epochs, batch_size=64, shuffle=False, verbose=0)

    model.save(folder / "model.keras")
    train.to_parquet(folder / "train.parquet", index=False)
    test.to_parquet(folder / "test.parquet", index=False)
    manifest = {
        "target": "target",
        "task": "regression",
        "features": features,
        "categorical": ["region"],
        "groups": {"correlated_pair": ["corr_1", "corr_2"]},
        "training": {"epochs": epochs, "batch_size": 64},
        "metric": "mse",
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return root


IMAGE_MODEL_NAME = "digits-demo"


def build_image_demo(root: str | Path, *, random_state: int = 0, epochs: int = 15) -> Path:
    """Train a small CNN on scikit-learn's 8×8 handwritten digits (shipped with scikit-learn: no download) and write
    ``<root>/digits-demo/v1/`` as an image version: 1,297 training images, 500 test images, 10 classes."""
    import keras
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]  # (1797, 8, 8, 1), ink in [0, 1]
    order = np.random.default_rng(random_state).permutation(len(x))
    x, y = x[order], digits.target[order].astype(np.int64)
    keras.utils.set_random_seed(random_state)
    model = keras.Sequential([
        keras.Input((8, 8, 1), name="image"),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=3e-3), loss="sparse_categorical_crossentropy")
    model.fit(x[:1297], y[:1297], epochs=epochs, batch_size=64, verbose=0)
    folder = Path(root) / IMAGE_MODEL_NAME / "v1"
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.keras")
    np.savez(folder / "train.npz", x=x[:1297], y=y[:1297])
    np.savez(folder / "test.npz", x=x[1297:], y=y[1297:])
    manifest = {"modality": "image", "task": "multiclass", "class_names": [str(d) for d in range(10)],
                "training": {"epochs": epochs, "batch_size": 64}}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return Path(root)


@contextmanager
def demo_signing(folder: str | Path) -> Iterator[Path]:
    """While the block runs, the pipeline signs with the demo's self-signed key (made once in ``folder``).

    Its certificate names the organization :data:`tasks.report.signing.DEMO_ORGANIZATION`, so the report says it
    was signed with a demonstration key, not evidence of authorship. Any signing settings are put back after.
    """
    from tasks.report import signing

    key, cert = signing.demo_key(folder)
    names = (signing.KEY_ENV, signing.CERT_ENV, signing.PASSWORD_ENV, signing.SECRET_ENV)
    saved = {name: os.environ.get(name) for name in names}
    for name in names:
        os.environ.pop(name, None)
    os.environ.update({signing.KEY_ENV: str(key), signing.CERT_ENV: str(cert)})
    try:
        yield Path(folder)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
