"""SHAP speed and agreement: our explainer against shap.KernelExplainer on 1,000 rows of the reference MLP.

The reference model is a 20-feature MLP (hidden 64, 32, ReLU) trained briefly on synthetic data
with a linear part, a sine and an interaction. "Ours" is ``tasks.methods.shap.explain`` as
the audit calls it (the Shapley sampling estimator, 100 background rows sampled from the training
split). KernelExplainer gets a k-means summary of the training split (10 centres) and
``l1_reg=False``: its default, ``num_features(10)``, would zero the SHAP values of half of the 20
features, which makes them incomparable. KernelExplainer explains one row per model call, so it is
timed on a subset of the rows and its time extrapolated per row; the attributions are compared on
that subset. KernelExplainer draws from NumPy's global generator, which this script does not seed.
Both sides are timed warm, each after one call that builds its graphs (the cold first call of
ours is printed too: one audit pays it once).

Last line: ``speed ratio = R  mean|ours - kernel| / mean|phi| = D``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

N_FEATURES = 20
N_ROWS = 1000
N_KERNEL_ROWS = 50


def reference_model(seed: int = 0):
    """The reference 20-64-32-1 MLP, trained for a few epochs on synthetic data; returns (model, train X, test X)."""
    import keras

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(6000, N_FEATURES)).astype(np.float32)
    w = rng.normal(size=N_FEATURES)
    y = (X @ w + np.sin(2 * X[:, 0]) + X[:, 1] * X[:, 2]).astype(np.float32)
    init = lambda k: keras.initializers.GlorotUniform(seed=seed + k)  # noqa: E731
    model = keras.Sequential([
        keras.Input((N_FEATURES,), name="features"),
        keras.layers.Dense(64, activation="relu", kernel_initializer=init(1)),
        keras.layers.Dense(32, activation="relu", kernel_initializer=init(2)),
        keras.layers.Dense(1, kernel_initializer=init(3)),
    ])
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
    model.fit(X[:5000], y[:5000], epochs=5, batch_size=128, shuffle=False, verbose=0)
    return model, X[:5000], X[5000:]


def main() -> None:
    import shap

    from tasks.methods.shap import explain, sampling_shap
    from tasks.subject.modeling import Forward

    model, train, test = reference_model()
    features = tuple(f"x{i}" for i in range(N_FEATURES))
    rows = test[:N_ROWS]
    rng = np.random.default_rng(0)
    background = train[rng.choice(len(train), size=100, replace=False)]
    forward = Forward(model, features)
    forward(rows)  # compile once, outside the timings

    start = time.perf_counter()
    explain(model, features, rows[:50], background, random_state=1, forward=forward)
    print(f"ours, first call: {time.perf_counter() - start:.2f} s for 50 rows")
    start = time.perf_counter()
    ours = explain(model, features, rows, background, random_state=1, forward=forward)
    ours_seconds = time.perf_counter() - start
    print(f"ours: {ours.explainer} on {N_ROWS} rows x {N_FEATURES} features, {len(background)} background rows: "
          f"{ours_seconds:.2f} s; largest additivity deviation {ours.max_deviation:.2g}; "
          f"Monte Carlo standard error of phi: median {np.median(ours.mc_se):.2g}, largest {ours.mc_se.max():.2g} "
          f"(mean|phi| {np.abs(ours.values).mean():.2g})")

    summary = shap.kmeans(train, 10)
    kernel = shap.KernelExplainer(forward, summary)
    kernel.shap_values(rows[:2], silent=True, l1_reg=False)  # warm up
    start = time.perf_counter()
    kernel_values = np.asarray(kernel.shap_values(rows[:N_KERNEL_ROWS], silent=True, l1_reg=False))
    kernel_per_row = (time.perf_counter() - start) / N_KERNEL_ROWS
    kernel_seconds = kernel_per_row * N_ROWS
    print(f"shap.KernelExplainer (k-means background of 10, l1_reg=False, {2 * N_FEATURES + 2048} samples per row): "
          f"{kernel_per_row * 1000:.0f} ms per row over {N_KERNEL_ROWS} rows -> {kernel_seconds:.1f} s for {N_ROWS} rows "
          "(extrapolated)")

    scale = np.abs(kernel_values).mean()
    same_background, _, _, _ = sampling_shap(forward, rows[:N_KERNEL_ROWS], summary.data, random_state=2)
    print("estimator check, our sampler on the same 10 k-means centres (weights ignored): "
          f"mean|ours - kernel| / mean|phi| = {np.abs(same_background - kernel_values).mean() / scale:.3f}")
    difference = np.abs(ours.values[:N_KERNEL_ROWS] - kernel_values).mean() / scale
    print(f"speed ratio = {kernel_seconds / ours_seconds:.1f}  mean|ours - kernel| / mean|phi| = {difference:.2f}")


if __name__ == "__main__":
    main()
