"""An image split is read only after its archive's directory and its arrays' headers pass: exactly x and y, no
pickled objects, a declared size within the budget; then no NaN pixels, and shapes that agree."""

import re
import zipfile

import numpy as np
import pytest

from tasks.core.errors import DataError
from tasks.registry.images import read_headers, read_image_split


def _save(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_a_good_split_reads_as_float32_images_and_labels(tmp_path):
    x = np.random.default_rng(0).random((6, 16, 16, 1))
    path = _save(tmp_path / "test.npz", x=x, y=np.arange(6) % 2)
    pixels, labels = read_image_split(path)
    assert pixels.dtype == np.float32 and pixels.shape == (6, 16, 16, 1)
    np.testing.assert_allclose(pixels, x, rtol=1e-6)
    assert labels.tolist() == [0, 1, 0, 1, 0, 1]


@pytest.mark.parametrize(("arrays", "message"), [
    ({"images": np.zeros((2, 4, 4, 1)), "y": np.zeros(2)}, "holds images, y; an image split holds exactly the arrays x "
                                                           "and y"),
    ({"x": np.zeros((2, 4, 4)), "y": np.zeros(2)}, "array 'x' has shape (2, 4, 4); an image split's x is (n, height, "
                                                   "width, channels)"),
    ({"x": np.zeros((2, 4, 4, 1)), "y": np.zeros(3)}, "array 'y' has shape (3,); it needs one label per image, (2,)"),
    ({"x": np.zeros((2, 4, 4, 1)), "y": np.array(["a", "b"])}, "must hold numbers"),
])
def test_wrong_arrays_are_one_line_naming_the_file(tmp_path, arrays, message):
    path = _save(tmp_path / "test.npz", **arrays)
    with pytest.raises(DataError, match=re.escape(f"{path}")) as refused:
        read_image_split(path)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_nan_pixels_are_refused_with_their_index(tmp_path):
    x = np.zeros((3, 4, 4, 1))
    x[2, 1, 3, 0] = np.nan
    path = _save(tmp_path / "test.npz", x=x, y=np.zeros(3))
    with pytest.raises(DataError, match=re.escape("array 'x' holds NaN or infinite values, the first at index "
                                                  "(2, 1, 3, 0)")):
        read_image_split(path)


def test_pickled_objects_are_refused_before_anything_is_unpickled(tmp_path):
    class Boom:
        def __reduce__(self):
            return (pytest.fail, ("unpickled",))

    x = np.empty(2, dtype=object)
    x[:] = [Boom(), Boom()]
    path = tmp_path / "test.npz"
    np.savez(path, x=x, y=np.zeros(2))
    with pytest.raises(DataError, match="array 'x' holds Python objects \\(a pickle\\), which are never loaded"):
        read_image_split(path)


def test_an_archive_declaring_more_than_the_budget_is_refused_from_its_headers(tmp_path):
    # a header that declares 10^6 images of 256×256×3 float64 (1.5 TB) over a few bytes of data: refused before any
    # read, from the header alone
    path = tmp_path / "test.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for name, shape in (("x", (1_000_000, 256, 256, 3)), ("y", (1_000_000,))):
            header = {"descr": "<f8", "fortran_order": False, "shape": shape}
            with archive.open(f"{name}.npy", "w") as stream:
                np.lib.format.write_array_header_1_0(stream, header)
                stream.write(b"\0" * 64)
    assert read_headers(path)["x"].nbytes == 1_000_000 * 256 * 256 * 3 * 8
    with pytest.raises(DataError, match=r"its arrays declare 1,500,008 MiB, over the 2,048 MiB an image split may "):
        read_image_split(path)


def test_a_file_that_is_no_archive_is_one_line(tmp_path):
    path = tmp_path / "test.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(DataError, match=re.escape(f"{path} is not an .npz archive")):
        read_image_split(path)
