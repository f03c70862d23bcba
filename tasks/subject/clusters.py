"""Strongly correlated features: |Spearman ρ| on the test split, grouped by hierarchical clustering.

Permuting one of two correlated features leaves its partner to carry the signal, so both look
unimportant (scikit-learn's user guide, "Misleading values on strongly correlated features").
The permutation task therefore permutes each cluster found here jointly as well, and reports
the cluster's grouped importance beside the per-feature ones.

Clustering uses complete linkage on the distance ``1 - |ρ|`` cut at ``1 - threshold``: every
pair of features inside a cluster has ``|ρ| >= threshold``. Rank correlations are computed on at
most ``max_rows`` rows drawn without replacement (seeded), which bounds time and memory on large
splits; on 100,000 rows the standard error of ρ is about 0.003.

Memory is bounded without changing the clusters. No F × F matrix is built (at 10,000 features
it took 2.1 GB): each column's ranks are computed once, centred, and kept in float32 (exact:
they are multiples of ½), and every pair is screened in blocks of columns sized from
:func:`tasks.subject.modeling.memory_budget`, in float32 with a margin above float32's worst-case
rounding. Under complete linkage a feature with no partner at ``|ρ| >= threshold`` is never in
a cluster, and features never linked by a chain of such partners are never in one cluster, so
linkage runs only on each connected group of candidates, on float64 distances computed as before.
The clusters, their members and columns are those of complete linkage on the full matrix, and
``min_abs_rho`` agrees to float64 rounding (the products are summed in another order). The one
exception is complete linkage's own ambiguity: two pairs at exactly the same ``|ρ|`` sharing a
feature, both below the cut, are merged in scipy's processing order, which already depended on
the features' order.

Beyond the test split and the float32 ranks (``4 × rows × features`` bytes), a block takes about
one memory budget, and the largest connected group of ``C`` candidates takes ``8·C²`` bytes:
its condensed float64 distances and scipy's working copy of them (200 MB at 5,000 candidates,
800 MB at 10,000). Typical data has a few small groups; one group of every feature is the worst
case, measured in ``benchmarks/bench_wide.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from scipy.cluster import hierarchy
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.stats import rankdata

from tasks.core.options import DEFAULT_CLUSTER_THRESHOLD
from tasks.subject.modeling import memory_budget

DEFAULT_MAX_ROWS = 100_000
RANK_BYTES_PER_VALUE = 80  # scipy's rankdata holds about ten 8-byte temporaries per value it ranks
SCREEN_BYTES_PER_PAIR = 5  # a float32 |ρ| and its boolean test
LINK_BYTES_PER_EDGE = 128  # a partner's int64 label, and at worst one edge through scipy's graph routines
MAX_LINKED = 10_000  # a connected group of more columns is not linked: its distances alone would take 400 MB+


@dataclass(frozen=True)
class Cluster:
    """Two or more features whose pairwise |Spearman ρ| all reach the threshold."""

    members: tuple[str, ...]
    columns: tuple[int, ...]
    min_abs_rho: float  # the weakest pairwise |ρ| inside the cluster

    @property
    def name(self) -> str:
        return "+".join(self.members)


@dataclass(frozen=True)
class Clustering:
    """The clusters found, and the sizes of the connected groups too large to link (their features stay single)."""

    clusters: list[Cluster]
    unlinked: tuple[int, ...] = ()
    max_linked: int = MAX_LINKED

    @property
    def note(self) -> str | None:
        """One sentence for a method's caveats when a group was too large to cluster, else None."""
        if not self.unlinked:
            return None
        sizes = ", ".join(f"{size:,}" for size in self.unlinked)
        return (f"Correlated clusters: {len(self.unlinked)} connected group(s) of strongly correlated features "
                f"({sizes} features) exceed the {self.max_linked:,} that are clustered at once, so they were not "
                "clustered: their features are measured one by one only, and correlated ones share their "
                "importance.")


