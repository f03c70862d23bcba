"""The one table of importance methods: what the flow runs, the command line offers, the cache stores, the verdict
judges and the report titles.

Each method module ends with its :class:`tasks.methods.base.Method` entry; this table lists them, in the order the
report shows them. A new method is one module and one line here; the runner, the cache, the verdict, the report and
``results.json`` read the table.
"""

from __future__ import annotations

from tasks.core.options import METHOD_NAMES
from tasks.core.result import Kind
from tasks.methods import ablation, permutation, shap, weights
from tasks.methods.base import Method

METHODS: dict[str, Method] = {m.name: m for m in (weights.METHOD, permutation.METHOD, ablation.METHOD, shap.METHOD)}
if tuple(METHODS) != METHOD_NAMES:  # the options validate --methods against the same names
    raise RuntimeError(f"the table lists {', '.join(METHODS)} but the options know {', '.join(METHOD_NAMES)}")
#: Every result's title, for the report.
RESULT_TITLES: dict[str, str] = {name: title for m in METHODS.values() for name, title in m.titles.items()}


def judged(kind: Kind) -> tuple[str, ...]:
    """The results the verdict judges among the methods of ``kind``, in table order."""
    return tuple(spec.name for m in METHODS.values() if m.kind == kind for spec in m.results if spec.judged)
