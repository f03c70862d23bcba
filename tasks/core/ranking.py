"""How sure a method is of its own ranking: paired tests between features, verified top-K, rank intervals.

After Goldwasser & Hooker (2025), "Statistical Significance of Feature Importance Rankings": a
ranking is a set of claims "feature i is more important than feature j", and each claim is tested
on the method's own samples before anything is built on it.

- **Pairwise test.** ``verified[i, j]`` when "i is more important than j" holds at 95%, one-sided:
  a t-test of the per-sample differences for repeats and seeds (column ``s`` is the same repeat or
  seed for every feature, so seeds are paired through their shared baseline), or the share of
  bootstrap draws that order the pair the other way (draws share their row resample). A pair whose
  differences are all equal (zero spread, e.g. accuracy moving by the same step in every repeat;
  equal up to rounding, ``ROUNDING`` of the largest sample) is *unresolved*, never certain; a
  single-sample method resolves nothing.
- **Verified top-K.** The top-K *set* is verified when every one of the first K features is
  verified above every feature outside them; its *order* is verified for the top m when the top-1,
  top-2, …, top-m sets all are (so each of the first m ranks is exact). Each claim rejects every
  null it rests on at 5%, so by the intersection-union argument the claim is wrong with probability
  at most 5%.
- **Rank interval.** ``[1 + #features verified above it, n - #features verified below it]``: the
  ranks the feature can hold without contradicting a verified pair.
- **Relevance.** ``threshold`` is the larger of ``RELEVANCE`` × the top feature's mean importance and
  ``MATERIAL`` × the model-level reference the method reports (``ImportanceResult.reference``: the
  test loss of a constant prediction for permutation and ablation, the target's spread for SHAP),
  in the method's own units. Being large beside the top feature is not enough: when the model
  learnt nothing, nothing is relevant. A feature is *relevant* when its 95% interval lies above the
  threshold, and *negligible* when its interval lies below ``RELEVANCE`` × the top feature's
  importance (an equivalence test against that margin; an interval that merely covers zero is no
  evidence). Degenerate intervals are neither.

Cost, at every width. Up to √``MAX_PAIRS`` = 2,000 features every pair is tested. Beyond, only the
*candidates* are: the features down to the last one whose interval reaches the top-k boundary (its
upper end at or above the lower end of the k-th feature's interval) or that the relevance screen
keeps, each tested against every feature, and never more than ``MAX_PAIRS`` pairs. For a candidate
the rank interval and the verified top mean exactly what they mean with every pair tested; the
top-K set is only claimed for K up to the number of candidates. A feature outside the candidates is
*outside the verified top*; its rank bounds come from the candidates alone (best rank 1 + the
candidates verified above it, worst n − the candidates it is verified above), which contain the
bounds every pair would give. Pairs are tested a block at a time (at most ``BLOCK`` differences at
once) and only counts are kept, so memory grows with the features, not their square.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from tasks.core.result import ImportanceResult

ALPHA = 0.05
RELEVANCE = 0.05  # a feature is negligible below 5% of the top feature's importance, in the method's units
MATERIAL = 0.01  # ... and below 1% of the model-level reference (a constant prediction's loss, the target's spread)
TOP_K = 3  # the verdict's and adaptive permutation's "top k" (see top_k_for)
MAX_PAIRS = 4_000_000  # pairs tested at most: every pair up to 2,000 features, beyond only the candidates
BLOCK = 4_000_000  # pair × sample differences held at once (32 MB of float64)
ROUNDING = 1e-12  # differences spreading less than this share of the largest sample are equal up to rounding


def top_k_for(n: int) -> int:
    """The k of "top k": ``TOP_K``, but never more than half the features (so top and lower half never meet)."""
    return max(1, min(TOP_K, n // 2))


class PairTest:
    """One method's samples, ready to test "feature i is more important than feature j" a block of rows at a time."""

    def __init__(self, result: ImportanceResult, *, alpha: float = ALPHA):
        self.samples = np.asarray(result.importances, dtype=float)
        self.n, self.n_samples = self.samples.shape
        self.sampling = result.sampling
        self.alpha = alpha
        self.testable = result.sampling != "single" and self.n_samples >= 2
        self.rows_per_block = max(1, BLOCK // max(1, self.n * self.n_samples))
        # differences that spread less than this are equal up to rounding: unresolved
        self.tolerance = ROUNDING * float(np.abs(self.samples).max()) if self.samples.size else 0.0

    def block(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(above, below), each (len(rows), n) bool: ``above[r, j]`` — feature rows[r] is verified above j;
        ``below[r, j]`` — j is verified above rows[r]. Both come from the same per-sample differences."""
        rows = np.asarray(rows, dtype=int)
        if not self.testable or not len(rows):
            empty = np.zeros((len(rows), self.n), dtype=bool)
            return empty, empty.copy()
        d = self.samples[rows][:, None, :] - self.samples[None, :, :]  # rows[r] minus j, sample by sample
        spread = d.max(axis=2) - d.min(axis=2) > self.tolerance  # all differences equal: unresolved, never certain
        if self.sampling == "bootstrap":
            above = spread & ((d <= 0).mean(axis=2) < self.alpha)
            below = spread & ((d >= 0).mean(axis=2) < self.alpha)
        else:
            mean, sd = d.mean(axis=2), d.std(axis=2, ddof=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                t = mean / (sd / np.sqrt(self.n_samples))
            df = self.n_samples - 1
            above = spread & (np.where(spread, stats.t.sf(t, df), 1.0) < self.alpha)
            below = spread & (np.where(spread, stats.t.sf(-t, df), 1.0) < self.alpha)
        self_pairs = (np.arange(len(rows)), rows)
        above[self_pairs] = below[self_pairs] = False
        return above, below

    def blocks(self, rows: np.ndarray):
        """(rows, above, below) over ``rows``, a bounded block at a time."""
        rows = np.asarray(rows, dtype=int)
        for start in range(0, len(rows), self.rows_per_block):
            chunk = rows[start:start + self.rows_per_block]
            yield (chunk, *self.block(chunk))


@dataclass(frozen=True, eq=False)
class RankingEvidence:
    """What one method's samples establish about its ranking: counts per feature; pairs are re-tested on demand."""

    method: str
    features: tuple[str, ...]
    pairs: PairTest
    mean: np.ndarray  # (n,) the method's importances, in its units
    rank: np.ndarray
    rank_low: np.ndarray  # best rank compatible with the verified pairs
    rank_high: np.ndarray  # worst rank compatible with the verified pairs
    top_set: int  # largest K whose top-K set is verified (0: not even the top feature)
    top_order: int  # the first top_order ranks are each verified
    threshold: float  # RELEVANCE × the top feature's importance, at least MATERIAL × the reference
    relevant: np.ndarray  # (n,) bool: interval above the threshold
    negligible: np.ndarray  # (n,) bool: interval below RELEVANCE × the top feature's importance
    degenerate: np.ndarray  # (n,) bool: no usable spread (single sample or all samples equal)
    test: str  # how pairs were tested, in words
    order: np.ndarray  # feature indices, most important first
    holds: np.ndarray  # holds[k - 1]: the top-k set is verified, for k = 1 .. n_tested (at most n - 1)
    tested: np.ndarray  # (n,) bool: a candidate, tested against every feature (all, up to 2,000 features)
    reference: float | None = None  # what relevance was also held against (the result's reference), if anything
    low: np.ndarray | None = None  # (n,) the 95% interval of each importance, as the result carries it
    high: np.ndarray | None = None

    @property
    def n_tested(self) -> int:
        return int(self.tested.sum())

    def verified_rows(self, rows: np.ndarray):
        """(rows, verified) blocks: ``verified[r, j]`` — feature rows[r] is more important than j at 95%."""
        for chunk, above, _ in self.pairs.blocks(rows):
            yield chunk, above

    def verified_pair(self, i: int, j: int) -> bool:
        """Whether "feature i is more important than feature j" holds at 95%."""
        return bool(self.pairs.block(np.array([i]))[0][0, j])

    def top_k_verified(self, k: int) -> bool:
        """Whether the top-k set is verified: each of the first k above every feature outside them.
        Never claimed beyond the candidates."""
        if k >= len(self.order):
            return True
        return k <= len(self.holds) and bool(self.holds[k - 1])

    def summary(self) -> str:
        """'top 4 verified at 95%; order verified for the top 2', in words for the report."""
        n = len(self.features)
        scope = "" if self.n_tested == n else f" (of the top {self.n_tested} tested against all {n} features)"
        if self.top_set == 0:
            return "no top feature verified at 95%" + scope
        text = f"top {self.top_set} verified at 95%"
        if self.top_order == 0:
            return text + "; their order not verified" + scope
        return text + f"; order verified for the top {self.top_order}" + scope

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "test": self.test,
            "top_set": self.top_set,
            "top_order": self.top_order,
            "tested": self.n_tested,
            "summary": self.summary(),
            "threshold": self.threshold,
            "reference": self.reference,
            "features": [
                {"feature": f, "rank": int(self.rank[i]), "rank_low": int(self.rank_low[i]),
                 "rank_high": int(self.rank_high[i]), "relevant": bool(self.relevant[i]),
                 "negligible": bool(self.negligible[i]), "degenerate": bool(self.degenerate[i]),
                 "tested": bool(self.tested[i])}
                for i, f in enumerate(self.features)
            ],
        }


def ranking_evidence(result: ImportanceResult, *, alpha: float = ALPHA, relevance: float = RELEVANCE,
                     material: float = MATERIAL, max_pairs: int = MAX_PAIRS) -> RankingEvidence:
    """Test the pairs that can matter on ``result``'s samples; derive verified top-K, rank intervals, relevance."""
    n = len(result.features)
    mean = np.asarray(result.importances_mean, dtype=float)
    order = np.argsort(-mean, kind="stable")
    position = np.empty(n, dtype=int)
    position[order] = np.arange(n)
    degenerate = _degenerate(result)
    threshold = relevance_threshold(result, relevance=relevance, material=material)
    relevant = (result.low > threshold) & ~degenerate
    n_tested = candidates(result, order, relevant, max_pairs=max_pairs)
    pairs = PairTest(result, alpha=alpha)

    above_all = np.zeros(n, dtype=int)  # a candidate: features verified above it
    below_all = np.zeros(n, dtype=int)  # a candidate: features it is verified above
    above_tested = np.zeros(n, dtype=int)  # any feature: candidates verified above it
    below_tested = np.zeros(n, dtype=int)  # any feature: candidates it is verified above
    reach = np.zeros(n_tested, dtype=int)  # per candidate: 1 + the lowest position it is not verified above
    for rows, above, below in pairs.blocks(order[:n_tested]):
        below_all[rows], above_all[rows] = above.sum(axis=1), below.sum(axis=1)
        above_tested += above.sum(axis=0)
        below_tested += below.sum(axis=0)
        reach[position[rows]] = _reach(above, rows, position)
    tested = np.zeros(n, dtype=bool)
    tested[order[:n_tested]] = True
    above_count = np.where(tested, above_all, above_tested)
    below_count = np.where(tested, below_all, below_tested)
    holds = top_holds(reach)[: max(n - 1, 0)]
    top_set, top_order = top_from_holds(holds)
    return RankingEvidence(
        method=result.method,
        features=result.features,
        pairs=pairs,
        mean=mean,
        rank=result.rank,
        rank_low=np.minimum(1 + above_count, result.rank),
        rank_high=np.maximum(n - below_count, result.rank),
        top_set=top_set,
        top_order=top_order,
        threshold=threshold,
        relevant=relevant,
        negligible=(result.high < relevance_threshold(result, relevance=relevance, material=0.0)) & ~degenerate,
        degenerate=degenerate,
        test=_test_words(result),
        order=order,
        holds=holds,
        tested=tested,
        reference=result.reference,
        low=np.asarray(result.low, dtype=float),
        high=np.asarray(result.high, dtype=float),
    )


def relevance_threshold(result: ImportanceResult, *, relevance: float = RELEVANCE,
                        material: float = MATERIAL) -> float:
    """The margin a feature's interval must clear to be relevant: ``relevance`` × the top feature's importance,
    and at least ``material`` × the result's reference (what the model's own loss or target make material)."""
    mean = np.asarray(result.importances_mean, dtype=float)
    threshold = relevance * float(np.nanmax(mean)) if len(mean) else 0.0
    if result.reference is not None and np.isfinite(result.reference):
        threshold = max(threshold, material * float(result.reference))
    return max(threshold, 0.0)


def candidates(result: ImportanceResult, order: np.ndarray, relevant: np.ndarray, *,
               max_pairs: int = MAX_PAIRS) -> int:
    """How many features, from the top of ``order``, to test against every feature (module docstring, "Cost")."""
    n = len(order)
    if n * n <= max_pairs:
        return n
    k = top_k_for(n)
    boundary = result.low[order[k - 1]]
    keep = (result.high >= boundary) | relevant
    keep[order[: k + 1]] = True
    wanted = int(np.nonzero(keep[order])[0].max()) + 1
    return min(wanted, max(k + 1, max_pairs // n))


def _reach(above: np.ndarray, rows: np.ndarray, position: np.ndarray) -> np.ndarray:
    """Per row: 1 + the lowest position (in importance order) of a feature it is not verified above, itself aside."""
    open_ = ~above
    open_[np.arange(len(rows)), rows] = False
    return np.where(open_, position[None, :], -1).max(axis=1) + 1


def top_holds(reach: np.ndarray) -> np.ndarray:
    """``holds[k - 1]``: the top-k set is verified. Given each top feature's reach (in importance order), the
    top-k set holds when none of its first k members leaves a feature at position k or below unverified."""
    return np.maximum.accumulate(reach) <= np.arange(1, len(reach) + 1)


def top_from_holds(holds: np.ndarray) -> tuple[int, int]:
    """(largest K whose top-K set is verified, number of leading ranks that are each verified)."""
    top_set = int(np.nonzero(holds)[0].max()) + 1 if holds.any() else 0
    top_order = len(holds) if holds.all() else int(np.argmin(holds))
    return top_set, top_order


def verified_top(verified: np.ndarray, order: np.ndarray) -> tuple[int, int]:
    """(largest K whose top-K set is verified, leading ranks each verified) from a full (n, n) verified matrix, in
    O(n²): for each feature the lowest position it fails to beat, then a running maximum down the order."""
    n = len(order)
    position = np.empty(n, dtype=int)
    position[order] = np.arange(n)
    reach = _reach(verified[order], order, position)
    return top_from_holds(top_holds(reach)[: max(n - 1, 0)])


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
