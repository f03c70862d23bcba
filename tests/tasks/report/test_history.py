import json

import numpy as np
from scipy import stats

from tasks.report.document import FeatureRecord, MethodEntry, ResultsDocument
from tasks.report.history import (
    PREVIOUS_VERSION,
    SAME_VERSION,
    changed,
    drift,
    history,
    intervals_separate,
    previous_runs,
)

T = stats.t.ppf(0.975, 4)  # the 95% t-interval over 5 repeats


def _record(feature, rank, low, high):
    """A permutation record over 5 repeats with the given 95% interval."""
    return {"feature": feature, "rank": rank, "low": low, "high": high, "importance": (low + high) / 2,
            "std": (high - low) / 2 / T * np.sqrt(5)}


def _feature(feature, rank, low, high):
    """The same record, typed as drift reads it."""
    return FeatureRecord(**_record(feature, rank, float(low), float(high)))


def _doc(*args, **kwargs):
    """The document of :func:`_json`, as drift reads it."""
    return ResultsDocument.from_json(_json(*args, **kwargs))


def _json(run_id, records, warnings=(), *, seed=0, version="v1", model_sha="m1"):
    """An older results.json (no schema) with one method; ``records`` maps feature -> (rank, low, high)."""
    return {
        "run": {"id": run_id, "seed": seed},
        "model": {"name": "m", "version": version, "sha256": {"model.keras": model_sha, "test.parquet": "t1"}},
        "verdict": "disagree" if warnings else "agree",
        "methods": {"permutation": {"status": "ok", "sampling": "repeats", "n_samples": 5, "features": [
            _record(f, r, lo, hi) for f, (r, lo, hi) in records.items()]}},
        "warnings": [{"feature": f, "kind": "under-ranked", "message": f"{f} is under-ranked"} for f in warnings],
    }


def test_only_changes_whose_intervals_separate_are_reported():
    before = _doc("r1", {"a": (1, 2.0, 2.2), "b": (2, 1.0, 1.2), "n1": (3, -0.01, 0.02), "n2": (4, -0.02, 0.01)}, ["a"])
    now = _doc("r2", {"a": (2, 0.9, 1.1), "b": (1, 1.05, 1.25), "n1": (4, -0.02, 0.01), "n2": (3, -0.01, 0.02)}, ["b"])
    diff = drift(before, now)
    # a dropped beyond noise; b and the noise features moved rank but their intervals overlap
    assert [c["feature"] for c in diff["changes"]["permutation"]] == ["a"]
    assert diff["changes"]["permutation"][0]["rank_before"] == 1 and diff["changes"]["permutation"][0]["rank_now"] == 2
    assert diff["new_warnings"] == ["b is under-ranked"] and diff["resolved_warnings"] == ["a is under-ranked"]
    assert diff["differences"] == []


def test_a_seed_only_change_reports_no_drift_and_names_the_seed():
    records = {"x": (1, 1.0, 1.2), "n1": (2, -0.01, 0.02), "n2": (3, -0.02, 0.01)}
    shuffled = {"x": (1, 0.98, 1.19), "n1": (3, -0.02, 0.015), "n2": (2, -0.01, 0.02)}
    diff = drift(_doc("r1", records, seed=0), _doc("r2", shuffled, seed=1))
    assert diff["changes"] == {"permutation": []}
    assert diff["differences"] == ["seed 0 → 1"]


def test_differences_name_a_new_model():
    diff = drift(_doc("r1", {"x": (1, 1, 1)}), _doc("r2", {"x": (1, 1, 1)}, model_sha="m2"))
    assert diff["differences"] == ["model.keras sha256 differs"]


def test_barely_separated_intervals_among_many_features_are_not_drift():
    method = MethodEntry(method="permutation", status="ok", sampling="repeats", n_samples=5)
    before, just_apart, far_apart = _feature("x", 1, 1.0, 2.0), _feature("x", 1, 2.05, 3.05), _feature("x", 1, 4.0, 5.0)
    assert intervals_separate(before, just_apart)
    assert changed(before, just_apart, method, method, n_features=1)
    assert not changed(before, just_apart, method, method, n_features=60)  # Bonferroni over 60 features
    assert changed(before, far_apart, method, method, n_features=60)
    exact = MethodEntry(method="weights", status="ok", sampling="single", n_samples=1)  # any change is real
    assert changed(_feature("x", 1, 1.0, 1.0), _feature("x", 1, 1.1, 1.1), exact, exact, n_features=60)


