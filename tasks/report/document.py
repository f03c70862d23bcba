"""results.json: the one schema it is written and read through.

:func:`tasks.report.render.results_document` builds a :class:`ResultsDocument`, :meth:`ResultsDocument.to_bytes` is
the file, and :func:`read_results` reads one back for the history, the email and the Prefect artifacts. What a
reader uses is typed: the model's identity, the run, each method with its feature records, the verdicts, the
warnings and the test rows. What is only shown or kept (agreement, consensus, rank evidence, weight stability,
history, a method's details, a model input) stays the JSON object it was written as.

The top-level ``schema`` key says which shape a document has:

- **2**: every key is present (``history`` only when an earlier run was compared with, ``model.registry`` only
  when the registry is an object store such as ``s3://bucket/prefix`` or an MLflow tracking server (its URI, any
  password removed), ``model.provenance`` only for an MLflow version: ``kind``, the ``run_id`` that logged it, the
  ``alias`` it was asked for by (or null) and its model artifact's ``source``, :class:`tasks.registry.base.Provenance`;
  ``since_approval`` only in documents
  written since approvals exist: what changed since the model's last approved report, or ``approved_run`` null
  when there is none, :class:`tasks.report.approval.SinceApproval`). Keys this version does not know are ignored.
- **1**: documents written before the key existed (also read when ``schema`` is absent). Such a document is read
  when it holds what every reader needs: the model's name and version, the run's id, the verdict, each method's
  status, each feature record in full (``feature``, ``importance``, ``std``, ``low``, ``high``, ``rank``) and
  each warning's ``message``, ``feature`` and ``kind``. A key added since takes its default: empty, null, a
  method's ``sampling`` ``repeats`` (how drift always read a method without it), ``status`` ``partial`` when a
  method failed.

In schema 2, ``run.reused`` is present only when the run reused stored results (:mod:`tasks.methods.cache`): per method,
the run that computed them, ``{run, started, model, version}``.

A file that is missing, is not JSON, is not such a document or has a newer schema is one
:class:`~tasks.core.errors.ResultsError` naming it. Inside, the types are trusted.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from tasks.core.errors import ResultsError
from tasks.core.result import Sampling, Status, json_ready
from tasks.registry.base import Provenance

if TYPE_CHECKING:
    from tasks.core.result import ImportanceResult
    from tasks.report.verdict import Finding

SCHEMA = 2
#: The first schema, that of documents written before the ``schema`` key existed.
LEGACY_SCHEMA = 1
RUN_STATUS = ("complete", "partial")
LEGACY_NEEDS = ("the model's name and version, the run's id, the verdict, each method's status, each feature record "
                "in full and each warning's message, feature and kind")


@dataclass(frozen=True, kw_only=True)
class ModelIdentity:
    """Which model was audited: name and version, task, sha256 and resolved path of each file, how it is fed."""

    name: str
    version: str
    task: str | None = None
    sha256: dict[str, str] = field(default_factory=dict)  # file name -> hex digest
    paths: dict[str, str] = field(default_factory=dict)  # file name -> absolute path, links resolved
    inputs: tuple[dict[str, Any], ...] = ()  # per model input: name, shape, dtype, the columns feeding it
    output: str | None = None  # the audited output of a model with several
    notes: tuple[str, ...] = ()  # what loading had to do (a legacy .h5 loaded without compiling, …)
    registry: str | None = field(default=None, metadata={"optional": True})  # s3://bucket/prefix; None: a folder
    provenance: Provenance | None = field(default=None, metadata={"optional": True})  # MLflow: run id, alias asked for


@dataclass(frozen=True, kw_only=True)
class RunEntry:
    """One audit run: its id, when it started, its seed, the Prefect flow run and each task's seconds."""

    id: str
    started: datetime | None = None
    seed: int | None = None
    flow_run_id: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    #: method -> the run whose stored result this run reused (run, started, model, version); None: none reused
    reused: dict[str, dict[str, Any]] | None = field(default=None, metadata={"optional": True})


@dataclass(frozen=True, kw_only=True)
class FeatureRecord:
    """One feature's importance under one method: mean, std, 95% interval and rank (null: not finite)."""

    feature: str
    importance: float | None
    std: float | None
    low: float | None
    high: float | None
    rank: int


