"""Scheduling: the registry flow, prefect.yaml, and `featureaudit serve` against a real local Prefect server."""

import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from flows.audit import audit_registry
from flows.serve import server_is_up
from tasks.core.errors import FeatureAuditError
from tasks.methods.table import AuditOptions
from tests.helpers import stop_group
from tests.smtp import free_port

ROOT = Path(__file__).resolve().parents[2]
NOT_A_ZIP = "model.keras could not be loaded as a Keras model: not a Keras archive"


def test_prefect_yaml_declares_the_nightly_deployment():
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    (nightly,) = [d for d in config["deployments"] if d["name"] == "nightly"]
    assert nightly["entrypoint"] == "flows/audit.py:audit_registry"
    assert nightly["schedules"][0]["cron"] == "0 2 * * *" and nightly["schedules"][0]["timezone"]
    assert {"registry", "models", "email_to"} <= set(nightly["parameters"])
    assert set(nightly["parameters"]) <= set(inspect.signature(audit_registry.fn).parameters)
    # The options shown are the defaults, from the one place they live.
    assert AuditOptions(**nightly["parameters"]["options"]) == AuditOptions()


@pytest.fixture
def one_broken(linear_registry, tmp_path):
    """A registry of two models: 'linear', and 'broken', whose model.keras is not a zip."""
    registry = tmp_path / "registry"
    shutil.copytree(linear_registry, registry)
    shutil.copytree(registry / "linear", registry / "broken")
    (registry / "broken" / "v1" / "model.keras").write_bytes(b"not a zip file")
    return registry


def test_one_failing_model_does_not_stop_the_others(one_broken, tmp_path):
    state = audit_registry(registry=str(one_broken), out=str(tmp_path / "out"),
                           options=AuditOptions(methods=("weights",)), return_state=True)
    assert state.is_failed()
    assert "1 of 2 models failed: broken:" in state.message and NOT_A_ZIP in state.message
    error = state.result(raise_on_failure=False)
    assert isinstance(error, FeatureAuditError) and str(error) == state.message
    outcome = error.outcome
    assert outcome["broken"]["status"] == "failed" and outcome["linear"]["status"] == "complete"
    assert (Path(outcome["linear"]["folder"]) / "report.pdf").is_file()
    assert not (tmp_path / "out" / "broken").exists()


def test_a_failed_registry_run_ends_failed_with_its_message_and_no_traceback(one_broken, tmp_path):
    """Run as a deployment runs it (prefect.engine: run_flow with the run's logger), then read its logs back."""
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow
    from prefect.logging.loggers import flow_run_logger

    parameters = {"registry": str(one_broken), "out": str(tmp_path / "out"), "options": {"methods": ["weights"]}}
    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run(audit_registry, parameters=parameters)
    with pytest.raises(FeatureAuditError, match=f"1 of 2 models failed: broken: .*{NOT_A_ZIP}"):
        run_flow(audit_registry, flow_run=flow_run, error_logger=flow_run_logger(flow_run))
    state = _read_run(flow_run.id).state
    assert state.is_failed() and state.message.startswith("1 of 2 models failed: broken: ")
    logs = _run_logs(flow_run.id)
    assert [log for log in logs if log.startswith("Finished in state Failed(") and "models failed: broken:" in log]
    assert not [log for log in logs if "Traceback" in log or "Engine execution exited" in log], logs


def test_registry_runs_are_named_and_summarised_in_the_ui(one_broken, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    state = audit_registry(registry=str(one_broken), out=str(tmp_path / "out"),
                           options=AuditOptions(methods=("weights",)), return_state=True)
    outcome = state.result(raise_on_failure=False).outcome
    parent = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent])))
    assert sorted(run.name for run in children) == ["broken v1", "linear v1"]  # 'latest' resolved to v1

    (summary,) = _artifacts(parent, "featureaudit-registry-summary")
    assert summary.type == "table"
    rows = {row["model"]: row for row in json.loads(summary.data)}
    folder = Path(outcome["linear"]["folder"])
    report = (folder / "report.pdf").resolve().as_uri()
    verdict = json.loads((folder / "results.json").read_text())["verdict"]
    assert rows["linear"] == {"model": "linear", "version": "v1", "verdict": verdict, "status": "complete",
                              "report": report, "message": ""}
    assert rows["broken"]["status"] == "failed" and NOT_A_ZIP in rows["broken"]["message"]
    assert rows["broken"]["report"] == "" and rows["broken"]["verdict"] == ""
    assert outcome["linear"]["report"] == report and outcome["linear"]["version"] == "v1"

    (linear,) = [run for run in children if run.name == "linear v1"]
    (link,) = _artifacts(linear.id, "featureaudit-linear-report")
    assert link.type == "markdown" and link.data == f"[linear v1 report]({report})"  # Prefect's type for links


