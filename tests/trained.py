"""Trained models at graded strength: real Keras MLPs trained on processes whose drivers are known.

Unlike :mod:`tests.oracles`, nothing here is set by hand: each process below draws its data, a Keras
MLP is trained on it (seeded initialisers, Adam, a fixed number of epochs), and the registry version
holds the trained model with its splits.

Processes (``KINDS``; ``strength`` grades each):

- ``faithful``: ``y = Σ a_j·x_j`` with effects 3, 2, 1.5, 1, 0.6 and 3 noise features, standardized
  inputs: the weights should tell the truth (strength unused).
- ``scale``: the same, its strongest driver ``d0`` on a ×``strength`` scale (2, 3, 10, 100): the raw
  column's weights shrink by that factor.
- ``interaction``: drivers d2-d4 plus ``strength``·d0·d1, d0 and d1 with no main effect.
- ``zeroed``: the faithful process, trained; then 8 hidden units are added whose first-layer weights
  read the noise feature n0 with weight 3 and whose outgoing weights are 0 (seed 003: "in later stages
  the variable could be reduced to 0"). The function is unchanged; the weights rank n0 first.
- ``proxy``: the faithful process plus ``p0 = ρ·d0 + √(1 − ρ²)·noise`` with ρ = ``strength``, a
  correlated proxy with no effect of its own.
- ``no_signal``: a target unrelated to 3 inputs, 1,000 training rows, Dense(100)-Dropout(0.2)-Dense(50)
  (seed 001's third example).
- ``sin``: ``y = sin(x0·x1 + x2)`` on 300 training rows of U(-1, 1) inputs (the seeds' toy example).
- ``product``: ``y = strength·x0·x1 + x2`` with two noise features n0, n1, standardized inputs: x0 and x1
  act only jointly.
- ``square``: ``y = strength·x0² + x1`` with a noise feature n0, standardized inputs: additive, x0's effect
  a U, x1's a line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tests.helpers import write_version

KINDS = ("faithful", "scale", "interaction", "zeroed", "proxy", "no_signal", "sin", "product", "square")
EFFECTS = (3.0, 2.0, 1.5, 1.0, 0.6)
NOISE_SD = 0.3


@dataclass(frozen=True)
class Trained:
    kind: str
    strength: float
    seed: int
    features: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.kind}_{self.strength:g}".replace(".", "p")

    @property
    def folder(self) -> str:
        return f"v{self.seed}"


def _linear_frame(n: int, rng, *, scale: float = 1.0, proxy: float | None = None) -> pd.DataFrame:
    z = rng.standard_normal((n, 8))
    columns = {f"d{i}": z[:, i] for i in range(5)} | {f"n{i}": z[:, 5 + i] for i in range(3)}
    y = z[:, :5] @ np.array(EFFECTS) + NOISE_SD * rng.standard_normal(n)
    columns["d0"] = columns["d0"] * scale
    if proxy is not None:
        columns["p0"] = proxy * z[:, 0] + np.sqrt(max(0.0, 1.0 - proxy**2)) * rng.standard_normal(n)
    frame = pd.DataFrame({k: v.astype(np.float32) for k, v in columns.items()})
    frame["y"] = y.astype(np.float32)
    return frame


def _interaction_frame(n: int, rng, strength: float) -> pd.DataFrame:
    z = rng.standard_normal((n, 8))
    y = strength * z[:, 0] * z[:, 1] + z[:, 2:5] @ np.array(EFFECTS[1:4]) + NOISE_SD * rng.standard_normal(n)
    frame = pd.DataFrame({f"d{i}": z[:, i].astype(np.float32) for i in range(5)}
                         | {f"n{i}": z[:, 5 + i].astype(np.float32) for i in range(3)})
    frame["y"] = y.astype(np.float32)
    return frame


def _noise_frame(n: int, rng) -> pd.DataFrame:
    frame = pd.DataFrame({f"x{i}": rng.standard_normal(n).astype(np.float32) for i in range(3)})
    frame["y"] = rng.standard_normal(n).astype(np.float32)
    return frame


def _sin_frame(n: int, rng) -> pd.DataFrame:
    X = rng.uniform(-1, 1, (n, 3))
    frame = pd.DataFrame({f"x{i}": X[:, i].astype(np.float32) for i in range(3)})
    frame["y"] = np.sin(X[:, 0] * X[:, 1] + X[:, 2]).astype(np.float32)
    return frame


def _product_frame(n: int, rng, strength: float) -> pd.DataFrame:
    z = rng.standard_normal((n, 5))
    y = strength * z[:, 0] * z[:, 1] + z[:, 2] + NOISE_SD * rng.standard_normal(n)
    frame = pd.DataFrame({name: z[:, i].astype(np.float32) for i, name in enumerate(("x0", "x1", "x2", "n0", "n1"))})
    frame["y"] = y.astype(np.float32)
    return frame


def _square_frame(n: int, rng, strength: float) -> pd.DataFrame:
    z = rng.standard_normal((n, 3))
    y = strength * z[:, 0] ** 2 + z[:, 1] + NOISE_SD * rng.standard_normal(n)
    frame = pd.DataFrame({name: z[:, i].astype(np.float32) for i, name in enumerate(("x0", "x1", "n0"))})
    frame["y"] = y.astype(np.float32)
    return frame


def frame_of(kind: str, strength: float, n: int, rng) -> pd.DataFrame:
    """``n`` rows of the process."""
    if kind in ("faithful", "zeroed"):
        return _linear_frame(n, rng)
    if kind == "scale":
        return _linear_frame(n, rng, scale=strength)
    if kind == "proxy":
        return _linear_frame(n, rng, proxy=strength)
    if kind == "interaction":
        return _interaction_frame(n, rng, strength)
    if kind == "no_signal":
        return _noise_frame(n, rng)
    if kind == "product":
        return _product_frame(n, rng, strength)
    if kind == "square":
        return _square_frame(n, rng, strength)
    return _sin_frame(n, rng)


def _mlp(n_features: int, seed: int, kind: str):
    import keras

    init = keras.initializers.GlorotUniform(seed=seed)
    if kind == "no_signal":
        layers = [keras.layers.Dense(100, activation="relu", kernel_initializer=init),
                  keras.layers.Dropout(0.2, seed=seed),
                  keras.layers.Dense(50, activation="relu", kernel_initializer=keras.initializers.GlorotUniform(seed + 1))]
    else:
        layers = [keras.layers.Dense(32, activation="relu", kernel_initializer=init),
                  keras.layers.Dense(16, activation="relu", kernel_initializer=keras.initializers.GlorotUniform(seed + 1))]
    model = keras.Sequential([keras.Input((n_features,)), *layers,
                              keras.layers.Dense(1, kernel_initializer=keras.initializers.GlorotUniform(seed + 2))])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    return model


def _with_dead_units(model, row: int, n_units: int = 8, weight: float = 3.0):
    """The same function with ``n_units`` more hidden units that read input ``row`` and lead nowhere."""
    import keras

    (W1, b1), (W2, b2) = model.layers[0].get_weights(), model.layers[1].get_weights()
    extra = np.zeros((W1.shape[0], n_units), np.float32)
    extra[row] = weight
    wider = keras.Sequential([keras.Input((W1.shape[0],)), keras.layers.Dense(W1.shape[1] + n_units, activation="relu"),
                              *[type(layer).from_config(layer.get_config()) for layer in model.layers[1:]]])
    wider.layers[0].set_weights([np.concatenate([W1, extra], axis=1), np.concatenate([b1, np.zeros(n_units, np.float32)])])
    wider.layers[1].set_weights([np.concatenate([W2, np.zeros((n_units, W2.shape[1]), np.float32)]), b2])
    for new, old in zip(wider.layers[2:], model.layers[2:]):
        new.set_weights(old.get_weights())
    wider.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    return wider


def build(root: Path, kind: str, strength: float, seed: int, *, epochs: int = 30) -> Trained:
    """Draw the splits, train the model, write ``<root>/<name>/v<seed>/``; return what the case is."""
    import keras

    rng = np.random.default_rng(seed)
    small = kind in ("no_signal", "sin")
    train = frame_of(kind, strength, 300 if kind == "sin" else 1000 if kind == "no_signal" else 2000, rng)
    test = frame_of(kind, strength, 1000, rng)
    features = [c for c in train.columns if c != "y"]
    keras.utils.set_random_seed(seed)  # dropout and shuffling; one model is trained at a time
    model = _mlp(len(features), seed, kind)
    model.fit(train[features].to_numpy(), train["y"].to_numpy(), epochs=100 if small else epochs, batch_size=32,
              verbose=0)
    if kind == "zeroed":
        model = _with_dead_units(model, features.index("n0"))
    case = Trained(kind, strength, seed, tuple(features))
    manifest = {"features": features, "training": {"epochs": 100 if small else epochs, "batch_size": 32}}
    write_version(root, case.name, case.folder, model, test, train, **manifest)
    return case

