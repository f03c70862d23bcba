"""SHAP: global attributions with bootstrap intervals, and local explanations for the rows that matter most.

Global importance is mean |SHAP value| per feature over a seeded sample of test rows (summed over
classes for multiclass models), with a percentile-bootstrap 95% interval over rows. Local
explanations cover the highest-loss test rows and a few seeded random rows.

The explainer is :func:`sampling_shap`, a permutation-sampling Shapley estimator over the raw
feature matrix that runs the model through :class:`tasks.subject.modeling.Forward` on large batches. It
estimates the same interventional Shapley values as ``shap.KernelExplainer`` with the same
background, is model-agnostic (numbers, integer codes feeding an Embedding, several named inputs
alike), adds up exactly to the model's output, is seeded and thread-safe, and is far faster (see
``benchmarks/bench_shap.py``). Its feature orders come in antithetic pairs; the spread of the pair
means gives each attribution a Monte Carlo standard error, and :func:`global_mc_se` that of each
feature's global importance, stated in the report beside the bootstrap interval over rows.

- ``shap.GradientExplainer`` is not used: measured, its expected-gradient attributions missed the
  model's output by 18-28% of the output's std on every probe (linear models and ReLU MLPs alike),
  and probing it cost time on every run.
- ``shap.DeepExplainer`` is never used: while it runs it replaces entries of TensorFlow's global
  gradient registry, which would silently corrupt the gradients of retrain-ablation training
  running concurrently in the same process.

The background is a seeded sample of the training split, else of the test split.

Memory and work. A chain of ``n_features + 1`` model evaluations is built per explained row and
background pair, so the evaluations of one row grow with the features and their inputs with the
square of them. The chains' inputs are built in blocks of at most the memory budget
(:func:`tasks.subject.modeling.memory_budget`; at most 262,144 evaluations, the pre-budget size, so narrow
models keep their numbers), one explained row's chains in several blocks when they do not fit in
one. The work is capped at :data:`SHAP_WORK_BUDGET` input values (model evaluations × the values
each reads): above it :func:`shap_plan` explains fewer rows, then uses fewer background rows, never
below :data:`MIN_SHAP_ROWS` and :data:`MIN_BACKGROUND`, and the result says what was reduced and
why. A wide model whose input feeds one Dense layer alone is evaluated after that layer
(:attr:`tasks.subject.modeling.Forward.first_layer`): each switch of a chain adds one kernel row to the
layer's pre-activations, so an evaluation reads the layer's width instead of every feature.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import Field

from tasks.core import charts
from tasks.core.metrics import METRICS, Metric
from tasks.core.options import MethodOptions
from tasks.core.result import Details, ImportanceResult
from tasks.methods.base import Context, Method, ResultSpec, Section
from tasks.registry.versions import ModelVersion
from tasks.subject.loaded import load_subject
from tasks.subject.modeling import Forward, first_layer_view, memory_budget, rows_for

NOTES = (
    "Mean |SHAP value| over explained test rows: how far, on average, each feature moves a single prediction.",
    "SHAP attributes predictions, not loss: a feature can move predictions a lot without improving them.",
)
MULTICLASS_NOTE = (
    "Multiclass: SHAP values are computed per class (class probabilities); a feature's global importance "
    "is the mean over rows of the sum over classes of |SHAP value|."
)
EXPLAINER = "Shapley sampling (ours)"
N_GROUPS = 10  # groups of background pairs resampled by the bootstrap
REASON = (
    "it is model-agnostic, so it works for any input (numbers, integer codes feeding an Embedding, several "
    "named inputs), and its attributions add up exactly to the model's output; gradient explainers "
    "(shap.GradientExplainer) missed additivity by 18-28% of the output's std on every probe"
)
SHAP_ROWS = 1000  # test rows explained for the global importance (--shap-rows)
SHAP_WORK_BUDGET = 10_000_000_000
"""The most input values (model evaluations × the values each reads) one SHAP run may feed the model.

