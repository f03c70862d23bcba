"""Reuse what did not change: each method's stored result, keyed by everything that determines it.

A version audited again unchanged is not recomputed. Prefect's task caching does the bookkeeping: the method
tasks and retrain-ablation's plan, job and results tasks get a cache key from :class:`CacheKey`, their results
are persisted in a folder (:func:`cache_folder`: ``<out>/.featureaudit-cache``, or ``FEATUREAUDIT_RESULTS_CACHE``,
which on a Dask cluster must be a path every worker reaches), and a task whose key has a stored result ends
``Cached`` with that result instead of running. ``refresh`` computes again and overwrites.

The key (:func:`version_key` plus each task's own inputs) is a sha256 over:

- the version's files: the model's, each split's and the manifest's sha256, the features, the test rows used
  (and the sampling seed when the split is sampled), the ``--import`` modules;
- the options that change the method's numbers (its entry's ``shared`` allow-list,
  :class:`tasks.methods.base.Method`; which other methods run never matters), or, for ablation's tasks, their
  arguments: the plan a job belongs to and the job, the jobs' scores and timings for the results (the run's
  total seconds aside, so reused jobs, which carry their stored timings, make the results reusable too;
  recomputed jobs recompute them);
- the code: featureaudit's version, a digest of the source of the ``tasks`` package (every sub-package) and
  of ``flows`` (a change in development invalidates, though the version string stays the same) and the versions
  of the libraries that compute.

Stored results are JSON (:class:`ResultsSerializer`), rebuilt only as the classes :func:`stored_types` lists
and numpy arrays of numbers: reading a stored file never imports a module, unpickles or runs code. Prefect
names a record's serializer inside the record itself, so :class:`ResultsFolder` reads a record only when it names
this serializer and its payload decodes; anything else (a damaged file, a pickle, a record written by other code)
is treated as absent, and the result is computed again. Writing is best effort: a folder that cannot take a
result logs a warning and the run goes on.

Each stored result carries the run that computed it (:class:`Origin`), which the report names.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from prefect import task
from prefect.filesystems import LocalFileSystem
from prefect.serializers import Serializer

from tasks.core.result import ImportanceResult
from tasks.registry.versions import ModelVersion

#: Where stored results go instead of ``<out>/.featureaudit-cache`` (on a Dask cluster: a path every worker reaches).
CACHE_ENV = "FEATUREAUDIT_RESULTS_CACHE"
CACHE_FOLDER = ".featureaudit-cache"
#: Stored results neither read nor written for this many days are removed when a run starts (default 30).
KEEP_DAYS_ENV = "FEATUREAUDIT_RESULTS_CACHE_DAYS"
DEFAULT_KEEP_DAYS = 30
SERIALIZER_TYPE = "featureaudit-results"
FORMAT = 1
#: The libraries whose versions can change a method's numbers.
COMPUTING_LIBRARIES = ("featureaudit", "tensorflow", "tensorflow-cpu", "keras", "numpy", "scipy", "pandas", "shap")
#: numpy dtype kinds a stored array may have: booleans and numbers.
_ARRAY_KINDS = "biufc"

logger = logging.getLogger("featureaudit.cache")


def _logger() -> Any:
    """The task run's logger (its lines reach the Prefect UI), else this module's."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logger


class NotStored(ValueError):
    """A stored file that is not a featureaudit result this version can read: computed again instead."""


# --- the key ---------------------------------------------------------------------------------------------------


#: Where the ``tasks`` and ``flows`` packages lie (the repository, or site-packages once installed).
SOURCE_ROOT = Path(__file__).resolve().parents[2]
#: The packages whose source the key covers: every module of both, in every sub-package.
SOURCE_PACKAGES = ("tasks", "flows")


def source_digest(root: Path = SOURCE_ROOT) -> str:
    """sha256 over every ``.py`` file of :data:`SOURCE_PACKAGES` under ``root``, each named by its path there."""
    digest = hashlib.sha256()
    for package in SOURCE_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


@functools.cache
def code_digest() -> str:
    """sha256 of featureaudit's source (:func:`source_digest`) and the computing libraries' versions (once per
    process)."""
    digest = hashlib.sha256(source_digest().encode())
    for name in COMPUTING_LIBRARIES:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "-"
        digest.update(f"{name}={version}\0".encode())
    return digest.hexdigest()


def version_key(version: ModelVersion) -> dict[str, Any]:
    """What the version contributes to every key: its files' digests, features, test rows used and imports."""
    sampling = version.test_sampling()
    return {"sha256": sorted(version.sha256.items()), "manifest": version.manifest_sha256,
            "features": list(version.features), "test_rows": [sampling["in_file"], sampling["used"]],
            "sample_seed": sampling["seed"], "imports": list(version.imports), "code": code_digest()}


