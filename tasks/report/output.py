"""The run folder: checked before the run, assembled in a hidden folder, then renamed into place in one step.

A crash or a kill mid-run leaves no half report under ``<out>/<model>/<version>/``, and two
runs at once never share a folder: each has its own run id. The folder and its files get the
modes the umask gives (``0o777 & ~umask`` and ``0o666 & ~umask``), and a write that fails
leaves nothing behind, not even a ``<model>/`` or ``<version>/`` folder it created.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from datetime import datetime
from pathlib import Path

from prefect import task

from tasks.core.errors import StorageError, retry_unless_bad_input

#: Free space the output folder must have before a run starts. A report (PDF, HTML, results.json)
#: is a few MB; 64 MiB leaves room for wide models and for the staging copy.
DEFAULT_EXPECTED_BYTES = 64 * 2**20


def check_output(out: str | Path, *, expected_bytes: int = DEFAULT_EXPECTED_BYTES) -> Path:
    """Refuse an output folder that cannot take a report, before anything is computed; return the folder checked.

    The folder, or its nearest existing ancestor if it does not exist yet, must accept a new file
    (proved by writing one: permission bits say little to root, nothing about a read-only mount)
    and have at least ``expected_bytes`` free.
    """
    out = Path(out)
    folder = out.absolute()
    while not folder.exists():
        if folder.is_symlink():
            raise StorageError(f"output folder {out} cannot be created: {folder} is a broken symbolic link; "
                               "fix the link or choose another --out")
        folder = folder.parent
    if not folder.is_dir():
        raise StorageError(f"output folder {out} cannot be created: {folder} is a file, not a folder; "
                           "choose another --out")
    try:
        handle, probe = tempfile.mkstemp(prefix=".featureaudit-probe-", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise StorageError(f"output folder {folder} is not writable ({exc.strerror}); "
                           "fix its permissions or choose another --out") from None
    free = shutil.disk_usage(folder).free
    if free < expected_bytes:
        raise StorageError(f"output folder {folder} has {_mib(free)} free, a report needs about {_mib(expected_bytes)}; "
                           "free some space or choose another --out")
    return folder


@task(name="check-output")
def check_output_task(out: str) -> str:
    """Fail the run before any computation if the output folder cannot take the report."""
    return str(check_output(out))


def new_run_id(started: datetime) -> str:
    """A sortable, unique run id: UTC timestamp plus a random suffix."""
    return f"{started:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


# Folders being assembled and folders written by this process: what a stop signal must clean up or name
# (see stop_writing and flows/lifecycle.py).
_ASSEMBLING: dict[Path, list[Path]] = {}
_WRITTEN: list[Path] = []


def stop_writing() -> Path | None:
    """On a stop signal: remove every folder still being assembled (and parents made for it); the last one written."""
    for staging, created in list(_ASSEMBLING.items()):
        shutil.rmtree(staging, ignore_errors=True)
        _remove_empty(created)
    return _WRITTEN[-1] if _WRITTEN else None


def write_run_folder(out: str | Path, model: str, version: str, run_id: str, files: dict[str, bytes]) -> Path:
    """Write ``files`` to ``<out>/<model>/<version>/<run_id>/`` atomically; return that folder.

    An OS error (disk full, read-only, no permission) becomes a :class:`StorageError` naming the folder.
    """
    parent = Path(out) / model / version
    final = parent / run_id
    created = [p for p in (parent, parent.parent) if not p.exists()]  # removed again, if still empty, on failure
    # A plain mkdir, not mkdtemp (always 0o700): the kernel applies the umask, as for any folder.
    staging = parent / f".{run_id}.{uuid.uuid4().hex[:8]}"
    _ASSEMBLING[staging] = created
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
    except OSError as exc:
        _ASSEMBLING.pop(staging, None)
        _remove_empty(created)
        raise StorageError(f"cannot create the report folder under {parent}: {exc.strerror or exc}; "
                           "check --out (writable, free space)") from None
    try:
        for name, data in files.items():
            (staging / name).write_bytes(data)
        os.rename(staging, final)
        _WRITTEN.append(final)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_empty(created)
        if isinstance(exc, OSError):
            raise StorageError(f"cannot write the report folder {final}: {exc.strerror or exc}; "
                               "check --out (writable, free space)") from None
        raise
    finally:
        _ASSEMBLING.pop(staging, None)
    return final


@task(name="write-report", retries=2, retry_delay_seconds=1, retry_condition_fn=retry_unless_bad_input)
def write_report_task(out: str, model: str, version: str, run_id: str, files: dict[str, bytes]) -> str:
    """Move the rendered files into their run folder."""
    return str(write_run_folder(out, model, version, run_id, files))


def _remove_empty(folders: list[Path]) -> None:
    """Remove these folders, innermost first, where they are empty (another run may have filled them)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            pass


def _mib(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:,.0f} MiB"
