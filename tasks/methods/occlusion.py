"""Occlusion: how much worse the model does on the test images when one patch of the grid is covered.

Each patch (``r<row>c<column>``, :func:`tasks.registry.images.patch_units`) is set, in every test image, to the
values the training split's mean image has there (the test split's when there is no training split): a neutral
grey for that region, not a black square the model never saw. The importance of a patch is the mean, over the
test images, of the per-image loss with the patch covered minus the loss without; its 95% interval comes from a
bootstrap over the images (the same resamples for every patch, so two patches are compared on the same images,
as the ranking's pairwise tests need). Covering is deterministic: there are no repeats to take.

All the covered copies of a block of images go to the model in one batched call per patch.

Caveats (Zeiler & Fergus 2014; Hooker et al. 2019): a covered patch is an image the model never saw, so a large
drop can be the model reacting to the cover as much as to the loss of what was under it; and a patch whose
content another patch repeats (a symmetric object) scores low alone, as a correlated column does under
permutation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tasks.core.metrics import null_loss
from tasks.core.options import MethodOptions
from tasks.core.result import Details, ImportanceResult
from tasks.methods.base import Context, Method, ResultSpec, Section
from tasks.registry.images import default_grid

BOOTSTRAP_DRAWS = 200
BLOCK_BYTES = 64 * 2**20  # the covered copies of one block of images
#: The mean image drawn under the heat map is kept at most this many pixels a side (every n-th pixel).
HEATMAP_SIDE = 64
NOTES = (
    "Occlusion: each patch is covered, in every test image, with the training split's mean image there; the "
    "importance is the mean increase of the per-image loss, its 95% interval a bootstrap over the images.",
    "A covered patch makes an image the model never saw: part of a drop can be the model's reaction to the cover.",
)


@dataclass(frozen=True)
class OcclusionDetails(Details):
    """How occlusion ran, and what the report draws its heat map from."""

    grid: tuple[int, int]  # patch rows, patch columns
    n_images: int
    draws: int
    cover: str  # "training mean image" or "test mean image"
    baseline: float  # the loss of the uncovered test images
    mean_image: list[list[float]]  # the cover, grey (channels averaged), at most HEATMAP_SIDE pixels a side


def occlusion_losses(forward, X: np.ndarray, y: np.ndarray, patches: dict[str, list[int]], cover: np.ndarray,
                     per_row) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the loss uncovered, ``(n,)``, and each patch's covered loss minus it, ``(patches, n)``."""
    base = per_row(y, forward(X))
    increase = np.empty((len(patches), len(X)))
    block = max(1, BLOCK_BYTES // (4 * X.shape[1]))  # images covered at once: memory stays bounded
    for start in range(0, len(X), block):
        rows = slice(start, start + block)
        for i, columns in enumerate(patches.values()):
            covered = X[rows].copy()
            covered[:, columns] = cover[columns]
            increase[i, rows] = per_row(y[rows], forward(covered)) - base[rows]
    return base, increase


def bootstrap_means(values: np.ndarray, draws: int, seed: int) -> np.ndarray:
    """``(units, draws)`` means of ``values`` ``(units, n)`` over images resampled with replacement (shared)."""
    rng = np.random.default_rng(seed)
    index = rng.integers(0, values.shape[1], size=(draws, values.shape[1]))
    return np.stack([values[:, rows].mean(axis=1) for rows in index], axis=1)


def audit_occlusion(subject, *, seed: int = 0, draws: int = BOOTSTRAP_DRAWS) -> ImportanceResult:
    """Occlusion importance of every patch of an image version's grid, on its test split."""
    version, test, metric = subject.version, subject.test, subject.metric
    patches = subject.patches()
    source = subject.train if subject.train is not None else test
    cover = source.X.mean(axis=0).astype(np.float32)
    # a loss where lower is better: accuracy's per-row "correct" becomes its negation
    per_row = (lambda y, p: -metric.per_row(y, p)) if metric.higher_is_better else metric.per_row
    base, increase = occlusion_losses(subject.forward(), test.X, test.y, patches, cover, per_row)
    samples = bootstrap_means(increase, draws, seed)
    interval = (np.percentile(samples, 2.5, axis=1), np.percentile(samples, 97.5, axis=1))
    height, width, _ = version.image_shape
    step = max(1, -(-max(height, width) // HEATMAP_SIDE))
    grey = cover.reshape(version.image_shape).mean(axis=2)[::step, ::step]
    details = OcclusionDetails(grid=version.manifest.patch_grid or default_grid(version.image_shape),
                               n_images=test.n_rows, draws=draws,
                               cover="training mean image" if subject.train is not None else "test mean image",
                               baseline=float(np.mean(base)), mean_image=grey.round(4).tolist())
    y_train = subject.train.y if subject.train is not None else None
    return ImportanceResult.from_samples("occlusion", "behavioural", tuple(patches), samples, interval=interval,
                                         sampling="bootstrap", metric=metric.name, notes=NOTES, details=details,
                                         reference=null_loss(metric, test.y, y_train, version.task))


class Options(MethodOptions):
    """Occlusion has no options of its own: the grid is the manifest's, the bootstrap seeded by the run."""


def compute(subject, options: Options, context: Context) -> list[ImportanceResult]:
    """Occlusion of every patch of the grid."""
    return [audit_occlusion(subject, seed=context.seed)]


def section(result: ImportanceResult) -> dict[str, Any] | None:
    """The occlusion section: the grid's heat map over the mean image, and how it was measured."""
    from tasks.core.charts import data_uri, patch_heatmap

    if not isinstance(result.details, OcclusionDetails) or not result.ok:
        return None
    d = result.details
    grid = np.asarray(result.importances_mean).reshape(d.grid)  # the patches come row by row from the top left
    return {"grid": d.grid, "n_images": d.n_images, "draws": d.draws, "cover": d.cover, "baseline": d.baseline,
            "metric": result.metric, "chart": data_uri(patch_heatmap(np.asarray(d.mean_image), grid,
                                                                     "Loss increase when the patch is covered"))}


METHOD = Method(
    name="occlusion", title="Occlusion", kind="behavioural", units=frozenset({"patch"}),
    results=(ResultSpec("occlusion", "Occlusion (patch covered with the mean image)"),),
    options=Options, compute=compute, stored=(OcclusionDetails,), section=Section("occlusion.html.j2", section),
)
