"""The ranking evidence against its definition: every pair tested, by brute force, on small n.

The oracle is the all-pairs computation written the slow, obvious way: a p-value for every ordered
pair, then for each K the K × (n − K) block in importance order. ``ranking_evidence`` and
``verified_top`` must agree with it exactly where every pair is tested, and, where only the
candidates are, agree on the candidates and claim nothing beyond them.
"""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from tasks.core.ranking import ALPHA, ROUNDING, ranking_evidence, top_k_for, verified_top
from tasks.core.result import ImportanceResult

# derandomized: the same examples on every run, so CI is reproducible (raise max_examples locally to search further)
SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def all_pairs_verified(result: ImportanceResult) -> np.ndarray:
    """``verified[i, j]``: "i is more important than j" at 95%, every ordered pair tested one at a time."""
    samples = np.asarray(result.importances, dtype=float)
    n, s = samples.shape
    verified = np.zeros((n, n), dtype=bool)
    if result.sampling == "single" or s < 2:
        return verified
    rounding = ROUNDING * np.abs(samples).max()
    for i in range(n):
        for j in range(n):
            d = samples[i] - samples[j]
            if i == j or d.max() - d.min() <= rounding:  # all equal, up to rounding: unresolved
                continue
            if result.sampling == "bootstrap":
                verified[i, j] = (d <= 0).mean() < ALPHA
            else:
                t = d.mean() / (d.std(ddof=1) / np.sqrt(s))
                verified[i, j] = stats.t.sf(t, s - 1) < ALPHA
    return verified


def all_pairs_top(verified: np.ndarray, order: np.ndarray) -> tuple[int, int]:
    """(largest verified K, leading ranks verified): each top-K block checked on its own."""
    n = len(order)
    holds = [bool(verified[np.ix_(order[:k], order[k:])].all()) for k in range(1, n)]
    top_set = max((k for k in range(1, n) if holds[k - 1]), default=0)
    top_order = 0
    while top_order < n - 1 and holds[top_order]:
        top_order += 1
    return top_set, top_order


@st.composite
def samples(draw, max_features=60):
    """A method's samples: a few clear leaders, ties, noise, and sometimes values on a coarse grid (exact ties)."""
    n = draw(st.integers(1, max_features))
    sampling = draw(st.sampled_from(["repeats", "seeds", "bootstrap", "single"]))
    n_samples = 1 if sampling == "single" else draw(st.integers(2, 40 if sampling == "bootstrap" else 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    means = rng.choice([0.0, 0.5, 1.0, 2.0, 4.0], size=n) * draw(st.sampled_from([0.0, 1.0, 10.0]))
    values = means[:, None] + rng.standard_normal((n, n_samples)) * draw(st.sampled_from([0.01, 0.3, 1.0]))
    if draw(st.booleans()):
        values = np.round(values, 1)
    features = tuple(f"f{i}" for i in range(n))
    return ImportanceResult.from_samples("permutation", "behavioural", features, values, sampling=sampling)


@SETTINGS
@given(n=st.integers(1, 60), seed=st.integers(0, 2**32 - 1), density=st.floats(0, 1))
def test_verified_top_agrees_with_every_block(n, seed, density):
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    # dense matrices with a verified prefix are where a top set exists at all
    verified = rng.random((n, n)) < density
    lead = rng.integers(0, n + 1)
    verified[np.ix_(order[:lead], order[lead:])] |= rng.random((lead, n - lead)) < 0.97
    np.fill_diagonal(verified, False)
    assert verified_top(verified, order) == all_pairs_top(verified, order)


@SETTINGS
@given(result=samples())
def test_ranking_evidence_agrees_with_every_pair_tested(result):
    evidence = ranking_evidence(result)
    verified = all_pairs_verified(result)
    n = len(result.features)
    assert evidence.tested.all()
    got = np.zeros_like(verified)
    for rows, block in evidence.verified_rows(np.arange(n)):
        got[rows] = block
    np.testing.assert_array_equal(got, verified)
    assert (evidence.top_set, evidence.top_order) == all_pairs_top(verified, evidence.order)
    np.testing.assert_array_equal(evidence.rank_low, np.minimum(1 + verified.sum(axis=0), result.rank))
    np.testing.assert_array_equal(evidence.rank_high, np.maximum(n - verified.sum(axis=1), result.rank))
    for k in range(1, n + 1):
        assert evidence.top_k_verified(k) == (k == n or all_pairs_top_k(verified, evidence.order, k))


def all_pairs_top_k(verified, order, k):
    return bool(verified[np.ix_(order[:k], order[k:])].all())


@SETTINGS
@given(result=samples(), max_pairs=st.integers(0, 400))
def test_outside_the_candidates_nothing_is_claimed(result, max_pairs):
    evidence = ranking_evidence(result, max_pairs=max_pairs)
    verified = all_pairs_verified(result)
    n = len(result.features)
    tested = np.nonzero(evidence.tested)[0]
    # the candidates are the top of the order, tested exactly, and hold the top k at least
    assert set(tested) == set(evidence.order[:len(tested)])
    assert len(tested) == n or len(tested) >= min(n, 2) and len(tested) * n <= max(max_pairs, 4 * n)
    # below the cap, every feature whose interval reaches the top-k boundary, and every relevant one, is a candidate
    k = top_k_for(n)
    reaches = (result.high >= result.low[evidence.order[k - 1]]) | evidence.relevant
    if len(tested) < max(k + 1, max_pairs // n):
        assert evidence.tested[reaches].all()
    low = np.minimum(1 + verified.sum(axis=0), result.rank)
    high = np.maximum(n - verified.sum(axis=1), result.rank)
    np.testing.assert_array_equal(evidence.rank_low[tested], low[tested])
    np.testing.assert_array_equal(evidence.rank_high[tested], high[tested])
    # outside: bounds that contain what every pair would give
    assert (evidence.rank_low <= low).all() and (evidence.rank_high >= high).all()
    # the verified top is the all-pairs one, cut at the candidates
    for k in range(1, n):
        expected = all_pairs_top_k(verified, evidence.order, k) and k <= len(tested)
        assert evidence.top_k_verified(k) == expected
    assert evidence.top_set <= len(tested)


def test_a_verified_top_beyond_the_candidates_is_reported_as_untested():
    # 60 features in a clear descending staircase: every pair is verified, so all-pairs verifies the top 59
    rng = np.random.default_rng(0)
    values = np.arange(60, 0, -1, dtype=float)[:, None] + 0.01 * rng.standard_normal((60, 5))
    result = ImportanceResult.from_samples("permutation", "behavioural", [f"f{i}" for i in range(60)], values)
    assert ranking_evidence(result).top_set == 59
    evidence = ranking_evidence(result, max_pairs=600)  # 10 candidates × 60 features
    assert evidence.n_tested == 10 and evidence.tested[:10].all() and not evidence.tested[10:].any()
    assert evidence.top_set == 10 and evidence.top_k_verified(10) and not evidence.top_k_verified(11)
    assert evidence.summary() == "top 10 verified at 95%; order verified for the top 10 (of the top 10 tested against all 60 features)"
    # below the candidates, each feature's bounds come from the ten above it: best rank 11, worst rank 60
    assert (evidence.rank_low[10:] == 11).all() and (evidence.rank_high[10:] == 60).all()
    assert [f["tested"] for f in evidence.to_dict()["features"]] == [True] * 10 + [False] * 50

