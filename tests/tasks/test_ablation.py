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
    assert [s["seconds"] > 0 for s in details["seeds"]] == [True, True]
    again, _ = ablation_importance(model, train, test, **kwargs)
    np.testing.assert_array_equal(importances, again)
