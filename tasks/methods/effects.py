"""Effects: the shape of each top feature's effect, as partial dependence with ICE curves and accumulated local
effects, and a one-word label for it.

For the top features (by permutation, or SHAP when permutation did not run; ``effects_features`` of them), on a
seeded sample of test rows (``effects_rows``):

- **Grid**: the feature's quantiles in the sample (``effects_grid`` points, its minimum and maximum included), or
  its distinct values when it has fewer; a categorical feature's levels, the most frequent ``effects_grid`` of them.
- **ICE** (Goldstein et al. 2015): each row's prediction with the feature set to each grid value, the rest of the
  row kept; **PD** (Friedman 2001) is their mean. All grid values of all rows go through the model as one stacked
  batch per feature (split into blocks of at most ``BLOCK_VALUES`` input values), not one call per grid point.
- **ALE** (Apley and Zhu 2020), for numeric features: the grid's intervals are its bins; each row contributes the
  change of its prediction across its own bin (read off its ICE curve, so no further model call), the mean change
  per bin is accumulated, and the curve is centred on the data. Where features are correlated, PD averages over
  combinations the data never shows; ALE only moves a row within its own bin.
- **Support**: a grid value is *off the data's support* for a row when it sits outside the range the data shows
  for that feature given the row's other features: the range of the residuals of a linear fit of the feature on
  its ``SUPPORT_REGRESSORS`` most correlated numeric features, over the sampled rows, widened by
  ``SUPPORT_MARGIN`` residual standard deviations. Each grid point carries the share of rows for which it is off;
  PD at a point where most are is marked.
- **Band**: a 95% bootstrap band over rows (``BOOTSTRAP`` draws) for PD and ALE, from the same ICE curves.
- **Shape**, decided in this order from the ICE curves where each is on the data (what a model does off the data
  is no shape of its effect), each with the number it was decided from: *flat* when the curves barely move (the
  rms over rows of each curve's standard deviation over the grid is below ``FLAT`` of the output's standard
  deviation); *heterogeneous* when they cross or fan out (more than ``HETEROGENEOUS`` of the curves' squared
  steps between neighbouring grid points is not shared with the mean step: a sign of interaction); else, from
  the main curve (ALE, or PD for a categorical feature), *increasing* or *decreasing* when at least ``MONOTONE``
  of its movement goes one way, *non-monotone* otherwise, and *by level* for a categorical feature, whose levels
  have no order.

For a multiclass model each feature's curves explain the probability of the class its PD moves most. The
method's result is each drawn feature's main-effect size (the rms of its centred ALE over the data, or of its PD
over the levels' shares), with its bootstrap interval: shown, not judged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from pydantic import Field

from tasks.core import charts
from tasks.core.options import MethodOptions
from tasks.core.result import Details, ImportanceResult, rank_descending
from tasks.methods.base import Context, Method, ResultSpec, Section
from tasks.methods.shap import raw_value

BOOTSTRAP = 200  # bootstrap draws over rows for the bands and the interval of an effect's size
ICE_SHOWN = 40  # ICE curves kept in results.json and drawn
FLAT = 0.1  # ICE rms movement, as a share of the output's standard deviation, below which an effect is flat
HETEROGENEOUS = 0.3  # share of the ICE curves' squared steps not shared with their mean step above which they fan out
MONOTONE = 0.9  # share of the main curve's movement in one direction from which it is increasing or decreasing
OFF_SUPPORT = 0.5  # share of rows off the data's support above which a PD grid point is marked
SUPPORT_REGRESSORS = 20  # the most correlated numeric features a feature is predicted from for the support check
SUPPORT_MARGIN = 0.5  # residual standard deviations beyond the residuals' range that still count as on the data
BLOCK_VALUES = 20_000_000  # input values per forward block (80 MB of float32)
SHAPES = ("increasing", "decreasing", "non-monotone", "flat", "heterogeneous", "by level")
NOTES = (
    "Effects show how each top feature moves the model's output: partial dependence (the mean of the ICE curves, "
    "each a row's prediction as the feature alone is varied) and accumulated local effects (ALE, the accumulated "
    "mean change within each grid interval, centred), which stays honest where features are correlated.",
)


class Options(MethodOptions):
    """The effects method's own options."""

    effects_features: int = Field(default=8, ge=1, le=40, description="top features whose effects are drawn")
    effects_grid: int = Field(default=20, ge=3, le=200, description="grid points per feature for PD, ICE and ALE")
    effects_rows: int = Field(default=1000, ge=20, description="test rows (a seeded sample) the curves average over")


