"""Interactions: Friedman's H-statistic for the pairs among the top features, and each one's total interaction.

For the top features by permutation importance (by SHAP when permutation did not run; ``interactions_features``
of them, so at most 15 pairs at the default 6), on a seeded sample of test rows (``interactions_rows``) and a
coarse grid per feature (``interactions_grid`` of its quantiles, or its levels; :func:`tasks.methods.effects.grid_of`,
the effects method's grids), each row's value snapped to its nearest grid point:

- **Pairs** (Friedman and Popescu 2008): every row with the pair set to every grid combination goes through the
  model as one stacked batch; from it the two-way partial dependence ``PD_jk`` and the one-way ``PD_j`` and
  ``PD_k``, all centred over the rows, and at the rows' own values
  ``H²_jk = Σ (PD_jk − PD_j − PD_k)² / Σ PD_jk²``: the share of the pair's joint effect that is not the sum of
  their separate effects. ``H`` is its square root. The unnormalised statistic, ``√ mean (PD_jk − PD_j − PD_k)²``
  on the output's scale, is kept beside it: H is unstable where the main effects are weak, and a large H of a
  pair that barely moves the output says little.
- **Each feature's total interaction**: from one batch of each row with the feature set to every grid value (its
  ICE curves), ``H²_j = Σ (f − PD_j − PD_−j)² / Σ f²`` (Friedman's, over the output's variance), and the *joint
  share* ``Σ (f − PD_j − PD_−j)² / (Σ (f − PD_j − PD_−j)² + Σ PD_j²)``: how much of the feature's own effect is
  joint with others (1 for a factor of a pure product, 0 for an additive feature).
- **Intervals**: 95% bootstrap intervals over rows (``BOOTSTRAP`` draws) for every statistic. A pair whose H
  interval reaches below ``RESOLVED`` is *not resolved*: its interaction cannot be told from none.
- **Multiclass**: the sums run over the classes' probabilities together.

The method's result is each top feature's total ``H_j`` with its interval: shown, not judged as a ranking; the
verdict reads the pairs and joint shares from its details (:mod:`tasks.report.verdict`).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
from pydantic import Field

from tasks.core import charts
from tasks.core.options import MethodOptions
from tasks.core.result import Details, ImportanceResult
from tasks.methods.base import Context, Method, ResultSpec, Section
from tasks.methods.effects import (BLOCK_VALUES, bootstrap_result, bootstrap_weights, grid_of, ice_curves,
                                   sample_rows, top_features)
from tasks.methods.shap import raw_value

BOOTSTRAP = 200  # bootstrap draws over rows for every interval
RESOLVED = 0.05  # a pair's H interval reaching below this cannot be told from no interaction
SHOWN_PAIRS = 4  # the strongest pairs drawn as two-way PD heat maps
NOTES = (
    "Friedman's H² is the share of a pair's joint partial dependence that is not the sum of the two one-way "
    "partial dependences (0: they act separately; 1: only jointly); a feature's total H² is the share of the "
    "output's variance that is its interaction with all others. H is unstable where the main effects are weak: "
    "read it beside the unnormalised statistic, on the output's scale.",
)


class Options(MethodOptions):
    """The interactions method's own options."""

    interactions_features: int = Field(default=6, ge=2, le=12,
                                       description="top features whose pairs are measured (at most 66 pairs)")
    interactions_rows: int = Field(default=300, ge=20, description="test rows (a seeded sample) H is computed on")
    interactions_grid: int = Field(default=10, ge=3, le=30, description="grid points per feature for H")


@dataclass(frozen=True)
class PairInteraction:
    """Friedman's H of one pair, its 95% bootstrap interval, its unnormalised statistic (on the output's scale)
    with its interval, and whether its interval clears ``RESOLVED``."""

    first: str
    second: str
    h: float
    h_low: float
    h_high: float
    unnormalised: float
    unnormalised_low: float
    unnormalised_high: float

    @property
    def resolved(self) -> bool:
        return self.h_low >= RESOLVED

    @property
    def h2(self) -> float:
        return self.h ** 2


@dataclass(frozen=True)
class FeatureInteraction:
    """One top feature's total interaction: Friedman's H_j with its interval, and its joint share with its
    interval (the share of the feature's own effect that is joint with others)."""

    feature: str
    h: float
    h_low: float
    h_high: float
    joint: float
    joint_low: float
    joint_high: float


@dataclass(frozen=True)
class HeatMap:
    """A pair's two-way partial dependence on its grid (raw values), for the report."""

    first: str
    second: str
    first_grid: list[Any]
    second_grid: list[Any]
    pd: list[list[float]]  # [first grid point][second grid point], the output (summed over classes)


