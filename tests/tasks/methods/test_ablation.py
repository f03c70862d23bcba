import re

import numpy as np
import pytest

from tasks.core.errors import FeatureAuditError
from tasks.core.metrics import METRICS
from tasks.methods.ablation import (
    Recipe,
    ablation_constants,
    ablation_importance,
    ablation_seeds,
    audit_ablation,
    fused_retrain_scores,
    needs_more_seeds,
    retrain_score,
)
from tasks.registry.versions import Split, resolve_version
from tasks.subject.loaded import load_subject
from tests import helpers


@pytest.fixture(scope="module")
def embed(embedding_registry):
    version = resolve_version(embedding_registry, "embed")
    subject = load_subject(version)
    return subject.model, subject.train, subject.test, version


@pytest.fixture(scope="module")
def odd_registry(tmp_path_factory):
    """A model behind a UnitNormalization (it mixes columns: no |W| per feature), and one without a train split."""
    import keras

    root = tmp_path_factory.mktemp("odd-registry")
    model = keras.Sequential([keras.Input((4,), name="x"), keras.layers.UnitNormalization(), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    helpers.write_version(root, "rescaled", "v1", model, helpers.linear_frame(500, seed=2),
                          helpers.linear_frame(1000, seed=1), training={"epochs": 2, "batch_size": 128})
    helpers.write_version(root, "untrained", "v1", helpers.linear_model(), helpers.linear_frame(500, seed=2))
    return root


def test_fused_branches_reproduce_one_fit_per_feature(embed):
    model, train, test, version = embed
    constants = ablation_constants(train, version.categorical)
    recipe = Recipe(epochs=3, batch_size=128)
    units = [[], [0], [1], [2]]
    one_by_one = [
        retrain_score(model, train, test, metric=METRICS["mse"], recipe=recipe, seed=11, ablate=u, constants=constants)
        for u in units
    ]
    fused, branches = fused_retrain_scores(model, train, test, metric=METRICS["mse"], recipe=recipe, seed=11,
                                           units=units, constants=constants)
    np.testing.assert_allclose(fused, one_by_one, rtol=1e-4)
    assert len(branches) == len(units)


def test_categorical_is_held_at_its_mode(embed):
    _, train, _, version = embed
    constants = ablation_constants(train, version.categorical)
    region = train.X[:, 1]
    values, counts = np.unique(region, return_counts=True)
    assert constants[1] == values[np.argmax(counts)]
    assert constants[0] == pytest.approx(train.X[:, 0].mean(), rel=1e-5)


def test_drivers_matter_noise_does_not_and_seeds_reproduce(embed):
    model, train, test, version = embed
    kwargs = dict(metric=METRICS["mse"], recipe=Recipe(epochs=6, batch_size=64), n_seeds=2, max_seeds=2,
                  random_state=5, constants=ablation_constants(train, version.categorical))
    run = ablation_importance(model, train, test, **kwargs)
    assert run.importances.shape == (3, 2) and run.weights.shape == (3, 2) and run.weights_error is None
    mean = run.importances.mean(axis=1)
    assert mean[0] > 1.0 and mean[1] > 0.5  # amount (variance 2.25) and region (1.25) are drivers
    assert abs(mean[2]) < 0.25 * min(mean[0], mean[1])
    assert len(run.details.seeds) == 2
    # 2 seeds × 2 jobs (the default cut of the units in two chunks; chunk 0 also trains the baseline)
    assert [(t.units, t.baseline) for t in run.details.timings] == [(2, True), (2, True), (1, False), (1, False)]
    assert all(t.seconds > 0 for t in run.details.timings)
    again = ablation_importance(model, train, test, **kwargs)
    np.testing.assert_array_equal(run.importances, again.importances)
    np.testing.assert_array_equal(run.weights, again.weights)


def test_budget_in_units_ablates_the_first_units_only(embed):
    from tasks.methods.ablation import Budget

    model, train, test, version = embed
    units = {"region": [1], "amount": [0], "noise": [2]}  # priority order, as from permutation importance
    run = ablation_importance(
        model, train, test, metric=METRICS["mse"], recipe=Recipe(epochs=2, batch_size=128), n_seeds=1,
        random_state=0, units=units, constants=ablation_constants(train, version.categorical), budget=Budget(max_units=2),
    )
    assert run.details.not_ablated == ["noise"]
    assert np.isfinite(run.importances[:2]).all() and np.isnan(run.importances[2]).all()
    assert np.isfinite(run.weights).all()  # every seed's baseline is trained, whatever the budget


@pytest.mark.parametrize("random_state", [0, 5, 2**40, None])
def test_the_first_seeds_of_more_are_the_seeds_of_fewer(random_state):
    entropy = np.random.SeedSequence(random_state).entropy  # None draws fresh entropy: fix it for both calls
    assert ablation_seeds(8, entropy)[:5] == ablation_seeds(5, entropy)
    spawned = [s.spawn_key for s in np.random.SeedSequence(entropy).spawn(8)]
    assert spawned[:3] == [s.spawn_key for s in np.random.SeedSequence(entropy).spawn(3)]


def test_a_top_unit_straddling_zero_asks_for_another_seed():
    resolved = {"a": [3.0, 3.1, 2.9], "b": [2.0, 2.2, 1.9], "c": [1.0, 1.1, 0.9], "noise": [0.1, -0.1, 0.0]}
    assert needs_more_seeds(resolved) is None  # 'noise' straddles zero but is not in the top 3
    weak = {**resolved, "c": [0.5, -0.2, 0.4]}  # mean 0.23 > noise's 0.0: third, and its interval straddles zero
    assert needs_more_seeds(weak) == "the interval of 'c' straddled zero after 3 seeds"
    assert needs_more_seeds(weak, top=2) is None
    unmeasured = {**weak, "c": [np.nan, np.nan, np.nan], "noise": [0.5, -0.1, 0.4]}  # 'c' left out: 'noise' third
    assert needs_more_seeds(unmeasured) == "the interval of 'noise' straddled zero after 3 seeds"
    two_drivers = {**resolved, "c": [0.02, -0.03, 0.04]}  # third, but below 5% of the top unit: no driver to resolve
    assert needs_more_seeds(two_drivers) is None
    assert needs_more_seeds({"a": [3.0], "b": [0.0], "c": [-1.0]}) is None  # one seed: no interval to test


def test_seeds_are_added_while_a_top_unit_is_unresolved_and_match_a_run_asked_for_that_many(embed):
    model, train, test, version = embed
    kwargs = dict(metric=METRICS["mse"], recipe=Recipe(epochs=2, batch_size=128), random_state=3,
                  constants=ablation_constants(train, version.categorical), relevance=None)
    adaptive = ablation_importance(model, train, test, n_seeds=2, max_seeds=3, **kwargs)
    # three features only, so 'noise' is in the top 3, and its interval straddles zero; relevance=None makes it count
    [reason] = adaptive.details.seeds_added
    assert reason.endswith("straddled zero after 2 seeds")
    assert adaptive.details.n_seeds == 3
    assert adaptive.importances.shape == (3, 3) and adaptive.weights.shape == (3, 3)
    assert adaptive.details.seeds_note.startswith(f"Added 1 seed to the 2 asked for: {reason}. Stopped at 3 seeds")
    fixed = ablation_importance(model, train, test, n_seeds=3, max_seeds=3, **kwargs)
    assert fixed.details.seeds_added == [] and fixed.details.seeds == adaptive.details.seeds
    np.testing.assert_array_equal(adaptive.importances, fixed.importances)
    np.testing.assert_array_equal(adaptive.weights, fixed.weights)


def test_no_seed_is_added_once_the_time_budget_is_spent(embed):
    from tasks.methods.ablation import Budget

    model, train, test, version = embed
    run = ablation_importance(model, train, test, metric=METRICS["mse"], recipe=Recipe(epochs=1, batch_size=256),
                              n_seeds=2, max_seeds=4, random_state=0, budget=Budget(seconds=0.001),
                              constants=ablation_constants(train, version.categorical), relevance=None)
    assert run.details.n_seeds == 2 and run.details.seeds_added == []
    assert run.details.seeds_note.startswith("Stopped at 2 seeds (the time budget was spent): the interval of")


def test_linear_model_retrained_weights_rank_the_known_drivers(linear_registry):
    version = resolve_version(linear_registry, "linear")
    ablation, weights = audit_ablation(version, n_seeds=3, seed=0)
    assert (ablation.method, ablation.sampling, weights.method, weights.sampling) == (
        "ablation", "seeds", "weights_retrained", "seeds")
    assert weights.kind == "weight-based" and weights.importances.shape == (4, 3)
    assert weights.details.seeds == ablation.details.seeds
    order = [weights.features[i] for i in np.argsort(-weights.importances_mean)]
    assert order[0] == "a" and order[-1] == "noise"
    # a, b and c are clear drivers: their intervals clear zero after 3 seeds, so none is added
    assert ablation.details.seeds_added == [] and ablation.importances.shape == (4, 3)
    assert "all clear zero" in ablation.details.seeds_note and ablation.details.seeds_note in ablation.notes


def test_unreadable_weights_skip_only_the_weights_result(odd_registry):
    ablation, weights = audit_ablation(resolve_version(odd_registry, "rescaled"), n_seeds=1)
    assert ablation.ok and ablation.importances.shape == (4, 1)
    assert weights.status == "skipped" and re.search(r"cannot look through the UnitNormalization layer '\w+';", weights.error)


def test_without_a_train_split_both_results_are_skipped(odd_registry):
    results = audit_ablation(resolve_version(odd_registry, "untrained"))
    assert [(r.method, r.status) for r in results] == [("ablation", "skipped"), ("weights_retrained", "skipped")]
    assert all("retraining needs train.parquet" in r.error for r in results)


def test_weights_of_a_single_matrix_model_are_read_per_seed():
    import keras

    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 3)).astype(np.float32)
    y = (4.0 * X[:, 0] + X[:, 1]).astype(np.float32)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="mse")
    split = Split(X, y, ("p", "q", "r"))
    run = ablation_importance(model, split, split, metric=METRICS["mse"], recipe=Recipe(epochs=1, batch_size=100),
                              n_seeds=2, max_seeds=2, random_state=0, constants=ablation_constants(split, ()))
    assert run.weights.shape == (3, 2) and np.isfinite(run.weights).all()
    assert not np.array_equal(run.weights[:, 0], run.weights[:, 1])  # each seed is its own retraining


