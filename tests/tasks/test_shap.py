import numpy as np

from tasks.shap_importance import shap_importance
from tasks.sources import load_model, load_split, resolve_version
from tests import helpers


def test_linear_model_mean_abs_shap_matches_closed_form(linear_registry):
    version = resolve_version(linear_registry, "linear")
    model = load_model(version.model_path)
    test = load_split(version.test_path, version)
    train = load_split(version.train_path, version)
    draws, (low, high), raw = shap_importance(model, version.features, test.X, train.X, n_rows=400, random_state=0)
    assert raw.explainer == "GradientExplainer"
    # phi_j = w_j (x_j - E[x_j]): its mean magnitude is |w_j| * E|x_j - mean|
    rows = test.X[raw.rows]
    expected = np.abs(helpers.LINEAR_WEIGHTS) * np.abs(rows - train.X[:, :].mean(axis=0)).mean(axis=0)
    np.testing.assert_allclose(draws.mean(axis=1), expected, rtol=0.1, atol=0.02)
    assert (low <= draws.mean(axis=1)).all() and (draws.mean(axis=1) <= high).all()
    assert draws.mean(axis=1)[3] < 1e-3


def test_named_embedding_model_uses_a_model_agnostic_explainer(embedding_registry):
    version = resolve_version(embedding_registry, "embed")
    model = load_model(version.model_path)
    test = load_split(version.test_path, version)
    draws, _, raw = shap_importance(model, version.features, test.X, test.X, n_rows=30, n_background=50, random_state=0)
    assert raw.explainer == "KernelExplainer"
    mean = dict(zip(version.features, draws.mean(axis=1)))
    assert mean["amount"] > mean["noise"] and mean["region"] > mean["noise"]
    again, _, _ = shap_importance(model, version.features, test.X, test.X, n_rows=30, n_background=50, random_state=0)
    np.testing.assert_allclose(draws, again)
