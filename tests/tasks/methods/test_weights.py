import numpy as np
import pytest

from tasks.methods.weights import (
    SCALED_NOTE,
    Unattributable,
    effective_magnitudes,
    feature_sources,
    input_reaches,
    weight_importance,
    weight_magnitudes,
)
from tasks.registry.versions import resolve_version
from tasks.subject.loaded import load_subject
from tests import helpers


def _importance(model, features, X, **options):
    """weight_importance for a model fed the plain way, each column scaled by its standard deviation in ``X``."""
    return weight_importance(model, features, feature_sources(model, features), X.std(axis=0), **options)


def test_linear_model_weights_are_the_coefficients(linear_registry):
    version = resolve_version(linear_registry, "linear")
    model = load_subject(version).model
    np.testing.assert_allclose(weight_magnitudes(model, version.features), np.abs(helpers.LINEAR_WEIGHTS), rtol=1e-6)


def test_scale_aware_weights_multiply_by_the_feature_std(linear_registry):
    version = resolve_version(linear_registry, "linear")
    subject = load_subject(version)
    model, test = subject.model, subject.test
    naive, scaled = _importance(model, version.features, test.X)
    assert naive.method == "weights" and scaled.method == "weights_scaled"
    assert naive.kind == scaled.kind == "weight-based"
    np.testing.assert_allclose(scaled.importances_mean, np.abs(helpers.LINEAR_WEIGHTS) * test.X.std(axis=0), rtol=1e-5)
    # b has the smaller coefficient but twice the scale: only the scale-aware ranking puts it first.
    assert naive.rank.tolist() == [1, 2, 3, 4]
    assert scaled.rank[1] == 1


def test_named_inputs_use_dense_rows_and_the_embedding_table(embedding_registry):
    version = resolve_version(embedding_registry, "embed")
    model = load_subject(version).model
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
    subject = load_subject(version)
    model = subject.model
    np.testing.assert_allclose(
        effective_magnitudes(model, version.features), weight_magnitudes(model, version.features), rtol=1e-12
    )
    _, scaled = _importance(model, version.features, subject.test.X)
    assert scaled.notes[0] == SCALED_NOTE and not any("account for the model's own" in n for n in scaled.notes)


# --- Keras models as people write them -------------------------------------------------------------------
# Each model's first weighted layer gets a hand-set kernel whose row j has |W| sum ROW_SUMS[j] = j + 1, so a
# feature's expected importance is the sum of its rows' numbers.


def _set_rows(dense, sums) -> None:
    """Give a Dense layer a kernel whose row j has |W| sum ``sums[j]`` (half of it, with either sign, per unit)."""
    sums = np.asarray(sums, dtype=np.float32)
    kernel = np.stack([sums / 2, -sums / 2], axis=1) if dense.units == 2 else sums[:, None]
    dense.set_weights([kernel, np.zeros(dense.units, np.float32)])


def _rows(n: int) -> np.ndarray:
    return np.arange(1, n + 1, dtype=float)


def test_a_loaded_sequential_model_counts_its_first_layer_once(tmp_path):
    """Loading a Sequential model leaves a second, unused call of its first layer behind: only the model's own
    graph counts."""
    import keras

    dense = keras.layers.Dense(2, name="first")
    keras.Sequential([keras.Input((3,), name="x"), dense, keras.layers.Dense(1, name="head")]).save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    rows = np.abs(np.asarray(loaded.get_layer("first").kernel)).sum(axis=1)
    np.testing.assert_allclose(weight_magnitudes(loaded, ("a", "b", "c")), rows, rtol=1e-6)