def stored_types() -> dict[str, type]:
    """Every class a stored result may hold, by name (the result shape and each method's ``stored`` types);
    nothing else is ever built from a stored file."""
    from tasks.methods.table import METHODS  # the table imports the methods, whose fan-outs use this module

    return {cls.__name__: cls for cls in (ImportanceResult, *(t for m in METHODS.values() for t in m.stored))}


def method_options(method: str, options: Any) -> dict[str, Any]:
    """The options that change ``method``'s numbers: its own, and the run-wide ones its entry names as ``shared``
    (the test rows used are in the version's key; which other methods run never matters)."""
    from tasks.methods.table import METHODS

    return {"shared": {name: getattr(options, name) for name in sorted(METHODS[method].shared)},
            "own": options.of(method).model_dump()}


def digest(value: Any) -> str:
    """sha256 of ``value`` in the stored JSON encoding (sorted keys): equal values, equal digests."""
    text = json.dumps(encode(value), sort_keys=True, allow_nan=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class CacheKey:
    """A task's cache key (Prefect's ``cache_key_fn``): ``<what>-<sha256>`` over the version's key and the inputs.

    ``what`` is a method's name (its inputs: the options that change it, see :func:`method_options`) or an
    ablation step: ``ablation-plan`` (its arguments), ``ablation-job`` (the plan and the job), ``ablation-results``
    (the plan and the jobs' scores and timings, not the run's total seconds). None (not cached) when an input
    cannot be keyed.
    """

    what: str

    def __call__(self, context: Any, parameters: dict[str, Any]) -> str | None:
        try:
            return f"{self.what}-{digest(self.inputs(parameters))}"
        except (TypeError, ValueError, KeyError) as exc:
            _logger().info("%s: not cached (%s)", self.what, exc)
            return None

    def inputs(self, parameters: dict[str, Any]) -> dict[str, Any]:
        inputs = {name: value for name, value in parameters.items() if name != "version"}
        if "options" in inputs:
            inputs["options"] = method_options(self.what, inputs["options"])
        if hasattr(inputs.get("run"), "cache_inputs"):  # what of a fan-out's run decides its results
            inputs["run"] = inputs["run"].cache_inputs()
        if isinstance(inputs.get("priority"), BaseException):  # permutation failed: the plan keeps the default order
            inputs["priority"] = "failed"
        return {"task": self.what, "version": version_key(parameters["version"]), "inputs": inputs}


# --- the stored form: typed JSON -------------------------------------------------------------------------------


def encode(value: Any) -> Any:
    """``value`` as JSON: registered dataclasses by name, numeric arrays as base64 bytes, tuples marked."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.ndarray, np.generic)):
        array = np.asarray(value)
        if array.dtype.kind not in _ARRAY_KINDS:
            raise TypeError(f"cannot store an array of dtype {array.dtype}")
        return {"__array__": array.dtype.str, "shape": list(array.shape), "scalar": isinstance(value, np.generic),
                "data": base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")}
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v) for v in value]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: encode(v) for k, v in value.items()}
        return {"__dict__": [[encode(k), encode(v)] for k, v in value.items()]}
    if dataclasses.is_dataclass(value) and stored_types().get(type(value).__name__) is type(value):
        return {"__type__": type(value).__name__,
                "fields": {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}}
    raise TypeError(f"cannot store a {type(value).__name__}")


def decode(value: Any) -> Any:
    """The value :func:`encode` stored; :class:`NotStored` for anything it would not have written."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [decode(v) for v in value]
    if not isinstance(value, dict):
        raise NotStored(f"unexpected {type(value).__name__}")
    if "__array__" in value:
        return _array(value)
    if "__tuple__" in value:
        return tuple(decode(v) for v in _list(value["__tuple__"]))
    if "__dict__" in value:
        return {_key(decode(pair[0])): decode(pair[1]) for pair in _list(value["__dict__"]) if _pair(pair)}
    if "__type__" in value:
        cls = stored_types().get(value["__type__"]) if isinstance(value["__type__"], str) else None
        fields = value.get("fields")
        if cls is None or not isinstance(fields, dict):
            raise NotStored(f"unknown stored type {str(value['__type__'])[:60]!r}")
        try:
            return cls(**{name: decode(v) for name, v in fields.items()})
        except TypeError as exc:
            raise NotStored(f"{cls.__name__}: {exc}") from None
    if any(k.startswith("__") for k in value):
        raise NotStored("unexpected marker key")
    return {k: decode(v) for k, v in value.items()}


def _array(value: dict[str, Any]) -> np.ndarray | np.generic:
    try:
        dtype = np.dtype(value["__array__"]) if isinstance(value["__array__"], str) else None
        shape = tuple(int(n) for n in _list(value["shape"]))
        data = base64.b64decode(value["data"], validate=True)
    except (KeyError, TypeError, ValueError) as exc:
        raise NotStored(f"bad array ({exc})") from None
    if dtype is None or dtype.kind not in _ARRAY_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise NotStored("array of a type that is not stored")
    if any(n < 0 for n in shape) or len(data) != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
        raise NotStored("array whose size does not match its shape")
    array = np.frombuffer(data, dtype=dtype).reshape(shape).copy()
    return array[()] if value.get("scalar") is True else array


def _list(value: Any) -> list:
    if not isinstance(value, list):
        raise NotStored("expected a list")
    return value


def _pair(value: Any) -> bool:
    if not (isinstance(value, list) and len(value) == 2):
        raise NotStored("expected a key and a value")
    return True


def _key(value: Any) -> Any:
    if isinstance(value, (list, dict)):
        raise NotStored("unhashable key")
    return value


@dataclass(frozen=True)
class Origin:
    """The run that computed a stored result: its run id and start (ISO 8601), and the model version audited."""

    run: str
    started: str
    model: str | None = None
    version: str | None = None

    def to_json(self) -> dict[str, str | None]:
        return dataclasses.asdict(self)


class ResultsSerializer(Serializer):
    """Prefect serializer for stored results: typed JSON (:func:`encode`), with the run that computed them.

    Prefect writes the serializer's fields into each record, so the record names its :class:`Origin`.
    """

    type: str = SERIALIZER_TYPE
    run: str | None = None
    started: str | None = None
    model: str | None = None
    version: str | None = None

    def dumps(self, obj: Any) -> bytes:
        return json.dumps({"featureaudit": FORMAT, "value": encode(obj)}, allow_nan=True).encode()

    def loads(self, blob: bytes) -> Any:
        try:
            data = json.loads(blob)
        except (ValueError, UnicodeDecodeError) as exc:
            raise NotStored(f"not JSON ({exc})") from None
        if not isinstance(data, dict) or data.get("featureaudit") != FORMAT or "value" not in data:
            raise NotStored("not a featureaudit result")
        return decode(data["value"])


class ResultsFolder(LocalFileSystem):
    """The folder stored results live in: records are read only when they are this version's typed JSON, and
    written through a temporary file and a rename, best effort."""

    _block_type_name: ClassVar[str] = "featureaudit results folder"
    _block_type_slug: ClassVar[str] = "featureaudit-results-folder"

    def read_path(self, path: str, **_: Any) -> bytes:
        resolved = self._resolve_path(path)
        try:
            content = resolved.read_bytes()
        except OSError as exc:
            raise NotStored(f"{resolved} cannot be read ({exc.strerror or exc})") from None
        try:
            check_record(content)
        except NotStored as exc:
            _logger().warning("stored result %s is not readable (%s): computing it again", resolved.name, exc)
            raise
        try:
            os.utime(resolved)  # reused: kept by prune() as long as it is in use
        except OSError:
            pass
        return content

    async def aread_path(self, path: str) -> bytes:
        return self.read_path(path)

    def write_path(self, path: str, content: bytes, **_: Any) -> str:
        resolved = self._resolve_path(path)
        try:
            resolved.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=resolved.parent, prefix=f".{resolved.name}.")
            try:
                with os.fdopen(handle, "wb") as stream:
                    stream.write(content)
                os.replace(temporary, resolved)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        except OSError as exc:
            _logger().warning("results cache %s cannot store a result (%s): it will be computed again next time",
                              resolved.parent, exc.strerror or exc)
        return str(resolved)

    async def awrite_path(self, path: str, content: bytes) -> str:
        return self.write_path(path, content)


