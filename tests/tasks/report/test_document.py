import json
import re
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pytest

from tasks.core.errors import FeatureAuditError, ResultsError
from tasks.core.result import Details, ImportanceResult, json_ready
from tasks.registry.versions import resolve_version
from tasks.report.document import SCHEMA, ResultsDocument, read_results
from tasks.report.history import SAME_VERSION, history
from tasks.report.render import RunInfo, results_document
from tasks.report.verdict import compare
from tasks.subject.loaded import check_version


@dataclass(frozen=True)
class LayerDetails(Details):
    """A method's details with what JSON cannot hold as such: NaN and a numpy integer."""

    layer: str
    nan: float
    n: Any


@pytest.fixture(scope="module")
def audit(linear_registry):
    """A real audit's pieces: the linear model's version, four results (one failed, one skipped), their comparison."""
    version = resolve_version(linear_registry, "linear")
    features = version.features
    rng = np.random.default_rng(0)
    weights = ImportanceResult.from_samples("weights", "weight-based", features, np.array([3.0, 2.0, 1.0, 0.01]),
                                            details=LayerDetails(layer="dense", nan=float("nan"), n=np.int64(3)))
    perm = ImportanceResult.from_samples("permutation", "behavioural", features,
                                         np.array([[1.0], [2.0], [0.5], [9.0]]) + 0.01 * rng.standard_normal((4, 5)),
                                         metric="mse")
    failed = ImportanceResult.not_ok("shap", "behavioural", features, status="failed", reason="RuntimeError: boom")
    skipped = ImportanceResult.not_ok("ablation", "behavioural", features, status="skipped", reason="no train split")
    results = [weights, perm, failed, skipped]
    run = RunInfo(run_id="20260101T000000Z-abc123", started=datetime(2026, 1, 1, tzinfo=timezone.utc), seed=0,
                  timings={"weights": 1.5}, loaded=check_version(version).to_dict())
    return version, results, compare(results), run


@pytest.fixture(scope="module")
def document(audit):
    return results_document(*audit)


def test_a_written_document_reads_back_equal(document, tmp_path):
    earlier = replace(document, run=replace(document.run, id="20251201T000000Z-aaaaaa", seed=1))
    with_history = replace(document, history=tuple(history({SAME_VERSION: earlier}, document)))
    for written in (document, with_history):
        path = tmp_path / "results.json"
        path.write_bytes(written.to_bytes())
        back = read_results(path)
        assert back == written
        assert back.to_bytes() == path.read_bytes()
        assert back.to_json() == json.loads(path.read_text())
    assert json.loads(document.to_bytes())["schema"] == SCHEMA == 2
    assert "history" not in document.to_json() and with_history.to_json()["history"][0]["against"] == SAME_VERSION


def test_the_document_says_what_the_results_and_the_comparison_say(audit, document):
    version, results, comparison, run = audit
    data = document.to_json()
    assert list(data) == ["schema", "model", "run", "methods", "verdict", "verdict_reason", "verdicts", "verdict_rule",
                          "status", "test_rows", "agreement", "consensus", "rank_evidence", "weight_stability",
                          "model_fit", "interactions", "warnings"]
    assert list(data["model"]) == ["name", "version", "task", "sha256", "paths", "inputs", "output", "notes"]
    assert data["run"] == {"id": run.run_id, "started": "2026-01-01T00:00:00+00:00", "seed": 0, "flow_run_id": None,
                           "timings": {"weights": 1.5}}
    assert data["methods"] == {r.method: json_ready(r.to_dict()) for r in results}  # the result's own JSON form
    assert data["methods"]["weights"]["details"] == {"layer": "dense", "nan": None, "n": 3}
    agreement = json_ready(comparison.to_dict())
    assert data["warnings"] == agreement["warnings"] and data["warnings"]  # every field of each Finding
    assert (data["agreement"], data["consensus"]) == (agreement["agreements"], agreement["consensus"])
    assert (data["rank_evidence"], data["weight_stability"]) == (agreement["rank_evidence"], agreement["weight_stability"])
    assert data["model_fit"] == agreement["model_fit"]
    assert data["interactions"] == comparison.interactions and data["interactions"].startswith("Interactions are not")
    assert data["test_rows"] == version.test_sampling()
    assert (data["status"], data["verdict"]) == ("partial", comparison.verdict)
    assert document.methods["shap"].error == "RuntimeError: boom" and document.methods["ablation"].reason == "no train split"


