import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.core.ranking import ranking_evidence, top_k_for
from tasks.core.result import ImportanceResult
from tasks.report.verdict import compare, in_lower_half, pairwise_rank_agreement, top_k_agreement

FEATURES = ("scaled", "noise", "x1", "x2", "x3", "x4")


def _weights(values, features=FEATURES, method="weights"):
    return ImportanceResult.from_samples(method, "weight-based", features, np.asarray(values, float))


def _behaviour(means, spread=0.05, seed=0, features=FEATURES, method="permutation", n=5):
    rng = np.random.default_rng(seed)
    spread = np.asarray(spread, float).reshape(-1, 1)
    samples = np.asarray(means, float)[:, None] + spread * rng.standard_normal((len(means), n))
    return ImportanceResult.from_samples(method, "behavioural", features, samples)


def _bootstrap(means, spread, seed=0, features=FEATURES, method="shap"):
    rng = np.random.default_rng(seed)
    draws = np.asarray(means, float)[:, None] + spread * rng.standard_normal((len(means), 200))
    return ImportanceResult.from_samples(method, "behavioural", features, draws, sampling="bootstrap",
                                         interval=(np.percentile(draws, 2.5, axis=1), np.percentile(draws, 97.5, axis=1)))


def test_underranked_scaled_feature_is_one_warning_naming_its_ranks():
    # verified #1 at 3.5/3 of x1, below the demoted-driver margin: the lower-half rule names it
    result = compare([_weights([0.01, 0.5, 3, 2.5, 2, 1.5]), _behaviour([3.5, 0, 3, 2.5, 2, 1.5])])
    assert [(f.feature, f.kind) for f in result.findings] == [("scaled", "under-ranked")]
    finding = result.findings[0]
    assert finding.weight_rank == 6 and finding.behavioural_rank == 1
    assert "rank it 6 of 6" in finding.message and "permutation importance ranks it 1 (rank 1 verified)" in finding.message
    assert finding.margin is None
    assert result.verdict == "disagree" and "'scaled'" in result.reason


def test_a_feature_ranked_3_by_both_of_5_is_not_flagged():
    features = ("a", "b", "c", "d", "e")
    weights = _weights([5, 4, 3, 2, 1], features)
    behaviour = _behaviour([5, 4, 3, 2, 1], spread=0.01, features=features)
    assert top_k_for(5) == 2 and not in_lower_half(3, 5) and in_lower_half(4, 5)
    result = compare([weights, behaviour])
    assert result.findings == () and result.verdict == "agree"


def test_a_verified_one_rank_move_is_not_a_warning():
    features = ("a", "b", "c", "d", "e", "f")
    weights = _weights([6, 5, 3, 4, 2, 1], features)  # c (verified 3rd) falls to 4th, the lower half
    result = compare([weights, _behaviour([6, 5, 4, 3, 2, 1], spread=0.01, features=features)])
    assert result.findings == () and result.verdict == "partly agree"


def test_a_one_rank_move_within_the_rank_interval_is_not_flagged():
    # x1 and x2 are indistinguishable behaviourally: the weights may order them either way.
    features = ("a", "b", "c", "d", "e", "f")
    weights = _weights([6, 5, 3, 4, 2, 1], features)
    behaviour = _behaviour([6, 5, 3.5, 3.5, 2, 1], spread=0.3, features=features)
    result = compare([weights, behaviour])
    assert result.findings == ()
    assert result.verdict == "agree"


def test_one_feature_seen_by_four_method_pairs_is_one_warning_naming_them_all():
    w = _weights([0.01, 0.5, 3, 2.5, 2, 1.5])
    ws = _weights([0.02, 0.4, 3, 2.5, 2, 1.5], method="weights_scaled")
    perm = _behaviour([5, 0, 3, 2.5, 2, 1.5])
    shap = _bootstrap([5, 0.01, 3, 2.5, 2, 1.5], spread=0.05)
    result = compare([w, ws, perm, shap])
    assert len(result.findings) == 1
    finding = result.findings[0]
    assert finding.feature == "scaled"
    assert finding.weight_methods == ("weights", "weights_scaled")
    assert finding.behavioural_methods == ("permutation", "shap")


