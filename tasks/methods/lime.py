"""LIME: a local linear surrogate of the model around each row the report explains, with its fidelity shown.

For the rows SHAP explains (the highest-loss rows and a seeded random sample, picked the same way), each row gets
a weighted linear fit of the model's output on perturbations of that row (Ribeiro et al. 2016), written over our
own compiled forward pass rather than the ``lime`` package (which samples around the training mean, not the row,
and is not reproducible across calls):

- **Sampling around the row**, in standardized space: a numeric feature moves by ``N(0, 1)`` times its training
  standard deviation; a categorical one is drawn from its training levels (its surrogate feature is 1 where the
  draw keeps the row's level). The first sample is the row itself.
- **Kernel**: ``exp(-d² / width²)``, with ``d`` the Euclidean distance in standardized units (a changed level
  counts 1) and ``width = KERNEL_WIDTH × √features`` (the ``lime`` package's default).
- **Surrogate**: weighted ridge regression (``RIDGE``) on the standardized offsets, its features chosen by
  forward selection (the one that raises the weighted R² most, up to ``max_features``), or, beyond
  ``FORWARD_LIMIT`` features, the largest ridge weights on all of them.
- **Fidelity**: the surrogate's weighted R² on its samples (*local R²*): a low one says a line does not
  describe the model near that row, and its weights should not be read.
- **Spread**: ``replicates`` independent sample sets (default 5); each selected feature's weight is given as a
  mean and a standard deviation, and its rank range over them. Features whose rank ranges overlap are *tied*.
- **Reproducible**: each row's random stream comes from the run's seed and the row's index in the test split
  (``numpy.random.SeedSequence``), so its explanation does not depend on the order of rows, on workers, or on
  which other rows are explained.
- **Batched**: the perturbations of all rows and replicates go through the forward pass in blocks of at most
  ``BLOCK_VALUES`` input values.

- **Against SHAP** (it ``needs`` SHAP's result): per row, the feature, sign and rank agreement of the two top
  ``AGREEMENT_K`` (:class:`LocalAgreement`); for the run, the median local R² and the rows where both name the
  same top feature.

The method's global result is each feature's mean |weight| over the explained rows: shown, not judged, as it
describes a handful of chosen rows, not the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import Field

from tasks.core.options import MethodOptions
from tasks.core.result import Details, ImportanceResult
from tasks.methods.base import Context, Method, ResultSpec, Section
from tasks.methods.shap import explained_rows, raw_value

KERNEL_WIDTH = 0.75  # × √features, in standardized units
RIDGE = 1.0  # the ridge penalty of the weighted fit, on standardized offsets
FORWARD_LIMIT = 50  # features up to which the surrogate's features are chosen by forward selection
AGREEMENT_K = 3  # the top features LIME and SHAP are compared on (Krishna et al. 2022)
BLOCK_VALUES = 20_000_000  # input values per forward block (80 MB of float32)
NOTES = (
    "LIME fits a weighted linear surrogate to the model's output on perturbations of each explained row, sampled "
    "around the row in standardized units; its weights are per standard deviation of a numeric feature, or for "
    "keeping a categorical feature's level. Read a row's weights only where its local R² is high.",
)


class Options(MethodOptions):
    """LIME's own options."""

    lime_samples: int = Field(default=5000, ge=50, description="perturbed samples LIME draws around each row")
    lime_features: int = Field(default=8, ge=1, description="features in each LIME surrogate")
    lime_replicates: int = Field(default=5, ge=2, description="independent LIME sample sets per row, for the spread")


@dataclass(frozen=True)
class LimeFeature:
    """One feature of a row's surrogate: its raw value, its weight's mean and standard deviation over the
    replicates, its rank range among the selected features over them, and whether that range overlaps another's."""

    feature: str
    value: Any  # a number, or a category's raw value
    weight: float
    weight_sd: float
    rank_low: int
    rank_high: int
    tied: bool


@dataclass(frozen=True)
class LocalAgreement:
    """LIME against SHAP on one row, over their top ``k`` features (Krishna et al. 2022). Both are compared as
    attributions at the row: φ, and LIME's *contribution* — its weight times the feature's standardized distance
    from the training mean (the analogue of φ against the background mean), or the weight itself for a categorical
    level. The share both put in their top k (feature agreement), both with the same sign (sign agreement), the
    share of ranks 1..k that hold the same feature (rank agreement), and whether their top feature is the same."""

    k: int
    feature: float
    sign: float
    rank: float
    same_top: bool
    shap_top: list[str]


