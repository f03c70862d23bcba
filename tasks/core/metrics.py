"""Row-decomposable metrics: each is the mean of a per-row loss, so it can be streamed in chunks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tasks.core.errors import ManifestError

_EPS = 1e-7


@dataclass(frozen=True)
class Metric:
    """A metric as the mean of ``per_row(y, pred)``; ``higher_is_better`` fixes the sign of importance."""

    name: str
    higher_is_better: bool
    per_row: Callable[[np.ndarray, np.ndarray], np.ndarray]

    def __call__(self, y: np.ndarray, pred: np.ndarray) -> float:
        return float(np.mean(self.per_row(y, pred)))

    def degradation(self, baseline: float | np.ndarray, perturbed: float | np.ndarray) -> float | np.ndarray:
        """How much worse ``perturbed`` is than ``baseline``: positive means the feature mattered."""
        return baseline - perturbed if self.higher_is_better else perturbed - baseline


def _squared(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    return (pred - y) ** 2


def _absolute(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    return np.abs(pred - y)


def _log_loss(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    if pred.ndim == 1:  # binary: probability of class 1
        p = np.clip(pred, _EPS, 1 - _EPS)
        return -(y * np.log(p) + (1 - y) * np.log(1 - p))
    p = np.clip(np.take_along_axis(pred, y.astype(np.int64)[..., None], axis=-1)[..., 0], _EPS, 1.0)
    return -np.log(p)


def _correct(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    labels = (pred > 0.5).astype(np.int64) if pred.ndim == 1 else pred.argmax(axis=-1)
    return (labels == y).astype(np.float64)


METRICS: dict[str, Metric] = {
    "mse": Metric("mse", False, _squared),
    "mae": Metric("mae", False, _absolute),
    "log_loss": Metric("log_loss", False, _log_loss),
    "accuracy": Metric("accuracy", True, _correct),
}
ALIASES = {
    "mean_squared_error": "mse",
    "meansquarederror": "mse",
    "mean_absolute_error": "mae",
    "meanabsoluteerror": "mae",
    "binary_crossentropy": "log_loss",
    "binarycrossentropy": "log_loss",
    "categorical_crossentropy": "log_loss",
    "sparse_categorical_crossentropy": "log_loss",
    "sparsecategoricalcrossentropy": "log_loss",
    "crossentropy": "log_loss",
    "logloss": "log_loss",
    "acc": "accuracy",
}
VALID_FOR = {
    "regression": ("mse", "mae"),
    "binary": ("log_loss", "accuracy"),
    "multiclass": ("log_loss", "accuracy"),
}
DEFAULT_FOR = {"regression": "mse", "binary": "log_loss", "multiclass": "log_loss"}


def get_metric(name: str | None, task: str, compiled_loss: str | None = None) -> Metric:
    """The manifest's metric, else the model's compiled loss where we know it, else the task's default."""
    for candidate, from_manifest in ((name, True), (compiled_loss, False)):
        if candidate is None:
            continue
        key = ALIASES.get(candidate.lower().replace(" ", "_"), candidate.lower())
        if key in VALID_FOR[task]:
            return METRICS[key]
        if from_manifest:
            raise ManifestError(
                f"manifest.json metric {name!r} does not suit a {task} task; use one of {', '.join(VALID_FOR[task])}"
            )
    return METRICS[DEFAULT_FOR[task]]
