from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import pytest

from tasks.output import new_run_id, write_run_folder


def test_two_runs_of_the_same_model_at_once_get_two_folders(tmp_path):
    started = datetime(2026, 1, 1, 2, 0, tzinfo=timezone.utc)  # the same second for both
    payloads = [{"report.pdf": bytes([i]) * 100_000, "results.json": b"{}"} for i in range(2)]
    with ThreadPoolExecutor(2) as pool:
        folders = list(pool.map(lambda files: write_run_folder(tmp_path, "m", "v1", new_run_id(started), files), payloads))
    assert folders[0] != folders[1] and all(f.parent == tmp_path / "m" / "v1" for f in folders)
    for folder, files in zip(folders, payloads):
        assert (folder / "report.pdf").read_bytes() == files["report.pdf"]
    assert sorted(p.name for p in (tmp_path / "m" / "v1").iterdir()) == sorted(f.name for f in folders)


def test_a_failure_while_writing_leaves_no_folder_and_no_staging(tmp_path):
    earlier = write_run_folder(tmp_path, "m", "v1", "earlier", {"report.pdf": b"old"})
    with pytest.raises(TypeError):
        write_run_folder(tmp_path, "m", "v1", "broken", {"report.pdf": b"new", "results.json": object()})
    assert [p.name for p in (tmp_path / "m" / "v1").iterdir()] == ["earlier"]
    assert (earlier / "report.pdf").read_bytes() == b"old"
