"""Keras models as keras.io writes them (tests/zoo.py), audited by every method through the model adapter.

Each pattern is trained on synthetic data whose drivers are known: every behavioural method must run
and rank the drivers above the noise columns; the weights either rank or are skipped with a reason.
"""

from functools import lru_cache

import numpy as np
import pandas as pd
import pytest

from tasks.core.errors import DataError, ModelLoadError
from tasks.methods.ablation import audit_ablation
from tasks.methods.permutation import audit_permutation
from tasks.methods.shap import shap_audit
from tasks.methods.weights import audit_weights
from tasks.registry.versions import resolve_version
from tasks.subject.loaded import check_version, load_subject
from tests import zoo

PATTERNS = ("string_lookup", "integer_codes", "feature_space", "wide_deep", "block_embeddings", "two_outputs",
            "sequence", "image", "legacy_h5", "hashing_discretization", "custom_layer")
# Where first-layer weights cannot be attributed to a feature, and the word the reason must hold.
WEIGHTS_SKIPPED = {"sequence": "Conv1D", "image": "Conv2D", "feature_space": "HashedCrossing",
                   "custom_layer": "ScaledDense"}
# The operator's modules that register a pattern's custom Keras objects (--import). In this process the zoo's builder
# has imported them already, so this only exercises the plumbing; test_sources checks the refusal without them.
IMPORTS = {"custom_layer": ("tests.zoo_layers",)}


@lru_cache(maxsize=None)
def _pattern(name: str):
    return zoo.PATTERNS[name](0)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    for name in PATTERNS:
        zoo.write_pattern(root, _pattern(name))
    return root


def _ranked_above_noise(result, pattern) -> bool:
    """Every driver's mean importance is above every noise column's (block inputs: their columns)."""
    mean = dict(zip(result.features, result.importances_mean))
    drivers = [mean[d] for d in pattern.drivers if d in mean]
    noise = [mean[n] for n in pattern.noise if n in mean]
    return bool(drivers) and min(drivers) > max(noise, default=-np.inf)


@pytest.mark.parametrize("name", PATTERNS)
def test_every_method_runs_and_ranks_the_drivers_first(registry, name):
    pattern = _pattern(name)
    version = resolve_version(registry, name, imports=IMPORTS.get(name, ()))
    check_version(version)
    permutation = audit_permutation(version, n_repeats=5, max_repeats=5)[0]
    shap = shap_audit(version, n_rows=200)
    for result in (permutation, shap):
        assert result.ok, result.error
        assert _ranked_above_noise(result, pattern), (result.method, dict(zip(result.features, result.importances_mean)))
    weights = audit_weights(version)[0]
    if name in WEIGHTS_SKIPPED:
        assert weights.status == "skipped" and WEIGHTS_SKIPPED[name] in weights.error
    else:
        assert weights.ok, weights.error


@pytest.mark.parametrize("name", ["string_lookup", "wide_deep", "block_embeddings", "two_outputs"])
def test_ablation_retrains_with_the_lookup_tables_and_statistics_intact(registry, name):
    pattern = _pattern(name)
    version = resolve_version(registry, name)
    ablation = audit_ablation(version, n_seeds=2, max_seeds=2)[0]
    assert ablation.ok, ablation.error
    mean = dict(zip(ablation.features, ablation.importances_mean))
    assert max(mean[d] for d in pattern.drivers if d in mean) > max(mean[n] for n in pattern.noise if n in mean)
    subject = load_subject(version)
    baselines = np.array(ablation.details.baselines)
    assert np.all(np.isfinite(baselines))
    # A retrained copy is about as good as the registered model: its lookups and normalisation survived cloning.
    registered = subject.metric(subject.test.y, subject.forward()(subject.test.X))
    assert np.all(baselines < 2.0 * registered + 0.05), (baselines, registered)