def test_an_interval_covering_zero_is_no_evidence_of_over_ranking():
    weights = _weights([0.1, 5, 3, 2.5, 2, 1.5])  # the weights put 'noise' first
    # 'noise' has a wide interval around 0.5: it covers zero, but also covers relevant values
    wide = compare([weights, _behaviour([0.5, 0.5, 3, 2.5, 2, 1.5], spread=[0.01, 1.5, 0.01, 0.01, 0.01, 0.01])])
    assert not [f for f in wide.findings if f.kind == "over-ranked"]
    # shown negligible: the whole interval sits below 5% of the top importance (3 * 0.05 = 0.15)
    narrow = compare([weights, _behaviour([0.5, 0.0, 3, 2.5, 2, 1.5], spread=0.01)])
    assert [(f.feature, f.kind) for f in narrow.findings] == [("noise", "over-ranked")]


def test_degenerate_intervals_are_unresolved_not_certain():
    # accuracy-like importances: every repeat gives the same value, so nothing is resolved
    samples = np.repeat(np.array([[0.0], [0.002], [0.004], [0.0], [0.0], [0.0]]), 5, axis=1)
    flat = ImportanceResult.from_samples("permutation", "behavioural", FEATURES, samples)
    evidence = ranking_evidence(flat)
    assert evidence.degenerate.all() and not evidence.negligible.any()
    assert not any(verified.any() for _, verified in evidence.verified_rows(np.arange(6)))
    result = compare([_weights([5, 4, 3, 2, 1, 0.5]), flat])
    assert result.findings == () and result.verdict == "not assessed"


def test_noise_features_in_random_order_do_not_move_the_verdict():
    # 5 correctly ordered drivers + 15 pure-noise features in random order: Spearman over all is ~0.6
    rng = np.random.default_rng(3)
    features = tuple(f"f{i}" for i in range(20))
    drivers = np.array([5.0, 4, 3, 2, 1])
    weights = _weights(np.concatenate([drivers, rng.uniform(0, 0.2, 15)]), features)
    behaviour = _behaviour(np.concatenate([drivers, np.zeros(15)]), spread=0.05, features=features)
    result = compare([weights, behaviour])
    assert result.agreements[0].spearman < 0.8
    assert result.findings == () and result.verdict == "agree"
    assert result.agreements[0].verified_pairs >= 4 + 3 + 2 + 1 and result.agreements[0].inverted == ()


def test_a_verified_inverted_pair_is_partly_agree():
    features = ("a", "b", "c", "d", "e", "f")
    weights = _weights([5, 6, 4, 3, 2, 1], features)  # a and b swapped
    result = compare([weights, _behaviour([6, 5, 4, 3, 2, 1], spread=0.05, features=features)])
    assert result.findings == () and result.verdict == "partly agree"
    assert result.agreements[0].inverted == (("a", "b"),)
    assert "'b' above 'a'" in result.reason


def test_verified_top_k_and_rank_intervals():
    # two clear leaders in a tie, then a clear third, then three indistinguishable
    features = ("a", "b", "c", "d", "e", "f")
    # a true tie is "verified" in 5% of draws, as a 5% test should; this draw is not one of them
    result = _behaviour([5, 5, 3, 1, 1, 1], spread=0.1, features=features, n=8, seed=1)
    evidence = ranking_evidence(result)
    assert evidence.top_set == 3 and evidence.top_order == 0  # {a, b} and {a, b, c} hold; a vs b does not
    by_name = dict(zip(features, zip(evidence.rank_low, evidence.rank_high)))
    assert by_name["a"] == (1, 2) and by_name["b"] == (1, 2) and by_name["c"] == (3, 3)
    assert by_name["d"] == (4, 6) and by_name["f"] == (4, 6)
    assert evidence.summary() == "top 3 verified at 95%; their order not verified"


def test_bootstrap_draws_are_tested_as_pairs():
    result = _bootstrap([3, 2, 1, 0.5, 0.5, 0.1], spread=0.05)
    evidence = ranking_evidence(result)
    assert evidence.top_set == 5 and evidence.top_order == 3  # 0.5 and 0.5 tie, but both beat 0.1
    assert evidence.verified_pair(0, 1) and not evidence.verified_pair(3, 4) and evidence.verified_pair(4, 5)


