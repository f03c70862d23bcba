"""The model adapter: every method's inputs are built here, so each case is checked against calling the model directly."""

import numpy as np
import pandas as pd
import pytest

from tasks.core.errors import DataError, ModelLoadError
from tasks.core.metrics import METRICS
from tasks.methods.permutation import permutation_importance
from tasks.methods.shap import explain
from tasks.subject.adapter import build_adapter, head_model, numeric_adapter
from tasks.subject.modeling import Forward


def _string_model():
    """keras.io's structured-data shape: a dict of (1,) inputs, a StringLookup and a Normalization inside."""
    import keras

    amount = keras.Input((1,), name="amount")
    thal = keras.Input((1,), name="thal", dtype="string")
    lookup = keras.layers.StringLookup(vocabulary=["fixed", "normal", "reversible"], output_mode="one_hot")
    hidden = keras.layers.Concatenate()([keras.layers.Normalization(mean=1.0, variance=4.0)(amount), lookup(thal)])
    out = keras.layers.Dense(1, kernel_initializer=keras.initializers.GlorotUniform(seed=1))(hidden)
    return keras.Model({"amount": amount, "thal": thal}, out)


def _frame(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"amount": rng.normal(size=n).astype(np.float32),
                         "thal": rng.choice(["fixed", "normal", "reversible"], size=n)})


def test_string_columns_are_coded_and_decoded_to_what_the_model_takes():
    model, frame = _string_model(), _frame()
    adapter = build_adapter(model, ("amount", "thal"), {"test.parquet": frame})
    X = adapter.encode(frame)
    assert adapter.columns[1].vocabulary == ("fixed", "normal", "reversible")
    assert adapter.categorical == ("thal",) and adapter.numeric == (0,)
    direct = model({"amount": frame[["amount"]].to_numpy(), "thal": frame[["thal"]].to_numpy()}).numpy()[:, 0]
    np.testing.assert_allclose(Forward(model, adapter)(X), direct, rtol=1e-6)
    fed = adapter.feed(X)
    assert [v.decode() for v in fed["thal"].numpy()[:, 0]] == list(frame["thal"])


def test_a_model_built_from_a_list_is_fed_a_list_in_its_own_order():
    import keras

    zeta, alpha = keras.Input((1,), name="zeta"), keras.Input((1,), name="alpha")
    model = keras.Model([zeta, alpha], keras.layers.Subtract()([zeta, alpha]))  # zeta - alpha: order matters
    frame = pd.DataFrame({"alpha": [1.0, 2.0], "zeta": [10.0, 20.0]}, dtype=np.float32)
    adapter = build_adapter(model, ("alpha", "zeta"), {"test.parquet": frame})
    assert adapter.structure == "list" and [i.name for i in adapter.inputs] == ["zeta", "alpha"]
    np.testing.assert_allclose(Forward(model, adapter)(adapter.encode(frame)), [9.0, 18.0])


def test_a_block_input_takes_its_mapped_columns_and_a_single_input_any_shape_in_c_order():
    import keras

    block = keras.Input((3,), name="numeric")
    code = keras.Input((1,), name="code", dtype="int32")
    embedded = keras.layers.Flatten()(keras.layers.Embedding(4, 2)(code))
    model = keras.Model({"numeric": block, "code": code}, keras.layers.Dense(1)(keras.layers.Concatenate()([block, embedded])))
    frame = pd.DataFrame({"b": [1.0, 2.0], "a": [3.0, 4.0], "c": [5.0, 6.0], "code": [0, 3]})
    adapter = build_adapter(model, ("b", "a", "c", "code"), {"test.parquet": frame}, inputs={"numeric": ["a", "b", "c"]})
    fed = adapter.feed(adapter.encode(frame))
    np.testing.assert_array_equal(fed["numeric"], [[3.0, 1.0, 5.0], [4.0, 2.0, 6.0]])
    assert adapter.blocks() == {"input:numeric": [1, 0, 2]} and adapter.categorical == ("code",)
    direct = model({"numeric": fed["numeric"], "code": np.array([[0], [3]])}).numpy()[:, 0]
    np.testing.assert_allclose(Forward(model, adapter)(adapter.encode(frame)), direct, rtol=1e-6)

    sequence = keras.Input((2, 3), name="seq")
    model = keras.Model(sequence, keras.layers.Dense(1)(keras.layers.Flatten()(sequence)))
    columns = [f"x{i}" for i in range(6)]
    frame = pd.DataFrame(np.arange(12, dtype=np.float32).reshape(2, 6), columns=columns)
    adapter = build_adapter(model, tuple(columns), {"test.parquet": frame})
    np.testing.assert_array_equal(adapter.feed(adapter.encode(frame))[1], [[6, 7, 8], [9, 10, 11]])
    np.testing.assert_allclose(Forward(model, adapter)(adapter.encode(frame)),
                               model(frame.to_numpy().reshape(2, 2, 3)).numpy()[:, 0], rtol=1e-6)


