"""Permutation importance: how much the test metric degrades when a feature's column is shuffled.

Many permuted copies go through the model per forward call (one compiled function, large
batches). The work is cut into pieces — one unit, one repeat, one run of rows — and pieces are
packed into blocks, so a small test split puts many units' copies into one call and a large one
is streamed in bounded chunks. Each unit (a feature, or a group of features permuted jointly)
draws its permutations from its own child of one ``SeedSequence``, spawned in unit order
(features first, then manifest groups, then correlated clusters), so serial, threaded and
distributed runs give identical numbers, and adding groups or clusters never changes a feature's
numbers. Block boundaries never change them either.

Memory is bounded by bytes, not rows: a block holds as many rows as the memory budget allows
(:func:`tasks.subject.modeling.memory_budget`, ``FEATUREAUDIT_MEMORY_MB``, default 256 MiB) at
``n_features`` float32 each, at most 262,144 rows (the pre-budget size, kept for narrow models).
Beyond the test split itself, memory holds one block with its targets and predictions, the
permutation indices of the units in the current block (``n_repeats × n_rows`` int64 each, 40 MiB
for 1,000,000 rows and 5 repeats), when a repeat spans several blocks the per-row losses of one
unit (``n_metrics × n_repeats × n_rows`` float64), and the model's activations for one forward
batch, itself sized by the budget. Nothing scales with ``n_units × n_repeats × n_rows``.

A wide model whose input feeds one Dense layer alone (:attr:`tasks.subject.modeling.Forward.first_layer`)
is permuted after that layer: a permuted copy is the layer's pre-activations of the original rows
plus the change of the permuted columns times their kernel rows, a block row holds the layer's
width instead of every feature, and the work grows linearly with the features instead of as their
square. The numbers are those of the whole model up to float32 rounding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import Field

from tasks.core.metrics import METRICS, Metric, ModelFit, constant_prediction, model_fit, null_loss
from tasks.core.options import DEFAULT_CLUSTER_THRESHOLD, MethodOptions
from tasks.core.ranking import ranking_evidence, top_k_for
from tasks.core.result import Details, ImportanceResult
from tasks.methods.base import Context, Method, ResultSpec
from tasks.registry.versions import ModelVersion
from tasks.subject.clusters import Cluster, ClusterRecord, GroupRecord, unit_records
from tasks.subject.loaded import load_subject
from tasks.subject.modeling import first_layer_view, memory_budget, rows_for

REPEATS = 5  # permutation repeats to start with (--repeats)
MAX_REPEATS = 20  # doubled up to this many while the top features are not verified
DEFAULT_ROWS_PER_CALL = 262_144  # the most rows of one block, whatever the budget (the pre-budget value)
NOTES = (
    "Measures the degradation of the test metric when one feature's values are shuffled across rows.",
    "Correlated features share their importance: shuffling one leaves its partner to carry the signal. "
    "Clusters of strongly correlated features are therefore also permuted jointly and reported as one unit.",
    "Shuffling builds rows the model never saw (extrapolation), most of all for correlated features.",
    "A categorical feature is permuted as its one raw column (codes or strings), embedding or not; shuffling whole "
    "categories (each with its own learned embedding) tends to over-rate an embedded categorical against numeric "
    "features.",
)
ACCURACY_NOTE = "Accuracy degradation: the drop in the share of correct predictions; coarse for confident models."


@dataclass(frozen=True)
class AdaptiveRepeats:
    """How the repeats grew: each count tried, the k of the top-k check, and whether the last run verified it."""

    repeats_tried: list[int]
    top_k: int
    top_k_verified: bool


@dataclass(frozen=True)
class PermutationDetails(Details):
    """One permutation result's run: its repeats, seed, rows and clustering threshold, the unpermuted score,
    and the manifest groups and correlated clusters (:class:`~tasks.subject.clusters.GroupRecord`,
    :class:`~tasks.subject.clusters.ClusterRecord`).

    ``adaptive`` and ``fit`` are set by :func:`audit_permutation` once the repeats are settled.
    """

    n_repeats: int
    seed: int
    n_rows: int
    cluster_threshold: float
    baseline: float
    groups: list[GroupRecord]
    clusters: list[ClusterRecord]
    adaptive: AdaptiveRepeats | None = None
    fit: ModelFit | None = None  # the model against a constant prediction on the test split (the primary metric's)


@dataclass(frozen=True, eq=False)
class PermutationScores:
    """Raw output: ``importances`` of shape ``(n_units, n_repeats)`` and the unperturbed score, per metric.

    ``importances`` and ``baseline`` are those of the first metric; ``by_metric`` holds every
    metric's, all from the same permuted copies.
    """

    units: tuple[str, ...]
    metrics: tuple[str, ...]
    by_metric: dict[str, np.ndarray]
    baselines: dict[str, float]

    @property
    def importances(self) -> np.ndarray:
        return self.by_metric[self.metrics[0]]

    @property
    def baseline(self) -> float:
        return self.baselines[self.metrics[0]]


def permutation_importance(
    forward: Callable[[np.ndarray], np.ndarray],
    X: np.ndarray,
    y: np.ndarray,
    *,
    metric: Metric,
    extra_metrics: Sequence[Metric] = (),
    n_repeats: int = REPEATS,
    random_state: int | None = None,
    units: dict[str, list[int]] | None = None,
    rows_per_call: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> PermutationScores:
    """Degradation of ``metric`` (and of each of ``extra_metrics``) per unit and repeat.

    ``units`` maps a name to the columns permuted together; without it every column is its
    own unit, named by its index. ``progress(name, done, total)`` is called as each unit finishes.
    ``rows_per_call`` (rows of one block) defaults to :func:`block_rows` of the memory budget.
    """
    if n_repeats < 1:
        raise ValueError("n_repeats must be at least 1")
    if rows_per_call is not None and rows_per_call < 1:
        raise ValueError("rows_per_call must be at least 1")
    X = np.asarray(X, dtype=np.float32)
    copies = _Copies.of(forward, X)
    rows_per_call = rows_per_call or block_rows(copies.width, memory_budget())
    y = np.asarray(y)
    units = units or {str(j): [j] for j in range(X.shape[1])}
    metrics = (metric, *extra_metrics)
    pred = copies.forward(copies.base)  # the unpermuted rows, evaluated as the copies are
    baselines = {m.name: m(y, pred) for m in metrics}
    del pred
    seeds = np.random.SeedSequence(random_state).spawn(len(units))
    columns = [np.asarray(cols, dtype=np.intp) for cols in units.values()]
    names = tuple(units)

    def unit_done(u: int, done: int) -> None:
        if progress is not None:
            progress(names[u], done, len(names))

    losses = _mean_permuted_losses(copies, y, metrics, columns, seeds, n_repeats, rows_per_call, unit_done)
    by_metric = {m.name: np.asarray(m.degradation(baselines[m.name], losses[k])) for k, m in enumerate(metrics)}
    return PermutationScores(names, tuple(m.name for m in metrics), by_metric, baselines)


def block_rows(width: int, budget_bytes: int) -> int:
    """Rows of one block of permuted copies ``width`` float32 wide: what the budget allows, at most 262,144."""
    return rows_for(width, budget_bytes, cap=DEFAULT_ROWS_PER_CALL)


def _permutations(seed: np.random.SeedSequence, n_rows: int, n_repeats: int) -> np.ndarray:
    """The ``(n_repeats, n_rows)`` row permutations of one unit."""
    rng = np.random.default_rng(seed)
    perms = np.empty((n_repeats, n_rows), dtype=np.intp)
    for r in range(n_repeats):
        perms[r] = rng.permutation(n_rows)
    return perms


@dataclass(frozen=True, eq=False)
class _Copies:
    """Permuted copies as the model reads them: whole feature rows, or a wide model's first-layer pre-activations."""

    X: np.ndarray
    forward: Callable[[np.ndarray], np.ndarray]  # the model on a block of copies
    base: np.ndarray  # the unpermuted rows as a block row holds them: X, or X's pre-activations
    kernel: np.ndarray | None  # the first layer's kernel when copies are pre-activations

    @classmethod
    def of(cls, forward: Callable[[np.ndarray], np.ndarray], X: np.ndarray) -> _Copies:
        return cls(X, *first_layer_view(forward, X))

    @property
    def width(self) -> int:
        return self.base.shape[1]

    def write(self, out: np.ndarray, start: int, stop: int, rows: np.ndarray, cols: np.ndarray) -> None:
        """Rows ``start:stop`` with the columns ``cols`` taken from rows ``rows`` instead, into ``out``."""
        out[:] = self.base[start:stop]
        if self.kernel is not None:
            out += (self.X[np.ix_(rows, cols)] - self.X[start:stop, cols]) @ self.kernel[cols]
        elif len(cols) == 1:
            out[:, cols[0]] = self.X[rows, cols[0]]
        else:
            out[:, cols] = self.X[np.ix_(rows, cols)]


