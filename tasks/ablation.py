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
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prefect import get_run_logger, task
from scipy import stats

from tasks.clusters import correlated_clusters, importance_units, unit_records
from tasks.errors import FeatureAuditError
from tasks.metrics import Metric, get_metric
from tasks.modeling import as_predictions, compiled_loss_name, input_layout, model_feed, tensor_feed
from tasks.ranking import RELEVANCE
from tasks.result import ImportanceResult
from tasks.sources import ModelVersion, Split, load_model, load_split
from tasks.weights import weight_magnitudes

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
MAX_SEEDS = 8


@dataclass(frozen=True)
class Recipe:
    """How to retrain: from the manifest's ``training`` block."""

    epochs: int = 10
    batch_size: int = 64

    @classmethod
    def from_manifest(cls, training: dict[str, Any]) -> Recipe:
        defaults = cls()
        return cls(epochs=int(training.get("epochs", defaults.epochs)),
                   batch_size=int(training.get("batch_size", defaults.batch_size)))


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
) -> float:
    """One retrain, one ``fit``: a seeded fresh copy with columns ``ablate`` held constant; its test metric.

    The reference the fused trainer must reproduce; it pays Keras' per-fit overhead every time.
    """
    fresh = seeded_clone(model, seed)
    fresh.compile(optimizer=_fresh_optimizer(model), loss=model.loss)
    layout = input_layout(model, test.features)
    order = epoch_order(train.n_rows, recipe.epochs, seed)
    X_train = ablated(train.X, ablate, constants)
    fresh.fit(model_feed(layout, X_train[order]), train.y[order],
              batch_size=recipe.batch_size, epochs=1, shuffle=False, verbose=0)
    raw = fresh.predict_on_batch(model_feed(layout, ablated(test.X, ablate, constants)))
    return metric(test.y, as_predictions(raw, model))


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

    layout = input_layout(model, test.features)
    branches = []
    for _ in units:
        branch = seeded_clone(model, seed)
        branch.compile(optimizer=_fresh_optimizer(model), loss=model.loss)  # compute_loss needs the compiled loss
        branches.append(branch)
    keep = np.ones((len(units), train.X.shape[1]), np.float32)
    for b, columns in enumerate(units):
        keep[b, columns] = 0.0
    fill = (1.0 - keep) * constants[None, :].astype(np.float32)  # x·1 + 0 keeps x; x·0 + c gives c, exactly
    variables = [v for branch in branches for v in branch.trainable_variables]
    optimizer = _fresh_optimizer(model)
    optimizer.build(variables)
    batch = recipe.batch_size

    @tf.function
    def train_all(X, y):
        for start in tf.range(0, tf.shape(X)[0], batch):
            xb, yb = X[start : start + batch], y[start : start + batch]
            with tf.GradientTape() as tape:
                total = 0.0
                for b, branch in enumerate(branches):
                    pred = branch(tensor_feed(layout, xb * keep[b] + fill[b]), training=True)
                    total += branch.compute_loss(x=None, y=yb, y_pred=pred, training=True)
            optimizer.apply(tape.gradient(total, variables), variables)

    @tf.function
    def predict_all(X):
        return [branch(tensor_feed(layout, X * keep[b] + fill[b]), training=False) for b, branch in enumerate(branches)]

    order = epoch_order(train.n_rows, recipe.epochs, seed)
    train_all(tf.constant(train.X[order]), tf.constant(train.y[order]))
    raw = predict_all(tf.constant(test.X))
    return np.array([metric(test.y, as_predictions(out.numpy(), model)) for out in raw]), branches