def test_scalar_inputs_reach_the_dense_layer_through_expand_dims_reshape_and_flatten():
    import keras
    from keras import layers

    a, b, c = keras.Input((), name="a"), keras.Input((), name="b"), keras.Input((1,), name="c")
    joined = layers.Concatenate()([keras.ops.expand_dims(a, -1), layers.Reshape((1,))(b), layers.Flatten()(c)])
    dense = layers.Dense(2, name="first")
    model = keras.Model({"a": a, "b": b, "c": c}, dense(joined))
    _set_rows(dense, [1.0, 2.0, 3.0])

    reaches = input_reaches(model)
    assert {name: r.naive.tolist() for name, r in reaches.items()} == {"a": [1.0], "b": [2.0], "c": [3.0]}
    naive, scaled = weight_importance(model, ("c", "a", "b"), [("c", 0), ("a", 0), ("b", 0)], np.array([1.0, 2.0, 4.0]))
    np.testing.assert_allclose(naive.importances_mean, [3.0, 1.0, 2.0], rtol=1e-6)
    np.testing.assert_allclose(scaled.importances_mean, [3.0, 2.0, 8.0], rtol=1e-6)


def test_each_element_of_a_block_input_is_numbered_in_c_order():
    import keras
    from keras import layers

    steps = keras.Input((2, 3), name="steps")  # a Dense on a (T, F) input: element (t, f) feeds row f
    dense = layers.Dense(2, name="per_step")
    model = keras.Model(steps, layers.Dense(1)(layers.Flatten()(dense(steps))))
    _set_rows(dense, [1.0, 2.0, 3.0])
    np.testing.assert_allclose(input_reaches(model)["steps"].naive, [1, 2, 3, 1, 2, 3], rtol=1e-6)
    features = tuple(f"s{t}_{f}" for t in range(2) for f in range(3))
    np.testing.assert_allclose(weight_magnitudes(model, features), [1, 2, 3, 1, 2, 3], rtol=1e-6)

    wrapped = keras.layers.TimeDistributed(dense, name="each_step")  # the same, written with TimeDistributed
    model = keras.Model(steps, layers.Dense(1)(layers.Flatten()(wrapped(steps))))
    np.testing.assert_allclose(weight_magnitudes(model, features), [1, 2, 3, 1, 2, 3], rtol=1e-6)


def test_slices_and_constant_arithmetic_are_followed_with_their_gain():
    import keras
    from keras import layers

    x = keras.Input((4,), name="x")
    joined = keras.ops.concatenate([x[:, 1:3] * 2.0, x / 10.0], axis=-1)  # rows 1-2: x1, x2 (×2); rows 3-6: x0..x3 (/10)
    dense = layers.Dense(2, name="first")
    model = keras.Model(x, dense(joined))
    _set_rows(dense, _rows(6))
    reach = input_reaches(model)["x"]
    np.testing.assert_allclose(reach.naive, [3, 1 + 4, 2 + 5, 6], rtol=1e-6)
    np.testing.assert_allclose(reach.effective, [0.3, 2 + 0.4, 4 + 0.5, 0.6], rtol=1e-6)
    assert reach.encoded.tolist() == [0, 0, 0, 0]


def test_a_nested_model_is_walked_into_and_out_of():
    import keras
    from keras import layers

    encoded = keras.Input((3,), name="encoded")
    dense = layers.Dense(2, name="first")
    training_model = keras.Model(encoded, layers.Dense(1)(layers.Dropout(0.5)(dense(encoded))))
    raw = {name: keras.Input((1,), name=name) for name in ("p", "q")}
    scaled_q = layers.Rescaling(0.5, name="half")(raw["q"])
    preprocessing = keras.Model(raw, layers.Concatenate()([raw["p"], scaled_q, raw["p"]]))
    model = keras.Model(raw, training_model(preprocessing(raw)))
    _set_rows(dense, [1.0, 2.0, 3.0])
    reaches = input_reaches(model)
    np.testing.assert_allclose([reaches["p"].naive[0], reaches["q"].naive[0]], [1 + 3, 2], rtol=1e-6)
    np.testing.assert_allclose(effective_magnitudes(model, ("p", "q")), [4, 1], rtol=1e-6)


