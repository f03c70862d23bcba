"""Strongly correlated features: |Spearman ρ| on the test split, grouped by hierarchical clustering.

Permuting one of two correlated features leaves its partner to carry the signal, so both look
unimportant (scikit-learn's user guide, "Misleading values on strongly correlated features").
The permutation task therefore permutes each cluster found here jointly as well, and reports
the cluster's grouped importance beside the per-feature ones.

Clustering uses complete linkage on the distance ``1 - |ρ|`` cut at ``1 - threshold``: every
pair of features inside a cluster has ``|ρ| >= threshold``. Rank correlations are computed on at
most ``max_rows`` rows drawn without replacement (seeded), which bounds time and memory on large
splits; on 100,000 rows the standard error of ρ is about 0.003.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.cluster import hierarchy
from scipy.spatial.distance import squareform
from scipy.stats import rankdata

DEFAULT_THRESHOLD = 0.7
DEFAULT_MAX_ROWS = 100_000


@dataclass(frozen=True)
class Cluster:
    """Two or more features whose pairwise |Spearman ρ| all reach the threshold."""

    members: tuple[str, ...]
    columns: tuple[int, ...]
    min_abs_rho: float  # the weakest pairwise |ρ| inside the cluster

    @property
    def name(self) -> str:
        return "+".join(self.members)


def spearman_matrix(X: np.ndarray, *, max_rows: int = DEFAULT_MAX_ROWS, random_state: int | None = 0) -> np.ndarray:
    """|Spearman ρ| between every pair of columns; a constant column correlates 0 with all others."""
    X = np.asarray(X)
    if len(X) > max_rows:
        rows = np.sort(np.random.default_rng(random_state).choice(len(X), size=max_rows, replace=False))
        X = X[rows]
    ranks = rankdata(X, axis=0)
    ranks -= ranks.mean(axis=0)
    norms = np.sqrt((ranks**2).sum(axis=0))
    constant = norms == 0
    ranks[:, ~constant] /= norms[~constant]
    rho = np.abs(ranks.T @ ranks)
    rho[constant, :] = 0.0
    rho[:, constant] = 0.0
    np.fill_diagonal(rho, 1.0)
    return np.clip(rho, 0.0, 1.0)


def correlated_clusters(
    X: np.ndarray,
    features: list[str] | tuple[str, ...],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    max_rows: int = DEFAULT_MAX_ROWS,
    random_state: int | None = 0,
) -> list[Cluster]:
    """Clusters of two or more features with pairwise |Spearman ρ| >= ``threshold``, in feature order."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if len(features) != np.shape(X)[1]:
        raise ValueError(f"{np.shape(X)[1]} columns for {len(features)} features")
    if len(features) < 2:
        return []
    rho = spearman_matrix(X, max_rows=max_rows, random_state=random_state)
    distance = squareform(1.0 - rho, checks=False)
    labels = hierarchy.fcluster(hierarchy.linkage(distance, method="complete"), t=1.0 - threshold, criterion="distance")
    clusters = []
    for label in sorted(set(labels), key=lambda lab: int(np.argmax(labels == lab))):
        columns = np.flatnonzero(labels == label)
        if len(columns) < 2:
            continue
        inner = rho[np.ix_(columns, columns)]
        clusters.append(
            Cluster(
                members=tuple(features[j] for j in columns),
                columns=tuple(int(j) for j in columns),
                min_abs_rho=float(inner.min()),
            )
        )
    return clusters


def importance_units(
    features: list[str], groups: dict[str, tuple[str, ...]], clusters: list[Cluster]
) -> dict[str, list[int]]:
    """What a behavioural method measures: every feature, then each manifest group, then each correlated cluster.

    This is also the order per-unit seeds are spawned in. A cluster with the same members as a
    manifest group is not added again: the group stands for it.
    """
    units = {f: [j] for j, f in enumerate(features)}
    units.update({f"group:{g}": [features.index(m) for m in members] for g, members in groups.items()})
    for cluster in clusters:
        if unit_of(units, cluster) is None:
            units[f"cluster:{cluster.name}"] = list(cluster.columns)
    return units


def unit_of(units: dict[str, list[int]], cluster: Cluster) -> str | None:
    """The group or cluster unit that holds exactly the cluster's columns, if there is one."""
    columns = sorted(cluster.columns)
    return next((name for name, cols in units.items() if len(cols) > 1 and sorted(cols) == columns), None)


def unit_records(
    samples: np.ndarray, units: dict[str, list[int]], features: list[str], clusters: list[Cluster]
) -> tuple[list[dict], list[dict]]:
    """Report records of the manifest groups and the correlated clusters, from ``samples`` aligned with ``units``.

    Units left unmeasured (all-NaN rows, e.g. beyond an ablation budget) are left out.
    """
    from tasks.result import ImportanceResult

    names = list(units)
    measured = [i for i in range(len(names)) if not np.isnan(samples[i]).all()]
    group_rows = [i for i in measured if names[i].startswith("group:")]
    groups = ImportanceResult.from_samples("groups", "behavioural", [names[i] for i in group_rows], samples[group_rows])
    kept = [c for c in clusters if names.index(unit_of(units, c)) in measured]
    rows = [names.index(unit_of(units, c)) for c in kept]
    grouped = ImportanceResult.from_samples("clusters", "behavioural", [c.name for c in kept], samples[rows])
    cluster_records = [
        {"name": c.name, "members": list(c.members), "min_abs_rho": c.min_abs_rho,
         **{k: record[k] for k in ("importance", "std", "low", "high")},
         "member_importances": {features[j]: float(np.nanmean(samples[names.index(features[j])]))
                                for j in c.columns}}
        for c, record in zip(kept, grouped.records())
    ]
    return groups.records(), cluster_records