def test_a_recipe_that_does_not_reproduce_the_model_is_said_and_its_learning_rate_fixes_it(tmp_path):
    """The legacy .h5 loads without its optimizer, so retraining uses Adam's default rate: far too slow here."""
    pattern = _pattern("legacy_h5")
    zoo.write_pattern(tmp_path, pattern, version="v1")
    training = {**pattern.manifest["training"], "learning_rate": zoo.LEARNING_RATE}
    zoo.write_pattern(tmp_path, zoo.Pattern(pattern.name, pattern.model, pattern.train, pattern.test,
                                            {**pattern.manifest, "training": training}, pattern.drivers, pattern.noise,
                                            pattern.model_file), version="v2")
    slow = audit_ablation(resolve_version(tmp_path, "legacy_h5", "v1"), n_seeds=2, max_seeds=2)[0]
    assert any("does not reproduce the model" in note for note in slow.notes)
    tuned = audit_ablation(resolve_version(tmp_path, "legacy_h5", "v2"), n_seeds=2, max_seeds=2)[0]
    assert not any("does not reproduce the model" in note for note in tuned.notes)
    assert np.mean(tuned.details.baselines) < 0.5 * np.mean(slow.details.baselines)
    assert any("compiled loss could not be read" in note for note in load_subject(
        resolve_version(tmp_path, "legacy_h5", "v2")).notes)


def test_two_outputs_audit_the_head_the_manifest_names(registry):
    pattern = _pattern("two_outputs")
    subject = load_subject(resolve_version(registry, "two_outputs"))
    assert subject.adapter.output_name == pattern.manifest["output"]
    np.testing.assert_allclose(subject.forward()(subject.test.X), zoo.predict_target(pattern, pattern.test).ravel(),
                               rtol=1e-4, atol=1e-5)


def test_a_string_column_and_its_codes_through_a_lookup_give_the_same_numbers():
    import keras

    rng = np.random.default_rng(0)
    n = 400
    colour = rng.choice(["blue", "green", "red"], size=n)
    amount = rng.normal(size=n).astype(np.float32)
    y = (amount + pd.Series(colour).map({"blue": -1.0, "green": 0.0, "red": 2.0}).to_numpy()).astype(np.float32)
    dense = keras.layers.Dense(1, kernel_initializer=keras.initializers.GlorotUniform(seed=0))

    def model(lookup, dtype):
        inputs = {"amount": keras.Input((1,), name="amount"), "colour": keras.Input((1,), name="colour", dtype=dtype)}
        return keras.Model(inputs, dense(keras.layers.Concatenate()([inputs["amount"], lookup(inputs["colour"])])))

    strings = model(keras.layers.StringLookup(vocabulary=["blue", "green", "red"], output_mode="one_hot"), "string")
    codes = model(keras.layers.IntegerLookup(vocabulary=[0, 1, 2], output_mode="one_hot"), "int64")
    from tasks.core.metrics import METRICS
    from tasks.methods.permutation import permutation_importance
    from tasks.subject.adapter import build_adapter
    from tasks.subject.modeling import Forward

    raw = pd.DataFrame({"amount": amount, "colour": colour})
    coded = raw.assign(colour=pd.Series(colour).map({"blue": 0, "green": 1, "red": 2}).astype(np.int64))
    numbers = []
    for net, frame in ((strings, raw), (codes, coded)):
        adapter = build_adapter(net, ("amount", "colour"), {"test.parquet": frame})
        scores = permutation_importance(Forward(net, adapter), adapter.encode(frame), y, metric=METRICS["mse"],
                                        n_repeats=5, random_state=0, units={"amount": [0], "colour": [1]})
        numbers.append(scores.by_metric["mse"])
    np.testing.assert_allclose(numbers[0], numbers[1], rtol=1e-6)


def test_integer_codes_for_a_string_lookup_are_refused_naming_column_and_input(registry, tmp_path):
    pattern = _pattern("string_lookup")
    broken = zoo.Pattern(pattern.name, pattern.model, pattern.train.assign(thal=pattern.train["thal"].astype("category").cat.codes),
                         pattern.test.assign(thal=pattern.test["thal"].astype("category").cat.codes),
                         pattern.manifest, pattern.drivers, pattern.noise)
    zoo.write_pattern(tmp_path, broken)
    with pytest.raises(DataError, match="column 'thal' holds integers, but model input 'thal' takes strings"):
        check_version(resolve_version(tmp_path, "string_lookup"))


def test_a_multi_output_model_without_output_is_refused(registry, tmp_path):
    pattern = _pattern("two_outputs")
    manifest = {k: v for k, v in pattern.manifest.items() if k != "output"}
    zoo.write_pattern(tmp_path, zoo.Pattern(pattern.name, pattern.model, pattern.train, pattern.test, manifest,
                                            pattern.drivers, pattern.noise))
    with pytest.raises(ModelLoadError, match="2 outputs .*\"output\""):
        check_version(resolve_version(tmp_path, "two_outputs"))