# Lookups in int mode followed by an Embedding: the element owns the whole table, whose rows are the
# layer's output range (vocabulary with OOV and mask indices, bins); the table is 0.25 everywhere, so its
# |W| sum is 0.5 × rows and tells the width.
def _string_lookup():
    import keras

    return keras.layers.StringLookup(vocabulary=["x", "y", "z"]), "string", 3 + 1  # one OOV index


def _integer_lookup():
    import keras

    return keras.layers.IntegerLookup(vocabulary=[3, 5, 7], mask_token=0), "int64", 3 + 1 + 1  # OOV and mask


def _hashing():
    import keras

    return keras.layers.Hashing(num_bins=6), "string", 6


def _discretization():
    import keras

    return keras.layers.Discretization(bin_boundaries=[0.0, 1.0]), "float32", 3


@pytest.mark.parametrize("lookup", [_string_lookup, _integer_lookup, _hashing, _discretization])
def test_a_lookup_into_an_embedding_owns_the_whole_table(lookup):
    import keras
    from keras import layers

    layer, dtype, rows = lookup()
    assert layer(keras.Input((1,), dtype=dtype)).shape == (None, 1)  # int mode: one code per element
    category = keras.Input((), name="category", dtype=dtype)
    amount = keras.Input((1,), name="amount")
    embedding = layers.Embedding(rows, 2, name="embedding")
    embedded = embedding(layer(category))  # (None, 2), as in the wide & deep example's deep part
    dense = layers.Dense(2, name="first")
    model = keras.Model({"category": category, "amount": amount}, dense(layers.Concatenate()([amount, embedded])))
    embedding.set_weights([np.full((rows, 2), -0.25, np.float32)])
    _set_rows(dense, [1.0, 2.0, 3.0])

    naive, scaled = weight_importance(model, ("category", "amount"), [("category", 0), ("amount", 0)],
                                      np.array([10.0, 3.0]))
    np.testing.assert_allclose(naive.importances_mean, [0.5 * rows, 1.0], rtol=1e-6)
    # The table is reached through codes: the raw column's scale (10 for a discretized number) does not enter.
    np.testing.assert_allclose(scaled.importances_mean, [0.5 * rows, 3.0], rtol=1e-6)


# Encodings into a Dense layer: one element becomes a block of `width` columns, whose rows it owns.
def _encodings():
    import keras
    from keras import layers

    return {
        "string one_hot (OOV)": (lambda x: layers.StringLookup(vocabulary=["x", "y", "z"], output_mode="one_hot")(x),
                                 "string", 4),
        "string multi_hot": (lambda x: layers.StringLookup(vocabulary=["x", "y", "z"], num_oov_indices=0,
                                                           output_mode="multi_hot")(keras.ops.expand_dims(x, -1)),
                             "string", 3),
        "integer count": (lambda x: layers.IntegerLookup(vocabulary=[3, 5, 7], output_mode="count")(
            keras.ops.expand_dims(x, -1)), "int64", 4),
        "hashing one_hot": (lambda x: layers.Hashing(num_bins=5, output_mode="one_hot")(keras.ops.expand_dims(x, -1)),
                            "string", 5),
        "discretization one_hot": (lambda x: layers.Discretization(bin_boundaries=[0.0, 1.0], output_mode="one_hot")(x),
                                   "float32", 3),
        "integer lookup + CategoryEncoding": (
            lambda x: layers.CategoryEncoding(num_tokens=4, output_mode="multi_hot")(
                layers.IntegerLookup(vocabulary=[3, 5, 7])(keras.ops.expand_dims(x, -1))), "int64", 4),
        "discretization + CategoryEncoding": (
            lambda x: layers.CategoryEncoding(num_tokens=3, output_mode="one_hot")(
                layers.Discretization(bin_boundaries=[0.0, 1.0])(x)), "float32", 3),
        "codes + CategoryEncoding": (lambda x: layers.CategoryEncoding(num_tokens=5, output_mode="one_hot")(x),
                                     "int32", 5),
    }


