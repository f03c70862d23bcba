"""The model registry: find a model version, read its manifest and splits, load the model safely.

A registry is a folder ``<registry>/<model-name>/<version>/`` holding ``model.keras``
(or ``model.h5``), ``test.parquet`` (or ``.csv``), optionally ``train.parquet`` and a
``manifest.json``. Everything here validates at the boundary and raises the errors
of :mod:`tasks.core.errors`; past it, the rest of the code trusts the types.

Where the registry lives is its backend's business (:mod:`tasks.registry.base`): a folder is read where it is, an
``s3://``/``gs://`` registry is downloaded into a local cache first; either way the files are read from local disk.

A model folder, version folder or file that is a symbolic link must resolve inside the registry;
one that leads outside it is refused unless ``FEATUREAUDIT_ALLOW_EXTERNAL_LINKS=1`` is set.

A model file is checked before Keras reads it (:func:`check_model_file`), so a decompression bomb
costs a directory listing, not the machine's memory.

Keras loads in safe mode only (:func:`load_keras_model`). Custom classes are found through the modules the
operator names (``--import``, carried by :attr:`ModelVersion.imports`), never through a module the file
names; a legacy ``.h5`` whose compiled loss Keras 3 cannot read is compiled with the loss of its task.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from prefect import task

from tasks.core.errors import (
    DataError,
    FeatureAuditError,
    ManifestError,
    ModelLoadError,
    ModuleImportError,
    RegistryError,
    retry_unless_bad_input,
)
from tasks.registry.base import (
    MAX_MODEL_BYTES_ENV,
    MODEL_FILES,
    OBJECT_SCHEMES,
    FolderRegistry,
    ObjectStoreRegistry,
    Provenance,
    Registry,
    human_size,
    is_mlflow,
    max_model_bytes,
)
from tasks.registry.base import (
    check_inside as _check_inside,
)
from tasks.registry.base import (
    check_name as _check_name,
)
from tasks.registry.images import (
    check_labels,
    check_patch_grid,
    image_split_shape,
    patch_names,
    pixel_names,
    read_image_split,
)

TaskType = Literal["regression", "binary", "multiclass"]
TASK_TYPES: tuple[str, ...] = ("regression", "binary", "multiclass")
Modality = Literal["tabular", "image"]
MODALITIES: tuple[str, ...] = ("tabular", "image")
_MANIFEST_KEYS = {"target", "task", "features", "categorical", "groups", "training", "metric", "inputs", "output",
                  "modality", "class_names", "patch_grid"}
#: Keys that name columns: an image version has none (its units are patches of the grid).
_TABULAR_KEYS = ("target", "features", "categorical", "groups", "inputs")

#: A member over :data:`RATIO_CHECKED_BYTES` that inflates more than this many times its stored size is a
#: bomb: Keras' own members are stored (1:1), float weights deflate barely (~1.1:1) and JSON ~10:1, while
#: a run of zeros deflates ~1000:1.
MAX_MEMBER_RATIO = 200
RATIO_CHECKED_BYTES = 10 * 2**20
#: A Keras archive holds a handful of members (config, metadata, weights, assets).
MAX_MEMBERS = 10_000
#: The zip directory may take this many bytes per allowed member (an entry is 46 bytes plus its name, extra
#: field and comment); zipfile reads the whole directory into memory before it counts the entries.
MAX_DIRECTORY_BYTES_PER_MEMBER = 512


@dataclass(frozen=True)
class Manifest:
    """What ``manifest.json`` says about a model version."""

    target: str
    task: TaskType
    features: tuple[str, ...] | None = None
    categorical: tuple[str, ...] = ()
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    metric: str | None = None
    inputs: dict[str, tuple[str, ...]] = field(default_factory=dict)  # model input -> the columns feeding it, C order
    output: str | int | None = None  # the audited output of a model with several: its name or index
    modality: Modality = "tabular"  # "image": test.npz with arrays x (n, H, W, C) and y (:mod:`tasks.registry.images`)
    class_names: tuple[str, ...] = ()  # a classifier's class names, by code
    patch_grid: tuple[int, int] | None = None  # an image's grid of patches (rows, columns); None: the default


@dataclass(frozen=True)
class ModelVersion:
    """A resolved model version: where its files are and what they hold. Small and picklable."""

    registry: Path
    name: str
    version: str
    model_path: Path
    test_path: Path
    train_path: Path | None
    manifest: Manifest
    features: tuple[str, ...]
    sha256: dict[str, str]
    resolved: dict[str, Path] = field(default_factory=dict)  # file name -> absolute path, links resolved
    test_rows: int = 0
    max_test_rows: int | None = None
    sample_seed: int = 0
    imports: tuple[str, ...] = ()  # modules the operator named (--import) to register custom Keras objects
    uri: str | None = None  # the registry as named: a folder's absolute path, or s3://bucket/prefix
    provenance: Provenance | None = None  # the registry's own record of the version (MLflow: run id, alias asked for)
    manifest_sha256: str = ""  # manifest.json's digest: the manifest changes the numbers as the files do
    image_shape: tuple[int, int, int] | None = None  # an image version's (height, width, channels)

    # ``registry`` is always a local folder: the registry itself, or the cache an object store's version was
    # downloaded into (:mod:`tasks.registry.base`); ``folder`` is where the version's files lie on this machine.

    @property
    def folder(self) -> Path:
        return self.registry / self.name / self.version

    @property
    def test_sampled(self) -> bool:
        """Whether the test split is over the row cap, so the methods see a seeded sample of it."""
        return self.max_test_rows is not None and self.test_rows > self.max_test_rows

    def test_sampling(self) -> dict[str, Any]:
        """How many test rows the file holds and how many the audit uses, with a sentence saying so."""
        used = self.max_test_rows if self.test_sampled else self.test_rows
        note = (f"The test split has {self.test_rows:,} rows, over the cap of {self.max_test_rows:,}: every method "
                f"uses the same {used:,} rows, sampled without replacement with seed {self.sample_seed}."
                if self.test_sampled else None)
        return {"in_file": self.test_rows, "used": used, "sampled": self.test_sampled, "cap": self.max_test_rows,
                "seed": self.sample_seed if self.test_sampled else None, "note": note}

    @property
    def units(self) -> tuple[str, ...]:
        """What the report ranks: the features, or an image version's patches (``r<row>c<column>``)."""
        if self.image_shape is None:
            return self.features
        return patch_names(self.image_shape, self.manifest.patch_grid)

    @property
    def unit_words(self) -> str:
        """What :attr:`units` are, in the report's words."""
        return "input features" if self.image_shape is None else "patches of the image"

    @property
    def categorical(self) -> tuple[str, ...]:
        return self.manifest.categorical

    @property
    def task(self) -> TaskType:
        return self.manifest.task


