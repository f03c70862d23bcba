"""What the Prefect UI shows for a run: a markdown artifact with the verdict and warnings, a table of ranks,
a link to the report; and for a registry run, a table with one line per model.

A report's link is ``<base>/<model>/<version>/<run-id>/report.pdf`` when ``FEATUREAUDIT_REPORT_BASE_URL``
names where the report folders are served from (the output folder's layout, published as it is), else the
report's own ``file://`` URL.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from tasks.core.errors import FeatureAuditError
from tasks.core.names import slug
from tasks.core.result import ImportanceResult
from tasks.methods.table import title_of
from tasks.report.document import read_results
from tasks.report.verdict import Comparison

#: The URL the output folder is served from, e.g. https://reports.example.com/featureaudit
REPORT_BASE_URL = "FEATUREAUDIT_REPORT_BASE_URL"
SUMMARY_KEY = "featureaudit-registry-summary"
SUMMARY_COLUMNS = ("model", "version", "verdict", "status", "report", "message")

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-!|~])")


def escape_markdown(text: str) -> str:
    """Feature names and messages as literal text in markdown: no links, images or HTML."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


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
        escape_markdown(comparison.interactions),
        "",
        escape_markdown(comparison.rule),
        "",
        "## Warnings",
    ]
    lines += [f"- {escape_markdown(f.message)}" for f in comparison.findings] or ["- none"]
    lines += ["", f"Report: {escape_markdown(report_folder)}"]
    return "\n".join(lines)


def ranking_rows(results: list[ImportanceResult]) -> list[dict[str, Any]]:
    """One row per feature: its rank under every method that succeeded, each column named by the method's title."""
    usable = [r for r in results if r.ok]
    features = usable[0].features if usable else ()
    ranks = [(title_of(r.method), dict(zip(r.features, r.rank.tolist()))) for r in usable]
    rows = []
    for name in features:
        row: dict[str, Any] = {"feature": name}
        for method, rank in ranks:
            row[method] = rank.get(name)
        rows.append(row)
    return rows


def report_base_url() -> str | None:
    """``FEATUREAUDIT_REPORT_BASE_URL`` without its trailing slash, or None when unset; refused unless a URL."""
    base = os.environ.get(REPORT_BASE_URL, "").strip().rstrip("/")
    if not base:
        return None
    parts = urlsplit(base)
    if not parts.scheme or not parts.netloc or parts.query or parts.fragment:
        raise FeatureAuditError(f"{REPORT_BASE_URL}={base!r} is not a base URL such as "
                                "https://reports.example.com/featureaudit (scheme and host, no query)")
    return base


def report_url(folder: str | Path, model: str, version: str) -> str:
    """Where a run's report.pdf is read: under the report store's base URL when one is set, else its file:// URL."""
    folder = Path(folder)
    base = report_base_url()
    if base is None:
        return (folder / "report.pdf").resolve().as_uri()
    return "/".join([base, *(quote(part, safe="") for part in (model, version, folder.name, "report.pdf"))])


def report_summary(folder: str | Path) -> dict[str, str]:
    """A written report's version, verdict and link, from its results.json (a ResultsError when it cannot be read)."""
    document = read_results(Path(folder) / "results.json")
    model, version = document.model.name, document.model.version
    return {"version": version, "verdict": document.verdict, "report": report_url(folder, model, version)}


def summary_rows(outcome: dict[str, dict[str, str | None]]) -> list[dict[str, str]]:
    """One row per model of a registry run: model, version, verdict, status, report link and message."""
    return [{column: ({"model": model} | line).get(column) or "" for column in SUMMARY_COLUMNS}
            for model, line in outcome.items()]


@task(name="publish-artifacts")
def publish_artifacts_task(
    model: str, version: str, results: list[ImportanceResult], comparison: Comparison, report_folder: str
) -> None:
    """Attach the verdict, warnings, rank table and a link to the report to the flow run in the Prefect UI."""
    create_markdown_artifact(
        markdown=verdict_markdown(model, version, comparison, report_folder),
        key=artifact_key(model, "verdict"),
        description=f"Verdict and warnings for {model} {version}",
    )
    create_table_artifact(
        table=ranking_rows(results), key=artifact_key(model, "rankings"), description="Rank of each feature per method"
    )
    create_link_artifact(
        link=report_url(report_folder, model, version), link_text=f"{model} {version} report",
        key=artifact_key(model, "report"), description=f"The report of this run of {model} {version}",
    )


@task(name="publish-summary")
def publish_summary_task(outcome: dict[str, dict[str, str | None]]) -> None:
    """Attach the registry run's table (model, version, verdict, status, report) to its flow run."""
    failed = sum(line["status"] == "failed" for line in outcome.values())
    create_table_artifact(table=summary_rows(outcome), key=SUMMARY_KEY,
                          description=f"{len(outcome)} models audited, {failed} failed")