@pytest.mark.parametrize("case", list(_encodings()))
def test_an_encoded_element_owns_the_rows_of_its_block(case):
    import keras
    from keras import layers

    encode, dtype, width = _encodings()[case]
    category = keras.Input((), name="category", dtype=dtype)
    amount = keras.Input((1,), name="amount")
    block = encode(category)
    assert tuple(block.shape) == (None, width)
    dense = layers.Dense(2, name="first")
    model = keras.Model({"amount": amount, "category": category}, dense(layers.Concatenate()([amount, block])))
    _set_rows(dense, _rows(1 + width))  # row 1: amount; rows 2 .. width + 1: the block

    naive, scaled = weight_importance(model, ("amount", "category"), [("amount", 0), ("category", 0)],
                                      np.array([3.0, 10.0]))
    block_sum = _rows(1 + width)[1:].sum()
    np.testing.assert_allclose(naive.importances_mean, [1.0, block_sum], rtol=1e-6)
    np.testing.assert_allclose(scaled.importances_mean, [3.0, block_sum], rtol=1e-6)  # gain 1 for the block


def test_normalization_on_named_inputs_of_a_dict_model_keeps_its_gain():
    import keras
    from keras import layers

    amount, score = keras.Input((1,), name="amount"), keras.Input((), name="score")
    joined = layers.Concatenate()([
        layers.Normalization(mean=0.0, variance=100.0, name="amount_norm")(amount),
        layers.Normalization(mean=1.0, variance=4.0, name="score_norm")(keras.ops.expand_dims(score, -1)),
    ])
    dense = layers.Dense(2, name="first")
    model = keras.Model({"score": score, "amount": amount}, dense(joined))
    _set_rows(dense, [2.0, 3.0])
    features = ("amount", "score")
    np.testing.assert_allclose(weight_magnitudes(model, features), [2.0, 3.0], rtol=1e-6)
    np.testing.assert_allclose(effective_magnitudes(model, features), [0.2, 1.5], rtol=1e-5)
    _, scaled = weight_importance(model, features, feature_sources(model, features), np.array([10.0, 2.0]))
    np.testing.assert_allclose(scaled.importances_mean, [2.0, 3.0], rtol=1e-5)
    assert ("Scale-aware weights account for the model's own Normalization layer 'amount_norm' and Normalization "
            "layer 'score_norm'.") in scaled.notes