@dataclass(frozen=True)
class Budget:
    """How much retraining a run may spend: at most ``max_units`` units, or about ``seconds`` seconds."""

    max_units: int | None = None
    seconds: float | None = None

    @classmethod
    def parse(cls, text: str | None) -> Budget:
        """``"8"`` ablates the 8 most important units; ``"300s"`` stops starting new units after 300 s."""
        if text is None or text == "":
            return cls()
        value = text.strip().lower()
        try:
            if value.endswith("s"):
                seconds = float(value[:-1])
                if seconds > 0:
                    return cls(seconds=seconds)
            elif int(value) > 0:
                return cls(max_units=int(value))
        except ValueError:
            pass
        raise FeatureAuditError(f"--ablation-budget {text!r}: give a number of features (8) or seconds (300s)")


@dataclass(frozen=True)
class AblationRun:
    """What :func:`ablation_importance` measured, one column per seed that ran."""

    importances: np.ndarray  # (n_units, n_seeds): paired importances; NaN rows for units a budget left out
    weights: np.ndarray | None  # (n_features, n_seeds): first-layer |W| of each seed's baseline; None if unreadable
    weights_error: str | None  # why weight_magnitudes could not read the baseline, when it could not
    details: dict[str, Any]


def ablation_importance(
    model,
    train: Split,
    test: Split,
    *,
    metric: Metric,
    recipe: Recipe,
    n_seeds: int = 5,
    max_seeds: int = MAX_SEEDS,
    relevance: float | None = RELEVANCE,
    random_state: int | None = None,
    units: dict[str, list[int]] | None = None,
    constants: np.ndarray,
    budget: Budget = Budget(),
    progress: Callable[[str, int, int], None] | None = None,
) -> AblationRun:
    """Paired drop-column importances ``(n_units, n_seeds)`` (NaN where a budget cut), the baselines' |W|, timings.

    Per seed, the baseline and every ablated variant share one initialisation and one row order,
    so their difference isolates the unit. ``units`` are taken in order: put the most important
    first when a budget may cut the list short. Without a time budget all units of a seed train
    in one fused model; with one, they train in batches so the run can stop between them.

    After ``n_seeds`` seeds, one more is added at a time (the baseline and every unit ablated so far,
    in the same batches as before) while :func:`needs_more_seeds` gives a reason, fewer than
    ``max_seeds`` have run and the time budget is not spent. Seeds are the first of
    ``ablation_seeds(max(n_seeds, max_seeds), random_state)``, so a run that added seeds gives the
    numbers of a run asked for that many.
    """
    units = units or {str(j): [j] for j in range(train.X.shape[1])}
    row = {name: i for i, name in enumerate(units)}
    names = list(units)[: budget.max_units] if budget.max_units else list(units)
    size = max(1, min(4, len(names))) if budget.seconds else max(1, len(names))
    chunks = [names[first : first + size] for first in range(0, len(names), size)]
    seeds = ablation_seeds(max(n_seeds, max_seeds), random_state)
    importances = np.full((len(units), len(seeds)), np.nan)
    weights = np.full((len(train.features), len(seeds)), np.nan)
    baselines = np.full(len(seeds), np.nan)
    weights_error: str | None = None
    timings: list[dict[str, Any]] = []
    started = time.perf_counter()

    def spent() -> bool:
        return bool(budget.seconds) and time.perf_counter() - started > budget.seconds

    def retrain(k: int, c: int, label: str, total: int) -> None:
        """Seed ``k``, batch ``c`` of units (the first batch also trains the baseline); fills the arrays above."""
        nonlocal weights_error
        tick = time.perf_counter()
        scores, branches = fused_retrain_scores(
            model, train, test, metric=metric, recipe=recipe, seed=seeds[k], constants=constants,
            units=([[]] if c == 0 else []) + [units[n] for n in chunks[c]],
        )
        if c == 0:  # the baseline: its score pairs with every unit of this seed; its |W| are one retrained sample
            baselines[k] = scores[0]
            scores = scores[1:]
            if weights_error is None:
                try:
                    weights[:, k] = weight_magnitudes(branches[0], train.features)
                except Exception as exc:  # a layer it cannot look through must not cost the ablation result
                    weights_error = str(exc)
        for name, score in zip(chunks[c], scores):
            importances[row[name], k] = metric.degradation(float(baselines[k]), score)
        seconds = round(time.perf_counter() - tick, 3)
        timings.append({"seed": seeds[k], "units": len(chunks[c]), "baseline": c == 0, "seconds": seconds})
        if progress is not None:
            progress(f"seed {label}: {len(chunks[c])} ablations retrained in {seconds} s", len(timings), total)

    done = 0  # batches measured with every seed
    for c in range(len(chunks)):
        for k in range(n_seeds):
            retrain(k, c, f"{k + 1}/{n_seeds}", len(chunks) * n_seeds)
        done = c + 1
        if spent():
            break
    n_run, added, first_calls = n_seeds, [], len(timings)
    measured = [name for chunk in chunks[:done] for name in chunk]
    reason = needs_more_seeds({name: importances[row[name], :n_run] for name in measured}, relevance=relevance)
    while reason and n_run < max_seeds and not spent():
        added.append(reason)
        for c in range(done):
            retrain(n_run, c, f"{n_run + 1} (added: {reason})", first_calls + done * len(added))
        n_run += 1
        reason = needs_more_seeds({name: importances[row[name], :n_run] for name in measured}, relevance=relevance)
    importances = importances[:, :n_run]
    details = {
        "seeds": seeds[:n_run],
        "n_seeds": n_run,
        "n_seeds_requested": n_seeds,
        "max_seeds": max_seeds,
        "seeds_added": added,
        "seeds_note": seeds_note(n_seeds, n_run, added, reason, budget_spent=bool(reason) and n_run < max_seeds),
        "baselines": [float(b) for b in baselines[:n_run]],
        "timings": timings,
        "seconds": round(time.perf_counter() - started, 3),
        "not_ablated": [n for n in units if np.isnan(importances[row[n]]).any()],
    }
    return AblationRun(importances, None if weights_error else weights[:, :n_run], weights_error, details)


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
    """A fresh, uncompiled copy of ``model`` whose initialisers and dropout draw from ``seed``."""
    import keras

    counter = itertools.count()

    def clone_layer(layer):
        config = _seed_config(layer.get_config(), seed, counter)
        return layer.__class__.from_config(config)

    return keras.models.clone_model(model, clone_function=clone_layer)


