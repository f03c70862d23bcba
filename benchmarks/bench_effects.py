"""PD + ICE + ALE for 8 features × 5,000 rows × a 20-point grid, against scikit-learn's brute-force
``partial_dependence`` around ``model.predict``.

The model: Dense(32)-Dense(16)-Dense(1), ReLU, trained for 3 epochs on 2,000 rows of ``y = Σ a_j·x_j + x0·x1 +
x2²`` over 8 standard normal features (seeded).

- ours: :func:`tasks.methods.effects.effects_audit` on the version's subject: per feature one stacked batch of
  all grid values of all rows through the compiled forward function; PD, ICE, ALE, the support check and 200
  bootstrap draws for the bands;
- theirs: ``sklearn.inspection.partial_dependence(method="brute", kind="both")`` on the same 20 grid values
  per feature (``custom_values``), which calls ``model.predict`` once per grid point: PD and ICE only.

Then the shape labels against the truth of trained models (tests/trained.py: Keras MLPs trained on processes whose
effects are known), seeds 0-2 (``--full``: 0-9): ``square`` (y = x0² + x1: x0 non-monotone, x1 increasing, n0
flat), ``product`` (y = x0·x1 + x2: x0 and x1 heterogeneous, x2 increasing, n0 and n1 flat) and ``faithful`` (y =
Σ a_j·d_j: d0-d4 increasing, n0-n2 flat).

Last line: ``speed ratio = R  max|PD ours - PD sklearn| / PD range = D  shapes right N/M``, D over the 8 features,
N/M over every feature of every trained model, with the wrong ones listed on the line before.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

N_FEATURES, ROWS, GRID = 8, 5000, 20


def frame(n: int, rng, *, square: bool = True) -> pd.DataFrame:
    """``n`` rows of ``y = Σ a_j·x_j + x0·x1 (+ x2²)`` over 8 standard normal features (also bench_interactions')."""
    X = rng.standard_normal((n, N_FEATURES))
    y = X @ np.linspace(2.0, 0.2, N_FEATURES) + X[:, 0] * X[:, 1] + (X[:, 2] ** 2 if square else 0.0)
    frame = pd.DataFrame(X.astype(np.float32), columns=[f"x{j}" for j in range(N_FEATURES)])
    frame["y"] = y.astype(np.float32)
    return frame


def mlp(train: pd.DataFrame):
    """Dense(32)-Dense(16)-Dense(1), ReLU, trained for 3 epochs (seeded); also bench_interactions'."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((N_FEATURES,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    model.fit(train.drop(columns="y").to_numpy(), train["y"].to_numpy(), epochs=3, batch_size=64, verbose=0)
    return model


TRUTH = {
    "square": {"x0": "non-monotone", "x1": "increasing", "n0": "flat"},
    "product": {"x0": "heterogeneous", "x1": "heterogeneous", "x2": "increasing", "n0": "flat", "n1": "flat"},
    "faithful": {**{f"d{i}": "increasing" for i in range(5)}, **{f"n{i}": "flat" for i in range(3)}},
}


def shapes(seeds: range) -> tuple[int, int, list[str]]:
    """(labels right, labels given, the wrong ones) over the trained models."""
    from tasks.methods.effects import effects_audit
    from tasks.registry.versions import resolve_version
    from tasks.subject.loaded import load_subject
    from tests import trained

    root = Path(tempfile.mkdtemp(prefix="bench-effects-shapes-"))
    right, given, wrong = 0, 0, []
    for kind, truth in TRUTH.items():
        for seed in seeds:
            case = trained.build(root, kind, 1.0, seed)
            result = effects_audit(load_subject(resolve_version(root, case.name, case.folder)), seed=0,
                                   n_features=len(truth))
            for curve in result.details.curves:
                given += 1
                if curve.shape == truth[curve.feature]:
                    right += 1
                else:
                    wrong.append(f"{kind} seed {seed} {curve.feature}: {curve.shape} ({curve.shape_reason})")
    return right, given, wrong


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="10 seeds per trained model, not 3")
    seeds = range(10 if parser.parse_args().full else 3)
    from sklearn.base import BaseEstimator, RegressorMixin
    from sklearn.inspection import partial_dependence

    from tasks.methods.effects import effects_audit
    from tasks.registry.versions import resolve_version
    from tasks.subject.loaded import load_subject
    from tests.helpers import write_version

    rng = np.random.default_rng(0)
    train, test = frame(2000, rng), frame(ROWS, rng)
    model = mlp(train)
    root = Path(tempfile.mkdtemp(prefix="bench-effects-"))
    write_version(root, "bench", "v1", model, test, train)
    subject = load_subject(resolve_version(root, "bench"))
    subject.forward()(np.zeros((2, N_FEATURES)))  # compile once, outside the timing

    tick = time.perf_counter()
    ours = effects_audit(subject, seed=0, n_features=N_FEATURES, grid=GRID, rows=ROWS)
    ours_seconds = time.perf_counter() - tick

    class Keras(RegressorMixin, BaseEstimator):
        def __init__(self, model=None):
            self.model = model

        def fit(self, X, y=None):
            self.fitted_ = True
            return self

        def predict(self, X):
            return self.model.predict(np.asarray(X, dtype=np.float32), verbose=0).ravel()

    estimator = Keras(model).fit(None)
    X = test.drop(columns="y").to_numpy()
    curves = {c.feature: c for c in ours.details.curves}
    deviation = []
    tick = time.perf_counter()
    for j in range(N_FEATURES):
        grid = np.asarray(curves[f"x{j}"].grid, dtype=float)
        theirs = partial_dependence(estimator, X, [j], kind="both", method="brute", custom_values={j: grid})
        mine = np.asarray(curves[f"x{j}"].pd)
        deviation.append(np.max(np.abs(theirs["average"][0] - mine)) / max(np.ptp(mine), 1e-12))
    their_seconds = time.perf_counter() - tick
    print(f"ours {ours_seconds:.2f} s (PD, ICE, ALE, support, 200 bootstrap draws), scikit-learn brute "
          f"{their_seconds:.2f} s (PD and ICE) for {N_FEATURES} features × {ROWS} rows × {GRID} grid points")
    right, given, wrong = shapes(seeds)
    print("wrong shapes: " + ("; ".join(wrong) if wrong else "none"))
    print(f"speed ratio = {their_seconds / ours_seconds:.1f}  max|PD ours - PD sklearn| / PD range = "
          f"{max(deviation):.4f}  shapes right {right}/{given}")


if __name__ == "__main__":
    main()