@dataclass(frozen=True)
class LimeRow:
    """One explained row: why it was picked, the output explained (and its class), the surrogate's local R²
    (mean, and lowest over the replicates), its intercept, and its features, largest |weight| first."""

    selection: str  # "highest loss" or "random"
    row: int
    explained_class: int | None
    output: float
    r2: float
    r2_low: float
    intercept: float
    features: list[LimeFeature]
    shap: LocalAgreement | None = None  # against SHAP's explanation of the same row, when SHAP ran


@dataclass(frozen=True)
class LimeDetails(Details):
    """The sampling and kernel of one LIME run, and one record per explained row."""

    samples: int
    replicates: int
    kernel_width: float
    selection: str  # "forward selection" or "largest ridge weights"
    rows: list[LimeRow]

    @property
    def median_r2(self) -> float:
        return float(np.median([r.r2 for r in self.rows])) if self.rows else float("nan")

    @property
    def same_top(self) -> tuple[int, int] | None:
        """(rows where LIME's and SHAP's top feature agree, rows compared); None when SHAP did not run."""
        compared = [r.shap for r in self.rows if r.shap is not None]
        return (sum(a.same_top for a in compared), len(compared)) if compared else None


def row_stream(seed: int, row: int, replicate: int) -> np.random.Generator:
    """The random stream of one row's replicate: from the run's seed and the row's identity alone."""
    return np.random.default_rng(np.random.SeedSequence([seed, row, replicate]))


