"""Effects (tasks/methods/effects.py): PD, ICE and ALE against models whose effects are known: a linear model set
by hand, trained MLPs on y = x0² + x1 and y = x0·x1 + x2, and a model set by hand that follows the data's
correlation but goes wild off it."""

import numpy as np
import pandas as pd
import pytest

from tasks.methods.effects import EffectsDetails, effects_audit, ice_curves
from tasks.registry.versions import resolve_version
from tasks.subject.loaded import load_subject
from tests import trained
from tests.helpers import write_version


def _curves(result):
    assert isinstance(result.details, EffectsDetails)
    return {c.feature: c for c in result.details.curves}


@pytest.fixture(scope="module")
def linear_effects(linear_registry):
    subject = load_subject(resolve_version(linear_registry, "linear"))
    return effects_audit(subject, seed=0, n_features=4, rows=400, draws=50)


def test_on_a_linear_model_pd_is_the_coefficients_line_and_ale_equals_it_centred(linear_effects):
    curves = _curves(linear_effects)
    for feature, slope in (("a", 3.0), ("b", -2.0), ("c", 1.0)):  # y = 3a − 2b + c + 0·noise, set by hand
        c = curves[feature]
        grid, pd, ale = np.array(c.grid), np.array(c.pd), np.array(c.ale)
        fitted = np.polyfit(grid, pd, 1)
        assert fitted[0] == pytest.approx(slope, rel=1e-3)
        assert np.max(np.abs(pd - np.polyval(fitted, grid))) < 1e-3 * np.ptp(pd)  # straight
        assert np.ptp(ale - pd) < 1e-3 * np.ptp(pd)  # ALE is PD up to a constant: the centring
        assert c.heterogeneity < 1e-6 and c.shape == ("decreasing" if slope < 0 else "increasing")
        assert not any(c.marked)  # independent features: every grid value is one the data shows
    assert curves["noise"].shape == "flat"
    assert [c.feature for c in linear_effects.details.curves] == ["a", "b", "c", "noise"]  # no ranking ran
    assert "manifest's order" in linear_effects.details.chosen_by


def test_the_result_is_each_main_effects_size_with_a_bootstrap_interval(linear_effects):
    sizes = dict(zip(linear_effects.features, linear_effects.importances_mean))
    # the rms of a centred line is |slope|·sd: a has sd 1, b sd 2, c sd 0.5 (tests/helpers.linear_frame)
    assert sizes["b"] == pytest.approx(4.0, rel=0.15) and sizes["a"] == pytest.approx(3.0, rel=0.15)
    assert sizes["c"] == pytest.approx(0.5, rel=0.15) and sizes["noise"] == pytest.approx(0.0, abs=1e-6)
    assert np.all(linear_effects.low <= linear_effects.importances_mean + 1e-12)
    assert np.all(linear_effects.importances_mean <= linear_effects.high + 1e-12)
    assert linear_effects.kind == "effect" and linear_effects.sampling == "bootstrap"


def test_the_same_seed_gives_the_same_curves_and_another_seed_other_rows(linear_registry):
    subject = load_subject(resolve_version(linear_registry, "linear"))
    first, again = (effects_audit(subject, seed=3, n_features=2, rows=200, draws=20) for _ in range(2))
    other = effects_audit(subject, seed=4, n_features=2, rows=200, draws=20)
    assert first.details == again.details
    assert first.details.curves[0].ice_rows != other.details.curves[0].ice_rows


def test_all_grid_values_of_all_rows_go_through_the_model_in_one_call_and_blocks_change_nothing():
    calls = []

    def forward(X):
        calls.append(len(X))
        return np.sin(X[:, 0]) * X[:, 1]

    X = np.random.default_rng(0).normal(size=(50, 3))
    grid = np.linspace(-2, 2, 7)
    one = ice_curves(forward, X, 0, grid)
    assert calls == [350]
    blocked = ice_curves(forward, X, 0, grid, block_values=21)  # one row per block
    np.testing.assert_allclose(one, blocked)
    np.testing.assert_allclose(one[:, :, 0], np.sin(grid)[None, :] * X[:, 1:2])


@pytest.fixture(scope="module")
def trained_registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("effects-trained")
    square = trained.build(root, "square", 1.0, 0)
    product = trained.build(root, "product", 1.0, 0)
    return root, square, product


