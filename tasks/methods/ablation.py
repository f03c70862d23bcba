"""Retrain-ablation (drop-column) importance: retrain without a feature and measure the loss.

For each feature and each seed, a fresh copy of the architecture (same loss and optimizer as
compiled, the manifest's training recipe) is trained with that feature held at a constant (its
training mean, or its mode for a categorical) in both splits. The baseline is retrained with the
same seeds, so importance per seed is a paired difference: ablated metric minus baseline metric.
Seeds reach every initialiser, dropout layer and the row order, never the global random state.

Seeds are added one at a time (up to ``max_seeds``) while any of the top units has a 95%
t-interval that straddles zero (:func:`needs_more_seeds`). Each seed's baseline is also a
retrained copy of the registered model: its first-layer |W| give a second, weight-based result,
``weights_retrained``, that shows how stable the weight ranking is across trainings.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
from prefect import allow_failure, get_run_logger, task
from pydantic import Field, field_validator
from scipy import stats

from tasks.core.errors import FeatureAuditError
from tasks.core.metrics import METRICS, Metric, constant_prediction
from tasks.core.names import listed
from tasks.core.options import DEFAULT_CLUSTER_THRESHOLD, MethodOptions
from tasks.core.ranking import RELEVANCE
from tasks.core.result import Details, ImportanceResult
from tasks.methods.base import Context, Method, ResultSpec
from tasks.methods.weights import weight_magnitudes
from tasks.registry.versions import ModelVersion, Split
from tasks.subject.adapter import Adapter, head_loss, head_model, numeric_adapter
from tasks.subject.clusters import ClusterRecord, GroupRecord, unit_records
from tasks.subject.loaded import load_subject, subject_key
from tasks.subject.modeling import as_predictions, output_squash

NOTES = (
    "Retrains the model from scratch with the feature held constant; importance is the paired loss increase per seed.",
    "Trustworthy but costly, and noisy across seeds: read the interval, not only the mean.",
    "A feature whose information another feature also carries (a correlated partner) can look unimportant here; "
    "manifest groups and clusters of correlated features are therefore also retrained without, jointly.",
)
RETRAINED_WEIGHTS_NOTE = (
    "Naive first-layer |W| of the baseline models retrained from scratch, one per seed (same architecture, "
    "training recipe and data as the registered model, nothing ablated): how stable the weight ranking is "
    "across trainings, not the registered model's own weights."
)

# The stopping rule for adaptive seeds (needs_more_seeds): seeds are added while any of the TOP_UNITS
# most important units has a CONFIDENCE t-interval that straddles zero, up to MAX_SEEDS seeds.
TOP_UNITS = 3
CONFIDENCE = 0.95
SEEDS = 5  # seeds to start with (--seeds)
MAX_SEEDS = 8
# Wide models: without --ablation-budget, only the WIDE_BUDGET units permutation ranks first are retrained
# when there are more than WIDE_FEATURES features (a 300-feature model spent 681 s of a 722 s run here).
WIDE_FEATURES = 100
WIDE_BUDGET = 50
CALIBRATION_BRANCHES = 4  # estimate_seconds times a job of 1 branch and one of this many
DEFAULT_CHUNKS = 2  # jobs per seed: with 5 seeds, 10 jobs, so a cluster of a few workers keeps busy
# A retrain whose test loss is above DIVERGED times the loss of a constant prediction diverged (retrain_check);
# retrained baselines above UNDERTRAINED times the registered model's loss do not reproduce it (a note says so).
DIVERGED = 1.5
UNDERTRAINED = 2.0


@dataclass(frozen=True)
class Recipe:
    """How to retrain: from the manifest's ``training`` block."""

    epochs: int = 10
    batch_size: int = 64
    learning_rate: float | None = None  # None: the compiled optimizer's own

    @classmethod
    def from_manifest(cls, training: dict[str, Any]) -> Recipe:
        defaults = cls()
        rate = training.get("learning_rate")
        return cls(epochs=int(training.get("epochs", defaults.epochs)),
                   batch_size=int(training.get("batch_size", defaults.batch_size)),
                   learning_rate=float(rate) if rate is not None else None)


def ablation_constants(train: Split, categorical: tuple[str, ...]) -> np.ndarray:
    """The value each feature is held at: its training mean, or its mode for a categorical."""
    constants = train.X.mean(axis=0).astype(np.float32)
    for j, name in enumerate(train.features):
        if name in categorical:
            values, counts = np.unique(train.X[:, j], return_counts=True)
            constants[j] = values[np.argmax(counts)]
    return constants


def ablated(X: np.ndarray, columns: list[int] | None, constants: np.ndarray) -> np.ndarray:
    """A copy of ``X`` with ``columns`` held at their constants (``X`` itself when nothing is ablated)."""
    if not columns:
        return X
    out = X.copy()
    out[:, columns] = constants[columns]
    return out


