"""What an audit may be asked to do: the run-wide options, the base of each method's own options, the defaults
of a run and a schedule, and how an option is spelled on the command line.

The options object a flow takes is :class:`tasks.methods.table.AuditOptions`: these run-wide fields, which
methods run, and one section per method of the table holding that method's own ``Options`` (a
:class:`MethodOptions` declared in the method's module, where its defaults live). The command line (``run``,
``serve``, ``demo``), the flows, ``serve``'s deployment and ``prefect.yaml`` all read it; a flow takes it as
one parameter, ``options``. An option out of range is refused with one line naming its flag.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_OUT = "reports"
DEFAULT_CRON = "0 2 * * *"  # nightly at 02:00
DEFAULT_APPROVAL_TIMEOUT_S = 7 * 24 * 3600.0  # how long a paused run waits for a reviewer's decision: a week
DEFAULT_MAX_ROWS = 200_000
DEFAULT_CLUSTER_THRESHOLD = 0.7  # |Spearman ρ| from which features form a cluster (tasks/subject/clusters.py)


class MethodOptions(BaseModel):
    """A method's own options: frozen, no unknown keys. Each field is also a flat key of the run's options (as
    earlier deployments and ``prefect.yaml`` spell it) and the command-line flag ``--<name with dashes>``, so
    field names are unique across methods."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class RunOptions(BaseModel):
    """The options every method shares: the seed, the units' cluster threshold and the test rows used."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = Field(default=0, description="seed for every random choice")
    cluster_threshold: float = Field(default=DEFAULT_CLUSTER_THRESHOLD, gt=0.0, le=1.0,
                                     description="|Spearman ρ| from which features are permuted and retrained "
                                                 "jointly")
    max_test_rows: int | None = Field(default=DEFAULT_MAX_ROWS, ge=1,
                                      description="sample a larger test split down to this many rows, seeded; "
                                                  "null: all")


#: Flags spelled other than ``--<field name with dashes>``.
FLAG_SPELLINGS = {"max_test_rows": "--max-rows"}


def flag(name: str) -> str:
    """How option ``name`` is spelled on the command line: ``--cluster-threshold``, ``--max-rows``."""
    return FLAG_SPELLINGS.get(name, "--" + name.replace("_", "-"))
