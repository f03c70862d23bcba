"""The one table of importance methods: what the flow runs, the command line offers, and the report titles.

Each entry names a method, says whether it is weight-based or behavioural, and gives its Prefect
task: ``task(version, options) -> list[ImportanceResult]``, a thin wrapper (below the table's types) that
reads the run's options and calls the method's plain function, which loads the version's subject once per
process (:func:`tasks.subject.loaded.load_subject`). The method modules never see the options object.
``results`` lists the results a method returns, each with the title the report gives it. A new method
is one module and one entry here; the flow, the command line, the report and ``results.json`` read the
table. Retrain-ablation has no single task: the flow fans it out as many jobs (:mod:`tasks.methods.ablation`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from tasks.core.names import slug
from tasks.core.options import METHOD_NAMES, AuditOptions
from tasks.core.result import ImportanceResult, Kind
from tasks.methods.permutation import audit_permutation
from tasks.methods.shap import shap_audit
from tasks.methods.weights import audit_weights
from tasks.registry.versions import ModelVersion


@dataclass(frozen=True)
class Method:
    """One importance method: its name (as ``--methods`` spells it), kind, title, results and Prefect task."""

    name: str
    kind: Kind
    title: str
    results: dict[str, str]  # result name -> its title in the report
    task: Callable[..., Any] | None  # a Prefect task (version, options); None: the flow wires it itself
    #: Options that do not change its numbers: a stored result is reused across them (tasks/methods/cache.py).
    ignores: tuple[str, ...] = ()


@task(name="weights")
def weights_task(version: ModelVersion, options: AuditOptions = AuditOptions()) -> list[ImportanceResult]:
    """Rank features by first-layer weight magnitudes, naive and scale-aware (skipped where they cannot be placed)."""
    results = audit_weights(version)
    if results[0].ok:
        get_run_logger().info("weights: ranked %d features by first-layer |W|", len(version.features))
    else:
        get_run_logger().warning("weights: skipped: %s", results[0].error)
    return results


@task(name="permutation")
def permutation_task(version: ModelVersion, options: AuditOptions = AuditOptions()) -> list[ImportanceResult]:
    """Permutation importance of every feature, manifest group and correlated cluster on the test split."""
    logger = get_run_logger()
    artifact = create_progress_artifact(
        0.0, key=f"permutation-{slug(version.name)}",
        description=f"Permutation importance of {version.name} {version.version}: units done",
    )

    def progress(name: str, done: int, total: int) -> None:
        logger.info("permutation: %s done (%d/%d)", name, done, total,
                    extra={"progress": {"task": "permutation", "unit": name, "done": done, "total": total}})
        update_progress_artifact(artifact, 100.0 * done / total)

    return audit_permutation(version, n_repeats=options.repeats, seed=options.seed,
                             cluster_threshold=options.cluster_threshold, progress=progress, log=logger.info)


@task(name="shap")
def shap_task(version: ModelVersion, options: AuditOptions = AuditOptions()) -> list[ImportanceResult]:
    """SHAP: global importance with intervals and local explanations."""
    result = shap_audit(version, seed=options.seed, n_rows=options.shap_rows)
    get_run_logger().info("shap: %s explained %d rows (%s)", result.details.explainer,
                          result.details.n_rows, result.details.reason)
    return [result]


def _table() -> dict[str, Method]:
    methods = (
        Method("weights", "weight-based", "First-layer weights",
               {"weights": "First-layer weights |W|", "weights_scaled": "Scale-aware weights |W|·std"}, weights_task,
               ignores=("seed", "repeats", "seeds", "cluster_threshold", "ablation_budget", "shap_rows")),
        Method("permutation", "behavioural", "Permutation importance",
               {"permutation": "Permutation importance", "permutation_accuracy": "Permutation importance (accuracy)"},
               permutation_task, ignores=("seeds", "ablation_budget", "shap_rows")),
        Method("ablation", "behavioural", "Retrain-ablation (drop-column)",
               {"ablation": "Retrain-ablation (drop-column)",
                "weights_retrained": "Weights |W| of the retrained baselines"}, None),
        Method("shap", "behavioural", "SHAP", {"shap": "SHAP (mean |φ|)"}, shap_task,
               ignores=("repeats", "seeds", "cluster_threshold", "ablation_budget")),
    )
    assert tuple(m.name for m in methods) == METHOD_NAMES  # the options validate against the same names
    return {m.name: m for m in methods}


METHODS: dict[str, Method] = _table()
#: Every result's title, for the report.
RESULT_TITLES: dict[str, str] = {name: title for m in METHODS.values() for name, title in m.results.items()}