def _mean_permuted_losses(
    copies: _Copies,
    y: np.ndarray,
    metrics: tuple[Metric, ...],
    columns: list[np.ndarray],
    seeds: list[np.random.SeedSequence],
    n_repeats: int,
    rows_per_call: int,
    unit_done: Callable[[int, int], None],
) -> np.ndarray:
    """Mean per-row loss of every permuted copy, shape ``(n_metrics, n_units, n_repeats)``.

    Pieces (unit, repeat, rows) are packed into blocks of at most ``rows_per_call`` rows; each
    block is one call of the model. A repeat whose rows span several blocks keeps its per-row
    losses until its last piece is scored and is then summed as a whole, exactly as when it fits in
    one block: block boundaries never change the numbers, not even in the last bit.
    """
    n_rows = len(copies.X)
    capacity = min(rows_per_call, len(columns) * n_repeats * n_rows)
    block = np.empty((capacity, copies.width), dtype=np.float32)
    targets = np.empty(capacity, dtype=y.dtype)
    sums = np.zeros((len(metrics), len(columns), n_repeats))
    split = np.empty((len(metrics), n_repeats, n_rows)) if capacity < n_rows else None  # one unit's per-row losses
    pending: list[tuple[int, int, int, int]] = []  # (unit, repeat, offset in block, first row)
    packed: list[int] = []  # units whose every piece is in the block or already scored
    finished = 0

    def flush(fill: int) -> None:
        nonlocal finished
        pred = copies.forward(block[:fill])
        offsets = np.array([p[2] for p in pending], dtype=np.intp)
        index = (np.array([p[0] for p in pending]), np.array([p[1] for p in pending]))
        for k, metric in enumerate(metrics):
            per_row = metric.per_row(targets[:fill], pred)
            if split is None:
                np.add.at(sums[k], index, np.add.reduceat(per_row, offsets))
                continue
            for (u, r, offset, start), length in zip(pending, np.diff(offsets, append=fill)):
                split[k, r, start : start + length] = per_row[offset : offset + length]
                if start + length == n_rows:
                    sums[k, u, r] = np.add.reduceat(split[k, r], [0])[0]
        pending.clear()
        for u in packed:
            finished += 1
            unit_done(u, finished)
        packed.clear()

    filled = 0
    piece = min(n_rows, capacity)
    for u, cols in enumerate(columns):
        perms = _permutations(seeds[u], n_rows, n_repeats)
        for start in range(0, n_rows, piece):
            stop = min(start + piece, n_rows)
            length = stop - start
            for r in range(n_repeats):
                if filled + length > capacity:
                    flush(filled)
                    filled = 0
                copies.write(block[filled : filled + length], start, stop, perms[r, start:stop], cols)
                targets[filled : filled + length] = y[start:stop]
                pending.append((u, r, filled, start))
                filled += length
        del perms
        packed.append(u)
    flush(filled)
    return sums / n_rows


