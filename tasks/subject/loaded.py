"""The loaded subject of an audit: one model version's model, adapter, splits, metric and units, loaded once.

Tasks receive the small, picklable :class:`~tasks.registry.versions.ModelVersion` (so they run on Dask workers
too) and call :func:`load_subject`, which loads, validates and codes everything once per process:
the model (safe mode), the splits, the adapter between them (:mod:`tasks.subject.adapter`), the metric, the
correlated clusters and the importance units that permutation and ablation share. The loader is
keyed by the version's digests, manifest and sampling, and keeps the last two subjects, so a
long-running worker that audits many versions holds at most two in memory.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from prefect import task

from tasks.core.errors import ModelLoadError
from tasks.core.metrics import Metric, get_metric
from tasks.core.options import DEFAULT_CLUSTER_THRESHOLD
from tasks.registry.images import patch_units
from tasks.registry.versions import (
    ModelVersion,
    Split,
    load_keras_model,
    read_image_split_of,
    read_split,
    target_values,
)
from tasks.subject.adapter import Adapter, build_adapter, head_loss, image_adapter
from tasks.subject.clusters import Cluster, Clustering, clustering, importance_units
from tasks.subject.modeling import Forward, compiled_loss_name

CACHED_SUBJECTS = 2


@dataclass(frozen=True, eq=False)
class Subject:
    """Everything the methods read about one model version; built by :func:`load_subject`, never changed."""

    version: ModelVersion
    model: Any
    adapter: Adapter
    test: Split
    train: Split | None
    metric: Metric
    notes: tuple[str, ...] = ()  # what loading had to do that the report should say (e.g. a legacy file)

    @property
    def features(self) -> tuple[str, ...]:
        return self.adapter.features

    @property
    def categorical(self) -> tuple[str, ...]:
        return self.adapter.categorical

    def forward(self) -> Forward:
        """The model as ``f(coded rows) -> predictions of the audited output``, compiled once per subject."""
        with self._lock:
            if self._forward is None:
                object.__setattr__(self, "_forward", Forward(self.model, self.adapter))
            return self._forward

    def clusters(self, threshold: float = DEFAULT_CLUSTER_THRESHOLD, *, seed: int = 0) -> list[Cluster]:
        """Strongly correlated numeric features of the test split (strings and categorical codes are left out)."""
        return self._clustering(threshold, seed).clusters

    def clustering_note(self, threshold: float = DEFAULT_CLUSTER_THRESHOLD, *, seed: int = 0) -> str | None:
        """What the clusters leave out, for a method's caveats (a group too large to link), or None."""
        return self._clustering(threshold, seed).note

    def _clustering(self, threshold: float, seed: int) -> Clustering:
        key = ("clusters", threshold, seed)
        with self._lock:
            if key not in self._memo:
                numeric = list(self.adapter.numeric)
                found = clustering(self.test.X[:, numeric], [self.features[j] for j in numeric],
                                   threshold=threshold, random_state=seed)
                self._memo[key] = Clustering(
                    [Cluster(c.members, tuple(numeric[j] for j in c.columns), c.min_abs_rho) for c in found.clusters],
                    found.unlinked, found.max_linked)
            return self._memo[key]

    def patches(self) -> dict[str, list[int]]:
        """An image version's patches (``r<row>c<column>``) -> their pixel columns; empty for a tabular one."""
        if self.version.image_shape is None:
            return {}
        with self._lock:
            if "patches" not in self._memo:
                self._memo["patches"] = patch_units(self.version.image_shape, self.version.manifest.patch_grid)
            return self._memo["patches"]

    def units(self, threshold: float = DEFAULT_CLUSTER_THRESHOLD, *, seed: int = 0) -> dict[str, list[int]]:
        """What permutation and ablation measure: every feature, block inputs, manifest groups, correlated clusters."""
        groups = dict(self.version.manifest.groups)
        features = list(self.features)
        for name, columns in self.adapter.blocks().items():
            groups.setdefault(name.removeprefix("input:"), tuple(features[j] for j in columns))
        return importance_units(features, groups, self.clusters(threshold, seed=seed))

    def __post_init__(self) -> None:
        object.__setattr__(self, "_lock", threading.RLock())
        object.__setattr__(self, "_forward", None)
        object.__setattr__(self, "_memo", {})


def build_subject(version: ModelVersion) -> Subject:
    """Load and check a model version: model (safe mode), splits, adapter, metric. Raises on bad input, once."""
    model, notes = load_keras_model(version.model_path, task=version.task, imports=version.imports)
    if version.image_shape is not None:
        return _image_subject(version, model, notes)
    test_frame = read_split(version.test_path, version)
    train_frame = read_split(version.train_path, version) if version.train_path is not None else None
    frames = {version.test_path.name: test_frame}
    if train_frame is not None:
        frames[version.train_path.name] = train_frame
    manifest = version.manifest
    try:
        adapter = build_adapter(model, version.features, frames, inputs={k: list(v) for k, v in manifest.inputs.items()},
                                output=manifest.output, categorical=manifest.categorical)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{version.model_path.name}: {exc}") from None
    test = Split(adapter.encode(test_frame), target_values(test_frame, version), adapter.features)
    train = (Split(adapter.encode(train_frame), target_values(train_frame, version), adapter.features)
             if train_frame is not None else None)
    metric = get_metric(manifest.metric, version.task, compiled_loss_name(head_loss(model, adapter)))
    subject = Subject(version=version, model=model, adapter=adapter, test=test, train=train, metric=metric,
                      notes=notes)
    check_predictions(subject)
    return subject


