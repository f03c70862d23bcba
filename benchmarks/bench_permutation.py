"""Permutation importance: ours against scikit-learn's around model.predict, and against the bare forward pass.

Reference workload: an MLP 20-64-32-1 (ReLU) on 20 features, 5,000 test rows, 5 repeats, MSE.

    (a) sklearn.inspection.permutation_importance through a thin estimator whose predict calls model.predict
    (b) tasks.methods.permutation.permutation_importance (many permuted copies per compiled forward call)
    (c) the bare forward pass (the same tasks.subject.modeling.Forward) over as many rows as (b) scores:
        n_features × n_repeats × n_rows permuted rows plus the n_rows of the baseline

Every timing is taken after a warm-up call, so tracing and Keras' predict-function build are not
counted. (a) runs once (it takes seconds); (b) and (c) report the median of several runs.
The last line prints a/b (target ≥ 30), b/c (target ≤ 1.5) and the largest gap between the two
implementations' mean importances in units of the standard error of their difference.

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python benchmarks/bench_permutation.py
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from sklearn.base import BaseEstimator, RegressorMixin  # noqa: E402
from sklearn.inspection import permutation_importance as sklearn_permutation_importance  # noqa: E402

from tasks.core.metrics import METRICS  # noqa: E402
from tasks.methods.permutation import permutation_importance  # noqa: E402
from tasks.subject.modeling import Forward  # noqa: E402

N_FEATURES, N_TRAIN, N_TEST, N_REPEATS, SEED = 20, 20_000, 5_000, 5, 0
TIMED_RUNS = 5


class KerasPredictor(RegressorMixin, BaseEstimator):
    """The thinnest scikit-learn estimator around a fitted Keras model: predict calls model.predict."""

    def __init__(self, model=None):
        self.model = model

    def fit(self, X, y):
        return self

    def predict(self, X):
        return self.model.predict(np.asarray(X, dtype=np.float32), verbose=0)[:, 0]


def workload(random_state: int = SEED):
    """A trained MLP 20-64-32-1 and a 5,000-row test split whose target depends on the first features."""
    import keras

    rng = np.random.default_rng(random_state)
    coef = np.zeros(N_FEATURES)
    coef[:8] = np.linspace(2.0, 0.25, 8)

    def frame(n):
        X = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
        y = X @ coef + 0.8 * X[:, 0] * X[:, 1] + 0.5 * np.sin(2 * X[:, 2]) + 0.1 * rng.normal(size=n)
        return X, y.astype(np.float32)

    X_train, y_train = frame(N_TRAIN)
    X_test, y_test = frame(N_TEST)
    keras.utils.set_random_seed(random_state)
    model = keras.Sequential(
        [
            keras.Input((N_FEATURES,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
    model.fit(X_train, y_train, epochs=8, batch_size=256, verbose=0)
    return model, X_test, y_test


def timed(fn, runs: int = 1) -> tuple[float, object]:
    """Median wall time of ``runs`` calls, and the last call's value."""
    times, value = [], None
    for _ in range(runs):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def main() -> None:
    model, X, y = workload()
    features = tuple(f"x{j}" for j in range(N_FEATURES))
    forward = Forward(model, features)
    estimator = KerasPredictor(model)
    print(f"workload: MLP {N_FEATURES}-64-32-1, {N_TEST} test rows, {N_FEATURES} features, {N_REPEATS} repeats")

    model.predict(X[:10], verbose=0)  # warm-ups: build Keras' predict function, trace ours
    ours = lambda: permutation_importance(  # noqa: E731
        forward, X, y, metric=METRICS["mse"], n_repeats=N_REPEATS, random_state=SEED
    )
    ours()

    t_a, theirs = timed(
        lambda: sklearn_permutation_importance(
            estimator, X, y, scoring="neg_mean_squared_error", n_repeats=N_REPEATS, random_state=SEED
        )
    )
    print(f"(a) sklearn permutation_importance around model.predict: {t_a:.3f} s")

    t_b, scores = timed(ours, TIMED_RUNS)
    print(f"(b) ours: {t_b:.4f} s (median of {TIMED_RUNS})")

    total_rows = N_FEATURES * N_REPEATS * N_TEST + N_TEST
    X_big = np.tile(X, (total_rows // N_TEST, 1))
    forward(X_big[: forward.batch_rows])
    t_c, _ = timed(lambda: forward(X_big), TIMED_RUNS)
    print(f"(c) bare forward pass over {total_rows} rows: {t_c:.4f} s (median of {TIMED_RUNS})")

    ours_mean, ours_std = scores.importances.mean(axis=1), scores.importances.std(axis=1, ddof=1)
    their_mean, their_std = theirs.importances_mean, theirs.importances.std(axis=1, ddof=1)
    se = np.sqrt((ours_std**2 + their_std**2) / N_REPEATS)
    gap = np.abs(ours_mean - their_mean) / np.maximum(se, 1e-12)
    worst = int(np.argmax(gap))
    print(f"largest gap: feature x{worst}: ours {ours_mean[worst]:.4f}, sklearn {their_mean[worst]:.4f}, "
          f"se {se[worst]:.4f} (different permutations: |gap|/se is about |N(0, 1)|, its max over 20 features ~2)")
    print(f"a/b = {t_a / t_b:.1f}  b/c = {t_b / t_c:.2f}  max |ours - sklearn| / se = {gap.max():.1f}")


if __name__ == "__main__":
    main()
