"""What page 1 shows a reviewer beside the verdict: each warning with every judged method's word on its feature, for
and against it; the correlated clusters that dominate a method's ranking; and what this run did not assess, and why.

Plain functions of the results and the comparison; :mod:`tasks.report.render` puts them in the report's context.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.core.ranking import RankingEvidence
from tasks.core.result import ImportanceResult
from tasks.methods.table import METHODS, judged, title_of
from tasks.report.verdict import BETTER_WITHOUT, INTERACTIONS_UNMEASURED, Comparison, Finding, in_sentence
from tasks.subject.clusters import ClusterRecord, UnitRecords

FOR, AGAINST, NEITHER = "for", "against", "neither"


@dataclass(frozen=True)
class View:
    """One judged method's word on a warned feature: one row of the warning's table."""

    method: str
    rank: int
    of: int
    rank_low: int | None  # the rank interval its verified pairs allow (behavioural methods only)
    rank_high: int | None
    importance: float
    low: float
    high: float
    interval: bool  # the method has samples, so an interval
    standing: str  # "relevant", "negligible" or "" (behavioural methods only)
    stance: str  # FOR, AGAINST or NEITHER: does this method's word support the warning?
    note: str = ""


@dataclass(frozen=True)
class WarningEvidence:
    """A warning, its table of every judged method's word on the feature, and the correlated clusters it is in."""

    message: str
    feature: str
    kind: str
    views: tuple[View, ...]
    clusters: tuple[str, ...] = ()  # one sentence per correlated cluster that holds the feature


def warning_evidence(finding: Finding, results: list[ImportanceResult],
                     evidence: tuple[RankingEvidence, ...]) -> WarningEvidence:
    """Every judged method's rank, interval and standing for the warned feature, each marked for or against."""
    by_method = {e.method: e for e in evidence}
    views = []
    for r in _judged(results):
        if finding.feature not in r.features:
            continue
        j = r.features.index(finding.feature)
        e = by_method.get(r.method)
        standing = "" if e is None else "relevant" if e.relevant[j] else "negligible" if e.negligible[j] else ""
        views.append(View(
            method=r.method, rank=int(r.rank[j]), of=len(r.features),
            rank_low=int(e.rank_low[j]) if e is not None else None,
            rank_high=int(e.rank_high[j]) if e is not None else None,
            importance=float(r.importances_mean[j]), low=float(r.low[j]), high=float(r.high[j]),
            interval=r.n_samples > 1, standing=standing, stance=stance(finding, r, e, j),
            note=below_zero_note(r, j) if r.kind == "behavioural" else ""))
    return WarningEvidence(finding.message, finding.feature, finding.kind, tuple(views),
                           tuple(cluster_sentence(r, c, finding.feature) for r in results if r.ok
                                 for c in _clusters(r) if finding.feature in c.members))


def stance(finding: Finding, result: ImportanceResult, e: RankingEvidence | None, j: int) -> str:
    """FOR when the method supports the warning, AGAINST when its word runs the other way, else NEITHER.

    A weight ranking is FOR when it is one the warning names; another weight ranking is AGAINST a misranking
    (it ranks the feature as the behaviour does). A behavioural method is FOR when the warning names it;
    AGAINST an under-ranking or a joint effect when it shows the feature negligible, and AGAINST an
    over-ranking when it finds the feature relevant.
    """
    if result.kind == "weight-based":
        if finding.kind == "acts jointly":
            return NEITHER  # a weight cannot show a joint effect, whatever its rank
        return FOR if result.method in finding.weight_methods else AGAINST
    if e is None:
        return NEITHER
    if result.method in finding.behavioural_methods:
        return FOR
    opposed = e.relevant[j] if finding.kind == "over-ranked" else e.negligible[j]
    return AGAINST if opposed else NEITHER


