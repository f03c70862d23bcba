"""The command a user runs, at width: `featureaudit run --methods weights,permutation` at 1,000 and 10,000 features.

Workload: a folder registry holding one Dense MLP F-64-1 (ReLU) per width and 500 test rows of
independent standard-normal features. Its weights are set by construction: five drivers feed the
hidden layer with weight 1, every other feature with small random weights (standard deviation
0.05/√features), so the truth is known — five features matter, the rest barely — and the model
is what a wide tabular model looks like to the audit.
The target is the model's own output plus a little noise.

Each width runs the installed command in a fresh subprocess, end to end: load the model and split,
the weights, permutation importance (5 repeats, adaptive), the correlated-cluster screen, the
verdict, the HTML and PDF report and results.json. Time is the subprocess's wall time; peak memory
is the largest resident set of the process tree (the command and anything it starts), sampled every
50 ms. The table also gives the PDF's page count, how many features the rank evidence tested
against every feature, and what the verdict said.

The last line: the time ratio 10,000/1,000 (10 would be linear in the features) and the peak at
10,000 features. `--full` adds 100,000 features (run it once, in the background: minutes, not
hours, and a few GB of disk for the model and split).

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python benchmarks/bench_wide.py [--full]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WIDTHS = (1_000, 10_000)
FULL_WIDTHS = WIDTHS + (100_000,)
N_ROWS, HIDDEN, DRIVERS, SEED = 500, 64, 5, 0
COMMAND = Path(sys.executable).with_name("featureaudit")


def write_registry(root: Path, n_features: int) -> str:
    """One version of a model whose drivers are known by construction; return the model's name."""
    import keras
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(SEED)
    features = [f"x{j}" for j in range(n_features)]
    X = rng.standard_normal((N_ROWS, n_features), dtype=np.float32)
    kernel = rng.normal(0.0, 0.05 / np.sqrt(n_features), size=(n_features, HIDDEN)).astype(np.float32)
    kernel[:DRIVERS] = 0.0
    kernel[np.arange(DRIVERS), np.arange(DRIVERS)] = 1.0
    model = keras.Sequential([keras.Input((n_features,)), keras.layers.Dense(HIDDEN, activation="relu"),
                              keras.layers.Dense(1)])
    model.layers[0].set_weights([kernel, np.full(HIDDEN, 0.5, np.float32)])
    model.layers[1].set_weights([np.ones((HIDDEN, 1), np.float32), np.zeros(1, np.float32)])
    y = model.predict(X, batch_size=N_ROWS, verbose=0)[:, 0] + 0.1 * rng.standard_normal(N_ROWS)
    name = f"wide{n_features}"
    folder = root / name / "v1"
    folder.mkdir(parents=True)
    model.save(folder / "model.keras")
    test = pd.DataFrame(X, columns=features)
    test["y"] = y.astype(np.float32)
    test.to_parquet(folder / "test.parquet", index=False)
    (folder / "manifest.json").write_text(json.dumps({"target": "y", "task": "regression"}))
    return name


def run_measured(args: list[str]) -> tuple[float, float, subprocess.CompletedProcess]:
    """Run a command; return its wall time, the peak resident set of its process tree (bytes), and the result."""
    start = time.perf_counter()
    process = psutil.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while process.poll() is None:
        try:
            tree = [process, *process.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass  # a process ended between listing and reading
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    out, err = process.communicate()
    return seconds, peak, subprocess.CompletedProcess(args, process.returncode, out, err)


def audit(root: Path, name: str, out: Path) -> dict:
    from pypdf import PdfReader

    seconds, peak, done = run_measured([str(COMMAND), "run", "--registry", str(root), "--model", name,
                                        "--methods", "weights,permutation", "--out", str(out)])
    if done.returncode != 0:
        sys.exit(f"featureaudit run at {name} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    pdf = next(out.rglob("*.pdf"))
    results = json.loads(next(out.rglob("results.json")).read_text())
    evidence = results["rank_evidence"].get("permutation", {})
    return {"seconds": seconds, "peak": peak, "pages": len(PdfReader(pdf).pages),
            "tested": evidence.get("tested"), "summary": evidence.get("summary", ""), "verdict": results["verdict"]}


def main(widths: tuple[int, ...]) -> None:
    rows = {}
    with tempfile.TemporaryDirectory(prefix="bench-wide-") as tmp:
        for n_features in widths:
            root = Path(tmp) / f"registry{n_features}"
            name = write_registry(root, n_features)
            rows[n_features] = audit(root, name, Path(tmp) / f"out{n_features}")
    print(f"{'features':>8}  {'seconds':>8}  {'peak GB':>7}  {'pages':>5}  {'tested':>6}  verdict; permutation evidence")
    for n_features, r in rows.items():
        print(f"{n_features:>8,}  {r['seconds']:>8.1f}  {r['peak'] / 1e9:>7.2f}  {r['pages']:>5}  {r['tested']:>6}  "
              f"{r['verdict']}; {r['summary']}")
    wide, narrow = rows[WIDTHS[-1]], rows[WIDTHS[0]]
    print(f"time ratio {WIDTHS[-1]}/{WIDTHS[0]} = {wide['seconds'] / narrow['seconds']:.1f}  "
          f"peak at {WIDTHS[-1]} features = {wide['peak'] / 1e9:.2f} GB")


if __name__ == "__main__":
    main(FULL_WIDTHS if "--full" in sys.argv[1:] else WIDTHS)
