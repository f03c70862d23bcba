"""Importance drift across nightly runs: this run against earlier reports of the same model.

Two comparisons, when they exist: the previous run of the *same version* (what changed with nothing
but the run: seed, data, code) and the newest run of the *previous version* (what the new model
changed). Earlier runs are found by their ``results.json`` under ``<out>/<model>/<version>/<run-id>/``,
read through :func:`tasks.report.document.read_results` (one that cannot be read is passed over for the one before it);
run ids start with a UTC timestamp, so the greatest one is the newest.

A feature's importance is reported as changed only when the two runs' 95% intervals separate
(:func:`intervals_separate`) *and* the difference passes a two-sided test at 5% for the whole method,
Bonferroni-corrected over its features (:func:`changed`): rank changes among features whose
intervals overlap are noise, and with many features some intervals separate by chance. Between two
versions that is not enough: each run's interval covers only its own sampling (repeats, seeds, rows),
not a new test split or a new training, so every importance moves a little beyond it; a change is
therefore also required to be material, at least :data:`MATERIAL_SHARE` of the method's top importance
(:func:`method_changes`; both rules measured by benchmarks/bench_verdict.py and bench_drift.py). Each
comparison also states what differs between the runs — seed, model sha256, a split's sha256 —
so a reader can tell a new model from a new sample.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from scipy import stats

from tasks.core.errors import ResultsError
from tasks.registry.base import natural_key
from tasks.report.document import FeatureRecord, MethodEntry, ResultsDocument, read_results

SAME_VERSION = "previous run of this version"
PREVIOUS_VERSION = "previous version"
#: A change smaller than this share of the method's top importance (the larger of the two runs') is not reported.
MATERIAL_SHARE = 0.05


def previous_runs(out: str | Path, model: str, version: str) -> dict[str, ResultsDocument]:
    """The newest earlier ``results.json`` of this version and of the newest earlier version, where they exist."""
    root = Path(out) / model
    if not root.is_dir():
        return {}
    found: dict[str, ResultsDocument] = {}
    same = _newest(root / version)
    if same is not None:
        found[SAME_VERSION] = same
    earlier = sorted((p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                      and natural_key(p.name) < natural_key(version)), key=natural_key, reverse=True)
    for name in earlier:
        document = _newest(root / name)
        if document is not None:
            found[PREVIOUS_VERSION] = document
            break
    return found


def intervals_separate(before: FeatureRecord, now: FeatureRecord) -> bool:
    """True when the two 95% intervals do not overlap: the change is beyond both runs' noise."""
    bounds = (before.low, before.high, now.low, now.high)
    if any(b is None for b in bounds):
        return False  # a run without intervals (or a failed value) claims nothing
    b_low, b_high, n_low, n_high = bounds
    return b_high < n_low or n_high < b_low


def standard_error(record: FeatureRecord, method: MethodEntry) -> float | None:
    """A feature's standard error from its record and its method's sampling: std/√n over repeats or seeds,
    the std of the draws for a bootstrap, 0 for a single value (a weight is what it is)."""
    if record.std is None:
        return None
    if method.sampling == "single" or method.n_samples < 2:
        return 0.0
    return record.std if method.sampling == "bootstrap" else record.std / np.sqrt(method.n_samples)


def changed(before: FeatureRecord, now: FeatureRecord, before_method: MethodEntry, now_method: MethodEntry,
            n_features: int, *, alpha: float = 0.05) -> bool:
    """True when the intervals separate and the difference is significant at ``alpha`` over the method's features."""
    if not intervals_separate(before, now) or before.importance is None or now.importance is None:
        return False
    se = [standard_error(before, before_method), standard_error(now, now_method)]
    if None in se:
        return False
    spread = float(np.hypot(*se))
    if spread == 0.0:
        return True  # two exact values that differ (the weights of two different models)
    level = 1 - alpha / (2 * max(n_features, 1))
    dfs = [m.n_samples - 1 for m in (before_method, now_method) if m.sampling in ("repeats", "seeds")]
    critical = stats.t.ppf(level, max(min(dfs), 1)) if dfs else stats.norm.ppf(level)
    return abs(now.importance - before.importance) > critical * spread


def differences(previous: ResultsDocument, current: ResultsDocument) -> list[str]:
    """What differs between the two runs besides the results: seed, model sha256, split sha256."""
    out = []
    seeds = previous.run.seed, current.run.seed
    if seeds[0] != seeds[1]:
        out.append(f"seed {seeds[0]} → {seeds[1]}")
    before, now = previous.model.sha256, current.model.sha256
    for name in sorted(set(before) | set(now)):
        if before.get(name) != now.get(name):
            out.append(f"{name} sha256 differs" if name in before and name in now else
                       f"{name} {'added' if name in now else 'removed'}")
    return out


def method_changes(before: MethodEntry, now: MethodEntry, *, material: float = MATERIAL_SHARE) -> list[dict[str, Any]]:
    """The features whose importance under one method changed beyond both runs' noise by at least ``material`` of
    the method's top importance, by their rank now."""
    old = {r.feature: r for r in before.features}
    n = len(now.features)
    top = max((abs(r.importance) for r in (*before.features, *now.features) if r.importance is not None), default=0.0)
    moved = [
        {"feature": r.feature, "rank_before": old[r.feature].rank, "rank_now": r.rank,
         "before": [old[r.feature].low, old[r.feature].high], "now": [r.low, r.high]}
        for r in now.features if r.feature in old and changed(old[r.feature], r, before, now, n)
        and abs(r.importance - old[r.feature].importance) >= material * top
    ]
    return sorted(moved, key=lambda c: (c["rank_now"], c["feature"]))


def drift(previous: ResultsDocument, current: ResultsDocument, against: str = SAME_VERSION, *,
          material: float = MATERIAL_SHARE) -> dict[str, Any]:
    """Importance changes beyond both runs' noise (and ``material``) per method, and warnings new or resolved."""
    changes = {}
    for method, now in current.methods.items():
        before = previous.methods.get(method)
        if before is not None and before.ok and now.ok:
            changes[method] = method_changes(before, now, material=material)
    old_warnings = {(w.feature, w.kind): w.message for w in previous.warnings}
    new_warnings = {(w.feature, w.kind): w.message for w in current.warnings}
    return {
        "against": against,
        "previous_run": previous.run.id,
        "previous_version": previous.model.version,
        "previous_verdict": previous.verdict,
        "differences": differences(previous, current),
        "changes": changes,
        "new_warnings": [m for k, m in new_warnings.items() if k not in old_warnings],
        "resolved_warnings": [m for k, m in old_warnings.items() if k not in new_warnings],
    }


def history(previous: Mapping[str, ResultsDocument], current: ResultsDocument) -> list[dict[str, Any]]:
    """One drift record per earlier run found (same version first, then the previous version)."""
    return [drift(previous[against], current, against) for against in (SAME_VERSION, PREVIOUS_VERSION)
            if against in previous]


@task(name="previous-runs")
def previous_runs_task(out: str, model: str, version: str) -> dict[str, ResultsDocument]:
    """Read the newest earlier report of this version and of the previous version, if any."""
    return previous_runs(out, model, version)


def _newest(folder: Path) -> ResultsDocument | None:
    """The newest readable ``results.json`` directly under ``folder``'s run folders, or None."""
    if not folder.is_dir():
        return None
    runs = [p for p in folder.glob("*/results.json") if not p.parent.name.startswith(".")]
    for path in sorted(runs, key=lambda p: p.parent.name, reverse=True):
        try:
            return read_results(path)
        except ResultsError:
            continue  # an unreadable or foreign old report is no reason to fail tonight's
    return None
