"""The audit flow: resolve a model version, run the importance methods concurrently, compare, render, write.

Only wiring lives here; every step is a task in ``tasks/``.
"""

from __future__ import annotations

from datetime import datetime, timezone

from prefect import flow, runtime
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from tasks.ablation import ablation_task
from tasks.compare import compare_task
from tasks.output import new_run_id, write_report_task
from tasks.permutation import permutation_task
from tasks.render import RunInfo, render_task
from tasks.result import ImportanceResult
from tasks.shap_importance import shap_task
from tasks.sources import check_version_task, resolve_version_task
from tasks.weights import weights_task

METHODS = ("weights", "permutation", "ablation", "shap")
METHOD_KINDS = {"weights": "weight-based", "permutation": "behavioural", "ablation": "behavioural", "shap": "behavioural"}


@flow(name="featureaudit", task_runner=ThreadPoolTaskRunner(max_workers=4), log_prints=False)
def audit_model(
    registry: str,
    model: str,
    version: str | None = None,
    out: str = "reports",
    methods: list[str] = list(METHODS),
    seed: int = 0,
    n_repeats: int = 5,
    n_seeds: int = 3,
) -> str:
    """Audit one model version and return the folder its report was written to."""
    started = datetime.now(timezone.utc)
    resolved = resolve_version_task(registry, model, version)
    check_version_task(resolved)
    submit = {
        "weights": lambda: weights_task.submit(resolved),
        "permutation": lambda: permutation_task.submit(resolved, n_repeats=n_repeats, seed=seed),
        "ablation": lambda: ablation_task.submit(resolved, n_seeds=n_seeds, seed=seed),
        "shap": lambda: shap_task.submit(resolved, seed=seed),
    }
    futures = {name: submit[name]() for name in METHODS if name in methods}
    results = _gather(futures, resolved.features)
    comparison = compare_task(results)
    run = RunInfo(run_id=new_run_id(started), started=started, seed=seed, flow_run_id=str(runtime.flow_run.id))
    files = render_task(resolved, results, comparison, run)
    return write_report_task(out, resolved.name, resolved.version, run.run_id, files)


def _gather(futures: dict[str, PrefectFuture], features: tuple[str, ...]) -> list[ImportanceResult]:
    """Wait for every method; a method that raised becomes a 'failed' result, so the report is still written."""
    results: list[ImportanceResult] = []
    for name, future in futures.items():
        state = future.wait() or future.state
        if state.is_completed():
            value = future.result()
            results.extend(value if isinstance(value, list) else [value])
        else:
            try:
                future.result()
                reason = f"task ended in state {state.name}"
            except Exception as exc:  # the task's own error, shown in the report
                reason = f"{type(exc).__name__}: {exc}"
            results.append(ImportanceResult.not_ok(name, METHOD_KINDS[name], features, status="failed", reason=reason))
    return results
