"""The verdict on trained models (tests/trained.py): real MLPs, trained in seconds, on processes whose drivers are
known, audited by the real methods."""

from __future__ import annotations

import pytest

from tasks.methods.permutation import audit_permutation
from tasks.methods.shap import shap_audit
from tasks.methods.weights import audit_weights
from tasks.registry.versions import resolve_version
from tasks.report.verdict import MARGIN, compare, in_lower_half
from tests import trained


def _audit(root, case, *, shap: bool = False):
    version = resolve_version(root, case.name, case.folder)
    results = [*audit_weights(version), *audit_permutation(version, seed=0)]
    if shap:
        results.append(shap_audit(version, seed=0, n_rows=200))
    return results, compare(results)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_model_that_learnt_nothing_has_no_material_effect_never_agree(tmp_path, seed):
    case = trained.build(tmp_path, "no_signal", 1.0, seed)
    results, comparison = _audit(tmp_path, case, shap=True)
    assert comparison.verdict == "no material effect", comparison.reason
    assert set(comparison.verdicts.values()) == {"no material effect"}
    assert comparison.fit is not None and not comparison.fit.beats_constant
    assert comparison.reason.startswith("no material effect: the model does not beat a constant prediction on the "
                                        "test split (mse ")
    assert "the weights' ranking is not evidence of importance" in comparison.reason
    # no warning and no feature "acting jointly" measured against an immaterial top: they would be noise
    assert comparison.findings == () and comparison.jointly == ()
    shap = next(r for r in results if r.method == "shap")
    assert shap.reference is not None and shap.importances_mean.max() < 0.2 * shap.reference
    # without the floor against the model itself, SHAP alone would call its top feature relevant
    from tasks.core.ranking import ranking_evidence

    assert ranking_evidence(shap, material=0.0).relevant.any()


@pytest.mark.parametrize("seed", [0, 1])
def test_a_faithful_trained_model_keeps_its_material_drivers(tmp_path, seed):
    case = trained.build(tmp_path, "faithful", 1.0, seed)
    results, comparison = _audit(tmp_path, case)
    assert comparison.verdict not in ("no material effect", "disagree"), comparison.reason
    assert comparison.fit.beats_constant and comparison.fit.loss < 0.1 * comparison.fit.null_loss
    permutation = next(e for e in comparison.evidence if e.method == "permutation")
    relevant = {f for f, r in zip(permutation.features, permutation.relevant) if r}
    assert {"d0", "d1", "d2", "d3"} <= relevant and not relevant & {"n0", "n1", "n2"}


@pytest.mark.parametrize(("strength", "seed", "upper_half"), [(2.0, 0, True), (2.0, 1, True), (10.0, 0, False)])
def test_a_driver_the_weights_demote_by_its_scale_is_named_and_the_verdict_disagrees(tmp_path, strength, seed,
                                                                                  upper_half):
    case = trained.build(tmp_path, "scale", strength, seed)
    results, comparison = _audit(tmp_path, case)
    assert comparison.verdict == "disagree", comparison.reason
    assert [(f.feature, f.kind) for f in comparison.findings] == [("d0", "under-ranked")]
    finding = comparison.findings[0]
    assert finding.weight_methods == ("weights",)  # the scale-aware weights see it
    assert finding.margin >= MARGIN and finding.margin_over == "d1"
    assert f"permutation importance verifies it as #1 (rank 1 verified) at {finding.margin:.1f}× 'd1'" in finding.message
    # a ×2 scale demotes it only to the weights' upper half, where the lower-half rule alone was silent
    assert (not in_lower_half(finding.weight_rank, len(case.features))) == upper_half


def test_a_first_layer_weight_that_a_later_layer_zeroes_is_named_over_ranked(tmp_path):
    case = trained.build(tmp_path, "zeroed", 1.0, 0)
    results, comparison = _audit(tmp_path, case)
    weights = next(r for r in results if r.method == "weights")
    assert weights.rank[weights.features.index("n0")] == 1
    assert comparison.verdict == "disagree", comparison.reason
    assert [(f.feature, f.kind) for f in comparison.findings] == [("n0", "over-ranked")]
    assert "permutation importance shows it negligible" in comparison.findings[0].message


def test_two_factors_acting_through_their_product_are_never_a_bare_agree(tmp_path):
    # y = 0.5·x0·x1 + x2: the weights order every verified pair as the behavioural methods do
    case = trained.build(tmp_path, "product", 0.5, 0)
    results, comparison = _audit(tmp_path, case, shap=True)
    assert comparison.verdict == "agree, interactions not assessed", comparison.reason
    assert sorted(f for f, _ in comparison.jointly) == ["x0", "x1"]
    assert all(share > 0.85 for _, share in comparison.jointly)
    assert "SHAP shows 'x" in comparison.reason and "no method in this run measures" in comparison.reason
    shap = next(r for r in results if r.method == "shap")
    assert shap.details.unexplained[shap.features.index("x2")] < 0.1  # the additive driver


@pytest.mark.parametrize("seed", [0, 1])
def test_y_equals_x0_times_x1_plus_x2_gives_no_bare_agree(tmp_path, seed):
    case = trained.build(tmp_path, "product", 1.0, seed)
    _, comparison = _audit(tmp_path, case, shap=True)
    assert comparison.verdict != "agree", comparison.reason
    assert {f for f, _ in comparison.jointly} == {"x0", "x1"}
    assert comparison.interactions.startswith("Interactions are not assessed in this run")


def test_a_faithful_model_shows_no_feature_acting_through_others(tmp_path):
    case = trained.build(tmp_path, "faithful", 1.0, 0)
    results, comparison = _audit(tmp_path, case, shap=True)
    assert comparison.jointly == () and comparison.verdict not in ("disagree", "agree, interactions not assessed")
    assert "SHAP shows no relevant feature acting mainly through others" in comparison.interactions
    shap = next(r for r in results if r.method == "shap")
    assert max(shap.details.unexplained[:5]) < 0.1  # d0-d4, the drivers
