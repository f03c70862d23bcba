"""The report: a pure context builder, one autoescaping Jinja2 environment, HTML and PDF from the same context.

``build_context`` decides everything the document says; the templates only loop and format.
The PDF renderer fetches nothing but inline ``data:`` URIs, so nothing in a feature name or a
data file can make rendering read a local file or reach the network.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup, escape
from prefect import task

from tasks.core import charts
from tasks.core.result import ImportanceResult, json_ready
from tasks.methods.table import METHODS, reference, result_titles, title_of
from tasks.registry.base import is_remote
from tasks.registry.versions import ModelVersion
from tasks.report.approval import Approved, SinceApproval, since_approval
from tasks.report.evidence import dominant_clusters, not_assessed, warning_evidence
from tasks.report.document import MethodEntry, ModelIdentity, ResultsDocument, RunEntry, TestRows, WarningEntry
from tasks.report.history import MATERIAL_SHARE
from tasks.report.history import history as drift_history
from tasks.report.signing import (
    Signer,
    SigningKey,
    certify_pdf,
    check_key,
    covered_lines,
    signature_boxes,
    signing_key_from_env,
    signoff_context,
)
from tasks.report.verdict import Comparison
from tasks.subject.clusters import UnitRecords

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"  # the top-level templates/ folder
SHOWN_RANKS = 25  # the rankings table shows a feature when any method ranks it this high; the rest are summarised
SHOWN_MEMBERS = 12  # a correlated cluster lists this many members by name
LIBRARIES = ("featureaudit", "tensorflow-cpu", "keras", "numpy", "pandas", "shap", "prefect", "weasyprint", "jinja2")


@dataclass(frozen=True)
class RunInfo:
    """Who, when and how: the identity of one audit run."""

    run_id: str
    started: datetime
    seed: int
    flow_run_id: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    loaded: dict[str, Any] | None = None  # tasks.subject.loaded.Loaded.to_dict(): inputs, audited output, loading notes
    reused: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> the run its stored result came from


def build_context(
    version: ModelVersion,
    results: list[ImportanceResult],
    comparison: Comparison,
    run: RunInfo,
    history: list[dict[str, Any]] | None = None,
    since: SinceApproval | None = None,
    signer: Signer | None = None,
) -> dict[str, Any]:
    """Everything the report shows, decided here; the templates only loop and format.

    ``since`` is what changed since the model's last approved report (:func:`tasks.report.approval.since_approval`).
    """
    usable = [r for r in results if r.ok]
    weight = next((r for r in usable if r.method == reference("weight-based")), None)
    behaviours = [r for r in usable if r.kind == "behavioural" and weight and r.features == weight.features]
    return {
        "model": {
            "name": version.name,
            "version": version.version,
            "task": version.task,
            "features": list(version.features),
            "sha256": version.sha256,
            "inputs": _input_rows((run.loaded or {}).get("inputs", [])),
            "output": (run.loaded or {}).get("output"),
            "notes": (run.loaded or {}).get("notes", []),
            "registry": registry_uri(version),
            "provenance": asdict(version.provenance) if version.provenance else None,
        },
        "run": {
            "id": run.run_id,
            "date": run.started.strftime("%Y-%m-%d %H:%M UTC"),
            "seed": run.seed,
            "flow_run_id": run.flow_run_id,
            "timings": run.timings,
            "libraries": library_versions(),
        },
        "verdict": comparison.verdict,
        "verdict_reason": comparison.reason,
        "verdicts": [{"method": m, "verdict": v} for m, v in comparison.verdicts.items()],
        "verdict_rule": comparison.rule,
        "status": run_status(results),
        "sampling": version.test_sampling()["note"],
        "reused": reused_line(run.reused, results, version),
        "warnings": [warning_evidence(f, results, comparison.evidence) for f in comparison.findings],
        "dominant_clusters": dominant_clusters(usable),
        "not_assessed": not_assessed(results, comparison, version.units, image=version.image_shape is not None),
        "summary": _summary(version, comparison, results),
        "evidence": [{"method": e.method, "summary": e.summary(), "test": e.test}
                     for e in comparison.evidence],
        "weight_stability": comparison.weight_stability,
        "model_fit": comparison.fit.sentence() if comparison.fit is not None else None,
        "interactions": comparison.interactions,
        "methods": [_method(r) for r in results],
        "rankings": _rankings(version.units, usable, comparison),
        "agreements": comparison.agreements,
        "consensus": comparison.consensus,
        "rank_chart": (charts.data_uri(charts.rank_lines(weight, behaviours, titles=result_titles()))
                       if weight and behaviours else None),
        "sections": _sections([r for r in results if r.ok or r.details is not None]),
        "section_lines": _section_lines(usable),
        "history": history,
        "material_share": f"{MATERIAL_SHARE:.0%}",
        "since_approval": _since_section(since),
        "signoff": signoff_context(signer, covered_lines(run.run_id, comparison.verdict,
                                                        [MethodEntry.from_result(r) for r in results])),
    }


def environment() -> Environment:
    """The one Jinja2 environment: autoescaping on, formatters as filters."""
    folders = [TEMPLATES, TEMPLATES / "sections",  # and the folder of a method that keeps its section elsewhere
               *(m.section.folder for m in METHODS.values() if m.section is not None and m.section.folder)]
    env = Environment(loader=ChoiceLoader([FileSystemLoader(f) for f in folders]), autoescape=True,
                      undefined=StrictUndefined)
    env.filters["num"] = format_number
    env.filters["pct"] = format_percent
    env.filters["title"] = title_of
    env.filters["breakable"] = breakable
    return env


def render_html(context: dict[str, Any]) -> str:
    return environment().get_template("report.html.j2").render(**context)


def render_pdf(html: str, attachments: dict[str, bytes] | None = None, *, certify: SigningKey | None = None) -> bytes:
    """An archival PDF/A-3u of ``html`` with ``attachments`` embedded; only inline ``data:`` resources are fetched.

    With ``certify`` the PDF is certified with that key, its signature fields over the sign-off block's signature
    cells (:func:`tasks.report.signing.certify_pdf`); it stays PDF/A-3u.
    """
    import io

    from weasyprint import HTML, Attachment
    from weasyprint.urls import URLFetcher

    fetcher = URLFetcher(allowed_protocols=("data",))
    files = [
        Attachment(file_obj=io.BytesIO(data), name=name, description=f"{name}: the report's machine-readable twin",
                   relationship="Data", url_fetcher=fetcher)
        for name, data in (attachments or {}).items()
    ]
    document = HTML(string=html, base_url=None, url_fetcher=fetcher).render(pdf_variant="pdf/a-3u")
    pdf = document.write_pdf(pdf_variant="pdf/a-3u", attachments=files)
    if certify is None:
        return pdf
    return certify_pdf(pdf, certify, signature_boxes(document))


def registry_uri(version: ModelVersion) -> str | None:
    """The registry a report names: an object store's URI or an MLflow tracking URI (no password); None for a folder."""
    return version.uri if version.provenance is not None or is_remote(version.uri or "") else None


