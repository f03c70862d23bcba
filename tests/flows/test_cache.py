"""A version audited again unchanged reuses its stored results; any change to what determines a result recomputes it.

Real flows under the test harness on the linear registry (weights, permutation, SHAP), the task run states read
back from the Prefect API, the PDF's first page read back with pypdf, stored records tampered with on disk.
"""

import base64
import io
import json
import pickle
import re
import shutil
import time
from pathlib import Path
from uuid import UUID

import numpy as np
import pandas as pd
import pypdf
import pytest

from flows.audit import audit_model
from tasks.methods.cache import (
    CACHE_ENV,
    CACHE_FOLDER,
    NotStored,
    ResultsFolder,
    ResultsSerializer,
    cache_folder,
    check_record,
    decode,
    encode,
)
from tasks.methods.table import AuditOptions
from tests import helpers

# lime needs shap: its key holds shap's result, so it is reused exactly when shap's result is the same
OPTIONS = AuditOptions(methods=("weights", "permutation", "shap", "lime"), repeats=2, shap_rows=40, lime_samples=200,
                       lime_replicates=2)
METHODS = ("weights", "permutation", "shap", "lime")


def _copy(registry: Path, tmp: Path) -> Path:
    """A registry of its own holding the linear model's one version, to change."""
    shutil.copytree(registry / "linear", tmp / "linear")
    return tmp


def _audit(registry: Path, out: Path, options: AuditOptions = OPTIONS, **kwargs) -> dict:
    folder = Path(audit_model(registry=str(registry), model="linear", out=str(out), options=options, **kwargs))
    results = json.loads((folder / "results.json").read_text())
    return {"folder": folder, "results": results, "states": _task_states(results["run"]["flow_run_id"])}


def _task_states(flow_run_id: str, prefixes=("weights", "permutation", "shap", "ablation", "lime")
                 ) -> dict[str, list[str]]:
    """Each task's final state names by task run name (without the run suffix), from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    states: dict[str, list[str]] = {}
    with get_client(sync_client=True) as client:
        for _ in range(100):  # task runs reach the API as events, a moment after they finish
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)])))
            ours = [r for r in runs if r.name.startswith(prefixes)]
            if ours and all(r.state is not None and r.state.is_final() for r in ours):
                for r in ours:
                    states.setdefault(re.sub(r"-[0-9a-f]{3}$", "", r.name), []).append(r.state.name)
                return states
            time.sleep(0.1)
    raise AssertionError(f"task runs of flow run {flow_run_id} did not all finish in the API")


def _first_page(folder: Path) -> str:
    reader = pypdf.PdfReader(io.BytesIO((folder / "report.pdf").read_bytes()))
    return re.sub(r"\s+", " ", reader.pages[0].extract_text())


def _records(out: Path, prefix: str, run: str | None = None) -> list[Path]:
    """The stored results of a method's task (only those computed by ``run``, when given)."""
    paths = sorted((out / CACHE_FOLDER).glob(f"{prefix}-*"))
    return [p for p in paths if run is None or check_record(p.read_bytes()).run == run]


@pytest.fixture(scope="module")
def twice(linear_registry, tmp_path_factory):
    """The same version audited twice into one output folder."""
    registry = _copy(linear_registry, tmp_path_factory.mktemp("cache-registry"))
    out = tmp_path_factory.mktemp("cache-out")
    return registry, out, _audit(registry, out), _audit(registry, out)


def test_an_unchanged_version_is_not_computed_again_and_gives_the_same_numbers(twice):
    _, out, first, second = twice
    assert first["states"] == {name: ["Completed"] for name in METHODS}
    assert second["states"] == {name: ["Cached"] for name in METHODS}
    assert second["folder"] != first["folder"] and second["results"]["run"]["id"] != first["results"]["run"]["id"]
    assert json.dumps(second["results"]["methods"]) == json.dumps(first["results"]["methods"])
    reused = second["results"]["run"]["reused"]
    assert set(reused) == set(METHODS)
    assert {origin["run"] for origin in reused.values()} == {first["results"]["run"]["id"]}
    assert "reused" not in first["results"]["run"]
    assert all(len(_records(out, name)) == 1 for name in METHODS)  # one stored result per method


def test_the_first_page_says_the_results_were_reused(twice):
    _, _, first, second = twice
    run = first["results"]["run"]
    date = run["started"][:10] + " " + run["started"][11:16] + " UTC"
    assert f"Unchanged since run {run['id']} ({date}); results reused." in _first_page(second["folder"])
    assert "results reused" not in _first_page(first["folder"])


