"""The one table of importance methods: what the flow runs, the command line offers, and the report titles.

Each entry names a method, says whether it is weight-based or behavioural, and gives its Prefect
task: ``task(version, options) -> list[ImportanceResult]``, a thin wrapper that loads the version's
subject once per process (:func:`tasks.subject.load_subject`) and calls the method's plain function.
``results`` lists the results a method returns, each with the title the report gives it. A new method
is one module and one entry here; the flow, the command line, the report and ``results.json`` read the
table. Retrain-ablation has no single task: the flow fans it out as many jobs (:mod:`tasks.ablation`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tasks.options import METHOD_NAMES
from tasks.result import Kind


@dataclass(frozen=True)
class Method:
    """One importance method: its name (as ``--methods`` spells it), kind, title, results and Prefect task."""

    name: str
    kind: Kind
    title: str
    results: dict[str, str]  # result name -> its title in the report
    task: Callable[..., Any] | None  # a Prefect task (version, options); None: the flow wires it itself
    #: Options that do not change its numbers: a stored result is reused across them (tasks/cache.py).
    ignores: tuple[str, ...] = ()


def _table() -> dict[str, Method]:
    from tasks.permutation import permutation_task
    from tasks.shap_importance import shap_task
    from tasks.weights import weights_task

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
