"""Wide models: peak memory and time of permutation importance and SHAP at 100, 1,000 and 10,000 features.

Workload: an untrained Dense MLP F-64-1 (ReLU, seeded initialisers) on random data, 500 test rows
and 500 background-pool rows. For each width, each method runs in a fresh subprocess through the
plain functions the audit uses:

    permutation   tasks.subject.clusters.correlated_clusters on the test rows (the clustering step the permutation
                  and ablation tasks run first), then tasks.methods.permutation.permutation_importance on a
                  tasks.subject.modeling.Forward, 5 repeats, MSE
    shap          tasks.methods.shap.shap_importance with the audit's defaults (up to 1,000 rows,
                  100 background rows, the default work budget)

Time is the method's wall time in the child (the Forward built and traced, then the method), after
TensorFlow is imported and the data made. Peak memory is the child's VmHWM (peak resident set,
TensorFlow included) from /proc. The memory budget is the default unless FEATUREAUDIT_MEMORY_MB
is set. The table says how each model was evaluated (whole rows, or after its first Dense layer)
and what SHAP reduced; the permutation row also says what its clustering step found, its time
(included in the row's) and its own peak above the memory it started from.

This MLP's input feeds one Dense layer, so from 512 features both methods evaluate it after that
layer. A model that cannot be (a Normalization layer first, named inputs) is fed whole rows, whose
work grows as the square of the features (permutation: 10,000 units × 2,500 copies × 10,000
values): far too long to run here at 10,000 features, so two probes measure that path's memory
only, on a slice of the work: permutation of the first 100 units, and one explained row's chains
against 10 background rows. A third probe is clustering's worst case: every feature correlated with
every other (one factor plus a little noise), so all 10,000 form one group and complete linkage
runs on all of them. They count in the peak of the last line, not in its time ratio.

The last line: the largest peak at 10,000 features (probes included) and the ratio of the total
time of both methods at 10,000 features to that at 1,000 (10 would be linear in the features).

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python benchmarks/bench_wide_methods.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WIDTHS = (100, 1_000, 10_000)
METHODS = ("permutation", "shap")
PROBES = ("permutation, whole rows", "shap, whole rows",  # at the widest width: memory of the general path
          "clusters, one group")  # and of clustering when every feature correlates with every other
PROBE_UNITS, PROBE_BACKGROUND = 100, 10
N_TEST, N_POOL, HIDDEN, N_REPEATS, SEED = 500, 500, 64, 5, 0


_PEAK_BEFORE_RESET = [0]  # the peak this process had reached when reset_peak_rss last reset the kernel's count


def status_bytes(field: str) -> int:
    """A size from /proc/self/status (VmHWM: the peak resident set since the last reset; VmRSS: now)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_rss_bytes() -> int:
    """This process's peak resident set size, counting what it reached before a reset."""
    return max(status_bytes("VmHWM"), _PEAK_BEFORE_RESET[0])


def reset_peak_rss() -> int:
    """Reset the kernel's peak resident set to the current size (clear_refs), keeping the peak so far for
    :func:`peak_rss_bytes`; return the current size."""
    _PEAK_BEFORE_RESET[0] = peak_rss_bytes()
    Path("/proc/self/clear_refs").write_text("5")
    return status_bytes("VmRSS")


def clustering(X, features) -> str:
    """Run the methods' clustering step; say what it found, its time and its own peak above where it started."""
    from tasks.subject.clusters import correlated_clusters

    start_rss, tick = reset_peak_rss(), time.perf_counter()
    clusters = correlated_clusters(X, features, random_state=SEED)
    seconds, extra = time.perf_counter() - tick, status_bytes("VmHWM") - start_rss
    largest = max((len(c.columns) for c in clusters), default=0)
    return (f"clusters: {len(clusters)} (largest {largest}) in {seconds:.1f} s, "
            f"+{extra / 1e9:.2f} GB")