@pytest.mark.parametrize("saved", [False, True], ids=["built", "saved and loaded"])
def test_wide_and_deep_sums_the_wide_and_the_deep_first_layers(saved, tmp_path):
    """keras.io "Wide, Deep and Cross networks": a multi-hot wide part behind BatchNormalization, an embedded
    deep part, both reaching the output layer."""
    import keras
    from keras import layers

    amount, kind = keras.Input((), name="amount"), keras.Input((), name="kind", dtype="string")
    vocabulary = ["a", "b", "c"]
    wide = layers.Concatenate()([
        keras.ops.expand_dims(amount, -1),
        layers.StringLookup(vocabulary=vocabulary, mask_token=None, num_oov_indices=0, output_mode="binary")(
            keras.ops.expand_dims(kind, -1)),
    ])
    batch_norm = layers.BatchNormalization(name="wide_bn", epsilon=1e-3)
    wide = batch_norm(wide)
    embedding = layers.Embedding(3, 2, name="embedding")
    codes = layers.StringLookup(vocabulary=vocabulary, mask_token=None, num_oov_indices=0)(kind)
    deep_dense = layers.Dense(2, name="deep")
    deep = layers.Dropout(0.1)(layers.ReLU()(deep_dense(layers.Concatenate()([keras.ops.expand_dims(amount, -1),
                                                                             embedding(codes)]))))
    head = layers.Dense(2, name="head")
    model = keras.Model({"amount": amount, "kind": kind}, head(layers.Concatenate()([wide, deep])))
    _set_rows(head, _rows(6))  # rows 1: amount, 2-4: kind's multi-hot block, 5-6: the deep part
    _set_rows(deep_dense, [10.0, 20.0, 30.0])  # row 10: amount; 20, 30: the embedding's output
    embedding.set_weights([np.array([[1.0, -1.0], [0.5, 0.5], [2.0, 0.0]], np.float32)])  # |W| sum 5
    batch_norm.set_weights([np.array([3.0, 1.0, 1.0, 1.0], np.float32), np.zeros(4, np.float32),
                            np.zeros(4, np.float32), np.full(4, 4.0 - 1e-3, np.float32)])  # amount's gain: 3/2
    if saved:
        model.save(tmp_path / "wide_deep.keras")
        model = keras.saving.load_model(tmp_path / "wide_deep.keras")

    naive, scaled = weight_importance(model, ("amount", "kind"), [("amount", 0), ("kind", 0)], np.array([2.0, 1.0]))
    np.testing.assert_allclose(naive.importances_mean, [1 + 10, (2 + 3 + 4) + 5], rtol=1e-6)
    np.testing.assert_allclose(scaled.importances_mean, [(1 * 1.5 + 10) * 2, (2 + 3 + 4) + 5], rtol=1e-5)
    assert "Scale-aware weights account for the model's own BatchNormalization layer 'wide_bn'." in scaled.notes


def _feature_space(crosses=()):
    """keras.io "Structured data classification with FeatureSpace", small: its inference model and first layer."""
    import keras
    from keras.utils import FeatureSpace

    rng = np.random.default_rng(0)
    data = {
        "age": rng.uniform(20, 80, size=300).astype(np.float32),
        "color": rng.choice(["red", "green", "blue"], size=300),
        "income": rng.normal(50.0, 10.0, size=300).astype(np.float32),
        "rooms": rng.choice([1, 2], size=300).astype(np.int32),
    }
    space = FeatureSpace(
        features={
            "rooms": FeatureSpace.integer_categorical(num_oov_indices=0),
            "color": FeatureSpace.string_categorical(num_oov_indices=0),
            "age": FeatureSpace.float_discretized(num_bins=3),
            "income": FeatureSpace.float_normalized(),
        },
        crosses=list(crosses),
        output_mode="concat",
    )
    space.adapt(data)
    dense = keras.layers.Dense(2, name="first")
    predictions = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Dropout(0.5)(dense(
        space.get_encoded_features())))
    return keras.Model(inputs=space.get_inputs(), outputs=predictions), dense, space


def test_a_feature_space_inference_model_maps_each_block_back_to_its_raw_input():
    model, dense, space = _feature_space()
    # FeatureSpace concatenates its features in name order: age (3 bins), color (3 values), income, rooms (2 values).
    assert dense.kernel.shape[0] == 3 + 3 + 1 + 2
    _set_rows(dense, _rows(9))
    features = ("income", "age", "color", "rooms")
    naive, scaled = weight_importance(model, features, [(f, 0) for f in features], np.array([10.0, 17.0, 1.0, 1.0]),
                                      categorical=("color", "rooms"))
    np.testing.assert_allclose(naive.importances_mean, [7, 1 + 2 + 3, 4 + 5 + 6, 8 + 9], rtol=1e-6)
    std = np.sqrt(np.asarray(space.preprocessors["income"].variance, dtype=float)).item()
    np.testing.assert_allclose(scaled.importances_mean, [7 * 10.0 / std, 6, 15, 17], rtol=1e-5)


