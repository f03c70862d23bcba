"""What an audit may be asked to do, in one place: the options object and the defaults of a run and a schedule.

The command line (``run``, ``serve``, ``demo``), the flows, ``serve``'s deployment and ``prefect.yaml``
all read :class:`AuditOptions`; a flow takes it as one parameter, ``options``, which the Prefect UI
shows as a form. An option out of range is refused with one line naming it (:func:`parse_options`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tasks.core.errors import FeatureAuditError

DEFAULT_OUT = "reports"
DEFAULT_CRON = "0 2 * * *"  # nightly at 02:00
DEFAULT_APPROVAL_TIMEOUT_S = 7 * 24 * 3600.0  # how long a paused run waits for a reviewer's decision: a week
DEFAULT_MAX_ROWS = 200_000
METHOD_NAMES = ("weights", "permutation", "ablation", "shap")  # tasks.methods.table.METHODS holds one entry for each
# Wide models: without --ablation-budget, only the WIDE_BUDGET units permutation ranks first are retrained
# when there are more than WIDE_FEATURES features (a 300-feature model spent 681 s of a 722 s run here).
WIDE_FEATURES = 100
WIDE_BUDGET = 50


@dataclass(frozen=True)
class Budget:
    """How much retraining a run may spend: at most ``max_units`` units, or about ``seconds`` seconds."""

    max_units: int | None = None
    seconds: float | None = None

    @classmethod
    def parse(cls, text: str | None, *, n_features: int = 0) -> Budget:
        """``"8"`` ablates the 8 most important units; ``"300s"`` stops starting new units after 300 s; ``"all"``
        ablates every unit. Unset: every unit, except that a model with more than ``WIDE_FEATURES`` features
        gets the ``WIDE_BUDGET`` most important (retraining every unit of a wide model takes hours)."""
        if text is None or text == "":
            return cls(max_units=WIDE_BUDGET) if n_features > WIDE_FEATURES else cls()
        value = text.strip().lower()
        if value == "all":
            return cls()
        try:
            if value.endswith("s"):
                seconds = float(value[:-1])
                if seconds > 0:
                    return cls(seconds=seconds)
            elif int(value) > 0:
                return cls(max_units=int(value))
        except ValueError:
            pass
        raise FeatureAuditError(f"--ablation-budget {text!r}: give a number of features (8), seconds (300s) or 'all'")


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
