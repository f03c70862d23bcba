import json
from datetime import datetime, timezone

import numpy as np
import pytest
from scipy import stats

from flows.cli import main
from tasks.registry.versions import sha256_file
from tasks.report.approval import (
    GENESIS,
    ApprovalError,
    Approved,
    append_entry,
    approval_description,
    entry_hash,
    last_approved,
    log_path,
    read_log,
    since_approval,
    since_lines,
    verify_log,
)
from tasks.report.document import ResultsDocument

T = stats.t.ppf(0.975, 4)  # the 95% t-interval over 5 repeats


def _report(out, version, run_id, document=None, pdf=b"%PDF-1.7 report"):
    """A run folder as the flow writes it (its report.pdf and results.json)."""
    folder = out / "m" / version / run_id
    folder.mkdir(parents=True)
    (folder / "report.pdf").write_bytes(pdf)
    (folder / "results.json").write_text(json.dumps(document or _json(run_id, {"x": (1, 1.0, 1.2)}, version=version)))
    return folder


def _decide(out, folder, decision="approve", name="Ada Reviewer", comment="fine"):
    version, run_id = folder.parent.name, folder.name
    return append_entry(out, name=name, decision=decision, comment=comment, model="m", version=version, run_id=run_id,
                        report_sha256=sha256_file(folder / "report.pdf"), flow_run_id=f"flow-{run_id}",
                        time=datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc))


@pytest.fixture
def three(tmp_path):
    """Three decisions on three reports of model 'm': approve, reject, approve."""
    folders = [_report(tmp_path, "v1", "r1"), _report(tmp_path, "v1", "r2"), _report(tmp_path, "v2", "r3")]
    entries = [_decide(tmp_path, f, d) for f, d in zip(folders, ("approve", "reject", "approve"))]
    return tmp_path, folders, entries


def test_three_entries_form_a_chain_that_verifies(three, capsys):
    out, folders, entries = three
    assert entries[0].prev == GENESIS
    assert [e.prev for e in entries[1:]] == [e.hash for e in entries[:-1]]
    assert all(e.hash == entry_hash(json.loads(e.to_line())) for e in entries)
    lines = log_path(out, "m").read_text().splitlines()
    assert [json.loads(line)["decision"] for line in lines] == ["approve", "reject", "approve"]
    assert json.loads(lines[0])["time"] == "2026-11-29T12:00:00+00:00"
    assert json.loads((folders[2] / "approval.json").read_text())["hash"] == entries[2].hash
    assert verify_log(out, "m") == (entries, [])
    assert main(["approvals", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("Ada Reviewer") == 3 and "reject" in printed and "r3" in printed


def test_one_character_edited_is_named_by_its_line(three, capsys):
    out, _, _ = three
    path = log_path(out, "m")
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace('"comment":"fine"', '"comment":"fino"')
    path.write_text("\n".join(lines) + "\n")
    _, problems = verify_log(out, "m")
    assert problems == [f"{path} line 2: its hash does not match its content: the line was edited"]
    assert main(["approvals", "--out", str(out), "--model", "m"]) == 1
    assert f"featureaudit: problem: {path} line 2: its hash does not match" in capsys.readouterr().err


def test_an_edit_with_its_hash_recomputed_breaks_the_next_line(three):
    out, _, _ = three
    path = log_path(out, "m")
    lines = path.read_text().splitlines()
    forged = json.loads(lines[1]) | {"decision": "approve"}
    lines[1] = json.dumps(forged | {"hash": entry_hash(forged)}, separators=(",", ":"))
    path.write_text("\n".join(lines) + "\n")
    _, problems = verify_log(out, "m")
    assert len(problems) == 1 and problems[0].startswith(f"{path} line 3: 'prev' is not the hash of the line before")


@pytest.mark.parametrize("removed", [0, 1, 2])
def test_a_removed_line_is_detected(three, removed):
    out, _, _ = three
    path = log_path(out, "m")
    lines = path.read_text().splitlines()
    del lines[removed]
    path.write_text("".join(line + "\n" for line in lines))
    _, problems = verify_log(out, "m")
    assert problems, removed
    if removed < 2:  # the chain itself: the line after the gap no longer follows
        assert problems[0].startswith(f"{path} line {removed + 1}: 'prev' is not the hash")
    else:  # the last line: its run folder's approval.json is no longer in the log
        assert problems == [f"{out / 'm' / 'v2' / 'r3' / 'approval.json'}: this decision is not in {path}: "
                            "a line was removed from the log"]


def test_two_lines_swapped_are_detected(three):
    out, _, _ = three
    path = log_path(out, "m")
    lines = path.read_text().splitlines()
    lines[0], lines[1] = lines[1], lines[0]
    path.write_text("\n".join(lines) + "\n")
    _, problems = verify_log(out, "m")
    assert problems[0].startswith(f"{path} line 1: 'prev' is not the hash")


def test_a_report_changed_after_approval_is_named(three, capsys):
    out, folders, _ = three
    (folders[0] / "report.pdf").write_bytes(b"%PDF-1.7 another report")
    _, problems = verify_log(out, "m")
    assert problems == [f"{folders[0] / 'report.pdf'}: its sha256 is not the one approved by Ada Reviewer on "
                        "2026-11-29T12:00:00+00:00: the report was changed after the decision"]
    (folders[1] / "report.pdf").unlink()  # a report removed since is not a broken chain
    assert verify_log(out, "m")[1] == problems
    assert main(["approvals", "--out", str(out)]) == 1
    assert "report.pdf: its sha256 is not the one approved" in capsys.readouterr().err


def test_an_unknown_model_or_no_log_is_one_line(tmp_path, capsys):
    assert main(["approvals", "--out", str(tmp_path), "--model", "nope"]) == 2
    assert "no approval log" in capsys.readouterr().err


def test_appending_to_a_damaged_last_line_is_refused(three):
    out, folders, _ = three
    path = log_path(out, "m")
    path.write_text(path.read_text()[:-20] + "\n")
    with pytest.raises(ApprovalError, match="line 3: not JSON.*the decision was not recorded"):
        _decide(out, folders[0])


def test_last_approved_skips_rejections_changed_reports_and_a_broken_tail(three):
    out, folders, entries = three
    approved = last_approved(out, "m")
    assert approved.entry == entries[2] and approved.document.run.id == "r3"
    (folders[2] / "report.pdf").write_bytes(b"changed")  # no longer the report approved: r2 was rejected, so r1
    assert last_approved(out, "m").entry == entries[0]
    (folders[2] / "report.pdf").write_bytes(b"%PDF-1.7 report")
    path = log_path(out, "m")
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1].replace("fine", "fina"), lines[2]]) + "\n")
    assert read_log(path)[0] == entries[:1]  # the intact part of the log only
    assert last_approved(out, "m").entry == entries[0]
    assert last_approved(out, "other") is None