def test_a_u_shaped_effect_is_non_monotone_and_an_additive_models_ice_curves_are_parallel(trained_registry):
    root, square, _ = trained_registry
    curves = _curves(effects_audit(load_subject(resolve_version(root, square.name)), seed=0, rows=300, draws=50))
    assert curves["x0"].shape == "non-monotone", curves["x0"].shape_reason
    assert curves["x1"].shape == "increasing", curves["x1"].shape_reason
    for feature in ("x0", "x1"):  # y = x0² + x1: no interaction, so ICE curves are parallel
        assert curves[feature].shape != "heterogeneous" and curves[feature].heterogeneity < 0.3


def test_a_feature_that_acts_through_a_product_has_ice_curves_that_fan_out(trained_registry):
    root, _, product = trained_registry
    curves = _curves(effects_audit(load_subject(resolve_version(root, product.name)), seed=0, rows=300, draws=50))
    for feature in ("x0", "x1"):  # y = x0·x1 + x2: each one's slope is the other
        assert curves[feature].shape == "heterogeneous" and curves[feature].heterogeneity > 0.6
    assert curves["x2"].shape == "increasing"


def _off_the_data_model():
    """f(x0, x1) = x0 + 10·(relu(x0 − x1 − 2.5) + relu(x1 − x0 − 2.5)): on data where x1 follows x0 (ρ = 0.95,
    so x0 − x1 has a standard deviation of 0.32 and never reaches 2.5) it is x0; off it, it bends sharply."""
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, activation="relu"), keras.layers.Dense(1)])
    model.layers[0].set_weights([np.array([[1.0, 1.0, -1.0], [0.0, -1.0, 1.0]], np.float32),
                                 np.array([10.0, -2.5, -2.5], np.float32)])
    model.layers[1].set_weights([np.array([[1.0], [10.0], [10.0]], np.float32), np.array([-10.0], np.float32)])
    model.compile(loss="mse")
    return model


def _correlated(n, seed, rho=0.95):
    rng = np.random.default_rng(seed)
    x0 = rng.standard_normal(n)
    x1 = rho * x0 + np.sqrt(1 - rho ** 2) * rng.standard_normal(n)
    return pd.DataFrame({"x0": x0.astype(np.float32), "x1": x1.astype(np.float32), "y": x0.astype(np.float32)})


def test_with_features_correlated_at_095_ale_keeps_the_true_main_effect_while_pd_is_off(tmp_path):
    write_version(tmp_path, "off", "v1", _off_the_data_model(), _correlated(1000, 1), _correlated(1000, 2))
    result = effects_audit(load_subject(resolve_version(tmp_path, "off")), seed=0, rows=1000, draws=50)
    c = _curves(result)["x0"]
    grid, pd, ale = np.array(c.grid), np.array(c.pd), np.array(c.ale)
    truth = grid - np.mean(grid)  # on the data f is x0: its main effect is a line of slope 1 (centred)
    ale_error = np.max(np.abs((ale - ale.mean()) - truth))
    pd_error = np.max(np.abs((pd - pd.mean()) - truth))
    # seen here: ALE within 0.10 of the line, PD off by 11.95 at the ends of the grid
    assert ale_error < 0.25, f"ALE off the true main effect by {ale_error:.3f}"
    assert pd_error > 3.0, f"PD off the true main effect by only {pd_error:.3f}"
    print(f"largest error against the true main effect: ALE {ale_error:.3f}, PD {pd_error:.3f}")
    marked = np.array(c.marked)
    assert marked[0] and marked[-1] and not marked[len(marked) // 2]  # the grid's ends are off the data for most rows
    assert c.shape == "increasing"


def test_a_categorical_feature_is_evaluated_level_by_level_with_no_ale(embedding_registry):
    subject = load_subject(resolve_version(embedding_registry, "embed"))
    curves = _curves(effects_audit(subject, seed=0, n_features=3, rows=300, draws=20))
    region = curves["region"]  # y = 1.5·amount + (-1, 0, 1, 2)[region], behind an Embedding
    assert region.categorical and region.ale is None and region.rug == []
    assert sorted(region.grid) == [0, 1, 2, 3]  # its levels, as the split holds them
    assert region.shape == "by level" and np.isnan(region.monotone), region.shape_reason
    assert curves["amount"].shape == "increasing"


def test_the_result_round_trips_through_the_cache(linear_effects):
    import json

    from tasks.methods.cache import decode, encode

    again = decode(json.loads(json.dumps(encode(linear_effects))))
    assert again.details.to_json() == linear_effects.details.to_json()  # NaN (a flat curve's direction) as null
    np.testing.assert_array_equal(again.importances_mean, linear_effects.importances_mean)
