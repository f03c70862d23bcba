"""Which versions to audit as they land: compare a registry's snapshots between polls, debounced.

:class:`Watcher` keeps, per model, the last snapshot it acted on (``Registry.snapshot``: ``latest`` and, for
MLflow, ``@alias`` labels naming a version; a ``<label>.stamp`` fingerprinting that version's files). The first
poll is the baseline and starts nothing: the versions already there are the nightly run's business. A change
is acted on only once the next poll sees the same snapshot again, so a version still being copied in is not
audited half-written; then each version a label moved to (or whose files changed in place) is audited once,
however many labels point at it, asked for by an alias that moved to it where there is one. A model that appears after the baseline has its newest version audited.

Plain code, no Prefect: :mod:`flows.serve` polls, and turns each version returned here into a Prefect event
that the deployment's trigger answers with one audit run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

STAMP = ".stamp"


@dataclass
class Watcher:
    """The versions to audit, from successive ``{model: snapshot}`` polls of one registry."""

    baseline_taken: bool = False
    acted: dict[str, dict[str, str]] = field(default_factory=dict)  # model -> the snapshot last acted on
    pending: dict[str, dict[str, str]] = field(default_factory=dict)  # model -> a changed snapshot, not yet settled

    def observe(self, snapshots: dict[str, dict[str, str]]) -> list[tuple[str, str]]:
        """Take one poll (models that could not be read are left out of it); return ``(model, version)`` to audit."""
        if not self.baseline_taken:
            self.acted = {name: dict(snapshot) for name, snapshot in snapshots.items()}
            self.baseline_taken = True
            return []
        due: list[tuple[str, str]] = []
        for name, snapshot in snapshots.items():
            if snapshot == self.acted.get(name):
                self.pending.pop(name, None)
                continue
            if self.pending.get(name) != snapshot:  # changed since the last poll: wait for it to settle
                self.pending[name] = dict(snapshot)
                continue
            due += [(name, version) for version in moved(self.acted.get(name, {}), snapshot)]
            self.acted[name] = self.pending.pop(name)
        return due


def moved(before: dict[str, str], now: dict[str, str]) -> list[str]:
    """What to audit: each version that a label points at now and did not before (or whose files changed), once.

    A version an alias moved to is named by the alias (``@champion``), so its audit records the alias; otherwise
    by the version itself.
    """
    refs: dict[str, str] = {}  # version -> how to ask for it
    for label, version in now.items():
        if label.endswith(STAMP):
            continue
        stamp = label + STAMP
        if before.get(label) != version or before.get(stamp) != now.get(stamp):
            if version not in refs or label.startswith("@") and not refs[version].startswith("@"):
                refs[version] = label if label.startswith("@") else version
    return list(refs.values())
