"""How sure a method is of its own ranking: paired tests between features, verified top-K, rank intervals.

After Goldwasser & Hooker (2025), "Statistical Significance of Feature Importance Rankings": a
ranking is a set of claims "feature i is more important than feature j", and each claim is tested
on the method's own samples before anything is built on it.

- **Pairwise test.** ``verified[i, j]`` when "i is more important than j" holds at 95%, one-sided:
  a t-test of the per-sample differences for repeats and seeds (column ``s`` is the same repeat or
  seed for every feature, so seeds are paired through their shared baseline), or the share of
  bootstrap draws that order the pair the other way (draws share their row resample). A pair whose
  differences are all equal (zero spread, e.g. accuracy moving by the same step in every repeat)
  is *unresolved*, never certain; a single-sample method resolves nothing.
- **Verified top-K.** The top-K *set* is verified when every one of the first K features is
  verified above every feature outside them; its *order* is verified for the top m when the top-1,
  top-2, …, top-m sets all are (so each of the first m ranks is exact). Each claim rejects every
  null it rests on at 5%, so by the intersection-union argument the claim is wrong with probability
  at most 5%.
- **Rank interval.** ``[1 + #features verified above it, n - #features verified below it]``: the
  ranks the feature can hold without contradicting a verified pair.
- **Relevance.** ``threshold`` = ``RELEVANCE`` × the top feature's mean importance, in the method's
  own units. A feature is *relevant* when its 95% interval lies above the threshold, and
  *negligible* when its interval lies below it (an equivalence test against that margin; an
  interval that merely covers zero is no evidence). Degenerate intervals are neither.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from tasks.core.result import ImportanceResult

ALPHA = 0.05
RELEVANCE = 0.05  # a feature is negligible below 5% of the top feature's importance, in the method's units
TOP_K = 3  # the verdict's and adaptive permutation's "top k" (see top_k_for)


def top_k_for(n: int) -> int:
    """The k of "top k": ``TOP_K``, but never more than half the features (so top and lower half never meet)."""
    return max(1, min(TOP_K, n // 2))


@dataclass(frozen=True, eq=False)
class RankingEvidence:
    """What one method's samples establish about its ranking."""

    method: str
    features: tuple[str, ...]
    verified: np.ndarray  # (n, n) bool: verified[i, j] — i is more important than j at 95%
    rank: np.ndarray
    rank_low: np.ndarray  # best rank compatible with the verified pairs
    rank_high: np.ndarray  # worst rank compatible with the verified pairs
    top_set: int  # largest K whose top-K set is verified (0: not even the top feature)
    top_order: int  # the first top_order ranks are each verified
    threshold: float  # RELEVANCE × the top feature's importance
    relevant: np.ndarray  # (n,) bool: interval above the threshold
    negligible: np.ndarray  # (n,) bool: interval below the threshold
    degenerate: np.ndarray  # (n,) bool: no usable spread (single sample or all samples equal)
    test: str  # how pairs were tested, in words
    order: np.ndarray  # feature indices, most important first

    def top_k_verified(self, k: int) -> bool:
        """Whether the top-k set is verified: each of the first k above every feature outside them."""
        k = min(k, len(self.order))
        return bool(self.verified[np.ix_(self.order[:k], self.order[k:])].all())

    def summary(self) -> str:
        """'top 4 verified at 95%; order verified for the top 2', in words for the report."""
        if self.top_set == 0:
            return "no top feature verified at 95%"
        text = f"top {self.top_set} verified at 95%"
        if self.top_order == 0:
            return text + "; their order not verified"
        return text + f"; order verified for the top {self.top_order}"

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "test": self.test,
            "top_set": self.top_set,
            "top_order": self.top_order,
            "summary": self.summary(),
            "threshold": self.threshold,
            "features": [
                {"feature": f, "rank": int(self.rank[i]), "rank_low": int(self.rank_low[i]),
                 "rank_high": int(self.rank_high[i]), "relevant": bool(self.relevant[i]),
                 "negligible": bool(self.negligible[i]), "degenerate": bool(self.degenerate[i])}
                for i, f in enumerate(self.features)
            ],
        }


def ranking_evidence(result: ImportanceResult, *, alpha: float = ALPHA, relevance: float = RELEVANCE) -> RankingEvidence:
    """Test every pair of features on ``result``'s samples; derive verified top-K, rank intervals, relevance."""
    p = pairwise_p_values(result)
    verified = p < alpha
    np.fill_diagonal(verified, False)
    n = len(result.features)
    rank_low = 1 + verified.sum(axis=0)
    rank_high = n - verified.sum(axis=1)
    order = np.argsort(-result.importances_mean, kind="stable")
    top_set, top_order = verified_top(verified, order)
    degenerate = _degenerate(result)
    threshold = relevance * float(np.nanmax(result.importances_mean)) if n else 0.0
    threshold = max(threshold, 0.0)
    return RankingEvidence(
        method=result.method,
        features=result.features,
        verified=verified,
        rank=result.rank,
        rank_low=np.minimum(rank_low, result.rank),
        rank_high=np.maximum(rank_high, result.rank),
        top_set=top_set,
        top_order=top_order,
        threshold=threshold,
        relevant=(result.low > threshold) & ~degenerate,
        negligible=(result.high < threshold) & ~degenerate,
        degenerate=degenerate,
        test=_test_words(result),
        order=order,
    )


def pairwise_p_values(result: ImportanceResult) -> np.ndarray:
    """``p[i, j]``: one-sided p-value of "feature i is more important than feature j" (1 where untestable)."""
    samples = np.asarray(result.importances, dtype=float)
    n_features, n_samples = samples.shape
    p = np.ones((n_features, n_features))
    if result.sampling == "single" or n_samples < 2:
        return p
    for i in range(n_features):
        d = samples[i][None, :] - samples  # (n_features, n_samples): i minus every j, sample by sample
        if result.sampling == "bootstrap":
            spread = d.max(axis=1) > d.min(axis=1)
            p[i] = np.where(spread, (d <= 0).mean(axis=1), 1.0)
        else:
            mean, sd = d.mean(axis=1), d.std(axis=1, ddof=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                t = mean / (sd / np.sqrt(n_samples))
            p[i] = np.where(sd > 0, stats.t.sf(t, n_samples - 1), 1.0)
    return p


def verified_top(verified: np.ndarray, order: np.ndarray) -> tuple[int, int]:
    """(largest K whose top-K set is verified, number of leading ranks that are each verified)."""
    n = len(order)
    holds = [bool(verified[np.ix_(order[:k], order[k:])].all()) for k in range(1, n)]
    top_set = max((k for k in range(1, n) if holds[k - 1]), default=0)
    top_order = 0
    while top_order < n - 1 and holds[top_order]:
        top_order += 1
    return top_set, top_order


def _degenerate(result: ImportanceResult) -> np.ndarray:
    """Features whose samples carry no spread: a single sample, or every sample equal."""
    samples = np.asarray(result.importances, dtype=float)
    if result.sampling == "single" or samples.shape[1] < 2:
        return np.ones(len(result.features), dtype=bool)
    return samples.max(axis=1) == samples.min(axis=1)


def _test_words(result: ImportanceResult) -> str:
    n = result.n_samples
    return {
        "repeats": f"t-test of the differences over {n} repeats",
        "seeds": f"paired t-test over {n} seeds",
        "bootstrap": f"{n} bootstrap draws over the explained rows",
        "single": "one sample: no test",
    }[result.sampling]