def _fresh_optimizer(model):
    """A new optimizer with the compiled one's settings (learning rate, betas, …)."""
    return model.optimizer.__class__.from_config(model.optimizer.get_config())


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
            by_rank = sorted(features, key=lambda f: result.rank[result.features.index(f)] if f in result.features else 10**9)
            return by_rank
    return list(features)


def audit_ablation(
    version: ModelVersion,
    *,
    n_seeds: int = 5,
    max_seeds: int = MAX_SEEDS,
    seed: int = 0,
    budget: Budget = Budget(),
    priority: Any = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[ImportanceResult]:
    """Drop-column importance by retraining, and the first-layer |W| of the retrained baselines: two results.

    With a ``priority`` result (permutation importance) the most important features are ablated first.
    Without a train split both results are skipped, saying why.
    """
    features = list(version.features)
    if version.train_path is None:
        reason = f"no train split in {version.folder.name}: retraining needs train.parquet"
        return [
            ImportanceResult.not_ok("ablation", "behavioural", features, status="skipped", reason=reason),
            ImportanceResult.not_ok("weights_retrained", "weight-based", features, status="skipped", reason=reason),
        ]
    if n_seeds < 1:
        raise FeatureAuditError(f"n_seeds={n_seeds}: retrain-ablation needs at least 1 seed (5 by default)")
    model = load_model(Path(version.model_path))
    train = load_split(Path(version.train_path), version)
    test = load_split(Path(version.test_path), version)
    metric = get_metric(version.manifest.metric, version.task, compiled_loss_name(model))
    recipe = Recipe.from_manifest(version.manifest.training)
    clusters = correlated_clusters(test.X, features, random_state=seed)
    measured = importance_units(features, version.manifest.groups, clusters)
    # Features in priority order (a budget keeps the first), then groups and clusters.
    units = {f: measured[f] for f in priority_order(features, priority)}
    units.update({name: cols for name, cols in measured.items() if name not in units})
    run = ablation_importance(
        model, train, test, metric=metric, recipe=recipe, n_seeds=n_seeds, max_seeds=max_seeds, random_state=seed,
        units=units, constants=ablation_constants(train, version.categorical), budget=budget, progress=progress,
    )
    ordered = np.array([run.importances[list(units).index(name)] for name in measured])  # back in unit order
    return [
        _ablation_result(ordered, run.details, measured, features, clusters, metric=metric, recipe=recipe),
        _retrained_weights_result(run, features, recipe),
    ]


def _ablation_result(
    ordered: np.ndarray,
    details: dict[str, Any],
    measured: dict[str, list[int]],
    features: list[str],
    clusters: list,
    *,
    metric: Metric,
    recipe: Recipe,
) -> ImportanceResult:
    """The paired drop-column result over the features that were ablated, groups and clusters in its details."""
    kept = [f for f in features if f not in details["not_ablated"]]
    groups, cluster_records = unit_records(ordered, measured, features, clusters)
    per_seed: dict[int, float] = {}
    for timing in details["timings"]:
        per_seed[timing["seed"]] = per_seed.get(timing["seed"], 0.0) + timing["seconds"]
    n_units = len(measured) - len(details["not_ablated"])
    notes = [*NOTES, details["seeds_note"],
             f"{details['n_seeds']} seeds × {n_units} units, {recipe.epochs} epochs, batch {recipe.batch_size}; "
             "retraining time per seed: " + ", ".join(f"{seconds:.1f} s" for seconds in per_seed.values()) + "."]
    if details["not_ablated"]:
        notes.append(f"Budget reached: not ablated: {', '.join(details['not_ablated'])}.")
    return ImportanceResult.from_samples(
        "ablation", "behavioural", kept, ordered[[features.index(f) for f in kept]], metric=metric.name,
        notes=notes, sampling="seeds",
        details={**details, "epochs": recipe.epochs, "batch_size": recipe.batch_size, "groups": groups,
                 "clusters": cluster_records},
    )


def _retrained_weights_result(run: AblationRun, features: list[str], recipe: Recipe) -> ImportanceResult:
    """First-layer |W| of each seed's retrained baseline, one sample per seed; skipped when they cannot be read."""
    if run.weights is None:
        return ImportanceResult.not_ok("weights_retrained", "weight-based", features, status="skipped",
                                       reason=run.weights_error or "the retrained baselines' weights were not read")
    seeds = run.details["seeds"]
    return ImportanceResult.from_samples(
        "weights_retrained", "weight-based", features, run.weights, sampling="seeds",
        notes=(RETRAINED_WEIGHTS_NOTE, f"{len(seeds)} retrainings (the ablation's seeds), {recipe.epochs} epochs, "
               f"batch {recipe.batch_size}; the interval is over those retrainings."),
        details={"seeds": seeds, "epochs": recipe.epochs, "batch_size": recipe.batch_size},
    )


@task(name="ablation")
def ablation_task(
    version: ModelVersion,
    *,
    n_seeds: int = 5,
    seed: int = 0,
    budget: Budget = Budget(),
    priority: Any = None,
) -> list[ImportanceResult]:
    """Retrain-ablation importance and the retrained baselines' |W| (see :func:`audit_ablation`), logging progress."""
    logger = get_run_logger()

    def progress(message: str, done: int, total: int) -> None:
        logger.info("ablation: %s (%d/%d)", message, done, total)

    results = audit_ablation(version, n_seeds=n_seeds, seed=seed, budget=budget, priority=priority, progress=progress)
    if results[0].ok:
        logger.info("ablation: %s", results[0].details["seeds_note"])
    return results
