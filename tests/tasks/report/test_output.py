import os
import re
import shutil
import stat
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import pytest

from tasks.core.errors import StorageError
from tasks.report.output import check_output, new_run_id, write_run_folder


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


@pytest.mark.parametrize(("umask", "folder_mode", "file_mode"), [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_the_run_folder_and_its_files_follow_the_umask(tmp_path, umask, folder_mode, file_mode):
    previous = os.umask(umask)
    try:
        folder = write_run_folder(tmp_path, "m", "v1", "run", {"report.pdf": b"pdf", "results.json": b"{}"})
    finally:
        os.umask(previous)
    assert stat.S_IMODE(folder.stat().st_mode) == folder_mode
    for name in ("report.pdf", "results.json"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == file_mode
    for created in (tmp_path / "m", tmp_path / "m" / "v1"):
        assert stat.S_IMODE(created.stat().st_mode) == folder_mode


def test_a_failed_write_removes_the_model_and_version_folders_it_created(tmp_path):
    bad = {"report.pdf": b"pdf", "missing-folder/results.json": b"{}"}  # the OS refuses the second file
    message = f"cannot write the report folder {tmp_path / 'm' / 'v1' / 'run'}: No such file or directory"
    with pytest.raises(StorageError, match=re.escape(message)) as info:
        write_run_folder(tmp_path, "m", "v1", "run", bad)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []  # neither m/ nor m/v1/ is left behind


def test_a_failed_write_keeps_the_folders_that_were_there_before(tmp_path):
    earlier = write_run_folder(tmp_path, "m", "v1", "earlier", {"report.pdf": b"old"})
    with pytest.raises(StorageError):
        write_run_folder(tmp_path, "m", "v2", "run", {"missing-folder/results.json": b"{}"})
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "m", "m/v1", "m/v1/earlier", "m/v1/earlier/report.pdf"]
    assert (earlier / "report.pdf").read_bytes() == b"old"


def test_an_output_folder_under_a_regular_file_is_a_storage_error(tmp_path):
    (tmp_path / "out").write_text("not a folder")
    with pytest.raises(StorageError, match=re.escape(f"cannot create the report folder under {tmp_path / 'out' / 'm' / 'v1'}")):
        write_run_folder(tmp_path / "out", "m", "v1", "run", {"report.pdf": b"pdf"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (tmp_path / "out").is_file()


def test_check_output_accepts_a_writable_folder_and_one_yet_to_be_created(tmp_path):
    assert check_output(tmp_path) == tmp_path
    assert check_output(tmp_path / "reports" / "nightly") == tmp_path
    assert list(tmp_path.iterdir()) == []  # the probe file is gone, nothing is created


def test_check_output_refuses_a_folder_whose_parent_is_a_regular_file(tmp_path):
    (tmp_path / "file").write_text("")
    message = f"output folder {tmp_path / 'file' / 'reports'} cannot be created: {tmp_path / 'file'} is a file, not a folder"
    with pytest.raises(StorageError, match=re.escape(message)) as info:
        check_output(tmp_path / "file" / "reports")
    assert "\n" not in str(info.value)


def test_check_output_refuses_a_disk_without_room_for_the_report(tmp_path):
    too_much = shutil.disk_usage(tmp_path).total + 1
    with pytest.raises(StorageError, match=re.escape(f"output folder {tmp_path} has ") + ".* MiB free, a report needs about") as info:
        check_output(tmp_path / "reports", expected_bytes=too_much)
    assert "\n" not in str(info.value) and "choose another --out" in str(info.value)