def test_an_older_document_without_a_schema_still_reads(document, tmp_path):
    """The first release's layout: no schema, status, verdict_reason, verdicts, test_rows, rank_evidence,
    weight_stability, model paths and inputs, method sampling, or warnings' lists of methods."""
    old = document.to_json()
    for key in ("schema", "status", "verdict_reason", "verdicts", "test_rows", "rank_evidence", "weight_stability",
                "consensus"):
        del old[key]
    for key in ("paths", "inputs", "output", "notes"):
        del old["model"][key]
    for method in old["methods"].values():
        del method["sampling"], method["method"]
    for warning in old["warnings"]:
        del warning["weight_methods"], warning["behavioural_methods"]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(old))
    legacy = read_results(path)
    assert legacy.schema == 1
    assert (legacy.model, legacy.run) == (replace(document.model, paths={}, inputs=(), output=None, notes=()),
                                          document.run)
    assert legacy.status == "partial"  # shap failed
    assert legacy.methods["permutation"].features == document.methods["permutation"].features
    assert legacy.methods["permutation"].method == "permutation" and legacy.methods["permutation"].sampling == "repeats"
    assert [w.message for w in legacy.warnings] == [w.message for w in document.warnings]
    assert (legacy.verdicts, legacy.test_rows, legacy.weight_stability) == ({}, None, None)
    assert ResultsDocument.from_json(legacy.to_json()) == legacy  # written again as schema 1, with every key


def test_an_older_document_without_what_readers_need_is_refused_saying_what_that_is(document, tmp_path):
    old = document.to_json()
    del old["schema"], old["run"]["id"]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(old))
    with pytest.raises(ResultsError, match=re.escape(f"{path} is not a featureaudit results document: it has no "
                                                     "'run.id' (a document without a schema is read when it has the "
                                                     "model's name and version, the run's id")):
        read_results(path)


@pytest.mark.parametrize(("damage", "message"), [
    (lambda data: data[: len(data) // 2], r"is not JSON \(.* at line \d+, column \d+\): the file is truncated or damaged"),
    (lambda data: b"", r"is not JSON \(Expecting value at line 1, column 1\)"),
    (lambda data: b'{"rows": [1, 2, 3]}', r"is not a featureaudit results document: it has no 'model'"),
    (lambda data: b"[1, 2, 3]", r"is not a featureaudit results document: it holds a list, not an object"),
    (lambda data: data.replace(b'"seed": 0', b'"seed": "0"'),
     r"is not a featureaudit results document: 'run.seed' is a string, expected an integer"),
    (lambda data: data.replace(b'"status": "partial"', b'"status": "done"'),
     r"is not a featureaudit results document: 'status' is 'done', expected one of complete, partial"),
    (lambda data: data.replace(b'"verdicts": {', b'"verdicts_": {'),
     r"is not a featureaudit results document: it has no 'verdicts'; run the audit again"),  # schema 2: every key
    (lambda data: data.replace(b'"schema": 2', b'"schema": 3'),
     r"has schema 3, written by a newer featureaudit \(this one reads schemas 1 to 2\): upgrade featureaudit"),
    (lambda data: data.replace(b'"schema": 2', b'"schema": "2"'), r"is not a featureaudit results document: "
                                                                  r"'schema' is '2', expected 1 to 2"),
    (lambda data: b"\xff\xfe" + data, r"cannot be read \(UnicodeDecodeError: "),
])
def test_a_damaged_or_foreign_file_is_one_error_naming_it(document, tmp_path, damage, message):
    path = tmp_path / "run" / "results.json"
    path.parent.mkdir()
    path.write_bytes(damage(document.to_bytes()))
    with pytest.raises(ResultsError, match=re.escape(str(path)) + " " + message) as caught:
        read_results(path)
    assert isinstance(caught.value, FeatureAuditError) and caught.value.__cause__ is None


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(ResultsError, match=re.escape(f"{tmp_path / 'results.json'} does not exist: the run folder "
                                                     "has no results.json")):
        read_results(tmp_path / "results.json")
