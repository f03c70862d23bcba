import io
import json
import re
from pathlib import Path

import pypdf
import pytest

from flows.audit import audit_model
from tasks.methods.table import AuditOptions


@pytest.fixture(scope="module")
def demo_run(demo_registry, tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    folder = Path(audit_model(registry=str(demo_registry), model="credit-demo", out=str(out),
                              options=AuditOptions(seeds=2)))
    return folder, json.loads((folder / "results.json").read_text())


def test_report_folder_layout(demo_run, demo_registry):
    folder, results = demo_run
    assert folder.parent.name == "v1" and folder.parent.parent.name == "credit-demo"
    assert sorted(p.name for p in folder.iterdir()) == ["report.html", "report.pdf", "results.json"]
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no staging folder left
    assert results["model"]["sha256"]["model.keras"] == __import__("tasks.registry.versions", fromlist=["x"]).sha256_file(
        demo_registry / "credit-demo" / "v1" / "model.keras"
    )


def test_every_method_ran_and_has_records(demo_run):
    _, results = demo_run
    assert set(results["methods"]) == {"weights", "weights_scaled", "permutation", "ablation", "weights_retrained", "shap",
                                       "lime", "effects", "interactions"}
    for name, method in results["methods"].items():
        assert method["status"] == "ok", method
        if name not in ("effects", "interactions"):  # they measure the top features only
            assert {r["feature"] for r in method["features"]} >= {"income", "noise"}
        assert all({"feature", "importance", "std", "rank", "low", "high"} <= set(r) for r in method["features"])
    assert results["methods"]["weights_retrained"]["sampling"] == "seeds"  # the weights' own spread, per retraining
    assert results["weight_stability"]["n_trainings"] == results["methods"]["ablation"]["n_samples"]
    # LIME explains the rows SHAP explains, one record each, in the same order
    lime, shap = results["methods"]["lime"]["details"], results["methods"]["shap"]["details"]
    assert [(r["selection"], r["row"]) for r in lime["rows"]] == [(r["selection"], r["row"]) for r in shap["local"]]
    # ... and, given SHAP's result through the table's `needs`, sets each row against SHAP's explanation of it
    assert all(r["shap"] is not None and r["shap"]["k"] == 3 for r in lime["rows"])
    # effects draws the top features by permutation, through the table's `needs`, each with its curves and shape
    effects = results["methods"]["effects"]["details"]
    by_permutation = sorted(results["methods"]["permutation"]["features"], key=lambda r: -r["importance"])
    assert [c["feature"] for c in effects["curves"]] == [r["feature"] for r in by_permutation][:8]
    assert all(len(c["pd"]) == len(c["grid"]) == len(c["off_support"]) and c["shape"] for c in effects["curves"])


def test_known_drivers_and_noise(demo_run):
    _, results = demo_run
    ranks = {m: {r["feature"]: r["rank"] for r in v["features"]} for m, v in results["methods"].items()}
    for method in ("permutation", "ablation", "shap"):
        assert ranks[method]["noise"] >= 7, method
        assert ranks[method]["income"] <= 4, method
    assert ranks["weights"]["income"] >= 7  # the ×100 scale shrinks its weights


def test_scaled_feature_is_one_warning_against_the_naive_weights(demo_run):
    _, results = demo_run
    [flagged] = [w for w in results["warnings"] if w["feature"] == "income"]
    assert flagged["kind"] == "under-ranked" and "weights" in flagged["weight_methods"]
    assert set(flagged["behavioural_methods"]) >= {"permutation", "shap"}
    assert len({w["feature"] for w in results["warnings"]}) == len(results["warnings"])  # one warning per feature
    assert results["verdict"] == results["verdicts"]["weights"] == "disagree"
    assert "'income' (under-ranked)" in results["verdict_reason"]
    # the demo's interacting pair: measured by the interactions method, named once, never a misranking
    [joint] = [w for w in results["warnings"] if w["kind"] == "acts jointly"]
    assert {joint["feature"]} < {"inter_a", "inter_b"} and "'inter_a'" in joint["message"] and "'inter_b'" in joint["message"]
    assert joint["weight_methods"] == [] and "Friedman's H" in results["interactions"]
    for method in ("permutation", "shap"):
        evidence = results["rank_evidence"][method]
        assert evidence["top_set"] >= 1 and evidence["summary"].startswith("top ")


def test_pdf_shows_rankings_charts_and_warnings(demo_run):
    folder, results = demo_run
    reader = pypdf.PdfReader(io.BytesIO((folder / "report.pdf").read_bytes()))
    text = re.sub(r"\s+", " ", " ".join(p.extract_text() for p in reader.pages))
    assert "Rankings across methods" in text
    assert "'income': the first-layer weights |W| rank it" in text and "under-rank it" in text
    images = sum(len(p.images) for p in reader.pages)
    assert images >= len(results["methods"]) + 1  # a chart per method, and the rank-comparison chart


def test_methods_can_be_chosen(linear_registry, tmp_path):
    folder = Path(audit_model(registry=str(linear_registry), model="linear", out=str(tmp_path),
                              options=AuditOptions(methods=("weights", "permutation", "ablation"), seeds=1)))
    results = json.loads((folder / "results.json").read_text())
    assert results["methods"]["ablation"]["status"] == "ok"
    assert "shap" not in results["methods"]


def test_permutation_reports_progress_and_clusters(demo_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    _, results = demo_run
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["permutation-credit-demo"]))
        )
    assert artifacts and all(a.type == "progress" for a in artifacts)
    assert max(float(a.data) for a in artifacts) == 100.0
    for method in ("permutation", "ablation"):
        [cluster] = results["methods"][method]["details"]["clusters"]
        assert cluster["members"] == ["corr_1", "corr_2"]
        # jointly removed, the pair matters more than either member alone: its partner no longer stands in
        assert cluster["importance"] > max(cluster["member_importances"].values()), method