Both ways of evaluating a chain (whole rows; a wide model after its first Dense layer) cost about
the same per input value: measured 1.3–1.6·10⁸ values per second on 2 shared cores for an F-64-1
MLP, so the cap is about a minute. It counts values rather than evaluations because an evaluation
of whole rows costs in proportion to the features. It leaves the default run (1,000 rows plus 8
local ones, 100 background rows) unchanged up to 222 features; wider models explain fewer rows,
then use fewer background rows."""
MIN_SHAP_ROWS = 50  # the bootstrap over rows still gives a usable interval
MIN_BACKGROUND = 20  # two pairs for each of the N_GROUPS groups the bootstrap resamples, and a Monte Carlo error
MAX_EVALUATIONS_PER_CALL = 262_144  # the most evaluations in one block, whatever the budget (the pre-budget value)
_PLAIN_BYTES = 5  # per input value of a block of chains: float32 input and its bool switch mask
_FIRST_LAYER_BYTES = 4  # per pre-activation: the float32 block, in which the running sum is built in place
_BEESWARM_ROWS = 400
_BEESWARM_FEATURES = 20
DEPENDENCE_BINS = 10  # quantile bins of a feature's own value (or its levels, when it has at most this many)


@dataclass(frozen=True)
class ShapPlan:
    """How many test rows and background rows one SHAP run explains, and why fewer than asked.

    ``width`` is how many values one model evaluation reads: the features, or the width of the
    first Dense layer when the model is evaluated after it.
    """

    n_features: int
    width: int
    rows_asked: int
    rows: int
    background_asked: int
    background: int
    n_extra: int  # rows explained for the local explanations, beside the sampled ones
    max_work: int

    @property
    def evaluations_per_row(self) -> int:
        """Model evaluations per explained row: one chain per order and per reverse order of each pair."""
        return 2 * self.background * (self.n_features + 1)

    @property
    def work(self) -> int:
        return (self.rows + self.n_extra) * self.evaluations_per_row * self.width

    @property
    def reduced(self) -> bool:
        return self.rows < self.rows_asked or self.background < self.background_asked

    def note(self) -> str | None:
        """One sentence on what was reduced and why; ``None`` when nothing was."""
        if not self.reduced:
            return None
        reads = (f"each reading all {self.width:,} features" if self.width == self.n_features else
                 f"each reading the {self.width:,} pre-activations of the first Dense layer")
        note = (f"Work capped: explained {self.rows:,} of {self.rows_asked:,} rows with {self.background:,} of "
                f"{self.background_asked:,} background rows (one pair of orders each): {self.n_features:,} features "
                f"make each row cost 2·{self.background:,}·{self.n_features + 1:,} = {self.evaluations_per_row:,} "
                f"model evaluations ({reads}), and SHAP's work is capped at {self.max_work:,} input values. "
                "Fewer rows widen the bootstrap interval; fewer background rows raise the Monte Carlo error.")
        if self.work > self.max_work:
            note += (f" Even at the minimums ({MIN_SHAP_ROWS} rows, {MIN_BACKGROUND} background rows) the run "
                     f"took {self.work:,} input values.")
        return note

    def done(self) -> Work:
        """What the run did under this plan, as ``details.work`` records it."""
        return Work(rows_asked=self.rows_asked, rows=self.rows, background_asked=self.background_asked,
                    background=self.background, extra_rows=self.n_extra,
                    evaluations_per_row=self.evaluations_per_row, values_per_evaluation=self.width,
                    work=self.work, max_work=self.max_work, reduced=self.reduced, reason=self.note())


@dataclass(frozen=True)
class Work:
    """The rows and background rows a SHAP run explained against those asked for, its work in input values
    against the cap, and why it was reduced (None when it was not)."""

    rows_asked: int
    rows: int
    background_asked: int
    background: int
    extra_rows: int
    evaluations_per_row: int
    values_per_evaluation: int
    work: int
    max_work: int
    reduced: bool
    reason: str | None


@dataclass(frozen=True)
class LocalFeature:
    """One bar of a row's waterfall: the feature, its raw value and its SHAP value."""

    feature: str
    value: Any  # a number, or a category's raw value
    phi: float


@dataclass(frozen=True)
class LocalExplanation:
    """One explained row: why it was picked, its label, prediction and loss, the base value and the output the
    SHAP values add up to, and its features, largest |φ| first."""

    selection: str  # "highest loss" or "random"
    row: int
    label: Any
    prediction: Any  # a number, or one probability per class
    explained_class: int | None
    explained_output: float
    base_value: float
    loss: float
    features: list[LocalFeature]


@dataclass(frozen=True)
class Beeswarm:
    """What the summary chart draws: for the top features (first = top), the SHAP values and feature values of
    up to a few hundred rows, and for which class when the model has several."""

    features: list[str]
    phi: list[list[float]]
    value: list[list[float]]
    per_class: str | None
    # per feature, the labels of a categorical feature's codes (value holds the codes), or None for a numeric one
    levels: list[list[str] | None] = dataclasses.field(default_factory=list)