def test_identical_rankings_agree_with_krishna_measures_kept():
    values = [6, 5, 4, 3, 2, 1]
    result = compare([_weights(values), _behaviour(values, spread=0.01)])
    assert result.verdict == "agree" and not result.findings
    first = result.agreements[0]
    assert first.spearman == 1.0 and first.pairwise == 1.0 and dict(first.top_k) == {3: 1.0, 5: 1.0}
    assert first.weighted_tau == 1.0 and first.weighted_tau_interval == (1.0, 1.0)


def test_pairwise_and_top_k_agreement_count_what_they_say():
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


def test_secondary_results_are_shown_but_not_judged():
    accuracy = _behaviour([0.01, 0, 3, 2.5, 2, 1.5], method="permutation_accuracy")
    result = compare([_weights([0.01, 0.5, 3, 2.5, 2, 1.5]), accuracy])
    assert result.verdict == "not assessed" and result.findings == ()


def test_failed_methods_are_left_out():
    failed = ImportanceResult.not_ok("shap", "behavioural", FEATURES, status="failed", reason="boom")
    assert compare([_weights([1, 2, 3, 4, 5, 6]), failed]).verdict == "not assessed"


def test_weight_stability_reports_each_features_rank_range():
    retrained = ImportanceResult.from_samples(
        "weights_retrained", "weight-based", ("a", "b", "c", "d"),
        np.array([[4, 4, 4], [3, 1, 3], [2, 3, 2], [1, 2, 1.0]]), sampling="seeds")
    values = [4, 3, 2, 1]
    result = compare([_weights(values, ("a", "b", "c", "d")),
                      _behaviour(values, spread=0.01, features=("a", "b", "c", "d")), retrained])
    stability = result.weight_stability
    assert stability["n_trainings"] == 3 and stability["max_rank_range"] == 2
    assert {f["feature"]: (f["rank_low"], f["rank_high"]) for f in stability["features"]}["b"] == (2, 4)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(n=st.integers(0, 80), seed=st.integers(0, 2**32 - 1), levels=st.sampled_from([2, 5, 1000]),
       nans=st.booleans())
def test_pairwise_rank_agreement_counts_every_pair(n, seed, levels, nans):
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, levels, n).astype(float), rng.integers(0, levels, n).astype(float)  # ties at few levels
    if nans and n:
        a[rng.integers(0, n)] = np.nan
    i, j = np.triu_indices(n, k=1)
    with np.errstate(invalid="ignore"):
        expected = float(np.mean(np.sign(a[i] - a[j]) == np.sign(b[i] - b[j]))) if len(i) else float("nan")
    assert pairwise_rank_agreement(a, b) == pytest.approx(expected, nan_ok=True, abs=1e-12)


def test_importances_immaterial_against_the_model_are_no_material_effect_never_agree():
    # the behaviour orders the features clearly, but every importance is below 1% of a constant prediction's loss
    samples = np.array([6, 5, 4, 3, 2, 1], float)[:, None] * 0.01 + 0.001 * np.random.default_rng(0).standard_normal((6, 5))
    small = ImportanceResult.from_samples("permutation", "behavioural", FEATURES, samples, reference=100.0)
    result = compare([_weights([6, 5, 4, 3, 2, 1]), small])
    assert result.verdict == "no material effect" and set(result.verdicts.values()) == {"no material effect"}
    assert result.reason.startswith("no material effect: the model shows no material dependence on any feature")
    # the same numbers against a model whose constant prediction loses 1.0: material, and the weights agree
    material = ImportanceResult.from_samples("permutation", "behavioural", FEATURES, samples, reference=1.0)
    assert compare([_weights([6, 5, 4, 3, 2, 1]), material]).verdict == "agree"


