"""Calibration of the verdict: how often it cries wolf on faithful models, and how often it names a planted misranking.

Models whose truth is known by construction (tests/oracles.py): faithful ones (a linear Dense(1), the
same with 60 features of which 50 are noise, and an additive ReLU MLP, first-layer weights right by
construction) and misleading ones (a driver on a ×100 scale, two drivers that act only through an
interaction, an embedded categorical that does nothing); 5 seeds each. Each is audited with all four methods through the same plain
functions the flow runs, and judged by tasks/report/verdict.py.

Drift: each faithful model is audited a second time with another seed (permutation and SHAP), and
every importance change the history section would report is counted: each is a false claim.

Goal: faithful — no "disagree", at least 85% "agree"; misleading — every planted feature named in at
least 90% of runs, never "agree"; no drift reported on a seed-only rerun.
Last line: ``faithful: agree A/N, disagree D/N  misleading: named M/K, agree G/K``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings("ignore")

from tasks.core.result import ImportanceResult  # noqa: E402
from tasks.report.document import MethodEntry, ModelIdentity, ResultsDocument, RunEntry  # noqa: E402
from tasks.report.history import drift  # noqa: E402
from tests import oracles  # noqa: E402

FAITHFUL_SEEDS = range(5)
MISLEADING_SEEDS = range(5)


def _document(results: list[ImportanceResult], seed: int) -> ResultsDocument:
    """The parts of results.json that drift reads."""
    return ResultsDocument(model=ModelIdentity(name="oracle", version="v1"), run=RunEntry(id=str(seed), seed=seed),
                           methods={r.method: MethodEntry.from_result(r) for r in results}, verdict="not assessed",
                           status="complete")


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="featureaudit-verdict-"))
    faithful = {"agree": 0, "partly agree": 0, "disagree": 0, "not assessed": 0}
    misleading = {"named": 0, "agree": 0}
    n_faithful = n_misleading = 0
    drift_claims = drift_checked = 0
    started = time.perf_counter()
    cases = [(k, s) for k in oracles.FAITHFUL for s in FAITHFUL_SEEDS]
    cases += [(k, s) for k in oracles.KINDS if k not in oracles.FAITHFUL for s in MISLEADING_SEEDS]
    for kind, seed in cases:
        tick = time.perf_counter()
        case = oracles.build(root, kind, seed)
        results, comparison = oracles.audit(root, case, seed=0)
        named = oracles.named(case, comparison)
        warned = ", ".join(f.feature for f in comparison.findings) or "-"
        line = f"{kind:<12} seed {seed}: {comparison.verdict:<13} warned: {warned:<16}"
        if case.faithful:
            n_faithful += 1
            faithful[comparison.verdict] = faithful.get(comparison.verdict, 0) + 1
            again, _ = oracles.audit(root, case, seed=1, methods=("permutation", "shap"))
            first = _document([r for r in results if r.method in ("permutation", "shap")], 0)
            changes = drift(first, _document(again, 1))["changes"]
            claims = [f"{method}:{c['feature']}" for method, moved in changes.items() for c in moved]
            drift_claims += len(claims)
            drift_checked += sum(len(r.features) for r in again if r.ok)
            line += f" seed-only rerun: {len(claims)} changes reported {' '.join(claims)}"
        else:
            n_misleading += 1
            misleading["named"] += named
            misleading["agree"] += comparison.verdict == "agree"
            line += f" planted {', '.join(case.planted)}: {'named' if named else 'MISSED'}"
        print(f"{line}  ({time.perf_counter() - tick:.0f} s)", flush=True)
    print(f"faithful verdicts: {faithful}; drift on seed-only reruns: {drift_claims} of {drift_checked} "
          f"feature×method comparisons; {time.perf_counter() - started:.0f} s in all")
    print(f"faithful: agree {faithful['agree']}/{n_faithful}, disagree {faithful['disagree']}/{n_faithful}  "
          f"misleading: named {misleading['named']}/{n_misleading}, agree {misleading['agree']}/{n_misleading}")


if __name__ == "__main__":
    main()