def perturb(x: np.ndarray, scale: np.ndarray, levels: dict[int, tuple[np.ndarray, np.ndarray]], n: int,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` samples around the coded row ``x`` (the first is ``x`` itself), and their surrogate features:
    standardized offsets for numeric columns, 'keeps the row's level' for categorical ones."""
    offsets = rng.standard_normal((n, len(x)))
    offsets[0] = 0.0
    samples = x[None, :] + offsets * scale[None, :]
    design = offsets.copy()
    for j, (codes, shares) in levels.items():
        drawn = rng.choice(codes, size=n, p=shares)
        drawn[0] = x[j]
        samples[:, j] = drawn
        design[:, j] = (drawn == x[j]).astype(float)
    return samples.astype(np.float32), design


def kernel(design: np.ndarray, categorical: np.ndarray, width: float) -> np.ndarray:
    """Each sample's weight, ``exp(-d² / width²)``: d in standardized units, a changed level counting 1."""
    offsets = np.where(categorical[None, :], 1.0 - design, design)
    return np.exp(-(offsets ** 2).sum(axis=1) / width ** 2)


def weighted_ridge(design: np.ndarray, target: np.ndarray, weights: np.ndarray,
                   ridge: float = RIDGE) -> tuple[np.ndarray, float, float]:
    """(coefficients, intercept, weighted R²) of the ridge fit of ``target`` on ``design`` with sample ``weights``
    (the intercept unpenalised)."""
    w = weights / weights.sum()
    mean_x, mean_y = w @ design, float(w @ target)
    xc, yc = design - mean_x, target - mean_y
    gram = (xc * w[:, None]).T @ xc * len(w) + ridge * np.eye(design.shape[1])
    coef = np.linalg.solve(gram, (xc * w[:, None]).T @ yc * len(w))
    residual = yc - xc @ coef
    total = float(w @ yc ** 2)
    r2 = 1.0 - float(w @ residual ** 2) / total if total > 0 else 1.0
    return coef, mean_y - float(mean_x @ coef), r2


def select(design: np.ndarray, target: np.ndarray, weights: np.ndarray, k: int) -> np.ndarray:
    """The surrogate's features: forward selection up to ``FORWARD_LIMIT`` features, else the largest ridge
    weights on all of them."""
    n = design.shape[1]
    k = min(k, n)
    if n > FORWARD_LIMIT:
        coef = weighted_ridge(design, target, weights)[0]
        return np.argsort(-np.abs(coef), kind="stable")[:k]
    chosen: list[int] = []
    for _ in range(k):
        best, best_r2 = -1, -np.inf
        for j in range(n):
            if j in chosen:
                continue
            r2 = weighted_ridge(design[:, chosen + [j]], target, weights)[2]
            if r2 > best_r2 + 1e-12:
                best, best_r2 = j, r2
        chosen.append(best)
    return np.array(chosen)


def explain_rows(forward, X: np.ndarray, rows: np.ndarray, classes: list[int | None], *, scale: np.ndarray,
                 levels: dict[int, tuple[np.ndarray, np.ndarray]], seed: int, samples: int, replicates: int,
                 k: int, block_values: int = BLOCK_VALUES) -> list[list[dict[str, Any]]]:
    """Per row: for each replicate, the selected features' weights, the intercept and the local R²."""
    n_features = X.shape[1]
    categorical = np.zeros(n_features, dtype=bool)
    categorical[list(levels)] = True
    width = KERNEL_WIDTH * np.sqrt(n_features)
    jobs = [(i, r) for i in range(len(rows)) for r in range(replicates)]
    per_block = max(1, block_values // (samples * n_features))
    fits: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(rows))}
    for start in range(0, len(jobs), per_block):
        block = jobs[start:start + per_block]
        drawn = [perturb(X[rows[i]], scale, levels, samples, row_stream(seed, int(rows[i]), r)) for i, r in block]
        outputs = np.asarray(forward(np.concatenate([s for s, _ in drawn])), dtype=float)
        for b, (i, r) in enumerate(block):
            out = outputs[b * samples:(b + 1) * samples]
            target = out if classes[i] is None else out[:, classes[i]]
            design = drawn[b][1]
            weights = kernel(design, categorical, width)
            chosen = select(design, target, weights, k)
            coef, intercept, r2 = weighted_ridge(design[:, chosen], target, weights)
            full = np.zeros(n_features)
            full[chosen] = coef
            fits[i].append({"weights": full, "chosen": chosen, "intercept": intercept, "r2": r2,
                            "output": float(target[0])})
    return [fits[i] for i in range(len(rows))]


def summarise(features: tuple[str, ...], raw: list[Any], fits: list[dict[str, Any]], k: int
              ) -> tuple[list[LimeFeature], float, float, float]:
    """A row's features (those any replicate selected, largest mean |weight| first, at most ``k``), with their
    spread, rank ranges and ties; its mean and lowest local R²; its mean intercept."""
    weights = np.stack([f["weights"] for f in fits])  # (replicates, features)
    mean = weights.mean(axis=0)
    picked = sorted({int(j) for f in fits for j in f["chosen"]}, key=lambda j: (-abs(mean[j]), j))[:k]
    ranks = np.stack([_ranks(np.abs(w), picked) for w in weights])  # (replicates, picked)
    low, high = ranks.min(axis=0), ranks.max(axis=0)
    rows = []
    for p, j in enumerate(picked):
        tied = any(q != p and low[q] <= high[p] and low[p] <= high[q] for q in range(len(picked)))
        rows.append(LimeFeature(features[j], raw[j], float(mean[j]), float(weights[:, j].std(ddof=1)),
                                int(low[p]), int(high[p]), bool(tied)))
    r2 = np.array([f["r2"] for f in fits])
    return rows, float(r2.mean()), float(r2.min()), float(np.mean([f["intercept"] for f in fits]))


def summary_line(details: LimeDetails) -> str:
    """The run's line: rows, samples, the median local R², and how often LIME's top feature is SHAP's."""
    line = (f"LIME: {len(details.rows)} rows explained, {details.samples} samples × {details.replicates} replicates "
            f"each; median local R² {details.median_r2:.2f}")
    if details.same_top is None:
        return line + "; SHAP did not run, so nothing to compare with."
    same, compared = details.same_top
    return line + f"; the top feature is SHAP's in {same} of {compared} rows."


def _ranks(values: np.ndarray, picked: list[int]) -> np.ndarray:
    """Each picked feature's rank by ``values`` among the picked ones (1 = largest)."""
    v = values[picked]
    order = np.argsort(-v, kind="stable")
    ranks = np.empty(len(picked), dtype=int)
    ranks[order] = np.arange(1, len(picked) + 1)
    return ranks


def local_agreement(lime: list[str], contribution: dict[str, float], shap: list[tuple[str, float]],
                    k: int = AGREEMENT_K) -> LocalAgreement:
    """LIME's features, largest |contribution| first, with their contributions at the row, against SHAP's
    (feature, φ), largest |φ| first: see :class:`LocalAgreement`."""
    k = min(k, len(lime), len(shap))
    mine, theirs = lime[:k], [f for f, _ in shap[:k]]
    phi = dict(shap)
    both = set(mine) & set(theirs)
    same_sign = [f for f in both if np.sign(contribution[f]) == np.sign(phi[f])]
    return LocalAgreement(k=k, feature=len(both) / k if k else float("nan"),
                          sign=len(same_sign) / k if k else float("nan"),
                          rank=sum(a == b for a, b in zip(mine, theirs)) / k if k else float("nan"),
                          same_top=bool(mine[:1] == theirs[:1]), shap_top=theirs)


def lime_audit(subject, *, seed: int = 0, samples: int = 5000, k: int = 8, replicates: int = 5,
               n_worst: int = 5, n_random: int = 3, shap: ImportanceResult | None = None) -> ImportanceResult:
    """LIME for the rows SHAP explains (see the module's docstring); with ``shap``'s result, each row set against
    SHAP's explanation of it."""
    test, features = subject.test, subject.features
    forward = subject.forward()
    selections, _ = explained_rows(test.y, forward(test.X), subject.metric, np.random.default_rng(seed),
                                   n_worst=n_worst, n_random=n_random)
    rows = np.concatenate(list(selections.values())).astype(int)
    reference = subject.train if subject.train is not None else test
    columns = subject.adapter.columns
    levels = {}
    for j, column in enumerate(columns):
        if column.categorical:
            codes, counts = np.unique(reference.X[:, j], return_counts=True)
            levels[j] = (codes, counts / counts.sum())
    values = np.asarray(reference.X, dtype=float)
    centre, scale = values.mean(axis=0), values.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    shap_local = {(r.selection, r.row): r for r in getattr(getattr(shap, "details", None), "local", None) or []}
    multiclass = subject.version.task == "multiclass"
    classes = [int(test.y[i]) if multiclass else None for i in rows]
    fits = explain_rows(forward, np.asarray(test.X, dtype=float), rows, classes, scale=scale, levels=levels,
                        seed=seed, samples=samples, replicates=replicates, k=k)
    records = []
    names = [name for name, picked in selections.items() for _ in picked]
    for i, (row, fit) in enumerate(zip(rows, fits)):
        raw = [raw_value(test.X[row, j], columns[j]) for j in range(len(features))]
        listed, r2, r2_low, intercept = summarise(features, raw, fit, k)
        against = shap_local.get((names[i], int(row)))
        agreement = None
        if against is not None:
            distance = {f: 1.0 if j in levels else (float(test.X[row, j]) - centre[j]) / scale[j]
                        for j, f in enumerate(features)}
            contribution = {f.feature: f.weight * distance[f.feature] for f in listed}
            by_contribution = sorted(contribution, key=lambda f: -abs(contribution[f]))
            agreement = local_agreement(by_contribution, contribution, [(f.feature, f.phi) for f in against.features])
        records.append(LimeRow(names[i], int(row), classes[i], fit[0]["output"], r2, r2_low, intercept, listed,
                               agreement))
    magnitude = np.mean([np.abs(np.mean([f["weights"] for f in fit], axis=0)) for fit in fits], axis=0)
    details = LimeDetails(samples=samples, replicates=replicates, kernel_width=KERNEL_WIDTH * np.sqrt(len(features)),
                          selection="forward selection" if len(features) <= FORWARD_LIMIT else "largest ridge weights",
                          rows=records)
    notes = (*NOTES, summary_line(details))
    return ImportanceResult.from_samples("lime", "behavioural", features, magnitude[:, None], notes=notes,
                                         details=details)


def section(result: ImportanceResult) -> dict[str, Any] | None:
    """The LIME section: the kernel and sampling, and one compact block per row."""
    if not isinstance(result.details, LimeDetails):
        return None
    d = result.details
    return {"samples": d.samples, "replicates": d.replicates, "kernel_width": d.kernel_width,
            "selection": d.selection, "summary": summary_line(d), "rows": d.rows, "k": AGREEMENT_K}


def compute(subject, options: Options, context: Context) -> list[ImportanceResult]:
    """LIME for the rows the report explains."""
    shap = next(iter(context.upstream.get("shap", [])), None)
    return [lime_audit(subject, seed=context.seed, samples=options.lime_samples, k=options.lime_features,
                       replicates=options.lime_replicates, shap=shap if shap is not None and shap.ok else None)]


METHOD = Method(
    name="lime", title="LIME", kind="behavioural", units=frozenset({"column"}),
    results=(ResultSpec("lime", "LIME (mean |weight| over the explained rows)", judged=False),),
    options=Options, compute=compute, needs=("shap",), stored=(LimeDetails, LimeRow, LimeFeature, LocalAgreement),
    section=Section("lime.html.j2", section),
)
