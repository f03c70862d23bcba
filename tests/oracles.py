"""Models whose truth is known, to judge the judgement: faithful ones and ones built to mislead the weights.

Every model is set by hand, so what its first-layer weights say and what it does are known by
construction; its data are drawn from the model itself plus noise, so retraining recovers it.

Faithful (the first-layer weights rank the features correctly):
- ``linear``: ``Dense(1)`` on standardized independent features; |w| is the effect.
- ``wide``: the linear model with 60 features, 10 drivers (effects 3 down to 0.3) and 50 noise
  features: agreement must not drown in the random order of the noise.
- ``additive``: a ReLU MLP ``y = Σ a_j·g(x_j)`` with one shared non-linear shape ``g`` and a block of
  hidden units per feature; feature j's first-layer weights are ``a_j`` times a fixed pattern, so
  |W| row sums, permutation, ablation and SHAP all order the features by ``a_j``.

Misleading (the weights misrank a planted feature, named in ``Case.planted``):
- ``scale``: the additive model with its strongest driver on a ×100 scale and its first-layer
  weights divided by 100 — the same function, weights that rank it near the bottom.
- ``interaction``: the additive model plus two features that act only through their product,
  reached through first-layer weights of 0.05 and amplified downstream (``Multiply``).
- ``embedding``: named inputs with an integer categorical behind an ``Embedding`` whose table is
  large but whose downstream weights are ~0: the weights rank it first, it does almost nothing.

Versions (:func:`build_version`): the ``linear`` and ``additive`` processes again under another version
name, with fresh data, some features' effects set otherwise (a planted change), and the model
optionally retrained on its own training split.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tests.helpers import write_version

DRIVERS = (3.0, 2.0, 1.5, 1.0, 0.6)  # effect sizes of the drivers, well apart
NOISE = 0.01  # effect size of the "noise" features: tiny but not exactly zero
_U = np.array([1.0, -1.0, 0.5, -0.5])  # first-layer pattern of a feature's hidden block
_V = np.array([1.0, 0.2, 1.0, 0.2])  # output weights of a block: g(x) = 1.5x for x > 0, 0.3|x| for x < 0
INTERACTION = 2.5
EPSILON = 0.05
WIDE_DRIVERS = tuple(np.geomspace(3.0, 0.3, 10).round(3))
KINDS = ("linear", "wide", "additive", "scale", "interaction", "embedding")
FAITHFUL = ("linear", "wide", "additive")
CHANGEABLE = ("linear", "additive")  # the kinds build_version can change and retrain


@dataclass(frozen=True)
class Case:
    kind: str
    seed: int
    features: tuple[str, ...]
    planted: tuple[str, ...]  # the features the weights misrank by construction (empty when faithful)
    version: str = ""  # the registry version folder; v<seed> when empty

    @property
    def faithful(self) -> bool:
        return not self.planted

    @property
    def folder(self) -> str:
        return self.version or f"v{self.seed}"


def build(root: Path, kind: str, seed: int, *, n_train: int = 1500, n_test: int = 1000, epochs: int = 8) -> Case:
    """Write ``<root>/<kind>/v<seed>/`` and return what is true about it."""
    rng = np.random.default_rng(seed)
    builder = {"linear": _linear, "wide": _wide, "additive": _additive, "scale": _scale, "interaction": _interaction,
               "embedding": _embedding}[kind]
    model, frame_of, features, planted, manifest = builder(rng)
    train, test = frame_of(n_train, rng), frame_of(n_test, rng)
    manifest = {"training": {"epochs": epochs, "batch_size": 64}, "features": list(features), **manifest}
    write_version(root, kind, f"v{seed}", model, test, train, **manifest)
    return Case(kind, seed, tuple(features), tuple(planted))


def build_version(root: Path, kind: str, seed: int, *, version: str, data_seed: int,
                  effects: Mapping[str, float] | None = None, retrain: bool = False,
                  n_train: int = 1500, n_test: int = 1000, epochs: int = 8) -> Case:
    """Write ``<root>/<kind>/<version>/``: the process of ``build(root, kind, seed)`` (same features, same signs)
    with data drawn from ``data_seed``, the effects named in ``effects`` set to those values, and with ``retrain``
    the model fitted for ``epochs`` on its training split from the true weights (in order, so it is reproducible)."""
    if kind not in CHANGEABLE:
        raise ValueError(f"build_version takes {', '.join(CHANGEABLE)}, not {kind!r}")
    builder = {"linear": _linear, "additive": _additive}[kind]
    model, frame_of, features, _, manifest = builder(np.random.default_rng(seed), effects=effects)
    unknown = set(effects or {}) - set(features)
    if unknown:
        raise ValueError(f"effects name {', '.join(sorted(unknown))}, not features of {kind!r}: {', '.join(features)}")
    data = np.random.default_rng(data_seed)
    train, test = frame_of(n_train, data), frame_of(n_test, data)
    if retrain:
        model.fit(train[list(features)].to_numpy(np.float32), train["y"].to_numpy(np.float32), epochs=epochs,
                  batch_size=64, shuffle=False, verbose=0)
    manifest = {"training": {"epochs": epochs, "batch_size": 64}, "features": list(features), **manifest}
    write_version(root, kind, version, model, test, train, **manifest)
    return Case(kind, seed, tuple(features), (), version)


def _names(n_drivers: int, n_noise: int, rng, extra: tuple[str, ...] = ()) -> list[str]:
    """Driver and noise columns in a seeded order, so no rule can lean on a column's position."""
    names = [f"d{i}" for i in range(n_drivers)] + [f"n{i}" for i in range(n_noise)] + list(extra)
    return [names[i] for i in rng.permutation(len(names))]