@dataclass(frozen=True, eq=False)
class Split:
    """One data split as arrays: ``X`` the coded float32 matrix in feature order (:mod:`tasks.subject.adapter`), ``y`` the
    target."""

    X: np.ndarray
    y: np.ndarray
    features: tuple[str, ...]

    @property
    def n_rows(self) -> int:
        return int(self.X.shape[0])


def open_registry(reference: str | Path) -> Registry:
    """The backend for a registry reference: ``mlflow``/``mlflow+http://…`` an MLflow Model Registry,
    ``s3://…``/``gs://…`` an object store, anything else a folder."""
    text = str(reference)
    if is_mlflow(text):
        from tasks.registry.mlflow import MlflowRegistry  # mlflow is an extra: imported only when asked for

        return MlflowRegistry(text)
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme in OBJECT_SCHEMES:
        return ObjectStoreRegistry(text)
    if scheme:
        raise RegistryError(f"registry {text}: unknown scheme '{scheme}://'; use a folder, s3://bucket/prefix, "
                            "gs://bucket/prefix, mlflow or mlflow+http://host:port")
    return FolderRegistry(Path(reference))


def resolve_version(
    registry: str | Path, name: str, version: str | None = None, *, max_test_rows: int | None = None, seed: int = 0,
    imports: tuple[str, ...] = (),
) -> ModelVersion:
    """Find the newest (or the named) version of ``name`` and read its manifest.

    A test split over ``max_test_rows`` rows is sampled (seeded by ``seed``) wherever it is loaded; the modules
    ``imports`` are imported wherever the model is loaded (:func:`load_keras_model`).
    """
    if max_test_rows is not None and (isinstance(max_test_rows, bool) or max_test_rows < 1):
        raise FeatureAuditError(f"max_test_rows must be a positive number of rows, not {max_test_rows!r}")
    _check_name("model name", name)
    if version is not None:
        _check_name("version", version)
    local = open_registry(registry).fetch(name, version)
    registry, version, folder = local.root, local.version, local.folder

    model_path = next((folder / f for f in MODEL_FILES if (folder / f).is_file()), None)
    if model_path is None:
        raise RegistryError(f"{folder} holds no model file (expected one of: {', '.join(MODEL_FILES)})")
    manifest = read_manifest(folder / "manifest.json")
    image = manifest.modality == "image"
    test_path = _find_split(folder, "test", image)
    if test_path is None:
        raise RegistryError(f"{folder} holds no test split (expected "
                            f"{'test.npz, as manifest.json says modality image' if image else 'test.parquet or test.csv'})")
    train_path = _find_split(folder, "train", image)
    files = [p for p in (model_path, test_path, train_path) if p is not None]
    resolved = _check_inside(registry, *files, folder / "manifest.json")
    image_shape = None
    if image:
        image_shape, test_rows = image_split_shape(test_path, train_path)
        features = pixel_names(image_shape)
        check_patch_grid(manifest.patch_grid, image_shape, folder / "manifest.json")
    else:
        columns, test_rows = _split_shape(test_path)
        features = _resolve_features(manifest, columns, test_path)
    hashes = {p.name: sha256_file(p) for p in files}
    return ModelVersion(
        registry=registry,
        name=name,
        version=version,
        model_path=model_path,
        test_path=test_path,
        train_path=train_path,
        manifest=manifest,
        features=features,
        sha256=hashes,
        resolved={p.name: resolved[p] for p in files},
        test_rows=test_rows,
        max_test_rows=max_test_rows,
        sample_seed=seed,
        imports=tuple(imports),
        uri=local.uri,
        provenance=local.provenance,
        manifest_sha256=sha256_file(folder / "manifest.json"),
        image_shape=image_shape,
    )


