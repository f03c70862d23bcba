import numpy as np
import pytest
from scipy import stats

from tasks.clusters import correlated_clusters, spearman_matrix


def correlated_frame(n_rows=3000, rho=0.95, seed=0):
    """Columns: a, b (ρ ≈ rho with a, monotone-transformed), c independent, d = -a + noise, e independent."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n_rows)
    b = np.exp(rho * a + np.sqrt(1 - rho**2) * rng.normal(size=n_rows))  # monotone: Spearman sees through exp
    d = -a + 0.1 * rng.normal(size=n_rows)
    X = np.column_stack([a, b, rng.normal(size=n_rows), d, rng.normal(size=n_rows)])
    return X, ["a", "b", "c", "d", "e"]


def test_spearman_matrix_matches_scipy():
    X, _ = correlated_frame(500)
    expected = np.abs(stats.spearmanr(X).statistic)
    np.testing.assert_allclose(spearman_matrix(X), expected, atol=1e-12)


def test_correlated_features_form_one_cluster_independent_ones_none():
    X, features = correlated_frame()
    clusters = correlated_clusters(X, features, threshold=0.7)
    assert [c.members for c in clusters] == [("a", "b", "d")]
    assert clusters[0].columns == (0, 1, 3)
    assert clusters[0].name == "a+b+d"
    assert 0.7 <= clusters[0].min_abs_rho < 1.0


def test_threshold_is_configurable():
    X, features = correlated_frame(rho=0.8)
    assert [c.members for c in correlated_clusters(X, features, threshold=0.7)] == [("a", "b", "d")]
    # complete linkage: every pair in a cluster reaches the threshold, so b (ρ ≈ 0.8) drops out at 0.9
    assert [c.members for c in correlated_clusters(X, features, threshold=0.9)] == [("a", "d")]
    assert correlated_clusters(X, features, threshold=0.999) == []


def test_constant_column_and_single_feature_are_harmless():
    X, features = correlated_frame(500)
    X[:, 2] = 3.0
    assert [c.members for c in correlated_clusters(X, features)] == [("a", "b", "d")]
    assert correlated_clusters(X[:, :1], ["a"]) == []


def test_large_splits_are_subsampled_deterministically():
    X, features = correlated_frame(5000)
    first = spearman_matrix(X, max_rows=1000, random_state=1)
    np.testing.assert_array_equal(first, spearman_matrix(X, max_rows=1000, random_state=1))
    np.testing.assert_allclose(first, spearman_matrix(X), atol=0.1)


def test_bad_threshold_is_refused():
    X, features = correlated_frame(100)
    with pytest.raises(ValueError, match="threshold must be in"):
        correlated_clusters(X, features, threshold=0.0)