def correlated_clusters(
    X: np.ndarray,
    features: list[str] | tuple[str, ...],
    *,
    threshold: float = DEFAULT_CLUSTER_THRESHOLD,
    max_rows: int = DEFAULT_MAX_ROWS,
    random_state: int | None = 0,
) -> list[Cluster]:
    """Clusters of two or more features with pairwise |Spearman ρ| >= ``threshold``, in feature order."""
    return clustering(X, features, threshold=threshold, max_rows=max_rows, random_state=random_state).clusters


def clustering(
    X: np.ndarray,
    features: list[str] | tuple[str, ...],
    *,
    threshold: float = DEFAULT_CLUSTER_THRESHOLD,
    max_rows: int = DEFAULT_MAX_ROWS,
    random_state: int | None = 0,
    max_linked: int = MAX_LINKED,
) -> Clustering:
    """:func:`correlated_clusters`, saying which connected groups were too large to link (more than
    ``max_linked`` columns: complete linkage needs all their pairwise distances at once)."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if len(features) != np.shape(X)[1]:
        raise ValueError(f"{np.shape(X)[1]} columns for {len(features)} features")
    if len(features) < 2:
        return Clustering([])
    ranks, norms = centred_ranks(X, max_rows=max_rows, random_state=random_state)
    cut = 1.0 - threshold
    clusters, unlinked = [], []
    for group in candidate_groups(ranks, norms, threshold=threshold):
        if len(group) > max_linked:
            unlinked.append(len(group))
            continue
        distance = _condensed_distances(ranks, norms, group)
        labels = hierarchy.fcluster(hierarchy.linkage(distance, method="complete"), t=cut, criterion="distance")
        for label in np.unique(labels):
            inside = np.flatnonzero(labels == label)
            if len(inside) < 2:
                continue
            columns = group[inside]
            clusters.append(Cluster(members=tuple(features[k] for k in columns),
                                    columns=tuple(int(k) for k in columns),
                                    min_abs_rho=1.0 - _largest_distance(distance, len(group), inside)))
    return Clustering(sorted(clusters, key=lambda cluster: cluster.columns[0]), tuple(unlinked), max_linked)


def centred_ranks(
    X: np.ndarray, *, max_rows: int = DEFAULT_MAX_ROWS, random_state: int | None = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Each column's average ranks minus their mean, as float32, and each column's Euclidean norm (float64).

    ``|Spearman ρ|`` of columns ``i`` and ``j`` is ``|ranks[:, i] · ranks[:, j]| / (norms[i] · norms[j])``; a
    constant column has norm 0 and correlates 0 with all others. Centred ranks are multiples of ½, exact in
    float32 below 16 million rows. Columns are ranked in blocks sized from the memory budget.
    """
    X = np.asarray(X)
    n_rows, n_columns = X.shape
    rows = slice(None)
    if n_rows > max_rows:
        rows = np.sort(np.random.default_rng(random_state).choice(n_rows, size=max_rows, replace=False))
        n_rows = max_rows
    ranks = np.empty((n_rows, n_columns), np.float32)
    norms = np.empty(n_columns)
    step = max(1, memory_budget() // (RANK_BYTES_PER_VALUE * max(1, n_rows)))
    for first in range(0, n_columns, step):
        block = rankdata(X[rows, first : first + step], axis=0)
        block -= block.mean(axis=0)
        norms[first : first + step] = np.sqrt((block**2).sum(axis=0))
        ranks[:, first : first + step] = block
    return ranks, norms


def candidate_groups(ranks: np.ndarray, norms: np.ndarray, *, threshold: float) -> list[np.ndarray]:
    """The columns that may share a cluster: groups (each sorted, two or more) linked by pairs that may reach
    ``threshold``, in order of their first column.

    Pairs are screened in float32 blocks of columns; a pair is kept when its float32 ``|ρ|`` is within
    ``(rows + 8) × float32 eps`` of the threshold, twice the worst-case rounding of a float32 dot product of
    that length, so no pair that reaches the threshold in float64 is missed (a few extra ones cost nothing:
    linkage leaves them alone).
    """
    n_rows, n_columns = ranks.shape
    cutoff = np.float32(threshold - (n_rows + 8) * np.finfo(np.float32).eps)
    scale = np.where(norms > 0, norms, np.inf).astype(np.float32)  # a constant column: ρ = 0 with every other
    labels = np.arange(n_columns)
    step = max(1, memory_budget() // (SCREEN_BYTES_PER_PAIR * n_columns))
    for first in range(0, n_columns, step):
        last = min(first + step, n_columns)
        rho = ranks[:, first:last].T @ ranks[:, first:]  # each pair once: partners at or after the block
        np.abs(rho, out=rho)
        rho /= scale[first:last, None]
        rho /= scale[None, first:]
        for row in range(last - first):  # the feature itself, and pairs already seen in this block
            rho[row, : row + 1] = 0.0
        hits = rho >= cutoff
        del rho
        labels = _link(labels, hits, first)
    sizes = np.bincount(labels, minlength=n_columns)
    linked = np.flatnonzero(sizes[labels] > 1)
    return [linked[labels[linked] == label] for label in np.unique(labels[linked])]


def _link(labels: np.ndarray, hits: np.ndarray, first: int) -> np.ndarray:
    """``labels`` (each column's component, named by its smallest column) once every pair ``(first + row,
    first + column)`` marked in ``hits`` is linked.

    A few rows at a time, so the edges handed to the graph stay bounded: a row whose partners already share
    one component adds one edge to it, any other row one edge per partner. A large group of correlated
    features therefore costs one row's edges per partner once, then one edge per row.
    """
    n = len(labels)
    width = hits.shape[1]
    rows_at_once = max(1, memory_budget() // (LINK_BYTES_PER_EDGE * width))
    for lo in range(0, len(hits), rows_at_once):
        part = hits[lo : lo + rows_at_once]
        if not part.any():
            continue
        partner_labels = np.where(part, labels[first:], n)
        lowest = partner_labels.min(axis=1)
        np.putmask(partner_labels, ~part, -1)
        highest = partner_labels.max(axis=1)
        del partner_labels
        rows = np.flatnonzero(lowest < n)
        one = rows[lowest[rows] == highest[rows]]
        many = rows[lowest[rows] != highest[rows]]
        many_rows, many_columns = np.nonzero(part[many])
        left = np.concatenate([one, many[many_rows]]) + first + lo
        right = np.concatenate([lowest[one], many_columns + first])
        labels = _merge(labels, left, right)
    return labels


def _merge(labels: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Labels of the connected components once pairs ``(left, right)`` are added; a label is the component's
    smallest column."""
    n = len(labels)
    edges = (np.concatenate([left, np.arange(n)]), np.concatenate([right, labels]))
    _, component = connected_components(coo_matrix((np.ones(len(edges[0]), np.int8), edges), shape=(n, n)),
                                        directed=False)
    smallest = np.full(component.max() + 1, n)
    np.minimum.at(smallest, component, np.arange(n))
    return smallest[component]


def _condensed_distances(ranks: np.ndarray, norms: np.ndarray, group: np.ndarray) -> np.ndarray:
    """``1 - |ρ|`` (|ρ| clipped at 1) between the ``group``'s columns in float64, in scipy's condensed order.

    Computed in square blocks of columns sized from the memory budget; only the condensed vector is whole.
    """
    n_rows, size = len(ranks), len(group)
    distance = np.empty(size * (size - 1) // 2)
    # two float64 blocks of b columns (16·rows·b bytes) and their b × b product (8·b² bytes)
    step = max(1, min(size, int(math.sqrt(n_rows**2 + memory_budget() / 8) - n_rows)))

    def unit_columns(first: int) -> np.ndarray:
        columns = group[first : first + step]
        return ranks[:, columns].astype(np.float64) / norms[columns]

    for first in range(0, size, step):
        left = unit_columns(first)
        for other in range(first, size, step):
            right = left if other == first else unit_columns(other)
            block = left.T @ right
            np.abs(block, out=block)
            np.minimum(block, 1.0, out=block)
            np.subtract(1.0, block, out=block)
            end = other + right.shape[1]
            for row in range(left.shape[1]):
                i = first + row
                j = max(other, i + 1)
                if j < end:
                    start = _condensed_index(size, i, j)
                    distance[start : start + end - j] = block[row, j - other :]
    return distance


def _largest_distance(distance: np.ndarray, size: int, inside: np.ndarray) -> float:
    """The largest condensed ``distance`` between two of the points ``inside`` (sorted), one row at a time."""
    largest = 0.0
    for k, i in enumerate(inside[:-1]):
        largest = max(largest, float(distance[_condensed_index(size, i, inside[k + 1 :])].max()))
    return largest


def _condensed_index(n: int, i, j):
    """Where pair ``(i, j)``, ``i < j``, of ``n`` points sits in a condensed distance vector."""
    return n * i - i * (i + 1) // 2 + (j - i - 1)


def importance_units(
    features: list[str], groups: dict[str, tuple[str, ...]], clusters: list[Cluster]
) -> dict[str, list[int]]:
    """What a behavioural method measures: every feature, then each manifest group, then each correlated cluster.

    This is also the order per-unit seeds are spawned in. A cluster with the same members as a
    manifest group is not added again: the group stands for it.
    """
    column = {f: j for j, f in enumerate(features)}
    units = {f: [j] for j, f in enumerate(features)}
    units.update({f"group:{g}": [column[m] for m in members] for g, members in groups.items()})
    groups_by_columns = joint_units(units)
    for cluster in clusters:
        if tuple(sorted(cluster.columns)) not in groups_by_columns:
            units[f"cluster:{cluster.name}"] = list(cluster.columns)
    return units


def joint_units(units: dict[str, list[int]]) -> dict[tuple[int, ...], str]:
    """The units of two or more columns (groups and clusters), by their sorted columns."""
    return {tuple(sorted(cols)): name for name, cols in units.items() if len(cols) > 1}


@dataclass(frozen=True)
class GroupRecord:
    """A manifest group measured as one unit: its importance, spread, 95% interval and rank among the groups."""

    feature: str  # "group:<name>"
    importance: float
    std: float
    low: float
    high: float
    rank: int


@dataclass(frozen=True)
class ClusterRecord:
    """A correlated cluster measured as one unit, beside what each member scored alone."""

    name: str
    members: list[str]
    min_abs_rho: float
    importance: float
    std: float
    low: float
    high: float
    member_importances: dict[str, float]


@runtime_checkable
class UnitRecords(Protocol):
    """Details that carry :func:`unit_records`' report records (permutation's and ablation's): the report shows them."""

    groups: list[GroupRecord]
    clusters: list[ClusterRecord]


def unit_records(
    samples: np.ndarray, units: dict[str, list[int]], features: list[str], clusters: list[Cluster]
) -> tuple[list[GroupRecord], list[ClusterRecord]]:
    """Report records of the manifest groups and the correlated clusters, from ``samples`` aligned with ``units``.

    Units left unmeasured (all-NaN rows, e.g. beyond an ablation budget) are left out.
    """
    from tasks.core.result import ImportanceResult

    names = list(units)
    measured = [i for i in range(len(names)) if not np.isnan(samples[i]).all()]
    group_rows = [i for i in measured if names[i].startswith("group:")]
    groups = ImportanceResult.from_samples("groups", "behavioural", [names[i] for i in group_rows], samples[group_rows])
    row_of = {name: i for i, name in enumerate(names)}
    joint = joint_units(units)
    measured_rows = set(measured)
    kept = [c for c in clusters if row_of[joint[tuple(sorted(c.columns))]] in measured_rows]
    rows = [row_of[joint[tuple(sorted(c.columns))]] for c in kept]
    grouped = ImportanceResult.from_samples("clusters", "behavioural", [c.name for c in kept], samples[rows])
    cluster_records = [
        ClusterRecord(name=c.name, members=list(c.members), min_abs_rho=c.min_abs_rho,
                      **{k: record[k] for k in ("importance", "std", "low", "high")},
                      member_importances={features[j]: float(np.nanmean(samples[row_of[features[j]]]))
                                          for j in c.columns})
        for c, record in zip(kept, grouped.records())
    ]
    return [GroupRecord(**record) for record in groups.records()], cluster_records