def test_one_value_changed_in_the_test_split_recomputes_every_method(twice, linear_registry, tmp_path):
    _, out, first, _ = twice
    registry = _copy(linear_registry, tmp_path)
    test = registry / "linear" / "v1" / "test.parquet"
    frame = pd.read_parquet(test)
    frame.loc[7, "a"] = np.float32(frame.loc[7, "a"] + 0.5)
    frame.to_parquet(test, index=False)
    changed = _audit(registry, out)
    assert changed["states"] == {name: ["Completed"] for name in METHODS}
    assert "reused" not in changed["results"]["run"]
    assert changed["results"]["model"]["sha256"]["test.parquet"] != first["results"]["model"]["sha256"]["test.parquet"]


def test_a_changed_manifest_recomputes_every_method(twice, linear_registry, tmp_path):
    _, out, _, _ = twice
    registry = _copy(linear_registry, tmp_path)
    manifest = registry / "linear" / "v1" / "manifest.json"
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"training": {"epochs": 6, "batch_size": 128}}))
    assert _audit(registry, out)["states"] == {name: ["Completed"] for name in METHODS}


def test_a_new_model_with_the_same_splits_reuses_nothing(twice, linear_registry, tmp_path):
    _, out, _, _ = twice
    registry = _copy(linear_registry, tmp_path)
    helpers.linear_model(weights=[3.0, -2.0, 1.0, 0.1]).save(registry / "linear" / "v1" / "model.keras")
    changed = _audit(registry, out)
    assert changed["states"] == {name: ["Completed"] for name in METHODS}  # every method depends on the model


def test_a_damaged_or_foreign_stored_result_is_computed_again_and_runs_no_code(twice, tmp_path):
    registry, out, first, _ = twice
    [shap] = _records(out, "shap", first["results"]["run"]["id"])
    shap.write_bytes(shap.read_bytes()[:200])  # truncated
    [weights] = _records(out, "weights", first["results"]["run"]["id"])
    marker = tmp_path / "pwned"
    record = json.loads(weights.read_text())
    record["metadata"]["serializer"] = {"type": "pickle", "picklelib": "pickle"}
    record["result"] = base64.encodebytes(pickle.dumps(_Payload(str(marker)))).decode()
    weights.write_text(json.dumps(record))

    again = _audit(registry, out)
    # shap computed again gives the same result, so lime, keyed by it, is reused
    assert again["states"] == {"weights": ["Completed"], "permutation": ["Cached"], "shap": ["Completed"],
                               "lime": ["Cached"]}
    assert not marker.exists()
    assert json.dumps(again["results"]["methods"]) == json.dumps(first["results"]["methods"])
    assert set(again["results"]["run"]["reused"]) == {"permutation", "lime"}
    page = _first_page(again["folder"])
    assert "Results reused, their inputs unchanged: permutation" in page
    assert f"from run {first['results']['run']['id']}" in page
    assert check_record(weights.read_bytes()).run == again["results"]["run"]["id"]  # stored again, readable


def test_refresh_computes_again_and_stores_the_new_results(twice):
    registry, out, _, _ = twice
    fresh = _audit(registry, out, refresh=True)
    assert fresh["states"] == {name: ["Completed"] for name in METHODS}
    assert "reused" not in fresh["results"]["run"]
    for name in METHODS:
        assert len(_records(out, name, fresh["results"]["run"]["id"])) == 1


def test_an_unchanged_ablation_is_reused(linear_registry, tmp_path):
    options = AuditOptions(methods=("ablation",), seeds=2)
    first, second = _audit(linear_registry, tmp_path, options), _audit(linear_registry, tmp_path, options)
    assert set(first["states"]["ablation-job"]) == {"Completed"}
    assert {name: set(states) for name, states in second["states"].items()} == {
        "ablation-plan": {"Cached"}, "ablation-job": {"Cached"}, "ablation-results": {"Cached"}}
    assert json.dumps(second["results"]["methods"]) == json.dumps(first["results"]["methods"])
    assert set(second["results"]["run"]["reused"]) == {"ablation"}


def test_the_results_folder_is_the_env_setting_else_under_the_output_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    assert cache_folder(tmp_path / "reports") == tmp_path / "reports" / CACHE_FOLDER
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "shared"))
    assert cache_folder(tmp_path / "reports") == tmp_path / "shared"