def test_model_fit_is_a_paired_interval_against_a_constant():
    from tasks.core.metrics import METRICS, model_fit

    rng = np.random.default_rng(0)
    y = rng.standard_normal(2000)
    good = model_fit(METRICS["mse"], y, y + 0.1 * rng.standard_normal(2000), np.zeros(2000))
    assert good.beats_constant and good.difference_high < 0 and good.loss == pytest.approx(0.01, rel=0.1)
    noise = model_fit(METRICS["mse"], y, 0.3 * rng.standard_normal(2000), np.zeros(2000))  # predicts noise
    assert not noise.beats_constant and noise.loss > noise.null_loss
    assert noise.sentence().startswith("The model does not beat a constant prediction on the test split: mse ")


def test_inverted_pairs_are_all_counted_and_the_first_ten_named():
    features = tuple(f"f{i}" for i in range(12))
    means = np.arange(12, 0, -1, dtype=float)
    result = compare([_weights(means[::-1], features), _behaviour(means, spread=0.01, features=features)])
    a = result.agreements[0]
    assert a.n_inverted == a.verified_pairs > 10 and len(a.inverted) == 10
    assert a.inverted[0] == ("f0", "f1") and a.resolved_agreement == 0.0


def test_a_demoted_driver_in_the_weights_upper_half_is_named_with_its_margin():
    # 'scaled' is verified #1 at 8/3 of 'x1', the largest the weights rank above it; the weights rank it 3rd of 6
    weights = _weights([2.6, 0.5, 3, 2.8, 2, 1.5])
    result = compare([weights, _behaviour([8, 0, 3, 2.5, 2, 1.5])])
    assert not in_lower_half(3, 6)  # the lower-half rule alone would stay silent
    assert [(f.feature, f.kind) for f in result.findings] == [("scaled", "under-ranked")]
    finding = result.findings[0]
    assert finding.margin == pytest.approx(8 / 3, rel=0.05) and finding.margin_over == "x1"
    assert "rank it 3 of 6" in finding.message
    assert "permutation importance verifies it as #1 (rank 1 verified) at 2.7× 'x1'" in finding.message
    assert result.verdict == "disagree"


def test_a_demotion_below_the_margin_or_by_one_rank_is_not_a_warning():
    below_margin = compare([_weights([2.6, 0.5, 3, 2.8, 2, 1.5]), _behaviour([4, 0, 3, 2.5, 2, 1.5])])  # 1.33×
    assert below_margin.findings == () and below_margin.verdict == "partly agree"
    one_rank = compare([_weights([2.9, 0.5, 3, 2.8, 2, 1.5]), _behaviour([8, 0, 3, 2.5, 2, 1.5])])
    assert one_rank.findings == () and one_rank.verdict == "partly agree"


def test_a_demoted_driver_needs_to_be_verified_above_every_feature_ranked_above_it():
    # x1 is as important as 'scaled' within noise: no verified margin over everything the weights put above it
    result = compare([_weights([2.6, 0.5, 3, 2.8, 2, 1.5]), _behaviour([8, 0, 8, 2.5, 2, 1.5], spread=1.0)])
    assert "scaled" not in [f.feature for f in result.findings]


def test_a_warning_quotes_the_behavioural_methods_that_do_not_confirm_it():
    weights = _weights([0.01, 0.5, 3, 2.5, 2, 1.5])
    result = compare([weights, _behaviour([5, 0, 3, 2.5, 2, 1.5]),
                      _behaviour([1.4, 0, 3, 2.5, 2, 1.6], spread=0.01, method="shap")])
    finding = result.findings[0]
    assert finding.behavioural_methods == ("permutation",)
    assert "Not confirmed by SHAP (mean |φ|), which ranks it 5 (rank 5 verified, relevant)." in finding.message


def test_a_relevant_feature_acting_through_others_turns_agree_into_agree_interactions_not_assessed():
    from tasks.report.verdict import NONADDITIVE, acting_jointly, interactions_sentence

    shap = ranking_evidence(_bootstrap([5, 0, 3, 2.5, 2, 1.5], 0.05))
    shares = {"scaled": 0.97, "noise": 0.9, "x1": 0.04, "x2": 0.05, "x3": 0.6, "x4": 0.02}
    jointly = acting_jointly(shares, shap)
    # the noise feature's SHAP values are noise whatever its share: only relevant features count
    assert jointly == (("scaled", 0.97), ("x3", 0.6)) and NONADDITIVE == 0.5
    assert "SHAP shows 'scaled' and 'x3' acting through other features (97%, 60%" in interactions_sentence(shares, jointly)
    assert acting_jointly({f: 0.05 for f in FEATURES}, shap) == ()
    assert "no relevant feature acting mainly through others" in interactions_sentence({"x1": 0.05}, ())
    assert "SHAP, whose values show how far a feature acts through others, did not run" in interactions_sentence(None, ())


