"""What the Prefect UI shows for a run: a markdown artifact with the verdict and warnings, a table of ranks."""

from __future__ import annotations

import re
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.compare import Comparison
from tasks.result import ImportanceResult

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-!|~])")


def escape_markdown(text: str) -> str:
    """Feature names and messages as literal text in markdown: no links, images or HTML."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def slug(name: str) -> str:
    """A name as Prefect artifact keys allow it: lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "model"


def artifact_key(model: str, suffix: str) -> str:
    return f"featureaudit-{slug(model)}-{suffix}"


def verdict_markdown(model: str, version: str, comparison: Comparison, report_folder: str) -> str:
    lines = [
        f"# featureaudit: {escape_markdown(model)} {escape_markdown(version)}",
        "",
        f"**Verdict on the weight-based ranking: {comparison.verdict}**",
        "",
        escape_markdown(comparison.reason),
        "",
        escape_markdown(comparison.rule),
        "",
        "## Warnings",
    ]
    lines += [f"- {escape_markdown(f.message)}" for f in comparison.findings] or ["- none"]
    lines += ["", f"Report: {escape_markdown(report_folder)}"]
    return "\n".join(lines)


def ranking_rows(results: list[ImportanceResult]) -> list[dict[str, Any]]:
    """One row per feature: its rank under every method that succeeded."""
    usable = [r for r in results if r.ok]
    features = usable[0].features if usable else ()
    rows = []
    for name in features:
        row: dict[str, Any] = {"feature": name}
        for r in usable:
            row[r.method] = int(r.rank[r.features.index(name)]) if name in r.features else None
        rows.append(row)
    return rows


@task(name="publish-artifacts")
def publish_artifacts_task(
    model: str, version: str, results: list[ImportanceResult], comparison: Comparison, report_folder: str
) -> None:
    """Attach the verdict, warnings and rank table to the flow run in the Prefect UI."""
    create_markdown_artifact(
        markdown=verdict_markdown(model, version, comparison, report_folder),
        key=artifact_key(model, "verdict"),
        description=f"Verdict and warnings for {model} {version}",
    )
    create_table_artifact(
        table=ranking_rows(results), key=artifact_key(model, "rankings"), description="Rank of each feature per method"
    )
