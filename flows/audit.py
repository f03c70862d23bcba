"""The audit flow: resolve a model version, run the importance methods concurrently, compare, render, write.

Only wiring lives here; every step is a task in ``tasks/``.

In the Prefect UI each model's run is named "<model> <version>"; a registry run carries a table with one
line per model and, when a model failed, ends Failed with a message naming it (and no engine traceback).
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from prefect import allow_failure, flow, get_run_logger, runtime
from prefect.futures import PrefectFuture
from prefect.states import Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner

from tasks.core.errors import RegistryRunFailed
from tasks.core.options import DEFAULT_APPROVAL_TIMEOUT_S, DEFAULT_OUT, AuditOptions, Budget
from tasks.core.result import ImportanceResult
from tasks.methods.ablation import (
    AblationPlan,
    Job,
    JobScores,
    ablation_job_task,
    ablation_plan_task,
    ablation_results_task,
    estimate_line,
    run_ablation,
    skipped,
)
from tasks.methods.cache import CacheKey, ResultCache, prune_task, reused
from tasks.methods.table import METHODS
from tasks.registry.versions import list_models_task, resolve_version_task
from tasks.report.approval import (
    AWAITING,
    REJECTED,
    approval_step_task,
    last_approved_task,
    leave_expired_pause,
    record_approval_task,
)
from tasks.report.artifacts import publish_artifacts_task, publish_summary_task, report_base_url, report_summary
from tasks.report.deliver import check_delivery_task, email_decision_task_from_env, email_task_from_env
from tasks.report.history import previous_runs_task
from tasks.report.output import check_output_task, new_run_id, write_report_task
from tasks.report.render import RunInfo, render_task, run_status
from tasks.report.signing import check_signing_task
from tasks.report.verdict import compare_task
from tasks.subject.loaded import check_version_task


class _FailedAsReported(logging.Filter):
    """Drop the engine's traceback for a registry run that failed as reported in its state message.

    Run as a deployment (prefect.engine), Prefect 3.8.8 re-raises a flow's Failed final state and logs it to
    the run as "Engine execution exited with unexpected exception" with a traceback, though the state
    message already names every failed model; only that record, for this one exception type, is dropped.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], RegistryRunFailed))


logging.getLogger("prefect.flow_runs").addFilter(_FailedAsReported())


def _model_run_name() -> str:
    """'credit-demo v3': the model and the version asked for ('latest' until the run resolves it)."""
    parameters = runtime.flow_run.parameters
    return f"{parameters['model']} {parameters.get('version') or 'latest'}"


@flow(name="featureaudit", flow_run_name=_model_run_name, task_runner=ThreadPoolTaskRunner(max_workers=4),
      log_prints=False)
def audit_model(
    registry: str,
    model: str,
    version: str | None = None,
    out: str = DEFAULT_OUT,
    options: AuditOptions = AuditOptions(),
    refresh: bool = False,
    email_to: list[str] | None = None,
    imports: list[str] | None = None,
    await_approval: bool = False,
    approval_timeout: float = DEFAULT_APPROVAL_TIMEOUT_S,
) -> str:
    """Audit one model version and return the folder its report was written to (run state 'Partial' if a method failed).

    ``options`` says which methods run and how (:class:`tasks.core.options.AuditOptions`). ``imports`` names
    modules that register the model's custom Keras objects; they are imported wherever it is loaded.
    A method whose inputs did not change since an earlier run reuses that run's stored result, unless ``refresh``
    (:mod:`tasks.methods.cache`).
    With ``await_approval`` the run then pauses for a reviewer's decision in the Prefect UI, for at most
    ``approval_timeout`` seconds (see :func:`_await_decision`).
    """
    started = datetime.now(timezone.utc)
    run_id = new_run_id(started)
    seed = options.seed
    check_output_task(out)
    report_base_url()  # a malformed report-store URL fails now, not after the night's compute
    check_signing_task()  # a signing key that cannot sign fails now; the render step certifies with it
    recipients = check_delivery_task(email_to) if email_to else None
    resolved = resolve_version_task(registry, model, version, max_test_rows=options.max_test_rows, seed=seed,
                                    imports=tuple(imports or ()))
    if version is None:
        _name_run(f"{resolved.name} {resolved.version}")
    loaded = check_version_task(resolved)
    budget = Budget.parse(options.ablation_budget, n_features=len(resolved.features))
    cache = ResultCache.for_run(out, run_id, started, model=resolved.name, version=resolved.version, refresh=refresh)
    prune_task(cache.folder)
    futures = {name: cache.apply(METHODS[name].task.with_options(task_run_name=name), CacheKey(name))
               .submit(resolved, options) for name in options.methods if METHODS[name].task is not None}
    ablation: list[ImportanceResult] = []
    ablation_state = None
    if "ablation" in options.methods:
        # Under a budget, ablation waits for permutation importance to choose which features come first.
        ranked = allow_failure(futures["permutation"]) if budget != Budget() and "permutation" in futures else None
        ablation, ablation_state = _ablation(resolved, n_seeds=options.seeds, seed=seed, budget=budget,
                                             priority=ranked, cluster_threshold=options.cluster_threshold, cache=cache)
    results = _gather(futures, resolved.features, ablation)
    comparison = compare_task(results)
    timings = _seconds(futures) | ({"ablation": ablation[0].details.seconds} if ablation and ablation[0].ok else {})
    run = RunInfo(run_id=run_id, started=started, seed=seed, flow_run_id=str(runtime.flow_run.id),
                  timings=timings, loaded=loaded.to_dict(),
                  reused=reused({name: f.state for name, f in futures.items()} | {"ablation": ablation_state}))
    files = render_task(resolved, results, comparison, run, previous_runs_task(out, resolved.name, resolved.version),
                        approved=last_approved_task(out, resolved.name))
    folder = write_report_task(out, resolved.name, resolved.version, run.run_id, files)
    publish_artifacts_task(resolved.name, resolved.version, results, comparison, folder)
    if recipients:
        email_task_from_env()(folder, recipients)
    if await_approval:
        return _await_decision(out, folder, approval_timeout, recipients) or _final_state(folder, results)
    return _final_state(folder, results)


