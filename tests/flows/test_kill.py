"""A run killed mid-way leaves no report folder behind, and earlier reports as they were."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_killed_run_leaves_no_half_report(linear_registry, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PYTHONPATH": str(REPO)}
    env.pop("PREFECT_API_URL", None)  # its own ephemeral server, not the tests' harness
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", "--registry", str(linear_registry), "--model", "linear",
         "--out", str(out), "--methods", "weights,permutation,ablation"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True,
    )
    deadline = time.monotonic() + 180
    seen = b""
    while time.monotonic() < deadline and b"Task run 'ablation" not in seen:
        line = process.stdout.readline()
        if not line:
            break
        seen += line
    try:
        assert b"Task run 'ablation" in seen, seen.decode(errors="replace")[-2000:]
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # mid-run: the methods are still computing
        process.wait(timeout=60)
    runs = [p for p in out.glob("linear/*/*") if not p.name.startswith(".")] if out.exists() else []
    assert runs == []