@dataclass(frozen=True)
class InteractionDetails(Details):
    """How the features were chosen, the budget, the pairs (strongest first), each feature's total interaction
    (strongest first), and the heat maps of the strongest pairs."""

    chosen_by: str
    rows: int
    grid: int
    bootstrap: int
    evaluations: int  # model evaluations the method made
    pairs: list[PairInteraction]
    features: list[FeatureInteraction]
    heat_maps: list[HeatMap]

    def pair(self, a: str, b: str) -> PairInteraction | None:
        return next((p for p in self.pairs if {p.first, p.second} == {a, b}), None)

    def strongest_partner(self, feature: str) -> PairInteraction | None:
        """The pair with ``feature`` whose H is largest."""
        mine = [p for p in self.pairs if feature in (p.first, p.second)]
        return max(mine, key=lambda p: p.h) if mine else None


# --- computing ------------------------------------------------------------------------------------------------


def snapped(values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Each value's nearest grid point (its index)."""
    return np.abs(np.asarray(values, dtype=float)[:, None] - grid[None, :]).argmin(axis=1)


def _centred(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``values`` ``(weightings, rows, outputs)`` minus their weighted mean over rows."""
    total = weights.sum(axis=1)[:, None, None]
    return values - (weights[:, :, None] * values).sum(axis=1, keepdims=True) / total


def _weighted_sum(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Σ over rows and outputs of ``weights`` × ``values`` ``(weightings, rows, outputs)``."""
    return (weights[:, :, None] * values).sum(axis=(1, 2))


def pair_statistics(tensor: np.ndarray, a: np.ndarray, b: np.ndarray, weights: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(H, unnormalised statistic) per weighting of the rows, from ``tensor`` ``(rows, grid_j, grid_k, outputs)``:
    each row's predictions with the pair set to every grid combination; ``a``, ``b`` the rows' own grid points."""
    n, gj, gk, k = tensor.shape
    total = weights.sum(axis=1)[:, None]
    flat = tensor.reshape(n, gj * gk, k)
    joint = np.einsum("wn,ngk->wgk", weights, flat) / total[:, :, None]  # PD_jk on the grid
    rows = np.arange(n)
    first = np.einsum("wn,nak->wak", weights, tensor[rows, :, b]) / total[:, :, None]  # PD_j: the row's own x_k
    second = np.einsum("wn,nbk->wbk", weights, tensor[rows, a, :]) / total[:, :, None]  # PD_k: the row's own x_j
    at_joint = _centred(joint[:, a * gk + b], weights)
    rest = at_joint - _centred(first[:, a], weights) - _centred(second[:, b], weights)
    numerator, denominator = _weighted_sum(rest ** 2, weights), _weighted_sum(at_joint ** 2, weights)
    h = np.sqrt(np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0))
    return np.minimum(h, 1.0), np.sqrt(numerator / weights.sum(axis=1))


def feature_statistics(ice: np.ndarray, a: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H_j, joint share) per weighting of the rows, from the ICE curves ``(rows, grid, outputs)`` and the rows' own
    grid points ``a``: f at the row is its curve at its own point, PD_−j(row) its curve averaged over the
    feature's snapped distribution, PD_j the curves' mean."""
    n, g, k = ice.shape
    total = weights.sum(axis=1)[:, None]
    rows = np.arange(n)
    share = np.stack([np.bincount(a, weights=w, minlength=g) for w in weights]) / total  # (weightings, grid)
    own = np.broadcast_to(ice[rows, a], (len(weights), n, k))  # f at each row
    pd_j = np.einsum("wn,ngk->wgk", weights, ice) / total[:, :, None]
    pd_rest = np.einsum("wg,ngk->wnk", share, ice)  # PD_−j at each row's other features
    f = _centred(own, weights)
    main = _centred(pd_j[:, a], weights)
    rest = f - main - _centred(pd_rest, weights)
    numerator = _weighted_sum(rest ** 2, weights)
    output, effect = _weighted_sum(f ** 2, weights), _weighted_sum(main ** 2, weights)
    h = np.sqrt(np.divide(numerator, output, out=np.zeros_like(numerator), where=output > 0))
    joint = np.divide(numerator, numerator + effect, out=np.zeros_like(numerator), where=numerator + effect > 0)
    return np.minimum(h, 1.0), joint


def pair_tensor(forward, X: np.ndarray, j: int, k: int, grid_j: np.ndarray, grid_k: np.ndarray, *,
                block_values: int = BLOCK_VALUES) -> np.ndarray:
    """Each row's predictions with columns ``j`` and ``k`` set to every grid combination: ``(rows, grid_j,
    grid_k, outputs)``, from one stacked batch per block of rows."""
    n, p = X.shape
    cells = len(grid_j) * len(grid_k)
    per_block = max(1, block_values // max(1, cells * p))
    first, second = np.repeat(grid_j, len(grid_k)), np.tile(grid_k, len(grid_j))
    parts = []
    for start in range(0, n, per_block):
        part = X[start:start + per_block]
        stacked = np.repeat(part, cells, axis=0)
        stacked[:, j] = np.tile(first, len(part))
        stacked[:, k] = np.tile(second, len(part))
        out = np.asarray(forward(stacked), dtype=float)
        parts.append(out.reshape(len(part), len(grid_j), len(grid_k), -1))
    return np.concatenate(parts)


def interactions_audit(subject, *, seed: int = 0, n_features: int = 6, rows: int = 300, grid: int = 10,
                       upstream: dict[str, list[ImportanceResult]] | None = None, draws: int = BOOTSTRAP,
                       block_values: int = BLOCK_VALUES) -> ImportanceResult:
    """Friedman's H for the pairs among the top features and each one's total interaction (see the module's
    docstring)."""
    features = subject.features
    chosen, chosen_by = top_features(upstream or {}, features, n_features)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 36]))
    X_all = np.asarray(subject.test.X, dtype=float)
    X = X_all[sample_rows(len(X_all), rows, rng)]
    weights = bootstrap_weights(len(X), draws, rng)
    columns = subject.adapter.columns
    forward = subject.forward()
    index = {name: features.index(name) for name in chosen}
    grids = {name: grid_of(X[:, index[name]], grid, categorical=columns[index[name]].categorical) for name in chosen}
    points = {name: snapped(X[:, index[name]], grids[name]) for name in chosen}
    evaluations = 0
    totals, per_feature = [], []
    for name in chosen:
        ice = ice_curves(forward, X, index[name], grids[name], block_values=block_values)
        evaluations += ice.shape[0] * ice.shape[1]
        h, joint = feature_statistics(ice, points[name], weights)
        totals.append(h)
        per_feature.append(FeatureInteraction(name, float(h[0]), *_interval(h[1:]), float(joint[0]),
                                              *_interval(joint[1:])))
    pairs, tensors = [], {}
    for first, second in combinations(chosen, 2):
        tensor = pair_tensor(forward, X, index[first], index[second], grids[first], grids[second],
                             block_values=block_values)
        evaluations += tensor.shape[0] * tensor.shape[1] * tensor.shape[2]
        h, raw = pair_statistics(tensor, points[first], points[second], weights)
        pairs.append(PairInteraction(first, second, float(h[0]), *_interval(h[1:]), float(raw[0]),
                                     *_interval(raw[1:])))
        tensors[(first, second)] = tensor
    pairs.sort(key=lambda p: -p.h)
    heat_maps = []
    for p in [p for p in pairs if p.resolved][:SHOWN_PAIRS]:
        mean = tensors[(p.first, p.second)].mean(axis=0).sum(axis=-1)
        heat_maps.append(HeatMap(p.first, p.second, _raw(grids[p.first], columns[index[p.first]]),
                                 _raw(grids[p.second], columns[index[p.second]]),
                                 [[float(f"{v:.6g}") for v in row] for row in mean]))
    details = InteractionDetails(chosen_by=chosen_by, rows=len(X), grid=grid, bootstrap=draws, evaluations=evaluations,
                                 pairs=pairs, features=sorted(per_feature, key=lambda f: -f.h), heat_maps=heat_maps)
    return bootstrap_result("interactions", "interaction", chosen, np.array([f.h for f in per_feature]),
                            [t[1:] for t in totals], notes=(*NOTES, budget_line(details)), details=details)


def budget_line(details: InteractionDetails) -> str:
    """What the method computed and at what cost, in one line."""
    return (f"Interactions: {len(details.pairs)} pairs among {details.chosen_by}, on {details.rows} test rows and "
            f"a grid of up to {details.grid} points per feature; {details.evaluations:,} model evaluations, "
            f"{details.bootstrap} bootstrap draws over rows for the intervals.")


def _interval(draws: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(low), float(high)


def _raw(grid: np.ndarray, column) -> list[Any]:
    return [raw_value(v, column) for v in grid]


# --- the report -----------------------------------------------------------------------------------------------


def section(result: ImportanceResult) -> dict[str, Any] | None:
    """The interactions section: the budget, the pairs, the features' totals, and the strongest pairs' maps."""
    if not isinstance(result.details, InteractionDetails):
        return None
    d = result.details
    maps = [{"first": m.first, "second": m.second,
             "chart": charts.data_uri(charts.pd_heat_map(m.first, m.second, m.first_grid, m.second_grid, m.pd))}
            for m in d.heat_maps]
    return {"budget": budget_line(d), "pairs": d.pairs, "features": d.features, "maps": maps,
            "resolved": RESOLVED, "bootstrap": d.bootstrap}


def compute(subject, options: Options, context: Context) -> list[ImportanceResult]:
    """Friedman's H for the top features' pairs."""
    return [interactions_audit(subject, seed=context.seed, n_features=options.interactions_features,
                               rows=options.interactions_rows, grid=options.interactions_grid,
                               upstream=dict(context.upstream))]


METHOD = Method(
    name="interactions", title="Interactions (Friedman's H)", kind="interaction", units=frozenset({"pair"}),
    results=(ResultSpec("interactions", "Interactions (each feature's total H)", judged=False),),
    options=Options, compute=compute, needs=("permutation", "shap"),
    stored=(InteractionDetails, PairInteraction, FeatureInteraction, HeatMap),
    section=Section("interactions.html.j2", section),
)
