"""The verdict's power on trained models at graded strengths: how often it names what really misleads, how often
it cries wolf, and how often it reassures where it should not.

Cases (tests/trained.py: small Keras MLPs, Dense(32)-Dense(16), trained on 2,000 rows for 30 epochs, inputs as
users feed them):

- ``scale`` ×1.5, ×2, ×3, ×10, ×100: the strongest driver d0 on a larger scale, unstandardised (at ×1.5 the
  weights move it by about one place: the oracle decides whether that misleads);
- ``interaction`` at strengths 0.5, 1, 2: ``strength·d0·d1`` beside three linear drivers;
- ``product``: ``y = x0·x1 + x2``; ``sin``: ``sin(x0·x1 + x2)`` on 300 rows (the seeds' example);
- ``zeroed``: the noise feature n0 read by 8 hidden units whose outgoing weights are 0;
- ``proxy`` at ρ = 0.7 and 0.95: a correlated copy of d0 with no effect of its own;
- ``no_signal``: seed 001's Dense(100)-Dropout(0.2)-Dense(50) net on a target unrelated to its inputs;
- ``faithful``: a linear target on standardized inputs, where the weights should be right.

The truth is never the planted weights. Each trained model is judged by an oracle on 20,000 fresh rows of its
process: its permutation importance there (2 repeats; ``oracle``), against the naive first-layer weights'
ranking (the habit the verdict judges):

- *demoted*: a feature in the oracle's top 3, with an oracle importance of at least 5% of the top one, that the
  weights rank at least 2 places below its oracle rank;
- *over-ranked*: a feature in the weights' top 3 whose oracle importance is below 5% of the top one;
- *acting jointly*: the factors of a product (``interaction``, ``product``, ``sin``), by construction;
- *no signal*: the model does not beat a constant prediction on the fresh rows (a 95% paired interval).

A run is misleading when any of these holds. It counts as *detected* when the verdict names one of those
features — a warning, a finding that features act jointly (the interactions method's Friedman's H), or SHAP's
list of features acting through others — or, for no signal, says "no material effect"; as a *reassuring miss* when the verdict is a bare "agree"; a run with no truth counts as a *false
alarm* when the verdict is "disagree". Each run is audited by the flow's own functions: the weights, permutation
importance, SHAP (200 rows) and the interactions (Friedman's H, 300 rows); retrain-ablation is left out for time.
Whether H names the factors of a product, and whether it names any other feature as acting jointly, is counted
apart too.

The same audits are scored again at other operating points: the demoted-driver margin (``MARGIN``) and the
materiality floor (``MATERIAL``), so the chosen point can be read against its neighbours.

Trained models and their oracles are kept in ``--cache`` (default ``.bench-cache/verdict-power`` in the
repository, keyed by a digest of tests/trained.py), so a re-run only audits and scores again.
The default run is 3 seeds; ``--full`` is 10.
Last line: ``verdict power: detected D/M misleading runs, reassuring agree A/M, false alarms F/N runs with no
truth; acting jointly named by H J/P product runs, H naming others in O/R runs``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402

from tasks.core.metrics import constant_prediction, model_fit  # noqa: E402
from tasks.core.ranking import MATERIAL  # noqa: E402
from tasks.methods.interactions import interactions_audit  # noqa: E402
from tasks.methods.permutation import audit_permutation  # noqa: E402
from tasks.methods.shap import shap_audit  # noqa: E402
from tasks.methods.weights import audit_weights  # noqa: E402
from tasks.registry.versions import resolve_version  # noqa: E402
from tasks.report.verdict import MARGIN, compare  # noqa: E402
from tasks.subject.loaded import load_subject  # noqa: E402
from tests import trained  # noqa: E402

CASES = (("scale", 1.5), ("scale", 2.0), ("scale", 3.0), ("scale", 10.0), ("scale", 100.0),
         ("interaction", 0.5), ("interaction", 1.0), ("interaction", 2.0), ("product", 1.0), ("sin", 1.0),
         ("zeroed", 1.0), ("proxy", 0.7), ("proxy", 0.95), ("no_signal", 1.0), ("faithful", 1.0))
JOINT = {"interaction": ("d0", "d1"), "product": ("x0", "x1"), "sin": ("x0", "x1")}
ORACLE_ROWS = 20_000
TOP = 3  # the oracle's and the weights' top
MATERIAL_SHARE = 0.05  # of the oracle's top importance
GAP = 2  # places
MARGINS = (1.25, MARGIN, 2.0, 3.0)
MATERIALS = (0.005, MATERIAL, 0.02)


@dataclass(frozen=True)
class Truth:
    """What the oracle says misleads in one trained model: the features, and whether the model learnt nothing."""

    features: frozenset[str]
    no_signal: bool
    why: str

    @property
    def misleading(self) -> bool:
        return bool(self.features) or self.no_signal


def oracle(root: Path, case: trained.Trained) -> dict:
    """Permutation importance of the trained model on fresh rows of its process, and its fit against a constant."""
    path = root / "oracles" / f"{case.name}-{case.folder}.json"
    if path.exists():
        return json.loads(path.read_text())
    version = resolve_version(root, case.name, case.folder)
    subject = load_subject(version)
    forward = subject.forward()
    rng = np.random.default_rng(10_000 + case.seed)
    fresh = trained.frame_of(case.kind, case.strength, ORACLE_ROWS, rng)
    X = fresh[list(case.features)].to_numpy(np.float32)
    y = fresh["y"].to_numpy(np.float64)
    metric = subject.metric
    pred = np.asarray(forward(X), dtype=float).reshape(len(y))
    base = metric(y, pred)
    importance = []
    for j in range(X.shape[1]):
        losses = []
        for _ in range(2):
            shuffled = X.copy()
            shuffled[:, j] = rng.permutation(shuffled[:, j])
            losses.append(metric(y, np.asarray(forward(shuffled), dtype=float).reshape(len(y))) - base)
        importance.append(float(np.mean(losses)))
    fit = model_fit(metric, y, pred, constant_prediction(subject.train.y, y, "regression"))
    out = {"importance": importance, "beats_constant": fit.beats_constant}
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out))
    return out


def truth_of(case: trained.Trained, found: dict, weights_rank: dict[str, int]) -> Truth:
    """The misleading features by the oracle (see the module's docstring)."""
    importance = dict(zip(case.features, found["importance"]))
    top = max(importance.values())
    oracle_rank = {f: r + 1 for r, f in enumerate(sorted(importance, key=lambda f: -importance[f]))}
    demoted = {f for f in case.features if oracle_rank[f] <= TOP and importance[f] >= MATERIAL_SHARE * top
               and weights_rank[f] >= oracle_rank[f] + GAP}
    over = {f for f in case.features if weights_rank[f] <= TOP and importance[f] < MATERIAL_SHARE * top}
    joint = set(JOINT.get(case.kind, ()))
    why = "; ".join(p for p in (f"demoted {sorted(demoted)}" if demoted else "",
                                f"over-ranked {sorted(over)}" if over else "",
                                f"jointly {sorted(joint)}" if joint else "",
                                "no signal" if not found["beats_constant"] else "") if p) or "-"
    return Truth(frozenset(demoted | over | joint), not found["beats_constant"], why)


def score(comparison, truth: Truth) -> dict[str, bool]:
    """Whether the verdict named the truth, reassured where it should not, or cried wolf."""
    named = {f.feature for f in comparison.findings} | {f for f, _ in comparison.jointly}
    detected = bool(named & truth.features) or (truth.no_signal and comparison.verdict == "no material effect")
    return {"misleading": truth.misleading, "detected": truth.misleading and detected,
            "reassuring": truth.misleading and comparison.verdict == "agree",
            "false_alarm": not truth.misleading and comparison.verdict == "disagree",
            "others": bool(named - truth.features)}


def build_cached(root: Path, kind: str, strength: float, seed: int) -> trained.Trained:
    """The trained case, from the cache when it was trained before."""
    rng = np.random.default_rng(seed)
    features = tuple(c for c in trained.frame_of(kind, strength, 2, rng).columns if c != "y")
    case = trained.Trained(kind, strength, seed, features)
    if (root / case.name / case.folder / "manifest.json").exists():
        return case
    return trained.build(root, kind, strength, seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="10 seeds instead of 3")
    parser.add_argument("--cache", type=Path, default=REPO / ".bench-cache" / "verdict-power")
    args = parser.parse_args()
    seeds = range(10 if args.full else 3)
    digest = hashlib.sha256((REPO / "tests" / "trained.py").read_bytes()).hexdigest()[:12]
    root = args.cache / digest
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = defaultdict(lambda: defaultdict(int))
    grid = defaultdict(lambda: defaultdict(int))
    shares = {"additive": [], "joint": []}  # (share, where)
    for kind, strength in CASES:
        for seed in seeds:
            tick = time.perf_counter()
            case = build_cached(root, kind, strength, seed)
            version = resolve_version(root, case.name, case.folder)
            permutation = audit_permutation(version, seed=0)
            interactions = interactions_audit(load_subject(version), seed=0, upstream={"permutation": permutation})
            results = [*audit_weights(version), *permutation, shap_audit(version, seed=0, n_rows=200), interactions]
            naive = next(r for r in results if r.method == "weights")
            truth = truth_of(case, oracle(root, case), dict(zip(naive.features, map(int, naive.rank))))
            comparison = compare(results)
            scored = score(comparison, truth)
            row = rows[f"{kind} {strength:g}"]
            row["runs"] += 1
            for key, value in scored.items():
                row[key] += value
            by_h = {f.feature for f in comparison.findings if f.kind == "acts jointly"}
            row["h_named"] += bool(by_h & set(JOINT.get(kind, ())))
            row["h_others"] += bool(by_h - set(JOINT.get(kind, ())))
            for margin in MARGINS:
                for material in MATERIALS:
                    point = score(compare(results, margin=margin, material=material), truth)
                    for key, value in point.items():
                        grid[(margin, material)][key] += value
                    grid[(margin, material)]["runs"] += 1
            shap = next(r for r in results if r.method == "shap")
            relevant = next(e for e in comparison.evidence if e.method == "shap").relevant
            for f, share, rel in zip(shap.features, shap.details.unexplained, relevant):
                if rel and share is not None and kind != "no_signal":  # no signal: no additive truth to hold
                    where = f"{f} of {kind} {strength:g} seed {seed}"
                    shares["joint" if f in JOINT.get(kind, ()) else "additive"].append((share, where))
            named = ", ".join(sorted({f.feature for f in comparison.findings} | {f for f, _ in comparison.jointly}))
            print(f"{kind:<11} {strength:<5g} seed {seed}: {comparison.verdict:<32} named: {named or '-':<12} "
                  f"truth: {truth.why}  ({time.perf_counter() - tick:.0f} s)", flush=True)

    print()
    print("| kind | runs | misleading (oracle) | detected | reassuring agree | false alarm (no truth) | others named "
          "| acting jointly named by H | H names others |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, row in rows.items():
        clean = row["runs"] - row["misleading"]
        joint = f"{row['h_named']}/{row['runs']}" if name.split()[0] in JOINT else "—"
        print(f"| {name} | {row['runs']} | {row['misleading']} | {row['detected']}/{row['misleading']} | "
              f"{row['reassuring']}/{row['misleading']} | {row['false_alarm']}/{clean} | {row['others']} | {joint} | "
              f"{row['h_others']} |")
    print()
    print("| margin \\ material | " + " | ".join(f"{m:g}" for m in MATERIALS) + " |")
    print("| --- |" + " --- |" * len(MATERIALS))
    for margin in MARGINS:
        cells = []
        for material in MATERIALS:
            g = grid[(margin, material)]
            cells.append(f"detected {g['detected']}/{g['misleading']}, false alarms "
                         f"{g['false_alarm']}/{g['runs'] - g['misleading']}")
        print(f"| {margin:g} | " + " | ".join(cells) + " |")
    print()
    most, least = max(shares["additive"]), min(shares["joint"])
    print(f"SHAP unexplained share of relevant features: additive at most {most[0]:.2f} ({most[1]}), factors of a "
          f"product at least {least[0]:.2f} ({least[1]}); {time.perf_counter() - started:.0f} s in all")
    total = defaultdict(int)
    for row in rows.values():
        for key, value in row.items():
            total[key] += value
    product_runs = sum(row["runs"] for name, row in rows.items() if name.split()[0] in JOINT)
    print(f"verdict power: detected {total['detected']}/{total['misleading']} misleading runs, reassuring agree "
          f"{total['reassuring']}/{total['misleading']}, false alarms {total['false_alarm']}/"
          f"{total['runs'] - total['misleading']} runs with no truth; acting jointly named by H {total['h_named']}/"
          f"{product_runs} product runs, H naming others in {total['h_others']}/{total['runs']} runs")


if __name__ == "__main__":
    main()
