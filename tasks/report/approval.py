"""Approvals: the reviewer's decision on a report, a hash-chained log of decisions, and what changed since the last
approved report.

The log is ``<out>/<model>/approvals.jsonl``, one JSON object per line (:class:`ApprovalEntry`): who decided
(``name``), when (``time``, UTC ISO 8601), ``decision`` (approve or reject), ``comment``, ``model``, ``version``,
``run_id``, ``report_sha256`` and ``report_bytes`` (of report.pdf as written, hashed before the run paused; a
signature appended later leaves those bytes intact: :func:`report_unchanged`), ``flow_run_id``, ``prev``
(the previous line's ``hash``; the first line's is 64 zeros) and ``hash``: the sha256 of the line's other keys as
canonical JSON (sorted keys, no spaces, UTF-8). Editing, removing or reordering any line breaks the chain at the
next line or at the line itself. A line is appended under an exclusive ``fcntl`` lock on the log and synced to disk
before the lock is released. The run folder gets ``approval.json``, the same entry, so that removing the last line
is detected too (unless both are removed: the decision email carries the hash, to anchor it outside this folder).

:func:`verify_log` checks the chain, each report's sha256 against its file where the file is still present, and
that each run folder's ``approval.json`` is in the log. :func:`last_approved` is the newest approve entry of the
intact part of the log whose run folder still has its results.json and whose report still has the sha256 approved;
:func:`since_approval` compares that report with this run by :mod:`tasks.report.history`'s rules (no new thresholds).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from prefect import task
from prefect.input import RunInput
from pydantic import Field

from tasks.core.errors import ApprovalError, ResultsError
from tasks.registry.base import _atomic_write
from tasks.registry.versions import sha256_file
from tasks.report.document import ResultsDocument, read_results
from tasks.report.history import drift

LOG_NAME = "approvals.jsonl"
RECEIPT_NAME = "approval.json"
GENESIS = "0" * 64
#: How long a run waits for a decision by default: a week.
AWAITING = "Awaiting approval"
REJECTED = "Rejected"
AGAINST = "last approved report"

Decision = Literal["approve", "reject"]


class ApprovalInput(RunInput):
    """The reviewer's form in the Prefect UI: approve or reject this report, with a name and a comment."""

    decision: Decision = Field(description="approve or reject the report")
    name: str = Field(min_length=1, description="your name, as it should stand in the approval log")
    comment: str = Field(default="", description="why (kept in the log and sent with the decision)")


