"""What an audit may be asked to do, in one place: the options object and the defaults of a run and a schedule.

The command line (``run``, ``serve``, ``demo``), the flows, ``serve``'s deployment and ``prefect.yaml``
all read :class:`AuditOptions`; a flow takes it as one parameter, ``options``, which the Prefect UI
shows as a form. An option out of range is refused with one line naming it (:func:`parse_options`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tasks.errors import FeatureAuditError

DEFAULT_OUT = "reports"
DEFAULT_CRON = "0 2 * * *"  # nightly at 02:00
DEFAULT_APPROVAL_TIMEOUT_S = 7 * 24 * 3600.0  # how long a paused run waits for a reviewer's decision: a week
DEFAULT_MAX_ROWS = 200_000
METHOD_NAMES = ("weights", "permutation", "ablation", "shap")  # tasks.methods.METHODS holds one entry for each


class AuditOptions(BaseModel):
    """How one model version is audited. Frozen and picklable: tasks on Dask workers receive it as it is."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    methods: tuple[str, ...] = Field(default=METHOD_NAMES, description="the importance methods to run")
    seed: int = Field(default=0, description="seed for every random choice")
    repeats: int = Field(default=5, ge=1, description="permutation repeats to start with (doubled up to 20 while "
                                                        "the top features are not verified)")
    seeds: int = Field(default=5, ge=1, description="retrain-ablation seeds to start with (added up to 8 while a "
                                                      "top feature's interval straddles zero)")
    cluster_threshold: float = Field(default=0.7, gt=0.0, le=1.0,
                                     description="|Spearman ρ| from which features are permuted and retrained jointly")
    ablation_budget: str | None = Field(default=None, description="retrain at most N features (8), for about N "
                                                                  "seconds (600s), or 'all'; default: all, 50 above "
                                                                  "100 features")
    max_test_rows: int | None = Field(default=DEFAULT_MAX_ROWS, ge=1,
                                      description="test rows used at most (a seeded sample above it); null: all")
    shap_rows: int = Field(default=1000, ge=1, description="test rows SHAP explains for the global importance")

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [m for m in value if m not in METHOD_NAMES]
        if unknown or not value:
            raise ValueError(f"unknown method '{(unknown or [''])[0]}'; choose from {','.join(METHOD_NAMES)}")
        return tuple(value)

    @field_validator("ablation_budget")
    @classmethod
    def _budget(cls, value: str | None) -> str | None:
        from tasks.ablation import Budget

        Budget.parse(value)  # raises FeatureAuditError naming the option
        return value


#: How each option is spelled on the command line, for messages.
FLAGS = {"methods": "--methods", "seed": "--seed", "repeats": "--repeats", "seeds": "--seeds",
         "cluster_threshold": "--cluster-threshold", "ablation_budget": "--ablation-budget",
         "max_test_rows": "--max-rows", "shap_rows": "--shap-rows"}


def parse_options(**values: Any) -> AuditOptions:
    """The options from keyword values (``None`` means the default); one line naming the option when one is wrong."""
    try:
        return AuditOptions(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]) if error["loc"] else "options"
        message = str(error.get("ctx", {}).get("error", "")) or error["msg"]
        raise FeatureAuditError(f"{FLAGS.get(name, name)} {values.get(name)!r}: {message}") from None