def shap_plan(n_features: int, width: int, *, rows: int, background: int, n_extra: int = 0,
              max_work: int = SHAP_WORK_BUDGET) -> ShapPlan:
    """How many rows and background rows fit in ``max_work`` input values.

    Rows go first (down to :data:`MIN_SHAP_ROWS`), then background rows (down to
    :data:`MIN_BACKGROUND`): fewer rows only widen the bootstrap interval over rows, while fewer
    background pairs make each |φ| noisier, which also biases mean |φ| upwards.
    """
    per_row_pair = 2 * (n_features + 1) * width
    n_rows, n_background = rows, background
    if (n_rows + n_extra) * n_background * per_row_pair > max_work:
        n_rows = min(rows, max(MIN_SHAP_ROWS, max_work // (n_background * per_row_pair) - n_extra))
    if (n_rows + n_extra) * n_background * per_row_pair > max_work:
        n_background = min(background, max(MIN_BACKGROUND, max_work // ((n_rows + n_extra) * per_row_pair)))
    return ShapPlan(n_features, width, rows, n_rows, background, n_background, n_extra, max_work)


@dataclass(frozen=True, eq=False)
class ShapValues:
    """Attributions ``values`` (rows, features[, classes]) for ``X``, and how they were obtained.

    ``mc_se`` (same shape as ``values``) is the Monte Carlo standard error of each attribution (see
    :func:`sampling_shap`); ``base_value`` has shape ``(classes,)`` (``(1,)`` for one output);
    ``outputs`` are the model's predictions for the explained rows in the space that was explained;
    ``max_deviation`` is the largest ``|base + sum(phi) - output|`` over rows and classes.
    """

    values: np.ndarray
    mc_se: np.ndarray
    groups: np.ndarray  # (rows, n_groups, features[, classes]): the values from each group of background pairs
    base_value: np.ndarray
    outputs: np.ndarray
    explainer: str
    reason: str
    max_deviation: float
    output_std: float
    n_background: int
    plan: ShapPlan | None = None  # how many rows and background rows were explained, and why (shap_importance)

    @property
    def relative_deviation(self) -> float:
        if self.output_std > 0:
            return self.max_deviation / self.output_std
        return 0.0 if self.max_deviation == 0 else float("inf")


def explain(
    model,
    features: tuple[str, ...],
    X: np.ndarray,
    background: np.ndarray,
    *,
    random_state: int | None = None,
    forward: Forward | None = None,
) -> ShapValues:
    """SHAP values for ``X`` by :func:`sampling_shap`, with their Monte Carlo error and an additivity check."""
    forward = forward or Forward(model, features)  # pass one in to reuse its compiled function
    X = np.asarray(X, dtype=np.float32)
    background = np.asarray(background, dtype=np.float32)
    values, base, mc_se, groups = sampling_shap(forward, X, background, random_state=random_state)
    return _checked(values, mc_se, groups, base, forward(X), len(background))


def sampling_shap(
    forward,
    X: np.ndarray,
    background: np.ndarray,
    *,
    random_state: int | None = None,
    max_batch_rows: int | None = None,
    n_groups: int = N_GROUPS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Interventional Shapley values by antithetic permutation sampling, one permutation pair per background row.

    For each explained row ``x`` and background row ``z``, a random feature order and its reverse
    switch features from ``z`` to ``x`` one at a time; each switch's change in ``forward`` is that
    feature's contribution. Averaged over background rows this estimates the Shapley values of
    ``v(S) = E_z f(x_S, z_rest)``, and each chain sums to ``f(x) - f(z)`` exactly, so
    ``base + sum(phi) == f(x)`` with ``base = mean f(background)``.

    The Monte Carlo standard error of each value is the standard deviation (ddof=1) of its
    ``n_pairs = len(background)`` pair means (a chain and its reverse), over ``sqrt(n_pairs)``. The
    pairs differ in background row as well as in order, so for the values given these background
    rows it is conservative: the spread between background rows counts too (a linear model's values
    are exact, yet its error is ``|w_j| std(z_j) / sqrt(n_pairs)``). For the values relative to the
    distribution the background rows were drawn from, it is the plain standard error. With a single
    background row it cannot be estimated and is NaN.

    The pairs are also dealt into ``n_groups`` groups (pair ``p`` into group ``p % n_groups``), and
    each group's mean is returned: resampling groups resamples the background rows and the orders,
    which is how :func:`shap_importance` puts that error into its bootstrap interval.

    The model is evaluated in blocks of at most ``max_batch_rows`` evaluations, by default
    :func:`block_evaluations` of the memory budget; the blocks never change the numbers.

    Returns ``(values, base, mc_se, groups)``; ``values`` and ``mc_se`` have shape
    (rows, features[, classes]), ``groups`` (rows, groups, features[, classes]).
    """
    rng = np.random.default_rng(random_state)
    X = np.asarray(X, dtype=np.float32)
    Z = np.concatenate([background, background]).astype(np.float32)  # one chain per order and per reverse order
    n_rows, n_features = X.shape
    n_chains = len(Z)
    n_pairs = n_chains // 2
    chains = _Chains.of(forward, Z)
    capacity = max_batch_rows or block_evaluations(chains.width, memory_budget(), first_layer=chains.kernel is not None)
    per_call = max(1, capacity // (n_chains * (n_features + 1)))
    steps = np.arange(n_features + 1)[None, None, :, None]
    chunks, errors, grouped = [], [], []
    n_groups = max(1, min(n_groups, n_pairs))
    member = np.arange(n_pairs) % n_groups
    for start in range(0, n_rows, per_call):
        x = X[start : start + per_call]
        orders = rng.permuted(np.tile(np.arange(n_features), (len(x), n_pairs, 1)), axis=2)
        orders = np.concatenate([orders, orders[..., ::-1]], axis=1)
        position = np.argsort(orders, axis=2)  # where each feature is switched in each chain
        if chains.kernel is None and len(x) * n_chains * (n_features + 1) <= capacity:  # all in one block
            switched = position[:, :, None, :] < steps  # (rows, chains, n_features + 1, n_features)
            inputs = np.where(switched, x[:, None, None, :], Z[None, :, None, :])
            out = forward(inputs.reshape(-1, n_features))
            out = out.reshape(len(x), n_chains, n_features + 1, -1)
            del switched, inputs
        else:
            out = chains.outputs(x, orders, position, capacity)
        steps_gain = np.diff(out, axis=2)  # gain of the i-th switch in each chain
        gains = np.take_along_axis(steps_gain, position[..., None], axis=2).astype(np.float64)
        pairs = (gains[:, :n_pairs] + gains[:, n_pairs:]) / 2  # chain c and its reverse c + n_pairs
        chunks.append(pairs.mean(axis=1))
        grouped.append(np.stack([pairs[:, member == g].mean(axis=1) for g in range(n_groups)], axis=1))
        errors.append(pairs.std(axis=1, ddof=1) / np.sqrt(n_pairs) if n_pairs > 1 else np.full_like(chunks[-1], np.nan))
    values = np.concatenate(chunks) if chunks else np.zeros((0, n_features, 1))
    mc_se = np.concatenate(errors) if errors else np.zeros((0, n_features, 1))
    groups = np.concatenate(grouped) if grouped else np.zeros((0, n_groups, n_features, 1))
    base = np.atleast_1d(np.asarray(forward(background)).mean(axis=0))
    if values.shape[-1] == 1:
        return values[..., 0], base, mc_se[..., 0], groups[..., 0]
    return values, base, mc_se, groups


def block_evaluations(width: int, budget_bytes: int, *, first_layer: bool = False) -> int:
    """Model evaluations in one block of chains ``width`` values wide: what the budget allows, at most 262,144."""
    return rows_for(width, budget_bytes, cap=MAX_EVALUATIONS_PER_CALL,
                    bytes_per_value=_FIRST_LAYER_BYTES if first_layer else _PLAIN_BYTES)


@dataclass(frozen=True, eq=False)
class _Chains:
    """Shapley chains as the model reads them: whole feature rows, or a wide model's first-layer pre-activations.

    A chain starts at its background row and switches features to the explained row's values one
    at a time, in its order; step ``s`` has the first ``s`` features of the order switched.
    """

    Z: np.ndarray  # the background row of each chain
    forward: Callable[[np.ndarray], np.ndarray]  # the model on a block of steps
    start: np.ndarray  # each chain's first step as a block row holds it: Z, or Z's pre-activations
    kernel: np.ndarray | None  # the first layer's kernel when steps are pre-activations

    @classmethod
    def of(cls, forward: Callable[[np.ndarray], np.ndarray], Z: np.ndarray) -> _Chains:
        return cls(Z, *first_layer_view(forward, Z))

    @property
    def width(self) -> int:
        return self.start.shape[1]

    def outputs(self, x: np.ndarray, orders: np.ndarray, position: np.ndarray, capacity: int) -> np.ndarray:
        """The model at every step of every chain of the rows ``x``, ``(rows, chains, n_features + 1, outputs)``,
        evaluated in blocks of at most ``capacity`` steps (one chain may span several blocks)."""
        n_x, n_chains, n_features = orders.shape
        total = n_x * n_chains * (n_features + 1)
        block = np.empty((min(capacity, total), self.width), dtype=np.float32)
        flat: np.ndarray | None = None
        done = filled = 0
        for r in range(n_x):
            for c in range(n_chains):
                step, carry = 0, self.start[c]
                while step <= n_features:
                    n = min(n_features + 1 - step, len(block) - filled)
                    carry = self._write(block[filled : filled + n], x[r], orders[r, c], position[r, c], c, step, carry)
                    filled += n
                    step += n
                    if filled == len(block) or done + filled == total:
                        pred = np.asarray(self.forward(block[:filled]))
                        if flat is None:
                            flat = np.empty((total, *pred.shape[1:]))
                        flat[done : done + filled] = pred
                        done, filled = done + filled, 0
        return flat.reshape(n_x, n_chains, n_features + 1, -1)

    def _write(self, out: np.ndarray, x: np.ndarray, order: np.ndarray, position: np.ndarray, c: int, step: int,
               carry: np.ndarray) -> np.ndarray:
        """Steps ``step … step + len(out) - 1`` of chain ``c`` into ``out``; returns the next step's pre-activations.

        After the first layer the steps are a running sum from the chain's start, each switch adding
        its kernel row times the change of its feature, accumulated in order (``np.cumsum`` adds
        sequentially), so block boundaries never change them.
        """
        stop = step + len(out)
        if self.kernel is None:
            out[:] = self.Z[c]
            np.copyto(out, x, where=position[None, :] < np.arange(step, stop)[:, None])
            return carry
        switch = order[step : min(stop, len(order))]  # the features switched on the way to the next steps
        change = x[switch] - self.Z[c, switch]
        out[0] = carry
        inner = len(out) - 1  # switches between the steps written here
        np.take(self.kernel, switch[:inner], axis=0, out=out[1:], mode="clip")  # "clip": unbuffered
        out[1:] *= change[:inner, None]
        np.cumsum(out, axis=0, out=out)
        if len(switch) > inner:  # the chain goes on in the next block
            return out[-1] + change[inner] * self.kernel[switch[inner]]
        return out[-1]


def shap_importance(
    model,
    features: tuple[str, ...],
    X: np.ndarray,
    background_pool: np.ndarray,
    *,
    n_rows: int = SHAP_ROWS,
    n_background: int = 100,
    n_bootstrap: int = 200,
    random_state: int | None = None,
    extra_rows: np.ndarray | None = None,
    forward: Forward | None = None,
    max_work: int = SHAP_WORK_BUDGET,
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], ShapValues, np.ndarray]:
    """Bootstrap draws of mean |SHAP| per feature ``(n_features, n_bootstrap)``, their 95% interval, the values, the rows.

    Each draw resamples the explained rows *and* the groups of background pairs (see
    :func:`sampling_shap`), so the interval covers the rows that happened to be explained, the
    background rows that happened to be drawn, and the random orders: a rerun with another seed
    lands inside it.

    ``extra_rows`` (indices into ``X``) are explained as well, after the sampled rows, but are
    left out of the global importance: the local explanations use them.

    A wide model explains fewer rows, then uses fewer background rows, so that the work stays
    within ``max_work`` input values (:func:`shap_plan`); ``values.plan`` says what was reduced.
    """
    forward = forward or Forward(model, features)
    extra = np.asarray([] if extra_rows is None else extra_rows, dtype=int)
    plan = shap_plan(len(features), forward.evaluation_width, rows=min(n_rows, len(X)),
                     background=min(n_background, len(background_pool)), n_extra=len(extra), max_work=max_work)
    rng = np.random.default_rng(random_state)
    rows = np.sort(rng.choice(len(X), size=plan.rows, replace=False))
    background = background_pool[rng.choice(len(background_pool), size=plan.background, replace=False)]
    explain_seed = int(rng.integers(0, 2**31 - 1))
    bootstrap = rng.integers(0, len(rows), size=(n_bootstrap, len(rows)))
    group_seed = int(rng.integers(0, 2**31 - 1))
    raw = explain(model, features, X[np.concatenate([rows, extra])], background,
                  random_state=explain_seed, forward=forward)
    raw = dataclasses.replace(raw, plan=plan)
    groups = raw.groups[: len(rows)]
    picks = np.random.default_rng(group_seed).integers(0, groups.shape[1], size=(n_bootstrap, groups.shape[1]))
    draws = np.stack([global_magnitude(groups[b][:, g].mean(axis=1)).mean(axis=0) for b, g in zip(bootstrap, picks)],
                     axis=1)
    interval = (np.percentile(draws, 2.5, axis=1), np.percentile(draws, 97.5, axis=1))
    return draws, interval, raw, np.concatenate([rows, extra])


def global_magnitude(values: np.ndarray) -> np.ndarray:
    """Per-row, per-feature |SHAP|: summed over classes for multiclass values ``(rows, features, classes)``."""
    return np.abs(values) if values.ndim == 2 else np.abs(values).sum(axis=2)


def global_mc_se(mc_se: np.ndarray) -> np.ndarray:
    """Monte Carlo standard error of each feature's mean |SHAP| over rows, from the rows' errors ``(rows, features[, classes])``.

    Rows draw their feature orders independently, so their errors add in quadrature:
    ``sqrt(sum_rows se**2) / n_rows``; |phi| varies no more than phi. For multiclass values a row's
    error of ``sum_classes |phi|`` is bounded by the sum of its classes' errors (the classes of one
    row share their chains, so their errors are correlated). This is the error of the random orders
    given the background rows, and like the rows' errors it is conservative; the background rows
    are shared by every explained row, so the error of drawing them does not add in quadrature and
    is not covered here (nor by the bootstrap over rows).
    """
    per_row = mc_se if mc_se.ndim == 2 else mc_se.sum(axis=2)
    if not len(per_row):
        return np.zeros(per_row.shape[1])
    return np.sqrt((per_row**2).sum(axis=0)) / len(per_row)


def highest_loss_rows(y: np.ndarray, predictions: np.ndarray, metric: Metric, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` rows with the largest per-row loss, worst first (ties by row order), and every row's loss.

    A higher-is-better metric (accuracy) ranks nothing within its ties, so rows are ranked by log loss instead.
    """
    loss_metric = METRICS["log_loss"] if metric.higher_is_better else metric
    loss = loss_metric.per_row(np.asarray(y), np.asarray(predictions))
    order = np.argsort(-loss, kind="stable")
    return order[:n], loss


def explained_rows(y: np.ndarray, predictions: np.ndarray, metric: Metric, rng: np.random.Generator, *,
                   n_worst: int, n_random: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The rows explained one by one — ``{"highest loss": the n_worst worst, "random": n_random drawn from
    rng}`` — and every row's loss. SHAP and LIME pick them alike, so the report sets them side by side."""
    worst, loss = highest_loss_rows(y, predictions, metric, n_worst)
    random_rows = np.sort(rng.choice(len(y), size=min(n_random, len(y)), replace=False))
    return {"highest loss": worst, "random": random_rows}, loss


def local_explanations(
    features: tuple[str, ...],
    X: np.ndarray,
    y: np.ndarray,
    values: np.ndarray,
    base_value: np.ndarray,
    outputs: np.ndarray,
    loss: np.ndarray,
    rows: dict[str, np.ndarray],
    columns: tuple | None = None,
) -> list[LocalExplanation]:
    """One waterfall record per row: feature values and SHAP values (largest |φ| first), base, prediction, label, loss.

    ``columns`` (the adapter's :class:`~tasks.subject.adapter.Column` per feature) decode coded values back to the raw
    ones a reader knows (a category's string rather than its code).

    ``rows`` maps a selection name ("highest loss", "random") to row indices into ``X``; ``values``
    and ``outputs`` are aligned with ``X``. For multiclass models the explained class is the true
    label (the class whose probability the loss depends on).
    """
    records = []
    for selection, indices in rows.items():
        for i in indices:
            i = int(i)
            label = y[i]
            cls = int(label) if values.ndim == 3 else None
            phi = values[i] if cls is None else values[i, :, cls]
            base = float(base_value[0] if cls is None else base_value[cls])
            explained = float(outputs[i] if cls is None else outputs[i, cls])
            order = np.argsort(-np.abs(phi), kind="stable")
            records.append(LocalExplanation(
                selection=selection,
                row=i,
                label=label.item() if hasattr(label, "item") else label,
                prediction=np.asarray(outputs[i]).tolist(),
                explained_class=cls,
                explained_output=explained,
                base_value=base,
                loss=float(loss[i]),
                features=[LocalFeature(features[j], raw_value(X[i, j], columns[j] if columns else None),
                                       float(phi[j])) for j in order],
            ))
    return records


def unexplained_shares(values: np.ndarray, X: np.ndarray, *, bins: int = DEPENDENCE_BINS) -> np.ndarray:
    """Per feature, the share of the variance of its SHAP values that its own value leaves unexplained: the
    within-bin sum of squares over the total, binning the rows on the feature's value (quantile bins, or its levels
    when it has at most ``bins``). Additive in that feature (φ_j a function of x_j alone): near 0, up to the
    binning's coarseness and the sampler's noise; acting through a product with another feature: near 1.
    Multiclass values (rows, features, classes) pool the classes' sums of squares. NaN where φ_j is constant."""
    phi = values if values.ndim == 3 else values[..., None]
    shares = np.full(phi.shape[1], np.nan)
    for j in range(phi.shape[1]):
        groups = _bins(X[:, j], bins)
        total = float(((phi[:, j, :] - phi[:, j, :].mean(axis=0)) ** 2).sum())
        if total <= 0.0 or not np.isfinite(total):
            continue
        counts = np.bincount(groups)
        sums = np.stack([np.bincount(groups, weights=phi[:, j, c]) for c in range(phi.shape[2])], axis=1)
        kept = counts > 0
        explained = float(((sums[kept] ** 2) / counts[kept, None]).sum()
                          - (phi[:, j, :].sum(axis=0) ** 2 / len(groups)).sum())
        shares[j] = min(1.0, max(0.0, 1.0 - explained / total))
    return shares


def _bins(x: np.ndarray, bins: int) -> np.ndarray:
    """Each row's bin of ``x``: its level when x has at most ``bins`` values, else its quantile bin."""
    levels, codes = np.unique(x, return_inverse=True)
    if len(levels) <= bins:
        return codes.ravel()
    edges = np.unique(np.quantile(x, np.linspace(0, 1, bins + 1)[1:-1]))
    return np.searchsorted(edges, x, side="right")


def beeswarm_data(features: tuple[str, ...], values: np.ndarray, X: np.ndarray, outputs: np.ndarray,
                  *, order: np.ndarray, columns: tuple | None = None, limit: int = _BEESWARM_ROWS,
                  max_features: int = _BEESWARM_FEATURES) -> Beeswarm:
    """What the summary chart needs: for the ``max_features`` most important features (first = top), the SHAP
    values and feature values of up to ``limit`` rows, and a categorical feature's level labels (``columns``: the
    adapter's :class:`~tasks.subject.adapter.Column` per feature), so that its levels get colours of their own
    rather than a low-to-high scale.

    Multiclass values are shown for each row's predicted class.
    """
    values, X, outputs = values[:limit], X[:limit], outputs[:limit]
    order = order[:max_features]
    if values.ndim == 3:
        predicted = outputs.argmax(axis=1)
        values = np.take_along_axis(values, predicted[:, None, None], axis=2)[..., 0]
    return Beeswarm(features=[features[j] for j in order], phi=[_rounded(values[:, j]) for j in order],
                    value=[_rounded(X[:, j]) for j in order],
                    per_class="predicted class" if outputs.ndim == 2 else None,
                    levels=[level_labels(X[:, j], columns[j] if columns else None) for j in order])


def level_labels(codes: np.ndarray, column) -> list[str] | None:
    """A categorical column's label for each code from 0 to the largest (its vocabulary, or the code itself);
    None for a numeric column."""
    if column is None or not column.categorical:
        return None
    if column.vocabulary is not None:
        return [str(v) for v in column.vocabulary]
    top = int(np.nanmax(codes)) if len(codes) else -1
    return [str(code) for code in range(top + 1)]


def shap_audit(version: ModelVersion, *, seed: int = 0, n_rows: int = SHAP_ROWS, n_worst: int = 5,
               n_random: int = 3, max_work: int = SHAP_WORK_BUDGET) -> ImportanceResult:
    """Global SHAP importance with a bootstrap interval, plus local explanations of the worst and some random rows.

    A wide model explains fewer rows (then background rows) to stay within ``max_work`` input values; the
    result's notes and ``details.work`` say what was reduced and why.
    """
    subject = load_subject(version)
    model, test, metric, features = subject.model, subject.test, subject.metric, subject.features
    pool_split = subject.train if subject.train is not None else test
    forward = subject.forward()
    rng = np.random.default_rng(seed)
    selections, loss = explained_rows(test.y, forward(test.X), metric, rng, n_worst=n_worst, n_random=n_random)
    worst, random_rows = selections["highest loss"], selections["random"]
    draws, interval, raw, rows = shap_importance(
        model, features, test.X, pool_split.X, n_rows=n_rows,
        random_state=int(rng.integers(0, 2**31 - 1)), extra_rows=np.concatenate([worst, random_rows]), forward=forward,
        max_work=max_work,
    )
    details, notes = shap_details(features, test, raw, rows, draws, loss, metric,
                                  n_global=len(rows) - len(worst) - len(random_rows), n_worst=len(worst),
                                  background_source="training" if subject.train is not None else "test",
                                  columns=subject.adapter.columns)
    # what mean |φ| is material against: the target's spread (not the prediction's: φ always sums to the
    # prediction's deviation, so a model that fits noise would look material against its own output)
    reference = float(np.std(test.y)) if version.task in ("regression", "binary") else None
    return ImportanceResult.from_samples("shap", "behavioural", features, draws, interval=interval,
                                         notes=(*NOTES, *notes), details=details, sampling="bootstrap",
                                         reference=reference)


@dataclass(frozen=True)
class Additivity:
    """How far base value + Σφ is from the model output at most, absolutely and as a share of the output's std,
    against the tolerance on that share."""

    max_deviation: float
    relative: float
    tolerance: float
    ok: bool


@dataclass(frozen=True)
class ShapDetails(Details):
    """One SHAP run: the explainer and why, the rows explained and the background rows (and which split they came
    from), what a capped run did (:class:`Work`, when a plan was made), the base value(s), additivity, each
    feature's Monte Carlo standard error (None where not estimated), the multiclass note, the loss the worst rows
    are picked by, and what the report draws: ``local`` (one waterfall record per explained row, see
    :func:`local_explanations`) and ``beeswarm`` (see :func:`beeswarm_data`).
    """

    explainer: str
    reason: str
    n_rows: int
    n_background: int
    background_source: str
    work: Work | None
    base_value: list[float]
    additivity: Additivity
    mc_se: list[float | None]
    multiclass_aggregation: str | None
    loss_metric: str
    local: list[LocalExplanation]
    beeswarm: Beeswarm
    # per feature, the share of its φ's variance its own value leaves unexplained (:func:`unexplained_shares`;
    # None where φ is constant): near 0 where the model is additive in the feature
    unexplained: list[float | None] = dataclasses.field(default_factory=list)


def shap_details(features, split, raw: ShapValues, rows, draws, loss, metric, *, n_global: int, n_worst: int,
                 background_source: str, tolerance: float = 0.05, columns: tuple | None = None
                 ) -> tuple[ShapDetails, list[str]]:
    """The details and report notes of one SHAP run."""
    n_background = raw.n_background
    local_at = np.arange(n_global, len(rows))
    selections = {"highest loss": local_at[:n_worst], "random": local_at[n_worst:]}
    X_explained = split.X[rows]
    local = [dataclasses.replace(record, row=int(rows[record.row]))  # the row's index in the test split
             for record in local_explanations(features, X_explained, split.y[rows], raw.values, raw.base_value,
                                              raw.outputs, loss[rows], selections, columns)]
    multiclass = raw.values.ndim == 3
    notes = [f"Explainer: {raw.explainer}, because {raw.reason}.",
             f"Background: {n_background} rows sampled from the {background_source} split; {n_global} test rows explained."]
    if raw.plan is not None and raw.plan.reduced:
        notes.append(raw.plan.note())
    if multiclass:
        notes.append(MULTICLASS_NOTE)
    additive = raw.relative_deviation <= tolerance
    notes.append(
        f"Additivity: base value + Σφ differs from the model output by at most {raw.max_deviation:.3g} "
        f"({raw.relative_deviation:.1%} of the output's std)"
        + ("." if additive else f" — above the {tolerance:.0%} tolerance: read individual explanations with care.")
    )
    mc_se = global_mc_se(raw.mc_se[:n_global])
    notes.append(_mc_note(features, mc_se))
    order = np.argsort(-draws.mean(axis=1), kind="stable")
    details = ShapDetails(
        explainer=raw.explainer,
        reason=raw.reason,
        n_rows=int(n_global),
        n_background=n_background,
        background_source=background_source,
        work=raw.plan.done() if raw.plan is not None else None,
        base_value=raw.base_value.tolist(),
        additivity=Additivity(max_deviation=raw.max_deviation, relative=raw.relative_deviation, tolerance=tolerance,
                              ok=bool(additive)),
        mc_se=[float(v) if np.isfinite(v) else None for v in mc_se],
        multiclass_aggregation=MULTICLASS_NOTE if multiclass else None,
        loss_metric="log_loss" if metric.higher_is_better else metric.name,
        local=local,
        beeswarm=beeswarm_data(features, raw.values[:n_global], X_explained[:n_global], raw.outputs[:n_global],
                               order=order, columns=columns),
        unexplained=[float(v) if np.isfinite(v) else None
                     for v in unexplained_shares(raw.values[:n_global], X_explained[:n_global])],
    )
    return details, notes


def _mc_note(features, mc_se: np.ndarray) -> str:
    """One sentence on the sampler's Monte Carlo error of the global importance."""
    if not len(mc_se) or not np.isfinite(mc_se).all():
        return ("Monte Carlo error of the sampler: not estimated (it needs at least two background rows); "
                "the bootstrap interval over rows includes it.")
    worst = int(np.argmax(mc_se))
    return (f"Monte Carlo error of the sampler: standard error of mean |φ| at most {mc_se[worst]:.2g} "
            f"(feature {features[worst]}), beside the bootstrap interval over rows (which includes it); "
            "conservative, as the spread between its chains also counts differences between background rows.")


def _checked(values: np.ndarray, mc_se: np.ndarray, groups: np.ndarray, base: np.ndarray, outputs: np.ndarray,
             n_background: int) -> ShapValues:
    total = values.sum(axis=1) + (base if values.ndim == 3 else base[0])
    deviation = float(np.abs(total - outputs).max()) if len(outputs) else 0.0
    spread = float(np.std(outputs)) if len(outputs) else 0.0
    return ShapValues(values=values, mc_se=mc_se, groups=groups, base_value=base, outputs=outputs, explainer=EXPLAINER,
                      reason=REASON, max_deviation=deviation, output_std=spread, n_background=n_background)


def raw_value(code: float, column) -> float | str | int:
    """A coded value as the split holds it: the number, or the vocabulary entry it codes."""
    if column is None or column.vocabulary is None:
        return float(code)
    value = column.vocabulary[int(code)]
    return value if isinstance(value, str) else int(value)


def _rounded(values: np.ndarray) -> list[float]:
    return [float(f"{v:.4g}") for v in np.asarray(values, dtype=float)]


LOSS_WORDS = {"log_loss": "log loss", "mse": "squared error", "mae": "absolute error"}  # a loss, as a reader says it


def section(result: ImportanceResult, max_features: int = 10) -> dict[str, Any] | None:
    """The SHAP section of the report: explainer and why, background, additivity, Monte Carlo error, the summary
    charts and one waterfall per local row."""
    if not isinstance(result.details, ShapDetails):
        return None
    d = result.details
    mc_se = {name: se for name, se in zip(result.features, d.mc_se) if se is not None}
    worst_mc = max(mc_se, key=mc_se.get) if mc_se else None
    swarm = d.beeswarm
    local = []
    for record in d.local:
        features = record.features
        chart = charts.shap_waterfall([f.feature for f in features], [f.value for f in features],
                                      [f.phi for f in features], record.base_value, record.explained_output,
                                      max_features=max_features)
        local.append({
            "selection": record.selection,
            "row": record.row,
            "label": record.label,
            "prediction": record.prediction if isinstance(record.prediction, list) else [record.prediction],
            "explained_class": record.explained_class,
            "base_value": record.base_value,
            "explained_output": record.explained_output,
            "loss": record.loss,
            "features": features[:max_features],
            "chart": charts.data_uri(chart),
        })
    return {
        "explainer": d.explainer,
        "reason": d.reason,
        "n_rows": d.n_rows,
        "n_background": d.n_background,
        "background_source": d.background_source,
        "additivity": d.additivity,
        "mc_se_max": mc_se[worst_mc] if worst_mc is not None else None,
        "mc_se_feature": worst_mc,
        "multiclass_aggregation": d.multiclass_aggregation,
        "loss_metric": d.loss_metric,
        "loss_words": LOSS_WORDS.get(d.loss_metric, d.loss_metric),
        "beeswarm_chart": charts.data_uri(charts.shap_beeswarm(swarm.features, swarm.phi, swarm.value,
                                                               swarm.levels or None)),
        "beeswarm_rows": len(swarm.phi[0]) if swarm.phi else 0,
        "beeswarm_class": swarm.per_class,
        "local": local,
    }


class Options(MethodOptions):
    """SHAP's own options."""

    shap_rows: int = Field(default=SHAP_ROWS, ge=1, description="test rows SHAP explains for its global importance")


def compute(subject, options: Options, context: Context) -> list[ImportanceResult]:
    """SHAP: global importance with intervals and local explanations."""
    result = shap_audit(subject.version, seed=context.seed, n_rows=options.shap_rows)
    context.logger.info("shap: %s explained %d rows (%s)", result.details.explainer, result.details.n_rows,
                        result.details.reason)
    return [result]


METHOD = Method(
    name="shap", title="SHAP", kind="behavioural", units=frozenset({"column"}),
    results=(ResultSpec("shap", "SHAP (mean |φ|)"),),
    options=Options, compute=compute, stored=(ShapDetails, Additivity, Work, LocalExplanation, LocalFeature, Beeswarm), section=Section("shap.html.j2", section),
)