def permutation_results(
    scores: PermutationScores,
    units: dict[str, list[int]],
    features: list[str],
    clusters: list[Cluster],
    *,
    n_repeats: int,
    seed: int,
    n_rows: int,
    cluster_threshold: float,
    references: dict[str, float | None] | None = None,
) -> list[ImportanceResult]:
    """One result per metric: per-feature importances, with groups and clusters in its :class:`PermutationDetails`,
    each material against ``references[metric]`` (a constant prediction's test loss)."""
    n = len(features)
    results = []
    for metric in scores.metrics:
        samples = scores.by_metric[metric]
        groups, cluster_records = unit_records(samples, units, features, clusters)
        primary = metric == scores.metrics[0]
        results.append(
            ImportanceResult.from_samples(
                "permutation" if primary else f"permutation_{metric}", "behavioural", features, samples[:n],
                metric=metric, notes=NOTES if primary else (ACCURACY_NOTE, *NOTES),
                details=PermutationDetails(n_repeats=n_repeats, seed=seed, n_rows=n_rows,
                                           cluster_threshold=cluster_threshold, baseline=scores.baselines[metric],
                                           groups=groups, clusters=cluster_records),
                reference=(references or {}).get(metric),
            )
        )
    return results


def audit_permutation(
    version: ModelVersion,
    *,
    n_repeats: int = REPEATS,
    max_repeats: int = MAX_REPEATS,
    seed: int = 0,
    cluster_threshold: float = DEFAULT_CLUSTER_THRESHOLD,
    progress: Callable[[str, int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[ImportanceResult]:
    """Permutation importance of a model version on its test split: by its metric, and by accuracy for classifiers.

    Adaptive: while the top-k set (k as the verdict uses it) is not verified at 95%, the repeats
    double, up to ``max_repeats``. The first repeats of a longer run are those of the shorter one.
    """
    subject = load_subject(version)
    test, metric = subject.test, subject.metric
    extra = (METRICS["accuracy"],) if version.task != "regression" and metric.name != "accuracy" else ()
    patches = subject.patches()
    if patches:  # an image: each patch permuted across images, all its pixels and channels together
        features, clusters, units = list(patches), [], patches
    else:
        features = list(subject.features)
        clusters = subject.clusters(cluster_threshold, seed=seed)
        units = subject.units(cluster_threshold, seed=seed)
    forward = subject.forward()
    y_train = subject.train.y if subject.train is not None else None
    references = {m.name: null_loss(m, test.y, y_train, version.task) for m in (metric, *extra)}
    k = top_k_for(len(features))
    repeats, history = n_repeats, []
    while True:
        scores = permutation_importance(
            forward, test.X, test.y, metric=metric, extra_metrics=extra,
            n_repeats=repeats, random_state=seed, units=units, progress=progress,
        )
        results = permutation_results(scores, units, features, clusters, n_repeats=repeats, seed=seed,
                                      n_rows=test.n_rows, cluster_threshold=cluster_threshold, references=references)
        verified = ranking_evidence(results[0]).top_k_verified(k)
        history.append(repeats)
        if verified or repeats >= max_repeats:
            break
        repeats = min(2 * repeats, max_repeats)
        if log is not None:
            log(f"permutation: top {k} not verified at 95% after {history[-1]} repeats; running {repeats}")
    note = (f"Top {k} verified at 95% after {repeats} repeats." if verified else
            f"The top {k} were not verified at 95% within {repeats} repeats (the most allowed): "
            "some of the leading features are too close to order.")
    if len(history) > 1:
        note += f" Repeats were doubled while they were not: {' → '.join(map(str, history))}."
    notes = (note,) + tuple(filter(None, [None if patches else subject.clustering_note(cluster_threshold, seed=seed)]))
    adaptive = AdaptiveRepeats(repeats_tried=history, top_k=k, top_k_verified=bool(verified))
    constant = constant_prediction(test.y if y_train is None else y_train, test.y, version.task)
    fit = model_fit(metric, test.y, forward(test.X), constant)
    return [dataclasses.replace(r, notes=(*r.notes, *notes),
                                details=dataclasses.replace(r.details, adaptive=adaptive, fit=fit if i == 0 else None))
            for i, r in enumerate(results)]


class Options(MethodOptions):
    """Permutation importance's own options."""

    repeats: int = Field(default=REPEATS, ge=1, description=f"permutation repeats to start with, doubled up to "
                                                            f"{MAX_REPEATS} while the top features are not verified")


def compute(subject, options: Options, context: Context) -> list[ImportanceResult]:
    """Permutation importance of every feature, manifest group and correlated cluster on the test split."""
    return audit_permutation(subject.version, n_repeats=options.repeats, seed=context.seed,
                             cluster_threshold=context.run.cluster_threshold, progress=context.progress,
                             log=context.logger.info)


METHOD = Method(
    name="permutation", title="Permutation importance", kind="behavioural",
    units=frozenset({"column", "group", "cluster", "patch"}),
    results=(ResultSpec("permutation", "Permutation importance"),
             ResultSpec("permutation_accuracy", "Permutation importance (accuracy)", judged=False)),
    options=Options, compute=compute, shared=("seed", "cluster_threshold"), stored=(PermutationDetails, AdaptiveRepeats, GroupRecord, ClusterRecord, ModelFit),
)
