"""Scheduling: the registry flow, prefect.yaml, and `featureaudit serve` against a real local Prefect server."""

import inspect
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
from tests.smtp import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_prefect_yaml_declares_the_nightly_deployment():
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    (nightly,) = [d for d in config["deployments"] if d["name"] == "nightly"]
    assert nightly["entrypoint"] == "flows/audit.py:audit_registry"
    assert nightly["schedules"][0]["cron"] == "0 2 * * *" and nightly["schedules"][0]["timezone"]
    assert {"registry", "models", "email_to"} <= set(nightly["parameters"])
    assert set(nightly["parameters"]) <= set(inspect.signature(audit_registry.fn).parameters)


def test_one_failing_model_does_not_stop_the_others(linear_registry, tmp_path):
    registry = tmp_path / "registry"
    shutil.copytree(linear_registry, registry)
    shutil.copytree(registry / "linear", registry / "broken")
    (registry / "broken" / "v1" / "model.keras").write_bytes(b"not a zip file")
    state = audit_registry(registry=str(registry), out=str(tmp_path / "out"), methods=["weights"], return_state=True)
    assert state.is_failed()
    assert "1 of 2 models failed: broken:" in state.message and "model.keras" in state.message
    outcome = state.result(raise_on_failure=False)
    assert outcome["broken"]["status"] == "failed" and outcome["linear"]["status"] == "complete"
    assert (Path(outcome["linear"]["folder"]) / "report.pdf").is_file()
    assert not (tmp_path / "out" / "broken").exists()


@pytest.mark.timeout(600)
def test_serve_registers_the_deployment_on_a_real_server_and_a_triggered_run_writes_its_report(
    linear_registry, tmp_path
):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    port, out = free_port(), tmp_path / "reports"
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)  # serve starts its own server
    log = (tmp_path / "serve.log").open("wb")
    serving = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "serve", "--registry", str(linear_registry), "--model", "linear",
         "--methods", "weights,permutation", "--out", str(out), "--port", str(port), "--cron", "0 2 * * *",
         "--timezone", "Europe/Berlin"],
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
    finally:
        os.killpg(serving.pid, signal.SIGINT)
        try:
            serving.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(serving.pid, signal.SIGKILL)
            serving.wait()
        log.close()
    time.sleep(1)
    assert not server_is_up(url)  # the server serve started is stopped with it
