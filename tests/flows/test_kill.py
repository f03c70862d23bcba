"""However a run ends — SIGKILL, SIGTERM, SIGINT — it leaves no report folder and no process of ours behind."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _ours(home: Path) -> list[int]:
    """Processes whose environment carries this test's PREFECT_HOME: the CLI and anything it started."""
    marker = f"PREFECT_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _start_mid_run(registry: Path, tmp_path: Path) -> tuple[subprocess.Popen, Path, Path]:
    """A run with retraining, stopped once its ablation jobs are under way (its task-run logs say so)."""
    out, home = tmp_path / "out", tmp_path / "prefect-home"
    quiet = ("TF_CPP_MIN_LOG_LEVEL", "PREFECT_API_URL", "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL")
    env = {k: v for k, v in os.environ.items() if k not in quiet}  # its own server; its own --verbose console
    env.update(PREFECT_HOME=str(home), PYTHONPATH=str(REPO))
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", "--registry", str(registry), "--model", "linear",
         "--out", str(out), "--methods", "weights,permutation,ablation", "--verbose"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True,
    )
    deadline = time.monotonic() + 180
    seen = b""
    while time.monotonic() < deadline and b"Task run 'ablation-job" not in seen:
        line = process.stdout.readline()
        if not line:
            break
        seen += line
    if b"Task run 'ablation-job" not in seen:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(seen.decode(errors="replace")[-2000:])
    return process, out, home


def _gone(home: Path, timeout: float = 60) -> list[int]:
    """Wait (a hang guard, not a speed claim) until no process of this run is left; those still there."""
    deadline = time.monotonic() + timeout
    while (left := _ours(home)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def _runs(out: Path) -> list[Path]:
    return list(out.glob("linear/*/*")) if out.exists() else []  # staging folders (.run-id.*) included


def test_sigkill_leaves_no_report_and_no_server(linear_registry, tmp_path):
    process, out, home = _start_mid_run(linear_registry, tmp_path)
    assert len(_ours(home)) >= 2  # the CLI and its temporary Prefect server
    process.kill()  # the CLI alone, not its process group: nothing of ours can react
    process.wait(timeout=60)
    assert _gone(home) == []
    assert _runs(out) == []


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_ends_the_run_at_once_with_one_line(linear_registry, tmp_path, stop):
    process, out, home = _start_mid_run(linear_registry, tmp_path)
    process.send_signal(stop)
    rest, _ = process.communicate(timeout=120)  # a hang guard: without the watcher it waited for the jobs
    assert process.returncode == 128 + stop
    last = rest.decode(errors="replace").strip().splitlines()[-1]
    assert last == f"featureaudit: error: stopped by {signal.Signals(stop).name}; no report written"
    assert "Traceback" not in rest.decode(errors="replace")
    assert _gone(home) == []
    assert _runs(out) == []