@dataclass(frozen=True, kw_only=True)
class MethodEntry:
    """One method's result: status (``error`` when failed, ``reason`` when skipped), sampling, feature records."""

    method: str
    kind: str | None = None
    status: Status
    error: str | None = None
    reason: str | None = None
    metric: str | None = None
    n_samples: int = 0
    sampling: Sampling = "repeats"
    reference: float | None = None  # what an importance is material against, in its units (None: nothing applies)
    notes: tuple[str, ...] = ()
    features: tuple[FeatureRecord, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_result(cls, result: ImportanceResult) -> MethodEntry:
        """The entry of one method's :class:`~tasks.core.result.ImportanceResult` (its records only when it is ok)."""
        return cls(
            method=result.method,
            kind=result.kind,
            status=result.status,
            error=result.error if result.status == "failed" else None,
            reason=result.error if result.status == "skipped" else None,
            metric=result.metric,
            n_samples=result.n_samples,
            sampling=result.sampling,
            reference=json_ready(result.reference),
            notes=tuple(result.notes),
            features=tuple(FeatureRecord(**json_ready(record)) for record in result.records()),
            details=json_ready(result.details_json()),
        )

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True, kw_only=True)
class WarningEntry:
    """One warning about one feature (:class:`tasks.report.verdict.Finding`), with the methods that support it."""

    message: str
    feature: str
    kind: str  # under-ranked, over-ranked
    weight_method: str | None = None
    behavioural_method: str | None = None
    weight_rank: int | None = None
    behavioural_rank: int | None = None
    weight_methods: tuple[str, ...] = ()
    behavioural_methods: tuple[str, ...] = ()
    # a demoted driver's importance over the largest the weights rank above it, and that feature (None when not
    # demoted, or when every such feature's importance is ≤ 0); documents written before them lack the keys
    margin: float | None = field(default=None, metadata={"optional": True})
    margin_over: str | None = field(default=None, metadata={"optional": True})

    @classmethod
    def from_finding(cls, finding: Finding) -> WarningEntry:
        return cls(message=finding.message, feature=finding.feature, kind=finding.kind,
                   weight_method=finding.weight_method, behavioural_method=finding.behavioural_method,
                   weight_rank=int(finding.weight_rank), behavioural_rank=int(finding.behavioural_rank),
                   weight_methods=tuple(finding.weight_methods),
                   behavioural_methods=tuple(finding.behavioural_methods),
                   margin=finding.margin if finding.margin is not None and math.isfinite(finding.margin) else None,
                   margin_over=finding.margin_over)


@dataclass(frozen=True, kw_only=True)
class TestRows:
    """How many test rows the file holds and how many the audit used (:meth:`ModelVersion.test_sampling`)."""

    __test__ = False  # not a pytest test class

    in_file: int
    used: int
    sampled: bool
    cap: int | None
    seed: int | None
    note: str | None


@dataclass(frozen=True, kw_only=True)
class ResultsDocument:
    """The machine-readable twin of one report: what results.json holds, typed where it is read."""

    schema: int = SCHEMA
    model: ModelIdentity
    run: RunEntry
    methods: dict[str, MethodEntry]
    verdict: str
    verdict_reason: str = ""
    verdicts: dict[str, str] = field(default_factory=dict)  # per judged weight ranking
    verdict_rule: str = ""
    status: str  # complete, or partial when a method failed
    test_rows: TestRows | None = None
    agreement: tuple[dict[str, Any], ...] = ()
    consensus: tuple[dict[str, Any], ...] = ()
    rank_evidence: dict[str, dict[str, Any]] = field(default_factory=dict)
    weight_stability: dict[str, Any] | None = None
    # the model against a constant prediction on the test split; absent from results.json files written before it
    model_fit: dict[str, Any] | None = field(default=None, metadata={"optional": True})
    interactions: str | None = field(default=None, metadata={"optional": True})  # what the run says of interactions
    warnings: tuple[WarningEntry, ...] = ()
    history: tuple[dict[str, Any], ...] | None = field(default=None, metadata={"optional": True})
    since_approval: dict[str, Any] | None = field(default=None, metadata={"optional": True})

    def to_json(self) -> dict[str, Any]:
        """The JSON object results.json holds (``history`` and ``since_approval`` only when there is one,
        ``model.registry`` only for a registry that is not a local folder)."""
        out = _to_json(self)
        if self.history is None:
            del out["history"]
        if self.since_approval is None:
            del out["since_approval"]
        if self.model.registry is None:
            del out["model"]["registry"]
        if self.model.provenance is None:
            del out["model"]["provenance"]
        if self.run.reused is None:
            del out["run"]["reused"]
        return out

    def to_bytes(self) -> bytes:
        """results.json itself: strict JSON (no NaN), indented."""
        return json.dumps(self.to_json(), indent=2, allow_nan=False).encode("utf-8")

    @classmethod
    def from_json(cls, data: Any, *, source: str = "results.json") -> ResultsDocument:
        """Read a parsed results.json (schema 2, or an older one holding what readers need), or a ResultsError
        naming ``source``."""
        if not isinstance(data, dict):
            raise ResultsError(f"{source} is not a featureaudit results document: it holds {_what(data)}, not an "
                               "object; run the audit again to write a new one")
        schema = data.get("schema", LEGACY_SCHEMA)
        if not isinstance(schema, int) or isinstance(schema, bool) or schema < LEGACY_SCHEMA:
            raise ResultsError(f"{source} is not a featureaudit results document: 'schema' is {schema!r}, expected "
                               f"{LEGACY_SCHEMA} to {SCHEMA}")
        if schema > SCHEMA:
            raise ResultsError(f"{source} has schema {schema}, written by a newer featureaudit (this one reads "
                               f"schemas {LEGACY_SCHEMA} to {SCHEMA}): upgrade featureaudit to read it")
        legacy = schema < SCHEMA
        try:
            return _read(cls, _legacy_status(data) | {"schema": schema} if legacy else data, "", legacy)
        except _Invalid as exc:
            hint = f" (a document without a schema is read when it has {LEGACY_NEEDS})" if legacy else ""
            raise ResultsError(f"{source} is not a featureaudit results document: {exc}{hint}; "
                               "run the audit again to write a new one") from None