def check_record(content: bytes) -> Origin | None:
    """The origin of a stored Prefect result record when it is one this serializer wrote and its payload decodes;
    :class:`NotStored` otherwise (the record is never handed to another serializer)."""
    try:
        record = json.loads(content)
    except (ValueError, UnicodeDecodeError) as exc:
        raise NotStored(f"not JSON ({exc})") from None
    meta = record.get("metadata") if isinstance(record, dict) else None
    serializer = meta.get("serializer") if isinstance(meta, dict) else None
    if not isinstance(serializer, dict) or serializer.get("type") != SERIALIZER_TYPE:
        raise NotStored("not written by featureaudit's results serializer")
    fields = {k: v for k, v in serializer.items() if k != "type"}
    if set(fields) - {"run", "started", "model", "version"} or not all(
            v is None or isinstance(v, str) for v in fields.values()):
        raise NotStored("unexpected serializer settings")
    if not isinstance(record.get("result"), str):
        raise NotStored("no stored result")
    ResultsSerializer().loads(record["result"].encode())
    return Origin(**fields) if fields.get("run") and fields.get("started") else None


def keep_days() -> int:
    """``FEATUREAUDIT_RESULTS_CACHE_DAYS``: how long an unused stored result is kept (0: removed at the next run)."""
    raw = os.environ.get(KEEP_DAYS_ENV, "").strip()
    if not raw:
        return DEFAULT_KEEP_DAYS
    try:
        days = int(raw)
    except ValueError:
        days = -1
    if days < 0:
        from tasks.core.errors import FeatureAuditError

        raise FeatureAuditError(f"{KEEP_DAYS_ENV}={raw!r} is not a whole number of days (0 or more)")
    return days