@pytest.mark.parametrize(("text", "expected"), [("8", (8, None)), ("300s", (None, 300.0)), (None, (None, None))])
def test_budget_parsing(text, expected):
    from tasks.methods.ablation import Budget

    budget = Budget.parse(text)
    assert (budget.max_units, budget.seconds) == expected


@pytest.mark.parametrize("text", ["0", "-3", "ten", "5m"])
def test_bad_budget_says_what_to_give(text):
    from tasks.core.errors import FeatureAuditError
    from tasks.methods.ablation import Budget

    with pytest.raises(FeatureAuditError, match="give a number of features"):
        Budget.parse(text)


def test_priority_order_follows_permutation_ranks():
    from tasks.core.result import ImportanceResult
    from tasks.methods.ablation import priority_order

    perm = ImportanceResult.from_samples("permutation", "behavioural", ("a", "b", "c"), np.array([0.1, 3.0, 1.0]))
    assert priority_order(["a", "b", "c"], perm) == ["b", "c", "a"]
    assert priority_order(["a", "b", "c"], [perm]) == ["b", "c", "a"]
    assert priority_order(["a", "b", "c"], RuntimeError("permutation failed")) == ["a", "b", "c"]


def test_jobs_give_the_same_numbers_in_any_order_and_any_process_layout(linear_registry):
    """The flow hands the jobs to a task runner; whatever order they finish in, the numbers are the plan's."""
    from tasks.methods.ablation import load_setup, plan_for, run_ablation, run_job

    version = resolve_version(linear_registry, "linear")
    plan = plan_for(version, load_setup(version), n_seeds=2, max_seeds=2)
    assert len(plan.chunks) == 2 and plan.chunks[0] + plan.chunks[1] == tuple(plan.units)

    def forward(jobs):
        return [run_job(version, plan, job) for job in jobs]

    def backward(jobs):  # the last job first: chunk 1 before the baseline it is paired with
        return [run_job(version, plan, job) for job in reversed(jobs)]

    a = run_ablation(plan, forward, n_features=len(version.features))
    b = run_ablation(plan, backward, n_features=len(version.features))
    np.testing.assert_array_equal(a.importances, b.importances)
    in_process, _ = audit_ablation(version, n_seeds=2, max_seeds=2)
    np.testing.assert_array_equal(in_process.importances, a.importances[: len(version.features)])