@dataclass(frozen=True, kw_only=True)
class ApprovalEntry:
    """One line of the approval log: a decision on one report, chained to the line before it."""

    name: str
    time: str
    decision: Decision
    comment: str
    model: str
    version: str
    run_id: str
    report_sha256: str
    flow_run_id: str | None
    prev: str
    hash: str
    report_bytes: int | None = None  # the report's length as decided on: signatures appended later keep this prefix

    def values(self) -> dict[str, Any]:
        """The line's keys (``report_bytes`` only where it was recorded)."""
        out = asdict(self)
        if out["report_bytes"] is None:
            del out["report_bytes"]
        return out

    def to_line(self) -> str:
        return json.dumps(self.values(), ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class Approved:
    """The report the current one is compared with: its approval and its results.json."""

    entry: ApprovalEntry
    document: ResultsDocument


@dataclass(frozen=True, kw_only=True)
class SinceApproval:
    """What changed between the last approved report of a model and this run (None fields: no approved report)."""

    approved_run: str | None = None
    approved_version: str | None = None
    approved_by: str | None = None
    approved_at: str | None = None
    verdict_before: str | None = None
    verdict_now: str = ""
    differences: tuple[str, ...] = ()  # seed, model and split sha256 (tasks.report.history.differences)
    changes: dict[str, tuple[dict[str, Any], ...]] | None = None  # per method: importance changes beyond noise
    new_warnings: tuple[str, ...] = ()
    resolved_warnings: tuple[str, ...] = ()

    @property
    def found(self) -> bool:
        return self.approved_run is not None

    @property
    def verdict_changed(self) -> bool:
        return self.found and self.verdict_before != self.verdict_now

    @property
    def changed_features(self) -> dict[str, tuple[dict[str, Any], ...]]:
        """Only the methods with a change, so a reviewer reads nothing else."""
        return {method: moves for method, moves in (self.changes or {}).items() if moves}

    def to_json(self) -> dict[str, Any]:
        """results.json's ``since_approval``."""
        out = asdict(self)
        out["changes"] = {k: list(v) for k, v in (self.changes or {}).items()}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SinceApproval:
        """The record results.json's ``since_approval`` holds."""
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        values["changes"] = {k: tuple(v) for k, v in (values.get("changes") or {}).items()}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


@dataclass(frozen=True)
class ApprovalStep:
    """What the paused run shows and records: which run's report, its sha256 and length as written, the markdown
    above the form."""

    model: str
    version: str
    run_id: str
    report_sha256: str
    report_bytes: int
    description: str

    @property
    def form(self) -> type[ApprovalInput]:
        return ApprovalInput.with_initial_data(description=self.description)

    @staticmethod
    def poll_interval(timeout: float) -> int:
        """Seconds between checks for a decision: 10, or less for a short timeout."""
        return max(1, min(10, round(timeout / 8)))


# --- the log ---------------------------------------------------------------------------------------------------


def log_path(out: str | Path, model: str) -> Path:
    return Path(out) / model / LOG_NAME


def entry_hash(values: dict[str, Any]) -> str:
    """sha256 of an entry's keys but ``hash``, as canonical JSON."""
    body = {k: v for k, v in values.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
                          .encode("utf-8")).hexdigest()


def report_unchanged(path: str | Path, entry: ApprovalEntry) -> bool:
    """Whether ``path`` is the report decided on: the same bytes, or those bytes with revisions appended after them.

    A reviewer signing the PDF (``featureaudit sign``) appends an incremental revision and leaves every byte before
    it as it was; whether the appended revisions change anything beyond signatures and form fields is what
    ``featureaudit verify`` checks.
    """
    path = Path(path)
    if entry.report_bytes is None:
        return sha256_file(path) == entry.report_sha256
    if path.stat().st_size < entry.report_bytes:
        return False
    digest, left = hashlib.sha256(), entry.report_bytes  # the bytes decided on, whatever was appended after them
    with path.open("rb") as handle:
        while left:
            block = handle.read(min(left, 1 << 20))
            digest.update(block)
            left -= len(block)
    return digest.hexdigest() == entry.report_sha256


def append_entry(out: str | Path, *, name: str, decision: Decision, comment: str, model: str, version: str,
                 run_id: str, report_sha256: str, flow_run_id: str | None = None,
                 time: datetime | None = None, report_bytes: int | None = None) -> ApprovalEntry:
    """Append a decision to ``<out>/<model>/approvals.jsonl`` under an exclusive lock, chained to the last line,
    synced to disk; write the same entry as the run folder's ``approval.json``; return it."""
    path = log_path(out, model)
    when = (time or datetime.now(timezone.utc)).astimezone(timezone.utc).isoformat(timespec="seconds")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.seek(0)
            lines = [line for line in handle.read().splitlines() if line.strip()]
            prev = _last_hash(lines, path)
            values = {"name": name, "time": when, "decision": decision, "comment": comment, "model": model,
                      "version": version, "run_id": run_id, "report_sha256": report_sha256,
                      "flow_run_id": flow_run_id, "prev": prev}
            if report_bytes is not None:
                values["report_bytes"] = report_bytes
            entry = ApprovalEntry(**values, hash=entry_hash(values))
            handle.seek(0, os.SEEK_END)
            handle.write(entry.to_line() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        receipt = Path(out) / model / version / run_id / RECEIPT_NAME
        if receipt.parent.is_dir():
            _atomic_write(receipt, json.dumps(entry.values(), ensure_ascii=False, indent=2) + "\n")
    except OSError as exc:
        raise ApprovalError(f"cannot append to the approval log {path}: {exc.strerror or exc}; "
                            "check that --out is writable") from None
    return entry


def read_log(path: str | Path) -> tuple[list[ApprovalEntry], list[str]]:
    """The log's entries in order up to the first broken line, and one line per problem found in the whole log."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return [], []
    except (OSError, UnicodeDecodeError) as exc:
        return [], [f"{path}: cannot be read ({type(exc).__name__})"]
    entries: list[ApprovalEntry] = []
    problems: list[str] = []
    prev = GENESIS
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        entry, problem = _parse(line, where)
        if entry is None:
            problems.append(problem)
            prev = None  # the next line cannot be checked against it
            continue
        if entry.hash != entry_hash(entry.values()):
            problems.append(f"{where}: its hash does not match its content: the line was edited")
        elif prev is not None and entry.prev != prev:
            problems.append(f"{where}: 'prev' is not the hash of the line before it: a line before it was removed, "
                            "inserted, reordered or edited")
        if not problems:
            entries.append(entry)
        prev = entry.hash
    return entries, problems


def verify_log(out: str | Path, model: str) -> tuple[list[ApprovalEntry], list[str]]:
    """Check one model's approval log: the chain, each approved report's sha256 where the report is still there,
    each run folder's approval.json against the log. Returns the entries read and one line per problem."""
    root = Path(out) / model
    path = root / LOG_NAME
    entries, problems = read_log(path)
    hashes = set()
    for entry in entries:
        hashes.add(entry.hash)
        report = root / entry.version / entry.run_id / "report.pdf"
        if report.is_file() and not report_unchanged(report, entry):
            decided = "approved" if entry.decision == "approve" else "rejected"
            problems.append(f"{report}: its sha256 is not the one {decided} by {entry.name} on {entry.time}: "
                            "the report was changed after the decision")
    if not problems:  # with an intact chain, every receipt must be one of its lines
        for receipt in sorted(root.glob(f"*/*/{RECEIPT_NAME}")):
            try:
                recorded = json.loads(receipt.read_text(encoding="utf-8")).get("hash")
            except (OSError, ValueError, AttributeError):
                recorded = None
            if recorded not in hashes:
                problems.append(f"{receipt}: this decision is not in {path}: a line was removed from the log")
    return entries, problems


def logged_models(out: str | Path) -> list[str]:
    """The models under ``out`` that have an approval log."""
    root = Path(out)
    return sorted(p.parent.name for p in root.glob(f"*/{LOG_NAME}")) if root.is_dir() else []


def last_approved(out: str | Path, model: str) -> Approved | None:
    """The newest approved report of ``model`` that can still be compared with: in the intact part of the log, its
    results.json readable and its report.pdf still the one approved."""
    root = Path(out) / model
    entries, _ = read_log(root / LOG_NAME)
    for entry in reversed(entries):
        if entry.decision != "approve":
            continue
        folder = root / entry.version / entry.run_id
        try:
            if not report_unchanged(folder / "report.pdf", entry):
                continue
            return Approved(entry, read_results(folder / "results.json"))
        except (OSError, ResultsError):
            continue
    return None


def since_approval(approved: Approved | None, current: ResultsDocument) -> SinceApproval:
    """What changed since the approved report, by the rules of :func:`tasks.report.history.drift`."""
    if approved is None:
        return SinceApproval(verdict_now=current.verdict)
    diff = drift(approved.document, current, AGAINST)
    return SinceApproval(
        approved_run=approved.entry.run_id, approved_version=approved.entry.version,
        approved_by=approved.entry.name, approved_at=approved.entry.time,
        verdict_before=approved.document.verdict, verdict_now=current.verdict,
        differences=tuple(diff["differences"]),
        changes={method: tuple(moves) for method, moves in diff["changes"].items()},
        new_warnings=tuple(diff["new_warnings"]), resolved_warnings=tuple(diff["resolved_warnings"]),
    )


# --- what the reviewer reads above the form ---------------------------------------------------------------------


def approval_description(document: ResultsDocument, report_sha256: str, since: SinceApproval | None) -> str:
    """Markdown shown above the approval form: the verdict, the warnings, what changed since the last approval.

    Everything that comes from the model's files (feature names, messages) is escaped: no links, images or HTML.
    """
    from tasks.report.artifacts import escape_markdown as md

    model, run = document.model, document.run
    lines = [f"## Approve the feature importance audit of {md(model.name)} {md(model.version)}", "",
             f"Run {md(run.id)}: report.pdf with sha256 `{report_sha256}`.", "",
             f"**Verdict on the weight-based ranking: {md(document.verdict)}**", "", md(document.verdict_reason), ""]
    if document.warnings:
        lines += ["### Warnings", ""] + [f"- {md(w.message)}" for w in document.warnings] + [""]
    else:
        lines += ["No warnings.", ""]
    if since is not None:
        lines += ["### Since the last approved report", ""] + [f"- {md(line)}" for line in since_lines(since)]
    return "\n".join(lines) + "\n"


def since_lines(since: SinceApproval) -> list[str]:
    """The section in plain sentences, for the description above the approval form."""
    if not since.found:
        return ["No approved report of this model yet."]
    out = [f"Compared with run {since.approved_run} (version {since.approved_version}), approved by "
           f"{since.approved_by} on {since.approved_at}."]
    out.append(f"Verdict: {since.verdict_before} → {since.verdict_now}." if since.verdict_changed
               else f"Verdict unchanged: {since.verdict_now}.")
    out += [f"New warning: {m}" for m in since.new_warnings]
    out += [f"Resolved warning: {m}" for m in since.resolved_warnings]
    for method, moves in since.changed_features.items():
        out.append(f"{method}: " + "; ".join(f"{c['feature']} (#{c['rank_before']} → #{c['rank_now']})" for c in moves))
    if since.differences:
        out.append("What differs: " + "; ".join(since.differences) + ".")
    if len(out) == 2 and not since.verdict_changed and not since.differences:
        out.append("Nothing else changed beyond noise.")
    return out


def leave_expired_pause(flow_run_id: str) -> None:
    """Put a run whose pause expired without a decision back to Running, so it can end in a state of its own.

    Prefect's server fails any run that leaves a pause after its timeout ("The flow was paused and never resumed");
    a forced Running state, as a resume would set, lets the flow end 'Awaiting approval' instead.
    """
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, Running(message="no decision before the approval timeout"), force=True)


# --- tasks -------------------------------------------------------------------------------------------------------


def approval_step(folder: str | Path) -> ApprovalStep:
    """Hash the report in ``folder`` and describe it for the reviewer from its results.json."""
    folder = Path(folder)
    document = read_results(folder / "results.json")
    since = SinceApproval.from_json(document.since_approval) if document.since_approval is not None else None
    report = folder / "report.pdf"
    digest = sha256_file(report)
    return ApprovalStep(model=document.model.name, version=document.model.version, run_id=document.run.id,
                        report_sha256=digest, report_bytes=report.stat().st_size,
                        description=approval_description(document, digest, since))


@task(name="prepare-approval")
def approval_step_task(folder: str) -> ApprovalStep:
    """Hash the written report and write what the reviewer reads above the approval form."""
    return approval_step(folder)


@task(name="last-approved")
def last_approved_task(out: str, model: str) -> Approved | None:
    """Find the newest approved report of this model that still matches its approval."""
    return last_approved(out, model)


@task(name="record-approval")
def record_approval_task(out: str, step: ApprovalStep, *, decision: Decision, name: str, comment: str,
                         flow_run_id: str | None) -> ApprovalEntry:
    """Append the reviewer's decision on the report ``step`` showed to the model's approval log (never retried: an
    append is not idempotent)."""
    return append_entry(out, name=name, decision=decision, comment=comment, model=step.model, version=step.version,
                        run_id=step.run_id, report_sha256=step.report_sha256, report_bytes=step.report_bytes,
                        flow_run_id=flow_run_id)


def _parse(line: str, where: str) -> tuple[ApprovalEntry | None, str]:
    try:
        values = json.loads(line)
    except json.JSONDecodeError:
        return None, f"{where}: not JSON: the line was edited or cut"
    names = {f.name for f in fields(ApprovalEntry)}
    if not isinstance(values, dict) or not names - {"report_bytes"} <= set(values) <= names:
        return None, f"{where}: not an approval entry (expected the keys {', '.join(sorted(names))})"
    if values["decision"] not in ("approve", "reject"):
        return None, f"{where}: decision {values['decision']!r} is neither approve nor reject"
    return ApprovalEntry(**values), ""


def _last_hash(lines: list[str], path: Path) -> str:
    """The hash the next line chains to: the last line's, which must itself be an entry."""
    if not lines:
        return GENESIS
    entry, problem = _parse(lines[-1], f"{path} line {len(lines)}")
    if entry is None:
        raise ApprovalError(f"{problem}; the decision was not recorded: repair the log "
                            "(featureaudit approvals shows every problem) and decide again")
    return entry.hash
