"""Importance drift across nightly runs: this run against the previous report of the same model.

Earlier runs are found by their ``results.json`` under ``<out>/<model>/<version>/<run-id>/``; run
ids start with a UTC timestamp, so the greatest one is the newest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import task


def previous_results(out: str | Path, model: str) -> dict[str, Any] | None:
    """The newest earlier ``results.json`` of ``model`` under ``out``, or None."""
    root = Path(out) / model
    if not root.is_dir():
        return None
    runs = [p for p in root.glob("*/*/results.json") if not p.parent.name.startswith(".")]
    for path in sorted(runs, key=lambda p: p.parent.name, reverse=True):
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue  # an unreadable old report is no reason to fail tonight's
    return None


def drift(previous: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """Rank changes per method, and warnings that are new or resolved since ``previous``."""
    changes = {}
    for method, now in current["methods"].items():
        before = previous.get("methods", {}).get(method)
        if not before or before.get("status") != "ok" or now["status"] != "ok":
            continue
        old = {r["feature"]: r["rank"] for r in before["features"]}
        moved = [(r["feature"], old[r["feature"]], r["rank"]) for r in now["features"]
                 if r["feature"] in old and old[r["feature"]] != r["rank"]]
        changes[method] = sorted(moved, key=lambda t: (-abs(t[1] - t[2]), t[2]))
    key = lambda w: (w["feature"], w["kind"], w["weight_method"], w["behavioural_method"])  # noqa: E731
    old_warnings = {key(w): w["message"] for w in previous.get("warnings", [])}
    new_warnings = {key(w): w["message"] for w in current["warnings"]}
    return {
        "previous_run": previous.get("run", {}).get("id"),
        "previous_version": previous.get("model", {}).get("version"),
        "previous_verdict": previous.get("verdict"),
        "rank_changes": changes,
        "new_warnings": [m for k, m in new_warnings.items() if k not in old_warnings],
        "resolved_warnings": [m for k, m in old_warnings.items() if k not in new_warnings],
    }


@task(name="previous-run")
def previous_results_task(out: str, model: str) -> dict[str, Any] | None:
    """Read the newest earlier report of this model, if any."""
    return previous_results(out, model)
