"""Row-decomposable metrics: each is the mean of a per-row loss, so it can be streamed in chunks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats

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


def constant_prediction(y_train: np.ndarray, y_test: np.ndarray, task: str) -> np.ndarray:
    """What a model that learnt nothing predicts for each test row: the training mean, prevalence, or class shares."""
    if task == "multiclass":
        classes = int(max(y_train.max(), y_test.max())) + 1
        shares = np.bincount(y_train.astype(np.int64), minlength=classes) / len(y_train)
        return np.tile(shares, (len(y_test), 1))
    return np.full(len(y_test), float(np.mean(y_train)))


def null_loss(metric: Metric, y_test: np.ndarray, y_train: np.ndarray | None, task: str) -> float | None:
    """The test loss of a model that learnt nothing (:func:`constant_prediction`, from the training target, or the
    test target's when there is no training split): what a loss-based importance is material against. None for a
    metric where higher is better (accuracy): its drops are not losses."""
    if metric.higher_is_better:
        return None
    return metric(y_test, constant_prediction(y_test if y_train is None else y_train, y_test, task))


@dataclass(frozen=True)
class ModelFit:
    """Whether the model beats a constant prediction on the test split: both losses, and the 95% interval of their
    mean per-row difference (model minus constant)."""

    metric: str
    loss: float
    null_loss: float
    difference_low: float
    difference_high: float
    n_rows: int
    beats_constant: bool  # better than the constant at 95%: the difference's interval wholly on the good side

    def sentence(self) -> str:
        """'The model beats a constant prediction on the test split: mse 0.12 against 1.03 …', or that it does not."""
        said = (f"{self.metric} {self.loss:.4g} against {self.null_loss:.4g} for a constant prediction over "
                f"{self.n_rows} test rows (95% interval of the difference [{self.difference_low:.3g}, "
                f"{self.difference_high:.3g}])")
        verb = "beats" if self.beats_constant else "does not beat"
        return f"The model {verb} a constant prediction on the test split: {said}."


def model_fit(metric: Metric, y: np.ndarray, pred: np.ndarray, constant: np.ndarray) -> ModelFit:
    """The model's and a constant prediction's test loss, with a t-interval of the mean per-row difference."""
    difference = np.asarray(metric.per_row(y, pred), dtype=float) - np.asarray(metric.per_row(y, constant), dtype=float)
    n = len(difference)
    mean = float(difference.mean())
    half = float(stats.t.ppf(0.975, n - 1) * difference.std(ddof=1) / np.sqrt(n)) if n > 1 else float("inf")
    low, high = mean - half, mean + half
    beats = low > 0 if metric.higher_is_better else high < 0
    return ModelFit(metric.name, metric(y, pred), metric(y, constant), low, high, n, bool(beats))
