import numpy as np
import pytest
from scipy import stats
from scipy.cluster import hierarchy
from scipy.spatial.distance import squareform

from tasks.subject.clusters import Cluster, candidate_groups, centred_ranks, clustering, correlated_clusters


def correlated_frame(n_rows=3000, rho=0.95, seed=0):
    """Columns: a, b (ρ ≈ rho with a, monotone-transformed), c independent, d = -a + noise, e independent."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n_rows)
    b = np.exp(rho * a + np.sqrt(1 - rho**2) * rng.normal(size=n_rows))  # monotone: Spearman sees through exp
    d = -a + 0.1 * rng.normal(size=n_rows)
    X = np.column_stack([a, b, rng.normal(size=n_rows), d, rng.normal(size=n_rows)])
    return X, ["a", "b", "c", "d", "e"]


def planted_frame(seed, n_rows=300, n_features=120):
    """Independent columns with planted groups: tight ones, loose ones near the threshold, a chain (a ~ b ~ c but
    a !~ c), a duplicated column, negative partners, and a constant column; columns shuffled."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_rows, n_features))
    next_free = iter(rng.permutation(n_features))
    for _ in range(6):  # groups around one factor, loadings from tight to loose
        factor = rng.normal(size=n_rows)
        for _ in range(rng.integers(2, 6)):
            loading = rng.uniform(0.6, 1.0) * rng.choice([-1, 1])
            X[:, next(next_free)] = loading * factor + np.sqrt(1 - loading**2) * rng.normal(size=n_rows)
    chain = rng.normal(size=(n_rows, 3)).cumsum(axis=1)  # neighbours ρ ≈ 0.7, ends ≈ 0.58
    for k in range(3):
        X[:, next(next_free)] = chain[:, k]
    X[:, next(next_free)] = X[:, 0]  # a duplicate: ρ = 1 exactly
    X[:, next(next_free)] = 2.5  # constant
    X[:, next(next_free)] = np.round(rng.normal(size=n_rows))  # many ties
    return X.astype(np.float32), [f"x{j}" for j in range(n_features)]


def full_matrix_clusters(X, features, *, threshold=0.7, max_rows=100_000, random_state=0):
    """The oracle: the former algorithm, complete linkage on the full F × F matrix of |Spearman ρ|."""
    X = np.asarray(X)
    if len(X) > max_rows:
        X = X[np.sort(np.random.default_rng(random_state).choice(len(X), size=max_rows, replace=False))]
    ranks = stats.rankdata(X, axis=0)
    ranks -= ranks.mean(axis=0)
    norms = np.sqrt((ranks**2).sum(axis=0))
    constant = norms == 0
    ranks[:, ~constant] /= norms[~constant]
    rho = np.abs(ranks.T @ ranks)
    rho[constant, :] = 0.0
    rho[:, constant] = 0.0
    np.fill_diagonal(rho, 1.0)
    rho = np.clip(rho, 0.0, 1.0)
    labels = hierarchy.fcluster(hierarchy.linkage(squareform(1.0 - rho, checks=False), method="complete"),
                                t=1.0 - threshold, criterion="distance")
    clusters = []
    for label in sorted(set(labels), key=lambda lab: int(np.argmax(labels == lab))):
        columns = np.flatnonzero(labels == label)
        if len(columns) > 1:
            clusters.append(Cluster(tuple(features[j] for j in columns), tuple(int(j) for j in columns),
                                    float(rho[np.ix_(columns, columns)].min())))
    return clusters


def assert_same_clusters(ours, oracle):
    assert [(c.members, c.columns) for c in ours] == [(c.members, c.columns) for c in oracle]
    # the same products summed in another order: equal to float64 rounding
    np.testing.assert_allclose([c.min_abs_rho for c in ours], [c.min_abs_rho for c in oracle], rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("threshold", [0.4, 0.7, 0.9])
def test_clusters_are_those_of_the_full_matrix(seed, threshold):
    X, features = planted_frame(seed)
    oracle = full_matrix_clusters(X, features, threshold=threshold)
    assert oracle, "the planted groups must give clusters to compare"
    assert_same_clusters(correlated_clusters(X, features, threshold=threshold), oracle)


@pytest.mark.parametrize("seed", range(3))
def test_small_blocks_and_subsampled_rows_change_nothing(seed, monkeypatch):
    X, features = planted_frame(seed, n_rows=600)
    oracle = full_matrix_clusters(X, features, max_rows=400, random_state=seed)
    monkeypatch.setenv("FEATUREAUDIT_MEMORY_MB", "0.05")  # a few columns per block in every stage
    assert_same_clusters(correlated_clusters(X, features, max_rows=400, random_state=seed), oracle)


def test_only_features_with_a_partner_are_linked():
    X, features = planted_frame(0)
    ranks, norms = centred_ranks(X)
    groups = candidate_groups(ranks, norms, threshold=0.7)
    clustered = {j for c in correlated_clusters(X, features) for j in c.columns}
    assert clustered <= {int(j) for g in groups for j in g}
    assert sum(len(g) for g in groups) < len(features) // 2  # most columns are independent: never linked
    constant = int(np.flatnonzero(np.ptp(X, axis=0) == 0)[0])
    assert norms[constant] == 0 and all(constant not in g for g in groups)


def test_spearman_from_centred_ranks_matches_scipy():
    X, _ = correlated_frame(500)
    ranks, norms = centred_ranks(X)
    rho = np.abs(ranks.astype(np.float64).T @ ranks) / np.outer(norms, norms)
    np.testing.assert_allclose(rho, np.abs(stats.spearmanr(X).statistic), atol=1e-12)


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
    first = centred_ranks(X, max_rows=1000, random_state=1)
    second = centred_ranks(X, max_rows=1000, random_state=1)
    np.testing.assert_array_equal(first[0], second[0])
    assert first[0].shape == (1000, 5)
    assert_same_clusters(correlated_clusters(X, features, max_rows=1000, random_state=1),
                         full_matrix_clusters(X, features, max_rows=1000, random_state=1))


def test_bad_threshold_is_refused():
    X, features = correlated_frame(100)
    with pytest.raises(ValueError, match="threshold must be in"):
        correlated_clusters(X, features, threshold=0.0)


def test_a_group_too_large_to_link_is_left_unclustered_and_said_so():
    rng = np.random.default_rng(0)
    factor = rng.standard_normal((200, 1))
    X = np.hstack([factor + 0.01 * rng.standard_normal((200, 5)), rng.standard_normal((200, 3))])
    features = [f"x{j}" for j in range(8)]
    assert clustering(X, features).clusters[0].columns == (0, 1, 2, 3, 4)
    capped = clustering(X, features, max_linked=4)
    assert capped.clusters == [] and capped.unlinked == (5,)
    assert "1 connected group(s) of strongly correlated features (5 features)" in capped.note
    assert clustering(X, features).note is None