def list_models(registry: str | Path) -> list[str]:
    """The model names in a registry (its visible sub-folders), in natural order."""
    return open_registry(registry).list_models()


@task(name="list-models", retries=2, retry_delay_seconds=2, retry_condition_fn=retry_unless_bad_input)
def list_models_task(registry: str) -> list[str]:
    """The models to audit when none are named."""
    return list_models(registry)


def read_manifest(path: Path) -> Manifest:
    """Parse and validate ``manifest.json``."""
    if not path.is_file():
        raise ManifestError(f"{path} is missing: each version needs a manifest with 'target' and 'task'")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ManifestError(f"{path} must hold a JSON object, not {type(raw).__name__}")
    unknown = sorted(set(raw) - _MANIFEST_KEYS)
    if unknown:
        raise ManifestError(f"{path} has unknown keys {unknown}; allowed: {sorted(_MANIFEST_KEYS)}")
    modality = raw.get("modality", "tabular")
    if modality not in MODALITIES:
        raise ManifestError(f"{path} has modality {modality!r}; expected one of {', '.join(MODALITIES)}")
    class_names = raw.get("class_names", [])
    if not _is_str_list(class_names):
        raise ManifestError(f"{path}: 'class_names' must be a list of names, one per class code")
    grid = raw.get("patch_grid")
    if grid is not None and not (isinstance(grid, list) and len(grid) == 2
                                 and all(isinstance(g, int) and not isinstance(g, bool) and g >= 1 for g in grid)):
        raise ManifestError(f"{path}: 'patch_grid' must be [rows, columns] of patches, such as [4, 4]")
    if modality == "image":
        tabular = [k for k in _TABULAR_KEYS if k in raw]
        if tabular:
            raise ManifestError(f"{path}: '{tabular[0]}' names columns, but an image version has none: its images "
                                "and labels are the arrays x and y of test.npz; drop the key")
        raw = {**raw, "target": "y"}
    elif grid is not None:
        raise ManifestError(f"{path}: 'patch_grid' is for image versions (\"modality\": \"image\")")
    target = raw.get("target")
    if not isinstance(target, str) or not target:
        raise ManifestError(f"{path} lacks 'target' (the name of the target column)")
    task_type = raw.get("task")
    if task_type not in TASK_TYPES:
        raise ManifestError(f"{path} has task {task_type!r}; expected one of {', '.join(TASK_TYPES)}")
    features = raw.get("features")
    if features is not None and not _is_str_list(features):
        raise ManifestError(f"{path}: 'features' must be a list of column names")
    categorical = raw.get("categorical", [])
    if not _is_str_list(categorical):
        raise ManifestError(f"{path}: 'categorical' must be a list of column names")
    groups = raw.get("groups", {})
    if not isinstance(groups, dict) or not all(_is_str_list(v) and v for v in groups.values()):
        raise ManifestError(f"{path}: 'groups' must map a group name to a non-empty list of column names")
    training = raw.get("training", {})
    if not isinstance(training, dict):
        raise ManifestError(f"{path}: 'training' must be an object such as {{\"epochs\": 20, \"batch_size\": 64}}")
    metric = raw.get("metric")
    if metric is not None and not isinstance(metric, str):
        raise ManifestError(f"{path}: 'metric' must be a metric name such as \"mse\"")
    inputs = raw.get("inputs", {})
    if not isinstance(inputs, dict) or not all(_is_str_list(v) and v for v in inputs.values()):
        raise ManifestError(f"{path}: 'inputs' must map a model input name to the list of columns that feed it, "
                            "in C order, such as {\"numeric\": [\"age\", \"income\"]}")
    output = raw.get("output")
    if output is not None and (isinstance(output, bool) or not isinstance(output, (str, int))):
        raise ManifestError(f"{path}: 'output' must name the audited output of the model, or give its index")
    return Manifest(
        target=target,
        task=task_type,
        features=tuple(features) if features is not None else None,
        categorical=tuple(categorical),
        groups={str(k): tuple(v) for k, v in groups.items()},
        training=dict(training),
        metric=metric,
        inputs={str(k): tuple(v) for k, v in inputs.items()},
        output=output,
        modality=modality,
        class_names=tuple(class_names),
        patch_grid=tuple(grid) if grid is not None else None,
    )


