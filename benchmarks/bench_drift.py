"""Calibration of the drift rule between versions: how often it finds a planted change, how often it cries wolf.

Pairs of versions (v1, v2) of one process whose truth is known (tests/oracles.py, ``build_version``): the
``linear`` model and the ``additive`` ReLU MLP, 5 drivers and 3 noise features. v2 draws fresh data from the
same process with one planted change, or none:

- ``removed``: a driver's effect set to 0;
- ``halved``: a driver's effect halved;
- ``-20%``: a driver's effect cut by a fifth;
- ``added``: a noise feature (effect 0.01) made a driver of effect 1.0;
- ``control``: no change (the same process, another data seed).

The driver is d0 … d4 in turn over the seeds (effects 3, 2, 1.5, 1, 0.6), the noise feature n0 … n2. A true
change is a change of the data-generating effect, and only that: in a control pair, and for every feature but
the planted one, any importance reported changed is a false alarm, even when the two models really differ a
little. Both versions are audited with the same audit seed, in two conditions: ``set`` (each model's weights
are the true ones, so only the data differ) and ``retrained`` (each model fitted for its recipe's 8 epochs on
its own training split, starting from the true weights, so the two models differ as two trainings do).

Each version is audited through the same plain functions the flow runs (weights, permutation, SHAP, and
ablation in the retrained condition), the parts of results.json that drift reads built from the results,
and v2 compared with v1 by ``tasks.report.history.drift``, the rule the report's history and "since the last approved report"
sections use. Per method: detection = planted feature reported changed / planted changes; false alarms =
other features reported changed / comparisons, on planted and on control pairs, with the largest false
alarm's change as a share of the method's top importance (how material it is).
Last line (the behavioural methods in the retrained condition, the one a new version brings):
``drift: detected D/N planted changes, false alarms F/M unchanged comparisons``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings("ignore")

from tasks.core.result import ImportanceResult  # noqa: E402
from tasks.report.document import FeatureRecord, MethodEntry, ModelIdentity, ResultsDocument, RunEntry  # noqa: E402
from tasks.report.history import MATERIAL_SHARE, PREVIOUS_VERSION, drift  # noqa: E402
from tests import oracles  # noqa: E402

SEEDS = range(5)
AUDIT_SEED = 0
PLANTS = ("removed", "halved", "-20%", "added")
CONDITIONS = {"set": ("weights", "permutation", "shap"), "retrained": ("weights", "permutation", "ablation", "shap")}
#: Materiality floors compared (a change must be at least this share of the method's top importance);
#: the rule's own, tasks.report.history.MATERIAL_SHARE, is the one the table and the last line report.
FLOORS = (0.0, 0.025, 0.05, 0.10, 0.15)
#: (condition, floor, "behavioural" | "weight-based") -> found, planted, alarms, compared
SWEEP: dict[tuple[str, float, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))


def plant(kind: str, seed: int) -> tuple[str | None, dict[str, float]]:
    """The planted feature and the effects v2 sets (none for a control pair)."""
    driver = seed % len(oracles.DRIVERS)
    effect = oracles.DRIVERS[driver]
    return {
        "removed": (f"d{driver}", {f"d{driver}": 0.0}),
        "halved": (f"d{driver}", {f"d{driver}": effect / 2}),
        "-20%": (f"d{driver}", {f"d{driver}": effect * 0.8}),
        "added": (f"n{seed % 3}", {f"n{seed % 3}": 1.0}),
        "control": (None, {}),
    }[kind]


def _document(results: list[ImportanceResult], version: str) -> ResultsDocument:
    """The parts of results.json that drift reads."""
    return ResultsDocument(model=ModelIdentity(name="oracle", version=version),
                           run=RunEntry(id=version, seed=AUDIT_SEED),
                           methods={r.method: MethodEntry.from_result(r) for r in results}, verdict="not assessed",
                           status="complete")


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="featureaudit-drift-"))
    # (condition, method) -> counters; "found"/"planted" per plant, "alarms"/"compared" per planted|control
    counts: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    behavioural: set[str] = set()
    started = time.perf_counter()
    for condition, methods in CONDITIONS.items():
        for kind in oracles.CHANGEABLE:
            for seed in SEEDS:
                tick = time.perf_counter()
                registry = root / condition / f"{kind}-{seed}"
                retrain = condition == "retrained"
                base = oracles.build_version(registry, kind, seed, version="v1", data_seed=100 * seed,
                                             retrain=retrain)
                before = _document(oracles.audit(registry, base, seed=AUDIT_SEED, methods=methods)[0], "v1")
                line = []
                for j, change in enumerate((*PLANTS, "control"), start=1):
                    planted, effects = plant(change, seed)
                    case = oracles.build_version(registry, kind, seed, version=f"v2-{j}", data_seed=100 * seed + j,
                                                 effects=effects, retrain=retrain)
                    results, _ = oracles.audit(registry, case, seed=AUDIT_SEED, methods=methods)
                    behavioural |= {r.method for r in results if r.kind == "behavioural"}
                    after = _document(results, case.version)
                    claims = _tally(counts, condition, change, planted, before, after, case.features)
                    line.append(f"{change}({planted or '-'}): {' '.join(claims) or 'none'}")
                print(f"{condition:<9} {kind:<8} seed {seed}  " + "; ".join(line)
                      + f"  ({time.perf_counter() - tick:.0f} s)", flush=True)
    _table(counts, behavioural)
    print(f"{time.perf_counter() - started:.0f} s in all; * marks the planted feature")
    print(f"materiality floor (share of the method's top importance; the rule's is {MATERIAL_SHARE:g}):")
    for (condition, floor, kind), tally in sorted(SWEEP.items()):
        print(f"  {condition:<9} floor {floor:<5g} {kind:<12} detected {tally['found']}/{tally['planted']}, "
              f"false alarms {tally['alarms']}/{tally['compared']}")
    for condition in CONDITIONS:
        total = defaultdict(int)
        for (where, method), tally in counts.items():
            if where == condition and method in behavioural:
                for key, value in tally.items():
                    total[key] += value
        found = sum(total[f"found {p}"] for p in PLANTS)
        planted = sum(total[f"planted {p}"] for p in PLANTS)
        alarms = total["alarms planted"] + total["alarms control"]
        compared = total["compared planted"] + total["compared control"]
        label = "drift:" if condition == "retrained" else f"drift ({condition} condition):"
        print(f"{label} detected {found}/{planted} planted changes, "
              f"false alarms {alarms}/{compared} unchanged comparisons")


def _tally(counts, condition: str, change: str, planted: str | None, before: ResultsDocument, after: ResultsDocument,
           features: tuple[str, ...]) -> list[str]:
    """Count one pair's drift claims per method (planted feature found, others reported); return them as text."""
    for floor in FLOORS:
        for method, moved in drift(before, after, PREVIOUS_VERSION, material=floor)["changes"].items():
            reported = {c["feature"] for c in moved}
            kind = "weight-based" if method.startswith("weights") else "behavioural"
            tally = SWEEP[condition, floor, kind]
            tally["planted"] += planted is not None
            tally["found"] += planted is not None and planted in reported
            tally["compared"] += len(features) - (planted is not None)
            tally["alarms"] += len(reported - {planted})
    claims = []
    for method, moved in drift(before, after, PREVIOUS_VERSION)["changes"].items():
        reported = {c["feature"] for c in moved}
        alarms = reported - {planted}
        tally = counts[condition, method]
        group = "control" if planted is None else "planted"
        if planted is not None:
            tally[f"planted {change}"] += 1
            tally[f"found {change}"] += planted in reported
        tally[f"compared {group}"] += len(features) - (planted is not None)
        tally[f"alarms {group}"] += len(alarms)
        tally[f"noise alarms {group}"] += sum(f.startswith("n") for f in alarms)
        share = _largest_share(before.methods[method].features, after.methods[method].features, alarms)
        tally["largest alarm per mille"] = max(tally["largest alarm per mille"], round(1000 * share))
        claims += [f"{method}:{f}{'*' if f == planted else ''}" for f in sorted(reported)]
    return claims


