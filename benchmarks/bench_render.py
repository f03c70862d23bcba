"""How long the report takes to render: the context and HTML (charts included), then the PDF, for the demo and for
synthetic audits of 30 and 200 features (weights, permutation and a bootstrap method, as the layout test draws them).

The demo's results are its own: ``featureaudit demo`` runs once into a temporary folder (about 2 minutes), and its
stored results (``.featureaudit-cache``) are read back and rendered here. Each report is rendered 3 times
(``--full``: 10); the medians are printed, with the PDF's pages. Goal: the demo's PDF in 2 s or less.

Last line: ``demo: context and HTML A s, PDF B s, N pages``.
"""

from __future__ import annotations

import argparse
import io
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


def demo_results(out: Path) -> tuple[object, list[ImportanceResult]]:
    """Run the demo into ``out`` and read its stored results back, in table order."""
    done = subprocess.run([str(Path(sys.executable).with_name("featureaudit")), "demo", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"featureaudit demo: exit {done.returncode}: {done.stderr.strip()}")
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
    version = resolve_version(str(out / "demo-registry"), "credit-demo")
    return version, [r for r in results if isinstance(r, ImportanceResult)]


def synthetic(version, n: int) -> tuple[object, list[ImportanceResult]]:
    """Weights, permutation and a bootstrap method on ``n`` features, the drivers the last ten."""
    names = tuple(f"feature_{j}_of_{n}" for j in range(n))
    object.__setattr__(version, "features", names)
    rng = np.random.default_rng(n)
    drivers = np.zeros(n)
    drivers[-10:] = np.arange(10, 0, -1)
    weights = ImportanceResult.from_samples("weights", "weight-based", names, rng.random(n))
    perm = ImportanceResult.from_samples("permutation", "behavioural", names,
                                         drivers[:, None] + 0.01 * rng.standard_normal((n, 5)))
    draws = drivers[:, None] + 0.01 * rng.standard_normal((n, 200))
    shap = ImportanceResult.from_samples("shap", "behavioural", names, draws, sampling="bootstrap",
                                         interval=(np.percentile(draws, 2.5, axis=1),
                                                   np.percentile(draws, 97.5, axis=1)))
    return version, [weights, perm, shap]


def timed(version, results: list[ImportanceResult], repeats: int) -> tuple[float, float, int]:
    """Median seconds of the context and HTML, and of the PDF; the PDF's pages."""
    import pypdf

    comparison = compare(results)
    html_s, pdf_s = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        html = render_html(build_context(version, results, comparison, RUN))
        middle = time.perf_counter()
        pdf = render_pdf(html)
        html_s.append(middle - start)
        pdf_s.append(time.perf_counter() - middle)
    return statistics.median(html_s), statistics.median(pdf_s), len(pypdf.PdfReader(io.BytesIO(pdf)).pages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="10 renders of each report instead of 3")
    repeats = 10 if parser.parse_args().full else 3
    with tempfile.TemporaryDirectory() as folder:
        version, results = demo_results(Path(folder))
        lines = []
        for n in (30, 200):
            base = resolve_version(str(Path(folder) / "demo-registry"), "credit-demo")
            html_s, pdf_s, pages = timed(*synthetic(base, n), repeats)
            lines.append(f"{n} features: context and HTML {html_s:.2f} s, PDF {pdf_s:.2f} s, {pages} pages")
        html_s, pdf_s, pages = timed(version, results, repeats)
    print("\n".join(lines))
    print(f"demo: context and HTML {html_s:.2f} s, PDF {pdf_s:.2f} s, {pages} pages")


if __name__ == "__main__":
    main()