def read_image_split_of(path: Path, version: ModelVersion) -> Split:
    """An image version's split as the methods take it: each image flattened in C order (its pixel names are the
    version's features), the labels checked against the task; a test split over the row cap is sampled (seeded),
    as :func:`read_split` samples rows."""
    x, y = read_image_split(path)
    if x.shape[1:] != version.image_shape:
        raise DataError(f"{path}: its images are {x.shape[1:]}, but the test split's are {version.image_shape} "
                        "(height, width, channels)")
    check_labels(y, version.task, path)
    if path == version.test_path and version.test_sampled:
        rng = np.random.default_rng(version.sample_seed)
        keep = np.sort(rng.choice(len(x), size=version.max_test_rows, replace=False))
        x, y = x[keep], y[keep]
    y = y.astype(np.float32) if version.task == "regression" else y.astype(np.int64)
    return Split(np.ascontiguousarray(x.reshape(len(x), -1)), y, version.features)


def read_split(path: Path, version: ModelVersion) -> pd.DataFrame:
    """Read a split's feature and target columns and check them against the manifest: columns present, rows,
    finite numbers, labels for the task. A test split over the row cap is sampled (seeded).

    Column kinds (numbers, codes, strings) are checked against the model's inputs by :func:`tasks.subject.adapter.build_adapter`.
    """
    frame = _read_frame(path)
    manifest = version.manifest
    if manifest.target not in frame.columns:
        raise DataError(
            f"{path.name} has no target column '{manifest.target}' (named by manifest.json); "
            f"columns present: {_preview(frame.columns)}"
        )
    missing = [c for c in version.features if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path.name} has no column '{missing[0]}' (the manifest lists it as a feature); "
            f"columns present: {_preview(frame.columns)}"
        )
    if len(frame) == 0:
        raise DataError(f"{path.name} has zero rows; export the split again")
    for column in (*version.features, manifest.target):
        series = frame[column]
        if not (pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)):
            if column == manifest.target:
                raise DataError(f"{path.name} target '{column}' has dtype {series.dtype}; featureaudit needs numbers "
                                "(class codes 0..K-1 for a classifier)")
            continue  # strings: checked against the model's inputs
        values = series.to_numpy(dtype=float, na_value=np.nan)
        bad = int((~np.isfinite(values)).sum())
        if bad:
            raise DataError(f"{path.name} column '{column}' has {bad} NaN or infinite values; impute or drop them")
    for column in manifest.categorical:
        if not pd.api.types.is_numeric_dtype(frame[column]):
            continue
        values = frame[column].to_numpy(dtype=float)
        if (values < 0).any() or (values != np.round(values)).any():
            raise DataError(f"{path.name} column '{column}' is listed as categorical but holds non-integer or negative codes")
    y = frame[manifest.target].to_numpy()
    if manifest.task == "binary" and not np.isin(y, (0, 1)).all():
        raise DataError(f"{path.name} target '{manifest.target}' must hold 0/1 labels for a binary task")
    if manifest.task == "multiclass" and ((y < 0).any() or (y != np.round(y)).any()):
        raise DataError(f"{path.name} target '{manifest.target}' must hold class codes 0..K-1 for a multiclass task")
    if path == version.test_path and version.test_sampled:
        rng = np.random.default_rng(version.sample_seed)
        frame = frame.iloc[np.sort(rng.choice(len(frame), size=version.max_test_rows, replace=False))]
    return frame[[*version.features, manifest.target]].reset_index(drop=True)