def prune(folder: str | Path, days: int, *, now: float | None = None) -> int:
    """Remove the stored results in ``folder`` neither read nor written for ``days`` days (and temporary files a
    killed run left, after a day); return how many. A result still in use is touched by every read, so it stays."""
    import time

    root = Path(folder)
    if not root.is_dir():
        return 0
    now = time.time() if now is None else now
    removed = 0
    for path in root.iterdir():
        try:
            if not path.is_file() or path.is_symlink():
                continue
            age = now - path.stat().st_mtime
            if age > days * 86400 and not path.name.startswith(".") or path.name.startswith(".") and age > 86400:
                path.unlink()
                removed += 1
        except OSError:
            continue
    return removed


def cache_folder(out: str | Path) -> Path:
    """Where stored results live: ``FEATUREAUDIT_RESULTS_CACHE``, else ``<out>/.featureaudit-cache``; absolute."""
    chosen = os.environ.get(CACHE_ENV) or str(Path(out) / CACHE_FOLDER)
    return Path(chosen).expanduser().absolute()


@dataclass(frozen=True)
class ResultCache:
    """How this run's tasks store and reuse results: the folder, this run's :class:`Origin`, and ``refresh``."""

    folder: str
    origin: Origin
    refresh: bool = False

    @classmethod
    def for_run(cls, out: str, run_id: str, started: datetime, *, model: str, version: str,
                refresh: bool = False) -> ResultCache:
        return cls(folder=str(cache_folder(out)), refresh=refresh,
                   origin=Origin(run=run_id, started=started.isoformat(), model=model, version=version))

    def apply(self, task: Any, what: str) -> Any:
        """``task`` keyed by ``CacheKey(what)``, its result stored in (and, unless refreshing, reused from) the folder."""
        cached = task.with_options(
            cache_key_fn=CacheKey(what), persist_result=True, refresh_cache=self.refresh, cache_result_in_memory=False,
            result_serializer=ResultsSerializer(**self.origin.to_json()),
        )
        # Unsaved, like the LocalFileSystem Prefect makes of a Path (Task's constructor accepts only saved blocks):
        # no block document on the server, and every process builds the same folder from these settings.
        cached.result_storage = ResultsFolder(basepath=self.folder)
        return cached


def reused_from(state: Any) -> Origin | None:
    """The run a task's result was reused from, when its state is Cached; None when it was computed."""
    if state is None or state.name != "Cached":
        return None
    serializer = getattr(getattr(getattr(state, "data", None), "metadata", None), "serializer", None)
    if isinstance(serializer, ResultsSerializer) and serializer.run and serializer.started:
        return Origin(run=serializer.run, started=serializer.started, model=serializer.model,
                      version=serializer.version)
    return Origin(run="unknown", started="")


def reused(states: dict[str, Any]) -> dict[str, dict[str, str | None]]:
    """The methods whose task ended Cached, each with the run that computed its result (as results.json holds it)."""
    return {name: origin.to_json() for name, state in states.items() if (origin := reused_from(state)) is not None}


@task(name="prune-results-cache")
def prune_task(folder: str) -> int:
    """Remove stored results unused for ``FEATUREAUDIT_RESULTS_CACHE_DAYS`` days, so the cache does not grow without
    bound as versions, options and code change."""
    days = keep_days()
    removed = prune(folder, days)
    if removed:
        _logger().info("results cache %s: removed %d stored results unused for %d days", folder, removed, days)
    return removed
