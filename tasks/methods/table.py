"""The one table of importance methods: what the flow runs, the command line offers, the cache stores, the verdict
judges and the report titles; and the options of a run, built from it.

Each method module ends with its :class:`tasks.methods.base.Method` entry; :data:`METHODS` lists them, in the order
the report shows them. A new method is one module and one line here; the runner, the options and the command
line's flags, the cache, the verdict, the report and ``results.json`` read the table.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from tasks.core.errors import FeatureAuditError
from tasks.core.options import MethodOptions, RunOptions, flag
from tasks.core.result import Kind
from tasks.methods import ablation, effects, gradcam, interactions, lime, occlusion, permutation, shap, weights
from tasks.methods.base import Method

METHODS: dict[str, Method] = {m.name: m for m in (weights.METHOD, permutation.METHOD, ablation.METHOD, shap.METHOD,
                                                  lime.METHOD, effects.METHOD, interactions.METHOD, occlusion.METHOD,
                                                  gradcam.METHOD)}


def result_titles() -> dict[str, str]:
    """Every result's title, for the report."""
    return {name: title for m in METHODS.values() for name, title in m.titles.items()}


def title_of(name: str) -> str:
    """A result's title for the report (its name where it has none: a method no longer in the table)."""
    return result_titles().get(name, name)


def judged(kind: Kind) -> tuple[str, ...]:
    """The results the verdict judges among the methods of ``kind``, in table order."""
    return tuple(spec.name for m in METHODS.values() if m.kind == kind for spec in m.results if spec.judged)


def reference(kind: Kind) -> str | None:
    """The first judged result of ``kind`` in table order: the report draws the weight-based one against the
    behavioural ones, and orders its ranking table by the behavioural one."""
    return next(iter(judged(kind)), None)


class AuditOptions(RunOptions):
    """How one model version is audited: the run-wide options, which methods run, and each method's own options
    as a section named after it (``options.permutation.repeats``), its defaults filled in. Frozen and picklable:
    tasks on Dask workers receive it as it is.

    A method's option may also be given flat, as the command line and earlier deployments spell it (``repeats=2``
    for ``permutation={"repeats": 2}``): it is lifted into its method's section.
    """

    model_config = ConfigDict(frozen=True, extra="allow")  # the extra keys are the methods' sections, built below

    methods: tuple[str, ...] = Field(default_factory=lambda: tuple(METHODS), description="the importance methods "
                                                                                         "to run")

    @model_validator(mode="before")
    @classmethod
    def _sections(cls, data: Any) -> Any:
        """Each method's section as its own ``Options``, from a section or flat keys; an unknown key is refused."""
        if not isinstance(data, dict):
            return data
        kept = {key: value for key, value in data.items() if key in cls.model_fields}
        given: dict[str, dict[str, Any]] = {}
        for key, value in data.items():
            if key in cls.model_fields:
                continue
            if key in METHODS:
                section = value.model_dump() if isinstance(value, BaseModel) else value
                if not isinstance(section, dict):
                    raise FeatureAuditError(f"options: '{key}' must hold {key}'s options as an object, not {value!r}")
                given.setdefault(key, {}).update(section)
            elif (owner := _owner(key)) is not None:
                given.setdefault(owner, {})[key] = value
            else:
                known = [*cls.model_fields, *METHODS, *(k for m in METHODS.values() for k in m.options.model_fields)]
                raise FeatureAuditError(f"options: unknown option '{key}'; known: {', '.join(known)}")
        return kept | {name: _section(method, given.get(name, {})) for name, method in METHODS.items()}

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [m for m in value if m not in METHODS]
        if unknown or not value:
            raise ValueError(f"unknown method '{(unknown or [''])[0]}'; choose from {','.join(METHODS)}")
        return tuple(value)

    def of(self, method: str) -> MethodOptions:
        """``method``'s own options (its defaults when the options were made before it was in the table)."""
        return getattr(self, method, None) or METHODS[method].options()


def option_fields() -> dict[str, FieldInfo]:
    """Every option a run takes flat (the command line's flags), by name: the run-wide ones, then each method's."""
    fields = dict(AuditOptions.model_fields)
    for method in METHODS.values():
        fields |= method.options.model_fields
    return fields


def parse_options(**values: Any) -> AuditOptions:
    """The options from flat keyword values (``None`` means the default); one line naming the flag when one is
    wrong."""
    try:
        return AuditOptions(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        raise _one_line(exc, values) from None


def _owner(key: str) -> str | None:
    """The method whose options have the field ``key``."""
    return next((m.name for m in METHODS.values() if key in m.options.model_fields), None)


def _section(method: Method, values: dict[str, Any]) -> MethodOptions:
    """``method``'s options from ``values``; a wrong one is one line naming its flag."""
    try:
        return method.options(**values)
    except ValidationError as exc:
        raise _one_line(exc, values) from None


def _one_line(exc: ValidationError, values: dict[str, Any]) -> FeatureAuditError:
    error = exc.errors()[0]
    name = str(error["loc"][0]) if error["loc"] else "options"
    message = str(error.get("ctx", {}).get("error", "")) or error["msg"]
    return FeatureAuditError(f"{flag(name)} {values.get(name)!r}: {message}")
