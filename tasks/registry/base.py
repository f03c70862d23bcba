"""Registry backends: where model versions live, behind one small interface.

A backend (:class:`Registry`) lists its models and fetches one version, the newest or a named one, into a
local folder laid out as ``<root>/<model-name>/<version>/`` (:class:`LocalVersion`);
:func:`tasks.registry.versions.resolve_version` reads the manifest and splits from there and hashes the files, so every
method loads from local disk whatever the backend.

- :class:`FolderRegistry`: a folder path, today's layout; its files are used where they are.
- :class:`ObjectStoreRegistry`: ``s3://bucket/prefix`` (or ``gs://…``) through fsspec, the same layout. A
  version's files are downloaded into a cache folder under ``FEATUREAUDIT_CACHE`` (default
  ``~/.cache/featureaudit``) keyed by each object's ETag and size: an unchanged object is not downloaded again, a
  changed one is. Files are written to a temporary name and renamed, so concurrent runs never see half a file.
  ``FEATUREAUDIT_S3_ENDPOINT_URL`` points s3fs at another S3-compatible server (MinIO, moto, …).
- :class:`tasks.registry.mlflow.MlflowRegistry`: ``mlflow`` (the tracking server in ``MLFLOW_TRACKING_URI``) or
  ``mlflow+http://host:port``; its versions are numbered, may have aliases (``@champion``), and are downloaded
  into the same cache. Only it has aliases: a folder or object store refuses a version named ``@…``.

:func:`tasks.registry.versions.open_registry` picks the backend from the reference. Names are plain folder names; nothing outside a
registry (a link, a key outside the prefix) is followed; errors are :class:`~tasks.core.errors.RegistryError` lines
naming the registry.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tasks.core.errors import FeatureAuditError, ModelLoadError, RegistryError

#: The files of a version, by the name they have in it; anything else in a version folder is ignored.
MODEL_FILES = ("model.keras", "model.h5")
SPLIT_FILES = ("test.parquet", "test.csv", "train.parquet", "train.csv")
VERSION_FILES = (*MODEL_FILES, *SPLIT_FILES, "manifest.json")
#: Set to 1 to follow symbolic links that lead out of the registry (refused by default).
ALLOW_EXTERNAL_LINKS = "FEATUREAUDIT_ALLOW_EXTERNAL_LINKS"
#: The folder object-store versions are downloaded into (default ``~/.cache/featureaudit``).
CACHE_ENV = "FEATUREAUDIT_CACHE"
#: An S3-compatible endpoint for ``s3://`` registries (default: AWS).
S3_ENDPOINT_ENV = "FEATUREAUDIT_S3_ENDPOINT_URL"
#: The object-store schemes read through fsspec (each needs its fsspec package: s3fs, gcsfs).
OBJECT_SCHEMES = ("s3", "gs", "gcs")
_CREDENTIALS = {"s3": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE",
                "gs": "GOOGLE_APPLICATION_CREDENTIALS", "gcs": "GOOGLE_APPLICATION_CREDENTIALS"}
_PACKAGES = {"s3": "s3fs (pip install 'featureaudit[s3]')", "gs": "gcsfs", "gcs": "gcsfs"}
#: Set to a number of bytes to change :data:`MAX_MODEL_BYTES`.
MAX_MODEL_BYTES_ENV = "FEATUREAUDIT_MAX_MODEL_BYTES"
#: Largest model accepted: a ``.keras`` archive's members uncompressed, in all, or a ``.h5`` file's size.
#: Keras stores archive members uncompressed, so a real archive inflates to about its own size; 4 GiB is
#: more than a model this audit can load and retrain on one machine, and bounds what loading may allocate.
MAX_MODEL_BYTES = 4 * 2**30


@dataclass(frozen=True)
class Provenance:
    """Where a version came from in a registry that keeps its own records (MLflow): the run that logged it, the
    alias it was asked for by, and its model artifact."""

    kind: str  # the registry's kind: "mlflow"
    run_id: str | None = None
    alias: str | None = None  # the alias asked for ("champion" for --version @champion), None for a number or newest
    source: str | None = None  # the model artifact's URI in that registry (runs:/<id>/model, models:/m-<id>)


@dataclass(frozen=True)
class LocalVersion:
    """A fetched version: its files lie in ``root / name / version`` on local disk."""

    root: Path
    name: str
    version: str
    uri: str  # the registry as the operator named it: a folder's absolute path, or s3://bucket/prefix
    provenance: Provenance | None = None  # a registry's own record of the version (MLflow); None for folders

    @property
    def folder(self) -> Path:
        return self.root / self.name / self.version


class Registry(Protocol):
    """A registry backend: list the models, fetch a version (the newest when ``version`` is None)."""

    uri: str

    def list_models(self) -> list[str]: ...

    def fetch(self, name: str, version: str | None = None) -> LocalVersion: ...

    def snapshot(self, name: str) -> dict[str, str]:
        """What a watcher compares between polls: ``{"latest": newest version}``, for MLflow also
        ``{"@alias": version}`` per alias; a label ending in ``.stamp`` fingerprints that label's files, so a
        version still being written (or rewritten in place) is seen to change."""
        ...


def is_remote(reference: str | Path) -> bool:
    """Whether a registry reference names an object store or an MLflow registry rather than a folder."""
    return "://" in str(reference) or is_mlflow(reference)


def is_mlflow(reference: str | Path) -> bool:
    """Whether a registry reference names an MLflow Model Registry: ``mlflow`` or ``mlflow+<tracking URI>``."""
    text = str(reference)
    return text == "mlflow" or text.lower().startswith("mlflow+")


def is_alias(version: str | None) -> bool:
    """Whether a requested version is an alias (``@champion``) rather than a version name or number."""
    return bool(version) and version.startswith("@")


def refuse_alias(uri: str, version: str | None) -> None:
    """Refuse an alias asked of a registry that has none (a folder or an object store)."""
    if is_alias(version):
        raise RegistryError(f"registry {uri} has no aliases ('{version}'): aliases belong to an MLflow Model "
                            "Registry (--registry mlflow); name a version folder, or leave out --version for the "
                            "newest")


def natural_key(name: str) -> tuple[tuple[int, Any], ...]:
    """Sort key under which ``v10`` follows ``v9`` and ISO dates sort in date order."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name) if part)