def _image_subject(version: ModelVersion, model, notes: tuple[str, ...]) -> Subject:
    """An image version's subject: its splits flattened to pixel columns, fed back as images."""
    try:
        adapter = image_adapter(model, version.features, version.image_shape, output=version.manifest.output)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{version.model_path.name}: {exc}") from None
    test = read_image_split_of(version.test_path, version)
    train = read_image_split_of(version.train_path, version) if version.train_path is not None else None
    metric = get_metric(version.manifest.metric, version.task, compiled_loss_name(head_loss(model, adapter)))
    subject = Subject(version=version, model=model, adapter=adapter, test=test, train=train, metric=metric,
                      notes=notes)
    check_predictions(subject)
    return subject


def check_predictions(subject: Subject, rows: int = 256) -> None:
    """Run the model on a few test rows and check what the audited output predicts against the task.

    A model that cannot run on its own data, or whose output is not what the task scores (a value per
    row for regression, a probability for binary, a probability per class for multiclass; logits only
    where the compiled loss declares them), is refused here with one line, before any method runs.
    """
    version, adapter = subject.version, subject.adapter
    output = f"output '{adapter.output_name}'" if adapter.output_name else "the model's output"
    try:
        predictions = subject.forward()(subject.test.X[:rows])
    except Exception as exc:  # TensorFlow raises many types; the report must not carry its trace
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{version.model_path.name} failed on rows of {version.test_path.name} "
                             f"({type(exc).__name__}: {first}); check the columns against the model's inputs") from None
    n = min(rows, subject.test.n_rows)
    y = subject.test.y
    if version.task in ("regression", "binary") and predictions.shape != (n,):
        raise ModelLoadError(f"{version.model_path.name}: {output} gives {predictions.shape[1:]} values per row; a "
                             f"{version.task} audit needs one per row")
    if not np.all(np.isfinite(predictions)):
        raise ModelLoadError(f"{version.model_path.name}: {output} predicts NaN or infinite values on "
                             f"{version.test_path.name}")
    if version.task == "binary" and (predictions.min() < 0 or predictions.max() > 1):
        raise ModelLoadError(f"{version.model_path.name}: {output} gives values outside [0, 1], not probabilities; "
                             "end the head with a sigmoid, or compile with from_logits=True")
    if version.task == "multiclass":
        classes = int(y.max()) + 1
        if predictions.ndim != 2 or predictions.shape[1] < classes:
            raise ModelLoadError(f"{version.model_path.name}: {output} gives {predictions.shape[1:]} values per row, "
                                 f"but the target holds {classes} classes; a multiclass head gives one probability "
                                 "per class")
        if predictions.min() < 0 or not np.allclose(predictions.sum(axis=1), 1.0, atol=1e-3):
            raise ModelLoadError(f"{version.model_path.name}: {output} does not give probabilities that sum to 1; "
                                 "end the head with a softmax, or compile with from_logits=True")


_SUBJECTS: dict[tuple, Subject] = {}
_SUBJECTS_LOCK = threading.Lock()


def subject_key(version: ModelVersion) -> tuple:
    """What determines a subject: the files' digests, the manifest, the test sampling and where the model lies."""
    return (str(version.model_path), tuple(sorted(version.sha256.items())), repr(version.manifest), version.features,
            version.test_rows, version.max_test_rows, version.sample_seed, version.imports)


def load_subject(version: ModelVersion) -> Subject:
    """The version's subject, loaded once per process (the last :data:`CACHED_SUBJECTS` are kept)."""
    key = subject_key(version)
    with _SUBJECTS_LOCK:
        if key not in _SUBJECTS:
            if len(_SUBJECTS) >= CACHED_SUBJECTS:
                _SUBJECTS.pop(next(iter(_SUBJECTS)))
            _SUBJECTS[key] = build_subject(version)
        return _SUBJECTS[key]


@dataclass(frozen=True)
class Loaded:
    """What loading found, for the report: rows per split, how each input is fed, the audited output, notes."""

    rows: dict[str, int]
    inputs: tuple[dict[str, Any], ...]  # per model input: name, shape, dtype, the columns feeding it
    output: str | None  # the audited output of a model with several
    notes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"rows": dict(self.rows), "inputs": [dict(i) for i in self.inputs], "output": self.output,
                "notes": list(self.notes)}


def check_version(version: ModelVersion) -> Loaded:
    """Load everything once at the boundary (model, splits, adapter) and say what was found."""
    subject = load_subject(version)
    rows = {"test": subject.test.n_rows}
    if subject.train is not None:
        rows["train"] = subject.train.n_rows
    adapter = subject.adapter
    inputs = tuple({"name": feed.name, "shape": list(feed.shape), "dtype": feed.dtype,
                    "columns": [adapter.features[j] for j in feed.columns]} for feed in adapter.inputs)
    return Loaded(rows, inputs, adapter.output_name, subject.notes)


@task(name="check-version")
def check_version_task(version: ModelVersion) -> Loaded:
    """Validate the model and its splits before any method runs."""
    return check_version(version)

