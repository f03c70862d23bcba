import json
import re

import numpy as np
import pytest

from tasks.core.errors import FeatureAuditError, ResultsError
from tasks.core.names import slug
from tasks.core.result import ImportanceResult
from tasks.report.artifacts import (
    REPORT_BASE_URL,
    SUMMARY_KEY,
    artifact_key,
    escape_markdown,
    ranking_rows,
    report_base_url,
    report_summary,
    report_url,
    summary_rows,
    verdict_markdown,
)
from tasks.report.verdict import compare


def test_artifact_keys_are_lowercase_dashes_and_digits():
    assert artifact_key("Credit_Model v2", "verdict") == "featureaudit-credit-model-v2-verdict"


def test_markdown_shows_feature_names_as_literal_text():
    features = ("[click](http://x)", "b", "c", "d")
    weights = ImportanceResult.from_samples("weights", "weight-based", features, np.array([0.01, 3.0, 2.0, 1.0]))
    perm = ImportanceResult.from_samples("permutation", "behavioural", features,
                                         np.array([[9.0] * 5, [3.0] * 5, [2.0] * 5, [1.0] * 5])
                                         + 0.01 * np.random.default_rng(0).standard_normal((4, 5)))
    text = verdict_markdown("m", "v1", compare([weights, perm]), "/reports/m/v1/r")
    assert "[click](http://x)" not in text and escape_markdown("[click](http://x)") in text
    assert "Verdict on the weight-based ranking" in text
    assert ranking_rows([weights, perm])[0] == {"feature": "[click](http://x)", "First-layer weights |W|": 4,
                                            "Permutation importance": 1}


def test_report_url_is_a_file_url_or_under_the_report_store(tmp_path, monkeypatch):
    folder = tmp_path / "out" / "credit demo" / "v3" / "20260101T020000Z-abc123"
    monkeypatch.delenv(REPORT_BASE_URL, raising=False)
    assert report_url(folder, "credit demo", "v3") == (folder / "report.pdf").as_uri()
    assert report_url(folder, "credit demo", "v3").startswith("file:///") and "credit%20demo" in report_url(
        folder, "credit demo", "v3")
    monkeypatch.setenv(REPORT_BASE_URL, "https://reports.example.com/fa/")
    assert report_url(folder, "credit demo", "v3") == (
        "https://reports.example.com/fa/credit%20demo/v3/20260101T020000Z-abc123/report.pdf")


@pytest.mark.parametrize("base", ["reports.example.com", "/srv/reports", "https://x.example.com/?a=1"])
def test_a_report_base_url_must_be_a_url(monkeypatch, base):
    monkeypatch.setenv(REPORT_BASE_URL, base)
    with pytest.raises(FeatureAuditError, match=f"{REPORT_BASE_URL}=.* is not a base URL such as https://"):
        report_base_url()


def test_summary_rows_have_one_line_per_model_and_no_nulls():
    outcome = {
        "credit": {"status": "complete", "folder": "/r/credit/v3/x", "message": None, "version": "v3",
                   "verdict": "agree", "report": "file:///r/credit/v3/x/report.pdf"},
        "churn": {"status": "failed", "folder": None, "message": "Flow run encountered an exception: ModelLoadError",
                  "version": None, "verdict": None, "report": None},
    }
    rows = summary_rows(outcome)
    assert list(rows[0]) == ["model", "version", "verdict", "status", "report", "message"]
    assert rows[0] == {"model": "credit", "version": "v3", "verdict": "agree", "status": "complete",
                       "report": "file:///r/credit/v3/x/report.pdf", "message": ""}
    assert rows[1] == {"model": "churn", "version": "", "verdict": "", "status": "failed", "report": "",
                       "message": "Flow run encountered an exception: ModelLoadError"}
    assert SUMMARY_KEY == slug(SUMMARY_KEY)  # a valid artifact key


def test_report_summary_reads_the_results_and_names_a_foreign_one(tmp_path, monkeypatch):
    monkeypatch.delenv(REPORT_BASE_URL, raising=False)
    folder = tmp_path / "credit" / "v3" / "20260101T020000Z-abc123"
    folder.mkdir(parents=True)
    older = {"model": {"name": "credit", "version": "v3"}, "run": {"id": folder.name}, "verdict": "agree",
             "methods": {}}  # a document from before the schema key, with what readers need
    (folder / "results.json").write_text(json.dumps(older))
    assert report_summary(folder) == {"version": "v3", "verdict": "agree",
                                      "report": (folder / "report.pdf").as_uri()}
    (folder / "results.json").write_text(json.dumps({"verdict": "agree"}))
    with pytest.raises(ResultsError, match=re.escape(f"{folder / 'results.json'} is not a featureaudit results "
                                                     "document: it has no 'model'")):
        report_summary(folder)