def check_name(what: str, value: str) -> None:
    """Refuse a model or version name that is not a plain folder name."""
    if not value or value in {".", ".."} or "/" in value or "\\" in value or ".." in value or "\x00" in value:
        raise RegistryError(f"{what} {value!r} is not a plain folder name (no path separators or '..')")


def check_inside(registry: Path, *paths: Path) -> dict[Path, Path]:
    """Each path's absolute location, links resolved; refuse one that leads out of the registry (unless allowed)."""
    root = registry.resolve()
    allowed = os.environ.get(ALLOW_EXTERNAL_LINKS, "").strip().lower() in {"1", "true", "yes"}
    resolved = {}
    for path in paths:
        target = path.resolve()
        if not allowed and not target.is_relative_to(root) and (path.exists() or path.is_symlink()):
            how = "is a symbolic link to" if path.is_symlink() else "resolves to"
            raise RegistryError(f"{path} {how} {target}, outside the registry {root}; copy it into the registry, "
                                f"or set {ALLOW_EXTERNAL_LINKS}=1 to follow links that leave it")
        resolved[path] = target
    return resolved


class FolderRegistry:
    """``<registry>/<model>/<version>/`` on local disk: the files are used where they are."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.uri = str(self.root.absolute())

    def list_models(self) -> list[str]:
        if not self.root.is_dir():
            raise RegistryError(f"registry {self.root} does not exist or is not a folder")
        names = sorted((p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                       key=natural_key)
        if not names:
            raise RegistryError(f"registry {self.root} holds no model folders")
        return names

    def fetch(self, name: str, version: str | None = None) -> LocalVersion:
        refuse_alias(self.uri, version)
        registry = self.root
        if not registry.is_dir():
            raise RegistryError(f"registry {registry} does not exist or is not a folder")
        model_dir = registry / name
        if not model_dir.is_dir():
            known = sorted(p.name for p in registry.iterdir() if p.is_dir())
            raise RegistryError(f"registry {registry} has no model '{name}'; models present: "
                                f"{', '.join(known) or 'none'}")
        versions = sorted((p.name for p in model_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
                          key=natural_key)
        if not versions:
            raise RegistryError(f"model folder {model_dir} has no version folders")
        if version is None:
            version = versions[-1]
        elif version not in versions:
            raise RegistryError(f"model '{name}' has no version '{version}'; versions present: {', '.join(versions)}")
        check_inside(registry, model_dir, model_dir / version)
        return LocalVersion(root=registry, name=name, version=version, uri=self.uri)

    def snapshot(self, name: str) -> dict[str, str]:
        newest = self.fetch(name).folder
        stamp = []
        for file_name in VERSION_FILES:
            try:
                info = (newest / file_name).stat()
            except OSError:
                continue
            stamp.append(f"{file_name}:{info.st_size}:{info.st_mtime_ns}")
        return {"latest": newest.name, "latest.stamp": ",".join(stamp)}


class ObjectStoreRegistry:
    """``s3://bucket/prefix/<model>/<version>/`` (or ``gs://…``) through fsspec, downloaded into a local cache."""

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")
        self.scheme, rest = self.uri.split("://", 1)
        self.scheme = self.scheme.lower()
        self.prefix = rest.strip("/")
        if not self.prefix or any(part in {".", ".."} for part in self.prefix.split("/")):
            raise RegistryError(f"registry {uri} must name a bucket, optionally with a prefix: "
                                f"{self.scheme}://bucket/prefix")
        self.root = cache_folder() / self.scheme / hashlib.sha256(self.uri.encode()).hexdigest()[:16]
        self._fs = None
        self.downloaded: list[str] = []  # the keys this backend downloaded (the rest were cache hits)

    @property
    def fs(self):
        if self._fs is None:
            self._fs = _filesystem(self.scheme, self.uri)
        return self._fs

    def list_models(self) -> list[str]:
        names = sorted(self._folders(self.prefix, f"registry {self.uri}"), key=natural_key)
        if not names:
            raise RegistryError(f"registry {self.uri} holds no model folders")
        return names

    def fetch(self, name: str, version: str | None = None) -> LocalVersion:
        refuse_alias(self.uri, version)
        check_name("model name", name)
        models = self._folders(self.prefix, f"registry {self.uri}")
        if name not in models:
            raise RegistryError(f"registry {self.uri} has no model '{name}'; models present: "
                                f"{', '.join(sorted(models, key=natural_key)) or 'none'}")
        versions = sorted(self._folders(f"{self.prefix}/{name}", f"model {self.uri}/{name}"), key=natural_key)
        if not versions:
            raise RegistryError(f"model {self.uri}/{name} has no version folders")
        if version is None:
            version = versions[-1]
        elif version not in versions:
            raise RegistryError(f"model '{name}' in {self.uri} has no version '{version}'; versions present: "
                                f"{', '.join(versions)}")
        key = f"{self.prefix}/{name}/{version}"
        objects = {entry["name"].rstrip("/").rsplit("/", 1)[-1]: entry
                   for entry in self._list(key, f"version {self.uri}/{name}/{version}")
                   if entry.get("type") == "file" and _inside(entry["name"], key)}
        local = LocalVersion(root=self.root, name=name, version=version, uri=self.uri)
        return mirror_version(local, objects, lambda file_name, target: self._download(
            f"{key}/{file_name}", objects[file_name], target))

    def snapshot(self, name: str) -> dict[str, str]:
        """The newest version and its objects' ETags and sizes, listed without downloading anything."""
        check_name("model name", name)
        versions = sorted(self._folders(f"{self.prefix}/{name}", f"model {self.uri}/{name}"), key=natural_key)
        if not versions:
            raise RegistryError(f"model {self.uri}/{name} has no version folders")
        key = f"{self.prefix}/{name}/{versions[-1]}"
        stamp = sorted(f"{entry['name'].rsplit('/', 1)[-1]}:{entry.get('ETag') or entry.get('etag') or ''}:"
                       f"{entry.get('size') or 0}" for entry in self._list(key, f"version {self.uri}/{name}")
                       if entry.get("type") == "file")
        return {"latest": versions[-1], "latest.stamp": ",".join(stamp)}

    def _download(self, key: str, info: dict[str, Any], target: Path) -> None:
        """Fetch one object unless the cached copy has its ETag and size; write to a temp file, then rename."""
        stamp = {"etag": str(info.get("ETag") or info.get("etag") or info.get("md5Hash") or ""),
                 "size": int(info.get("size") or 0)}
        meta = target.with_name(f".{target.name}.object.json")
        if target.is_file() and target.stat().st_size == stamp["size"] and stamp["etag"] and _read_json(meta) == stamp:
            return
        _refuse_large_model(f"{self.scheme}://{key}", target.name, stamp["size"])
        handle, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        os.close(handle)
        try:
            self._call(lambda: self.fs.get_file(key, temp), f"{self.scheme}://{key}")
            os.replace(temp, target)
            _atomic_write(meta, json.dumps(stamp))  # after the file: a stale stamp costs a download, never a wrong hit
        finally:
            _remove(Path(temp))
        self.downloaded.append(key)

    def _folders(self, key: str, what: str) -> list[str]:
        """The visible sub-folders under ``key`` that are plain names."""
        names = []
        for entry in self._list(key, what):
            name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            if entry.get("type") == "directory" and _inside(entry["name"], key) and not name.startswith("."):
                try:
                    check_name("folder", name)
                except RegistryError:
                    continue
                names.append(name)
        return names

    def _list(self, key: str, what: str) -> list[dict[str, Any]]:
        def listing():
            return self.fs.ls(key, detail=True)

        try:
            return self._call(listing, f"{self.scheme}://{key}")
        except FileNotFoundError:
            raise RegistryError(f"{what} does not exist (no such bucket or prefix)") from None

    def _call(self, action, where: str):
        """Run an fsspec call; credentials, access and connection failures as one line naming ``where``."""
        try:
            return action()
        except FileNotFoundError:
            raise
        except PermissionError as exc:
            raise RegistryError(f"{where}: access denied ({_first_line(exc)}); check the credentials "
                                f"({_CREDENTIALS.get(self.scheme, 'the storage credentials')})") from None
        except Exception as exc:  # botocore/gcsfs errors: classified by name, they are not importable here
            kind = type(exc).__name__
            if "Credentials" in kind or "credentials" in str(exc).lower():
                raise RegistryError(f"{where}: no credentials found; set {_CREDENTIALS.get(self.scheme, 'them')}"
                                    ) from None
            if "Connect" in kind or "Endpoint" in kind:
                raise RegistryError(f"{where}: cannot reach the object store ({_first_line(exc)}); check "
                                    f"{S3_ENDPOINT_ENV} and the network") from None
            raise RegistryError(f"{where}: {kind}: {_first_line(exc)}") from None