def results_document(
    version: ModelVersion, results: list[ImportanceResult], comparison: Comparison, run: RunInfo
) -> ResultsDocument:
    """The machine-readable twin of the report: what results.json holds (:mod:`tasks.report.document`)."""
    agreement = json_ready(comparison.to_dict())
    loaded = json_ready(run.loaded or {})
    return ResultsDocument(
        model=ModelIdentity(name=version.name, version=version.version, task=version.task, sha256=dict(version.sha256),
                            paths={name: str(path) for name, path in version.resolved.items()},
                            inputs=tuple(loaded.get("inputs", [])), output=loaded.get("output"),
                            notes=tuple(loaded.get("notes", [])),
                            registry=registry_uri(version), provenance=version.provenance),
        run=RunEntry(id=run.run_id, started=run.started, seed=run.seed, flow_run_id=run.flow_run_id,
                     timings=json_ready(run.timings), reused=dict(run.reused) or None),
        methods={r.method: MethodEntry.from_result(r) for r in results},
        verdict=comparison.verdict,
        verdict_reason=comparison.reason,
        verdicts=dict(comparison.verdicts),
        verdict_rule=comparison.rule,
        status=run_status(results),
        test_rows=TestRows(**json_ready(version.test_sampling())),
        agreement=tuple(agreement["agreements"]),
        consensus=tuple(agreement["consensus"]),
        rank_evidence=agreement["rank_evidence"],
        weight_stability=agreement["weight_stability"],
        model_fit=agreement["model_fit"],
        interactions=agreement["interactions"],
        warnings=tuple(WarningEntry.from_finding(f) for f in comparison.findings),
    )


@task(name="render")
def render_task(
    version: ModelVersion,
    results: list[ImportanceResult],
    comparison: Comparison,
    run: RunInfo,
    previous: dict[str, ResultsDocument] | None = None,
    approved: Approved | None = None,
) -> dict[str, bytes]:
    """Render report.html, report.pdf (results.json embedded) and results.json into memory.

    ``previous`` holds the earlier runs to compare with (see :func:`tasks.report.history.previous_runs`), ``approved``
    the model's last approved report (:func:`tasks.report.approval.last_approved`; None: there is none).
    The PDF is certified when a signing key is configured (:mod:`tasks.report.signing`).
    """
    document = results_document(version, results, comparison, run)
    if previous:
        document = replace(document, history=tuple(drift_history(previous, document)))
    since = since_approval(approved, document)
    document = replace(document, since_approval=since.to_json())
    data = document.to_bytes()
    key = signing_key_from_env()  # checked at the flow's start; read once here, where it certifies
    signer = check_key(key) if key is not None else None
    html = render_html(build_context(version, results, comparison, run, document.history, since, signer=signer))
    return {
        "report.html": html.encode("utf-8"),
        "report.pdf": render_pdf(html, {"results.json": data}, certify=key),
        "results.json": data,
    }


