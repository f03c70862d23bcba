"""Names as other systems allow them (a model's name as a Prefect artifact key), and as a sentence lists them."""

from __future__ import annotations

import re


def slug(name: str) -> str:
    """A name as Prefect artifact keys allow it: lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "model"


def listed(names, limit: int = 6) -> str:
    """Names quoted for a sentence, the first ``limit`` of them: "'a', 'b' and 'c'", "'a', 'b' and 1,204 more"."""
    names = tuple(names)
    quoted = [f"'{n}'" for n in names[:limit]]
    if len(names) > limit:
        return ", ".join(quoted) + f" and {len(names) - limit:,} more"
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]
