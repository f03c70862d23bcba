"""A real MLflow tracking server on loopback, and a small Keras model with splits to register in it.

The server runs from its own virtual environment (``<venv>/mlflow-server``, made by ``make test``; the full mlflow
package pins pyarrow < 26), with a SQLite backend store and a local artifact folder. ``FEATUREAUDIT_MLFLOW_SERVER``
may name another ``mlflow`` executable. Without one the tests are skipped, saying why, except under CI
(``CI=true``), where its absence fails them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SERVER_ENV = "FEATUREAUDIT_MLFLOW_SERVER"
#: A fresh SQLite database runs its migrations on first start: about 6 s here, allow much more.
STARTUP_TIMEOUT = 120
FEATURES = ("a", "b", "c", "noise")


def server_executable() -> Path:
    """The ``mlflow`` executable of the server's environment; skip (fail under CI) when there is none."""
    named = os.environ.get(SERVER_ENV, "").strip()
    path = Path(named) if named else Path(sys.prefix) / "mlflow-server" / "bin" / "mlflow"
    if not (path.is_file() and os.access(path, os.X_OK)):
        reason = (f"no MLflow tracking server at {path}: 'make test' installs it (or set {SERVER_ENV} to an mlflow "
                  "executable with the server)")
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@contextmanager
def mlflow_server(folder: Path) -> Iterator[str]:
    """Start ``mlflow server`` on 127.0.0.1 and a free port, SQLite and artifacts under ``folder``; yield its URI."""
    executable = server_executable()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    log = open(folder / "server.log", "wb")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTHON"))}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    process = subprocess.Popen(
        [str(executable), "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        _wait_healthy(uri, process, folder / "server.log")
        yield uri
    finally:
        from tests.helpers import stop_group

        stop_group(process)  # the server and the uvicorn worker it started
        log.close()


def _wait_healthy(uri: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"mlflow server at {uri} did not answer /health within {STARTUP_TIMEOUT} s: "
                       f"{log.read_text()[-2000:]}")


def frame(n_rows: int, seed: int, weights=(3.0, -2.0, 1.0, 0.0)) -> pd.DataFrame:
    """Independent features; y = w·x exactly (the last feature is noise)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_rows, len(FEATURES))).astype(np.float32)
    data = pd.DataFrame(X, columns=list(FEATURES))
    data["y"] = (X @ np.asarray(weights, np.float32)).astype(np.float32)
    return data


def mlp(seed: int, train: pd.DataFrame, epochs: int = 3):
    """A tiny MLP trained briefly on ``train``; seeded through its initializers, so two seeds differ."""
    import keras

    init = keras.initializers.GlorotUniform(seed=seed)
    model = keras.Sequential([keras.Input((len(FEATURES),), name="x"),
                              keras.layers.Dense(8, activation="relu", kernel_initializer=init),
                              keras.layers.Dense(1, kernel_initializer=init)])
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="mse")
    model.fit(train[list(FEATURES)].to_numpy(), train["y"].to_numpy(), epochs=epochs, batch_size=64, verbose=0,
              shuffle=False)
    return model


# Imported by each test module that uses it: each module gets a server and a registry of its own (the tests number
# the versions they publish from 1), stopped when the module ends.
@pytest.fixture(scope="module")
def mlflow_tracking(tmp_path_factory) -> Iterator[str]:
    """A real MLflow tracking server for one test module: its URI (the environment is left as it was)."""
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as uri:
        yield uri


@pytest.fixture(scope="session")
def model_files(tmp_path_factory) -> dict[str, Path]:
    """Two tiny trained models (seeds 0 and 1), a test and a train split, and a manifest, as files to publish."""
    import json

    folder = tmp_path_factory.mktemp("model-files")
    train, test = frame(400, seed=1), frame(300, seed=2)
    files = {"test": folder / "test.parquet", "train": folder / "train.parquet", "manifest": folder / "manifest.json"}
    test.to_parquet(files["test"], index=False)
    train.to_parquet(files["train"], index=False)
    files["manifest"].write_text(json.dumps({"target": "y", "task": "regression",
                                             "training": {"epochs": 2, "batch_size": 64}}))
    for seed in (0, 1):
        files[f"model{seed}"] = folder / f"model{seed}.keras"
        mlp(seed, train).save(files[f"model{seed}"])
    return files
