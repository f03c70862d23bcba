import numpy as np
import pytest

from tasks.ablation import Recipe, ablation_constants, ablation_importance, fused_retrain_scores, retrain_score
from tasks.metrics import METRICS
from tasks.sources import load_model, load_split, resolve_version


@pytest.fixture(scope="module")
def embed(embedding_registry):
    version = resolve_version(embedding_registry, "embed")
    return (
        load_model(version.model_path),
        load_split(version.train_path, version),
        load_split(version.test_path, version),
        version,
    )


def test_fused_branches_reproduce_one_fit_per_feature(embed):
    model, train, test, version = embed
    constants = ablation_constants(train, version.categorical)
    recipe = Recipe(epochs=3, batch_size=128)
    units = [[], [0], [1], [2]]
    one_by_one = [
        retrain_score(model, train, test, metric=METRICS["mse"], recipe=recipe, seed=11, ablate=u, constants=constants)
        for u in units
    ]
    fused = fused_retrain_scores(model, train, test, metric=METRICS["mse"], recipe=recipe, seed=11, units=units,
                                 constants=constants)
    np.testing.assert_allclose(fused, one_by_one, rtol=1e-4)


def test_categorical_is_held_at_its_mode(embed):
    _, train, _, version = embed
    constants = ablation_constants(train, version.categorical)
    region = train.X[:, 1]
    values, counts = np.unique(region, return_counts=True)
    assert constants[1] == values[np.argmax(counts)]
    assert constants[0] == pytest.approx(train.X[:, 0].mean(), rel=1e-5)


def test_drivers_matter_noise_does_not_and_seeds_reproduce(embed):
    model, train, test, version = embed
    kwargs = dict(metric=METRICS["mse"], recipe=Recipe(epochs=6, batch_size=64), n_seeds=2, random_state=5,
                  constants=ablation_constants(train, version.categorical))
    importances, details = ablation_importance(model, train, test, **kwargs)
    assert importances.shape == (3, 2)
    mean = importances.mean(axis=1)
    assert mean[0] > 1.0 and mean[1] > 0.5  # amount (variance 2.25) and region (1.25) are drivers
    assert abs(mean[2]) < 0.25 * min(mean[0], mean[1])
    assert len(details["seeds"]) == 2 and [t["seconds"] > 0 for t in details["timings"]] == [True, True]
    again, _ = ablation_importance(model, train, test, **kwargs)
    np.testing.assert_array_equal(importances, again)


def test_budget_in_units_ablates_the_first_units_only(embed):
    from tasks.ablation import Budget

    model, train, test, version = embed
    units = {"region": [1], "amount": [0], "noise": [2]}  # priority order, as from permutation importance
    importances, details = ablation_importance(
        model, train, test, metric=METRICS["mse"], recipe=Recipe(epochs=2, batch_size=128), n_seeds=1,
        random_state=0, units=units, constants=ablation_constants(train, version.categorical), budget=Budget(max_units=2),
    )
    assert details["not_ablated"] == ["noise"]
    assert np.isfinite(importances[:2]).all() and np.isnan(importances[2]).all()


@pytest.mark.parametrize(("text", "expected"), [("8", (8, None)), ("300s", (None, 300.0)), (None, (None, None))])
def test_budget_parsing(text, expected):
    from tasks.ablation import Budget

    budget = Budget.parse(text)
    assert (budget.max_units, budget.seconds) == expected


@pytest.mark.parametrize("text", ["0", "-3", "ten", "5m"])
def test_bad_budget_says_what_to_give(text):
    from tasks.ablation import Budget
    from tasks.errors import FeatureAuditError

    with pytest.raises(FeatureAuditError, match="give a number of features"):
        Budget.parse(text)


def test_priority_order_follows_permutation_ranks():
    from tasks.ablation import priority_order
    from tasks.result import ImportanceResult

    perm = ImportanceResult.from_samples("permutation", "behavioural", ("a", "b", "c"), np.array([0.1, 3.0, 1.0]))
    assert priority_order(["a", "b", "c"], perm) == ["b", "c", "a"]
    assert priority_order(["a", "b", "c"], [perm]) == ["b", "c", "a"]
    assert priority_order(["a", "b", "c"], RuntimeError("permutation failed")) == ["a", "b", "c"]
