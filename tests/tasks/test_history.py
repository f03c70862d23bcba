import json

from tasks.history import drift, previous_results


def _doc(run_id, ranks, warnings):
    return {
        "run": {"id": run_id},
        "model": {"version": "v1"},
        "verdict": "disagree" if warnings else "agree",
        "methods": {"permutation": {"status": "ok", "features": [{"feature": f, "rank": r} for f, r in ranks.items()]}},
        "warnings": [{"feature": f, "kind": "under-ranked", "weight_method": "weights", "behavioural_method": "permutation",
                      "message": f"{f} is under-ranked"} for f in warnings],
    }


def test_drift_lists_rank_changes_and_new_and_resolved_warnings():
    before = _doc("r1", {"a": 1, "b": 2, "c": 3}, ["a"])
    now = _doc("r2", {"a": 3, "b": 2, "c": 1}, ["c"])
    diff = drift(before, now)
    assert diff["previous_run"] == "r1"
    assert diff["rank_changes"]["permutation"] == [("c", 3, 1), ("a", 1, 3)]
    assert diff["new_warnings"] == ["c is under-ranked"] and diff["resolved_warnings"] == ["a is under-ranked"]


def test_previous_results_picks_the_newest_run_and_skips_staging(tmp_path):
    for version, run_id in (("v1", "20260101T000000Z-aaaaaa"), ("v2", "20260301T000000Z-bbbbbb"),
                            ("v2", ".20260401T000000Z-cccccc.tmp")):
        folder = tmp_path / "m" / version / run_id
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps({"run": {"id": run_id}}))
    assert previous_results(tmp_path, "m")["run"]["id"] == "20260301T000000Z-bbbbbb"
    assert previous_results(tmp_path, "other") is None
