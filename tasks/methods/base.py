"""The Method protocol: how an importance method declares itself, once, for everything downstream.

A method module ends with one :class:`Method` entry (``METHOD``), and :mod:`tasks.methods.table` lists the
entries. From the entry the runner (:mod:`tasks.methods.runner`) knows how to run it and in which order, the
cache which options key its result and which types it may store, the verdict which results it judges, and the
report each result's title. A method is either

- ``compute(subject, options, context) -> list[ImportanceResult]``: a plain function of the loaded subject, which
  the runner calls inside one Prefect task named after the method; or
- a ``fan_out``: it submits tasks of its own on the flow's task runner (retrain-ablation: a plan, many jobs, the
  results), given the upstream futures it ``needs``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tasks.core.options import MethodOptions, RunOptions
from tasks.core.result import ImportanceResult, Kind

#: What an importance is about: a column, a manifest group, a correlated cluster, an image patch, a text token,
#: or a pair of features (interactions).
UnitKind = Literal["column", "group", "cluster", "patch", "token", "pair"]
#: The units each kind of version has: an image's are the patches of its grid.
IMAGE_UNITS: frozenset[str] = frozenset({"patch"})
TABULAR_UNITS: frozenset[str] = frozenset({"column", "group", "cluster", "pair"})

_QUIET = logging.getLogger("featureaudit.methods")


@dataclass(frozen=True)
class ResultSpec:
    """One result a method returns: its ``results.json`` key, its title in the report, and whether the verdict
    judges it (``judged``) or the report only shows it."""

    name: str
    title: str
    judged: bool = True


@dataclass(frozen=True)
class Context:
    """What a method gets besides the subject and its own options: the run-wide options (``run``: the seed, the
    cluster threshold, …), the results of the methods it ``needs``, the run's logger, and a progress callback
    ``(unit, done, total)``."""

    run: RunOptions = field(default_factory=RunOptions)
    upstream: Mapping[str, list[ImportanceResult]] = field(default_factory=dict)
    logger: Any = _QUIET  # a logging.Logger or Prefect's run logger
    progress: Callable[[str, int, int], None] | None = None

    @property
    def seed(self) -> int:
        return self.run.seed


#: ``compute(subject, options, context)``: ``subject`` is a :class:`tasks.subject.loaded.Subject`, ``options`` the
#: method's own ``Options``.
Compute = Callable[[Any, Any, Context], list[ImportanceResult]]
#: ``fan_out(version, options, context, cache, upstream) -> (results, state)``: ``upstream`` maps each method it
#: needs to its future; ``state`` is the final task's state when every task it ran was reused from the cache,
#: else None.
FanOut = Callable[..., tuple[list[ImportanceResult], Any]]


@dataclass(frozen=True)
class Section:
    """A method's own report section: its template (in ``templates/sections/``, or in ``folder`` when the
    method keeps it elsewhere) and the function that decides, from the method's result, everything it shows
    (None: nothing to show). The template sees that as ``section``. ``summary``, when given, is the method's one
    line on the report's first page (None: nothing to say there)."""

    template: str
    context: Callable[[ImportanceResult], dict[str, Any] | None]
    folder: Path | None = None
    summary: Callable[[ImportanceResult], str | None] | None = None


@dataclass(frozen=True)
class Method:
    """One importance method, declared once (see the module's docstring)."""

    name: str  # as --methods spells it; also its Prefect task run's name and its stored results' prefix
    title: str
    kind: Kind
    units: frozenset[UnitKind]
    results: tuple[ResultSpec, ...]
    #: Its own options (a :class:`tasks.core.options.MethodOptions`, declared in its module with its defaults): a
    #: section of the run's options named after it, and command-line flags.
    options: type[MethodOptions] = MethodOptions
    compute: Compute | None = None
    fan_out: FanOut | None = None
    needs: tuple[str, ...] = ()  # methods whose results (or futures, for a fan-out) it reads
    #: The run-wide options that change its numbers, besides its own: the cache key's allow-list (the test rows
    #: used are in the version's key; which other methods run never matters).
    shared: tuple[str, ...] = ("seed",)
    stored: tuple[type, ...] = ()  # its Details (and fan-out) dataclasses: what the cache may rebuild
    section: Section | None = None  # its own section of the report, beside the generic ranking and method pages

    def __post_init__(self) -> None:
        if (self.compute is None) == (self.fan_out is None):
            raise ValueError(f"method {self.name}: give exactly one of compute and fan_out")

    def applies_to(self, image: bool) -> bool:
        """Whether it measures any unit an image version (or a tabular one) has."""
        return bool(self.units & (IMAGE_UNITS if image else TABULAR_UNITS))

    @property
    def titles(self) -> dict[str, str]:
        """Each result's title, by its name."""
        return {spec.name: spec.title for spec in self.results}

    def failed(self, features: tuple[str, ...], reason: str) -> ImportanceResult:
        """The result that stands in for this method when it raised: shown as failed, the report still written."""
        return ImportanceResult.not_ok(self.name, self.kind, features, status="failed", reason=reason)