def read_results(path: str | Path) -> ResultsDocument:
    """Read a run folder's results.json; a missing, unreadable, truncated or foreign file is one ResultsError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ResultsError(f"{path} does not exist: the run folder has no results.json; "
                           "run the audit again to write one") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ResultsError(f"{path} cannot be read ({type(exc).__name__}: {reason})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{path} is not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}): the file is "
                           "truncated or damaged; run the audit again to write a new one") from None
    return ResultsDocument.from_json(data, source=str(path))




# --- writing ---------------------------------------------------------------------------------------------------


def _to_json(value: Any) -> Any:
    if is_dataclass(value):
        return {f.name: _to_json(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


# --- reading: each key checked once, with its path for the message ---------------------------------------------


class _Invalid(Exception):
    """What is wrong, and where (``'methods.shap.status' is a number, expected a string``)."""


Convert = Callable[[Any, str, bool], Any]


def _read(cls: type, data: Any, where: str, legacy: bool) -> Any:
    """An instance of the dataclass ``cls`` from the JSON object ``data``: every field's key is needed, except one
    with a default in a legacy document (and ``history``, which only some documents have)."""
    if not isinstance(data, dict):
        raise _Invalid(f"'{where}' is {_what(data)}, expected an object")
    values = {}
    for f in fields(cls):
        key = f"{where}.{f.name}" if where else f.name
        if f.name in data:
            values[f.name] = _CONVERT[cls][f.name](data[f.name], key, legacy)
        elif not (_has_default(f) and (legacy or f.metadata.get("optional"))):
            raise _Invalid(f"it has no '{key}'")
    return cls(**values)


def _has_default(f: Field) -> bool:
    return f.default is not MISSING or f.default_factory is not MISSING


def _legacy_status(data: dict[str, Any]) -> dict[str, Any]:
    """A legacy document without ``status``: partial when a method failed, as the run would have said."""
    methods = data.get("methods")
    if "status" in data or not isinstance(methods, dict):
        return data
    failed = any(isinstance(m, dict) and m.get("status") == "failed" for m in methods.values())
    return {**data, "status": "partial" if failed else "complete"}


def _what(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


def _check(ok: Callable[[Any], bool], expected: str) -> Convert:
    def convert(value: Any, where: str, legacy: bool) -> Any:
        if not ok(value):
            raise _Invalid(f"'{where}' is {_what(value)}, expected {expected}")
        return value
    return convert


_str = _check(lambda v: isinstance(v, str), "a string")
_int = _check(lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer")
_bool = _check(lambda v: isinstance(v, bool), "true or false")
_object = _check(lambda v: isinstance(v, dict), "an object")


def _number(value: Any, where: str, legacy: bool) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise _Invalid(f"'{where}' is {_what(value)}, expected a number")
    return float(value)


def _optional(convert: Convert) -> Convert:
    return lambda value, where, legacy: None if value is None else convert(value, where, legacy)


def _one_of(*choices: str) -> Convert:
    def convert(value: Any, where: str, legacy: bool) -> str:
        if value not in choices:
            raise _Invalid(f"'{where}' is {value!r}, expected one of {', '.join(choices)}")
        return value
    return convert


def _list_of(convert: Convert) -> Convert:
    def each(value: Any, where: str, legacy: bool) -> tuple:
        if not isinstance(value, list):
            raise _Invalid(f"'{where}' is {_what(value)}, expected a list")
        return tuple(convert(v, f"{where}[{i}]", legacy) for i, v in enumerate(value))
    return each


def _dict_of(convert: Convert) -> Convert:
    def each(value: Any, where: str, legacy: bool) -> dict:
        if not isinstance(value, dict):
            raise _Invalid(f"'{where}' is {_what(value)}, expected an object")
        return {k: convert(v, f"{where}.{k}", legacy) for k, v in value.items()}
    return each


def _nested(cls: type) -> Convert:
    return lambda value, where, legacy: _read(cls, value, where, legacy)


def _started(value: Any, where: str, legacy: bool) -> datetime:
    try:
        return datetime.fromisoformat(_str(value, where, legacy))
    except ValueError:
        raise _Invalid(f"'{where}' is {value!r}, expected an ISO 8601 time") from None


def _methods(value: Any, where: str, legacy: bool) -> dict[str, MethodEntry]:
    """The methods by name; a legacy entry without ``method`` is named by its key."""
    named = {k: {"method": k, **v} if legacy and isinstance(v, dict) else v
             for k, v in _object(value, where, legacy).items()}
    return _dict_of(_nested(MethodEntry))(named, where, legacy)


_CONVERT: dict[type, dict[str, Convert]] = {
    ModelIdentity: {"name": _str, "version": _str, "task": _optional(_str), "sha256": _dict_of(_str),
                    "paths": _dict_of(_str), "inputs": _list_of(_object), "output": _optional(_str),
                    "notes": _list_of(_str), "registry": _optional(_str),
                    "provenance": _optional(_nested(Provenance))},
    Provenance: {"kind": _str, "run_id": _optional(_str), "alias": _optional(_str), "source": _optional(_str)},
    RunEntry: {"id": _str, "started": _optional(_started), "seed": _optional(_int), "flow_run_id": _optional(_str),
               "timings": _dict_of(_number), "reused": _optional(_dict_of(_object))},
    FeatureRecord: {"feature": _str, "importance": _optional(_number), "std": _optional(_number),
                    "low": _optional(_number), "high": _optional(_number), "rank": _int},
    MethodEntry: {"method": _str, "kind": _optional(_str), "status": _one_of(*get_args(Status)),
                  "error": _optional(_str), "reason": _optional(_str), "metric": _optional(_str), "n_samples": _int,
                  "sampling": _one_of(*get_args(Sampling)), "reference": _optional(_number), "notes": _list_of(_str),
                  "features": _list_of(_nested(FeatureRecord)), "details": _object},
    WarningEntry: {"message": _str, "feature": _str, "kind": _str, "weight_method": _optional(_str),
                   "behavioural_method": _optional(_str), "weight_rank": _optional(_int),
                   "behavioural_rank": _optional(_int), "weight_methods": _list_of(_str),
                   "behavioural_methods": _list_of(_str), "margin": _optional(_number),
                   "margin_over": _optional(_str)},
    TestRows: {"in_file": _int, "used": _int, "sampled": _bool, "cap": _optional(_int), "seed": _optional(_int),
               "note": _optional(_str)},
    ResultsDocument: {"schema": _int, "model": _nested(ModelIdentity), "run": _nested(RunEntry), "methods": _methods,
                      "verdict": _str, "verdict_reason": _str, "verdicts": _dict_of(_str), "verdict_rule": _str,
                      "status": _one_of(*RUN_STATUS), "test_rows": _optional(_nested(TestRows)),
                      "agreement": _list_of(_object), "consensus": _list_of(_object),
                      "rank_evidence": _dict_of(_object), "weight_stability": _optional(_object), "model_fit": _optional(_object),
                      "interactions": _optional(_str),
                      "warnings": _list_of(_nested(WarningEntry)), "history": _optional(_list_of(_object)),
                      "since_approval": _optional(_object)},
}
