"""Interactions (tasks/methods/interactions.py): Friedman's H on trained MLPs whose interactions are known
(y = x0·x1 + x2, and the additive y = x0² + x1), on functions whose H is known in closed form, and the finding the
verdict makes of it."""

import numpy as np
import pytest

from tasks.methods.interactions import InteractionDetails, feature_statistics, interactions_audit, pair_statistics
from tasks.methods.permutation import audit_permutation
from tasks.methods.weights import audit_weights
from tasks.registry.versions import resolve_version
from tasks.report.verdict import compare
from tasks.subject.loaded import load_subject
from tests import trained


def _grid_tensor(f, x, grid_j, grid_k):
    """(rows, grid_j, grid_k, 1): f with the pair set to every combination, the row's third column kept."""
    return np.array([[[[f(a, b, row[2])] for b in grid_k] for a in grid_j] for row in x])


def test_h_is_one_for_a_pure_product_and_zero_for_a_sum():
    rng = np.random.default_rng(0)
    grid = np.linspace(-2, 2, 9)
    a, b = rng.integers(0, 9, 200), rng.integers(0, 9, 200)
    x = np.column_stack([grid[a], grid[b], rng.normal(size=200)])
    weights = np.ones((1, 200))
    product = _grid_tensor(lambda u, v, w: u * v, x, grid, grid)
    additive = _grid_tensor(lambda u, v, w: u ** 2 + np.sin(v) + w, x, grid, grid)
    h, raw = pair_statistics(product, a, b, weights)
    assert h[0] == pytest.approx(1.0, abs=0.05)  # centred over the rows, a product is all interaction
    assert raw[0] > 1.0
    h, raw = pair_statistics(additive, a, b, weights)
    assert h[0] == pytest.approx(0.0, abs=1e-9) and raw[0] == pytest.approx(0.0, abs=1e-9)


def test_a_features_total_interaction_and_joint_share():
    rng = np.random.default_rng(1)
    grid = np.linspace(-2, 2, 9)
    a = rng.integers(0, 9, 300)
    other = rng.normal(size=300)
    weights = np.ones((1, 300))
    joint_only = np.array([[[g * o] for g in grid] for o in other])  # f = x·z
    alone = np.array([[[2 * g + o] for g in grid] for o in other])  # f = 2x + z
    h, joint = feature_statistics(joint_only, a, weights)
    assert joint[0] == pytest.approx(1.0, abs=0.05) and h[0] > 0.9
    h, joint = feature_statistics(alone, a, weights)
    assert joint[0] == pytest.approx(0.0, abs=1e-9) and h[0] == pytest.approx(0.0, abs=1e-9)


@pytest.fixture(scope="module")
def trained_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("interactions-trained")
    return root, trained.build(root, "product", 1.0, 0), trained.build(root, "square", 1.0, 0)


def _audit(root, case, seed=0):
    version = resolve_version(root, case.name, case.folder)
    permutation = audit_permutation(version, seed=0)
    result = interactions_audit(load_subject(version), seed=seed, upstream={"permutation": permutation}, draws=100)
    return version, permutation, result


def test_on_a_product_h_separates_the_factors_from_the_additive_driver_and_the_verdict_names_them(trained_root):
    root, product, _ = trained_root
    version, permutation, result = _audit(root, product)
    details = result.details
    assert isinstance(details, InteractionDetails)
    joint, apart = details.pair("x0", "x1"), details.pair("x0", "x2")
    # y = x0·x1 + x2: seen here H(x0, x1) about 0.95, H(x0, x2) about 0.03
    assert joint.h > 0.5 and apart.h < 0.1, (joint, apart)
    assert joint.h_low > apart.h_high and joint.resolved
    assert len(details.pairs) == 10 and details.heat_maps[0].first in ("x0", "x1")
    comparison = compare([*audit_weights(version), *permutation, result])
    [finding] = [f for f in comparison.findings if f.kind == "acts jointly"]
    assert finding.feature in ("x0", "x1") and "'x0'" in finding.message and "'x1'" in finding.message
    assert "cannot show" in finding.message and "Friedman" in comparison.interactions
    assert comparison.verdict != "agree" and "not assessed" not in comparison.interactions


def test_an_additive_model_gets_no_interaction_finding_and_its_h_sits_near_zero(trained_root):
    root, _, square = trained_root
    version, permutation, result = _audit(root, square)
    for pair in result.details.pairs:  # y = x0² + x1 + noise n0
        assert pair.h_low < 0.15, pair
    comparison = compare([*audit_weights(version), *permutation, result])
    assert not [f for f in comparison.findings if f.kind == "acts jointly"] and comparison.jointly == ()
    assert "no relevant feature's effect is mostly joint" in comparison.interactions
    assert comparison.verdict in ("agree", "partly agree", "disagree", "not assessed")


def test_the_same_seed_gives_the_same_h(trained_root):
    root, product, _ = trained_root
    first, again = (_audit(root, product)[2] for _ in range(2))
    assert first.details == again.details
    assert _audit(root, product, seed=1)[2].details != first.details