def mirror_version(local: LocalVersion, available: Any, download: Callable[[str, Path], None]) -> LocalVersion:
    """Bring a downloaded version's cache folder in line with the registry: each of :data:`VERSION_FILES` that the
    version has (``available``) is downloaded by ``download(file_name, target)`` (which skips an unchanged one), any
    other removed, so a file the version no longer has does not linger; the cache folder says which registry it
    mirrors (``registry.txt``, for a reader of the cache)."""
    local.folder.mkdir(parents=True, exist_ok=True)
    for file_name in VERSION_FILES:
        if file_name in available:
            download(file_name, local.folder / file_name)
        else:
            _remove(local.folder / file_name)
    label = local.root / "registry.txt"
    if _read_text(label) != local.uri + "\n":
        _atomic_write(label, local.uri + "\n")
    return local


def cache_folder() -> Path:
    """Where object-store versions are downloaded: ``FEATUREAUDIT_CACHE`` or ``~/.cache/featureaudit``."""
    raw = os.environ.get(CACHE_ENV, "").strip()
    return Path(raw).expanduser() if raw else Path.home() / ".cache" / "featureaudit"


def _filesystem(scheme: str, uri: str):
    """A fresh fsspec filesystem for ``scheme`` (no listing cache: a new version must be seen at once)."""
    import fsspec

    options: dict[str, Any] = {"skip_instance_cache": True, "use_listings_cache": False}
    endpoint = os.environ.get(S3_ENDPOINT_ENV, "").strip()
    if scheme == "s3" and endpoint:
        options["endpoint_url"] = endpoint
    try:
        return fsspec.filesystem(scheme, **options)
    except ImportError:
        raise FeatureAuditError(f"registry {uri} needs the package {_PACKAGES.get(scheme, scheme)}") from None


