"""The run folder: assembled in a hidden temporary folder, then renamed into place in one step.

A crash or a kill mid-run leaves no half report under ``<out>/<model>/<version>/``, and two
runs at once never share a folder: each has its own run id.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from datetime import datetime
from pathlib import Path

from prefect import task

from tasks.errors import DeliveryError


def new_run_id(started: datetime) -> str:
    """A sortable, unique run id: UTC timestamp plus a random suffix."""
    return f"{started:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def write_run_folder(out: str | Path, model: str, version: str, run_id: str, files: dict[str, bytes]) -> Path:
    """Write ``files`` to ``<out>/<model>/<version>/<run_id>/`` atomically; return that folder."""
    parent = Path(out) / model / version
    final = parent / run_id
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{run_id}.", dir=parent))
    except OSError as exc:
        raise DeliveryError(f"cannot create the report folder under {parent}: {exc.strerror}") from None
    try:
        for name, data in files.items():
            (staging / name).write_bytes(data)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


@task(name="write-report", retries=2, retry_delay_seconds=1)
def write_report_task(out: str, model: str, version: str, run_id: str, files: dict[str, bytes]) -> str:
    """Move the rendered files into their run folder."""
    return str(write_run_folder(out, model, version, run_id, files))