def target_values(frame: pd.DataFrame, version: ModelVersion) -> np.ndarray:
    """The target column as the metrics take it: float32 for regression, int64 class codes otherwise."""
    y = frame[version.manifest.target].to_numpy()
    return y.astype(np.float32) if version.task == "regression" else y.astype(np.int64)


def load_keras_model(path: Path, *, task: TaskType | None, imports: tuple[str, ...] = ()) -> tuple[Any, tuple[str, ...]]:
    """Load a Keras model in safe mode, after :func:`check_model_file`; the model and notes for the report.

    ``imports`` (the operator's ``--import``) are imported first, so the custom classes they register
    can be found; nothing named by the model file is ever imported, and stored code never runs. A model
    whose compiled loss does not deserialize (a legacy ``.h5`` compiled with ``"mse"``, a custom loss
    nobody registered), or that was saved without one, is compiled with the loss ``task`` implies and a
    default Adam optimizer, and a note says so (``task=None``: such a file is refused).
    """
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist")
    check_model_file(path)
    import_modules(imports)
    import keras

    try:
        model, unread = keras.saving.load_model(path, safe_mode=True, compile=True), None
    except Exception as exc:  # Keras raises many types for corrupt files
        if _refused_by_safe_mode(exc):
            raise _load_error(path, exc) from None
        try:  # loads without the compiled loss: then the loss (or its metrics) was what failed
            model, unread = keras.saving.load_model(path, safe_mode=True, compile=False), exc
        except Exception as again:
            raise _load_error(path, again) from None
    if unread is None and getattr(model, "loss", None) is not None:
        return model, ()
    if task is None:
        raise ModelLoadError(f"{path.name} has no compiled loss Keras 3 can read; the task is needed to choose one")
    loss, loss_name = _task_loss(model, task)
    model.compile(optimizer=keras.optimizers.Adam(), loss=loss)
    if unread is None:
        why = f"{path.name} was saved without a compiled loss; compiled with {loss_name}"
    else:
        missing = _missing_custom(unread)
        read = (f"uses a custom {missing[0]} '{missing[1]}' that is not registered (pass --import with the module "
                "that registers it to keep it)" if missing else "could not be read by Keras 3")
        why = f"{path.name}'s compiled loss {read}; loaded without it and compiled with {loss_name}"
    return model, (f"{why}, the loss the task implies, and a default Adam optimizer for retraining.",)


