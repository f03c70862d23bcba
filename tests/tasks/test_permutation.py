import numpy as np
import pytest

from tasks.metrics import METRICS
from tasks.modeling import Forward
from tasks.permutation import permutation_importance
from tasks.sources import load_model, load_split, resolve_version
from tests import helpers


@pytest.fixture(scope="module")
def linear(linear_registry):
    version = resolve_version(linear_registry, "linear")
    model = load_model(version.model_path)
    return Forward(model, version.features), load_split(version.test_path, version)


def test_linear_oracle_two_w_squared_var(linear):
    forward, test = linear
    scores = permutation_importance(forward, test.X, test.y, metric=METRICS["mse"], n_repeats=5, random_state=0)
    expected = 2 * helpers.LINEAR_WEIGHTS**2 * test.X.var(axis=0)
    np.testing.assert_allclose(scores.importances.mean(axis=1)[:3], expected[:3], rtol=0.08)
    assert scores.baseline == pytest.approx(0.0, abs=1e-6)


def test_noise_feature_interval_covers_zero(linear):
    from tasks.result import ImportanceResult

    forward, test = linear
    scores = permutation_importance(forward, test.X, test.y, metric=METRICS["mse"], n_repeats=5, random_state=0)
    result = ImportanceResult.from_samples("permutation", "behavioural", helpers.LINEAR_FEATURES, scores.importances)
    assert result.low[3] <= 0 <= result.high[3]
    assert result.rank[3] == 4


def test_same_seed_same_numbers_and_chunking_does_not_change_them(linear):
    forward, test = linear
    kwargs = dict(metric=METRICS["mse"], n_repeats=3, random_state=42)
    big = permutation_importance(forward, test.X, test.y, **kwargs)
    again = permutation_importance(forward, test.X, test.y, **kwargs)
    small = permutation_importance(forward, test.X, test.y, rows_per_call=999, **kwargs)
    np.testing.assert_array_equal(big.importances, again.importances)
    np.testing.assert_allclose(big.importances, small.importances, rtol=1e-6, atol=1e-9)
    other = permutation_importance(forward, test.X, test.y, metric=METRICS["mse"], n_repeats=3, random_state=43)
    assert not np.array_equal(big.importances, other.importances)


def test_higher_is_better_metric_keeps_the_sign(linear):
    forward, test = linear
    y = (test.y > 0).astype(np.int64)
    # accuracy of sign(prediction) against sign(y): shuffling a driver lowers it, so importance is positive
    metric = METRICS["accuracy"]
    scores = permutation_importance(lambda X: 1 / (1 + np.exp(-forward(X))), test.X, y, metric=metric, random_state=0)
    assert (scores.importances.mean(axis=1)[:2] > 0.05).all()


def test_embedding_model_permutes_the_raw_integer_column(embedding_registry):
    version = resolve_version(embedding_registry, "embed")
    forward = Forward(load_model(version.model_path), version.features)
    test = load_split(version.test_path, version)
    units = {"amount": [0], "region": [1], "noise": [2], "amount+region": [0, 1]}
    scores = permutation_importance(forward, test.X, test.y, metric=METRICS["mse"], units=units, random_state=0)
    mean = dict(zip(scores.units, scores.importances.mean(axis=1)))
    # region's effect has variance 1.25 and amount's 2.25: both matter, noise does not, the pair most of all
    assert mean["region"] > 1.0 and mean["amount"] > 2.0
    assert abs(mean["noise"]) < 0.2
    assert mean["amount+region"] > max(mean["amount"], mean["region"])
