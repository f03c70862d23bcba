"""How fast ``featureaudit run`` refuses a bad option value, against what the refusal cost before it read
``flows/options.json``: importing the table of methods (and with it Prefect, SciPy, pandas and matplotlib) to build
the flags.

Each is a fresh process, timed from start to exit, 5 times (``--full``: 20); the medians are compared side by side
in one run. The refused command: ``featureaudit run --registry nowhere --model m --repeats 0``.

Last line: ``refused in A s; importing the table alone: B s; ratio = B/A``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFUSE = [sys.executable, "-c", "import sys; from flows.cli import main; sys.exit(main(sys.argv[1:]))",
          "run", "--registry", "nowhere", "--model", "m", "--repeats", "0"]
IMPORT = [sys.executable, "-c", "import tasks.methods.table"]


def seconds(command: list[str], expected: int) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    took = time.perf_counter() - start
    if done.returncode != expected:
        raise SystemExit(f"{' '.join(command[3:]) or command[-1]}: exit {done.returncode}: {done.stderr.strip()}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="20 runs of each instead of 5")
    runs = 20 if parser.parse_args().full else 5
    refuse, load = [], []
    for _ in range(runs):  # interleaved, so that a busy moment weighs on both
        refuse.append(seconds(REFUSE, 2))
        load.append(seconds(IMPORT, 0))
    a, b = statistics.median(refuse), statistics.median(load)
    print(f"refused: {', '.join(f'{x:.2f}' for x in refuse)} s; table import: {', '.join(f'{x:.2f}' for x in load)} s")
    print(f"refused in {a:.2f} s; importing the table alone: {b:.2f} s; ratio = {b / a:.1f}")


if __name__ == "__main__":
    main()
