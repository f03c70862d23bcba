"""Where the weight-based ranking disagrees with what the model does.

Each weight-based result is compared with each behavioural one, and the behavioural methods with
each other, by the measures of Krishna et al. (2022), "The Disagreement Problem in Explainable
Machine Learning": Spearman's rho, Kendall's tau, top-k feature agreement (k = 3, 5, 10 where there
are enough features) and pairwise rank agreement; plus the features whose rank moves most.
Warnings are noise-aware: a feature is flagged only when the behavioural method's own interval
(repeats, seeds or bootstrap) backs the claim.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from prefect import task
from scipy import stats

from tasks.result import ImportanceResult

Verdict = Literal["agree", "partly agree", "disagree", "not assessed"]
VERDICT_RULE = (
    "disagree: a weight-based ranking has Spearman rho below 0.5 against a behavioural method, "
    "or two or more warnings; partly agree: one warning, or rho below 0.8; agree: otherwise. "
    "Warnings count only when the behavioural interval supports them."
)
TOP_K = 3
AGREEMENT_KS = (3, 5, 10)


@dataclass(frozen=True)
class Agreement:
    """How one ranking (``method_a``: weight-based, or a behavioural one) compares with another."""

    method_a: str
    method_b: str
    spearman: float
    kendall: float
    top_k: tuple[tuple[int, float], ...]  # (k, fraction of the top-k features both rankings share)
    pairwise: float  # fraction of feature pairs ordered the same way by both
    movers: tuple[tuple[str, int, int], ...]  # (feature, rank by a, rank by b), largest move first


@dataclass(frozen=True)
class Finding:
    """One warning: a sentence about one feature, and the evidence behind it."""

    message: str
    feature: str
    kind: Literal["under-ranked", "over-ranked"]
    weight_method: str
    behavioural_method: str
    weight_rank: int
    behavioural_rank: int


@dataclass(frozen=True)
class Comparison:
    agreements: tuple[Agreement, ...]  # weight-based against behavioural
    findings: tuple[Finding, ...]
    verdict: Verdict
    consensus: tuple[Agreement, ...] = ()  # behavioural methods among themselves
    rule: str = VERDICT_RULE

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "rule": self.rule,
            "agreements": [asdict(a) for a in self.agreements],
            "consensus": [asdict(a) for a in self.consensus],
            "warnings": [asdict(f) for f in self.findings],
        }


def agreement(a: ImportanceResult, b: ImportanceResult, *, n_movers: int = 3) -> Agreement:
    """Rank agreement between two results over the same features."""
    n = len(a.features)
    moves = sorted(zip(a.features, a.rank.tolist(), b.rank.tolist()), key=lambda t: (-abs(t[1] - t[2]), t[1]))
    return Agreement(
        method_a=a.method,
        method_b=b.method,
        spearman=_safe(stats.spearmanr(a.importances_mean, b.importances_mean)[0]),
        kendall=_safe(stats.kendalltau(a.importances_mean, b.importances_mean)[0]),
        top_k=tuple((k, top_k_agreement(a, b, k)) for k in AGREEMENT_KS if k < n or k == min(AGREEMENT_KS)),
        pairwise=pairwise_rank_agreement(a.importances_mean, b.importances_mean),
        movers=tuple((f, int(ra), int(rb)) for f, ra, rb in moves[:n_movers] if ra != rb),
    )


def top_k_agreement(a: ImportanceResult, b: ImportanceResult, k: int) -> float:
    """Fraction of the k most important features that both rankings share."""
    k = min(k, len(a.features))
    top_a = {f for f, r in zip(a.features, a.rank) if r <= k}
    top_b = {f for f, r in zip(b.features, b.rank) if r <= k}
    return len(top_a & top_b) / k


def pairwise_rank_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of feature pairs whose relative order is the same under both importances."""
    i, j = np.triu_indices(len(a), k=1)
    if len(i) == 0:
        return float("nan")
    return float(np.mean(np.sign(a[i] - a[j]) == np.sign(b[i] - b[j])))


def findings(weight: ImportanceResult, behaviour: ImportanceResult) -> list[Finding]:
    """Noise-aware warnings: behavioural top-k features (interval above zero) the weights put in their
    bottom half, and weight top-k features outside the behavioural top-k whose interval covers zero."""
    n = len(weight.features)
    k = min(TOP_K, n)
    out = []
    for j, name in enumerate(weight.features):
        w, b = int(weight.rank[j]), int(behaviour.rank[j])
        mean, low, high = behaviour.importances_mean[j], behaviour.low[j], behaviour.high[j]
        evidence = f"{behaviour.method} importance {mean:.4g}, 95% interval [{low:.4g}, {high:.4g}]"
        if b <= k and w > n / 2 and low > 0:
            kind, verb = "under-ranked", "under-rank"
        elif w <= k and b > k and low <= 0:
            kind, verb = "over-ranked", "over-rank"
        else:
            continue
        message = (
            f"'{name}' ranks {w} of {n} by {weight.method} but {b} of {n} by {behaviour.method} "
            f"({evidence}): the first-layer weights {verb} it."
        )
        out.append(Finding(message, name, kind, weight.method, behaviour.method, w, b))
    return out


def compare(results: list[ImportanceResult]) -> Comparison:
    """Compare every usable weight-based result with every usable behavioural one."""
    weights = [r for r in results if r.ok and r.kind == "weight-based"]
    behaviours = [r for r in results if r.ok and r.kind == "behavioural" and len(r.features) > 1]
    pairs = [(w.subset(b.features), b) for w in weights for b in behaviours if set(b.features) <= set(w.features)]
    if not pairs:
        return Comparison((), (), "not assessed")
    agreements = tuple(agreement(w, b) for w, b in pairs)
    found = tuple(f for w, b in pairs for f in findings(w, b))
    consensus = tuple(
        agreement(x.subset(shared), y.subset(shared))
        for i, x in enumerate(behaviours) for y in behaviours[i + 1 :]
        if len(shared := [f for f in x.features if f in y.features]) > 1
    )
    rhos = [a.spearman for a in agreements if np.isfinite(a.spearman)]
    if (rhos and min(rhos) < 0.5) or len(found) >= 2:
        verdict: Verdict = "disagree"
    elif found or (rhos and min(rhos) < 0.8):
        verdict = "partly agree"
    else:
        verdict = "agree"
    return Comparison(agreements, found, verdict, consensus)


@task(name="compare")
def compare_task(results: list[ImportanceResult]) -> Comparison:
    """Rank agreement, warnings and the verdict."""
    return compare(results)


def _safe(value: float) -> float:
    return float(value) if np.isfinite(value) else float("nan")
