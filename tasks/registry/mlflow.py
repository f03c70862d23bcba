"""An MLflow Model Registry as a featureaudit registry: registered models, numbered versions, aliases.

``--registry mlflow`` talks to the tracking server in ``MLFLOW_TRACKING_URI``; ``--registry mlflow+http://host:port``
names one directly. The convention a version follows:

- the model is logged with ``mlflow.keras.log_model(model, name=..., registered_model_name=NAME)`` inside a run;
  MLflow's keras flavor stores the native file as ``data/model.keras`` in the model's artifacts;
- the same run holds ``featureaudit/test.parquet`` (or ``test.csv``), optionally ``featureaudit/train.parquet``
  (or ``.csv``), and ``featureaudit/manifest.json``, logged with
  ``mlflow.log_artifact(path, artifact_path="featureaudit")``;
- a version tag ``featureaudit.test``, ``featureaudit.train`` or ``featureaudit.manifest`` holding
  ``runs:/<run-id>/<path>`` points that file at an artifact of another run of the same server instead (splits
  shared by several versions). Other URI kinds are refused: nothing is fetched from outside the tracking server.

A version is named by its number (``3``), by an alias (``@champion``), or not at all: the newest version number.
Its files are downloaded into the cache (:func:`tasks.registry.base.cache_folder`) under
``mlflow/<hash of the tracking URI>/<model>/<version-number>/`` with the names a folder registry uses, so
:func:`tasks.registry.versions.resolve_version` reads them like any other. Each file is written through a temporary file
and a rename, and is not downloaded again while its artifact URI (which holds the run or logged-model id) and
size are those of the cached copy. Nothing is unpickled or executed: artifacts are only downloaded, never loaded
through MLflow; the ``.keras`` file then goes through featureaudit's own checks and Keras' safe mode.

:meth:`MlflowRegistry.publish` is the other direction: a run holding the model at the keras flavor's layout and
the ``featureaudit/`` artifacts, registered as a new version (:mod:`tasks.registry.publish`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

from tasks.core.errors import FeatureAuditError, RegistryError
from tasks.registry.base import (
    LocalVersion,
    Provenance,
    _atomic_write,
    _read_json,
    _refuse_large_model,
    cache_folder,
    check_name,
    is_alias,
    mirror_version,
)

TRACKING_ENV = "MLFLOW_TRACKING_URI"
#: The run's artifact folder holding the splits and the manifest.
ARTIFACT_FOLDER = "featureaudit"
#: Version tags that point a file at another run's artifact (``runs:/<run-id>/<path>``).
SPLIT_TAGS = {"test": "featureaudit.test", "train": "featureaudit.train", "manifest": "featureaudit.manifest"}
#: Where MLflow's keras flavor keeps the native file inside the model's artifacts.
MODEL_ARTIFACT = "data/model.keras"
#: MLflow client settings used unless the operator set them: a server that does not answer is said within seconds
#: (MLflow's default of 7 retries with doubling backoff takes minutes), and nothing is printed on a quiet run.
CLIENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
#: The experiment ``publish`` logs its runs to, unless ``MLFLOW_EXPERIMENT_NAME`` names another.
PUBLISH_EXPERIMENT = "featureaudit"
_RUN_URI = re.compile(r"runs:/([0-9A-Za-z_-]+)/(.+)")
_ALIAS = re.compile(r"[A-Za-z0-9_-]{1,255}")


@dataclass(frozen=True)
class _Artifact:
    """One file to download: its artifact URI and its size (None when the store does not say)."""

    uri: str
    size: int | None


def tracking_uri(reference: str) -> str:
    """The tracking URI a reference names: ``MLFLOW_TRACKING_URI`` for ``mlflow``, the rest of ``mlflow+<uri>``."""
    if reference == "mlflow":
        uri = os.environ.get(TRACKING_ENV, "").strip()
        if not uri:
            raise RegistryError(f"--registry mlflow needs {TRACKING_ENV}: set it to the MLflow tracking server, e.g. "
                                f"{TRACKING_ENV}=http://127.0.0.1:5000, or name it as "
                                "--registry mlflow+http://host:port")
        return uri
    uri = reference[len("mlflow+"):].strip()
    if "://" not in uri:
        raise RegistryError(f"registry {reference}: name the tracking server after 'mlflow+', e.g. "
                            "mlflow+http://127.0.0.1:5000")
    return uri


def public_uri(uri: str) -> str:
    """A tracking URI fit for a report: any password in it removed."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class MlflowRegistry:
    """The registered models of an MLflow tracking server; versions downloaded into the local cache."""

    def __init__(self, reference: str):
        self.tracking_uri = tracking_uri(reference)
        self.uri = public_uri(self.tracking_uri)
        self._password = urlsplit(self.tracking_uri).password  # never in a message
        self.root = cache_folder() / "mlflow" / hashlib.sha256(self.uri.encode()).hexdigest()[:16]
        self.downloaded: list[str] = []  # the artifact URIs this backend downloaded (the rest were cache hits)
        self._client = None

    @property
    def client(self):
        if self._client is None:
            for name, value in CLIENT_DEFAULTS.items():
                os.environ.setdefault(name, value)
            try:
                from mlflow import MlflowClient
            except ImportError:
                raise FeatureAuditError(f"registry {self.uri} needs the package mlflow-skinny "
                                        "(pip install 'featureaudit[mlflow]')") from None
            logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines ("Waiting up to 300 seconds…")
            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    # --- reading ------------------------------------------------------------------------------------------------

    def list_models(self) -> list[str]:
        names = self._model_names()
        if not names:
            raise RegistryError(f"MLflow registry {self.uri} holds no registered models")
        return names

    def fetch(self, name: str, version: str | None = None) -> LocalVersion:
        check_name("model name", name)
        record = self._version(name, version)
        number = str(record.version)
        files = self._files(name, record)
        provenance = Provenance(kind="mlflow", run_id=record.run_id or None,
                                alias=version[1:] if is_alias(version) else None, source=record.source or None)
        local = LocalVersion(root=self.root, name=name, version=number, uri=self.uri, provenance=provenance)
        return mirror_version(local, files, lambda file_name, target: self._download(files[file_name], target))

    def snapshot(self, name: str) -> dict[str, str]:
        """The newest version number and, per alias of the model, the version it points at (``{"@champion": "3"}``)."""
        check_name("model name", name)
        aliases = self._aliases(name)  # first: an unknown model is named before its versions are searched
        return {"latest": str(self._newest(name).version), **{f"@{alias}": number for alias, number in aliases.items()}}

    def _version(self, name: str, version: str | None):
        """The model version asked for: newest, by number, or by ``@alias``; one line listing what exists if none."""
        if version is None:
            self._call(lambda: self.client.get_registered_model(name), f"model '{name}'",
                       missing=lambda: self._no_model(name))
            record = self._newest(name)
        elif is_alias(version):
            alias = version[1:]
            record = self._call(lambda: self.client.get_model_version_by_alias(name, alias), f"model '{name}'",
                                missing=lambda: self._no_alias(name, alias))
        elif version.isdigit():
            record = self._call(lambda: self.client.get_model_version(name, version), f"model '{name}'",
                                missing=lambda: self._no_version(name, version))
        else:
            self._no_version(name, version)
        status = str(getattr(record, "status", "READY") or "READY")
        if status != "READY":
            raise RegistryError(f"model '{name}' version {record.version} in MLflow registry {self.uri} is not ready "
                                f"(status {status}); audit it once its registration has finished")
        return record

    def _newest(self, name: str):
        if "'" in name:
            raise RegistryError(f"model name {name!r} holds a quote, which an MLflow search cannot name")
        found = self._call(lambda: self.client.search_model_versions(
            f"name='{name}'", order_by=["version_number DESC"], max_results=1), f"model '{name}'",
            missing=lambda: self._no_model(name))
        if not found:
            raise RegistryError(f"model '{name}' in MLflow registry {self.uri} has no versions")
        return found[0]

    def _files(self, name: str, record) -> dict[str, _Artifact]:
        """The version's files by the name they get in the cache: the model file, the splits, the manifest."""
        number, run_id = record.version, record.run_id or None
        what = f"model '{name}' version {number} in MLflow registry {self.uri}"
        model_uri = self._call(lambda: self.client.get_model_version_download_uri(name, number), what)
        listed = self._list(f"{model_uri.rstrip('/')}/data", what)
        if "model.keras" not in listed:
            present = ", ".join(f"data/{n}" for n in sorted(listed)) or "nothing under data/"
            raise RegistryError(f"{what} has no {MODEL_ARTIFACT} in its model artifact {record.source}: featureaudit "
                                "reads the Keras 3 file that mlflow.keras.log_model stores (not "
                                f"save_exported_model=True); found {present}")
        files = {"model.keras": _Artifact(f"{model_uri.rstrip('/')}/{MODEL_ARTIFACT}", listed["model.keras"])}
        logged = self._list(f"runs:/{run_id}/{ARTIFACT_FOLDER}", what) if run_id else {}
        tags = dict(getattr(record, "tags", None) or {})
        for stem, tag in SPLIT_TAGS.items():
            if tag in tags:
                files.update(self._tagged(stem, tag, tags[tag], what))
                continue
            names = ("manifest.json",) if stem == "manifest" else (f"{stem}.parquet", f"{stem}.csv")
            found = next((n for n in names if n in logged), None)
            if found is not None:
                files[found] = _Artifact(f"runs:/{run_id}/{ARTIFACT_FOLDER}/{found}", logged[found])
            elif stem != "train":
                label = "test split" if stem == "test" else "manifest"
                where = f"its run {run_id}" if run_id else "a run (the version has none)"
                raise RegistryError(f"{what} has no {label}: log {ARTIFACT_FOLDER}/{names[0]} to {where} with "
                                    f"mlflow.log_artifact(path, artifact_path='{ARTIFACT_FOLDER}'), or tag the version "
                                    f"{tag}=runs:/<run-id>/<path>")
        return files

    def _tagged(self, stem: str, tag: str, value: str, what: str) -> dict[str, _Artifact]:
        """The file a version tag points at: an artifact ``runs:/<run-id>/<path>`` of this tracking server."""
        found = _RUN_URI.fullmatch(str(value).strip())
        path = found.group(2).strip("/") if found else ""
        suffixes = (".json",) if stem == "manifest" else (".parquet", ".csv")
        if not found or ".." in path.split("/") or not path.endswith(suffixes):
            raise RegistryError(f"{what}: tag {tag}={value!r} must name a run artifact, runs:/<run-id>/<path> "
                                f"ending in {' or '.join(suffixes)}")
        run_id = found.group(1)
        parent, _, base = path.rpartition("/")
        listed = self._list(f"runs:/{run_id}/{parent}" if parent else f"runs:/{run_id}", what)
        if base not in listed:
            raise RegistryError(f"{what}: tag {tag} points at {value}, which does not exist")
        local = "manifest.json" if stem == "manifest" else f"{stem}{Path(base).suffix}"
        return {local: _Artifact(f"runs:/{run_id}/{path}", listed[base])}

    def _list(self, artifact_uri: str, what: str) -> dict[str, int | None]:
        """The files directly under an artifact URI: name -> size (an empty dict when there is no such folder)."""
        import mlflow.artifacts

        entries = self._call(lambda: mlflow.artifacts.list_artifacts(artifact_uri=artifact_uri,
                                                                      tracking_uri=self.tracking_uri), what)
        return {entry.path.rstrip("/").rsplit("/", 1)[-1]: entry.file_size
                for entry in entries or [] if not entry.is_dir}

    def _download(self, artifact: _Artifact, target: Path) -> None:
        """Fetch one artifact unless the cached copy has its URI and size; write it to a temp folder, then rename."""
        import mlflow.artifacts

        stamp = {"uri": artifact.uri, "size": artifact.size}
        meta = target.with_name(f".{target.name}.artifact.json")
        if (artifact.size is not None and target.is_file() and target.stat().st_size == artifact.size
                and _read_json(meta) == stamp):
            return
        if artifact.size is not None:
            _refuse_large_model(artifact.uri, target.name, artifact.size)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part"))
        try:
            fetched = self._call(lambda: mlflow.artifacts.download_artifacts(
                artifact_uri=artifact.uri, dst_path=str(staging), tracking_uri=self.tracking_uri), artifact.uri)
            os.replace(fetched, target)
            _atomic_write(meta, json.dumps(stamp))  # after the file: a stale stamp costs a download, never a wrong hit
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self.downloaded.append(artifact.uri)

    # --- what exists, for the one-line errors --------------------------------------------------------------------

    def _model_names(self) -> list[str]:
        names: list[str] = []
        token = None
        while True:
            page = self._call(lambda: self.client.search_registered_models(max_results=100, page_token=token),
                              "the registered models")
            names.extend(model.name for model in page)
            token = getattr(page, "token", None)
            if not token:
                return sorted(names)

    def _no_model(self, name: str) -> NoReturn:
        names = self._model_names()
        raise RegistryError(f"MLflow registry {self.uri} has no model '{name}'; registered models: "
                            f"{_preview(names) or 'none'}")

    def _version_numbers(self, name: str) -> list[str]:
        found = self._call(lambda: self.client.search_model_versions(
            f"name='{name}'", order_by=["version_number DESC"], max_results=50), f"model '{name}'",
            missing=lambda: self._no_model(name))
        return [str(v.version) for v in reversed(found)]

    def _aliases(self, name: str) -> dict[str, str]:
        model = self._call(lambda: self.client.get_registered_model(name), f"model '{name}'",
                           missing=lambda: self._no_model(name))
        return {alias: str(number) for alias, number in sorted((model.aliases or {}).items())}

    def _no_version(self, name: str, version: str) -> NoReturn:
        numbers = self._version_numbers(name)
        aliases = self._aliases(name)
        said = "" if version.isdigit() else " (MLflow numbers its versions; name one, or an alias as @name)"
        raise RegistryError(f"model '{name}' in MLflow registry {self.uri} has no version '{version}'{said}; "
                            f"versions: {', '.join(numbers) or 'none'}; aliases: {_aliases_text(aliases)}")

    def _no_alias(self, name: str, alias: str) -> NoReturn:
        aliases = self._aliases(name)
        raise RegistryError(f"model '{name}' in MLflow registry {self.uri} has no alias '@{alias}'; aliases: "
                            f"{_aliases_text(aliases)}")

    def _call(self, action: Callable[[], Any], what: str, *, missing: Callable[[], Any] | None = None) -> Any:
        """Run an MLflow client call; a missing model, version or alias through ``missing``, an unreachable server,
        refused credentials or any other failure as one line naming the tracking server."""
        retries = logging.getLogger("urllib3.connectionpool")  # its retry warnings: the error below says it all
        level = retries.level
        retries.setLevel(logging.ERROR)
        try:
            return action()
        except FeatureAuditError:
            raise
        except Exception as exc:  # MlflowException and the requests errors it wraps
            code = str(getattr(exc, "error_code", "") or "")
            full = str(exc).replace(self._password, "***") if self._password else str(exc)
            text = (full.strip().splitlines() or [type(exc).__name__])[0][:400]
            if missing is not None and code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}:
                return missing()  # raises the line listing what exists (publish: creates the model)
            if code in {"UNAUTHENTICATED", "PERMISSION_DENIED"} or re.search(r"error code 40[13]\b", text):
                raise RegistryError(f"the MLflow tracking server {self.uri} ({TRACKING_ENV}) refused access to {what}"
                                    f" ({code or 'HTTP 401/403'}); set MLFLOW_TRACKING_USERNAME and "
                                    "MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN") from None
            if re.search(r"Max retries exceeded|Connection refused|Failed to establish|timed out|Name or service",
                         text) or "Connection" in type(exc).__name__:
                raise RegistryError(f"cannot reach the MLflow tracking server {self.uri} ({TRACKING_ENV}): "
                                    f"{_reason(full)}; check that it is running and the address is right") from None
            raise RegistryError(f"MLflow tracking server {self.uri}, {what}: {text}") from None
        finally:
            retries.setLevel(level)

    # --- writing ------------------------------------------------------------------------------------------------

    def publish(self, name: str, files: dict[str, Path], *, alias: str | None = None) -> tuple[str, str]:
        """Log a run holding the model at the keras flavor's layout and the ``featureaudit/`` artifacts, register it
        as a new version of ``name`` (MLflow numbers it) and point ``alias`` at it; the version number and run id.

        ``files`` are checked already (:func:`tasks.registry.publish.check_files`): ``model.keras``, ``test.*``, optionally
        ``train.*``, and ``manifest.json``.
        """
        check_name("model name", name)
        if alias is not None:
            check_alias(alias)
        client = self.client
        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", "").strip() or PUBLISH_EXPERIMENT
        found = self._call(lambda: client.get_experiment_by_name(experiment), f"experiment '{experiment}'")
        experiment_id = (found.experiment_id if found is not None else
                         self._call(lambda: client.create_experiment(experiment), f"experiment '{experiment}'"))
        run = self._call(lambda: client.create_run(experiment_id, run_name=f"featureaudit publish {name}",
                                                   tags={"featureaudit.model": name}), f"a run for model '{name}'")
        run_id = run.info.run_id
        try:
            with tempfile.TemporaryDirectory(prefix="featureaudit-publish-") as staging:
                model_dir = Path(staging) / "model"
                _keras_flavor_folder(model_dir, files["model.keras"], run_id)
                split_dir = Path(staging) / ARTIFACT_FOLDER
                split_dir.mkdir()
                for file_name, path in files.items():
                    if file_name != "model.keras":
                        shutil.copyfile(path, split_dir / file_name)
                self._call(lambda: client.log_artifacts(run_id, str(model_dir), "model"), f"run {run_id}")
                self._call(lambda: client.log_artifacts(run_id, str(split_dir), ARTIFACT_FOLDER), f"run {run_id}")
            self._call(lambda: client.set_terminated(run_id, "FINISHED"), f"run {run_id}")
        except BaseException:
            try:
                client.set_terminated(run_id, "FAILED")
            except Exception:  # the first error is the one to tell
                pass
            raise
        self._call(lambda: client.get_registered_model(name), f"model '{name}'",
                   missing=lambda: self._call(lambda: client.create_registered_model(name), f"model '{name}'"))
        record = self._call(lambda: client.create_model_version(name, source=f"runs:/{run_id}/model", run_id=run_id),
                            f"a version of model '{name}'")
        if alias is not None:
            self._call(lambda: client.set_registered_model_alias(name, alias, record.version), f"alias '@{alias}'")
        return str(record.version), run_id


