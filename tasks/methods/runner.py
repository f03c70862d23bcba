"""Run the methods a run asks for: one generic Prefect task for any entry of the table, and the fan-outs.

:func:`run_methods` submits each asked-for method with a ``compute`` as :func:`method_task`, named after the
method (the task run is ``weights``, ``permutation``, …, and its stored result is keyed and named so, see
:mod:`tasks.methods.cache`); then it runs each fan-out (retrain-ablation) with the futures of the methods it
``needs``. It waits for all of them: a method that raised becomes a ``failed`` result, so the report is still
written. The results come back in table order, with each method's run time and, for the methods whose results
were reused, their final states.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefect import allow_failure, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import PrefectFuture

from tasks.core.names import slug
from tasks.core.result import ImportanceResult
from tasks.methods.base import Context, Method
from tasks.methods.cache import ResultCache
from tasks.methods.table import METHODS, AuditOptions
from tasks.registry.versions import ModelVersion
from tasks.subject.loaded import load_subject


@task(name="method")
def method_task(version: ModelVersion, options: AuditOptions, *, method: str,
                upstream: dict[str, Any] | None = None) -> list[ImportanceResult]:
    """Run one entry of the table on the version's subject (loaded once per process). ``upstream`` holds the
    results of the methods it ``needs`` that ran (a method that failed holds its error, and is left out)."""
    entry = METHODS[method]
    logger = get_run_logger()
    ready = {name: results for name, results in (upstream or {}).items() if isinstance(results, list)}
    context = Context(run=options, upstream=ready, logger=logger, progress=_progress(entry, version, logger))
    return entry.compute(load_subject(version), options.of(method), context)


@dataclass(frozen=True)
class MethodRuns:
    """What the run's methods returned: their results in table order, each task method's run time in seconds
    (as Prefect recorded it), and each method's final state (None for a fan-out that was not wholly reused)."""

    results: list[ImportanceResult]
    seconds: dict[str, float]
    states: dict[str, Any]


def run_methods(version: ModelVersion, options: AuditOptions, cache: ResultCache) -> MethodRuns:
    """Run ``options.methods`` on ``version``: task methods concurrently, then the fan-outs; wait for all."""
    asked, skipped = [], {}
    named = "methods" in options.model_fields_set  # asked for by name, not the whole table by default
    for name in options.methods:
        reason = unmeasurable(METHODS[name], version)
        if reason is None:
            asked.append(METHODS[name])
        elif named or METHODS[name].kind == "weight-based":
            skipped[name] = [ImportanceResult.not_ok(name, METHODS[name].kind, version.features, status="skipped",
                                                     reason=reason)]
        # else: asked for only as part of the whole table, it does not apply to this kind of version: left out
    futures: dict[str, PrefectFuture] = {}
    for m in asked:  # table order: a method's needs come before it
        if m.compute is not None:
            needed = {n: allow_failure(futures[n]) for n in m.needs if n in futures}
            futures[m.name] = (cache.apply(method_task.with_options(name=m.name, task_run_name=m.name), m.name)
                               .submit(version, options, method=m.name, upstream=needed))
    context = Context(run=options, logger=get_run_logger())
    fanned: dict[str, list[ImportanceResult]] = {}
    states: dict[str, Any] = {}
    for m in asked:
        if m.fan_out is not None:
            try:
                upstream = {n: futures[n] for n in m.needs if n in futures}
                fanned[m.name], states[m.name] = m.fan_out(version, options.of(m.name), context, cache, upstream)
            except Exception as exc:  # the method's own error, shown in the report; the other methods still count
                fanned[m.name], states[m.name] = [m.failed(version.features, f"{type(exc).__name__}: {exc}")], None
    results: list[ImportanceResult] = []
    for m in METHODS.values():
        if m.name in skipped:
            results.extend(skipped[m.name])
        elif m.name in fanned:
            results.extend(fanned[m.name])
        elif m.name in futures:
            results.extend(_wait(m, futures[m.name], version.features))
    seconds = _seconds(futures) | {name: r[0].details.seconds for name, r in fanned.items() if r and r[0].ok}
    return MethodRuns(results, seconds, {name: f.state for name, f in futures.items()} | states)


def unmeasurable(method: Method, version: ModelVersion) -> str | None:
    """Why ``method`` cannot measure the version's units (None: it can). An image version's units are the patches
    of its grid; a tabular version's are columns, groups, clusters and pairs of them. A method that measures none
    of them is skipped up front, saying so; :func:`run_methods` leaves it out instead when it was not asked for by
    name (the whole table is the default), unless it is the weight-based method the report is about."""
    image = version.image_shape is not None
    if method.applies_to(image):
        return None
    kinds = [_UNIT_WORDS[kind] for kind in sorted(method.units, key=list(_UNIT_WORDS).index)]
    listed = " and ".join(kinds) if len(kinds) < 3 else f"{', '.join(kinds[:-1])} and {kinds[-1]}"
    return (f"it measures {listed}, not the patches of an image (r<row>c<column>)" if image else
            f"it measures {listed}, and this version is tabular")



_UNIT_WORDS = {"column": "columns", "group": "groups", "cluster": "correlated clusters", "pair": "pairs of features",
               "patch": "patches", "token": "tokens"}


def _wait(method: Method, future: PrefectFuture, features: tuple[str, ...]) -> list[ImportanceResult]:
    """The task's results, or one failed result saying why."""
    state = future.wait() or future.state
    if state.is_completed():
        return future.result()
    try:
        future.result()
        reason = f"task ended in state {state.name}"
    except Exception as exc:  # the task's own error, shown in the report
        reason = f"{type(exc).__name__}: {exc}"
    return [method.failed(features, reason)]


def _progress(method: Method, version: ModelVersion, logger: Any) -> Callable[[str, int, int], None]:
    """A progress callback ``(unit, done, total)``: a log record the command line draws as a bar, and a Prefect
    progress artifact, made when the method first reports progress. Both at most once per percent, so ten
    thousand units make a hundred updates, not ten thousand."""
    lock, artifact = threading.Lock(), []

    def report(unit: str, done: int, total: int) -> None:
        logger.info("%s: %s done (%d/%d)", method.name, unit, done, total,
                    extra={"progress": {"task": method.name, "unit": unit, "done": done, "total": total}})
        if not artifact:
            artifact.append(create_progress_artifact(
                0.0, key=f"{method.name}-{slug(version.name)}",
                description=f"{method.title} of {version.name} {version.version}: units done"))
        update_progress_artifact(artifact[0], 100.0 * done / total)

    return every_percent(report, lock)


def every_percent(report: Callable[[str, int, int], None],
                  lock: threading.Lock | None = None) -> Callable[[str, int, int], None]:
    """``report``, called only when the whole percentage done moves on (and always for the last unit)."""
    lock = lock or threading.Lock()
    last = [-1]

    def progress(unit: str, done: int, total: int) -> None:
        with lock:
            percent = 100 * done // max(total, 1)
            if percent == last[0] and done < total:
                return
            last[0] = percent
            report(unit, done, total)

    return progress


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
