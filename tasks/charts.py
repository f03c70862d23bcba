"""Charts for the report: functions that take data and return PNG bytes (no pyplot, no show)."""

from __future__ import annotations

import base64
import io

import numpy as np
from matplotlib.figure import Figure

from tasks.result import ImportanceResult

_BAR = "#3b6ea5"
_WEIGHT = "#b5651d"


def importance_bars(result: ImportanceResult) -> bytes:
    """Horizontal bars of mean importance with 95% interval whiskers, most important on top."""
    order = np.argsort(result.importances_mean)
    names = [result.features[i] for i in order]
    mean = result.importances_mean[order]
    err = np.vstack([mean - result.low[order], result.high[order] - mean]).clip(min=0)
    fig = Figure(figsize=(6.2, 0.32 * len(names) + 1.1), dpi=110)
    ax = fig.add_subplot()
    color = _WEIGHT if result.kind == "weight-based" else _BAR
    has_interval = bool(np.any(err > 0))
    ax.barh(range(len(names)), mean, xerr=err if has_interval else None, color=color, capsize=3, ecolor="#333")
    ax.set_yticks(range(len(names)), labels=names, fontsize=8)
    ax.axvline(0, color="#555", linewidth=0.8)
    label = f"importance ({result.metric} increase)" if result.metric else "importance"
    ax.set_xlabel(label, fontsize=8)
    ax.set_title(result.method + (" — 95% intervals" if has_interval else ""), fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    return _png(fig)


def rank_lines(weight: ImportanceResult, behaviours: list[ImportanceResult]) -> bytes:
    """One line per feature from its weight rank to its rank under each behavioural method."""
    columns = [weight, *behaviours]
    n = len(weight.features)
    fig = Figure(figsize=(6.2, 0.28 * n + 1.4), dpi=110)
    ax = fig.add_subplot()
    for j, name in enumerate(weight.features):
        ranks = [int(r.rank[j]) for r in columns]
        moved = max(ranks) - min(ranks) > n / 3
        ax.plot(range(len(columns)), ranks, marker="o", linewidth=1.6 if moved else 0.8,
                color="#c0392b" if moved else "#7f8c8d")
        ax.annotate(name, (0, ranks[0]), xytext=(-6, 0), textcoords="offset points", ha="right", va="center", fontsize=7)
    ax.set_xticks(range(len(columns)), labels=[r.method for r in columns], fontsize=8)
    ax.set_ylim(n + 0.5, 0.5)
    ax.set_ylabel("rank (1 = most important)", fontsize=8)
    ax.set_xlim(-0.9, len(columns) - 0.7)
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    return _png(fig)


def data_uri(png: bytes) -> str:
    """Inline an image so the report needs no file or network access."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