def epoch_order(n_rows: int, epochs: int, seed: int) -> np.ndarray:
    """The row order of all epochs, drawn from ``seed``: identical for the fused and the one-by-one trainer."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.permutation(n_rows) for _ in range(epochs)])


def retrain_score(
    model,
    train: Split,
    test: Split,
    *,
    metric: Metric,
    recipe: Recipe,
    seed: int,
    ablate: list[int] | None = None,
    constants: np.ndarray | None = None,
    adapter: Adapter | None = None,
) -> float:
    """One retrain, one ``fit``: a seeded fresh copy with columns ``ablate`` held constant; its test metric.

    ``model`` has one output (see :func:`tasks.subject.adapter.head_model`); ``adapter`` feeds it (by default,
    numeric columns as they are). The reference the fused trainer must reproduce; it pays Keras'
    per-fit overhead every time.
    """
    adapter = adapter or numeric_adapter(model, test.features)
    fresh = seeded_clone(model, seed)
    fresh.compile(optimizer=_fresh_optimizer(model, recipe), loss=model.loss)
    order = epoch_order(train.n_rows, recipe.epochs, seed)
    X_train = ablated(train.X, ablate, constants)
    fresh.fit(adapter.feed(X_train[order]), train.y[order],
              batch_size=recipe.batch_size, epochs=1, shuffle=False, verbose=0)
    raw = fresh.predict_on_batch(adapter.feed(ablated(test.X, ablate, constants)))
    return metric(test.y, as_predictions(raw, output_squash(head_loss(model, adapter))))


def fused_retrain_scores(
    model,
    train: Split,
    test: Split,
    *,
    metric: Metric,
    recipe: Recipe,
    seed: int,
    units: list[list[int]],
    constants: np.ndarray,
    adapter: Adapter | None = None,
) -> tuple[np.ndarray, list]:
    """Test metric of every unit's retrain for one seed, all trained together in one compiled loop; and the branches.

    Branch ``b`` is a fresh copy of the architecture initialised from ``seed`` (as in
    :func:`retrain_score`) that sees the rows with ``units[b]`` held constant. Each step feeds one
    batch to every branch and applies the gradient of the summed losses, so each branch's
    gradients are its own; the whole schedule runs inside one ``tf.function``, which removes
    Keras' per-step and per-fit overhead. The trained branches are returned in ``units`` order, so a
    caller can read the weights of one (the baseline's, for an empty unit).
    """
    import tensorflow as tf

    adapter = adapter or numeric_adapter(model, test.features)
    branches = []
    for _ in units:
        branch = seeded_clone(model, seed)
        branch.compile(optimizer=_fresh_optimizer(model, recipe), loss=model.loss)  # compute_loss needs the compiled loss
        branches.append(branch)
    keep = np.ones((len(units), train.X.shape[1]), np.float32)
    for b, columns in enumerate(units):
        keep[b, columns] = 0.0
    fill = (1.0 - keep) * constants[None, :].astype(np.float32)  # x·1 + 0 keeps x; x·0 + c gives c, exactly
    variables = [v for branch in branches for v in branch.trainable_variables]
    optimizer = _fresh_optimizer(model, recipe)
    optimizer.build(variables)
    batch = recipe.batch_size

    @tf.function
    def train_all(X, y):
        for start in tf.range(0, tf.shape(X)[0], batch):
            xb, yb = X[start : start + batch], y[start : start + batch]
            with tf.GradientTape() as tape:
                total = 0.0
                for b, branch in enumerate(branches):
                    pred = branch(adapter.tensor_feed(xb * keep[b] + fill[b]), training=True)
                    total += branch.compute_loss(x=None, y=yb, y_pred=pred, training=True)
            optimizer.apply(tape.gradient(total, variables), variables)

    @tf.function
    def predict_all(X):
        return [branch(adapter.tensor_feed(X * keep[b] + fill[b]), training=False) for b, branch in enumerate(branches)]

    order = epoch_order(train.n_rows, recipe.epochs, seed)
    train_all(tf.constant(train.X[order]), tf.constant(train.y[order]))
    raw = predict_all(tf.constant(test.X))
    squash = output_squash(head_loss(model, adapter))
    return np.array([metric(test.y, as_predictions(out.numpy(), squash)) for out in raw]), branches


@dataclass(frozen=True)
class Budget:
    """How much retraining a run may spend: at most ``max_units`` units, or about ``seconds`` seconds."""

    max_units: int | None = None
    seconds: float | None = None

    @classmethod
    def parse(cls, text: str | None, *, n_features: int = 0) -> Budget:
        """``"8"`` ablates the 8 most important units; ``"300s"`` stops starting new units after 300 s; ``"all"``
        ablates every unit. Unset: every unit, except that a model with more than ``WIDE_FEATURES`` features
        gets the ``WIDE_BUDGET`` most important (retraining every unit of a wide model takes hours)."""
        if text is None or text == "":
            return cls(max_units=WIDE_BUDGET) if n_features > WIDE_FEATURES else cls()
        value = text.strip().lower()
        if value == "all":
            return cls()
        try:
            if value.endswith("s"):
                seconds = float(value[:-1])
                if seconds > 0:
                    return cls(seconds=seconds)
            elif int(value) > 0:
                return cls(max_units=int(value))
        except ValueError:
            pass
        raise FeatureAuditError(f"--ablation-budget {text!r}: give a number of features (8), seconds (300s) or 'all'")


class Options(MethodOptions):
    """Retrain-ablation's own options."""

    seeds: int = Field(default=SEEDS, ge=1, description=f"retrain-ablation seeds to start with, added up to "
                                                        f"{MAX_SEEDS} while a top feature's interval straddles zero")
    ablation_budget: str | None = Field(
        default=None, description=f"retrain at most N features (e.g. 8) or for about N seconds (e.g. 600s), most "
                                  f"important by permutation first; 'all' for every feature (default: all, but the "
                                  f"{WIDE_BUDGET} most important for a model with more than {WIDE_FEATURES} features)")

    @field_validator("ablation_budget")
    @classmethod
    def _budget(cls, value: str | None) -> str | None:
        Budget.parse(value)  # raises FeatureAuditError naming the option
        return value


@dataclass(frozen=True)
class RetrainTiming:
    """One retraining job: its seed, how many units it ablated, whether it trained the seed's baseline, seconds."""

    seed: int
    units: int
    baseline: bool
    seconds: float


@dataclass(frozen=True)
class RunDetails(Details):
    """How :func:`run_ablation` ran: the seeds (``n_seeds`` of them, ``seeds_added`` giving why any were added to
    the ``n_seeds_requested``), each seed's baseline score, every job's timing, the wall time, the estimate of the
    first ``n_seeds_requested`` seeds' jobs against their measured ``job_seconds``, and the units a budget left out.
    """

    seeds: list[int]
    n_seeds: int
    n_seeds_requested: int
    max_seeds: int
    seeds_added: list[str]
    seeds_note: str
    baselines: list[float]
    timings: list[RetrainTiming]
    jobs: int
    seconds: float
    estimated_job_seconds: float | None  # the first n_seeds_requested seeds' jobs, one after another
    job_seconds: float
    not_ablated: list[str]


@dataclass(frozen=True)
class AblationDetails(RunDetails):
    """The ablation result's details: its run (``seeds`` only those whose baseline trained), the units whose
    retraining diverged and why, the registered model's and a constant prediction's test metric, the retraining
    check's note, the recipe, and the manifest groups and correlated clusters (report records)."""

    diverged: dict[str, str]
    registered_score: float
    null_score: float
    retrain_note: str | None
    epochs: int
    batch_size: int
    groups: list[GroupRecord]
    clusters: list[ClusterRecord]


@dataclass(frozen=True)
class RetrainedWeightsDetails(Details):
    """The retrained baselines' |W|: the seeds they were trained with and the recipe."""

    seeds: list[int]
    epochs: int
    batch_size: int


@dataclass(frozen=True)
class AblationRun:
    """What :func:`run_ablation` measured, one column per seed that ran."""

    importances: np.ndarray  # (n_units, n_seeds): paired importances; NaN rows for units a budget left out
    weights: np.ndarray | None  # (n_features, n_seeds): first-layer |W| of each seed's baseline; None if unreadable
    weights_error: str | None  # why weight_magnitudes could not read the baseline, when it could not
    details: RunDetails
    scores: np.ndarray  # (n_units, n_seeds): each retrain's own test metric (NaN where not run)

    def cache_inputs(self) -> dict[str, Any]:
        """What decides the results built from this run: everything but the run's total seconds (reused jobs carry
        their stored timings, so a run of reused jobs gives reusable results)."""
        return {"importances": self.importances, "weights": self.weights, "weights_error": self.weights_error,
                "scores": self.scores, "details": replace(self.details, seconds=0.0)}


@dataclass(frozen=True)
class AblationPlan:
    """Everything a retraining job needs besides the model and data: small and picklable, made once per run.

    ``units`` are in priority order (a budget keeps the first); ``chunks`` cut them into the batches
    that one job retrains together for one seed (chunk 0 also trains the baseline); ``seeds`` are all
    the seeds a run may use, the first ``n_seeds`` always.
    """

    units: dict[str, list[int]]
    chunks: tuple[tuple[str, ...], ...]
    seeds: tuple[int, ...]
    n_seeds: int
    max_seeds: int
    metric: str
    budget: Budget = Budget()
    relevance: float | None = RELEVANCE
    estimated_seconds: float | None = None  # one worker, the first n_seeds seeds: see estimate_seconds
    cluster_threshold: float = DEFAULT_CLUSTER_THRESHOLD  # the correlated clusters among the units, as permutation's

    def estimate(self, workers: int = 1) -> float | None:
        """About how long the jobs of the first ``n_seeds`` seeds take on ``workers`` running one job each at once."""
        if self.estimated_seconds is None:
            return None
        jobs = self.n_seeds * len(self.chunks)
        return self.estimated_seconds * -(-jobs // max(1, workers)) / max(1, jobs)


@dataclass(frozen=True)
class Job:
    """One retraining job: seed ``seeds[seed_index]``, the units of ``chunks[chunk]`` (chunk 0: and the baseline)."""

    seed_index: int
    chunk: int


@dataclass(frozen=True, eq=False)
class JobScores:
    """A job's test metrics: per unit of its chunk, and for chunk 0 the baseline's, with the baseline's |W|."""

    job: Job
    scores: tuple[float, ...]
    baseline: float | None
    weights: np.ndarray | None
    weights_error: str | None
    seconds: float


def plan_ablation(
    units: dict[str, list[int]],
    *,
    metric: str,
    n_seeds: int = SEEDS,
    max_seeds: int = MAX_SEEDS,
    random_state: int | None = None,
    budget: Budget = Budget(),
    relevance: float | None = RELEVANCE,
    chunks: int = DEFAULT_CHUNKS,
) -> AblationPlan:
    """Cut ``units`` into jobs: ``chunks`` batches per seed (batches of 4 under a time budget, so it can stop between)."""
    if n_seeds < 1:
        raise FeatureAuditError(f"n_seeds={n_seeds}: retrain-ablation needs at least 1 seed (5 by default)")
    names = list(units)[: budget.max_units] if budget.max_units else list(units)
    size = max(1, min(4, len(names))) if budget.seconds else max(1, -(-len(names) // max(1, chunks)))
    cut = tuple(tuple(names[first : first + size]) for first in range(0, len(names), size))
    seeds = tuple(ablation_seeds(max(n_seeds, max_seeds), random_state))
    return AblationPlan(dict(units), cut, seeds, n_seeds, max_seeds, metric, budget, relevance)


def retrain_job(model, train: Split, test: Split, *, plan: AblationPlan, job: Job, recipe: Recipe,
                constants: np.ndarray, adapter: Adapter | None = None) -> JobScores:
    """Retrain one job's branches in one fused loop; the baseline's |W| when it trains the baseline."""
    tick = time.perf_counter()
    baseline = job.chunk == 0
    scores, branches = fused_retrain_scores(
        model, train, test, metric=METRICS[plan.metric], recipe=recipe, seed=plan.seeds[job.seed_index],
        constants=constants, units=([[]] if baseline else []) + [plan.units[n] for n in plan.chunks[job.chunk]],
        adapter=adapter,
    )
    weights, error = None, None
    if baseline:  # its score pairs with every unit of this seed; its |W| are one retrained sample
        try:
            weights = weight_magnitudes(branches[0], train.features, adapter.sources() if adapter else None)
        except Exception as exc:  # a layer it cannot look through must not cost the ablation result
            error = str(exc)
    return JobScores(job, tuple(float(x) for x in scores[1 if baseline else 0 :]),
                     float(scores[0]) if baseline else None, weights, error, round(time.perf_counter() - tick, 3))


def run_ablation(
    plan: AblationPlan,
    run_jobs: Callable[[list[Job]], list[JobScores]],
    *,
    n_features: int,
    progress: Callable[[str, int, int], None] | None = None,
) -> AblationRun:
    """Run the plan's jobs through ``run_jobs`` (in this process, or as Prefect tasks on any task runner).

    Without a time budget every job of the first ``n_seeds`` seeds is handed over at once, so N
    workers run N at once; with one, a chunk's seeds at a time, and no new chunk starts once the
    budget is spent. Then one more seed at a time (every chunk measured so far) while
    :func:`needs_more_seeds` gives a reason, fewer than ``max_seeds`` have run and the budget is not
    spent. The numbers depend only on the plan, never on the order jobs finish in.
    """
    metric = METRICS[plan.metric]
    row = {name: i for i, name in enumerate(plan.units)}
    raw = np.full((len(plan.units), len(plan.seeds)), np.nan)
    baselines = np.full(len(plan.seeds), np.nan)
    weights = np.full((n_features, len(plan.seeds)), np.nan)
    errors: list[str] = []
    timings: list[RetrainTiming] = []
    started = time.perf_counter()
    planned = 0

    def spent() -> bool:
        return bool(plan.budget.seconds) and time.perf_counter() - started > plan.budget.seconds

    def run(jobs: list[Job], label: str) -> None:
        nonlocal planned
        planned += len(jobs)
        for done in run_jobs(jobs):
            k, names = done.job.seed_index, plan.chunks[done.job.chunk]
            raw[[row[n] for n in names], k] = done.scores
            if done.baseline is not None:
                baselines[k] = done.baseline
                if done.weights is not None:
                    weights[:, k] = done.weights
                elif done.weights_error:
                    errors.append(done.weights_error)
            timings.append(RetrainTiming(seed=plan.seeds[k], units=len(names), baseline=done.baseline is not None,
                                         seconds=done.seconds))
            if progress is not None:
                progress(f"seed {k + 1}{label}: {len(names)} ablations retrained in {done.seconds} s", len(timings),
                         planned)

    def importances(n_run: int) -> np.ndarray:
        return metric.degradation(baselines[None, :n_run], raw[:, :n_run])

    chunks = range(len(plan.chunks))
    if plan.budget.seconds:
        measured = 0
        for c in chunks:
            run([Job(k, c) for k in range(plan.n_seeds)], f"/{plan.n_seeds}")
            measured = c + 1
            if spent():
                break
    else:
        run([Job(k, c) for c in chunks for k in range(plan.n_seeds)], f"/{plan.n_seeds}")
        measured = len(plan.chunks)
    names = [n for chunk in plan.chunks[:measured] for n in chunk]
    n_run, added = plan.n_seeds, []

    def why() -> str | None:
        values = importances(n_run)
        return needs_more_seeds({n: values[row[n]] for n in names}, relevance=plan.relevance)

    reason = why()
    while reason and n_run < plan.max_seeds and not spent():
        added.append(reason)
        run([Job(n_run, c) for c in range(measured)], f" (added: {reason})")
        n_run += 1
        reason = why()
    details = RunDetails(
        seeds=list(plan.seeds[:n_run]),
        n_seeds=n_run,
        n_seeds_requested=plan.n_seeds,
        max_seeds=plan.max_seeds,
        seeds_added=added,
        seeds_note=seeds_note(plan.n_seeds, n_run, added, reason, budget_spent=bool(reason) and n_run < plan.max_seeds),
        baselines=[float(b) for b in baselines[:n_run]],
        timings=timings,
        jobs=len(timings),
        seconds=round(time.perf_counter() - started, 3),
        estimated_job_seconds=plan.estimated_seconds,
        job_seconds=round(sum(t.seconds for t in timings if t.seed in plan.seeds[: plan.n_seeds]), 3),
        not_ablated=[n for n in plan.units if n not in names],
    )
    error = errors[0] if errors else None
    return AblationRun(importances(n_run), None if error else weights[:, :n_run], error, details, raw[:, :n_run])


def ablation_importance(
    model,
    train: Split,
    test: Split,
    *,
    metric: Metric,
    recipe: Recipe,
    n_seeds: int = SEEDS,
    max_seeds: int = MAX_SEEDS,
    relevance: float | None = RELEVANCE,
    random_state: int | None = None,
    units: dict[str, list[int]] | None = None,
    constants: np.ndarray,
    budget: Budget = Budget(),
    progress: Callable[[str, int, int], None] | None = None,
) -> AblationRun:
    """Paired drop-column importances ``(n_units, n_seeds)`` (NaN where a budget cut), the baselines' |W|, timings.

    Every job in this process, one after another (see :func:`run_ablation` for the schedule). Per
    seed, the baseline and every ablated variant share one initialisation and one row order, so
    their difference isolates the unit. ``units`` are taken in order: put the most important first
    when a budget may cut the list short. Seeds are the first of
    ``ablation_seeds(max(n_seeds, max_seeds), random_state)``, so a run that added seeds gives the
    numbers of a run asked for that many.
    """
    units = units or {str(j): [j] for j in range(train.X.shape[1])}
    plan = plan_ablation(units, metric=metric.name, n_seeds=n_seeds, max_seeds=max_seeds, random_state=random_state,
                         budget=budget, relevance=relevance)

    def here(jobs: list[Job]) -> list[JobScores]:
        return [retrain_job(model, train, test, plan=plan, job=job, recipe=recipe, constants=constants) for job in jobs]

    return run_ablation(plan, here, n_features=len(train.features), progress=progress)


def needs_more_seeds(importances: Mapping[str, np.ndarray], top: int = TOP_UNITS,
                     relevance: float | None = RELEVANCE) -> str | None:
    """Why another seed is needed: one of the ``top`` units by mean has a 95% t-interval straddling zero; else None.

    A unit whose mean is below ``relevance`` (default ``RELEVANCE``; None: no floor) of the top unit's is no driver worth resolving (a model
    with two drivers has a noise unit third): it never asks for seeds.

    ``importances`` maps each unit to its per-seed samples; units with a missing sample (NaN, not
    ablated) are left out. With one seed the interval is the value itself, as in
    :class:`ImportanceResult`, so one seed never asks for another.
    """
    samples = {name: np.asarray(s, dtype=float) for name, s in importances.items()}
    samples = {name: s for name, s in samples.items() if s.size and np.isfinite(s).all()}
    leaders = sorted(samples, key=lambda n: -samples[n].mean())[:top]  # stable: ties keep unit order
    floor = relevance * samples[leaders[0]].mean() if leaders and relevance is not None else -np.inf
    for name in leaders:
        s = samples[name]
        n = len(s)
        if s.mean() < floor:
            continue
        half = stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * s.std(ddof=1) / np.sqrt(n) if n > 1 else 0.0
        if s.mean() - half < 0.0 < s.mean() + half:
            return f"the interval of '{name}' straddled zero after {n} seeds"
    return None


def seeds_note(n_seeds: int, n_run: int, added: list[str], reason: str | None, *, budget_spent: bool) -> str:
    """One sentence for the report: how many seeds ran and why any were added (or not)."""
    plural = "s" if len(added) != 1 else ""
    said = f"Added {len(added)} seed{plural} to the {n_seeds} asked for: {'; '.join(added)}. " if added else ""
    if reason is None:
        if n_run < 2:
            return f"{said}One seed: no interval to test, so no seed was added."
        return f"{said}After {n_run} seeds the {CONFIDENCE:.0%} intervals of the top {TOP_UNITS} units all clear zero."
    why = "the time budget was spent" if budget_spent else "the most allowed"
    return f"{said}Stopped at {n_run} seeds ({why}): {reason}, so that unit's rank is not resolved from noise."


def ablation_seeds(n_seeds: int, random_state: int | None) -> list[int]:
    """Per-seed integers drawn up front from one SeedSequence.

    Children are spawned in order, so the first ``k`` of ``n`` seeds are the ``k`` seeds: a seed
    added later is the one a larger ``n_seeds`` would have drawn.
    """
    return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(random_state).spawn(n_seeds)]


def seeded_clone(model, seed: int):
    """A fresh, uncompiled copy of ``model`` whose initialisers and dropout draw from ``seed``.

    Preprocessing layers (lookups, normalization, discretization, a FeatureSpace) are shared with the
    model, not cloned: a clone built from their config would lose the vocabularies and statistics they
    were adapted with, and they hold no trainable weights.
    """
    import keras

    counter = itertools.count()

    def clone_layer(layer):
        if isinstance(layer, _preprocessing_layers()):
            return layer
        config = _seed_config(layer.get_config(), seed, counter)
        return layer.__class__.from_config(config)

    return keras.models.clone_model(model, clone_function=clone_layer)


def _preprocessing_layers() -> tuple[type, ...]:
    """The Keras layers whose state comes from ``adapt`` or a vocabulary, not from training."""
    import keras

    names = ("StringLookup", "IntegerLookup", "Hashing", "HashedCrossing", "CategoryEncoding", "Normalization",
             "Discretization", "TextVectorization")
    return tuple(getattr(keras.layers, n) for n in names if hasattr(keras.layers, n)) + (keras.utils.FeatureSpace,)


def _fresh_optimizer(model, recipe: Recipe | None = None):
    """A new optimizer with the compiled one's settings (learning rate, betas, …); the recipe's learning rate if set."""
    config = model.optimizer.get_config()
    if recipe is not None and recipe.learning_rate is not None:
        config["learning_rate"] = recipe.learning_rate
    return model.optimizer.__class__.from_config(config)


def _seed_config(config: Any, seed: int, counter) -> Any:
    if isinstance(config, dict):
        out = {k: _seed_config(v, seed, counter) for k, v in config.items()}
        if "seed" in out and out["seed"] is None:
            out["seed"] = (seed + 7919 * next(counter)) % (2**31 - 1)
        return out
    if isinstance(config, list):
        return [_seed_config(v, seed, counter) for v in config]
    return config


def priority_order(features: list[str], priority: Any) -> list[str]:
    """Features by descending permutation importance when that result is usable, else in their own order.

    ``priority`` is what the permutation task produced: a result, a list of results, or its error.
    """
    candidates = priority if isinstance(priority, list) else [priority]
    for result in candidates:
        if isinstance(result, ImportanceResult) and result.ok and result.method == "permutation":
            rank = dict(zip(result.features, result.rank.tolist()))
            return sorted(features, key=lambda f: rank.get(f, 10**9))
    return list(features)


@dataclass(frozen=True)
class AblationSetup:
    """What one model version's ablation needs, derived once per process from its subject: see :func:`load_setup`."""

    model: Any  # the model with the audited output only (tasks.subject.adapter.head_model)
    adapter: Adapter
    train: Split
    test: Split
    metric: Metric
    recipe: Recipe
    constants: np.ndarray
    measured: dict[str, list[int]]  # every unit, in unit order (features, block inputs, groups, clusters)
    clusters: list
    registered_score: float  # the registered model's test metric
    null_score: float  # the test metric of a constant prediction (the training target's mean or class shares)
    cluster_threshold: float = DEFAULT_CLUSTER_THRESHOLD
    clustering_note: str | None = None  # what the clusters leave out (a group too large to link)


def load_setup(version: ModelVersion, *, seed: int = 0, cluster_threshold: float = DEFAULT_CLUSTER_THRESHOLD) -> AblationSetup:
    """The subject's model (audited output only), splits, metric and units, with the recipe and constants (the
    train split must exist)."""
    subject = load_subject(version)
    return AblationSetup(
        model=head_model(subject.model, subject.adapter), adapter=subject.adapter,
        train=subject.train, test=subject.test, metric=subject.metric,
        recipe=Recipe.from_manifest(version.manifest.training),
        constants=ablation_constants(subject.train, subject.categorical),
        measured=subject.units(cluster_threshold, seed=seed),
        clusters=subject.clusters(cluster_threshold, seed=seed),
        registered_score=subject.metric(subject.test.y, subject.forward()(subject.test.X)),
        null_score=subject.metric(subject.test.y, constant_prediction(subject.train.y, subject.test.y, version.task)),
        cluster_threshold=cluster_threshold,
        clustering_note=subject.clustering_note(cluster_threshold, seed=seed),
    )


_SETUPS: dict[tuple, AblationSetup] = {}
_SETUPS_LOCK = threading.Lock()


def _cached_setup(version: ModelVersion, seed: int, cluster_threshold: float = DEFAULT_CLUSTER_THRESHOLD) -> AblationSetup:
    """One setup per process for a version (keyed as its subject is), seed and threshold: jobs load once."""
    key = (subject_key(version), seed, cluster_threshold)
    with _SETUPS_LOCK:
        if key not in _SETUPS:
            if len(_SETUPS) >= 2:  # a long-running worker audits many versions: keep the last two
                _SETUPS.pop(next(iter(_SETUPS)))
            _SETUPS[key] = load_setup(version, seed=seed, cluster_threshold=cluster_threshold)
        return _SETUPS[key]


def plan_for(version: ModelVersion, setup: AblationSetup, *, n_seeds: int = SEEDS, max_seeds: int = MAX_SEEDS,
             seed: int = 0, budget: Budget = Budget(), priority: Any = None) -> AblationPlan:
    """The version's plan: features in priority order (a budget keeps the first), then groups and clusters."""
    units = {f: setup.measured[f] for f in priority_order(list(version.features), priority)}
    units.update({name: cols for name, cols in setup.measured.items() if name not in units})
    plan = plan_ablation(units, metric=setup.metric.name, n_seeds=n_seeds, max_seeds=max_seeds, random_state=seed,
                         budget=budget)
    return replace(plan, cluster_threshold=setup.cluster_threshold)


def skipped(version: ModelVersion) -> list[ImportanceResult] | None:
    """Both results skipped, saying why, when the version has no train split; else None."""
    if version.train_path is not None:
        return None
    reason = f"no train split in {version.folder.name}: retraining needs train.parquet"
    features = list(version.features)
    return [
        ImportanceResult.not_ok("ablation", "behavioural", features, status="skipped", reason=reason),
        ImportanceResult.not_ok("weights_retrained", "weight-based", features, status="skipped", reason=reason),
    ]


def ablation_results(version: ModelVersion, setup: AblationSetup, plan: AblationPlan,
                     run: AblationRun) -> list[ImportanceResult]:
    """The ablation result (in unit order, groups and clusters in its details) and the retrained weights."""
    features = list(version.features)
    planned = {name: i for i, name in enumerate(plan.units)}
    ordered = np.array([run.importances[planned[name]] for name in setup.measured])  # back in unit order
    scores = np.array([run.scores[planned[name]] for name in setup.measured])
    baselines = np.asarray(run.details.baselines, dtype=float)
    check = retrain_check(scores, baselines, list(setup.measured), metric=setup.metric,
                          registered=setup.registered_score, null=setup.null_score)
    if check.usable_seeds.sum() == 0:
        reason = f"every retrained baseline diverged: {check.note}"
        return [ImportanceResult.not_ok("ablation", "behavioural", features, status="failed", reason=reason),
                _retrained_weights_result(run, features, setup.recipe)]
    ordered = ordered[:, check.usable_seeds]
    measured = {name: i for i, name in enumerate(setup.measured)}
    ordered[[measured[name] for name in check.diverged]] = np.nan
    return [
        _ablation_result(ordered, run.details, check, setup, features),
        _retrained_weights_result(run, features, setup.recipe),
    ]


@dataclass(frozen=True)
class RetrainCheck:
    """What :func:`retrain_check` found: the seeds whose baseline trained, the units whose retrain diverged, a note."""

    usable_seeds: np.ndarray  # bool per seed
    diverged: dict[str, str]  # unit -> why it is not ranked
    note: str | None


def retrain_check(scores: np.ndarray, baselines: np.ndarray, units: list[str], *, metric: Metric,
                  registered: float, null: float) -> RetrainCheck:
    """Which retrains can be trusted, judged by the test metric of the registered model and of a constant prediction.

    A retrain *diverged* when its metric is not finite or, for a loss, above :data:`DIVERGED` times the loss of
    predicting a constant (the training target's mean, prevalence or class shares): it learnt less than
    nothing. A seed whose baseline diverged is dropped; a unit that diverged in any kept seed is not ranked.
    When the baselines that remain are much worse than the registered model (over :data:`UNDERTRAINED` times
    its loss), the note says the recipe does not reproduce the model.
    """
    def bad(value: np.ndarray) -> np.ndarray:
        value = np.asarray(value, dtype=float)
        worse = np.zeros(value.shape, bool) if metric.higher_is_better else value > DIVERGED * null
        return ~np.isfinite(value) | worse

    usable = ~bad(baselines)
    notes = []
    if (~usable).any():
        notes.append(f"{int((~usable).sum())} of {len(baselines)} retrained baselines diverged "
                     f"({metric.name} {', '.join(f'{b:.3g}' for b in baselines[~usable])}; a constant prediction "
                     f"scores {null:.3g}); their seeds are left out.")
    diverged = {}
    for i, name in enumerate(units):
        row = scores[i, usable]
        if np.isnan(row).all():  # not run (beyond a budget)
            continue
        if bad(row).any():
            worst = np.max(np.where(np.isfinite(row), row, np.inf))
            diverged[name] = f"retraining without it diverged ({metric.name} {worst:.3g}; a constant prediction scores {null:.3g})"
    if diverged:
        notes.append("Not ranked, their retraining diverged: " + "; ".join(f"{n}: {why}" for n, why in diverged.items())
                     + ".")
    kept = baselines[usable]
    if len(kept) and not metric.higher_is_better and np.mean(kept) > UNDERTRAINED * registered + 1e-9:
        notes.append(f"The retrained baselines score {metric.name} {np.mean(kept):.3g} on average against "
                     f"{registered:.3g} for the registered model: the retraining recipe (manifest 'training': epochs, "
                     "batch_size, learning_rate) does not reproduce the model, so these importances compare weaker "
                     "models than the one audited.")
    return RetrainCheck(usable, diverged, " ".join(notes) or None)


def audit_ablation(
    version: ModelVersion,
    *,
    n_seeds: int = SEEDS,
    max_seeds: int = MAX_SEEDS,
    seed: int = 0,
    budget: Budget = Budget(),
    priority: Any = None,
    progress: Callable[[str, int, int], None] | None = None,
    cluster_threshold: float = DEFAULT_CLUSTER_THRESHOLD,
) -> list[ImportanceResult]:
    """Drop-column importance by retraining, and the first-layer |W| of the retrained baselines, in this process.

    With a ``priority`` result (permutation importance) the most important features are ablated first.
    Without a train split both results are skipped, saying why. The flow runs the same plan as
    Prefect tasks (:func:`ablation_plan_task`, :func:`ablation_job_task`).
    """
    if (none := skipped(version)) is not None:
        return none
    setup = load_setup(version, seed=seed, cluster_threshold=cluster_threshold)
    plan = plan_for(version, setup, n_seeds=n_seeds, max_seeds=max_seeds, seed=seed, budget=budget, priority=priority)

    def here(jobs: list[Job]) -> list[JobScores]:
        return [retrain_job(setup.model, setup.train, setup.test, plan=plan, job=job, recipe=setup.recipe,
                            constants=setup.constants, adapter=setup.adapter) for job in jobs]

    run = run_ablation(plan, here, n_features=len(version.features), progress=progress)
    return ablation_results(version, setup, plan, run)


def _ablation_result(
    ordered: np.ndarray,
    run: RunDetails,
    check: RetrainCheck,
    setup: AblationSetup,
    features: list[str],
) -> ImportanceResult:
    """The paired drop-column result over the features that were ablated, groups and clusters in its details."""
    measured, recipe = setup.measured, setup.recipe
    left_out = set(run.not_ablated) | set(check.diverged)
    kept = [f for f in features if f not in left_out]
    column = {f: j for j, f in enumerate(features)}
    groups, cluster_records = unit_records(ordered, measured, features, setup.clusters)
    per_seed: dict[int, float] = {}
    for timing in run.timings:
        per_seed[timing.seed] = per_seed.get(timing.seed, 0.0) + timing.seconds
    n_units = len(measured) - len(run.not_ablated)
    notes = [*NOTES, run.seeds_note,
             f"{run.n_seeds} seeds × {n_units} units, {recipe.epochs} epochs, batch {recipe.batch_size}; "
             "retraining time per seed: " + ", ".join(f"{seconds:.1f} s" for seconds in per_seed.values()) + "."]
    if run.not_ablated:
        notes.append(f"Budget reached: not ablated: {listed(run.not_ablated)}.")
    if check.note:
        notes.append(check.note)
    if setup.clustering_note:
        notes.append(setup.clustering_note)
    ran = {f.name: getattr(run, f.name) for f in fields(RunDetails)}
    details = AblationDetails(
        **{**ran, "seeds": [s for s, ok in zip(run.seeds, check.usable_seeds) if ok]},  # the seeds that trained
        diverged=check.diverged, registered_score=setup.registered_score, null_score=setup.null_score,
        retrain_note=check.note, epochs=recipe.epochs, batch_size=recipe.batch_size, groups=groups,
        clusters=cluster_records,
    )
    return ImportanceResult.from_samples(
        "ablation", "behavioural", kept, ordered[[column[f] for f in kept]], metric=setup.metric.name,
        notes=notes, sampling="seeds", details=details,
        reference=None if setup.metric.higher_is_better else setup.null_score,
    )


def _retrained_weights_result(run: AblationRun, features: list[str], recipe: Recipe) -> ImportanceResult:
    """First-layer |W| of each seed's retrained baseline, one sample per seed; skipped when they cannot be read."""
    if run.weights is None:
        return ImportanceResult.not_ok("weights_retrained", "weight-based", features, status="skipped",
                                       reason=run.weights_error or "the retrained baselines' weights were not read")
    seeds = run.details.seeds
    return ImportanceResult.from_samples(
        "weights_retrained", "weight-based", features, run.weights, sampling="seeds",
        notes=(RETRAINED_WEIGHTS_NOTE, f"{len(seeds)} retrainings (the ablation's seeds), {recipe.epochs} epochs, "
               f"batch {recipe.batch_size}; the interval is over those retrainings."),
        details=RetrainedWeightsDetails(seeds=seeds, epochs=recipe.epochs, batch_size=recipe.batch_size),
    )


def estimate_seconds(setup: AblationSetup, plan: AblationPlan) -> float:
    """Seconds one worker would take for the jobs of the plan's first ``n_seeds`` seeds, from two timed retrains.

    A job of B branches takes about ``fixed + B × per_branch``: tracing the fused loop and Keras' set-up
    are paid once per job, while the steps grow with the branches. Both are measured on the recipe's whole
    schedule (every epoch of the train split, then the test split) by retraining the first seed's baseline
    alone, then with the first :data:`CALIBRATION_BRANCHES` − 1 units beside it: 5 branch-trainings of the
    ``n_seeds × (units + 1)`` the plan holds (8% for 5 seeds of 12 units). Counting every branch at the
    one-branch time over-estimated by 1.8×; a slope from one and two branches under-estimated by 0.7×, the
    steps of a wider job growing faster than from one branch to two (benchmarks/bench_ablation_scaling.py).
    """
    def timed(units: list[list[int]]) -> float:
        tick = time.perf_counter()
        fused_retrain_scores(setup.model, setup.train, setup.test, metric=setup.metric, recipe=setup.recipe,
                             seed=plan.seeds[0], units=units, constants=setup.constants, adapter=setup.adapter)
        return time.perf_counter() - tick

    more = [[]] + [list(cols) for cols in list(plan.units.values())[: CALIBRATION_BRANCHES - 1]]
    one, several = timed([[]]), timed(more)
    per_branch = max((several - one) / max(1, len(more) - 1), 0.1 * one)
    fixed = max(one - per_branch, 0.0)
    jobs = plan.n_seeds * len(plan.chunks)
    branches = plan.n_seeds * (sum(len(chunk) for chunk in plan.chunks) + 1)
    return round(jobs * fixed + branches * per_branch, 3)


def estimate_line(plan: AblationPlan, workers: int, *, kind: str = "worker") -> str:
    """'about 6 min (40 units × 5 seeds, 10 jobs on 2 workers)': the plan's estimate with ``workers`` jobs at once."""
    seconds = plan.estimate(workers) or 0.0
    if seconds < 90:
        about = f"about {seconds:.0f} s"
    elif seconds < 90 * 60:
        about = f"about {seconds / 60:.0f} min"
    else:
        about = f"about {seconds / 3600:.1f} h"
    units = sum(len(chunk) for chunk in plan.chunks)
    line = (f"{about} ({units} units × {plan.n_seeds} seeds, {plan.n_seeds * len(plan.chunks)} jobs on {workers} "
            f"{kind}{'s' if workers != 1 else ''})")
    if plan.budget.seconds and seconds > plan.budget.seconds:
        line += f"; the {plan.budget.seconds:g} s budget stops it sooner"
    return line


@task(name="ablation-plan")
def ablation_plan_task(version: ModelVersion, *, n_seeds: int = SEEDS, seed: int = 0, budget: Budget = Budget(),
                       priority: Any = None, cluster_threshold: float = DEFAULT_CLUSTER_THRESHOLD) -> AblationPlan:
    """Cut retrain-ablation into jobs and estimate their time (the version has a train split: see :func:`skipped`)."""
    setup = _cached_setup(version, seed, cluster_threshold)
    plan = plan_for(version, setup, n_seeds=n_seeds, seed=seed, budget=budget, priority=priority)
    return replace(plan, estimated_seconds=estimate_seconds(setup, plan))


def run_job(version: ModelVersion, plan: AblationPlan, job: Job, *, seed: int = 0) -> JobScores:
    """One job in any process that reaches the version's files: the setup is loaded once per process."""
    setup = _cached_setup(version, seed, plan.cluster_threshold)
    return retrain_job(setup.model, setup.train, setup.test, plan=plan, job=job, recipe=setup.recipe,
                       constants=setup.constants, adapter=setup.adapter)


@task(name="ablation-job")
def ablation_job_task(version: ModelVersion, plan: AblationPlan, job: Job, *, seed: int = 0) -> JobScores:
    """Retrain one seed's baseline (chunk 0) and one chunk of units; runs on any worker that reaches the files."""
    return run_job(version, plan, job, seed=seed)


@task(name="ablation-results")
def ablation_results_task(version: ModelVersion, plan: AblationPlan, run: AblationRun, *,
                          seed: int = 0) -> list[ImportanceResult]:
    """The ablation and retrained-weights results from the jobs' scores."""
    results = ablation_results(version, _cached_setup(version, seed, plan.cluster_threshold), plan, run)
    get_run_logger().info("ablation: %s", run.details.seeds_note)
    return results


def fan_out(version: ModelVersion, options: Options, context: Context, cache: Any,
            upstream: Mapping[str, Any]) -> tuple[list[ImportanceResult], Any]:
    """Retrain-ablation as many small tasks: a plan, one job per (seed, chunk of units) on the task runner, the results.

    A Dask cluster of N workers runs N jobs at once; the numbers depend only on the plan. Each task's result is
    stored and reused (``cache``, a :class:`tasks.methods.cache.ResultCache`); the state returned is the results
    task's when every task was reused, else None. Under a budget, the plan waits for permutation importance
    (``upstream``'s future) to choose which features come first.
    """
    if (none := skipped(version)) is not None:
        return none, None
    seed = context.seed
    budget = Budget.parse(options.ablation_budget, n_features=len(version.features))
    priority = allow_failure(upstream["permutation"]) if budget != Budget() and "permutation" in upstream else None
    planning = cache.apply(ablation_plan_task, "ablation-plan").submit(
        version, n_seeds=options.seeds, seed=seed, budget=budget, priority=priority,
        cluster_threshold=context.run.cluster_threshold)
    plan: AblationPlan = planning.result()
    job_task = cache.apply(ablation_job_task, "ablation-job")
    states = [planning.state]

    def submit(jobs: list[Job]) -> list[JobScores]:
        running = [job_task.submit(version, plan, job, seed=seed) for job in jobs]
        scores = [future.result() for future in running]
        states.extend(future.state for future in running)
        return scores

    logger = get_run_logger()
    slots, kind = _job_slots()
    logger.info("ablation: %s", estimate_line(plan, slots, kind=kind))
    run = run_ablation(plan, submit, n_features=len(version.features),
                       progress=lambda message, done, total: logger.info("ablation: %s (%d/%d)", message, done, total))
    state = cache.apply(ablation_results_task, "ablation-results")(version, plan, run, seed=seed, return_state=True)
    results = state.result()
    return results, state if all(s.name == "Cached" for s in (*states, state)) else None


def _job_slots() -> tuple[int, str]:
    """How many ablation jobs run at once, and on what: the Dask cluster's worker threads, or the local thread
    pool's threads, at most one per core (a retraining keeps a core busy)."""
    import os

    from prefect.context import FlowRunContext

    runner = FlowRunContext.get().task_runner
    if type(runner).__name__ == "DaskTaskRunner":
        return max(1, sum(runner.client.nthreads().values())), "worker"
    return max(1, min(getattr(runner, "_max_workers", 1), os.cpu_count() or 1)), "thread"


METHOD = Method(
    name="ablation", title="Retrain-ablation (drop-column)", kind="behavioural",
    units=frozenset({"column", "group", "cluster"}),
    results=(ResultSpec("ablation", "Retrain-ablation (drop-column)"),
             ResultSpec("weights_retrained", "Weights |W| of the retrained baselines", judged=False)),
    options=Options, fan_out=fan_out, needs=("permutation",), shared=("seed", "cluster_threshold"),
    stored=(AblationDetails, RunDetails, RetrainTiming, RetrainedWeightsDetails, AblationPlan, Budget, Job, JobScores,
            GroupRecord, ClusterRecord),
)