def test_intervals_separate():
    assert intervals_separate(_feature("x", 1, 0, 1), _feature("x", 1, 1.5, 2))
    assert not intervals_separate(_feature("x", 1, 0, 1), _feature("x", 1, 0.9, 2))
    no_low = FeatureRecord(feature="x", importance=None, std=None, low=None, high=1.0, rank=1)
    assert not intervals_separate(no_low, _feature("x", 1, 1.5, 2))


def _write(root, version, run_id, document):
    folder = root / "m" / version / run_id
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(document))


def test_previous_runs_finds_this_versions_newest_run_and_the_previous_versions(tmp_path):
    for version, run_id in (("v1", "20260101T000000Z-aaaaaa"), ("v2", "20260301T000000Z-bbbbbb"),
                            ("v2", ".20260401T000000Z-cccccc.tmp"), ("v10", "20260201T000000Z-dddddd"),
                            ("v9", "20260102T000000Z-eeeeee")):
        _write(tmp_path, version, run_id, _json(run_id, {"x": (1, 1, 1)}, version=version))
    found = previous_runs(tmp_path, "m", "v10")
    assert found[SAME_VERSION].run.id == "20260201T000000Z-dddddd"
    assert found[PREVIOUS_VERSION].run.id == "20260102T000000Z-eeeeee"  # v9 comes before v10
    assert set(previous_runs(tmp_path, "m", "v3")) == {PREVIOUS_VERSION}  # a new version: v2's newest run
    assert previous_runs(tmp_path, "m", "v3")[PREVIOUS_VERSION].run.id == "20260301T000000Z-bbbbbb"
    assert previous_runs(tmp_path, "other", "v1") == {}
    current = _doc("now", {"x": (1, 1, 1)}, version="v10")
    assert [h["against"] for h in history(found, current)] == [SAME_VERSION, PREVIOUS_VERSION]


def test_an_unreadable_or_foreign_newest_run_is_passed_over_for_the_one_before(tmp_path):
    _write(tmp_path, "v1", "20260101T000000Z-aaaaaa", _json("20260101T000000Z-aaaaaa", {"x": (1, 1, 1)}))
    _write(tmp_path, "v1", "20260102T000000Z-bbbbbb", {"rows": [1, 2, 3]})  # another tool's file
    folder = tmp_path / "m" / "v1" / "20260103T000000Z-cccccc"
    folder.mkdir()
    (folder / "results.json").write_text('{"schema": 2, "model": {"na')  # cut short
    assert previous_runs(tmp_path, "m", "v1")[SAME_VERSION].run.id == "20260101T000000Z-aaaaaa"


def test_a_separated_but_immaterial_change_is_not_reported():
    from tasks.report.history import MATERIAL_SHARE

    top = 10.0
    small = top * MATERIAL_SHARE * 0.6  # intervals far apart, but a move of 3% of the top importance
    before = _doc("r1", {"top": (1, top - 0.01, top + 0.01), "x": (2, 1.0 - 0.001, 1.0 + 0.001)})
    now = _doc("r2", {"top": (1, top - 0.01, top + 0.01), "x": (2, 1.0 + small - 0.001, 1.0 + small + 0.001)})
    assert drift(before, now, PREVIOUS_VERSION)["changes"]["permutation"] == []
    assert [c["feature"] for c in drift(before, now, material=0.0)["changes"]["permutation"]] == ["x"]
    big = top * MATERIAL_SHARE * 2
    moved = _doc("r3", {"top": (1, top - 0.01, top + 0.01), "x": (2, 1.0 + big - 0.001, 1.0 + big + 0.001)})
    assert [c["feature"] for c in drift(before, moved)["changes"]["permutation"]] == ["x"]