def _record(feature, rank, low, high):
    return {"feature": feature, "rank": rank, "low": low, "high": high, "importance": (low + high) / 2,
            "std": (high - low) / 2 / T * np.sqrt(5)}


def _json(run_id, records, warnings=(), *, version="v1", model_sha="m1", verdict=None):
    return {
        "run": {"id": run_id, "seed": 0},
        "model": {"name": "m", "version": version, "sha256": {"model.keras": model_sha, "test.parquet": "t1"}},
        "verdict": verdict or ("disagree" if warnings else "agree"),
        "methods": {"permutation": {"status": "ok", "sampling": "repeats", "n_samples": 5, "features": [
            _record(f, r, lo, hi) for f, (r, lo, hi) in records.items()]}},
        "warnings": [{"feature": f, "kind": "under-ranked", "message": f"{f} is under-ranked"} for f in warnings],
    }


def test_since_approval_lists_only_what_changed_beyond_noise(three):
    out, _, entries = three
    before = _json("r3", {"a": (1, 2.0, 2.2), "b": (2, 1.0, 1.2), "n": (3, -0.01, 0.02)}, version="v2")
    now = ResultsDocument.from_json(
        _json("r4", {"a": (2, 0.9, 1.1), "b": (1, 1.05, 1.25), "n": (3, -0.02, 0.01)}, ["a"], version="v3",
              model_sha="m2"))
    since = since_approval(Approved(entries[2], ResultsDocument.from_json(before)), now)
    assert since.approved_run == "r3" and since.approved_by == "Ada Reviewer"
    assert (since.verdict_before, since.verdict_now, since.verdict_changed) == ("agree", "disagree", True)
    assert since.new_warnings == ("a is under-ranked",) and since.resolved_warnings == ()
    assert [c["feature"] for c in since.changed_features["permutation"]] == ["a"]  # b moved within its noise
    assert since.differences == ("model.keras sha256 differs",)
    assert json.loads(json.dumps(since.to_json()))["changes"]["permutation"][0]["feature"] == "a"
    assert since_lines(since)[1] == "Verdict: agree → disagree."


def test_no_approval_says_so():
    now = ResultsDocument.from_json(_json("r1", {"x": (1, 1.0, 1.2)}))
    since = since_approval(None, now)
    assert not since.found and since_lines(since) == ["No approved report of this model yet."]
    assert since.to_json()["approved_run"] is None


def test_the_form_description_escapes_what_came_from_files():
    document = ResultsDocument.from_json(_json("r1", {"[x](http://e.test)": (1, 1.0, 1.2)}, ["[x](http://e.test)"]))
    text = approval_description(document, "ab" * 32, since_approval(None, document))
    assert "**Verdict on the weight-based ranking: disagree**" in text and "ab" * 32 in text
    assert "](http" not in text and r"\[x\]\(http://e.test\) is under\-ranked" in text
    assert "No approved report of this model yet." in text


def test_await_approval_needs_a_prefect_server_and_a_positive_timeout(linear_registry, tmp_path, capsys, monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    run = ["run", "--registry", str(linear_registry), "--model", "linear", "--out", str(tmp_path / "out"),
           "--methods", "weights", "--await-approval"]
    with temporary_settings(restore_defaults={PREFECT_API_URL}):  # no server, even where a test harness set one
        assert main(run + ["--approval-timeout", "20"]) == 2  # (were it not refused: a 20 s pause, not a week)
    assert "featureaudit: error: --await-approval needs PREFECT_API_URL" in capsys.readouterr().err
    assert main(run + ["--approval-timeout", "0"]) == 2
    assert "--approval-timeout must be a number of seconds above 0, not 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything is written