def test_every_comparison_states_that_interactions_are_not_assessed():
    result = compare([_weights([5, 0.5, 3, 2.5, 2, 1.5]), _behaviour([5, 0, 3, 2.5, 2, 1.5])])
    assert result.verdict == "agree"
    assert result.interactions.startswith("Interactions are not assessed in this run")
    assert result.to_dict()["interactions"] == result.interactions


def _measured(joint_shares, h_lows, pairs):
    """The interactions method's result: per feature its joint share and H_j's lower end, and the pairs' H."""
    from tasks.methods.interactions import FeatureInteraction, InteractionDetails, PairInteraction

    features = [FeatureInteraction(f, h_lows[f] + 0.1, h_lows[f], h_lows[f] + 0.2, joint, joint - 0.05, joint + 0.05)
                for f, joint in joint_shares.items()]
    details = InteractionDetails(chosen_by="the top 4 by permutation importance", rows=300, grid=10, bootstrap=200,
                                 evaluations=0, features=features, heat_maps=[],
                                 pairs=[PairInteraction(a, b, h, h - 0.05, h + 0.05, 1.0, 0.9, 1.1)
                                        for (a, b), h in pairs.items()])
    names = tuple(joint_shares)
    return ImportanceResult.from_samples("interactions", "interaction", names,
                                         np.array([[f.h] for f in features]), details=details)


def test_features_that_act_jointly_are_one_finding_per_pair_and_turn_agree_into_agree_features_act_jointly():
    weights, behaviour = _weights([5, 0.5, 3, 2.5, 2, 1.5]), _behaviour([5, 0, 3, 2.5, 2, 1.5])
    measured = _measured({"scaled": 0.9, "x1": 0.8, "x2": 0.1, "noise": 0.95},
                         {"scaled": 0.3, "x1": 0.3, "x2": 0.0, "noise": 0.4},
                         {("scaled", "x1"): 0.9, ("scaled", "x2"): 0.05, ("x1", "x2"): 0.04, ("noise", "x2"): 0.7})
    result = compare([weights, behaviour, measured])
    [finding] = result.findings  # 'scaled' and 'x1' once; 'noise' is not relevant; 'x2' acts alone
    assert finding.kind == "acts jointly" and finding.feature == "scaled" and finding.weight_methods == ()
    assert finding.message.startswith("'scaled' and 'x1' act jointly (H = 0.90 [0.85, 0.95]; 90% [85%, 95%] of the "
                                      "effect of 'scaled' is joint with others)")
    assert "a first-layer weight cannot show this" in finding.message
    assert result.verdict == "agree, features act jointly" and result.verdicts == {"weights": result.verdict}
    assert "Friedman's H for 4 pairs" in result.interactions and "not assessed" not in result.interactions
    assert result.jointly == (("scaled", 0.9),)


def test_an_unresolved_or_mostly_separate_interaction_is_no_finding():
    weights, behaviour = _weights([5, 0.5, 3, 2.5, 2, 1.5]), _behaviour([5, 0, 3, 2.5, 2, 1.5])
    pairs = {("scaled", "x1"): 0.9}
    unresolved = _measured({"scaled": 0.9, "x1": 0.9}, {"scaled": 0.01, "x1": 0.01}, pairs)
    separate = _measured({"scaled": 0.4, "x1": 0.45}, {"scaled": 0.3, "x1": 0.3}, pairs)
    for measured in (unresolved, separate):
        result = compare([weights, behaviour, measured])
        assert result.findings == () and result.verdict == "agree"
        assert "no relevant feature's effect is mostly joint with others" in result.interactions