def import_modules(names: tuple[str, ...] | list[str]) -> None:
    """Import the modules the operator named (``--import``), which register custom Keras objects; one line if one fails."""
    import importlib

    for name in names:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            raise ModuleImportError(f"--import {name}: {exc}") from None
        except Exception as exc:  # the module itself raised while importing
            raise ModuleImportError(f"--import {name}: {type(exc).__name__}: {exc}") from None


#: The loss a task implies, for a model whose own cannot be read: (loss class, its name in notes).
_TASK_LOSSES = {
    "regression": ("MeanSquaredError", "mean squared error"),
    "binary": ("BinaryCrossentropy", "binary cross-entropy"),
    "multiclass": ("SparseCategoricalCrossentropy", "sparse categorical cross-entropy"),
}


def _task_loss(model, task: TaskType) -> tuple[Any, str]:
    """The task's loss, on logits when a classifier's last layer has no sigmoid or softmax (the predictions squash them)."""
    import keras

    class_name, name = _TASK_LOSSES[task]
    if task == "regression":
        return keras.losses.MeanSquaredError(), name
    activation = getattr(getattr(model.layers[-1], "activation", None), "__name__", None) if model.layers else None
    logits = activation == "linear"
    loss = getattr(keras.losses, class_name)(from_logits=logits)
    return loss, f"{name} on logits (the last layer has no {'sigmoid' if task == 'binary' else 'softmax'})" if logits else name


def _refused_by_safe_mode(exc: BaseException) -> bool:
    """Keras' safe-mode refusal (a ``Lambda`` layer, stored code); not a missing class whose name says "Lambda"."""
    text = str(exc)
    return ("safe_mode" in text or "Lambda" in text) and _missing_custom(exc) is None


def _load_error(path: Path, exc: BaseException) -> ModelLoadError:
    """One line for a model Keras refused: safe mode, an unregistered custom class named in full, or Keras' reason."""
    if _refused_by_safe_mode(exc):
        return ModelLoadError(
            f"{path.name} was refused by Keras safe mode: it contains a Python Lambda layer or custom "
            "code that would run on load; rebuild the model from built-in layers")
    missing = _missing_custom(exc)
    if missing is not None:
        kind, name, module = missing
        where = f"; the file says it was defined in module '{module}'" if module else ""
        return ModelLoadError(
            f"{path.name} uses a custom {kind} '{name}' that is not registered; pass --import with the module "
            f"that registers it (@keras.saving.register_keras_serializable){where}")
    text = str(exc).replace("\n", " ")
    return ModelLoadError(f"{path.name} could not be loaded as a Keras model ({type(exc).__name__}: {text[:200]})")


#: Keras 3's words for a class or function it cannot find: in a ``.keras`` archive ("Could not locate class
#: 'ScaledDense'. … Full object config: {'module': …, 'registered_name': 'my_pkg>ScaledDense', …}"), and in
#: a legacy ``.h5`` file ("Unknown layer: 'my_pkg>ScaledDense'").
_NOT_LOCATED = re.compile(r"Could not locate (class|function) '([^']+)'")
_UNKNOWN = re.compile(r"Unknown (layer|object|optimizer|initializer|regularizer|constraint|(?:loss|metric|activation) "
                      r"function): '([^']+)'")