def _effects(features: list[str], changed: Mapping[str, float] | None = None) -> np.ndarray:
    changed = changed or {}
    return np.array([changed[f] if f in changed else DRIVERS[int(f[1:])] if f.startswith("d")
                     else NOISE if f.startswith("n") else 0.0 for f in features])


def _frame(features, rng, n, y_of, scale=None, integer=()):
    """Standard-normal columns (one on ``scale``), integer columns, and y = f(x) + noise."""
    data = {}
    for f in features:
        if f in integer:
            data[f] = rng.integers(0, 4, size=n)
        else:
            data[f] = (rng.normal(size=n) * (scale[1] if scale and f == scale[0] else 1.0)).astype(np.float32)
    frame = pd.DataFrame(data)
    frame["y"] = (y_of(frame) + 0.1 * rng.normal(size=n)).astype(np.float32)
    return frame


def _compile(model, lr=0.01):
    import keras

    model.compile(optimizer=keras.optimizers.Adam(lr), loss="mse")
    return model


def _linear(rng, effects: Mapping[str, float] | None = None):
    import keras

    features = _names(len(DRIVERS), 3, rng)
    w = _effects(features, effects) * rng.choice([-1.0, 1.0], size=len(features))
    model = keras.Sequential([keras.Input((len(features),), name="x"), keras.layers.Dense(1)])
    model.layers[0].set_weights([w.astype(np.float32)[:, None], np.zeros(1, np.float32)])
    y_of = lambda f: f[features].to_numpy(np.float64) @ w  # noqa: E731
    return _compile(model), lambda n, r: _frame(features, r, n, y_of), features, (), {}


def _wide(rng):
    import keras

    features = [f"w{i}" for i in range(len(WIDE_DRIVERS))] + [f"n{i}" for i in range(50)]
    features = [features[i] for i in rng.permutation(len(features))]
    w = np.array([WIDE_DRIVERS[int(f[1:])] if f.startswith("w") else NOISE for f in features])
    w *= rng.choice([-1.0, 1.0], size=len(features))
    model = keras.Sequential([keras.Input((len(features),), name="x"), keras.layers.Dense(1)])
    model.layers[0].set_weights([w.astype(np.float32)[:, None], np.zeros(1, np.float32)])
    y_of = lambda f: f[features].to_numpy(np.float64) @ w  # noqa: E731
    return _compile(model), lambda n, r: _frame(features, r, n, y_of), features, (), {}


def _additive_block(effects: np.ndarray, x_scale: np.ndarray | None = None):
    """First-layer kernel (F, 4F) with feature j's block ``a_j·u`` (divided by its scale), output (4F, 1) = v."""
    n = len(effects)
    kernel = np.zeros((n, 4 * n), np.float32)
    for j, a in enumerate(effects):
        kernel[j, 4 * j : 4 * j + 4] = a * _U / (1.0 if x_scale is None else x_scale[j])
    return kernel, np.tile(_V, n).astype(np.float32)[:, None]


def _g(x):
    return 1.5 * np.maximum(x, 0) + 0.3 * np.maximum(-x, 0)


def _additive(rng, scaled: str | None = None, effects: Mapping[str, float] | None = None):
    import keras

    features = _names(len(DRIVERS), 3, rng)
    effects = _effects(features, effects)
    x_scale = np.array([100.0 if f == scaled else 1.0 for f in features])
    kernel, out = _additive_block(effects, x_scale)
    x = keras.Input((len(features),), name="x")
    hidden = keras.layers.Dense(kernel.shape[1], activation="relu")
    head = keras.layers.Dense(1)
    model = keras.Model(x, head(hidden(x)))
    hidden.set_weights([kernel, np.zeros(kernel.shape[1], np.float32)])
    head.set_weights([out, np.zeros(1, np.float32)])
    y_of = lambda f: sum(a * _g(f[c].to_numpy(np.float64) / s) for c, a, s in zip(features, effects, x_scale))  # noqa: E731
    frame_of = lambda n, r: _frame(features, r, n, y_of, scale=(scaled, 100.0) if scaled else None)  # noqa: E731
    return _compile(model), frame_of, features, ((scaled,) if scaled else ()), {}


