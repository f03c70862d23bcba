"""Where the weight-based ranking disagrees with what the model does.

Each weight-based result is compared with each behavioural one: Spearman's rho, Kendall's tau,
top-3 overlap and the features whose rank moves most. Warnings are noise-aware: a feature is
flagged only when the behavioural method's own interval backs the claim.
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


@dataclass(frozen=True)
class Agreement:
    """How one weight-based ranking compares with one behavioural ranking."""

    weight_method: str
    behavioural_method: str
    spearman: float
    kendall: float
    top_k: int
    top_k_overlap: int
    movers: tuple[tuple[str, int, int], ...]  # (feature, weight rank, behavioural rank), largest move first


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
    agreements: tuple[Agreement, ...]
    findings: tuple[Finding, ...]
    verdict: Verdict
    rule: str = VERDICT_RULE

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "rule": self.rule,
            "agreements": [asdict(a) for a in self.agreements],
            "warnings": [asdict(f) for f in self.findings],
        }


def agreement(weight: ImportanceResult, behaviour: ImportanceResult, *, n_movers: int = 3) -> Agreement:
    """Rank agreement between two results over the same features."""
    w_rank, b_rank = weight.rank, behaviour.rank
    k = min(TOP_K, len(weight.features))
    top_w = {f for f, r in zip(weight.features, w_rank) if r <= k}
    top_b = {f for f, r in zip(behaviour.features, b_rank) if r <= k}
    moves = sorted(
        zip(weight.features, w_rank.tolist(), b_rank.tolist()), key=lambda t: (-abs(t[1] - t[2]), t[1])
    )
    return Agreement(
        weight_method=weight.method,
        behavioural_method=behaviour.method,
        spearman=_safe(stats.spearmanr(weight.importances_mean, behaviour.importances_mean)[0]),
        kendall=_safe(stats.kendalltau(weight.importances_mean, behaviour.importances_mean)[0]),
        top_k=k,
        top_k_overlap=len(top_w & top_b),
        movers=tuple((f, int(w), int(b)) for f, w, b in moves[:n_movers] if w != b),
    )


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
    rhos = [a.spearman for a in agreements if np.isfinite(a.spearman)]
    if (rhos and min(rhos) < 0.5) or len(found) >= 2:
        verdict: Verdict = "disagree"
    elif found or (rhos and min(rhos) < 0.8):
        verdict = "partly agree"
    else:
        verdict = "agree"
    return Comparison(agreements, found, verdict)


@task(name="compare")
def compare_task(results: list[ImportanceResult]) -> Comparison:
    """Rank agreement, warnings and the verdict."""
    return compare(results)


def _safe(value: float) -> float:
    return float(value) if np.isfinite(value) else float("nan")