def _largest_share(before: tuple[FeatureRecord, ...], now: tuple[FeatureRecord, ...], features: set[str]) -> float:
    """The largest change among ``features`` as a share of the larger of the two runs' top importance."""
    old = {r.feature: r.importance for r in before}
    top = max(abs(r.importance or 0.0) for r in (*before, *now)) or 1.0
    return max((abs(r.importance - old[r.feature]) / top for r in now if r.feature in features), default=0.0)


def _table(counts, behavioural: set[str]) -> None:
    """One row per condition and method: detection per plant, false alarms on planted and control pairs."""
    head = ["condition", "method", *(f"found {p}" for p in PLANTS), "false alarms (planted pairs)",
            "false alarms (control pairs)", "largest false alarm, % of top"]
    print("| " + " | ".join(head) + " |")
    print("|" + " --- |" * len(head))
    for (condition, method), tally in sorted(counts.items(), key=lambda kv: (kv[0][0] != "set", kv[0][1])):
        cells = [condition, method + ("" if method in behavioural else " (weight-based)")]
        cells += [f"{tally[f'found {p}']}/{tally[f'planted {p}']}" for p in PLANTS]
        for group in ("planted", "control"):
            cells.append(f"{tally[f'alarms {group}']}/{tally[f'compared {group}']}"
                         f" ({tally[f'noise alarms {group}']} on noise)")
        cells.append(f"{tally['largest alarm per mille'] / 10:.1f}%")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
