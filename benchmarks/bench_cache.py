"""An unchanged version audited again: the first full audit against the re-run that reuses its stored results.

Workload: the demo registry (8 features, a 64-32 MLP trained 25 epochs), every method of the table (weights,
permutation, ablation, SHAP, LIME) with their defaults, audited twice into one output folder on a temporary Prefect
server started before either is timed. The re-run still resolves and checks the version (hashing its files; the
loaded model comes from the process's subject cache, as it would within one process), compares, renders and writes
the full report; only the methods' results come from the store. Both runs' method sections of results.json must be
identical. Last line: ``unchanged re-run speed-up = R`` (first wall time / re-run wall time).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="bench-cache-prefect-")
os.environ.pop("FEATUREAUDIT_RESULTS_CACHE", None)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings("ignore")

from prefect.testing.utilities import prefect_test_harness  # noqa: E402

from flows.audit import audit_model  # noqa: E402
from tasks.demo import MODEL_NAME, build_demo_registry  # noqa: E402
from tasks.methods.table import AuditOptions  # noqa: E402


def audit(registry: Path, out: Path) -> tuple[float, dict]:
    tick = time.perf_counter()
    folder = Path(audit_model(registry=str(registry), model=MODEL_NAME, out=str(out)))
    seconds = time.perf_counter() - tick
    return seconds, json.loads((folder / "results.json").read_text())


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    registry = build_demo_registry(work / "registry", epochs=25)
    print("workload: the demo registry, every method, audited twice into one output folder")
    with prefect_test_harness(server_startup_timeout=120):
        first, computed = audit(registry, work / "reports")
        again, reused = audit(registry, work / "reports")
    identical = json.dumps(computed["methods"]) == json.dumps(reused["methods"])
    print(f"first run {first:.1f} s (computed)   re-run {again:.1f} s (reused: "
          f"{', '.join(reused['run'].get('reused', {})) or 'nothing'})   method results identical: "
          f"{'yes' if identical else 'no'}")
    if not identical or set(reused["run"].get("reused", {})) != set(AuditOptions().methods):
        sys.exit("the re-run did not reuse every method's identical result: no speed-up to report")
    print(f"unchanged re-run speed-up = {first / again:.1f}")


if __name__ == "__main__":
    main()
