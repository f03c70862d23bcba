"""Our LIME against the ``lime`` package's ``LimeTabularExplainer``: 8 rows × 5,000 samples on a 20-feature MLP.

The model: Dense(32)-Dense(16)-Dense(1), ReLU, trained for 5 epochs on 2,000 rows of ``y = Σ a_j·x_j + x0·x1``
(seeded). Both explain the same 8 test rows with 5,000 samples each, 8 features per surrogate, one sample set per
row, sampling around the row in standardized units (``lime``: ``sample_around_instance=True``,
``discretize_continuous=False``, its default kernel width 0.75·√features, which is ours too):

- ours: :func:`tasks.methods.lime.explain_rows`, all rows' samples in one batched pass of the compiled forward
  function;
- theirs: ``explain_instance`` per row, calling ``model.predict`` on its 5,000 samples.

Without the ``lime`` package (``pip install -c constraints.txt -e '.[bench]'``; ``make bench`` installs it), the
comparison is a per-row ``model.predict`` loop over the same samples, fitted by our own surrogate.
Last line: ``speed ratio = R  mean|ours - lime| / mean|lime| = D`` (``against a per-row predict loop`` without it),
where D compares the weights of the features both surrogates chose.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402

from tasks.methods.lime import explain_rows, kernel, perturb, row_stream, select, weighted_ridge  # noqa: E402
from tasks.subject.modeling import Forward  # noqa: E402

N_FEATURES, ROWS, SAMPLES, K = 20, 8, 5000, 8


def _model(X: np.ndarray, y: np.ndarray):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((N_FEATURES,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    model.fit(X, y, epochs=5, batch_size=64, verbose=0)
    return model


def main() -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((2000, N_FEATURES)).astype(np.float32)
    effects = np.linspace(2.0, 0.0, N_FEATURES)
    y = (X @ effects + X[:, 0] * X[:, 1]).astype(np.float32)
    model = _model(X, y)
    forward = Forward(model, tuple(f"x{j}" for j in range(N_FEATURES)))
    test = rng.standard_normal((100, N_FEATURES)).astype(np.float32)
    rows = np.arange(ROWS)
    scale = X.std(axis=0).astype(float)
    forward(test[:2])  # compile once, outside the timing

    tick = time.perf_counter()
    ours = explain_rows(forward, test.astype(float), rows, [None] * ROWS, scale=scale, levels={}, seed=0,
                        samples=SAMPLES, replicates=1, k=K)
    ours_seconds = time.perf_counter() - tick

    try:
        from lime.lime_tabular import LimeTabularExplainer
    except ImportError:
        LimeTabularExplainer = None
    if LimeTabularExplainer is not None:
        explainer = LimeTabularExplainer(X, mode="regression", discretize_continuous=False,
                                         sample_around_instance=True, random_state=0)
        tick = time.perf_counter()
        theirs = [explainer.explain_instance(test[i], lambda Z: model.predict(Z, verbose=0).ravel(),
                                             num_features=K, num_samples=SAMPLES) for i in rows]
        their_seconds = time.perf_counter() - tick
        differences, sizes = [], []
        for mine, exp in zip(ours, theirs):
            weights = dict(exp.as_map()[1])
            for j in set(int(c) for c in mine[0]["chosen"]) & set(weights):
                differences.append(abs(mine[0]["weights"][j] - weights[j]))  # both per standard deviation
                sizes.append(abs(weights[j]))
        deviation = float(np.mean(differences) / np.mean(sizes))
        print(f"ours {ours_seconds:.2f} s, lime {their_seconds:.2f} s for {ROWS} rows × {SAMPLES} samples")
        print(f"speed ratio = {their_seconds / ours_seconds:.1f}  mean|ours - lime| / mean|lime| = {deviation:.2f}")
        return

    tick = time.perf_counter()
    width = 0.75 * np.sqrt(N_FEATURES)
    for i in rows:  # the same samples, one model.predict per row
        samples, design = perturb(test[i].astype(float), scale, {}, SAMPLES, row_stream(0, int(i), 0))
        target = model.predict(samples, verbose=0).ravel().astype(float)
        weights = kernel(design, np.zeros(N_FEATURES, dtype=bool), width)
        weighted_ridge(design[:, select(design, target, weights, K)], target, weights)
    loop_seconds = time.perf_counter() - tick
    print(f"ours {ours_seconds:.2f} s, per-row predict loop {loop_seconds:.2f} s (the lime package is not installed)")
    print(f"speed ratio = {loop_seconds / ours_seconds:.1f}  against a per-row predict loop")


if __name__ == "__main__":
    main()