def _refuse_large_model(where: str, name: str, size: int) -> None:
    """Refuse, before downloading it, a model object over the model size limit (:func:`tasks.registry.versions.check_model_file`
    checks the download itself before Keras reads it)."""
    if name not in MODEL_FILES:
        return
    limit = max_model_bytes()
    if size > limit:
        raise ModelLoadError(f"{where} is {human_size(size)}, over the limit of {human_size(limit)} for a model file; "
                             f"not downloaded (set {MAX_MODEL_BYTES_ENV} to a larger number of bytes if it is genuine)")


def max_model_bytes() -> int:
    """The model size limit in force: :data:`MAX_MODEL_BYTES`, or ``FEATUREAUDIT_MAX_MODEL_BYTES`` when set."""
    raw = os.environ.get(MAX_MODEL_BYTES_ENV, "").strip()
    if not raw:
        return MAX_MODEL_BYTES
    if not raw.isdigit() or int(raw) < 1:
        raise FeatureAuditError(f"{MAX_MODEL_BYTES_ENV}={raw!r} must be a positive number of bytes, "
                                f"such as {MAX_MODEL_BYTES} (4 GiB, the default)")
    return int(raw)


def human_size(n_bytes: int) -> str:
    """A byte count as people read it: ``1.5 MiB``."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:,.1f} {unit}"
    return f"{n_bytes:,} bytes"


def _inside(key: str, prefix: str) -> bool:
    """Whether a listed key lies under ``prefix`` with no ``..`` in the rest."""
    rest = key.rstrip("/")
    return rest.startswith(prefix + "/") and ".." not in rest[len(prefix) + 1:].split("/")


def _atomic_write(path: Path, text: str) -> None:
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(temp, path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, ValueError):
        return None


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