def _since_section(since: SinceApproval | None) -> dict[str, Any] | None:
    """The section after the verdict: only what differs from the last approved report."""
    if since is None:
        return None
    changes = since.changed_features
    return {
        "found": since.found,
        "approved_run": since.approved_run,
        "approved_version": since.approved_version,
        "approved_by": since.approved_by,
        "approved_at": since.approved_at,
        "verdict_before": since.verdict_before,
        "verdict_now": since.verdict_now,
        "verdict_changed": since.verdict_changed,
        "new_warnings": list(since.new_warnings),
        "resolved_warnings": list(since.resolved_warnings),
        "changes": changes,
        "compared_methods": sorted(since.changes or {}),
        "differences": list(since.differences),
        "nothing_changed": not (since.verdict_changed or since.new_warnings or since.resolved_warnings or changes),
    }


def _input_rows(inputs: list[dict[str, Any]], limit: int = 8) -> list[dict[str, str]]:
    """How the model is fed, one line per input (only when it is not one plain matrix of every feature)."""
    if len(inputs) <= 1 and all(i["dtype"].startswith("float") and len(i["shape"]) <= 1 for i in inputs):
        return []
    rows = []
    for item in inputs:
        columns = item["columns"]
        shown = ", ".join(columns[:limit]) + (f", … ({len(columns) - limit} more)" if len(columns) > limit else "")
        rows.append({"name": item["name"], "shape": "(" + ", ".join(map(str, item["shape"])) + ")",
                     "dtype": item["dtype"], "columns": shown})
    return rows


def reused_line(reused: dict[str, dict[str, Any]], results: list[ImportanceResult],
                version: ModelVersion) -> str | None:
    """The first page's line on stored results this run reused (:mod:`tasks.methods.cache`); None when it computed all.

    "Unchanged since run <id> (<date>); results reused." when every method computed was reused from one run;
    otherwise the reused methods are named with the run each came from.
    """
    if not reused:
        return None
    ran = {m for m, entry in METHODS.items() for r in results if r.method in entry.titles and r.status != "skipped"}
    by_run: dict[str, list[str]] = {}
    for method in METHODS:
        if method in reused:
            by_run.setdefault(_origin(reused[method], version), []).append(method)
    every = ran <= set(reused)
    if every and len(by_run) == 1:
        return f"Unchanged since {next(iter(by_run))}; results reused."
    parts = "; ".join(f"{', '.join(methods)} from {origin}" for origin, methods in by_run.items())
    if every:
        return f"Unchanged since earlier runs; results reused: {parts}."
    return f"Results reused, their inputs unchanged: {parts}; the other methods were computed in this run."


def _origin(origin: dict[str, Any], version: ModelVersion) -> str:
    """'run <id> (<date>)', naming the model version when the result was stored for another with the same files."""
    try:
        date = datetime.fromisoformat(origin.get("started") or "").strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        date = "date unknown"
    other = (origin.get("model"), origin.get("version")) not in ((version.name, version.version), (None, None))
    return f"run {origin.get('run')}" + (f" of {origin['model']} {origin['version']}" if other else "") + f" ({date})"


def run_status(results: list[ImportanceResult]) -> str:
    """'partial' when any method failed (its section says why), else 'complete'."""
    return "partial" if any(r.status == "failed" for r in results) else "complete"


def format_number(value: float | str | None, digits: int = 3) -> str:
    """Compact numbers for tables: 3 significant digits, '—' for missing; a string value (a category) as it is."""
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}g}"


def breakable(name: object) -> Markup:
    """A feature name escaped, that may wrap after each '_' or '.' and nowhere else (``<wbr>``): 's5_band' wraps as
    's5_ / band', never as 's5_ban / d'."""
    return Markup(re.sub(r"([_.])", r"\1<wbr>", str(escape(str(name)))))


