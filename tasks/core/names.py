"""Names as other systems allow them: a model's name turned into a Prefect artifact key."""

from __future__ import annotations

import re


def slug(name: str) -> str:
    """A name as Prefect artifact keys allow it: lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "model"
