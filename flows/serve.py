"""Nightly scheduling: serve the registry flow on a cron schedule against a real Prefect server.

Prefect does not schedule on its ephemeral server, so when ``PREFECT_API_URL`` is unset this
starts ``prefect server start`` (SQLite under ``PREFECT_HOME``) on 127.0.0.1, or reuses one
already answering there, and points the process at it. With ``PREFECT_API_URL`` set, that
server is used as it is.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flows.lifecycle import tied_popen
from tasks.errors import FeatureAuditError
from tasks.options import DEFAULT_CRON, DEFAULT_OUT, AuditOptions

DEPLOYMENT_NAME = "nightly"
DEFAULT_PORT = 4200
STARTUP_TIMEOUT_S = 180.0

logger = logging.getLogger("featureaudit.serve")


def server_is_up(api_url: str, timeout: float = 2.0) -> bool:
    """Whether a Prefect API answers its health check at ``api_url`` (``http://host:port/api``)."""
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def prefect_api(port: int = DEFAULT_PORT, *, timeout: float = STARTUP_TIMEOUT_S) -> Iterator[str]:
    """The Prefect API to schedule on: ``PREFECT_API_URL`` if set, else a local server started (or reused) here.

    A server started here is stopped when the block ends; one found already running is left alone.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    configured = os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()
    if configured:
        yield configured
        return
    url = f"http://127.0.0.1:{port}/api"
    if server_is_up(url):
        logger.info("reusing the Prefect server at %s", url)
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
        return
    process = _start_server(port, url, timeout)
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def registry_deployment(
    *, registry: str, models: list[str] | None = None, cron: str = DEFAULT_CRON, timezone: str | None = None,
    out: str = DEFAULT_OUT, email_to: list[str] | None = None, options: AuditOptions = AuditOptions(),
    name: str = DEPLOYMENT_NAME, imports: list[str] | None = None,
):
    """The nightly deployment of the registry flow: one run per night, one subflow per model."""
    from prefect.schedules import Cron

    from flows.audit import audit_registry

    parameters: dict[str, Any] = {"registry": registry, "models": models or None, "out": out,
                                  "options": options.model_dump(mode="json"),
                                  "email_to": email_to or None, "imports": list(imports or []) or None}
    try:
        schedule = Cron(cron, timezone=timezone)
        return audit_registry.to_deployment(name=name, schedules=[schedule], parameters=parameters)
    except (ValueError, TypeError) as exc:
        raise FeatureAuditError(f"--cron {cron!r} / --timezone {timezone!r}: {exc}") from None


def serve(deployment, *, port: int = DEFAULT_PORT) -> None:
    """Register ``deployment`` and run its scheduled flow runs here until interrupted."""
    from prefect import serve as prefect_serve

    with prefect_api(port) as url:
        logger.info("serving %s on the Prefect server at %s", deployment.name, url)
        prefect_serve(deployment, print_starting_message=True)


def _start_server(port: int, url: str, timeout: float) -> subprocess.Popen:
    from prefect.settings import PREFECT_HOME

    home = Path(PREFECT_HOME.value())
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "featureaudit-server.log"
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    with log_path.open("ab") as log:
        process = tied_popen(  # the kernel kills it with us, even on kill -9 (flows/lifecycle.py)
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server_is_up(url):
            logger.info("started a Prefect server at %s (SQLite under %s, log %s)", url, home, log_path)
            return process
        if process.poll() is not None:
            break
        time.sleep(0.5)
    process.kill()
    raise FeatureAuditError(f"the local Prefect server did not start on 127.0.0.1:{port} within {timeout:.0f} s; "
                            f"see {log_path}, or set PREFECT_API_URL to an existing server")
