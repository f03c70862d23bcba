import numpy as np
import pytest

from tasks.sources import load_model, load_split, resolve_version
from tasks.weights import (
    SCALED_NOTE,
    Unattributable,
    effective_magnitudes,
    feature_sources,
    input_reaches,
    weight_importance,
    weight_magnitudes,
)
from tests import helpers


def _importance(model, features, X, **options):
    """weight_importance for a model fed the plain way, each column scaled by its standard deviation in ``X``."""
    return weight_importance(model, features, feature_sources(model, features), X.std(axis=0), **options)


def test_linear_model_weights_are_the_coefficients(linear_registry):
    version = resolve_version(linear_registry, "linear")
    model = load_model(version.model_path)
    np.testing.assert_allclose(weight_magnitudes(model, version.features), np.abs(helpers.LINEAR_WEIGHTS), rtol=1e-6)


def test_scale_aware_weights_multiply_by_the_feature_std(linear_registry):
    version = resolve_version(linear_registry, "linear")
    model = load_model(version.model_path)
    test = load_split(version.test_path, version)
    naive, scaled = _importance(model, version.features, test.X)
    assert naive.method == "weights" and scaled.method == "weights_scaled"
    assert naive.kind == scaled.kind == "weight-based"
    np.testing.assert_allclose(scaled.importances_mean, np.abs(helpers.LINEAR_WEIGHTS) * test.X.std(axis=0), rtol=1e-5)
    # b has the smaller coefficient but twice the scale: only the scale-aware ranking puts it first.
    assert naive.rank.tolist() == [1, 2, 3, 4]
    assert scaled.rank[1] == 1


def test_named_inputs_use_dense_rows_and_the_embedding_table(embedding_registry):
    version = resolve_version(embedding_registry, "embed")
    model = load_model(version.model_path)
    magnitudes = dict(zip(version.features, weight_magnitudes(model, version.features)))
    dense = next(l for l in model.layers if type(l).__name__ == "Dense")
    kernel = np.abs(np.asarray(dense.kernel))  # rows: amount, 3 embedding dims, noise (Concatenate order)
    table = np.abs(np.asarray(next(l for l in model.layers if type(l).__name__ == "Embedding").embeddings))
    np.testing.assert_allclose(magnitudes["amount"], kernel[0].sum(), rtol=1e-6)
    np.testing.assert_allclose(magnitudes["noise"], kernel[4].sum(), rtol=1e-6)
    np.testing.assert_allclose(magnitudes["region"], table.sum(), rtol=1e-6)


# Standardized-effect coefficients (the effect of one standard deviation of each column) and raw
# column scales that disagree with them: ranked by raw scale, 'a' would come first and 'b' third.
STANDARDIZED_COEFS = np.array([0.5, 3.0, 2.0, 1.0])
RAW_SCALES = np.array([100.0, 1.0, 0.01, 10.0])
SCALED_FEATURES = ("a", "b", "c", "d")


def _scaled_columns(n_rows: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n_rows, len(RAW_SCALES))) * RAW_SCALES + 5.0).astype(np.float32)


def _dense_behind(preprocess, weights: np.ndarray, name: str = "x"):
    """Input -> preprocess layers -> Dense(1), the Dense weights set by hand."""
    import keras

    inputs = keras.Input((len(weights),), name=name)
    hidden = inputs
    for layer in preprocess:
        hidden = layer(hidden)
    dense = keras.layers.Dense(1, name="dense")
    model = keras.Model(inputs, dense(hidden))
    dense.set_weights([np.asarray(weights, np.float32)[:, None], np.zeros(1, np.float32)])
    return model


def _normalized_model():
    import keras

    norm = keras.layers.Normalization(name="norm")
    norm.adapt(_scaled_columns(4000, seed=5))
    return _dense_behind([norm], STANDARDIZED_COEFS), norm


def _std_reaching_dense(model, X: np.ndarray) -> np.ndarray:
    """The standard deviation of each column as the Dense layer actually receives it (run through the model)."""
    import keras

    dense = model.get_layer("dense")
    reaching = keras.Model(model.inputs, dense.input).predict(X, verbose=0)
    return reaching.astype(float).std(axis=0)


def test_normalized_model_ranks_by_standardized_effect_not_raw_scale():
    model, norm = _normalized_model()
    X = _scaled_columns(2000, seed=6)
    naive, scaled = _importance(model, SCALED_FEATURES, X)

    # The naive magnitudes are still the |W| rows; the effective ones divide by the adapted std.
    np.testing.assert_allclose(weight_magnitudes(model, SCALED_FEATURES), STANDARDIZED_COEFS, rtol=1e-6)
    variance = np.asarray(norm.variance, dtype=float).ravel()
    np.testing.assert_allclose(
        effective_magnitudes(model, SCALED_FEATURES), STANDARDIZED_COEFS / np.sqrt(variance), rtol=1e-5
    )
    # |w_j|·std_j/√var_j: the test split's std over the adapted one, so ≈ |w_j|.
    np.testing.assert_allclose(
        scaled.importances_mean, STANDARDIZED_COEFS * X.std(axis=0) / np.sqrt(variance), rtol=1e-4
    )
    np.testing.assert_allclose(scaled.importances_mean, STANDARDIZED_COEFS, rtol=0.05)
    assert scaled.rank.tolist() == [4, 1, 2, 3]  # the coefficients' order
    # The old formula, |W| × raw std, would have ranked by raw scale.
    old = STANDARDIZED_COEFS * X.std(axis=0)
    assert np.argsort(-old).tolist() == [0, 3, 1, 2]
    assert naive.rank.tolist() == [4, 1, 2, 3]
    assert "Scale-aware weights account for the model's own Normalization layer 'norm'." in scaled.notes
    assert not any("Normalization layer" in note for note in naive.notes)