def _scale(rng):
    return _additive(rng, scaled="d0")


def _interaction(rng):
    import keras

    features = _names(len(DRIVERS) - 1, 2, rng, extra=("ia", "ib"))
    effects = np.array([DRIVERS[int(f[1:]) + 1] if f.startswith("d") else NOISE if f.startswith("n") else 0.0
                        for f in features])
    kernel, out = _additive_block(effects)
    n = len(features)
    x = keras.Input((n,), name="x")
    hidden, head = keras.layers.Dense(4 * n, activation="relu"), keras.layers.Dense(1)
    left, right = keras.layers.Dense(1, use_bias=False), keras.layers.Dense(1, use_bias=False)
    amplify = keras.layers.Dense(1, use_bias=False)
    product = amplify(keras.layers.Multiply()([left(x), right(x)]))
    model = keras.Model(x, keras.layers.Add()([head(hidden(x)), product]))
    hidden.set_weights([kernel, np.zeros(4 * n, np.float32)])
    head.set_weights([out, np.zeros(1, np.float32)])
    for layer, name in ((left, "ia"), (right, "ib")):
        column = np.zeros((n, 1), np.float32)
        column[features.index(name)] = EPSILON
        layer.set_weights([column])
    amplify.set_weights([np.array([[INTERACTION / EPSILON**2]], np.float32)])

    def y_of(f):
        additive = sum(a * _g(f[c].to_numpy(np.float64)) for c, a in zip(features, effects))
        return additive + INTERACTION * f["ia"].to_numpy(np.float64) * f["ib"].to_numpy(np.float64)

    return _compile(model), lambda n_, r: _frame(features, r, n_, y_of), features, ("ia", "ib"), {}


def _embedding(rng):
    import keras

    features = _names(len(DRIVERS), 2, rng, extra=("region",))
    numeric = [f for f in features if f != "region"]
    effects = _effects(numeric)
    kernel, out = _additive_block(effects)
    dims = 8
    inputs = {f: keras.Input((1,), name=f, dtype="int32" if f == "region" else "float32") for f in features}
    table = keras.layers.Embedding(4, dims)
    embedded = keras.layers.Flatten()(table(inputs["region"]))
    joined = keras.layers.Concatenate()([*(inputs[f] for f in numeric), embedded])
    hidden, head = keras.layers.Dense(kernel.shape[1], activation="relu"), keras.layers.Dense(1)
    model = keras.Model([inputs[f] for f in features], head(hidden(joined)))
    table.set_weights([rng.uniform(-1, 1, size=(4, dims)).astype(np.float32)])
    full = np.concatenate([kernel, np.full((dims, kernel.shape[1]), 1e-3, np.float32)])  # the embedding reaches ~nothing
    hidden.set_weights([full, np.zeros(kernel.shape[1], np.float32)])
    head.set_weights([out, np.zeros(1, np.float32)])
    y_of = lambda f: sum(a * _g(f[c].to_numpy(np.float64)) for c, a in zip(numeric, effects))  # noqa: E731
    frame_of = lambda n, r: _frame(features, r, n, y_of, integer=("region",))  # noqa: E731
    return _compile(model), frame_of, features, ("region",), {"categorical": ["region"]}


def audit(registry: Path, case: Case, *, seed: int = 0, methods=("weights", "permutation", "ablation", "shap")):
    """The audit's plain functions on one case, as the flow wires them (no Prefect): results and comparison."""
    from tasks.methods.ablation import audit_ablation
    from tasks.methods.permutation import audit_permutation
    from tasks.methods.shap import shap_audit
    from tasks.methods.weights import audit_weights
    from tasks.registry.versions import resolve_version
    from tasks.report.verdict import compare

    version = resolve_version(registry, case.kind, case.folder)
    results = []
    if "weights" in methods:
        results += audit_weights(version)
    if "permutation" in methods:
        results += audit_permutation(version, seed=seed)
    if "ablation" in methods:
        results += audit_ablation(version, seed=seed)
    if "shap" in methods:
        results.append(shap_audit(version, seed=seed))
    return results, compare(results)


def named(case: Case, comparison) -> bool:
    """Every planted feature is named in a warning."""
    warned = {f.feature for f in comparison.findings}
    return bool(case.planted) and set(case.planted) <= warned