def test_pdf_is_archival_with_results_embedded_and_a_signoff_block(demo_run):
    folder, _ = demo_run
    data = (folder / "report.pdf").read_bytes()
    reader = pypdf.PdfReader(io.BytesIO(data))
    assert reader.attachments["results.json"] == [(folder / "results.json").read_bytes()]
    xmp = reader.xmp_metadata.stream.get_data().decode("utf-8")
    assert re.search(r"pdfaid:part[^0-9]*3", xmp) and re.search(r"pdfaid:conformance[^A-Z]*U", xmp)
    text = re.sub(r"\s+", " ", " ".join(p.extract_text() for p in reader.pages))
    for role in ("Prepared by", "Reviewed by", "Approved by"):
        assert role in text
    assert "sha256 model.keras" in text and "time: permutation" in text


def test_second_run_reports_drift_against_the_first(linear_registry, tmp_path):
    kwargs = dict(registry=str(linear_registry), model="linear", out=str(tmp_path))
    first = Path(audit_model(options=AuditOptions(methods=("weights", "permutation"), seed=1), **kwargs))
    second = Path(audit_model(options=AuditOptions(methods=("weights", "permutation"), seed=2), **kwargs))
    assert first != second and first.is_dir()  # the earlier report is kept
    [history] = json.loads((second / "results.json").read_text())["history"]
    assert history["against"] == "previous run of this version" and history["previous_run"] == first.name
    assert history["differences"] == ["seed 1 → 2"]
    # the same model: its weights cannot have moved, and a seed change alone is not drift
    assert history["changes"]["weights"] == [] and history["changes"]["weights_scaled"] == []
    assert set(history["changes"]) == {"weights", "weights_scaled", "permutation"}
    text = re.sub(r"\s+", " ", " ".join(p.extract_text() for p in pypdf.PdfReader(second / "report.pdf").pages))
    assert "Since earlier runs" in text and first.name in text.replace(" ", "") and "seed 1 → 2" in text


def test_an_ablation_budget_retrains_the_features_permutation_ranks_first(linear_registry, tmp_path):
    folder = Path(audit_model(registry=str(linear_registry), model="linear", out=str(tmp_path),
                              options=AuditOptions(methods=("weights", "permutation", "ablation"), seeds=1,
                                                   ablation_budget="2")))
    ablation = json.loads((folder / "results.json").read_text())["methods"]["ablation"]
    # permutation importance of y = 3a - 2b + c on scales 1, 2, 0.5: b (16) before a (9), then c and noise
    assert ablation["status"] == "ok" and {r["feature"] for r in ablation["features"]} == {"a", "b"}
    assert ablation["details"]["not_ablated"] == ["c", "noise"]


@pytest.mark.parametrize("version", [None, "v1"])
def test_a_run_is_named_after_model_and_version_and_links_its_report(linear_registry, tmp_path, monkeypatch, version):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    monkeypatch.setenv("FEATUREAUDIT_REPORT_BASE_URL", "https://reports.example.com/featureaudit/")
    folder = Path(audit_model(registry=str(linear_registry), model="linear", version=version, out=str(tmp_path),
                              options=AuditOptions(methods=("weights",))))
    flow_run_id = json.loads((folder / "results.json").read_text())["run"]["flow_run_id"]
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        (link,) = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(
            any_=["featureaudit-linear-report"]), flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    assert run.name == "linear v1"  # with no version asked for, the newest is resolved and named
    url = f"https://reports.example.com/featureaudit/linear/v1/{folder.name}/report.pdf"
    assert link.data == f"[linear v1 report]({url})"


def test_a_malformed_report_base_url_is_refused_before_computing(linear_registry, tmp_path, monkeypatch):
    from tasks.core.errors import FeatureAuditError

    monkeypatch.setenv("FEATUREAUDIT_REPORT_BASE_URL", "reports.example.com/featureaudit")
    with pytest.raises(FeatureAuditError, match="FEATUREAUDIT_REPORT_BASE_URL='reports.example.com/featureaudit' is "
                                                "not a base URL"):
        audit_model(registry=str(linear_registry), model="linear", out=str(tmp_path / "out"),
                    options=AuditOptions(methods=("weights",)))
    assert not (tmp_path / "out" / "linear").exists()


def test_a_keras_io_model_with_string_lookups_runs_end_to_end(tmp_path):
    """keras.io's structured-data model (a dict of inputs, StringLookup and Normalization inside): every method,
    the report says how each input is fed, and a string category appears as itself in the local explanations."""
    from tests import zoo

    pattern = zoo.build_string_lookup(0)
    zoo.write_pattern(tmp_path / "registry", pattern)
    folder = Path(audit_model(registry=str(tmp_path / "registry"), model=pattern.name, out=str(tmp_path / "out"),
                              options=AuditOptions(seeds=2)))
    results = json.loads((folder / "results.json").read_text())
    assert {name: m["status"] for name, m in results["methods"].items()} == dict.fromkeys(results["methods"], "ok")
    fed = {i["name"]: i for i in results["model"]["inputs"]}
    assert fed["thal"]["dtype"] == "string" and fed["thal"]["columns"] == ["thal"]
    values = {f["value"] for row in results["methods"]["shap"]["details"]["local"] for f in row["features"]
              if f["feature"] == "thal"}
    assert values and values <= set(pattern.test["thal"])
    html = (folder / "report.html").read_text()
    assert "How the model is fed" in html and "<td>thal</td><td>(1)</td><td>string</td>" in html
