"""An image version's splits: ``test.npz`` (and optionally ``train.npz``), arrays ``x`` of shape ``(n, H, W, C)``
and ``y`` of shape ``(n,)``, read without running anything a file holds and without a surprise in memory.

Every check comes before the pixels are read, from the archive's directory and each array's ``.npy`` header: the
members must be exactly ``x.npy`` and ``y.npy``; an array of Python objects (a pickle) is refused, and so is one
whose declared size exceeds ``max_bytes``; then the arrays are read with ``allow_pickle=False``, and NaN or infinite
pixels, a wrong rank or a row count that differs between ``x`` and ``y`` are refused. Each refusal is one line
naming the file and the array (:class:`tasks.core.errors.DataError`, exit 2).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.core.errors import DataError

ARRAYS = ("x", "y")
MAX_SPLIT_BYTES = 2 * 2**30  # the most one split's arrays may declare, together: 2 GiB


@dataclass(frozen=True)
class ArrayHeader:
    """What an ``.npy`` member declares before its data: its shape and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def read_headers(path: Path) -> dict[str, ArrayHeader]:
    """Each array's declared shape and dtype, from the archive's directory and the ``.npy`` headers alone."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path} is not an .npz archive ({exc})") from None
    with archive:
        members = sorted(archive.namelist())
        wanted = sorted(f"{name}.npy" for name in ARRAYS)
        if members != wanted:
            raise DataError(f"{path} holds {', '.join(m.removesuffix('.npy') for m in members) or 'no arrays'}; an "
                            f"image split holds exactly the arrays {' and '.join(ARRAYS)} (np.savez(path, x=..., "
                            "y=...))")
        headers = {}
        for name in ARRAYS:
            with archive.open(f"{name}.npy") as stream:
                try:
                    version = np.lib.format.read_magic(stream)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0  # 2.0 and 3.0 (an ASCII header reads the same)
                    shape, _, dtype = read(stream)
                except ValueError as exc:
                    raise DataError(f"{path}: array '{name}' has no readable .npy header ({exc})") from None
            if dtype.hasobject:
                raise DataError(f"{path}: array '{name}' holds Python objects (a pickle), which are never loaded; "
                                "save numbers: np.savez(path, x=x.astype('float32'), y=y)")
            headers[name] = ArrayHeader(name, tuple(int(d) for d in shape), dtype)
    return headers


def read_image_split(path: Path, *, max_bytes: int = MAX_SPLIT_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """``x`` (float32, ``(n, H, W, C)``) and ``y`` of an image split, checked as the module says."""
    headers = read_headers(path)
    declared = sum(h.nbytes for h in headers.values())
    if declared > max_bytes:
        raise DataError(f"{path}: its arrays declare {declared / 2**20:,.0f} MiB, over the {max_bytes / 2**20:,.0f} "
                        "MiB an image split may hold; sample the split down before publishing it")
    x, y = headers["x"], headers["y"]
    if len(x.shape) != 4:
        raise DataError(f"{path}: array 'x' has shape {x.shape}; an image split's x is (n, height, width, channels)")
    if len(y.shape) != 1 or y.shape[0] != x.shape[0]:
        raise DataError(f"{path}: array 'y' has shape {y.shape}; it needs one label per image, ({x.shape[0]},)")
    if not (np.issubdtype(x.dtype, np.number) and np.issubdtype(y.dtype, np.number)):
        raise DataError(f"{path}: arrays 'x' ({x.dtype}) and 'y' ({y.dtype}) must hold numbers")
    with np.load(path, allow_pickle=False) as data:
        pixels, labels = data["x"], data["y"]
    for name, values in (("x", pixels), ("y", labels)):
        bad = ~np.isfinite(values) if np.issubdtype(values.dtype, np.floating) else None
        if bad is not None and bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise DataError(f"{path}: array '{name}' holds NaN or infinite values, the first at index {where}")
    return pixels.astype(np.float32, copy=False), labels
