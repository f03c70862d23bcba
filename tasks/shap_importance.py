"""SHAP: global importance as mean |SHAP value| per feature, with a bootstrap interval over rows.

A gradient explainer serves differentiable single-input models; models with named or integer
(embedding) inputs are explained over the raw feature matrix by a model-agnostic explainer that
calls our batched forward function. The background is a seeded sample of the training split,
else of the test split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prefect import get_run_logger, task

from tasks.modeling import Forward
from tasks.result import ImportanceResult
from tasks.sources import ModelVersion, load_model, load_split

NOTES = (
    "Mean |SHAP value| over explained test rows: how far, on average, each feature moves a single prediction.",
    "SHAP attributes predictions, not loss: a feature can move predictions a lot without improving them.",
)


@dataclass(frozen=True, eq=False)
class ShapValues:
    """Per-row attributions ``values`` (rows, features[, classes]) and how they were obtained."""

    values: np.ndarray
    base_value: np.ndarray
    rows: np.ndarray
    explainer: str
    reason: str
    n_background: int


def explain(
    model,
    features: tuple[str, ...],
    X_explain: np.ndarray,
    background: np.ndarray,
    *,
    categorical: tuple[str, ...] = (),
) -> tuple[np.ndarray, np.ndarray, str, str]:
    """SHAP values for ``X_explain`` with the explainer that suits the model, and why it was chosen."""
    import shap

    forward = Forward(model, features)
    if not forward.layout.named:
        explainer = shap.GradientExplainer(model, background)
        values = np.asarray(explainer.shap_values(X_explain))
        base = np.atleast_1d(np.asarray(forward(background)).mean(axis=0))
        name, reason = "GradientExplainer", "a single-input differentiable model"
    else:
        summary = shap.kmeans(background, min(10, len(background)))
        explainer = shap.KernelExplainer(forward, summary)
        values = np.asarray(explainer.shap_values(X_explain, silent=True))
        base = np.atleast_1d(np.asarray(explainer.expected_value))
        name, reason = "KernelExplainer", "named inputs (embeddings take integer codes, which gradients cannot explain)"
    if values.ndim == 3 and values.shape[-1] == 1:
        values = values[..., 0]
    return values, base, name, reason


def shap_importance(
    model,
    features: tuple[str, ...],
    X: np.ndarray,
    background_pool: np.ndarray,
    *,
    n_rows: int = 200,
    n_background: int = 100,
    n_bootstrap: int = 200,
    random_state: int | None = None,
    categorical: tuple[str, ...] = (),
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], ShapValues]:
    """Bootstrap draws of mean |SHAP| per feature ``(n_features, n_bootstrap)``, their 95% interval, raw values."""
    rng = np.random.default_rng(random_state)
    rows = np.sort(rng.choice(len(X), size=min(n_rows, len(X)), replace=False))
    background = background_pool[rng.choice(len(background_pool), size=min(n_background, len(background_pool)), replace=False)]
    values, base, name, reason = explain(model, features, X[rows], background, categorical=categorical)
    per_row = np.abs(values) if values.ndim == 2 else np.abs(values).sum(axis=2)
    draws = np.stack([per_row[rng.integers(0, len(rows), len(rows))].mean(axis=0) for _ in range(n_bootstrap)], axis=1)
    interval = (np.percentile(draws, 2.5, axis=1), np.percentile(draws, 97.5, axis=1))
    raw = ShapValues(values, base, rows, name, reason, len(background))
    return draws, interval, raw


@task(name="shap")
def shap_task(version: ModelVersion, *, seed: int = 0, n_rows: int = 200) -> ImportanceResult:
    """Global SHAP importance with a bootstrap interval."""
    logger = get_run_logger()
    model = load_model(Path(version.model_path))
    test = load_split(Path(version.test_path), version)
    pool_split = load_split(Path(version.train_path), version) if version.train_path else test
    draws, interval, raw = shap_importance(
        model, version.features, test.X, pool_split.X,
        n_rows=n_rows, random_state=seed, categorical=version.categorical,
    )
    logger.info("shap: %s explained %d rows", raw.explainer, len(raw.rows))
    return ImportanceResult.from_samples(
        "shap", "behavioural", version.features, draws, interval=interval,
        notes=(*NOTES, f"Explainer: {raw.explainer}, chosen for {raw.reason}; "
               f"background: {raw.n_background} rows of the {'training' if version.train_path else 'test'} split."),
        details={"explainer": raw.explainer, "n_rows": len(raw.rows), "n_background": raw.n_background},
    )