def check_alias(alias: str) -> None:
    """Refuse an alias MLflow would not take: letters, digits, '_' and '-', not a version (``v3``) or ``latest``."""
    if not _ALIAS.fullmatch(alias) or alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise RegistryError(f"--alias {alias!r}: an MLflow alias is letters, digits, '_' and '-', and not 'latest' "
                            "or a version such as 'v3'")


def _keras_flavor_folder(folder: Path, model_file: Path, run_id: str) -> None:
    """The model's artifacts as ``mlflow.keras.log_model`` lays them out: ``MLmodel``, ``data/model.keras`` and
    ``data/keras_module.txt``, written without TensorFlow (the Keras version is read from the archive's metadata)."""
    from mlflow.models import Model

    data = folder / "data"
    data.mkdir(parents=True)
    shutil.copyfile(model_file, data / "model.keras")
    (data / "keras_module.txt").write_text("keras", encoding="utf-8")
    keras_version = _archive_keras_version(model_file)
    model = Model(artifact_path="model", run_id=run_id)
    model.add_flavor("keras", data="data", keras_version=keras_version, keras_backend="tensorflow",
                     save_exported_model=False)
    model.add_flavor("python_function", loader_module="mlflow.keras", data="data")
    model.save(str(folder / "MLmodel"))


def _archive_keras_version(path: Path) -> str | None:
    """The Keras version a ``.keras`` archive's ``metadata.json`` names, or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            value = json.loads(archive.read("metadata.json")).get("keras_version")
        return str(value) if value else None
    except (KeyError, OSError, ValueError, zipfile.BadZipFile, AttributeError):
        return None


def _aliases_text(aliases: dict[str, str]) -> str:
    return ", ".join(f"@{alias} (version {number})" for alias, number in aliases.items()) or "none"


def _preview(names: list[str], limit: int = 20) -> str:
    more = f", … ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _reason(text: str) -> str:
    """The innermost reason of a connection failure ("Connection refused"), else the text cut short."""
    found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    return found.group(1).strip() if found else text[:200]
