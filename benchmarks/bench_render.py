"""How long the report takes to render, and how many pages it has: the context and HTML (charts included), then
the PDF, for the demo and for real audits of trained models with 30 and 200 features.

The demo: the credit model of ``featureaudit demo``, audited by every method that applies (about 2 minutes). The wide models: a Dense(32)-Dense(1) MLP trained
for 3 epochs on 600 rows of ``y = Σ_{j<10} (10 - j)·x_j + noise`` over 30 or 200 standard normal features (seeded),
audited by ``featureaudit run --methods weights,permutation,shap --shap-rows 200`` (the issue's "weights,
permutation, SHAP" audit). Each run's stored results (``.featureaudit-cache``) are read back and rendered 3 times
(``--full``: 10); the medians are printed with the PDF's pages. Goal: the demo's PDF in 2 s or less; the 30-feature
audit in at most 14 pages, the 200-feature one in at most 4 more.

Last line: ``demo: context and HTML A s, PDF B s, N pages``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.core.result import ImportanceResult  # noqa: E402
from tasks.methods.cache import ResultsSerializer  # noqa: E402
from tasks.methods.table import METHODS  # noqa: E402
from tasks.registry.versions import resolve_version  # noqa: E402
from tasks.report.render import RunInfo, build_context, render_html, render_pdf  # noqa: E402
from tasks.report.verdict import compare  # noqa: E402

RUN = RunInfo(run_id="20260101T000000Z-bench0", started=datetime(2026, 1, 1, tzinfo=timezone.utc), seed=0)


def stored_results(out: Path) -> list[ImportanceResult]:
    """The results a run stored in ``out``'s cache, in table order."""
    stored = {}
    for path in (out / ".featureaudit-cache").iterdir():
        name = path.name.rsplit("-", 1)[0]
        if name in METHODS or name == "ablation-results":
            record = json.loads(path.read_bytes())
            stored[name.removesuffix("-results")] = ResultsSerializer().loads(record["result"].encode())
    results = []
    for method in METHODS:
        value = stored.get(method, [])
        results += list(value) if isinstance(value, (list, tuple)) else [value]
    return [r for r in results if isinstance(r, ImportanceResult)]


def command(*args: str) -> None:
    done = subprocess.run([str(Path(sys.executable).with_name("featureaudit")), *args], capture_output=True,
                          text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"featureaudit {args[0]}: exit {done.returncode}: {done.stderr.strip()}")


def demo(out: Path):
    """The demo's credit model, audited as ``featureaudit demo`` audits it (every method that applies)."""
    from tasks.demo import MODEL_NAME, build_demo_registry

    registry = build_demo_registry(out / "demo-registry")
    command("run", "--registry", str(registry), "--model", MODEL_NAME, "--out", str(out))
    return resolve_version(str(registry), MODEL_NAME), stored_results(out), _pages(out)


def wide(out: Path, n: int):
    """A trained MLP on ``n`` features, its drivers the first ten, audited by weights, permutation and SHAP."""
    import keras
    import pandas as pd

    from tests.helpers import write_version

    rng = np.random.default_rng(n)
    names = [f"feature_{j}_of_{n}" for j in range(n)]
    X = rng.normal(size=(600, n)).astype("float32")
    effect = np.zeros(n)
    effect[:10] = np.arange(10, 0, -1)
    frame = pd.DataFrame(X, columns=names)
    frame["y"] = (X @ effect + rng.normal(0, 1, 600)).astype("float32")
    keras.utils.set_random_seed(n)
    model = keras.Sequential([keras.Input((n,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    model.fit(X[:400], frame["y"].to_numpy()[:400], epochs=3, batch_size=32, verbose=0)
    registry = out / "registry"
    write_version(registry, f"wide{n}", "v1", model, frame.iloc[400:], frame.iloc[:400], features=names)
    command("run", "--registry", str(registry), "--model", f"wide{n}", "--out", str(out),
            "--methods", "weights,permutation,shap", "--shap-rows", "200")
    return resolve_version(str(registry), f"wide{n}"), stored_results(out), _pages(out)


def _pages(out: Path) -> int:
    """The pages of the report the run wrote under ``out``."""
    import pypdf

    [report] = out.glob("*/v1/*/report.pdf")
    return len(pypdf.PdfReader(report).pages)


def timed(version, results: list[ImportanceResult], pages: int, repeats: int) -> tuple[float, float, int]:
    """Median seconds of the context and HTML, and of the PDF; and ``pages``, the run's own report's."""
    comparison = compare(results)
    html_s, pdf_s = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        html = render_html(build_context(version, results, comparison, RUN))
        middle = time.perf_counter()
        render_pdf(html)
        html_s.append(middle - start)
        pdf_s.append(time.perf_counter() - middle)
    return statistics.median(html_s), statistics.median(pdf_s), pages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="10 renders of each report instead of 3")
    repeats = 10 if parser.parse_args().full else 3
    lines = []
    for n in (30, 200):
        with tempfile.TemporaryDirectory() as folder:
            html_s, pdf_s, pages = timed(*wide(Path(folder), n), repeats)
        lines.append(f"{n} features: context and HTML {html_s:.2f} s, PDF {pdf_s:.2f} s, {pages} pages")
    with tempfile.TemporaryDirectory() as folder:
        html_s, pdf_s, pages = timed(*demo(Path(folder)), repeats)
    print("\n".join(lines))
    print(f"demo: context and HTML {html_s:.2f} s, PDF {pdf_s:.2f} s, {pages} pages")


if __name__ == "__main__":
    main()
