"""Retrain-ablation scales out: the same plan on a local Dask cluster of 1 worker, then of 2, side by side.

The flow hands ablation's jobs — one per (seed, chunk of units) — to its task runner; here the same
jobs go to a Dask cluster through ``client.submit(run_job, …)``, the plain function each Prefect job
task runs, so the measurement is the fan-out itself without Prefect's per-task bookkeeping. Each
worker has one thread and TensorFlow one intra-op thread (TF_NUM_INTRAOP_THREADS=1), so
workers × threads ≈ cores. Workload: 20 features, 8,000 training rows, MLP 64-32, 10 epochs,
4 seeds × 2 chunks = 8 jobs. Each cluster's workers first import TensorFlow and load the version
(a long-lived worker pays that once per model version, not per job); that warm-up is timed and
printed apart, and the speed-up is that of the jobs. Before the clusters start, the plan's time is
estimated as the flow estimates it (:func:`tasks.methods.ablation.estimate_seconds`: one timed retrain of
one branch, here with one TensorFlow thread like a worker's); the line before the last sets that
estimate beside the measured times of the jobs. Last line:
``speed-up 2 vs 1 workers = S  identical = yes|no``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["TF_NUM_INTRAOP_THREADS"] = "1"  # inherited by the workers
os.environ["TF_NUM_INTEROP_THREADS"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from tasks.methods.ablation import _cached_setup, estimate_seconds, load_setup, plan_for, run_ablation, run_job  # noqa: E402
from tasks.registry.versions import resolve_version  # noqa: E402
from tests.helpers import write_version  # noqa: E402

N_FEATURES, N_TRAIN, N_TEST, EPOCHS, SEEDS = 20, 8_000, 2_000, 10, 4


def registry() -> Path:
    import keras

    rng = np.random.default_rng(0)
    coef = np.linspace(2.0, 0.0, N_FEATURES)
    names = [f"x{j}" for j in range(N_FEATURES)]

    def frame(n: int) -> pd.DataFrame:
        X = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
        out = pd.DataFrame(X, columns=names)
        out["y"] = (np.tanh(X) @ coef + 0.1 * rng.normal(size=n)).astype(np.float32)
        return out

    init = keras.initializers.GlorotUniform(seed=1)
    model = keras.Sequential([keras.Input((N_FEATURES,)), keras.layers.Dense(64, activation="relu", kernel_initializer=init),
                              keras.layers.Dense(32, activation="relu", kernel_initializer=init), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    root = Path(tempfile.mkdtemp(prefix="featureaudit-scaling-"))
    write_version(root, "scaling", "v1", model, frame(N_TEST), frame(N_TRAIN),
                  training={"epochs": EPOCHS, "batch_size": 256})
    return root


def _warm(version) -> None:
    """On a worker: import TensorFlow and load the version once, as a long-lived worker has."""
    import tensorflow  # noqa: F401

    _cached_setup(version, 0)


def audit_on(workers: int, version, plan) -> tuple[float, float, np.ndarray]:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        tick = time.perf_counter()
        client.run(_warm, version)
        warm = time.perf_counter() - tick
        tick = time.perf_counter()

        def submit(jobs):
            return client.gather([client.submit(run_job, version, plan, job, pure=False) for job in jobs])

        run = run_ablation(plan, submit, n_features=N_FEATURES)
        return warm, time.perf_counter() - tick, run.importances


def main() -> None:
    version = resolve_version(registry(), "scaling")
    setup = load_setup(version)
    plan = plan_for(version, setup, n_seeds=SEEDS, max_seeds=SEEDS)
    tick = time.perf_counter()
    plan = replace(plan, estimated_seconds=estimate_seconds(setup, plan))
    calibration = time.perf_counter() - tick
    print(f"workload: {N_FEATURES} features, {N_TRAIN} train rows, MLP 64-32, {EPOCHS} epochs, "
          f"{SEEDS} seeds × {len(plan.chunks)} chunks = {SEEDS * len(plan.chunks)} jobs")
    warm_one, one, first = audit_on(1, version, plan)
    warm_two, two, second = audit_on(2, version, plan)
    print(f"warm-up (import, load): {warm_one:.1f} s and {warm_two:.1f} s; "
          f"with it: speed-up {(warm_one + one) / (warm_two + two):.2f}")
    print(f"jobs: 1 worker {one:.1f} s   2 workers {two:.1f} s")
    print(f"estimate before the jobs ({calibration:.1f} s to make): 1 worker {plan.estimate(1):.1f} s, "
          f"2 workers {plan.estimate(2):.1f} s; measured: {one:.1f} s and {two:.1f} s "
          f"(estimate / measured = {plan.estimate(1) / one:.2f} and {plan.estimate(2) / two:.2f})")
    identical = np.array_equal(first, second, equal_nan=True)
    print(f"speed-up 2 vs 1 workers = {one / two:.2f}  identical = {'yes' if identical else 'no'}")


if __name__ == "__main__":
    main()