@flow(name="featureaudit-registry", log_prints=False)
def audit_registry(
    registry: str,
    models: list[str] | None = None,
    out: str = DEFAULT_OUT,
    options: AuditOptions = AuditOptions(),
    refresh: bool = False,
    email_to: list[str] | None = None,
    imports: list[str] | None = None,
    await_approval: bool = False,
    approval_timeout: float = DEFAULT_APPROVAL_TIMEOUT_S,
) -> dict[str, dict[str, str | None]]:
    """Audit the newest version of each model (all in the registry by default), one flow run per model.

    A model that fails does not stop the others; the run fails at the end, naming every model that failed.
    Either way the run carries a table artifact with one line per model. With ``await_approval`` each model's
    run waits for its decision (or its timeout) before the next model starts.
    """
    names = models or list_models_task(registry)
    outcome = {}
    for name in names:
        state = audit_model(registry=registry, model=name, out=out, options=options, refresh=refresh, email_to=email_to,
                            imports=imports, await_approval=await_approval, approval_timeout=approval_timeout,
                            return_state=True)
        outcome[name] = _outcome(state)
    publish_summary_task(outcome)
    return _registry_state(outcome)


def with_runner(dask_address: str | None = None):
    """The audit flow on the default thread pool, or on an existing Dask cluster at ``dask_address``."""
    if not dask_address:
        return audit_model
    from prefect_dask import DaskTaskRunner

    return audit_model.with_options(task_runner=DaskTaskRunner(address=dask_address))


def _ablation(resolved, *, n_seeds: int, seed: int, budget: Budget, priority, cluster_threshold: float,
              cache: ResultCache) -> tuple[list[ImportanceResult], State | None]:
    """Retrain-ablation as many small tasks: a plan, one job per (seed, chunk of units) on the task runner, the results.

    A Dask cluster of N workers runs N jobs at once; the numbers depend only on the plan. Each task's result is
    stored and reused (``cache``); the state returned is the results task's when every task was reused, else None.
    """
    if (none := skipped(resolved)) is not None:
        return none, None
    try:
        planning = cache.apply(ablation_plan_task, CacheKey("ablation-plan")).submit(
            resolved, n_seeds=n_seeds, seed=seed, budget=budget, priority=priority, cluster_threshold=cluster_threshold)
        plan: AblationPlan = planning.result()
        job_task = cache.apply(ablation_job_task, CacheKey("ablation-job"))
        states = [planning.state]

        def submit(jobs: list[Job]) -> list[JobScores]:
            running = [job_task.submit(resolved, plan, job, seed=seed) for job in jobs]
            scores = [future.result() for future in running]
            states.extend(future.state for future in running)
            return scores

        logger = get_run_logger()
        slots, kind = _job_slots()
        logger.info("ablation: %s", estimate_line(plan, slots, kind=kind))
        run = run_ablation(plan, submit, n_features=len(resolved.features),
                           progress=lambda message, done, total: logger.info("ablation: %s (%d/%d)", message, done, total))
        state = cache.apply(ablation_results_task, CacheKey("ablation-results"))(resolved, plan, run, seed=seed,
                                                                                 return_state=True)
        results = state.result()
        return results, state if all(s.name == "Cached" for s in (*states, state)) else None
    except Exception as exc:  # the method's own error, shown in the report; the other methods still count
        reason = f"{type(exc).__name__}: {exc}"
        return [ImportanceResult.not_ok("ablation", "behavioural", resolved.features, status="failed",
                                        reason=reason)], None


def _job_slots() -> tuple[int, str]:
    """How many ablation jobs run at once, and on what: the Dask cluster's worker threads, or the local thread
    pool's threads, at most one per core (a retraining keeps a core busy)."""
    import os

    from prefect.context import FlowRunContext

    runner = FlowRunContext.get().task_runner
    if type(runner).__name__ == "DaskTaskRunner":
        return max(1, sum(runner.client.nthreads().values())), "worker"
    return max(1, min(getattr(runner, "_max_workers", 1), os.cpu_count() or 1)), "thread"