def format_percent(value: float | None) -> str:
    """A share as a whole percentage, '—' for missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{100 * value:.0f}%"


def library_versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _own_sections(results: list[ImportanceResult]):
    """(section, result) for each method in table order that has its own section and a result in the run."""
    for method in METHODS.values():
        result = next((r for r in results if r.method == method.name), None)
        if method.section is not None and result is not None:
            yield method.section, result


def _sections(results: list[ImportanceResult]) -> list[dict[str, Any]]:
    """Each method's own section (its entry's ``section``), in table order: its template and what it shows."""
    return [{"template": section.template, "data": data} for section, result in _own_sections(results)
            if (data := section.context(result)) is not None]


def _section_lines(results: list[ImportanceResult]) -> list[str]:
    """Each method's one line for the first page (its section's ``summary``), in table order."""
    return [line for section, result in _own_sections(results)
            if section.summary is not None and (line := section.summary(result)) is not None]


def _method(result: ImportanceResult) -> dict[str, Any]:
    chart = (charts.data_uri(charts.importance_bars(result, title=title_of(result.method), width=3.5))
             if result.ok else None)
    units = result.details if isinstance(result.details, UnitRecords) else None
    return {
        "name": result.method,
        "kind": result.kind,
        "status": result.status,
        "error": result.error,
        "metric": result.metric,
        "notes": list(result.notes),
        "n_samples": result.n_samples,
        "chart": chart,
        "groups": _most_important(units.groups if units is not None else []),
        "clusters": [replace(c, members=c.members[:SHOWN_MEMBERS],
                             member_importances=dict(list(c.member_importances.items())[:SHOWN_MEMBERS]))
                     for c in _most_important(units.clusters if units is not None else [])],
        "groups_hidden": max(0, len(units.groups) - SHOWN_RANKS) if units is not None else 0,
        "clusters_hidden": max(0, len(units.clusters) - SHOWN_RANKS) if units is not None else 0,
        "members": {c.name: len(c.members) for c in (units.clusters if units is not None else [])},
    }


def _most_important(records: list, shown: int = SHOWN_RANKS) -> list:
    """The ``shown`` most important records (groups or clusters), in their own order; all when that is every one."""
    if len(records) <= shown:
        return list(records)
    keep = set(np.argsort([-r.importance for r in records], kind="stable")[:shown].tolist())
    return [r for i, r in enumerate(records) if i in keep]


def _rankings(features: tuple[str, ...], results: list[ImportanceResult], comparison: Comparison,
              shown: int = SHOWN_RANKS) -> dict[str, Any]:
    """One row per feature that any method ranks in its top ``shown`` (so every feature a warning names): per
    method its rank (with the rank interval its verified pairs allow), importance and interval. The rest are
    summarised: how many, and the largest importance among them."""
    evidence = {e.method: e for e in comparison.evidence}
    index = {name: j for j, name in enumerate(features)}
    keep = np.zeros(len(features), dtype=bool)
    for r in results:  # by position, not rank: a thousand features tied at #6 are not all "top 25"
        first = np.argsort(-np.asarray(r.importances_mean, dtype=float), kind="stable")[:shown]
        keep[[index[r.features[j]] for j in first if r.features[j] in index]] = True
    positions = {r.method: {name: j for j, name in enumerate(r.features)} for r in results}
    rows = []
    for name in np.asarray(features, dtype=object)[keep]:
        cells = []
        for r in results:
            j = positions[r.method].get(name)
            if j is None:
                cells.append(None)  # e.g. not ablated within the budget
                continue
            e = evidence.get(r.method)
            span = (int(e.rank_low[j]), int(e.rank_high[j])) if e is not None else None
            cells.append({"importance": float(r.importances_mean[j]), "low": float(r.low[j]),
                          "high": float(r.high[j]), "rank": int(r.rank[j]), "interval": r.n_samples > 1,
                          "rank_span": span if span and span[0] != span[1] else None,
                          "negligible": bool(e.negligible[j]) if e is not None else False})
        rows.append({"feature": name, "cells": cells})
    key = next((i for i, r in enumerate(results) if r.method == reference("behavioural")), 0)
    rows.sort(key=lambda row: row["cells"][key]["rank"] if row["cells"] and row["cells"][key] else 0)
    hidden = len(features) - len(rows)
    largest = []
    on_show = {row["feature"] for row in rows}
    for r in results:  # the largest importance among the features not shown, beside the method's top one
        rest = np.array([name not in on_show for name in r.features], dtype=bool)
        if rest.any():
            largest.append({"method": r.method, "largest": float(np.max(r.importances_mean[rest])),
                            "top": float(np.max(r.importances_mean))})
    return {"methods": [r.method for r in results], "rows": rows, "hidden": hidden, "shown": shown,
            "hidden_largest": largest}


def _summary(version: ModelVersion, comparison: Comparison, results: list[ImportanceResult]) -> str:
    """The first page's one voice: what was measured, the verdict and its one-sentence reason."""
    done = [r.method for r in results if r.ok]
    not_done = [f"{r.method} ({r.status})" for r in results if not r.ok]
    text = (
        f"This report ranks the {len(version.units)} {version.unit_words} of {version.name} {version.version} "
        f"by {len(done)} methods."
    )
    if not_done:
        text += f" Not available in this run: {', '.join(not_done)}."
    return text