def test_the_audited_output_is_chosen_by_name_or_index_and_required_when_there_are_several():
    import keras

    x = keras.Input((2,), name="x")
    aux, main = keras.layers.Dense(1, name="aux")(x), keras.layers.Dense(1, name="main")(x)
    frame = pd.DataFrame({"a": [1.0, -1.0], "b": [0.5, 2.0]}, dtype=np.float32)
    for outputs in ([aux, main], {"aux": aux, "main": main}):
        model = keras.Model(x, outputs)
        model.compile(optimizer="adam", loss={"aux": "mse", "main": "mae"})
        expected = model(frame.to_numpy())[1 if isinstance(outputs, list) else "main"].numpy()[:, 0]
        for choice in ("main", 1):
            adapter = build_adapter(model, ("a", "b"), {"test.parquet": frame}, output=choice)
            assert adapter.output_name == "main"
            np.testing.assert_allclose(Forward(model, adapter)(frame.to_numpy()), expected, rtol=1e-6)
        head = head_model(model, adapter)
        assert len(head.outputs) == 1 and head.loss == "mae"
        with pytest.raises(ModelLoadError, match="2 outputs \\(aux, main\\).*\"output\""):
            build_adapter(model, ("a", "b"), {"test.parquet": frame})
        with pytest.raises(ModelLoadError, match="output 'other'.*aux, main"):
            build_adapter(model, ("a", "b"), {"test.parquet": frame}, output="other")


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pd.DataFrame({"amount": [1.0], "thal": [2]}), "test.parquet column 'thal' holds integers, but model input 'thal' takes strings"),
        (pd.DataFrame({"amount": ["x"], "thal": ["fixed"]}), "column 'amount' holds strings, but model input 'amount' takes float32"),
        (pd.DataFrame({"amount": [1.0], "thal": [None]}), "column 'thal' has 1 missing"),
        (pd.DataFrame({"amount": [1.0, 2.0], "thal": ["fixed", 3]}), "column 'thal' mixes strings"),
    ],
)
def test_a_column_that_cannot_feed_its_input_is_one_line_naming_both(frame, message):
    with pytest.raises(DataError, match=message):
        build_adapter(_string_model(), ("amount", "thal"), {"test.parquet": frame})


def test_fractional_values_for_an_integer_input_and_unmapped_wide_inputs_are_refused():
    import keras

    code = keras.Input((1,), name="code", dtype="int64")
    model = keras.Model(code, keras.layers.Dense(1)(keras.layers.Flatten()(keras.layers.Embedding(5, 2)(code))))
    with pytest.raises(DataError, match="column 'code' holds fractional numbers, but model input 'code' takes int64"):
        build_adapter(model, ("code",), {"test.parquet": pd.DataFrame({"code": [0.5, 1.0]})})
    block, other = keras.Input((2,), name="numeric"), keras.Input((1,), name="other")
    model = keras.Model([block, other], keras.layers.Concatenate()([block, other]))
    with pytest.raises(ModelLoadError, match="input named 'numeric'.*takes 2 values per row.*\"inputs\""):
        build_adapter(model, ("a", "b", "other"), {"test.parquet": pd.DataFrame({"a": [1.0], "b": [1.0], "other": [1.0]})})


def test_integers_too_large_for_float32_are_coded_by_vocabulary_exactly():
    import keras

    ident = keras.Input((1,), name="ident", dtype="int64")
    lookup = keras.layers.IntegerLookup(vocabulary=[2**40 + 1, 2**40 + 2], output_mode="one_hot")
    model = keras.Model(ident, keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")(lookup(ident)))
    frame = pd.DataFrame({"ident": np.array([2**40 + 1, 2**40 + 2, 2**40 + 1], dtype=np.int64)})
    adapter = build_adapter(model, ("ident",), {"test.parquet": frame})
    assert adapter.columns[0].vocabulary == (2**40 + 1, 2**40 + 2)
    np.testing.assert_array_equal(adapter.feed(adapter.encode(frame))[:, 0], frame["ident"].to_numpy())


def test_a_single_matrix_model_and_the_same_model_with_named_inputs_give_the_same_permutation_and_shap_numbers():
    import keras

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3)).astype(np.float32)
    y = (X @ np.array([2.0, -1.0, 0.0])).astype(np.float32)
    kernel = np.array([[2.0], [-1.0], [0.0]], np.float32)
    matrix = keras.Sequential([keras.Input((3,), name="x"), keras.layers.Dense(1)])
    matrix.layers[0].set_weights([kernel, np.zeros(1, np.float32)])
    named = [keras.Input((1,), name=n) for n in ("a", "b", "c")]
    dense = keras.layers.Dense(1)
    model = keras.Model(named, dense(keras.layers.Concatenate()(named)))
    dense.set_weights([kernel, np.zeros(1, np.float32)])
    features = ("a", "b", "c")
    kwargs = dict(metric=METRICS["mse"], n_repeats=3, random_state=0, units={f: [j] for j, f in enumerate(features)})
    forwards = [Forward(matrix, numeric_adapter(matrix, features)), Forward(model, numeric_adapter(model, features))]
    one, other = (permutation_importance(forward, X, y, **kwargs) for forward in forwards)
    np.testing.assert_allclose(one.by_metric["mse"], other.by_metric["mse"], rtol=1e-5, atol=1e-7)
    one, other = (explain(None, features, X[:20], X[100:130], random_state=0, forward=forward) for forward in forwards)
    np.testing.assert_allclose(one.values, other.values, rtol=1e-5, atol=1e-6)
