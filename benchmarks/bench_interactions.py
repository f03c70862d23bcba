"""Friedman's H for 15 pairs (the top 6 features) × 300 rows × a 10-point grid, against the same statistics with
``model.predict`` called once per grid point.

The model: Dense(32)-Dense(16)-Dense(1), ReLU, trained for 3 epochs on 2,000 rows of ``y = Σ a_j·x_j + x0·x1``
over 8 standard normal features (seeded).

- ours: :func:`tasks.methods.interactions.interactions_audit`: per pair one stacked batch of every row at every
  grid combination, per feature one of every row at every grid value, through the compiled forward function;
  H, the unnormalised statistics, each feature's total and joint share, and 200 bootstrap draws for the
  intervals;
- theirs: the same tensors built with one ``model.predict`` call per grid point (100 per pair, 10 per feature),
  then the same statistics.

Last line: ``speed ratio = R  max|H ours - H per-point| = D``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import warnings
from itertools import combinations
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402

from benchmarks.bench_effects import N_FEATURES, frame, mlp  # noqa: E402  the same model, without the x2² term

TOP, ROWS, GRID = 6, 300, 10


def main() -> None:
    from tasks.methods import interactions as h
    from tasks.methods.effects import grid_of
    from tasks.methods.permutation import audit_permutation
    from tasks.registry.versions import resolve_version
    from tasks.subject.loaded import load_subject
    from tests.helpers import write_version

    rng = np.random.default_rng(0)
    train, test = frame(2000, rng, square=False), frame(1000, rng, square=False)
    model = mlp(train)
    root = Path(tempfile.mkdtemp(prefix="bench-interactions-"))
    write_version(root, "bench", "v1", model, test, train)
    version = resolve_version(root, "bench")
    subject = load_subject(version)
    permutation = audit_permutation(version, seed=0)
    subject.forward()(np.zeros((2, N_FEATURES)))  # compile once, outside the timing

    tick = time.perf_counter()
    ours = h.interactions_audit(subject, seed=0, n_features=TOP, rows=ROWS, grid=GRID,
                                upstream={"permutation": permutation})
    ours_seconds = time.perf_counter() - tick

    # the same rows, grids and bootstrap weights, the tensors from one model.predict per grid point
    features = subject.features
    chosen = list(ours.features)
    sampler = np.random.default_rng(np.random.SeedSequence([0, 36]))
    X_all = np.asarray(subject.test.X, dtype=float)
    X = X_all[h.sample_rows(len(X_all), ROWS, sampler)]
    weights = h.bootstrap_weights(len(X), h.BOOTSTRAP, sampler)
    index = {name: features.index(name) for name in chosen}
    grids = {name: grid_of(X[:, index[name]], GRID, categorical=False) for name in chosen}
    points = {name: h.snapped(X[:, index[name]], grids[name]) for name in chosen}
    predict = lambda Z: model.predict(Z.astype(np.float32), verbose=0).reshape(len(Z), -1)  # noqa: E731
    tick = time.perf_counter()
    for name in chosen:
        j = index[name]
        curves = []
        for value in grids[name]:
            Z = X.copy()
            Z[:, j] = value
            curves.append(predict(Z))
        h.feature_statistics(np.stack(curves, axis=1), points[name], weights)
    theirs = {}
    for first, second in combinations(chosen, 2):
        j, k = index[first], index[second]
        tensor = np.zeros((len(X), len(grids[first]), len(grids[second]), 1))
        for a, u in enumerate(grids[first]):
            for b, v in enumerate(grids[second]):
                Z = X.copy()
                Z[:, j], Z[:, k] = u, v
                tensor[:, a, b] = predict(Z)
        theirs[frozenset((first, second))] = float(h.pair_statistics(tensor, points[first], points[second],
                                                                     weights)[0][0])
    their_seconds = time.perf_counter() - tick
    deviation = max(abs(p.h - theirs[frozenset((p.first, p.second))]) for p in ours.details.pairs)
    print(f"ours {ours_seconds:.2f} s, model.predict per grid point {their_seconds:.2f} s for {len(theirs)} pairs "
          f"× {ROWS} rows × {GRID} grid points ({ours.details.evaluations:,} model evaluations)")
    print(f"speed ratio = {their_seconds / ours_seconds:.1f}  max|H ours - H per-point| = {deviation:.5f}")


if __name__ == "__main__":
    main()