def test_a_feature_space_inference_model_reads_the_same_after_saving(tmp_path):
    import keras

    model, dense, _ = _feature_space()
    _set_rows(dense, _rows(9))
    model.save(tmp_path / "inference.keras")
    loaded = keras.saving.load_model(tmp_path / "inference.keras")  # safe mode
    features = ("age", "color", "income", "rooms")
    np.testing.assert_allclose(weight_magnitudes(loaded, features), [6, 15, 7, 17], rtol=1e-6)
    np.testing.assert_allclose(effective_magnitudes(loaded, features), effective_magnitudes(model, features), rtol=1e-6)


def test_a_feature_space_cross_makes_its_features_unattributable():
    from keras.utils import FeatureSpace

    model, _, _ = _feature_space(crosses=[FeatureSpace.cross(("age", "rooms"), crossing_dim=4)])
    features = ("income", "age", "color", "rooms")
    with pytest.raises(Unattributable) as caught:
        weight_importance(model, features, [(f, 0) for f in features], np.ones(4))
    assert caught.value.features == ("age", "rooms")
    assert caught.value.reason == ("the HashedCrossing layer 'age_X_rooms' hashes a combination of features into "
                                   "shared buckets: its columns map to no single feature")
    assert str(caught.value).startswith("weight-based importance cannot place 'age' and 'rooms': the HashedCrossing")


def _conv1d(x):
    from keras import layers

    return layers.Flatten()(layers.Conv1D(2, 2, name="conv1d")(x))


def _lstm(x):
    from keras import layers

    return layers.LSTM(3, name="lstm")(x)


def _gru(x):
    from keras import layers

    return layers.GRU(3, name="gru")(x)


def _attention(x):
    from keras import layers

    return layers.Flatten()(layers.MultiHeadAttention(num_heads=1, key_dim=2, name="attention")(x, x))


SHARED_FIRST_LAYERS = {
    _conv1d: "the Conv1D layer 'conv1d' mixes neighbouring columns: its filters map to no single feature",
    _lstm: "the LSTM layer 'lstm' shares its weights across the steps of a sequence and carries each step into the "
           "next: its weights map to no single feature",
    _gru: "the GRU layer 'gru' shares its weights across the steps of a sequence and carries each step into the "
          "next: its weights map to no single feature",
    _attention: "the MultiHeadAttention layer 'attention' mixes positions through attention: its projections map to "
                "no single feature",
}


@pytest.mark.parametrize("first", list(SHARED_FIRST_LAYERS), ids=lambda f: f.__name__.strip("_"))
def test_a_first_layer_shared_between_columns_is_unattributable(first):
    import keras
    from keras import layers

    sequence, amount = keras.Input((4, 2), name="sequence"), keras.Input((1,), name="amount")
    model = keras.Model([sequence, amount], layers.Dense(1)(layers.Concatenate()([first(sequence), amount])))
    features = ("amount", *(f"s{j}" for j in range(8)))
    sources = [("amount", 0), *(("sequence", j) for j in range(8))]
    with pytest.raises(Unattributable) as caught:
        weight_importance(model, features, sources, np.ones(9))
    assert caught.value.reason == SHARED_FIRST_LAYERS[first]
    assert caught.value.features == features[1:]  # 'amount' alone is placed
    with pytest.raises(Unattributable) as caught:
        input_reaches(model)
    assert caught.value.inputs == ("sequence",) and caught.value.features == ()


def test_a_conv2d_first_layer_is_unattributable():
    import keras
    from keras import layers

    image = keras.Input((3, 3, 1), name="image")
    model = keras.Model(image, layers.Dense(1)(layers.Flatten()(layers.Conv2D(2, 2, name="conv2d")(image))))
    with pytest.raises(Unattributable, match=r"the Conv2D layer 'conv2d' mixes neighbouring columns"):
        weight_magnitudes(model, tuple(f"p{j}" for j in range(9)))