@dataclass(frozen=True)
class EffectCurve:
    """One feature's curves and shape. ``grid`` holds raw values (a category's as the split holds it); ``pd``,
    ``ale`` and their bands are on the output's scale, ``ale`` centred on the data (None for a categorical
    feature); ``ice`` holds ``ICE_SHOWN`` rows' curves (``ice_rows``: their test-split rows); ``off_support`` the
    share of rows for which each grid value is off the data's support; ``rug`` the feature's sampled values."""

    feature: str
    categorical: bool
    explained_class: int | None
    grid: list[Any]
    pd: list[float]
    pd_low: list[float]
    pd_high: list[float]
    ale: list[float] | None
    ale_low: list[float] | None
    ale_high: list[float] | None
    ice_rows: list[int]
    ice: list[list[float]]
    off_support: list[float]
    rug: list[float]
    shape: str
    shape_value: float
    shape_reason: str
    movement: float  # rms movement of the ICE curves over the grid
    heterogeneity: float  # share of that movement's variance not shared with the mean curve
    monotone: float  # share of the main curve's movement upwards (NaN for a categorical feature)
    size: float  # the main effect's size: the result's importance

    @property
    def marked(self) -> list[bool]:
        return [share > OFF_SUPPORT for share in self.off_support]


@dataclass(frozen=True)
class EffectsDetails(Details):
    """How the features were chosen, the sample and grid, and one curve record per drawn feature."""

    chosen_by: str
    rows: int
    grid: int
    bootstrap: int
    curves: list[EffectCurve]


# --- computing ------------------------------------------------------------------------------------------------


def grid_of(values: np.ndarray, size: int, *, categorical: bool) -> np.ndarray:
    """The grid a feature's curves are evaluated on (coded values): quantiles, distinct values, or levels."""
    values = np.asarray(values, dtype=float)
    levels, counts = np.unique(values, return_counts=True)
    if categorical:
        return np.sort(levels[np.argsort(-counts, kind="stable")[:size]])
    if len(levels) <= size:
        return levels
    return np.unique(np.quantile(values, np.linspace(0.0, 1.0, size)))


