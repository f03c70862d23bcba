"""Nightly scheduling, and audits of new versions as they land, served against a real Prefect server.

``serve`` runs two deployments: the registry flow on a cron schedule (``featureaudit-registry/nightly``), and
the one-model flow (``featureaudit/on-new-version``) started by a deployment trigger on the event
``featureaudit.version.landed``. A watcher thread polls the registry every ``watch_interval`` seconds
(:mod:`tasks.registry.watch` decides, debounced, which versions are new) and emits that event once per new version;
the triggered deployment runs one audit at a time, later ones queued.

Prefect does not schedule on its ephemeral server, so when ``PREFECT_API_URL`` is unset this
starts ``prefect server start`` (SQLite under ``PREFECT_HOME``) on 127.0.0.1, or reuses one
already answering there, and points the process at it. With ``PREFECT_API_URL`` set, that
server is used as it is.
"""

from __future__ import annotations

import contextvars
import logging
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flows.lifecycle import tied_popen
from tasks.core.errors import FeatureAuditError
from tasks.core.options import DEFAULT_APPROVAL_TIMEOUT_S, DEFAULT_CRON, DEFAULT_OUT
from tasks.methods.table import AuditOptions

DEPLOYMENT_NAME = "nightly"
WATCH_DEPLOYMENT_NAME = "on-new-version"
#: The event a watcher emits for each new version; the triggered deployment expects it.
LANDED_EVENT = "featureaudit.version.landed"
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


def audit_parameters(
    *, registry: str, out: str = DEFAULT_OUT, email_to: list[str] | None = None,
    options: AuditOptions = AuditOptions(), imports: list[str] | None = None, await_approval: bool = False,
    approval_timeout: float | None = None,
) -> dict[str, Any]:
    """The parameters both deployments share, as the flows take them (the options as JSON, for the UI's form)."""

    return {"registry": registry, "out": out, "options": options.model_dump(mode="json"),
            "email_to": email_to or None, "imports": list(imports or []) or None,
            "await_approval": await_approval, "approval_timeout": approval_timeout or DEFAULT_APPROVAL_TIMEOUT_S}


def registry_deployment(
    *, registry: str, models: list[str] | None = None, cron: str = DEFAULT_CRON, timezone: str | None = None,
    name: str = DEPLOYMENT_NAME, **shared: Any,
):
    """The nightly deployment of the registry flow: one run per night, one subflow per model. ``shared`` are
    :func:`audit_parameters`' (with ``await_approval``, each model's run waits for a reviewer's decision)."""
    from prefect.schedules import Cron

    from flows.audit import audit_registry

    parameters = {**audit_parameters(registry=registry, **shared), "models": models or None}
    try:
        schedule = Cron(cron, timezone=timezone)
        return audit_registry.to_deployment(name=name, schedules=[schedule], parameters=parameters)
    except (ValueError, TypeError) as exc:
        raise FeatureAuditError(f"--cron {cron!r} / --timezone {timezone!r}: {exc}") from None


def landed_deployment(*, registry: str, **shared: Any):
    """The one-model audit, started by :data:`LANDED_EVENT` from this registry with the event's model and version
    (``shared``: :func:`audit_parameters`').

    One run at a time (the others queue), so a model is never audited twice at once by this deployment.
    """
    from datetime import timedelta

    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.events import DeploymentEventTrigger

    from flows.audit import audit_model

    trigger = DeploymentEventTrigger(
        name=f"new version in {registry}", expect={LANDED_EVENT},
        match={"prefect.resource.id": "featureaudit.model.*", "featureaudit.registry": registry},
        for_each={"prefect.resource.id"}, posture="Reactive", threshold=1, within=timedelta(0),
        parameters={"model": "{{ event.payload.model }}", "version": "{{ event.payload.version }}"},
    )
    return audit_model.to_deployment(
        name=WATCH_DEPLOYMENT_NAME, parameters=audit_parameters(registry=registry, **shared), triggers=[trigger],
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
        description=f"Audit a new version of a model in {registry} when it lands (the registry is polled).")


def serve(*deployments, port: int = DEFAULT_PORT, watch: dict[str, Any] | None = None) -> None:
    """Register ``deployments`` and run their flow runs here until interrupted; with ``watch``
    (``{registry, models, interval}``), also poll the registry and emit :data:`LANDED_EVENT` per new version."""
    from prefect import serve as prefect_serve

    with prefect_api(port) as url:
        logger.info("serving %s on the Prefect server at %s", ", ".join(d.name for d in deployments), url)
        stop = threading.Event()
        if watch:
            context = contextvars.copy_context()  # the thread emits to this server (Prefect's settings are contextvars)
            threading.Thread(target=context.run, args=(watch_registry, watch["registry"], watch["models"]),
                             kwargs={"interval": watch["interval"], "stop": stop}, name="featureaudit-watch",
                             daemon=True).start()
        try:
            prefect_serve(*deployments, print_starting_message=True)
        finally:
            stop.set()


def watch_registry(registry: str, models: list[str] | None, *, interval: float, stop: threading.Event,
                   emit=None) -> None:
    """Poll ``registry`` every ``interval`` seconds until ``stop`` is set; emit :data:`LANDED_EVENT` per new version.

    A registry or model that cannot be read is logged once per distinct reason and polled again next time.
    """
    from tasks.core.errors import FeatureAuditError
    from tasks.registry.versions import open_registry
    from tasks.registry.watch import Watcher

    emit = emit or emit_landed
    watcher, reported = Watcher(), set()
    if emit is emit_landed and not _wait_for_trigger(stop):
        return

    def warn_once(message: str) -> None:
        if message not in reported:
            reported.add(message)
            logger.warning("watching %s: %s", registry, message)

    while not stop.is_set():
        snapshots: dict[str, dict[str, str]] = {}
        try:
            backend = open_registry(registry)
            for name in models or backend.list_models():
                try:
                    snapshots[name] = backend.snapshot(name)
                except FeatureAuditError as exc:
                    warn_once(str(exc))
        except FeatureAuditError as exc:
            warn_once(str(exc))
        for name, version in watcher.observe(snapshots):
            logger.info("new version %s of %s: starting its audit", version, name)
            emit(registry, name, version)
        stop.wait(interval)


def _wait_for_trigger(stop: threading.Event, timeout: float = STARTUP_TIMEOUT_S) -> bool:
    """Wait until the triggered deployment and its automation are registered (an event before that starts nothing),
    so the watcher's baseline is taken only once a new version can start its audit."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            with get_client(sync_client=True) as client:
                deployment = client.read_deployment_by_name(f"featureaudit/{WATCH_DEPLOYMENT_NAME}")
                if client.read_resource_related_automations(f"prefect.deployment.{deployment.id}"):
                    return True
        except Exception:  # not registered yet: the server answers 404 until serve has applied it
            pass
        stop.wait(1.0)
    if not stop.is_set():
        logger.warning("the deployment featureaudit/%s was not registered within %.0f s; new versions are not "
                       "watched (the nightly run still audits them)", WATCH_DEPLOYMENT_NAME, timeout)
    return False


def emit_landed(registry: str, model: str, version: str) -> None:
    """The Prefect event that starts the triggered deployment's audit of ``model`` ``version``."""
    from prefect.events import emit_event

    emit_event(event=LANDED_EVENT,
               resource={"prefect.resource.id": f"featureaudit.model.{model}", "prefect.resource.name": model,
                         "featureaudit.registry": registry},
               payload={"model": model, "version": version, "registry": registry})


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
