"""Publish a model version into a registry: a model file, its splits and a manifest, checked first.

:func:`publish` puts them into any backend (:mod:`tasks.registry.base`):

- a folder: a new version folder ``<registry>/<model>/<version>/``, assembled under a hidden name beside it and
  renamed into place, so a reader never sees half a version; an existing version is never overwritten;
- ``s3://…``/``gs://…``: the same files uploaded under ``<prefix>/<model>/<version>/``, the model file last;
- an MLflow Model Registry: a run holding the model at the keras flavor's layout and the ``featureaudit/``
  artifacts, registered as a new version (MLflow numbers it), optionally with an alias
  (:meth:`tasks.registry.mlflow.MlflowRegistry.publish`).

Without a version, a folder or object store gets the next ``vN`` (one more than the greatest ``vN`` present, ``v1``
for a new model). Without a manifest, the newest version's is taken. Everything is checked before anything is
written: the model file (:func:`tasks.registry.versions.check_model_file`), the manifest, and each split's columns against it.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from tasks.core.errors import DataError, ModelLoadError, RegistryError
from tasks.registry.base import (
    FolderRegistry,
    ObjectStoreRegistry,
    check_name,
    is_alias,
    is_mlflow,
    natural_key,
)
from tasks.registry.versions import _resolve_features, _split_shape, check_model_file, open_registry, read_manifest

SPLIT_SUFFIXES = (".parquet", ".csv")


@dataclass(frozen=True)
class Published:
    """A version just published: where, under which version, and the reference that names it."""

    registry: str
    name: str
    version: str
    reference: str  # the version folder, s3://bucket/prefix/<model>/<version>, or models:/<model>/<number>
    run_id: str | None = None  # MLflow: the run holding the files
    alias: str | None = None  # MLflow: the alias now pointing at it


def publish(
    registry: str, name: str, *, model_file: Path, test: Path, train: Path | None = None,
    manifest: Path | None = None, version: str | None = None, alias: str | None = None,
) -> Published:
    """Check the files, then put them into ``registry`` as a new version of ``name``."""
    check_name("model name", name)
    mlflow = is_mlflow(registry)
    alias = alias[1:] if alias and alias.startswith("@") else alias
    if version is not None:
        if mlflow:
            raise RegistryError(f"--version {version}: an MLflow Model Registry numbers its versions itself; leave "
                                "out --version (and name the version with --alias if you like)")
        if is_alias(version):
            raise RegistryError(f"--version {version}: a version folder cannot be an alias; aliases belong to an "
                                "MLflow Model Registry (--registry mlflow, --alias)")
        check_name("version", version)
    if alias is not None and not mlflow:
        raise RegistryError(f"--alias {alias}: registry {registry} has no aliases; aliases belong to an MLflow Model "
                            "Registry (--registry mlflow)")
    backend = open_registry(registry)
    files = check_files(backend, name, model_file=model_file, test=test, train=train, manifest=manifest,
                        keras_only=mlflow)
    if mlflow:
        if alias is not None:
            from tasks.registry.mlflow import check_alias

            check_alias(alias)
        number, run_id = backend.publish(name, files, alias=alias)
        return Published(registry=backend.uri, name=name, version=number, reference=f"models:/{name}/{number}",
                         run_id=run_id, alias=alias)
    if isinstance(backend, ObjectStoreRegistry):
        version, reference = _publish_object_store(backend, name, version, files)
    else:
        version, reference = _publish_folder(backend, name, version, files)
    return Published(registry=backend.uri, name=name, version=version, reference=reference)


def check_files(
    backend, name: str, *, model_file: Path, test: Path, train: Path | None, manifest: Path | None,
    keras_only: bool = False,
) -> dict[str, Path]:
    """The files to publish by the name they take in a version (``model.keras``, ``test.parquet``, …, with the
    manifest last), each checked: the model file's archive, the manifest, the splits' columns."""
    model_file, test = Path(model_file), Path(test)
    suffixes = (".keras",) if keras_only else (".keras", ".h5")
    if model_file.suffix not in suffixes:
        why = " (MLflow's keras flavor stores a .keras file)" if keras_only else ""
        raise ModelLoadError(f"--model-file {model_file}: expected a {' or '.join(suffixes)} file{why}; save the model "
                             "with model.save('model.keras')")
    if not model_file.is_file():
        raise ModelLoadError(f"--model-file {model_file} does not exist")
    check_model_file(model_file)
    manifest_path = Path(manifest) if manifest is not None else _newest_manifest(backend, name)
    parsed = read_manifest(manifest_path)
    files = {f"model{model_file.suffix}": model_file}
    features = None
    for stem, path in (("test", test), ("train", train)):
        if path is None:
            continue
        path = Path(path)
        if path.suffix not in SPLIT_SUFFIXES:
            raise DataError(f"--{stem} {path}: expected a .parquet or .csv file")
        if not path.is_file():
            raise DataError(f"--{stem} {path} does not exist")
        columns, rows = _split_shape(path)
        if rows == 0:
            raise DataError(f"--{stem} {path} has zero rows; export the split again")
        if features is None:
            features = _resolve_features(parsed, columns, path)
        else:
            missing = [c for c in (*features, parsed.target) if c not in columns]
            if missing:
                raise DataError(f"--train {path} has no column '{missing[0]}' (the test split has it)")
        files[f"{stem}{path.suffix}"] = path
    files["manifest.json"] = manifest_path
    return files


def next_version(versions: list[str]) -> str:
    """``v`` and one more than the greatest ``vN`` among ``versions`` (``v1`` when there is none)."""
    numbers = [int(found.group(1)) for v in versions if (found := re.fullmatch(r"v(\d+)", v))]
    return f"v{max(numbers, default=0) + 1}"


def _newest_manifest(backend, name: str) -> Path:
    """Without --manifest: the manifest of the newest version of ``name`` (a retrained model keeps its features)."""
    try:
        local = backend.fetch(name)
    except RegistryError as exc:
        raise RegistryError(f"--manifest is needed: model '{name}' has no version in {backend.uri} to take its "
                            f"manifest from ({exc})") from None
    path = local.folder / "manifest.json"
    if not path.is_file():
        raise RegistryError(f"--manifest is needed: the newest version of '{name}' in {backend.uri} has none")
    return path


def _publish_folder(backend: FolderRegistry, name: str, version: str | None, files: dict[str, Path]) -> tuple[str, str]:
    """A new version folder, assembled under a hidden name and renamed into place; never over an existing one."""
    model_dir = backend.root / name
    present = (sorted((p.name for p in model_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
                      key=natural_key) if model_dir.is_dir() else [])
    version = version or next_version(present)
    target = model_dir / version
    if target.exists() or target.is_symlink():
        raise RegistryError(f"{target} already exists: a published version is never overwritten; publish as "
                            f"{next_version(present)}, or leave out --version for the next one")
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = model_dir / f".{version}.{uuid.uuid4().hex[:12]}.part"
    staging.mkdir()  # the umask's mode, as the rename keeps it
    try:
        for file_name, path in files.items():
            shutil.copyfile(path, staging / file_name)
        try:
            os.rename(staging, target)  # fails when the version appeared meanwhile with files in it
        except OSError:
            if target.exists():
                raise RegistryError(f"{target} already exists: another publish wrote it meanwhile") from None
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return version, str(target.absolute())


def _publish_object_store(backend: ObjectStoreRegistry, name: str, version: str | None,
                          files: dict[str, Path]) -> tuple[str, str]:
    """The files uploaded under ``<prefix>/<model>/<version>/``, the model file last; never over an existing one."""
    key = f"{backend.prefix}/{name}"
    where = f"{backend.scheme}://{key}"
    bucket = backend.prefix.split("/", 1)[0]
    if not _exists(backend, bucket, f"{backend.scheme}://{bucket}"):
        raise RegistryError(f"registry {backend.uri}: the bucket {bucket} does not exist; create it first")
    present = (sorted(backend._folders(key, f"model {backend.uri}/{name}"), key=natural_key)
               if _exists(backend, key, where) else [])
    version = version or next_version(present)
    if version in present:
        raise RegistryError(f"{where}/{version} already exists: a published version is never overwritten; publish as "
                            f"{next_version(present)}, or leave out --version for the next one")
    order = sorted(files, key=lambda file_name: file_name.startswith("model."))  # the model file last
    for file_name in order:
        destination = f"{key}/{version}/{file_name}"
        try:
            backend._call(lambda: backend.fs.put_file(str(files[file_name]), destination),
                          f"{backend.scheme}://{destination}")
        except FileNotFoundError as exc:
            raise RegistryError(f"{backend.scheme}://{destination}: cannot upload ({exc})") from None
    return version, f"{backend.uri}/{name}/{version}"


def _exists(backend: ObjectStoreRegistry, key: str, where: str) -> bool:
    try:
        return bool(backend._call(lambda: backend.fs.exists(key), where))
    except FileNotFoundError:
        return False
