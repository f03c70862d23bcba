"""The approval step under a real Prefect server: the run pauses, a decision resumes it, the log records it; the next
version's report says what changed since the approved one."""

import contextvars
import io
import json
import os
import re
import threading
import time
from pathlib import Path

import numpy as np
import pypdf
import pytest

from flows.audit import audit_model
from tasks.methods.table import AuditOptions
from tasks.registry.versions import sha256_file
from tasks.report.approval import AWAITING, REJECTED, verify_log
from tests import helpers
from tests.smtp import smtp_server

OPTIONS = AuditOptions(methods=("weights", "permutation"), repeats=5)
TIMEOUT_S = 40.0  # long enough to find the paused run on a busy machine; it polls every 5 s


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """Model 'lin': v1 is y = 3a − 2b + c, v2 the same model with a's effect removed (its weight set to 0)."""
    root = tmp_path_factory.mktemp("approval-registry")
    test = helpers.linear_frame(1000, seed=2, scales=(1.0, 1.0, 1.0, 1.0))
    helpers.write_version(root, "lin", "v1", helpers.linear_model(), test)
    helpers.write_version(root, "lin", "v2", helpers.linear_model(np.array([0.0, -2.0, 1.0, 0.0])), test)
    return root


def _paused_run(thread: threading.Thread, outcome: dict, deadline_s: float = 120.0):
    """The flow run paused for approval, once its form (schema and description) is saved."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    deadline = time.monotonic() + deadline_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline and thread.is_alive():
            paused = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
            for run in paused:
                keyset = run.state.state_details.run_input_keyset
                if keyset:
                    try:
                        return run, json.loads(client.read_flow_run_input(run.id, keyset["description"]))
                    except Exception:  # saved a moment after the run pauses
                        pass
            time.sleep(0.5)
    thread.join(timeout=5)
    raise AssertionError(f"no flow run paused for approval; the run ended {outcome.get('state')!r}")


def _audit_and_decide(decide, **kwargs):
    """Run audit_model in a thread; call ``decide(flow_run, description)`` once it pauses (None: let it time out)."""
    outcome = {}
    context = contextvars.copy_context()  # the thread talks to the test harness's server

    def audit():
        try:
            outcome["state"] = audit_model(options=OPTIONS, await_approval=True, return_state=True, **kwargs)
        except BaseException as exc:  # shown by the test that waits for the pause
            outcome["state"] = exc

    thread = threading.Thread(target=context.run, args=(audit,))
    thread.start()
    run, description = _paused_run(thread, outcome)
    if decide is not None:
        decide(run, description)
    thread.join(timeout=180)
    assert not thread.is_alive()
    return outcome["state"], run, description


def _pdf_text(folder: Path) -> str:
    reader = pypdf.PdfReader(io.BytesIO((folder / "report.pdf").read_bytes()))
    return re.sub(r"\s+", " ", " ".join(page.extract_text() for page in reader.pages))


@pytest.fixture(scope="module")
def runs(registry, tmp_path_factory):
    """v1 approved; then v2 left to time out; then v2 rejected, with the decision emailed."""
    from prefect.flow_runs import resume_flow_run

    out = tmp_path_factory.mktemp("approval-reports")
    common = dict(registry=str(registry), model="lin", out=str(out))

    def approve(run, description):
        with pytest.raises(RuntimeError, match="Cannot resume this run"):  # the form's schema refuses an empty name
            resume_flow_run(run.id, run_input={"decision": "approve", "name": ""})
        resume_flow_run(run.id, run_input={"decision": "approve", "name": "Ada Reviewer", "comment": "as expected"})

    first = _audit_and_decide(approve, version="v1", approval_timeout=TIMEOUT_S, **common)
    timed_out = _audit_and_decide(None, version="v2", approval_timeout=3.0, **common)
    saved = {k: os.environ.get(k) for k in ("FEATUREAUDIT_SMTP_HOST", "FEATUREAUDIT_SMTP_PORT",
                                            "FEATUREAUDIT_SMTP_SECURITY")}
    with smtp_server() as (inbox, port):
        os.environ.update(FEATUREAUDIT_SMTP_HOST="127.0.0.1", FEATUREAUDIT_SMTP_PORT=str(port),
                          FEATUREAUDIT_SMTP_SECURITY="none")
        try:
            rejected = _audit_and_decide(lambda run, _: resume_flow_run(run.id, run_input={
                "decision": "reject", "name": "Grace Checker", "comment": "a no longer drives it: explain why"}),
                version="v2", approval_timeout=TIMEOUT_S, email_to=["risk@example.com"], **common)
        finally:
            for key, value in saved.items():
                os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    return out, first, timed_out, rejected, inbox


def test_an_approved_run_completes_and_its_decision_is_logged(runs):
    out, (state, run, description), _, _, _ = runs
    assert state.is_completed() and state.name == "Completed"
    folder = Path(state.result())
    entries, problems = verify_log(out, "lin")
    assert problems == [] and len(entries) == 2  # the approval, then the rejection
    entry = entries[0]
    assert (entry.decision, entry.name, entry.comment) == ("approve", "Ada Reviewer", "as expected")
    assert (entry.model, entry.version, entry.run_id) == ("lin", "v1", folder.name)
    assert entry.report_sha256 == sha256_file(folder / "report.pdf") and entry.flow_run_id == str(run.id)
    assert json.loads((folder / "approval.json").read_text())["hash"] == entry.hash
    # the form's description: the verdict and the warnings, above the form
    assert "**Verdict on the weight-based ranking: agree**" in description and entry.report_sha256 in description


def test_the_first_report_says_no_approved_report_yet(runs):
    _, (state, _, description), _, _, _ = runs
    folder = Path(state.result())
    since = json.loads((folder / "results.json").read_text())["since_approval"]
    assert since["approved_run"] is None and since["verdict_now"] == "agree"
    assert "No approved report of this model yet." in _pdf_text(folder)
    assert "No approved report of this model yet." in description


def test_no_decision_before_the_timeout_keeps_the_report_unapproved(runs):
    out, _, (state, _, _), _, _ = runs
    assert state.is_completed() and state.name == AWAITING
    folder = Path(state.result())
    assert "kept, unapproved" in state.message and (folder / "report.pdf").is_file()
    assert not (folder / "approval.json").exists()
    assert folder.name not in {e.run_id for e in verify_log(out, "lin")[0]}  # no decision logged


def test_the_next_version_lists_only_its_planted_change_since_the_approval(runs):
    out, first, (state, _, description), _, _ = runs
    folder = Path(state.result())
    since = json.loads((folder / "results.json").read_text())["since_approval"]
    assert since["approved_run"] == Path(first[0].result()).name and since["approved_by"] == "Ada Reviewer"
    assert since["verdict_before"] == since["verdict_now"] == "agree"
    assert since["new_warnings"] == [] and since["resolved_warnings"] == []
    assert since["differences"] == ["model.keras sha256 differs"]  # the same test split, a new model
    moved = {method: [c["feature"] for c in changes] for method, changes in since["changes"].items()}
    assert moved == {"weights": ["a"], "weights_scaled": ["a"], "permutation": ["a"]}  # a, and nothing else
    assert all(c["rank_before"] == 1 and c["rank_now"] > 1 for changes in since["changes"].values() for c in changes)
    text = _pdf_text(folder)
    section = text[text.index("Since the last approved report"):text.index("Rankings across methods")]
    assert "approved by Ada Reviewer" in section and "Permutation" in section and "a (#1 → #" in section
    assert "b (#" not in section and "c (#" not in section
    assert "What this report evidences" in text and "Annex IV point 2(g)" in text
    assert r"a \(\#1 → \#" in description  # escaped markdown: no link, image or heading from a name


def test_a_rejection_ends_in_its_state_with_the_comment_and_is_emailed(runs):
    out, _, _, (state, run, _), inbox = runs
    assert state.is_completed() and state.name == REJECTED
    assert "rejected by Grace Checker: a no longer drives it: explain why" in state.message
    folder = Path(state.result())
    assert (folder / "report.pdf").is_file()
    entry = verify_log(out, "lin")[0][-1]
    assert (entry.decision, entry.run_id, entry.flow_run_id) == ("reject", folder.name, str(run.id))
    report_mail, decision_mail = inbox.messages
    assert report_mail.get_content_type() == "multipart/mixed"
    assert decision_mail["Subject"] == "featureaudit: lin v2 rejected by Grace Checker"
    body = decision_mail.get_content()
    assert "a no longer drives it: explain why" in body and entry.hash in body and entry.report_sha256 in body


def test_a_registry_run_started_as_a_deployment_waits_in_its_model_run(registry, tmp_path):
    """As a served deployment runs it (prefect.engine's run_flow on a flow run the server created): the model's
    subflow run pauses, the decision resumes it, and the registry run completes with the model's line."""
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow
    from prefect.flow_runs import resume_flow_run
    from prefect.logging.loggers import flow_run_logger

    from flows.audit import audit_registry

    parameters = {"registry": str(registry), "models": ["lin"], "out": str(tmp_path), "options": {"methods": ["weights"]},
                  "await_approval": True, "approval_timeout": TIMEOUT_S}
    with get_client(sync_client=True) as client:
        parent = client.create_flow_run(audit_registry, parameters=parameters)
    outcome = {}

    def serve_it():
        try:
            outcome["state"] = run_flow(audit_registry, flow_run=parent, error_logger=flow_run_logger(parent),
                                        return_type="state")
        except BaseException as exc:  # shown by the wait below
            outcome["state"] = exc

    thread = threading.Thread(target=contextvars.copy_context().run, args=(serve_it,))
    thread.start()
    paused, _ = _paused_run(thread, outcome)
    assert paused.id != parent.id and paused.name == "lin v2"  # the model's run pauses, inside the registry run
    resume_flow_run(paused.id, run_input={"decision": "approve", "name": "Ada Reviewer"})
    thread.join(timeout=180)
    assert outcome["state"].is_completed(), outcome["state"]
    line = outcome["state"].result()["lin"]
    assert line["status"] == "complete" and line["version"] == "v2"
    [entry] = verify_log(tmp_path, "lin")[0]
    assert (entry.decision, entry.flow_run_id, entry.run_id) == ("approve", str(paused.id), Path(line["folder"]).name)