def below_zero_note(result: ImportanceResult, j: int) -> str:
    """Where a loss-based importance's whole 95% interval is below zero: the model does better without the feature."""
    if result.n_samples < 2 or not result.high[j] < 0:
        return ""
    return f"whole 95% interval below zero: {BETTER_WITHOUT}"


def dominant_clusters(results: list[ImportanceResult]) -> list[str]:
    """One sentence per correlated cluster that dominates its method's ranking: measured as one unit, its 95%
    interval lies wholly above that of the method's top single feature. Most important first, per method."""
    out = []
    for r in results:
        if not r.ok:
            continue
        top = int(np.argmax(r.importances_mean))
        above = [c for c in _clusters(r) if c.low > r.high[top]]
        for c in sorted(above, key=lambda c: -c.importance):
            ratio = c.importance / r.importances_mean[top] if r.importances_mean[top] > 0 else float("inf")
            times = f"{ratio:.1f}×" if np.isfinite(ratio) else "far above"
            out.append(f"{cluster_sentence(r, c)}: {times} its top single feature, '{r.features[top]}' "
                       f"({r.importances_mean[top]:.3g}). Measured one at a time, correlated features share their "
                       "importance, so each member's own rank understates the cluster.")
    return out


def cluster_sentence(result: ImportanceResult, cluster: ClusterRecord, feature: str | None = None) -> str:
    """"'x' is one of the correlated cluster a, b (weakest |ρ| 0.93): measured as one unit, permutation importance
    gives it 7.5 [7.2, 7.8]"."""
    shown = ", ".join(f"'{m}'" for m in cluster.members[:6]) + (
        f" and {len(cluster.members) - 6} more" if len(cluster.members) > 6 else "")
    lead = f"'{feature}' is one of the correlated cluster" if feature else "The correlated cluster"
    return (f"{lead} {shown} (weakest |ρ| {cluster.min_abs_rho:.2f}): measured as one unit, {in_sentence(result.method)} "
            f"gives it {cluster.importance:.3g} [{cluster.low:.3g}, {cluster.high:.3g}]")


def not_assessed(results: list[ImportanceResult], comparison: Comparison, features: tuple[str, ...], *,
                 image: bool = False) -> list[str]:
    """What this run did not assess, and why, one sentence each: methods not asked for (of those that apply to an
    ``image`` version, or to a tabular one), skipped or failed; judged methods that measured only some features;
    interactions; how the weights move across trainings."""
    out = []
    present = {r.method for r in results}
    absent = [m.title for m in METHODS.values() if not set(m.titles) & present and m.applies_to(image)]
    if absent:
        out.append(f"Not asked for in this run: {', '.join(absent)}.")
    for r in results:
        if r.status in ("skipped", "failed"):
            title = next((m.title for m in METHODS.values() if r.method in m.titles), r.method)
            reason = (r.error or "").rstrip()
            out.append(f"{title}: {r.status}: {reason}{'' if reason.endswith('.') else '.'}")
    for r in _judged(results):
        if len(r.features) < len(features):
            out.append(f"{title_of(r.method)} measured {len(r.features)} of the {len(features)} "
                       "features (its budget); the others are not ranked by it (see its section).")
    if comparison.interactions.startswith(INTERACTIONS_UNMEASURED) and not image:  # an image has no pairs yet
        out.append(comparison.interactions)
    if comparison.weight_stability is None and any(r.ok and r.kind == "weight-based" for r in results):
        out.append("How far the weight ranking moves across trainings: the weights are one sample (retrain-ablation's "
                   "retrained baselines, which need a training split, did not run).")
    return out


def _judged(results: list[ImportanceResult]) -> list[ImportanceResult]:
    """The usable results the verdict judges, weight-based first, in table order."""
    order = [*judged("weight-based"), *judged("behavioural")]
    usable = {r.method: r for r in results if r.ok}
    return [usable[m] for m in order if m in usable]


def _clusters(result: ImportanceResult) -> list[ClusterRecord]:
    return list(result.details.clusters) if isinstance(result.details, UnitRecords) else []
