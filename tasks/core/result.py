"""The one result shape every importance method returns.

Comparison, rendering and ``results.json`` consume only :class:`ImportanceResult`,
so a new method needs no change downstream.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats

Status = Literal["ok", "failed", "skipped"]
Kind = Literal["weight-based", "behavioural", "effect", "interaction"]
# Where a method's samples come from, which decides how two features are tested against each other
# (tasks/core/ranking.py): independent "repeats" or paired "seeds" (t-test of the per-sample differences),
# "bootstrap" draws (the share of draws that order them the other way), or a "single" value (no test).
Sampling = Literal["repeats", "seeds", "bootstrap", "single"]


@dataclass(frozen=True)
class Details:
    """What one method says about its own run beyond the importances: typed fields, one subclass per method.

    Each method defines its subclass next to the code that fills it (``PermutationDetails``,
    ``AblationDetails``, ``RetrainedWeightsDetails``, ``ShapDetails``); readers use its attributes.
    :meth:`to_json` is the object ``results.json`` holds, its keys the field names in field order.
    """

    def to_json(self) -> dict[str, Any]:
        return json_ready(dataclasses.asdict(self))


@dataclass(frozen=True, eq=False)
class ImportanceResult:
    """Per-feature importances of one method, with their spread and ranks.

    ``importances`` has shape ``(n_features, n_samples)``: repeats, seeds or
    bootstrap draws, whatever the method's own variation is. ``rank`` is 1 for
    the most important feature. ``low``/``high`` bound a 95% interval of the mean
    (equal to the mean when the method has a single sample). ``sampling`` says what the
    samples are; column ``s`` of ``importances`` is the same repeat, seed or bootstrap draw for
    every feature, so features can be compared sample by sample.
    """

    method: str
    kind: Kind
    features: tuple[str, ...]
    importances: np.ndarray
    importances_mean: np.ndarray
    importances_std: np.ndarray
    low: np.ndarray
    high: np.ndarray
    rank: np.ndarray
    status: Status = "ok"
    notes: tuple[str, ...] = ()
    error: str | None = None
    metric: str | None = None
    details: Details | None = None  # None for methods without any (weights) and for failed or skipped results
    sampling: Sampling = "single"
    #: What an importance is material against, in the importance's own units: the test loss of a constant
    #: prediction (permutation, ablation) or the target's spread (SHAP); None where nothing applies.
    reference: float | None = None

    @classmethod
    def from_samples(
        cls,
        method: str,
        kind: Kind,
        features: list[str] | tuple[str, ...],
        importances: np.ndarray,
        *,
        notes: list[str] | tuple[str, ...] = (),
        metric: str | None = None,
        details: Details | None = None,
        interval: tuple[np.ndarray, np.ndarray] | None = None,
        sampling: Sampling | None = None,
        reference: float | None = None,
    ) -> ImportanceResult:
        """Summarise ``(n_features, n_samples)`` draws: mean, std, 95% interval, rank.

        The default interval is the t-interval of the mean over samples; pass
        ``interval`` when the method has a better one (a bootstrap, say). ``sampling`` defaults
        to "repeats" for several samples and "single" for one.
        """
        samples = np.asarray(importances, dtype=float)
        if samples.ndim == 1:
            samples = samples[:, None]
        if samples.shape[0] != len(features):
            raise ValueError(f"{method}: {samples.shape[0]} rows of importances for {len(features)} features")
        mean = samples.mean(axis=1)
        n = samples.shape[1]
        std = samples.std(axis=1, ddof=1) if n > 1 else np.zeros_like(mean)
        if interval is not None:
            low, high = (np.asarray(a, dtype=float) for a in interval)
        elif n > 1:
            half = stats.t.ppf(0.975, n - 1) * std / np.sqrt(n)
            low, high = mean - half, mean + half
        else:
            low, high = mean.copy(), mean.copy()
        return cls(
            method=method,
            kind=kind,
            features=tuple(features),
            importances=samples,
            importances_mean=mean,
            importances_std=std,
            low=low,
            high=high,
            rank=rank_descending(mean),
            notes=tuple(notes),
            metric=metric,
            details=details,
            sampling=sampling or ("repeats" if n > 1 else "single"),
            reference=reference,
        )

    @classmethod
    def not_ok(
        cls,
        method: str,
        kind: Kind,
        features: list[str] | tuple[str, ...],
        *,
        status: Status,
        reason: str,
        notes: list[str] | tuple[str, ...] = (),
    ) -> ImportanceResult:
        """A method that failed (``reason`` is the error) or was skipped (``reason`` says why)."""
        empty = np.full(len(features), np.nan)
        return cls(
            method=method,
            kind=kind,
            features=tuple(features),
            importances=np.full((len(features), 0), np.nan),
            importances_mean=empty,
            importances_std=empty,
            low=empty,
            high=empty,
            rank=np.zeros(len(features), dtype=int),
            status=status,
            notes=tuple(notes),
            error=reason,
        )

    def subset(self, features: tuple[str, ...] | list[str]) -> ImportanceResult:
        """The same result restricted to ``features`` (in that order) and ranked again among them."""
        position = {name: i for i, name in enumerate(self.features)}
        rows = [position[f] for f in features]
        return ImportanceResult(
            method=self.method,
            kind=self.kind,
            features=tuple(features),
            importances=self.importances[rows],
            importances_mean=self.importances_mean[rows],
            importances_std=self.importances_std[rows],
            low=self.low[rows],
            high=self.high[rows],
            rank=rank_descending(self.importances_mean[rows]),
            status=self.status,
            notes=self.notes,
            error=self.error,
            metric=self.metric,
            details=self.details,
            sampling=self.sampling,
            reference=self.reference,
        )

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def n_samples(self) -> int:
        return int(self.importances.shape[1])

    def details_json(self) -> dict[str, Any]:
        """The method's details as ``results.json`` holds them: an empty object when it has none."""
        return self.details.to_json() if self.details is not None else {}

    def records(self) -> list[dict[str, Any]]:
        """One ``{feature, importance, std, low, high, rank}`` record per feature, in feature order."""
        if not self.ok:
            return []
        return [
            {
                "feature": name,
                "importance": float(self.importances_mean[i]),
                "std": float(self.importances_std[i]),
                "low": float(self.low[i]),
                "high": float(self.high[i]),
                "rank": int(self.rank[i]),
            }
            for i, name in enumerate(self.features)
        ]

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form used in ``results.json``."""
        return {
            "method": self.method,
            "kind": self.kind,
            "status": self.status,
            "error": self.error if self.status == "failed" else None,
            "reason": self.error if self.status == "skipped" else None,
            "metric": self.metric,
            "n_samples": self.n_samples,
            "sampling": self.sampling,
            "reference": json_ready(self.reference),
            "notes": list(self.notes),
            "features": self.records(),
            "details": self.details_json(),
        }


def rank_descending(values: np.ndarray) -> np.ndarray:
    """Rank 1 for the largest value; ties share the smaller rank."""
    return stats.rankdata(-np.asarray(values, dtype=float), method="min").astype(int)


def json_ready(value: Any) -> Any:
    """``value`` as JSON holds it: numpy scalars and arrays as Python numbers and lists, tuples as lists,
    keys as strings, NaN and infinities as null (results.json stays strict JSON)."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist())
    if isinstance(value, np.generic):
        return json_ready(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