def _missing_custom(exc: BaseException) -> tuple[str, str, str | None] | None:
    """The unregistered custom object Keras could not find, from its error or the errors it was raised from:
    (``class`` or ``function``, its registered name in full, the module it was defined in where the file says)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc)
        if found := _NOT_LOCATED.search(text):
            kind, name = found.groups()
            config = text[found.end():]
            registered = re.search(r"'registered_name': '([^']*>" + re.escape(name) + ")'", config)
            module = re.match(r"[^{]*\{'module': '([^']+)', 'class_name': '" + re.escape(name) + "'", config)
            module_name = module.group(1) if module and module.group(1).split(".")[0] not in ("keras", "builtins") else None
            return kind, registered.group(1) if registered else name, module_name
        if found := _UNKNOWN.search(text):
            what, name = found.groups()
            return ("function" if what.endswith("function") else "class"), name, None
        exc = exc.__cause__ or exc.__context__
    return None


def check_model_file(path: Path, *, max_bytes: int | None = None) -> None:
    """Refuse a model file that would take too much memory to load, from its size and zip directory alone.

    A ``.keras`` file must be a zip archive of at most :data:`MAX_MEMBERS` members whose uncompressed
    sizes sum to at most ``max_bytes`` (default :data:`tasks.registry.base.MAX_MODEL_BYTES`, or ``FEATUREAUDIT_MAX_MODEL_BYTES``),
    none inflating more than :data:`MAX_MEMBER_RATIO` times. The sizes come from the zip's directory;
    Python's zipfile, which Keras reads with, never returns more than a member declares. The member count
    and the directory's size (at most :data:`MAX_DIRECTORY_BYTES_PER_MEMBER` per allowed member) are first
    read from the zip's end record, so a directory of millions of entries is refused before zipfile reads
    it. A ``.h5`` file's own size must be at most ``max_bytes``.
    """
    limit = max_model_bytes() if max_bytes is None else max_bytes
    if path.suffix == ".h5":
        size = path.stat().st_size
        if size > limit:
            raise ModelLoadError(f"{path} is {human_size(size)}, over the limit of {human_size(limit)} for a model file; "
                                 f"set {MAX_MODEL_BYTES_ENV} to a larger number of bytes if it is genuine")
        return
    if path.suffix != ".keras":
        return
    try:
        declared = _zip_directory(path)  # zipfile reads and parses the whole directory: its size is checked first
        if declared is not None:
            _refuse_large_directory(path, *declared)
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelLoadError(f"{path} could not be loaded as a Keras model: not a Keras archive (a .keras file is "
                             f"a zip; {exc}); save the model again with model.save('model.keras')") from None
    _refuse_large_directory(path, len(members), 0)  # the entries found, should the end record understate them
    for member in members:
        ratio = member.file_size / max(member.compress_size, 1)
        if member.file_size > RATIO_CHECKED_BYTES and ratio > MAX_MEMBER_RATIO:
            raise ModelLoadError(
                f"{path} member {member.filename} inflates {ratio:,.0f}:1 ({human_size(member.compress_size)} to "
                f"{human_size(member.file_size)}), over the limit of {MAX_MEMBER_RATIO}:1: a decompression bomb, "
                "refused without loading")
    total = sum(member.file_size for member in members)
    if total > limit:
        raise ModelLoadError(f"{path} inflates to {human_size(total)}, over the limit of {human_size(limit)} for a model; "
                             f"refused without loading (set {MAX_MODEL_BYTES_ENV} to a larger number of bytes "
                             "if it is genuine)")


def _refuse_large_directory(path: Path, entries: int, directory_bytes: int) -> None:
    """Refuse a zip directory of more than :data:`MAX_MEMBERS` entries or its size in bytes, in one line."""
    if entries > MAX_MEMBERS:
        raise ModelLoadError(f"{path} holds {entries:,} files, over the limit of {MAX_MEMBERS:,} "
                             "for a Keras archive; refused without loading")
    if directory_bytes > MAX_MEMBERS * MAX_DIRECTORY_BYTES_PER_MEMBER:
        raise ModelLoadError(f"{path} has a zip directory of {human_size(directory_bytes)}, over the limit of "
                             f"{human_size(MAX_MEMBERS * MAX_DIRECTORY_BYTES_PER_MEMBER)} for a Keras archive of at "
                             f"most {MAX_MEMBERS:,} files; refused without loading")


_END = struct.Struct("<4s4H2LH")  # end of central directory: signature, disks, entries, directory size, offset, comment
_END64_LOCATOR = struct.Struct("<4sLQL")  # zip64 locator: signature, disk, offset of the zip64 record, disks
_END64 = struct.Struct("<4sQ2H2L4Q")  # zip64 end record: ..., entries here, entries, directory size, offset


def _zip_directory(path: Path) -> tuple[int, int] | None:
    """The entry count and central-directory size a zip file declares, read from its end records as Python's
    zipfile finds them (the zip64 record when its locator precedes the end record); None when there is none.

    Reads at most the last 64 KiB + 98 bytes: the end record, its longest comment, and the zip64 records.
    """
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        window = min(size, _END.size + 0xFFFF + 1)  # where zipfile looks for the end record
        tail = b""
        if size >= _END.size:
            handle.seek(size - min(size, window + _END64_LOCATOR.size + _END64.size))
            tail = handle.read()
    end = len(tail) - _END.size  # no comment: the end record closes the file
    if end < 0 or tail[end : end + 4] != b"PK\x05\x06" or tail[-2:] != b"\0\0":
        end = tail.rfind(b"PK\x05\x06", len(tail) - window)
        if end < 0 or end + _END.size > len(tail):
            return None
    _, _, _, _, entries, directory_bytes, _, _ = _END.unpack_from(tail, end)
    locator = end - _END64_LOCATOR.size
    record = locator - _END64.size
    if record >= 0 and tail[locator : locator + 4] == b"PK\x06\x07" and tail[record : record + 4] == b"PK\x06\x06":
        _, _, _, _, _, _, _, entries, directory_bytes, _ = _END64.unpack_from(tail, record)
    return entries, directory_bytes


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@task(name="resolve-version", retries=2, retry_delay_seconds=2, retry_condition_fn=retry_unless_bad_input)
def resolve_version_task(
    registry: str, name: str, version: str | None = None, *, max_test_rows: int | None = None, seed: int = 0,
    imports: tuple[str, ...] = (),
) -> ModelVersion:
    """Resolve the model version to audit and hash its files."""
    return resolve_version(registry, name, version, max_test_rows=max_test_rows, seed=seed, imports=imports)


def _find_split(folder: Path, stem: str, image: bool = False) -> Path | None:
    suffixes = (".npz",) if image else (".parquet", ".csv")
    return next((folder / f"{stem}{ext}" for ext in suffixes if (folder / f"{stem}{ext}").is_file()), None)


def _read_frame(path: Path) -> pd.DataFrame:
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except Exception as exc:
        raise DataError(f"{path.name} could not be read ({type(exc).__name__}: {str(exc)[:200]})") from None


def _split_shape(path: Path) -> tuple[list[str], int]:
    """Column names and row count, from the parquet footer alone where possible."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            meta = pq.read_metadata(path)
            return list(meta.schema.to_arrow_schema().names), int(meta.num_rows)
        except Exception as exc:
            raise DataError(f"{path.name} is not a readable parquet file ({str(exc)[:200]})") from None
    frame = _read_frame(path)
    return list(frame.columns), len(frame)


def _resolve_features(manifest: Manifest, columns: list[str], path: Path) -> tuple[str, ...]:
    if manifest.target not in columns:
        raise DataError(
            f"{path.name} has no target column '{manifest.target}' (named by manifest.json); "
            f"columns present: {_preview(columns)}"
        )
    features = manifest.features or tuple(c for c in columns if c != manifest.target)
    if manifest.target in features:
        raise ManifestError(f"manifest.json lists the target '{manifest.target}' among the features")
    for column in (*manifest.categorical, *(c for cols in manifest.groups.values() for c in cols)):
        if column not in features:
            raise ManifestError(f"manifest.json names '{column}' under categorical or groups, but it is not a feature")
    if not features:
        raise DataError(f"{path.name} has no feature columns besides the target '{manifest.target}'")
    return tuple(features)


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _preview(columns: Any, limit: int = 12) -> str:
    names = [str(c) for c in columns]
    more = f", … ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
