import numpy as np

from tasks.compare import compare
from tasks.result import ImportanceResult

FEATURES = ("scaled", "noise", "x1", "x2", "x3", "x4")


def _weights(values):
    return ImportanceResult.from_samples("weights", "weight-based", FEATURES, np.asarray(values, float))


def _behaviour(means, spread=0.05, seed=0):
    rng = np.random.default_rng(seed)
    samples = np.asarray(means, float)[:, None] + spread * rng.standard_normal((len(means), 5))
    return ImportanceResult.from_samples("permutation", "behavioural", FEATURES, samples)


def test_underranked_scaled_feature_is_flagged_with_both_ranks():
    weights = _weights([0.01, 0.5, 3, 2.5, 2, 1.5])
    behaviour = _behaviour([5, 0, 3, 2.5, 2, 1.5])
    result = compare([weights, behaviour])
    flagged = [f for f in result.findings if f.kind == "under-ranked"]
    assert [f.feature for f in flagged] == ["scaled"]
    assert flagged[0].weight_rank == 6 and flagged[0].behavioural_rank == 1
    assert "'scaled' ranks 6 of 6 by weights but 1 of 6 by permutation" in flagged[0].message
    assert result.verdict in ("partly agree", "disagree")


def test_overranked_feature_needs_an_interval_covering_zero():
    weights = _weights([0.1, 5, 3, 2.5, 2, 1.5])  # the weights put 'noise' first
    quiet = compare([weights, _behaviour([0.5, 0.0, 3, 2.5, 2, 1.5])])
    assert [f.feature for f in quiet.findings if f.kind == "over-ranked"] == ["noise"]
    # the same ranks, but the behavioural interval for 'noise' is clearly above zero: no over-rank warning
    loud = compare([weights, _behaviour([0.5, 0.4, 3, 2.5, 2, 1.5], spread=0.01)])
    assert not [f for f in loud.findings if f.kind == "over-ranked"]


def test_identical_rankings_agree():
    values = [6, 5, 4, 3, 2, 1]
    result = compare([_weights(values), _behaviour(values, spread=0.01)])
    assert result.verdict == "agree" and not result.findings
    first = result.agreements[0]
    assert first.spearman == 1.0 and first.pairwise == 1.0 and dict(first.top_k) == {3: 1.0, 5: 1.0}


def test_pairwise_and_top_k_agreement_count_what_they_say():
    from tasks.compare import pairwise_rank_agreement, top_k_agreement

    # one swap among 4 features: 5 of 6 pairs keep their order
    assert pairwise_rank_agreement(np.array([4.0, 3, 2, 1]), np.array([3.0, 4, 2, 1])) == 5 / 6
    a = _weights([6, 5, 4, 3, 2, 1])
    b = _behaviour([1, 5, 4, 3, 2, 6], spread=0.0)  # first and last swapped
    assert top_k_agreement(a, b, 3) == 2 / 3 and top_k_agreement(a, b, 5) == 4 / 5


def test_behavioural_methods_are_compared_with_each_other():
    perm = _behaviour([6, 5, 4, 3, 2, 1])
    other = ImportanceResult.from_samples("ablation", "behavioural", FEATURES, np.array([6, 5, 4, 3, 1, 2.0]))
    result = compare([_weights([6, 5, 4, 3, 2, 1]), perm, other])
    assert [(c.method_a, c.method_b) for c in result.consensus] == [("permutation", "ablation")]
    assert result.consensus[0].pairwise == 14 / 15


def test_failed_methods_are_left_out():
    failed = ImportanceResult.not_ok("shap", "behavioural", FEATURES, status="failed", reason="boom")
    assert compare([_weights([1, 2, 3, 4, 5, 6]), failed]).verdict == "not assessed"