def _seconds(futures: dict[str, PrefectFuture]) -> dict[str, float]:
    """Each method task's run time, as Prefect recorded it."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    timings = {}
    with get_client(sync_client=True) as client:
        for name, future in futures.items():
            try:
                run = client.read_task_run(future.task_run_id)
            except ObjectNotFound:  # task runs reach the API as events, a moment after they finish
                continue
            if run.total_run_time is not None:
                timings[name] = round(run.total_run_time.total_seconds(), 2)
    return timings


def _name_run(name: str) -> None:
    """Rename this flow run, once its version is known."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.update_flow_run(runtime.flow_run.id, name=name)


def _outcome(state: State) -> dict[str, str | None]:
    """One model's line in the registry run: status (complete, partial, failed), folder, message; version, verdict
    and report link when a report was written."""
    if not state.is_completed():
        return {"status": "failed", "folder": None, "message": state.message,
                "version": None, "verdict": None, "report": None}
    folder = state.result()
    return {"status": "partial" if state.name == "Partial" else "complete", "folder": folder,
            "message": state.message} | report_summary(folder)


def _registry_state(outcome: dict[str, dict[str, str | None]]) -> dict[str, dict[str, str | None]] | State:
    """The outcome; a Failed state naming the failed models, or 'Partial' when some report is partial.

    A Failed state's data must be an exception: Prefect raises it where the run's result is asked for (a
    deployment's engine always asks), and a dict there became "TypeError: Unexpected result for failed state".
    """
    failed = {name: o["message"] for name, o in outcome.items() if o["status"] == "failed"}
    if failed:
        reasons = "; ".join(f"{name}: {message}" for name, message in failed.items())
        message = f"{len(failed)} of {len(outcome)} models failed: {reasons}"
        return Failed(data=RegistryRunFailed(message, outcome), message=message)
    if any(o["status"] == "partial" for o in outcome.values()):
        return Completed(data=outcome, name="Partial", message="some reports are partial: " + ", ".join(
            name for name, o in outcome.items() if o["status"] == "partial"))
    return outcome


def _await_decision(out: str, folder: str, timeout: float, recipients: list[str] | None) -> State | None:
    """Pause for the reviewer's decision on the report in ``folder`` and record it; None when approved.

    Without a decision before ``timeout`` the run ends Completed, named 'Awaiting approval'; a rejection ends it
    Completed, named 'Rejected', with the comment: the audit itself succeeded and its report is kept either way.
    """
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run

    step = approval_step_task(folder)
    try:
        answer = pause_flow_run(wait_for_input=step.form, timeout=max(1, round(timeout)),
                                poll_interval=step.poll_interval(timeout))
    except FlowPauseTimeout:
        leave_expired_pause(str(runtime.flow_run.id))
        get_run_logger().warning("no decision within %g s: the report in %s is kept, unapproved", timeout, folder)
        return Completed(data=folder, name=AWAITING, message=f"no decision within {timeout:g} s: "
                                                              f"the report in {folder} is kept, unapproved")
    entry = record_approval_task(out, step, decision=answer.decision, name=answer.name, comment=answer.comment,
                                 flow_run_id=str(runtime.flow_run.id))
    if recipients:
        email_decision_task_from_env()(folder, entry, recipients)
    if entry.decision == "reject":
        return Completed(data=folder, name=REJECTED, message=f"rejected by {entry.name}"
                         + (f": {entry.comment}" if entry.comment else "") + f"; the report in {folder} is kept")
    return None


def _final_state(folder: str, results: list[ImportanceResult]) -> str | State:
    """The report folder; in a Completed state named 'Partial' when a method failed, so the run's status says so."""
    if run_status(results) == "complete":
        return folder
    failed = ", ".join(r.method for r in results if r.status == "failed")
    get_run_logger().warning("partial report: %s failed; see their sections in %s", failed, folder)
    return Completed(data=folder, name="Partial", message=f"partial report in {folder}: {failed} failed")


def _gather(futures: dict[str, PrefectFuture], features: tuple[str, ...],
            ablation: list[ImportanceResult]) -> list[ImportanceResult]:
    """Wait for every method; a method that raised becomes a 'failed' result, so the report is still written.

    Ablation's results are already in hand (its jobs were waited for); they take its place in method order.
    """
    results: list[ImportanceResult] = []
    for name in METHODS:
        if name == "ablation":
            results.extend(ablation)
        if name not in futures:
            continue
        future = futures[name]
        state = future.wait() or future.state
        if state.is_completed():
            results.extend(future.result())
        else:
            try:
                future.result()
                reason = f"task ended in state {state.name}"
            except Exception as exc:  # the task's own error, shown in the report
                reason = f"{type(exc).__name__}: {exc}"
            results.append(ImportanceResult.not_ok(name, METHODS[name].kind, features, status="failed", reason=reason))
    return results
