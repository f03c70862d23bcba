"""Permutation importance: how much the test metric degrades when a feature's column is shuffled.

Many permuted copies go through the model per forward call (one compiled function, large
batches), in row chunks so memory stays bounded whatever the size of the test split. Each
unit (a feature, or a group of features permuted jointly) draws its permutations from its own
child of one ``SeedSequence``, so serial, threaded and distributed runs give identical numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prefect import get_run_logger, task

from tasks.metrics import Metric, get_metric
from tasks.modeling import Forward, compiled_loss_name
from tasks.result import ImportanceResult
from tasks.sources import ModelVersion, load_model, load_split

DEFAULT_ROWS_PER_CALL = 262_144
NOTES = (
    "Measures the increase of the test metric when one feature's values are shuffled across rows.",
    "Correlated features share their importance: shuffling one leaves its partner to carry the signal.",
    "Shuffling builds rows the model never saw (extrapolation), most of all for correlated features.",
)


@dataclass(frozen=True, eq=False)
class PermutationScores:
    """Raw output: ``importances`` of shape ``(n_units, n_repeats)`` and the unperturbed score."""

    units: tuple[str, ...]
    importances: np.ndarray
    baseline: float


def permutation_importance(
    forward: Callable[[np.ndarray], np.ndarray],
    X: np.ndarray,
    y: np.ndarray,
    *,
    metric: Metric,
    n_repeats: int = 5,
    random_state: int | None = None,
    units: dict[str, list[int]] | None = None,
    rows_per_call: int = DEFAULT_ROWS_PER_CALL,
    progress: Callable[[str, int, int], None] | None = None,
) -> PermutationScores:
    """Degradation of ``metric`` per unit and repeat; ``units`` maps a name to the columns permuted together.

    Without ``units`` every column is its own unit, named by its index.
    """
    if n_repeats < 1:
        raise ValueError("n_repeats must be at least 1")
    X = np.asarray(X, dtype=np.float32)
    units = units or {str(j): [j] for j in range(X.shape[1])}
    baseline = metric(y, forward(X))
    children = np.random.SeedSequence(random_state).spawn(len(units))
    importances = np.empty((len(units), n_repeats))
    for i, ((name, columns), seed) in enumerate(zip(units.items(), children)):
        rng = np.random.default_rng(seed)
        perms = np.stack([rng.permutation(len(X)) for _ in range(n_repeats)])
        scores = _score_permuted(forward, X, y, metric, np.asarray(columns), perms, rows_per_call)
        importances[i] = metric.degradation(baseline, scores)
        if progress is not None:
            progress(name, i + 1, len(units))
    return PermutationScores(units=tuple(units), importances=importances, baseline=baseline)


def _score_permuted(
    forward: Callable[[np.ndarray], np.ndarray],
    X: np.ndarray,
    y: np.ndarray,
    metric: Metric,
    columns: np.ndarray,
    perms: np.ndarray,
    rows_per_call: int,
) -> np.ndarray:
    """Metric of each permuted copy, streaming row chunks of all repeats through one call each."""
    n_repeats, n_rows = perms.shape
    chunk = max(1, rows_per_call // n_repeats)
    loss_sums = np.zeros(n_repeats)
    for start in range(0, n_rows, chunk):
        stop = min(start + chunk, n_rows)
        block = np.tile(X[start:stop], (n_repeats, 1))
        for r in range(n_repeats):
            block[r * (stop - start) : (r + 1) * (stop - start), columns] = X[np.ix_(perms[r, start:stop], columns)]
        pred = forward(block)
        losses = metric.per_row(np.tile(y[start:stop], n_repeats), pred).reshape(n_repeats, stop - start)
        loss_sums += losses.sum(axis=1)
    return loss_sums / n_rows


@task(name="permutation")
def permutation_task(version: ModelVersion, *, n_repeats: int = 5, seed: int = 0) -> ImportanceResult:
    """Permutation importance of every feature (and manifest group) on the test split."""
    logger = get_run_logger()
    model = load_model(Path(version.model_path))
    test = load_split(Path(version.test_path), version)
    metric = get_metric(version.manifest.metric, version.task, compiled_loss_name(model))
    features = list(version.features)
    units = {f: [j] for j, f in enumerate(features)}
    for group, members in version.manifest.groups.items():
        units[f"group:{group}"] = [features.index(m) for m in members]

    def progress(name: str, done: int, total: int) -> None:
        logger.info("permutation: %s done (%d/%d)", name, done, total)

    scores = permutation_importance(
        Forward(model, version.features), test.X, test.y,
        metric=metric, n_repeats=n_repeats, random_state=seed, units=units, progress=progress,
    )
    n = len(features)
    groups = ImportanceResult.from_samples("permutation_groups", "behavioural", scores.units[n:], scores.importances[n:])
    return ImportanceResult.from_samples(
        "permutation", "behavioural", features, scores.importances[:n],
        metric=metric.name, notes=NOTES,
        details={"baseline": scores.baseline, "n_repeats": n_repeats, "seed": seed, "n_rows": test.n_rows,
                 "groups": groups.records() if len(scores.units) > n else []},
    )
