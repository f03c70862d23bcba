import numpy as np

from tasks.sources import load_model, load_split, resolve_version
from tasks.weights import weight_importance, weight_magnitudes
from tests import helpers


def test_linear_model_weights_are_the_coefficients(linear_registry):
    version = resolve_version(linear_registry, "linear")
    model = load_model(version.model_path)
    np.testing.assert_allclose(weight_magnitudes(model, version.features), np.abs(helpers.LINEAR_WEIGHTS), rtol=1e-6)


def test_scale_aware_weights_multiply_by_the_feature_std(linear_registry):
    version = resolve_version(linear_registry, "linear")
    model = load_model(version.model_path)
    test = load_split(version.test_path, version)
    naive, scaled = weight_importance(model, version.features, test.X)
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
