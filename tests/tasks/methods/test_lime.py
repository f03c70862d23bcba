"""LIME (tasks/methods/lime.py): oracles on a linear model and on sin(x0·x1 + x2), and reproducibility."""

import numpy as np
import pytest

from tasks.methods.lime import LimeDetails, explain_rows, lime_audit, summarise
from tasks.registry.versions import resolve_version
from tasks.subject.loaded import load_subject


def _sin(X):
    return np.sin(X[:, 0] * X[:, 1] + X[:, 2])


def _explain(X, rows, *, seed=0, samples=2000, replicates=3, block_values=20_000_000, forward=_sin):
    return explain_rows(forward, X, np.asarray(rows), [None] * len(rows), scale=np.full(X.shape[1], 0.3), levels={},
                        seed=seed, samples=samples, replicates=replicates, k=3, block_values=block_values)


def test_on_a_linear_model_lime_recovers_the_signs_and_order_of_the_effects_per_standard_deviation(linear_registry):
    subject = load_subject(resolve_version(linear_registry, "linear"))
    result = lime_audit(subject, seed=0, samples=1000, k=4, replicates=3)
    details = result.details
    assert isinstance(details, LimeDetails) and len(details.rows) == 8
    for row in details.rows:
        assert row.r2 > 0.95 and row.r2_low > 0.95
        weights = {f.feature: f.weight for f in row.features}
        # y = 3a - 2b + c on scales 1, 2, 0.5: per standard deviation -4 (b), 3 (a), 0.5 (c), 0 (noise)
        assert [f.feature for f in row.features][:3] == ["b", "a", "c"]
        assert weights["b"] == pytest.approx(-4, rel=0.05) and weights["a"] == pytest.approx(3, rel=0.05)
        assert weights["c"] == pytest.approx(0.5, rel=0.1)
    assert [f for f, r in zip(result.features, result.rank) if r == 1] == ["b"]
    assert result.method == "lime" and details.median_r2 > 0.95


def test_the_local_r2_falls_where_the_function_curves():
    # sin(x0·x1 + x2): nearly a line in x2 around 0, a bend around x2 = π/2, where its slope vanishes
    X = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, np.pi / 2]])
    flat, bent = _explain(X, [0, 1])
    r2 = lambda fits: np.mean([f["r2"] for f in fits])  # noqa: E731
    assert r2(flat) > 0.9 and r2(bent) < 0.5


def test_a_rows_explanation_depends_on_neither_the_order_nor_the_other_rows_nor_the_batching():
    X = np.random.default_rng(0).uniform(-1, 1, (20, 3))
    together = _explain(X, [5, 9, 13])
    alone = _explain(X, [9])
    reversed_ = _explain(X, [13, 9, 5])
    one_per_block = _explain(X, [5, 9, 13], block_values=1)
    for fits in (alone[0], reversed_[1], one_per_block[1]):
        for mine, theirs in zip(together[1], fits):
            np.testing.assert_array_equal(mine["weights"], theirs["weights"])
            assert mine["r2"] == theirs["r2"]
    other_seed = _explain(X, [9], seed=1)[0]
    assert not np.array_equal(other_seed[0]["weights"], alone[0][0]["weights"])


def test_near_tied_features_are_marked_and_clear_ones_are_not():
    # y = 1.0·x0 + 0.99·x1 + 3·x2: x0 and x1 swap ranks between replicates, x2 never moves
    X = np.zeros((1, 3))
    fits = _explain(X, [0], samples=200, replicates=5, forward=lambda X: X[:, 0] + 0.99 * X[:, 1] + 3 * X[:, 2]
                    + 0.05 * np.sin(40 * X[:, 0]))[0]
    features, r2, r2_low, _ = summarise(("x0", "x1", "x2"), [0.0, 0.0, 0.0], fits, 3)
    tied = {f.feature: f.tied for f in features}
    assert features[0].feature == "x2" and not tied["x2"] and (features[0].rank_low, features[0].rank_high) == (1, 1)
    assert tied["x0"] and tied["x1"]


def test_on_a_linear_model_lime_and_shap_agree_on_each_rows_features_signs_and_ranks(linear_registry):
    from tasks.methods.shap import shap_audit

    version = resolve_version(linear_registry, "linear")
    shap = shap_audit(version, seed=0, n_rows=100)
    result = lime_audit(load_subject(version), seed=0, samples=1000, k=4, replicates=3, shap=shap)
    rows = result.details.rows
    assert [(r.selection, r.row) for r in rows] == [(r.selection, r.row) for r in shap.details.local]
    for row in rows:
        # φ_j = w_j·(x_j − background mean_j); LIME's contribution w_j·σ_j·(x_j − training mean_j)/σ_j: the same
        # attribution up to the two means, so the same top features with the same signs
        assert row.shap is not None and row.shap.k == 3
        assert row.shap.feature == row.shap.sign == 1.0
    same, compared = result.details.same_top
    assert compared == 8 and same >= 7
    assert "the top feature is SHAP's in" in result.notes[-1]


def test_local_agreement_counts_features_signs_and_ranks():
    from tasks.methods.lime import local_agreement

    a = local_agreement(["x", "y", "z", "w"], {"x": 1.0, "y": -2.0, "z": 0.5, "w": 1.0},
                        [("x", 0.9), ("z", -0.1), ("q", 0.05), ("y", -1.0)])
    assert (a.k, a.feature, a.rank, a.same_top, a.shap_top) == (3, 2 / 3, 1 / 3, True, ["x", "z", "q"])
    assert a.sign == 1 / 3  # z's signs differ


def test_samples_are_drawn_around_the_row_and_categorical_levels_from_their_training_shares():
    from tasks.methods.lime import perturb, row_stream

    x = np.array([10.0, 2.0])  # a numeric feature, and a categorical code 2 among codes 0-2
    levels = {1: (np.array([0.0, 1.0, 2.0]), np.array([0.5, 0.3, 0.2]))}
    samples, design = perturb(x, np.array([4.0, 1.0]), levels, 20_000, row_stream(0, 7, 0))
    assert np.array_equal(samples[0], x) and design[0, 1] == 1.0  # the first sample is the row itself
    assert abs(samples[:, 0].mean() - 10.0) < 0.1 and abs(samples[:, 0].std() - 4.0) < 0.1  # around the row
    assert set(np.unique(samples[:, 1])) == {0.0, 1.0, 2.0}
    assert abs((samples[:, 1] == 0).mean() - 0.5) < 0.02
    assert np.array_equal(design[:, 1], (samples[:, 1] == 2.0).astype(float))  # 1: the row's level kept
