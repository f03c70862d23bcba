import json
import time
from pathlib import Path

import pytest

from flows.audit import audit_model, with_runner
from tasks.methods.table import AuditOptions


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as local:
        yield local


def _numbers(folder: str) -> dict:
    results = json.loads((Path(folder) / "results.json").read_text())
    return {m: [(r["feature"], r["importance"], r["std"]) for r in v["features"]] for m, v in results["methods"].items()}


def _flow_run_logs(flow_run_id, wanted: str, *, timeout: float = 60.0) -> list:
    """The flow run's logs as the Prefect API serves them, once one holds ``wanted`` (workers send theirs in batches)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        if any(wanted in log.message for log in logs) or time.monotonic() > deadline:
            return logs
        time.sleep(1.0)


def test_dask_cluster_gives_the_same_numbers_as_a_local_run(linear_registry, tmp_path, cluster):
    kwargs = dict(registry=str(linear_registry), model="linear",
                  options=AuditOptions(methods=("weights", "permutation", "ablation"), seeds=1, seed=3))
    local = audit_model(out=str(tmp_path / "local"), **kwargs)
    remote = with_runner(cluster.scheduler_address)(out=str(tmp_path / "dask"), **kwargs)
    assert _numbers(remote) == _numbers(local)
    assert set(_numbers(remote)) == {"weights", "weights_scaled", "permutation", "ablation", "weights_retrained"}


def _worker_children() -> list[str]:
    """On a worker: the command lines of the processes it started."""
    import psutil

    return [" ".join(p.cmdline()) for p in psutil.Process().children(recursive=True)]


def test_a_log_line_a_task_emits_on_a_worker_is_a_log_of_the_flow_run(linear_registry, tmp_path, cluster):
    """Workers report to the run's own Prefect API: each task carries the run's settings, API URL included, so
    these workers, started with no PREFECT_API_URL of their own, need none and start no server."""
    from distributed import Client

    state = with_runner(cluster.scheduler_address)(registry=str(linear_registry), model="linear",
                                                   options=AuditOptions(methods=("weights", "ablation"), seeds=1),
                                                   out=str(tmp_path),
                                                   return_state=True)
    assert state.is_completed()
    logs = _flow_run_logs(state.state_details.flow_run_id, "weights: ranked")
    messages = [log.message for log in logs]
    on_worker = [log for log in logs if log.message.startswith("weights: ranked 4 features")]  # the weights task's
    assert on_worker and on_worker[0].task_run_id is not None, messages
    assert any(m.startswith("ablation: about ") and "jobs on 2 workers)" in m for m in messages), messages
    with Client(cluster.scheduler_address) as client:
        children = [c for worker in client.run(_worker_children).values() for c in worker]
    assert not [c for c in children if "prefect" in c or "uvicorn" in c]