class _Payload:
    """Unpickling it would create the file ``path``."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_stored_json_is_rebuilt_exactly_and_only_as_listed_types():
    from tasks.core.result import ImportanceResult
    from tasks.methods.permutation import AdaptiveRepeats, PermutationDetails

    samples = np.array([[0.1, 0.30000000000000004, 2.5], [1e-300, -0.0, 7.0]], dtype=np.float64)
    samples[0, 2], samples[1, 2] = np.nan, np.inf
    details = PermutationDetails(n_repeats=3, seed=0, n_rows=10, cluster_threshold=0.7, baseline=0.25, groups=[],
                                 clusters=[{"name": "c", "members": ["a", "b"]}],
                                 adaptive=AdaptiveRepeats(repeats_tried=[3], top_k=1, top_k_verified=True))
    result = ImportanceResult.from_samples("permutation", "behavioural", ("a", "b"), samples, notes=("n",),
                                           details=details)
    [back] = decode(json.loads(json.dumps(encode([result]))))
    assert json.dumps(back.to_dict()) == json.dumps(result.to_dict())  # NaN and infinity included
    assert back.details == details and back.notes == ("n",) and back.features == ("a", "b")
    for name in ("importances", "importances_mean", "low", "high", "rank"):
        assert getattr(back, name).tobytes() == getattr(result, name).tobytes()
        assert getattr(back, name).dtype == getattr(result, name).dtype
    with pytest.raises(NotStored, match="unknown stored type"):
        decode({"__type__": "Popen", "fields": {"args": ["touch", "x"]}})
    with pytest.raises(NotStored, match="not stored"):
        decode({"__array__": "|O", "shape": [1], "scalar": False, "data": ""})
    with pytest.raises(TypeError):
        encode(object())


def test_prefect_finds_no_stored_result_in_a_record_another_serializer_wrote(tmp_path):
    from prefect.results import ResultStore

    marker = tmp_path / "pwned"
    store = ResultStore(result_storage=ResultsFolder(basepath=str(tmp_path)), serializer=ResultsSerializer())
    payloads = {
        "pickle": ({"type": "pickle", "picklelib": "pickle"},
                   base64.encodebytes(pickle.dumps(_Payload(str(marker)))).decode()),
        "json-class": ({"type": "json"}, json.dumps({"__class__": "pathlib.Path", "data": str(marker)})),
        "extra-settings": ({"type": "featureaudit-results", "picklelib": "pickle"}, '{"featureaudit": 1, "value": 1}'),
        "not-json": None,
    }
    for key, payload in payloads.items():
        if payload is None:
            (tmp_path / key).write_bytes(b"\x80\x04not a record")
            continue
        serializer, result = payload
        (tmp_path / key).write_text(json.dumps({"metadata": {"storage_key": str(tmp_path / key),
                                                             "serializer": serializer}, "result": result}))
        assert not store.exists(key), key
    assert not marker.exists()
    written = store.create_result_record({"a": (1, 2)}, key="ours")
    store.persist_result_record(written)
    assert store.exists("ours") and store.read("ours").result == {"a": (1, 2)}


def test_run_refresh_on_the_command_line_computes_again(linear_registry, tmp_path, capsys):
    from flows.cli import main

    def run(*extra: str) -> dict:
        assert main(["run", "--registry", str(linear_registry), "--model", "linear", "--out", str(tmp_path / "out"),
                     "--methods", "weights", *extra]) == 0
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return json.loads(Path(out.split()[-1]).read_text())["run"]

    first, again, fresh = run(), run(), run("--refresh")
    assert "reused" not in first and again["reused"]["weights"]["run"] == first["id"]
    assert "reused" not in fresh


def test_stored_results_unused_for_the_keep_days_are_pruned_and_a_read_keeps_one(twice, tmp_path, monkeypatch):
    import os

    from tasks.core.errors import FeatureAuditError
    from tasks.methods.cache import KEEP_DAYS_ENV, keep_days, prune

    _, out, _, _ = twice
    folder = tmp_path / "stored"
    folder.mkdir()
    record = _records(out, "permutation")[0]  # a stored result (other tests of this module tamper with the weights')
    now = time.time()
    for name, age_days in (("used", 40), ("unused", 40), ("recent", 1), (".left.part", 2), (".writing.part", 0.01)):
        path = folder / name
        path.write_bytes(record.read_bytes())
        os.utime(path, (now - age_days * 86400, now - age_days * 86400))
    ResultsFolder(basepath=str(folder)).read_path("used")  # reused by a run: touched
    assert prune(folder, 30) == 2
    assert sorted(p.name for p in folder.iterdir()) == [".writing.part", "recent", "used"]

    assert keep_days() == 30
    monkeypatch.setenv(KEEP_DAYS_ENV, "0")
    assert keep_days() == 0
    monkeypatch.setenv(KEEP_DAYS_ENV, "a month")
    with pytest.raises(FeatureAuditError, match="FEATUREAUDIT_RESULTS_CACHE_DAYS='a month' is not a whole number"):
        keep_days()