def child(method: str, n_features: int) -> dict:
    """Run one method on one width; return its time, peak memory and what it did."""
    import keras
    import numpy as np

    from tasks.core.metrics import METRICS
    from tasks.methods.permutation import permutation_importance
    from tasks.methods.shap import sampling_shap, shap_importance
    from tasks.subject.modeling import Forward

    rng = np.random.default_rng(SEED)
    X = rng.standard_normal((N_TEST, n_features), dtype=np.float32)
    pool = rng.standard_normal((N_POOL, n_features), dtype=np.float32)
    init = keras.initializers.GlorotUniform(seed=SEED)
    model = keras.Sequential([keras.Input((n_features,)),
                              keras.layers.Dense(HIDDEN, activation="relu", kernel_initializer=init),
                              keras.layers.Dense(1, kernel_initializer=init)])
    features = tuple(f"x{j}" for j in range(n_features))
    y = X[:, :5].sum(axis=1)
    start = time.perf_counter()
    if method == PROBES[2]:  # before the model: the clustering step on strongly correlated columns
        factor = rng.standard_normal((N_TEST, 1), dtype=np.float32)
        did = clustering(factor + np.float32(0.1) * X, features)
        return {"seconds": time.perf_counter() - start, "peak": peak_rss_bytes(), "path": "-", "did": did}
    did = clustering(X, features) if method == "permutation" else ""
    forward = Forward(model, features)
    path = "whole rows" if forward.first_layer is None else f"after first layer ({forward.first_layer.width})"
    if method == "permutation":
        permutation_importance(forward, X, y, metric=METRICS["mse"], n_repeats=N_REPEATS, random_state=SEED)
    elif method == "shap":
        _, _, raw, _ = shap_importance(model, features, X, pool, random_state=SEED, forward=forward)
        plan = raw.plan
        did = f"{plan.rows} rows, {plan.background} background rows, {plan.work:.2g} input values"
    elif method == PROBES[0]:  # a plain callable is fed whole rows
        units = {str(j): [j] for j in range(PROBE_UNITS)}
        permutation_importance(lambda Z: forward(Z), X, y, metric=METRICS["mse"], n_repeats=N_REPEATS,
                               random_state=SEED, units=units)
        path, did = "whole rows", f"memory probe: {PROBE_UNITS} of {n_features:,} units"
    else:
        sampling_shap(lambda Z: forward(Z), X[:1], pool[:PROBE_BACKGROUND], random_state=SEED)
        path, did = "whole rows", f"memory probe: 1 row, {PROBE_BACKGROUND} background rows"
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak": peak_rss_bytes(), "path": path, "did": did}


def main() -> None:
    rows = []
    for n_features in WIDTHS:
        for method in METHODS + (PROBES if n_features == WIDTHS[-1] else ()):
            out = subprocess.run([sys.executable, __file__, "--child", method, str(n_features)],
                                 capture_output=True, text=True, cwd=ROOT)
            if out.returncode != 0:
                sys.exit(f"{method} at {n_features} features failed:\n{out.stderr[-2000:]}")
            rows.append((n_features, method, json.loads(out.stdout.strip().splitlines()[-1])))
    print(f"{'features':>8}  {'method':<22}  {'seconds':>8}  {'peak GB':>7}  evaluated as / did")
    for n_features, method, r in rows:
        print(f"{n_features:>8,}  {method:<22}  {r['seconds']:>8.1f}  {r['peak'] / 1e9:>7.2f}  {r['path']}"
              + (f"; {r['did']}" if r["did"] else ""))
    total = {w: sum(r["seconds"] for n, m, r in rows if n == w and m in METHODS) for w in WIDTHS}
    peak = max(r["peak"] for n, _, r in rows if n == WIDTHS[-1])
    print(f"peak RSS at {WIDTHS[-1]} features = {peak / 1e9:.2f} GB  "
          f"time ratio {WIDTHS[-1]}/{WIDTHS[-2]} = {total[WIDTHS[-1]] / total[WIDTHS[-2]]:.1f}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], int(sys.argv[3]))))
    else:
        main()