def ice_curves(forward, X: np.ndarray, j: int, grid: np.ndarray, *, block_values: int = BLOCK_VALUES) -> np.ndarray:
    """Each row's predictions with column ``j`` set to each grid value: ``(rows, grid, outputs)``, from one
    stacked batch per block of rows."""
    n, p = X.shape
    g = len(grid)
    per_block = max(1, block_values // max(1, g * p))
    parts = []
    for start in range(0, n, per_block):
        part = X[start:start + per_block]
        stacked = np.repeat(part, g, axis=0)
        stacked[:, j] = np.tile(grid, len(part))
        out = np.asarray(forward(stacked), dtype=float)
        parts.append(out.reshape(len(part), g, -1))
    return np.concatenate(parts) if parts else np.zeros((0, g, 1))


def bootstrap_weights(n: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """``(1 + draws, n)`` row weights: the data itself, then ``draws`` bootstrap resamples (counts)."""
    weights = np.ones((1 + draws, n))
    for b in range(draws):
        weights[1 + b] = np.bincount(rng.integers(0, n, n), minlength=n)
    return weights


def partial_dependence(ice: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """PD per weighting of the rows: ``(weightings, grid)`` from ``ice`` ``(rows, grid)``."""
    return weights @ ice / weights.sum(axis=1, keepdims=True)


def accumulated_local_effects(ice: np.ndarray, x: np.ndarray, grid: np.ndarray,
                              weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centred ALE at the grid points per weighting of the rows, and each row's bin (1 … grid − 1).

    A row with ``grid[k-1] < x ≤ grid[k]`` is in bin k (the minimum in bin 1); its local change is
    ``ice[k] − ice[k-1]``. A bin's mean change is accumulated from the first grid point; the curve is then
    centred so that its mean over the data (each bin at its midpoint, weighted by its rows) is 0."""
    n, g = ice.shape
    bins = np.clip(np.searchsorted(grid, x, side="left"), 1, g - 1)
    change = ice[np.arange(n), bins] - ice[np.arange(n), bins - 1]
    member = np.zeros((n, g - 1))
    member[np.arange(n), bins - 1] = 1.0
    counts = weights @ member  # (weightings, bins)
    sums = weights @ (member * change[:, None])
    means = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    ale = np.concatenate([np.zeros((len(weights), 1)), np.cumsum(means, axis=1)], axis=1)
    middle = (ale[:, 1:] + ale[:, :-1]) / 2
    centre = (counts * middle).sum(axis=1) / counts.sum(axis=1)
    return ale - centre[:, None], bins


def off_support(X: np.ndarray, j: int, grid: np.ndarray, numeric: np.ndarray) -> np.ndarray:
    """``(rows, grid)``: whether each grid value lies, for each row, outside the range the data shows for column
    ``j`` given the row's other numeric features (see the module's docstring), widened by ``SUPPORT_MARGIN``
    residual standard deviations so that a fit's own noise does not mark the data's own extremes."""
    x = X[:, j].astype(float)
    others = [k for k in np.flatnonzero(numeric) if k != j]
    predicted = np.full(len(x), x.mean())
    if others and x.std() > 0:
        Z = X[:, others].astype(float)
        Z = Z[:, Z.std(axis=0) > 0]
        if Z.shape[1]:
            zs = (Z - Z.mean(axis=0)) / Z.std(axis=0)
            corr = np.abs(zs.T @ (x - x.mean())) / (len(x) * x.std())
            chosen = np.argsort(-corr, kind="stable")[:SUPPORT_REGRESSORS]
            design = np.column_stack([np.ones(len(x)), zs[:, chosen]])
            predicted = design @ np.linalg.lstsq(design, x, rcond=None)[0]
    residual = x - predicted
    margin = SUPPORT_MARGIN * residual.std() + 1e-9
    offset = np.asarray(grid, dtype=float)[None, :] - predicted[:, None]
    return (offset < residual.min() - margin) | (offset > residual.max() + margin)


def ice_measures(ice: np.ndarray, main: np.ndarray, *, categorical: bool,
                 on: np.ndarray | None = None) -> tuple[float, float, float]:
    """(rms movement of the ICE curves, their heterogeneity, the share of the main curve's movement upwards) from
    the ICE curves ``(rows, grid)`` and the main curve. The curves are read only where they are on the data (``on``,
    ``(rows, grid)``): what a model does off it is no shape of its effect."""
    on = np.ones(ice.shape, dtype=bool) if on is None else on
    points = on.sum(axis=1)
    mean = (ice * on).sum(axis=1) / np.maximum(points, 1)
    spread = ((ice - mean[:, None]) ** 2 * on).sum(axis=1) / np.maximum(points, 1)
    movement = float(np.sqrt(spread[points >= 2].mean())) if (points >= 2).any() else 0.0
    both = on[:, 1:] & on[:, :-1]  # the steps between neighbouring grid points, where both are on the data
    change = np.where(both, np.diff(ice, axis=1), 0.0)
    shared = change.sum(axis=0) / np.maximum(both.sum(axis=0), 1)
    total = float((change ** 2).sum())
    heterogeneity = float((np.where(both, change - shared, 0.0) ** 2).sum() / total) if total > 0 else 0.0
    steps = np.diff(main)
    moved = float(np.abs(steps).sum())
    upward = float(steps.clip(min=0).sum() / moved) if moved > 0 and not categorical else float("nan")
    return movement, heterogeneity, upward


def shape_of(relative: float, heterogeneity: float, upward: float, *, categorical: bool) -> tuple[str, float, str]:
    """(shape, the number it was decided from, the sentence saying so) from the ICE curves' movement relative to
    the output's standard deviation, their heterogeneity and the main curve's share of upward movement."""
    if relative < FLAT:
        return "flat", relative, f"its ICE curves move {relative:.1%} of the output's spread (below {FLAT:.0%})"
    if heterogeneity > HETEROGENEOUS:
        return ("heterogeneous", heterogeneity, f"{heterogeneity:.0%} of its ICE curves' steps are not shared with "
                f"their mean step (above {HETEROGENEOUS:.0%}): the curves cross or fan out, a sign of interaction")
    if categorical:
        return "by level", relative, f"its levels move the output by {relative:.0%} of its spread (rms); levels have no order"
    if upward >= MONOTONE:
        return "increasing", upward, f"{upward:.0%} of its main curve's movement is upwards"
    if upward <= 1 - MONOTONE:
        return "decreasing", 1 - upward, f"{1 - upward:.0%} of its main curve's movement is downwards"
    return "non-monotone", upward, f"its main curve moves {upward:.0%} upwards and {1 - upward:.0%} downwards"


def effect_of(forward, X: np.ndarray, j: int, *, feature: str, column, numeric: np.ndarray, grid_size: int,
              rows: np.ndarray, predictions: np.ndarray, rng: np.random.Generator, draws: int = BOOTSTRAP,
              block_values: int = BLOCK_VALUES) -> tuple[EffectCurve, np.ndarray]:
    """One feature's curves, shape and size, and its size's bootstrap draws (``predictions``: the model's
    outputs on the rows ``X``, ``(rows, outputs)``)."""
    categorical = bool(column is not None and column.categorical)
    grid = grid_of(X[:, j], grid_size, categorical=categorical)
    ice_all = ice_curves(forward, X, j, grid, block_values=block_values)
    weights = bootstrap_weights(len(X), draws, rng)
    pd_all = np.stack([partial_dependence(ice_all[:, :, k], weights) for k in range(ice_all.shape[2])])
    k = int(np.argmax(np.ptp(pd_all[:, 0], axis=1))) if ice_all.shape[2] > 1 else 0
    ice, pd = ice_all[:, :, k], pd_all[k]
    x = X[:, j].astype(float)
    if categorical:
        ale = None
        share = np.array([(x == level).mean() for level in grid])
        share = share / share.sum() if share.sum() > 0 else share
        centred = pd - (pd * share).sum(axis=1, keepdims=True)
        sizes = np.sqrt((centred ** 2 * share).sum(axis=1))
        main = pd[0]
    else:
        ale, bins = accumulated_local_effects(ice, x, grid, weights)
        at_rows = (ale[:, bins] + ale[:, bins - 1]) / 2
        sizes = np.sqrt((weights * at_rows ** 2).sum(axis=1) / weights.sum(axis=1))
        main = ale[0]
    output_sd = float(np.std(predictions[:, k]))
    off = off_support(X, j, grid, numeric) if not categorical else np.zeros(ice.shape, dtype=bool)
    movement, heterogeneity, upward = ice_measures(ice, main, categorical=categorical, on=~off)
    relative = movement / output_sd if output_sd > 0 else 0.0
    shape, value, reason = shape_of(relative, heterogeneity, upward, categorical=categorical)
    support = off.mean(axis=0)
    band = lambda curves: np.percentile(curves[1:], [2.5, 97.5], axis=0)  # noqa: E731
    pd_low, pd_high = band(pd)
    shown = min(ICE_SHOWN, len(X))
    curve = EffectCurve(
        feature=feature, categorical=categorical, explained_class=k if ice_all.shape[2] > 1 else None,
        grid=[raw_value(v, column) for v in grid], pd=_floats(pd[0]), pd_low=_floats(pd_low), pd_high=_floats(pd_high),
        ale=None if ale is None else _floats(ale[0]),
        ale_low=None if ale is None else _floats(band(ale)[0]), ale_high=None if ale is None else _floats(band(ale)[1]),
        ice_rows=[int(r) for r in rows[:shown]], ice=[_floats(c) for c in ice[:shown]],
        off_support=_floats(support), rug=_floats(x[:300]) if not categorical else [],
        shape=shape, shape_value=value, shape_reason=reason, movement=movement, heterogeneity=heterogeneity,
        monotone=upward, size=float(sizes[0]))
    return curve, sizes[1:]


def sample_rows(n: int, rows: int, rng: np.random.Generator) -> np.ndarray:
    """A seeded sample of at most ``rows`` of ``n`` test rows, in row order."""
    return np.sort(rng.permutation(n)[:rows]) if n > rows else np.arange(n)


def bootstrap_result(method: str, kind, features: list[str], point: np.ndarray, draws: list[np.ndarray], *,
                     notes: tuple[str, ...], details: Details) -> ImportanceResult:
    """A result whose importance is ``point`` (the statistic on the data itself), with the 95% percentile interval
    of its bootstrap ``draws`` (one array per feature) and the draws as its samples."""
    samples = np.array(draws) if draws else np.zeros((0, 1))
    interval = (np.percentile(samples, 2.5, axis=1), np.percentile(samples, 97.5, axis=1)) if draws else None
    result = ImportanceResult.from_samples(method, kind, features, samples, notes=notes, details=details,
                                           interval=interval, sampling="bootstrap")
    return replace(result, importances_mean=np.asarray(point, dtype=float), rank=rank_descending(point))


def top_features(upstream: dict[str, list[ImportanceResult]], features: tuple[str, ...], k: int
                 ) -> tuple[list[str], str]:
    """The ``k`` features whose effects are drawn, and how they were chosen."""
    for name, title in (("permutation", "permutation importance"), ("shap", "mean |SHAP value|")):
        result = next((r for r in upstream.get(name, []) if r.method == name and r.ok), None)
        if result is not None:
            order = np.argsort(-np.asarray(result.importances_mean, dtype=float), kind="stable")[:k]
            chosen = [result.features[i] for i in order if result.features[i] in features]
            return chosen, f"the top {len(chosen)} by {title}"
    chosen = list(features[:k])
    return chosen, (f"the first {len(chosen)} in the manifest's order, as neither permutation nor SHAP ran to rank "
                    f"them")


def effects_audit(subject, *, seed: int = 0, n_features: int = 8, grid: int = 20, rows: int = 1000,
                  upstream: dict[str, list[ImportanceResult]] | None = None, draws: int = BOOTSTRAP,
                  block_values: int = BLOCK_VALUES) -> ImportanceResult:
    """PD, ICE and ALE for the top features (see the module's docstring)."""
    features = subject.features
    chosen, chosen_by = top_features(upstream or {}, features, n_features)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 35]))
    X_all = np.asarray(subject.test.X, dtype=float)
    sample = rng.permutation(sample_rows(len(X_all), rows, rng))  # a random order, so the first ICE_SHOWN are a random sample too
    X = X_all[sample]
    columns = subject.adapter.columns
    numeric = np.array([not c.categorical for c in columns])
    forward = subject.forward()
    predictions = np.asarray(forward(X), dtype=float).reshape(len(X), -1)
    curves, draws_of = [], []
    for name in chosen:
        j = features.index(name)
        stream = np.random.default_rng(np.random.SeedSequence([seed, 35, j]))
        curve, sizes = effect_of(forward, X, j, feature=name, column=columns[j], numeric=numeric, grid_size=grid,
                                 rows=sample, predictions=predictions, rng=stream, draws=draws,
                                 block_values=block_values)
        curves.append(curve)
        draws_of.append(sizes)
    details = EffectsDetails(chosen_by=chosen_by, rows=len(X), grid=grid, bootstrap=draws, curves=curves)
    return bootstrap_result("effects", "effect", chosen, np.array([c.size for c in curves]), draws_of,
                            notes=(*NOTES, summary_line(details)), details=details)


def summary_line(details: EffectsDetails) -> str | None:
    """The shapes, one word per feature: the report's first page lists them."""
    if not details.curves:
        return None
    shapes = "; ".join(f"'{c.feature}' {c.shape}" for c in details.curves)
    return f"Effect shapes ({details.chosen_by}): {shapes}."


def _floats(values) -> list[float]:
    return [float(f"{v:.6g}") for v in np.asarray(values, dtype=float)]


# --- the report -----------------------------------------------------------------------------------------------


def section(result: ImportanceResult) -> dict[str, Any] | None:
    """The effects section: how the features were chosen, the shapes, and one compact chart per feature."""
    if not isinstance(result.details, EffectsDetails):
        return None
    d = result.details
    curves = [{"feature": c.feature, "shape": c.shape, "reason": c.shape_reason, "class": c.explained_class,
               "marked": sum(c.marked), "chart": charts.data_uri(_chart(c))} for c in d.curves]
    return {"chosen_by": d.chosen_by, "rows": d.rows, "grid": d.grid, "bootstrap": d.bootstrap,
            "ice": min(ICE_SHOWN, d.rows), "curves": curves, "flat": FLAT, "heterogeneous": HETEROGENEOUS,
            "monotone": MONOTONE, "off_support": OFF_SUPPORT}


def _chart(c: EffectCurve) -> bytes:
    title = f"{c.feature}: {c.shape}" + (f" (class {c.explained_class})" if c.explained_class is not None else "")
    return charts.effect_chart(c.feature, c.grid, c.pd, (c.pd_low, c.pd_high), c.ale, c.ice, c.marked, c.rug,
                               title=title)


def summary(result: ImportanceResult) -> str | None:
    return summary_line(result.details) if isinstance(result.details, EffectsDetails) else None


def compute(subject, options: Options, context: Context) -> list[ImportanceResult]:
    """The effects of the top features."""
    return [effects_audit(subject, seed=context.seed, n_features=options.effects_features, grid=options.effects_grid,
                          rows=options.effects_rows, upstream=dict(context.upstream))]


METHOD = Method(
    name="effects", title="Effects (PD, ICE, ALE)", kind="effect", units=frozenset({"column"}),
    results=(ResultSpec("effects", "Effects (size of the main effect: rms of the centred ALE)", judged=False),),
    options=Options, compute=compute, needs=("permutation", "shap"), stored=(EffectsDetails, EffectCurve),
    section=Section("effects.html.j2", section, summary=summary),
)