def test_normalization_gain_survives_saving(tmp_path):
    model, _ = _normalized_model()
    import keras

    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(
        effective_magnitudes(loaded, SCALED_FEATURES), effective_magnitudes(model, SCALED_FEATURES), rtol=1e-6
    )


def test_rescaling_gain_is_the_absolute_scale():
    import keras

    weights = np.array([1.0, 2.0, 3.0])
    model = _dense_behind([keras.layers.Rescaling(0.1, offset=4.0, name="rescale")], weights)
    np.testing.assert_allclose(weight_magnitudes(model, ("p", "q", "r")), weights, rtol=1e-6)
    np.testing.assert_allclose(effective_magnitudes(model, ("p", "q", "r")), 0.1 * weights, rtol=1e-6)

    per_column = _dense_behind([keras.layers.Rescaling([-2.0, 1.0, 0.5])], weights)
    np.testing.assert_allclose(effective_magnitudes(per_column, ("p", "q", "r")), [2.0, 2.0, 1.5], rtol=1e-6)
    X = _scaled_columns(500, seed=7)[:, :3]
    _, scaled = _importance(per_column, ("p", "q", "r"), X)
    np.testing.assert_allclose(scaled.importances_mean, [2.0, 2.0, 1.5] * X.std(axis=0), rtol=1e-5)


def _batch_norm():
    import keras

    layer = keras.layers.BatchNormalization(name="bn", epsilon=1e-3)
    layer.build((None, 4))
    layer.set_weights([
        np.array([1.0, -2.0, 0.5, 3.0], np.float32),  # gamma (one negative: its magnitude counts)
        np.array([0.1, 0.2, 0.3, 0.4], np.float32),  # beta
        np.array([1.0, 2.0, 3.0, 4.0], np.float32),  # moving mean
        np.array([400.0, 0.25, 1e-4, 9.0], np.float32),  # moving variance
    ])
    return [layer]


def _inverted_normalization():
    import keras

    return [keras.layers.Normalization(mean=[0.0, 1.0, 2.0, 3.0], variance=[4.0, 0.25, 1e-6, 1.0], invert=True)]


def _stacked():
    import keras

    return [
        keras.layers.Rescaling(0.5),
        keras.layers.Dropout(0.3),
        keras.layers.Normalization(mean=1.0, variance=9.0, name="norm"),
        keras.layers.Rescaling([1.0, 2.0, 3.0, 4.0]),
    ]


@pytest.mark.parametrize("preprocess", [_batch_norm, _inverted_normalization, _stacked])
def test_scale_aware_weights_use_the_std_reaching_the_first_dense_layer(preprocess):
    model = _dense_behind(preprocess(), STANDARDIZED_COEFS)
    X = _scaled_columns(1000, seed=8)
    _, scaled = _importance(model, SCALED_FEATURES, X)
    np.testing.assert_allclose(scaled.importances_mean, STANDARDIZED_COEFS * _std_reaching_dense(model, X), rtol=1e-3)
    np.testing.assert_allclose(weight_magnitudes(model, SCALED_FEATURES), STANDARDIZED_COEFS, rtol=1e-6)


def test_gain_follows_each_named_input_through_concatenate():
    import keras

    amount = keras.Input((1,), name="amount")
    noise = keras.Input((1,), name="noise")
    region = keras.Input((1,), name="region", dtype="int32")
    embedded = keras.layers.Flatten()(keras.layers.Embedding(4, 3)(region))
    scaled_amount = keras.layers.Normalization(mean=0.0, variance=100.0, name="amount_norm")(amount)
    hidden = keras.layers.Concatenate()([scaled_amount, embedded, keras.layers.Rescaling(3.0, name="x3")(noise)])
    dense = keras.layers.Dense(2, name="dense")
    model = keras.Model([amount, region, noise], dense(hidden))
    kernel = np.abs(np.asarray(dense.kernel))  # rows: amount, 3 embedding dims, noise
    table = np.abs(np.asarray(next(l for l in model.layers if type(l).__name__ == "Embedding").embeddings))
    features = ("amount", "region", "noise")
    np.testing.assert_allclose(
        weight_magnitudes(model, features), [kernel[0].sum(), table.sum(), kernel[4].sum()], rtol=1e-6
    )
    np.testing.assert_allclose(
        effective_magnitudes(model, features), [kernel[0].sum() / 10.0, table.sum(), 3.0 * kernel[4].sum()], rtol=1e-5
    )
    X = np.column_stack([np.linspace(-50, 50, 200), np.arange(200) % 4, np.linspace(-1, 1, 200)])
    _, scaled = _importance(model, features, X, categorical=("region",))
    np.testing.assert_allclose(scaled.importances_mean[1], table.sum(), rtol=1e-6)  # categoricals unscaled
    assert (
        "Scale-aware weights account for the model's own Normalization layer 'amount_norm' and Rescaling layer 'x3'."
        in scaled.notes
    )


def test_models_without_rescaling_layers_get_no_extra_note(linear_registry):
    version = resolve_version(linear_registry, "linear")
    model = load_model(version.model_path)
    np.testing.assert_allclose(
        effective_magnitudes(model, version.features), weight_magnitudes(model, version.features), rtol=1e-12
    )
    _, scaled = _importance(model, version.features, load_split(version.test_path, version).X)
    assert scaled.notes[0] == SCALED_NOTE and not any("account for the model's own" in n for n in scaled.notes)