def test_wide_models_get_a_default_budget_that_all_overrides():
    from tasks.methods.ablation import WIDE_BUDGET, WIDE_FEATURES, Budget

    assert Budget.parse(None, n_features=WIDE_FEATURES) == Budget()
    assert Budget.parse(None, n_features=WIDE_FEATURES + 1) == Budget(max_units=WIDE_BUDGET)
    assert Budget.parse("all", n_features=10_000) == Budget()
    assert Budget.parse("8", n_features=10_000) == Budget(max_units=8)
    with pytest.raises(FeatureAuditError, match="--ablation-budget 'lots'"):
        Budget.parse("lots")


def test_the_plan_carries_an_estimate_of_its_time_and_the_run_measures_it(linear_registry):
    import math
    import re

    from tasks.methods.ablation import ablation_plan_task, estimate_line, run_ablation, run_job

    version = resolve_version(linear_registry, "linear")
    plan = ablation_plan_task.fn(version, n_seeds=2)
    assert plan.estimated_seconds > 0 and math.isfinite(plan.estimated_seconds)
    assert 0 < plan.estimate(2) <= plan.estimate(1) == plan.estimated_seconds
    assert re.fullmatch(r"about \d+ s \(4 units × 2 seeds, 4 jobs on 2 workers\)", estimate_line(plan, 2))
    run = run_ablation(plan, lambda jobs: [run_job(version, plan, job) for job in jobs], n_features=4)
    assert run.details.estimated_job_seconds == plan.estimated_seconds
    assert run.details.job_seconds > 0


