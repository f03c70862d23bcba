"""Retrain-ablation (drop-column) importance: retrain without a feature and measure the loss.

For each feature and each seed, a fresh copy of the architecture (same loss and optimizer as
compiled, the manifest's training recipe) is trained with that feature held at a constant (its
training mean, or its mode for a categorical) in both splits. The baseline is retrained with the
same seeds, so importance per seed is a paired difference: ablated metric minus baseline metric.
Seeds reach every initialiser, dropout layer and the row order, never the global random state.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prefect import get_run_logger, task

from tasks.clusters import correlated_clusters, importance_units, unit_records
from tasks.errors import FeatureAuditError
from tasks.metrics import Metric, get_metric
from tasks.modeling import as_predictions, compiled_loss_name, input_layout, model_feed, tensor_feed
from tasks.result import ImportanceResult
from tasks.sources import ModelVersion, Split, load_model, load_split

NOTES = (
    "Retrains the model from scratch with the feature held constant; importance is the paired loss increase per seed.",
    "Trustworthy but costly, and noisy across seeds: read the interval, not only the mean.",
    "A feature whose information another feature also carries (a correlated partner) can look unimportant here; "
    "manifest groups and clusters of correlated features are therefore also retrained without, jointly.",
)


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
) -> np.ndarray:
    """Test metric of every unit's retrain for one seed, all trained together in one compiled loop.

    Branch ``b`` is a fresh copy of the architecture initialised from ``seed`` (as in
    :func:`retrain_score`) that sees the rows with ``units[b]`` held constant. Each step feeds one
    batch to every branch and applies the gradient of the summed losses, so each branch's
    gradients are its own; the whole schedule runs inside one ``tf.function``, which removes
    Keras' per-step and per-fit overhead.
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
    return np.array([metric(test.y, as_predictions(out.numpy(), model)) for out in raw])


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


def ablation_importance(
    model,
    train: Split,
    test: Split,
    *,
    metric: Metric,
    recipe: Recipe,
    n_seeds: int = 3,
    random_state: int | None = None,
    units: dict[str, list[int]] | None = None,
    constants: np.ndarray,
    budget: Budget = Budget(),
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Paired drop-column importances of shape ``(n_units, n_seeds)`` (NaN where the budget ran out), and timings.

    Per seed, the baseline and every ablated variant share one initialisation and one row order,
    so their difference isolates the unit. ``units`` are taken in order: put the most important
    first when a budget may cut the list short. Without a time budget all units of a seed train
    in one fused model; with one, they train in batches so the run can stop between them.
    """
    units = units or {str(j): [j] for j in range(train.X.shape[1])}
    names = list(units)[: budget.max_units] if budget.max_units else list(units)
    batch = max(1, min(4, len(names))) if budget.seconds else max(1, len(names))
    seeds = ablation_seeds(n_seeds, random_state)
    importances = np.full((len(units), n_seeds), np.nan)
    baselines: list[float] = []
    timings: list[dict[str, Any]] = []
    started = time.perf_counter()
    done = 0
    for first in range(0, len(names), batch):
        chunk = names[first : first + batch]
        for k, seed in enumerate(seeds):
            tick = time.perf_counter()
            with_baseline = first == 0
            scores = fused_retrain_scores(
                model, train, test, metric=metric, recipe=recipe, seed=seed, constants=constants,
                units=([[]] if with_baseline else []) + [units[n] for n in chunk],
            )
            if with_baseline:
                baselines.append(float(scores[0]))
                scores = scores[1:]
            for name, score in zip(chunk, scores):
                importances[list(units).index(name), k] = metric.degradation(baselines[k], score)
            seconds = round(time.perf_counter() - tick, 3)
            timings.append({"seed": seed, "units": len(chunk), "baseline": with_baseline, "seconds": seconds})
            if progress is not None:
                progress(f"seed {k + 1}/{n_seeds}: {len(chunk)} ablations retrained in {seconds} s", done + 1,
                         -(-len(names) // batch) * n_seeds)
            done += 1
        if budget.seconds and time.perf_counter() - started > budget.seconds:
            break
    ablated_names = [n for n in units if not np.isnan(importances[list(units).index(n)]).any()]
    details = {
        "seeds": seeds,
        "baselines": baselines,
        "timings": timings,
        "seconds": round(time.perf_counter() - started, 3),
        "not_ablated": [n for n in units if n not in ablated_names],
    }
    return importances, details


def ablation_seeds(n_seeds: int, random_state: int | None) -> list[int]:
    """Per-seed integers drawn up front from one SeedSequence."""
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


@task(name="ablation")
def ablation_task(
    version: ModelVersion,
    *,
    n_seeds: int = 3,
    seed: int = 0,
    budget: Budget = Budget(),
    priority: Any = None,
) -> ImportanceResult:
    """Drop-column importance by retraining, paired against a same-seed baseline.

    With a ``priority`` result (permutation importance) the most important features are ablated first.
    """
    features = list(version.features)
    if version.train_path is None:
        return ImportanceResult.not_ok(
            "ablation", "behavioural", features, status="skipped",
            reason=f"no train split in {version.folder.name}: retraining needs train.parquet",
        )
    logger = get_run_logger()
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

    def progress(message: str, done: int, total: int) -> None:
        logger.info("ablation: %s (%d/%d)", message, done, total)

    importances, details = ablation_importance(
        model, train, test, metric=metric, recipe=recipe, n_seeds=n_seeds, random_state=seed, units=units,
        constants=ablation_constants(train, version.categorical), budget=budget, progress=progress,
    )
    kept = [f for f in features if f not in details["not_ablated"]]
    ordered = np.array([importances[list(units).index(name)] for name in measured])  # back in unit order
    groups, cluster_records = unit_records(ordered, measured, features, clusters)
    per_seed = {}
    for timing in details["timings"]:
        per_seed[timing["seed"]] = per_seed.get(timing["seed"], 0.0) + timing["seconds"]
    notes = [*NOTES, f"{n_seeds} seeds × {len(units) - len(details['not_ablated'])} units, {recipe.epochs} epochs, "
             f"batch {recipe.batch_size}; retraining time per seed: "
             + ", ".join(f"{seconds:.1f} s" for seconds in per_seed.values()) + "."]
    if details["not_ablated"]:
        notes.append(f"Budget reached: not ablated: {', '.join(details['not_ablated'])}.")
    details.update({"epochs": recipe.epochs, "batch_size": recipe.batch_size, "n_seeds": n_seeds,
                    "groups": groups, "clusters": cluster_records})
    return ImportanceResult.from_samples(
        "ablation", "behavioural", kept, ordered[[features.index(f) for f in kept]], metric=metric.name,
        notes=notes, details=details,
    )
