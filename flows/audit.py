"""The audit flow: resolve a model version, run the importance methods concurrently, compare, render, write.

Only wiring lives here; every step is a task in ``tasks/``, and the methods are run by
:func:`tasks.methods.runner.run_methods` from the table (:mod:`tasks.methods.table`).

In the Prefect UI each model's run is named "<model> <version>"; a registry run carries a table with one
line per model and, when a model failed, ends Failed with a message naming it (and no engine traceback).
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from prefect import flow, get_run_logger, runtime
from prefect.states import Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner

from tasks.core.errors import RegistryRunFailed
from tasks.core.options import DEFAULT_APPROVAL_TIMEOUT_S, DEFAULT_OUT
from tasks.core.result import ImportanceResult
from tasks.methods.cache import ResultCache, prune_task, reused
from tasks.methods.runner import run_methods
from tasks.methods.table import AuditOptions
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

    ``options`` says which methods run and how (:class:`tasks.methods.table.AuditOptions`). ``imports`` names
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
    cache = ResultCache.for_run(out, run_id, started, model=resolved.name, version=resolved.version, refresh=refresh)
    prune_task(cache.folder)
    ran = run_methods(resolved, options, cache)
    results = ran.results
    comparison = compare_task(results)
    run = RunInfo(run_id=run_id, started=started, seed=seed, flow_run_id=str(runtime.flow_run.id),
                  timings=ran.seconds, loaded=loaded.to_dict(), reused=reused(ran.states))
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