def test_ablation_clusters_with_the_threshold_permutation_uses(tmp_path):
    """One threshold for both behavioural methods: the units they measure are the same."""
    from tasks.methods.permutation import audit_permutation

    rng = np.random.default_rng(0)
    frames = []
    for n in (1200, 800):
        frame = helpers.linear_frame(n, seed=n)
        frame["b"] = (0.8 * frame["a"] + 0.6 * rng.normal(size=n)).astype(np.float32)  # |ρ(a, b)| ≈ 0.8
        frames.append(frame)
    helpers.write_version(tmp_path, "corr", "v1", helpers.linear_model(), frames[1], frames[0], training={"epochs": 1})
    version = resolve_version(tmp_path, "corr")
    for threshold, expected in ((0.9, []), (0.7, ["a+b"])):
        [permutation] = audit_permutation(version, n_repeats=2, max_repeats=2, cluster_threshold=threshold)
        ablation, _ = audit_ablation(version, n_seeds=1, max_seeds=1, cluster_threshold=threshold)
        assert [c.name for c in permutation.details.clusters] == expected
        assert [c.name for c in ablation.details.clusters] == expected


def test_retrain_check_drops_diverged_baselines_and_does_not_rank_diverged_units():
    from tasks.methods.ablation import retrain_check

    null, registered = 1.0, 0.1  # mse of a constant prediction, and of the registered model
    baselines = np.array([0.12, np.inf, 0.11])  # seed 2's baseline diverged
    scores = np.array([
        [0.5, 0.4, 0.6],  # a driver: worse than the baseline, better than a constant
        [0.13, 0.2, 9.0],  # diverged in seed 3
        [np.nan, np.nan, np.nan],  # not run (beyond a budget)
        [0.2, 5.0, 0.2],  # only diverged in the dropped seed: still ranked
    ])
    check = retrain_check(scores, baselines, ["a", "b", "c", "d"], metric=METRICS["mse"], registered=registered,
                          null=null)
    assert check.usable_seeds.tolist() == [True, False, True]
    assert list(check.diverged) == ["b"] and "9" in check.diverged["b"]
    assert "1 of 3 retrained baselines diverged" in check.note and "does not reproduce" not in check.note
    weak = retrain_check(scores[:1], np.array([0.5, 0.6, 0.4]), ["a"], metric=METRICS["mse"], registered=registered,
                         null=null)
    assert weak.diverged == {} and "does not reproduce the model" in weak.note  # 0.5 > 2 × 0.1
