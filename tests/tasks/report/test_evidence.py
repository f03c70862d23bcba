"""Page 1's evidence: each warning with every judged method's word for and against it, the correlated clusters that
dominate, and what the run did not assess."""

import io
import re
from datetime import datetime, timezone

import numpy as np
import pypdf

from tasks.core.result import ImportanceResult
from tasks.methods.permutation import PermutationDetails
from tasks.registry.versions import resolve_version
from tasks.report.evidence import AGAINST, FOR, dominant_clusters, not_assessed, warning_evidence
from tasks.report.render import RunInfo, build_context, render_html, render_pdf
from tasks.report.verdict import compare
from tasks.subject.clusters import ClusterRecord

FEATURES = ("s5_band", "bmi", "bp", "age", "sex", "s1")


def _samples(method, means, spread=0.02, seed=0, details=None, n=5):
    rng = np.random.default_rng(seed)
    samples = np.asarray(means, float)[:, None] + spread * rng.standard_normal((len(means), n))
    return ImportanceResult.from_samples(method, "behavioural", FEATURES, samples, details=details)


def _overfit_case(details=None):
    """The weights rank 's5_band' first; permutation and SHAP rank it first too, while retraining without it
    improves the test loss: its ablation interval is wholly below zero."""
    weights = ImportanceResult.from_samples("weights", "weight-based", FEATURES, np.array([9.0, 5, 4, 3, 2, 1]))
    perm = _samples("permutation", [3.0, 2, 1.5, 1, 0.5, 0.2], details=details)
    ablation = _samples("ablation", [-0.5, 2, 1.5, 1, 0.5, 0.2], seed=1)
    shap = _samples("shap", [2.5, 2, 1.5, 1, 0.5, 0.2], seed=2)
    return [weights, perm, ablation, shap]


def test_an_over_ranking_shows_the_methods_against_it_and_the_interval_below_zero():
    results = _overfit_case()
    comparison = compare(results)
    [finding] = comparison.findings
    assert (finding.feature, finding.kind) == ("s5_band", "over-ranked")
    # the sentence says what else is known of the feature, and why ablation calls it negligible
    assert "retrain-ablation (drop-column) shows it negligible" in finding.message
    assert "is below zero: the model does better on the test split without it, so it overfits this feature" \
        in finding.message
    assert ("Contradicted by permutation importance, which ranks it 1 (rank 1 verified, relevant); and by SHAP (mean |φ|), "
            "which ranks it 1") in finding.message
    shown = warning_evidence(finding, results, comparison.evidence)
    stances = {v.method: v.stance for v in shown.views}
    assert stances == {"weights": FOR, "permutation": AGAINST, "ablation": FOR, "shap": AGAINST}
    ablation = next(v for v in shown.views if v.method == "ablation")
    assert ablation.high < 0 and "below zero" in ablation.note and ablation.standing == "negligible"
    assert all(v.note == "" for v in shown.views if v.method != "ablation")


def test_an_under_ranking_is_against_where_a_method_finds_the_feature_negligible():
    weights = ImportanceResult.from_samples("weights", "weight-based", FEATURES, np.array([0.1, 5, 4, 3, 2, 1]))
    perm = _samples("permutation", [3.0, 2, 1.5, 1, 0.5, 0.2])
    shap = _samples("shap", [0.0, 2, 1.5, 1, 0.5, 0.2], seed=2)
    results = [weights, perm, shap]
    comparison = compare(results)
    [finding] = comparison.findings
    assert finding.kind == "under-ranked"
    assert "Contradicted by SHAP (mean |φ|), which ranks it 6" in finding.message
    stances = {v.method: v.stance for v in warning_evidence(finding, results, comparison.evidence).views}
    assert stances == {"weights": FOR, "permutation": FOR, "shap": AGAINST}


def _cluster(members, importance, spread=0.1):
    return ClusterRecord(name="+".join(members), members=list(members), min_abs_rho=0.93, importance=importance,
                         std=spread, low=importance - spread, high=importance + spread,
                         member_importances={m: 0.1 for m in members})


def test_a_cluster_above_the_top_single_feature_reaches_page_one_and_its_warned_member_names_it():
    details = PermutationDetails(n_repeats=5, seed=0, n_rows=100, cluster_threshold=0.8, baseline=1.0, groups=[],
                                 clusters=[_cluster(("s5_band", "s1"), 39.0), _cluster(("age", "sex"), 2.0)])
    results = _overfit_case(details)
    lines = dominant_clusters(results)
    # only the cluster whose interval lies above the top single feature's (3.0): 39 / 3 = 13×
    assert len(lines) == 1
    assert lines[0].startswith("The correlated cluster 's5_band', 's1' (weakest |ρ| 0.93): measured as one unit, "
                               "permutation importance gives it 39 [38.9, 39.1]: 13.")
    assert "× its top single feature, 's5_band'" in lines[0]
    comparison = compare(results)
    shown = warning_evidence(comparison.findings[0], results, comparison.evidence)
    assert shown.clusters == ("'s5_band' is one of the correlated cluster 's5_band', 's1' (weakest |ρ| 0.93): "
                              "measured as one unit, permutation importance gives it 39 [38.9, 39.1]",)
    assert dominant_clusters(_overfit_case()) == []


def test_what_was_not_assessed_is_said_with_why():
    weights = ImportanceResult.from_samples("weights", "weight-based", FEATURES, np.array([9.0, 5, 4, 3, 2, 1]))
    part = ImportanceResult.from_samples("ablation", "behavioural", FEATURES[:3],
                                         np.array([[3.0], [2.0], [1.0]]) + 0.01 * np.arange(5))
    failed = ImportanceResult.not_ok("shap", "behavioural", FEATURES, status="failed", reason="RuntimeError: broke")
    results = [weights, part, failed]
    lines = not_assessed(results, compare(results), FEATURES)
    assert lines[0].startswith("Not asked for in this run: Permutation importance, LIME, Effects")
    assert "SHAP: failed: RuntimeError: broke." in lines
    assert "Retrain-ablation (drop-column) measured 3 of the 6 features (its budget); the others are not ranked " \
           "by it (see its section)." in lines
    assert any(line.startswith("Interactions are not assessed in this run") for line in lines)
    assert any(line.startswith("How far the weight ranking moves across trainings") for line in lines)


def test_page_one_holds_each_warnings_table_and_points_to_the_rule(linear_registry):
    version = resolve_version(linear_registry, "linear")
    object.__setattr__(version, "features", FEATURES)
    results = _overfit_case()
    run = RunInfo(run_id="20260101T000000Z-abc123", started=datetime(2026, 1, 1, tzinfo=timezone.utc), seed=0)
    pdf = pypdf.PdfReader(io.BytesIO(render_pdf(render_html(build_context(version, results, compare(results), run)))))
    pages = [re.sub(r"\s+", " ", p.extract_text()) for p in pdf.pages]
    assert "Every judged method's word on 's5_band'" in pages[0]
    assert "Permutation importance #1 of 6" in pages[0] and "against" in pages[0]
    assert "whole 95% interval below zero" in pages[0]
    assert "Not assessed" in pages[0]
    page = int(re.search(r"The rule behind the verdict: page (\d+)\.", pages[0]).group(1))
    assert "How the verdict is decided" in pages[page - 1]