def test_a_custom_weighted_layer_is_unattributable_but_a_dense_subclass_is_read():
    import keras
    from keras import layers

    class Scaled(layers.Layer):  # a kernel of its own: its layout is the layer's business
        def build(self, input_shape):
            self.kernel = self.add_weight(shape=(input_shape[-1], 2), name="kernel")

        def call(self, x):
            return 0.5 * keras.ops.matmul(x, self.kernel)

    class Clipped(layers.Dense):  # a Dense layer with another activation: the same kernel rows
        def call(self, x):
            return keras.ops.clip(super().call(x), -1.0, 1.0)

    x = keras.Input((2,), name="x")
    with pytest.raises(Unattributable, match=r"the Scaled layer 'scaled' holds weights whose layout"):
        weight_magnitudes(keras.Model(x, layers.Dense(1)(Scaled(name="scaled")(x))), ("a", "b"))
    clipped = Clipped(2, name="clipped")
    model = keras.Model(x, layers.Dense(1)(clipped(x)))
    _set_rows(clipped, [1.0, 2.0])
    np.testing.assert_allclose(weight_magnitudes(model, ("a", "b")), [1.0, 2.0], rtol=1e-6)


def test_a_path_around_the_weights_is_unattributable():
    import keras
    from keras import layers

    x = keras.Input((2,), name="x")
    residual = keras.Model(x, layers.Add(name="add")([layers.Dense(2)(x), x]))
    with pytest.raises(Unattributable, match=r"the Add layer 'add' combines several tensors"):
        weight_magnitudes(residual, ("a", "b"))
    bypass = keras.Model(x, [layers.Dense(1)(x), layers.Dropout(0.1)(x)])
    with pytest.raises(Unattributable, match="reaches the model's output without passing a weighted layer"):
        weight_magnitudes(bypass, ("a", "b"))


def test_unattributable_survives_pickling():
    import pickle

    error = pickle.loads(pickle.dumps(Unattributable("a reason", ("a", "b"))))
    assert (error.reason, error.features, str(error)) == (
        "a reason", ("a", "b"), "weight-based importance cannot place 'a' and 'b': a reason")


def test_weight_importance_refuses_sources_that_name_no_input_element():
    import keras

    model = helpers.linear_model()
    with pytest.raises(ValueError, match="inputs are x"):
        weight_importance(model, ("a",), [("nope", 0)], np.ones(1))
    with pytest.raises(ValueError, match="element 4 of input 'x', which has 4 per row"):
        weight_importance(model, ("a",), [("x", 4)], np.ones(1))
    assert isinstance(model, keras.Model)


def test_the_weights_task_skips_with_the_reason_where_features_cannot_be_placed(tmp_path):
    import keras
    import pandas as pd
    from keras import layers

    from tasks.methods.weights import audit_weights

    sequence = keras.Input((3, 2), name="sequence")
    model = keras.Model(sequence, layers.Dense(1)(layers.Flatten()(layers.Conv1D(2, 2, name="conv1d")(sequence))))
    model.compile(loss="mse")
    features = [f"f{j}" for j in range(6)]
    frame = pd.DataFrame(np.random.default_rng(0).normal(size=(50, 7)).astype(np.float32), columns=[*features, "y"])
    helpers.write_version(tmp_path, "conv", "v1", model, frame, frame)
    [result] = audit_weights(resolve_version(tmp_path, "conv"))
    assert (result.method, result.kind, result.status) == ("weights", "weight-based", "skipped")
    assert result.error == ("weight-based importance cannot place 'f0', 'f1', 'f2', 'f3', 'f4' and 'f5': the Conv1D "
                            "layer 'conv1d' mixes neighbouring columns: its filters map to no single feature")


def test_the_weights_task_ranks_a_plain_model(linear_registry):
    from tasks.methods.weights import audit_weights

    version = resolve_version(linear_registry, "linear")
    naive, scaled = audit_weights(version)
    assert naive.ok and scaled.ok
    np.testing.assert_allclose(naive.importances_mean, np.abs(helpers.LINEAR_WEIGHTS), rtol=1e-6)