def _read_run(flow_run_id):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def _run_logs(flow_run_id) -> list[str]:
    """Every log line of a flow run as the UI shows it, tracebacks included."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # logs reach the API from a background worker
    with get_client(sync_client=True) as client:
        return [log.message for log in client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(
            any_=[flow_run_id])))]


def _artifacts(flow_run_id, key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))


@pytest.mark.timeout(600)
def test_serve_registers_the_deployment_on_a_real_server_and_a_triggered_run_writes_its_report(
    linear_registry, tmp_path
):
    """The nightly deployment runs when triggered; a version that lands later is audited once, by the watcher."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    port, out = free_port(), tmp_path / "reports"
    registry = tmp_path / "registry"
    shutil.copytree(linear_registry, registry)
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)  # serve starts its own server
    log = (tmp_path / "serve.log").open("wb")
    serving = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "serve", "--registry", str(registry), "--model", "linear",
         "--methods", "weights,permutation", "--out", str(out), "--port", str(port), "--cron", "0 2 * * *",
         "--timezone", "Europe/Berlin", "--watch-interval", "1"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        deployment = None
        with temporary_settings(updates={PREFECT_API_URL: url}):
            while deployment is None and time.monotonic() < deadline:
                assert serving.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                if server_is_up(url):
                    with get_client(sync_client=True) as client:
                        try:
                            deployment = client.read_deployment_by_name("featureaudit-registry/nightly")
                        except Exception:
                            pass
                time.sleep(1)
            assert deployment is not None, (tmp_path / "serve.log").read_text()[-3000:]
            (schedule,) = deployment.schedules
            assert schedule.schedule.cron == "0 2 * * *" and schedule.schedule.timezone == "Europe/Berlin"
            flow_run = run_deployment("featureaudit-registry/nightly", timeout=240)
            assert flow_run.state.is_completed(), (flow_run.state, (tmp_path / "serve.log").read_text()[-3000:])
            (folder,) = (out / "linear" / "v1").iterdir()
            assert sorted(p.name for p in folder.iterdir()) == ["report.html", "report.pdf", "results.json"]

            shutil.copytree(registry / "linear" / "v1", registry / "linear" / "v2")  # a new version lands
            landed = _landed_runs(deadline=time.monotonic() + 240, serving=serving, log=tmp_path / "serve.log")
            assert [run.parameters["version"] for run in landed] == ["v2"]
            assert landed[0].parameters["model"] == "linear" and landed[0].state.is_completed()
            time.sleep(5)  # five more polls: the same version is not audited again
            assert len(_landed_runs(deadline=0, serving=serving, log=tmp_path / "serve.log")) == 1
        (folder,) = (out / "linear" / "v2").iterdir()
        assert (folder / "report.pdf").is_file()
    finally:
        stop_group(serving, signal.SIGINT, timeout=60)
        log.close()
    time.sleep(1)
    assert not server_is_up(url)  # the server serve started is stopped with it


def _landed_runs(*, deadline: float, serving: subprocess.Popen, log: Path) -> list:
    """The flow runs of the triggered deployment, once one of them is final (or at once, with a past deadline)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(
                name=DeploymentFilterName(any_=["on-new-version"])))
        if time.monotonic() >= deadline or any(run.state and run.state.is_final() for run in runs):
            return runs
        assert serving.poll() is None, log.read_text()[-3000:]
        time.sleep(1)
