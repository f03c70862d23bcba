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


def image_split_shape(test: Path, train: Path | None) -> tuple[tuple[int, int, int], int]:
    """The images' ``(height, width, channels)`` and the test split's rows, from the headers alone; a train split
    must hold images of the same shape."""
    shape, rows = _shape(test)
    if train is not None and _shape(train)[0] != shape:
        raise DataError(f"{train}: its images are {_shape(train)[0]}, but {test.name}'s are {shape} "
                        "(height, width, channels); export both splits from the same images")
    return shape, rows


def _shape(path: Path) -> tuple[tuple[int, int, int], int]:
    x = read_headers(path)["x"]
    if len(x.shape) != 4:
        raise DataError(f"{path}: array 'x' has shape {x.shape}; an image split's x is (n, height, width, channels)")
    return (x.shape[1], x.shape[2], x.shape[3]), x.shape[0]


def pixel_names(shape: tuple[int, int, int]) -> tuple[str, ...]:
    """One name per value of an image, in C order: ``px<row>_<column>_<channel>``, row 0 at the top."""
    height, width, channels = shape
    return tuple(f"px{r}_{c}_{k}" for r in range(height) for c in range(width) for k in range(channels))


def default_grid(shape: tuple[int, int, int]) -> tuple[int, int]:
    """4×4 patches, or 8×8 for images of at least 32 pixels a side; never more patches than pixels."""
    side = 8 if min(shape[:2]) >= 32 else 4
    return min(side, shape[0]), min(side, shape[1])


def check_patch_grid(grid: tuple[int, int] | None, shape: tuple[int, int, int], manifest: Path) -> None:
    """A grid finer than the image (more patch rows than pixel rows) is refused, naming the manifest."""
    if grid is not None and (grid[0] > shape[0] or grid[1] > shape[1]):
        raise DataError(f"{manifest}: 'patch_grid' {list(grid)} is finer than the images, {shape[0]}×{shape[1]} "
                        "pixels; use at most one patch per pixel")


def patch_names(shape: tuple[int, int, int], grid: tuple[int, int] | None = None) -> tuple[str, ...]:
    """The patches' names, ``r<row>c<column>``, row by row from the top left."""
    rows, cols = grid or default_grid(shape)
    return tuple(f"r{i}c{j}" for i in range(rows) for j in range(cols))


def patch_units(shape: tuple[int, int, int], grid: tuple[int, int] | None = None) -> dict[str, list[int]]:
    """The patches of a grid over an image as importance units: ``r<row>c<column>`` (row 0 at the top) -> the
    positions of its pixels' values in the flattened image (C order, every channel). Rows and columns of pixels
    are split as evenly as they divide; together the patches hold every value once."""
    height, width, channels = shape
    rows, cols = grid or default_grid(shape)
    row_edges = np.linspace(0, height, rows + 1).round().astype(int)
    col_edges = np.linspace(0, width, cols + 1).round().astype(int)
    index = np.arange(height * width * channels).reshape(shape)
    cells = [index[row_edges[i]:row_edges[i + 1], col_edges[j]:col_edges[j + 1], :].ravel().tolist()
             for i in range(rows) for j in range(cols)]
    return dict(zip(patch_names(shape, grid), cells))


def check_labels(y: np.ndarray, task: str, path: Path) -> None:
    """Labels the task can score: 0/1 for binary, class codes 0..K-1 for multiclass."""
    if task == "binary" and not np.isin(y, (0, 1)).all():
        raise DataError(f"{path}: array 'y' must hold 0/1 labels for a binary task")
    if task == "multiclass" and ((y < 0).any() or (y != np.round(y)).any()):
        raise DataError(f"{path}: array 'y' must hold class codes 0..K-1 for a multiclass task")
