"""The ``featureaudit`` command line: ``run`` audits a registered model, ``demo`` builds a demo registry and audits it,
``approvals`` verifies and lists the approval log (exit 0 intact, 1 with one line per problem), ``publish`` puts a
model, its splits and manifest into a registry as a new version and prints its reference.

A successful run prints its output paths on stdout and next to nothing on stderr; ``--verbose`` shows
Prefect's INFO logs, TensorFlow's C++ log and library warnings. Every failure is one line on stderr,
``featureaudit: error: ...``, naming the file, folder or setting, and one of these exit statuses:

    0  success (a partial report, with a failed method, is a success with a warning line)
    1  the report was written but could not be delivered (email); verify: a signature or the report's results
       have a problem (one line each)
    2  bad input: registry, model, manifest, data or an option; nothing written
    3  storage: the output folder cannot take the report, or writing it failed (disk full, read-only)
    4  an unexpected error (a bug): ``--verbose`` adds the traceback
    5  with --await-approval: the report was written but rejected, or not decided on before --approval-timeout
  130  stopped by SIGINT, 143 stopped by SIGTERM: at once, the report folder being assembled removed
       (see flows/lifecycle.py)
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import sys
import traceback
import typing
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TextIO

from flows.lifecycle import stop_on_signals
from flows.option_spec import precheck
from tasks.core.errors import DeliveryError, FeatureAuditError, StorageError
from tasks.core.options import DEFAULT_APPROVAL_TIMEOUT_S, DEFAULT_CRON, DEFAULT_OUT, flag

EXIT_OK = 0
EXIT_NOT_DELIVERED = 1
EXIT_BAD_INPUT = 2
EXIT_STORAGE = 3
EXIT_UNEXPECTED = 4
EXIT_NOT_APPROVED = 5

#: Set before TensorFlow or Prefect are imported, unless the user has set them. Always: Prefect's
#: telemetry off (the server's heartbeat logs "Failed to send telemetry" offline, and its writes to
#: the SQLite database under PREFECT_HOME print "database is locked" tracebacks when runs share it;
#: DO_NOT_TRACK stops the client's analytics). Unless --verbose: TensorFlow's C++ log at errors only,
#: and Prefect's console handler at warnings (its run logs still reach the Prefect API at INFO).
ALWAYS_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING"}
#: Loggers whose warnings are about the machine, not the run (WeasyPrint: "Using fontTools instead of
#: HarfBuzz-Subset"; TensorFlow and absl: graph and retracing notices): errors only unless --verbose.
SERVER_STARTUP_S = 120  # how long the run waits for Prefect's temporary server to answer (Prefect's default is 20)
QUIET_LOGGERS = ("weasyprint", "fontTools", "tensorflow", "absl")
#: The --registry help of run, serve and publish.
REGISTRY_HELP = ("registry: a folder or s3://bucket/prefix laid out <registry>/<model>/<version>/, or mlflow (the "
                 "MLflow Model Registry at MLFLOW_TRACKING_URI) or mlflow+http://host:port")
#: The commands that take the audit options (flags generated from the table of methods).
AUDIT_COMMANDS = ("run", "serve", "demo")
#: Prefect's run loggers: on the console only with --verbose; they always reach the Prefect API (the UI).
RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # The environment is set before the parser is built: the audit commands' flags come from the table of methods,
    # whose modules import TensorFlow and Prefect.
    if argv and argv[0] in AUDIT_COMMANDS and (problem := precheck(argv[1:])) is not None:
        return _fail(problem, EXIT_BAD_INPUT)  # refused from flows/options.json, before the heavy imports
    added = set_environment(verbose="--verbose" in argv)
    try:
        args = _parse(_parser(audit=bool(argv) and argv[0] in AUDIT_COMMANDS), argv)
    except SystemExit:
        for name in added:
            os.environ.pop(name, None)
        raise
    verbose = bool(getattr(args, "verbose", False))
    stoppable = stop_on_signals(_stopped) if args.handler in (run, demo) else nullcontext()
    try:
        # sign, verify and approvals load no model: they skip importing TensorFlow and quiet their own libraries
        quiet = console(verbose=verbose) if args.handler not in (sign, verify, publish, approvals) else nullcontext()
        with stoppable, quiet, progress_bar(sys.stderr):
            return args.handler(args)
    except DeliveryError as exc:
        return _fail(str(exc), EXIT_NOT_DELIVERED)
    except StorageError as exc:
        return _fail(str(exc), EXIT_STORAGE)
    except FeatureAuditError as exc:
        return _fail(str(exc), EXIT_BAD_INPUT)
    except OSError as exc:
        return _fail(_describe_os_error(exc, getattr(args, "out", None)), EXIT_STORAGE)
    except Exception as exc:  # a bug: one line, and the traceback only when asked for
        if verbose:
            traceback.print_exc()
        hint = "" if verbose else " (run again with --verbose for the traceback)"
        return _fail(f"unexpected {type(exc).__name__}: {exc}{hint}", EXIT_UNEXPECTED)
    finally:
        for name in added:  # an in-process caller (a test, a notebook) keeps its own environment
            os.environ.pop(name, None)


def _stopped(received) -> str:
    """What a stop signal leaves: the report folder being assembled is removed; the line says what exists."""
    from tasks.report.output import stop_writing

    written = stop_writing()
    if written is None:
        return f"stopped by {received.name}; no report written"
    return f"stopped by {received.name} after writing {written}; not delivered"


def _fail(message: str, status: int) -> int:
    print(f"featureaudit: error: {' '.join(message.split())}", file=sys.stderr)
    return status


def _describe_os_error(exc: OSError, out: str | None) -> str:
    """One line for an OS error: the report's folder when the file is under it (or unknown), else the file."""
    reason = exc.strerror or str(exc)
    where = Path(exc.filename) if exc.filename else None
    if out is not None and (where is None or Path(out).absolute() in (where.absolute(), *where.absolute().parents)):
        return f"cannot write the report under {out}: {reason}"
    return f"{where}: {reason}" if where is not None else reason


def run(args: argparse.Namespace) -> int:
    from tasks.registry.base import is_alias
    from tasks.registry.versions import import_modules, resolve_version
    from tasks.report.deliver import check_delivery
    from tasks.report.output import check_output
    from tasks.report.signing import check_signing
    from tasks.subject.loaded import check_version
    from tasks.subject.modeling import memory_budget

    options = _options(args)
    if args.dask_address and not os.environ.get("PREFECT_API_URL"):
        raise FeatureAuditError(
            "--dask-address needs PREFECT_API_URL: point it (here and on every Dask worker) at a Prefect server the "
            "workers can reach, e.g. one started with 'prefect server start'; without it each worker starts a "
            "temporary server of its own and the run's task logs never reach it")
    imports = tuple(args.imports or ())
    import_modules(imports)  # the operator's modules register custom Keras objects before any model loads
    email_to = check_delivery(args.email_to) if args.email_to else None
    version = resolve_version(args.registry, args.model, args.version, max_test_rows=options.max_test_rows,
                              seed=options.seed, imports=imports)
    check_version(version)  # fail fast, before Prefect starts
    check_output(args.out)
    check_signing(secrets=False)  # a signing key that cannot sign fails now (a Secret block: at the flow's start)
    memory_budget()  # FEATUREAUDIT_MEMORY_MB, refused now rather than when a method starts
    approval = _approval(args)
    if approval["await_approval"] and not _prefect_api_url():
        raise FeatureAuditError(
            "--await-approval needs PREFECT_API_URL: point it at a Prefect server whose UI the reviewer can open "
            "(e.g. one started with 'prefect server start'); the temporary server started otherwise has no UI and "
            "stops with this process")
    asked = args.version if is_alias(args.version) else version.version  # an alias is resolved again, and recorded
    return _audit(args.registry, version.name, asked, args.out, options, dask_address=args.dask_address,
                  refresh=args.refresh, email_to=email_to, imports=list(imports), **approval)


def serve(args: argparse.Namespace) -> int:
    from flows.serve import landed_deployment, registry_deployment
    from flows.serve import serve as serve_deployments
    from tasks.core.errors import RegistryError
    from tasks.registry.base import is_remote
    from tasks.registry.versions import import_modules, list_models
    from tasks.report.deliver import check_delivery
    from tasks.report.signing import check_signing

    options = _options(args)
    if args.watch_interval < 0:
        raise FeatureAuditError(f"--watch-interval must be 0 (no watching) or a number of seconds, "
                                f"not {args.watch_interval:g}")
    import_modules(args.imports or ())  # a module that does not import fails now, not every night
    email_to = check_delivery(args.email_to) if args.email_to else None
    check_signing(secrets=False)  # a signing key that cannot sign fails at start, not every night
    present = list_models(args.registry)  # fail fast on names; each model's files are checked at each run
    missing = [name for name in args.model or [] if name not in present]
    if missing:
        raise RegistryError(f"registry {args.registry} has no model '{missing[0]}'; models present: {', '.join(present)}")
    registry = args.registry if is_remote(args.registry) else str(Path(args.registry).resolve())
    deployment = registry_deployment(registry=registry, models=args.model, cron=args.cron,
                                     timezone=args.timezone, out=str(Path(args.out).resolve()), email_to=email_to,
                                     options=options, name=args.name, imports=args.imports, **_approval(args))
    if not args.watch_interval:
        serve_deployments(deployment, port=args.port)
        return 0
    landed = landed_deployment(registry=registry, out=str(Path(args.out).resolve()), email_to=email_to,
                               options=options, imports=args.imports, **_approval(args))
    serve_deployments(deployment, landed, port=args.port,
                      watch={"registry": registry, "models": args.model, "interval": args.watch_interval})
    return 0


def _approval(args: argparse.Namespace) -> dict[str, bool | float]:
    """The flows' approval parameters from --await-approval and --approval-timeout; a timeout not above 0 is refused."""
    if args.approval_timeout <= 0:
        raise FeatureAuditError(f"--approval-timeout must be a number of seconds above 0, not {args.approval_timeout:g}")
    return {"await_approval": args.await_approval, "approval_timeout": args.approval_timeout}


def _prefect_api_url() -> str | None:
    """The Prefect API this process talks to: ``PREFECT_API_URL`` from the environment or the active profile."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def approvals(args: argparse.Namespace) -> int:
    """Verify each model's approval log (or one model's) and list its decisions; one line per problem on stderr."""
    from tasks.report.approval import LOG_NAME, logged_models, verify_log

    models = [args.model] if args.model else logged_models(args.out)
    if args.model and not (Path(args.out) / args.model / LOG_NAME).is_file():
        raise FeatureAuditError(f"{Path(args.out) / args.model / LOG_NAME}: no approval log for model '{args.model}' "
                                "under --out; check --out and --model (a log is written at the first decision)")
    if not models:
        raise FeatureAuditError(f"{args.out}: no approval log under this folder (<out>/<model>/{LOG_NAME}); "
                                "check --out (a log is written at the first decision)")
    problems = []
    for model in models:
        entries, found = verify_log(args.out, model)
        for e in entries:
            comment = f" \"{' '.join(e.comment.split())}\"" if e.comment else ""
            print(f"{e.time}  {e.decision:<7}  {e.model} {e.version} {e.run_id}  by {e.name}{comment}  "
                  f"report sha256 {e.report_sha256[:16]}…  hash {e.hash[:16]}…")
        problems += found
    for problem in problems:
        print(f"featureaudit: problem: {problem}", file=sys.stderr)
    return 1 if problems else EXIT_OK


def _options(args: argparse.Namespace):
    """The audit options the command line gave (tasks.methods.table.AuditOptions); one line naming a wrong one."""
    from tasks.methods.table import option_fields, parse_options

    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if getattr(args, "methods", None) else None
    if methods is not None and not methods:
        methods = [""]  # "--methods ''": refused as an unknown method
    return parse_options(**{name: getattr(args, name, None) for name in option_fields()} | {"methods": methods})


def demo(args: argparse.Namespace) -> int:
    """Build the demo registry (the tabular credit model and the digits image model) and audit both."""
    from tasks.demo import IMAGE_MODEL_NAME, MODEL_NAME, build_demo_registry, build_image_demo, demo_signing

    options = _options(args)
    registry = Path(args.out) / "demo-registry"
    build_demo_registry(registry)
    build_image_demo(registry)
    print(f"demo registry: {registry}")
    with demo_signing(Path(args.out) / "demo-signing"):  # a generated key, labelled as such in the report
        return max(_audit(str(registry), name, None, args.out, options) for name in (MODEL_NAME, IMAGE_MODEL_NAME))


def sign(args: argparse.Namespace) -> int:
    """Sign a role's field of a certified report in a new revision; in place (atomically) unless --out is given."""
    from tasks.report.signing import SigningError, key_from_files, sign_pdf

    password, password_label = None, "--password-env"
    if args.password_env:
        password_label = f"--password-env {args.password_env}"
        password = os.environ.get(args.password_env)
        if password is None:
            raise SigningError(f"{password_label}: the environment variable {args.password_env} is not set")
    key = key_from_files(args.key, args.cert, password, key_label="--key", cert_label="--cert",
                         password_label=password_label)
    signed = sign_pdf(_read_report(args.report), args.role, key, source=args.report, name=args.name,
                      decision=args.decision, comment=args.comment, timestamp_url=args.timestamp_url)
    target = Path(args.out or args.report)
    _replace_file(target, signed)
    print(target)
    return EXIT_OK


def verify(args: argparse.Namespace) -> int:
    """List a report's signatures on stdout; one line per problem on stderr, exit 1 when there is any."""
    from tasks.report.signing import SigningError, printable, verify_pdf

    trust = None
    if args.trust:
        trust = {}
        for path in args.trust:
            try:
                trust[path] = Path(path).read_bytes()
            except OSError as exc:
                raise SigningError(f"--trust {path}: cannot read it ({exc.strerror or exc})") from None
    beside = Path(args.results) if args.results else Path(args.report).parent / "results.json"
    results = None
    if args.results or beside.is_file():
        try:
            results = beside.read_bytes()
        except OSError as exc:
            raise SigningError(f"--results {beside}: cannot read it ({exc.strerror or exc})") from None
    outcome = verify_pdf(_read_report(args.report), source=args.report, trust=trust, results=results,
                         results_source=str(beside))
    for check in outcome.signatures:  # names, comments and field names come from the PDF: no control characters
        print(printable(check.line()))
    for role in outcome.unsigned:
        print(printable(f"{role}: not signed yet"))
    if results is not None and not any(str(beside) in problem for problem in outcome.problems):
        print(f"{beside}: the same as the results.json embedded in the report")
    for problem in outcome.problems:
        _fail(printable(problem), 1)
    return 1 if outcome.problems else EXIT_OK


def _read_report(path: str) -> bytes:
    from tasks.report.signing import SigningError

    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SigningError(f"{path}: cannot read it ({exc.strerror or exc}); give the path of a report.pdf") from None


def _replace_file(target: Path, data: bytes) -> None:
    """Write ``target`` through a temporary file beside it and a rename: readers see the old or the new file whole."""
    import tempfile

    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        if target.exists():
            os.chmod(temporary, target.stat().st_mode & 0o777)
        else:
            os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish(args: argparse.Namespace) -> int:
    """Publish a model version (tasks.registry.publish); print its reference, e.g. models:/credit/3."""
    from tasks.registry.publish import publish as publish_version

    published = publish_version(args.registry, args.model, model_file=Path(args.model_file), test=Path(args.test),
                                train=Path(args.train) if args.train else None,
                                manifest=Path(args.manifest) if args.manifest else None, version=args.version,
                                alias=args.alias)
    print(published.reference)
    return EXIT_OK


def _audit(
    registry: str, model: str, version: str | None, out: str, options, *, dask_address: str | None = None,
    refresh: bool = False,
    email_to: list[str] | None = None, imports: list[str] | None = None, await_approval: bool = False,
    approval_timeout: float | None = None,
) -> int:
    from flows.audit import with_runner
    from tasks.report.approval import AWAITING, REJECTED

    flow = with_runner(dask_address)
    start_prefect_api()
    state = flow(registry=registry, model=model, version=version, out=out, options=options, refresh=refresh,
                 email_to=email_to, imports=imports, await_approval=await_approval,
                 approval_timeout=approval_timeout or DEFAULT_APPROVAL_TIMEOUT_S, return_state=True)
    folder = Path(state.result())  # a failed run raises its error here
    for name in ("report.pdf", "report.html", "results.json"):
        print(folder / name)
    if state.name in (REJECTED, AWAITING):
        print(f"featureaudit: {state.name.lower()}: {state.message}", file=sys.stderr)
        return EXIT_NOT_APPROVED
    if state.name == "Partial":
        print(f"featureaudit: warning: {state.message}", file=sys.stderr)
    return EXIT_OK


def start_prefect_api() -> None:
    """Start Prefect's temporary server now, if no ``PREFECT_API_URL`` is set: one process at a time per PREFECT_HOME.

    Temporary servers starting at once on a new PREFECT_HOME race to create and migrate its SQLite
    database, and print tracebacks (alembic's "expected to match one row", "UNIQUE constraint
    failed") although the runs succeed; an exclusive lock on a file in PREFECT_HOME makes the second
    start wait for the first. The flow run then uses the server started here.
    """
    import fcntl

    from prefect.settings import (PREFECT_API_URL, PREFECT_HOME, PREFECT_SERVER_EPHEMERAL_ENABLED,
                                  PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return
    home = Path(PREFECT_HOME.value())
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".featureaudit-server-start.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed, or the process dies
        # Prefect waits 20 s by default, counting only its own sleeps; a busy 2-core machine can take longer
        timeout = max(SERVER_STARTUP_S, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
        _tied_server_class()().start(timeout=timeout)


def _tied_server_class():
    """Prefect's temporary server, started with the command Prefect 3.8.8 uses, but tied to this process.

    Prefect's own ``SubprocessASGIServer`` outlives a ``kill -9`` of its parent (about 250 MB each,
    with parent 1). This one is started by :func:`flows.lifecycle.tied_popen`, so the kernel kills it
    with us. Prefect's engine finds it as its own (the servers are one instance per port).
    """
    import prefect
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings

    from flows.lifecycle import tied_popen

    class TiedServer(SubprocessASGIServer):
        def _run_uvicorn_command(self):
            settings = get_current_settings().to_environment_variables(exclude_unset=True)
            return tied_popen(
                [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
                 "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
                 "--log-level", "error", "--lifespan", "on"],
                env={**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
                     "PREFECT__SERVER_FINAL": "1", **settings},
            )

    return TiedServer


def set_environment(*, verbose: bool = False) -> list[str]:
    """Settings that must be in the environment before TensorFlow or Prefect are imported; the user's own win.

    Returns the names it set, so an in-process caller can take them back (see ``main``).
    """
    added = []
    for name, value in {**ALWAYS_ENV, **({} if verbose else QUIET_ENV)}.items():
        if name not in os.environ:
            os.environ[name] = value
            added.append(name)
    return added


@contextmanager
def console(*, verbose: bool = False) -> Iterator[None]:
    """While the block runs, what reaches stderr: warnings and errors only, unless ``verbose``.

    Quiet: Prefect's flow and task run logs stay off the console (the Prefect API still gets them,
    and a failure or a partial report is told in one line by ``main``), its other loggers show
    warnings and up, library warnings about the machine are hidden, and so are Keras', TensorFlow's
    and shap's UserWarnings. Everything is put back when the block ends.
    """
    if verbose:
        import prefect.main  # noqa: F401  Prefect configures logging on import: before the run, as when quiet

        yield
        return
    _import_tensorflow_quietly()
    import prefect.main  # noqa: F401
    from prefect.logging.handlers import PrefectConsoleHandler

    consoles = [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
    runs = [logging.getLogger(name) for name in RUN_LOGGERS]
    machine = [logging.getLogger(name) for name in QUIET_LOGGERS]
    saved = ([h.level for h in consoles], [lg.propagate for lg in runs], [lg.level for lg in machine])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"(keras|tensorflow|shap)(\.|$)")
        for handler in consoles:
            handler.setLevel(max(handler.level, logging.WARNING))
        for logger in runs:
            logger.propagate = False
        for logger in machine:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for handler, level in zip(consoles, saved[0]):
                handler.setLevel(level)
            for logger, propagate in zip(runs, saved[1]):
                logger.propagate = propagate
            for logger, level in zip(machine, saved[2]):
                logger.setLevel(level)


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow with the process's stderr (file descriptor 2) pointed at /dev/null meanwhile.

    Its C++ libraries log while they load, before TF_CPP_MIN_LOG_LEVEL is read ("All log messages
    before absl::InitializeLog() is called are written to STDERR", "oneDNN custom operations are
    on"), and no setting reaches that; turning oneDNN off would change the numbers. A failed import
    still raises as usual.
    """
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class ProgressBar(logging.Handler):
    """A one-line bar on a terminal, redrawn from log records carrying ``progress``: {task, unit, done, total}."""

    def __init__(self, stream: TextIO, width: int = 30):
        super().__init__(logging.INFO)
        self.stream, self.width, self._open = stream, width, False

    def emit(self, record: logging.LogRecord) -> None:
        progress = getattr(record, "progress", None)
        if not isinstance(progress, dict):
            return
        done, total = int(progress["done"]), max(int(progress["total"]), 1)
        filled = self.width * done // total
        bar = "#" * filled + "-" * (self.width - filled)
        self._open = done < total
        line = f"\r\x1b[K{progress['task']} [{bar}] {done}/{total} {progress['unit']}"
        self.stream.write(line if self._open else line + "\n")
        self.stream.flush()

    def console_filter(self, record: logging.LogRecord) -> bool:
        """For the console handler: drop progress records (the bar shows them), end an open bar line before others."""
        if hasattr(record, "progress"):
            return False
        if self._open:
            self.stream.write("\n")
            self._open = False
        return True


@contextmanager
def progress_bar(stream: TextIO) -> Iterator[ProgressBar | None]:
    """While the block runs, show task progress as a bar on ``stream`` if it is a terminal."""
    if not stream.isatty():
        yield None
        return
    import prefect.main  # noqa: F401  Prefect configures logging on import, which drops handlers added earlier

    bar = ProgressBar(stream)
    runs, consoles = logging.getLogger("prefect.task_runs"), list(logging.getLogger().handlers)
    runs.addHandler(bar)
    for handler in consoles:
        handler.addFilter(bar.console_filter)
    try:
        yield bar
    finally:
        runs.removeHandler(bar)
        for handler in consoles:
            handler.removeFilter(bar.console_filter)


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``parser.parse_args(argv)``, but a flag the command does not take is named with that command's usage and the
    closest flag it does take ('did you mean --repeats?')."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        command = parser.commands[args.command]
        unknown = next((word for word in extra if word.startswith("-")), extra[0])
        flags = [option for action in command._actions for option in action.option_strings]
        close = difflib.get_close_matches(unknown.split("=", 1)[0], flags, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        command.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    return args


def _parser(*, audit: bool = True) -> argparse.ArgumentParser:
    """The command line; ``audit``: with the audit options' flags (their defaults import the table of methods)."""
    parser = argparse.ArgumentParser(prog="featureaudit", description="Audit the feature importance of Keras models.")
    commands = parser.add_subparsers(dest="command", required=True)

    p_run = commands.add_parser("run", help="audit the newest (or a given) version of a registered model")
    p_run.add_argument("--registry", required=True, help=REGISTRY_HELP)
    p_run.add_argument("--model", required=True, help="model name (a folder in the registry, or a registered model)")
    p_run.add_argument("--version", help="version folder, an MLflow version number, or an MLflow alias as @champion "
                                         "(default: the newest: under natural sort, or MLflow's highest number)")
    p_run.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    p_run.add_argument("--dask-address", help="run the tasks on an existing Dask cluster, e.g. tcp://host:8786")
    p_run.add_argument("--refresh", action="store_true",
                       help="compute every method again, even where the version and options are unchanged since a "
                            "stored result, and store the new results")
    _add_common(p_run, audit=audit)
    p_run.set_defaults(handler=run)

    p_serve = commands.add_parser("serve", help="audit the registry's models on a cron schedule, and each new "
                                                "version as it lands (Prefect deployments)")
    p_serve.add_argument("--registry", required=True, help=REGISTRY_HELP)
    p_serve.add_argument("--model", action="append", help="a model to audit (repeatable; default: every model)")
    p_serve.add_argument("--cron", default=DEFAULT_CRON, help=f"cron schedule (default: {DEFAULT_CRON}, nightly at 02:00)")
    p_serve.add_argument("--timezone", help="IANA time zone of the schedule, e.g. Europe/Berlin (default: UTC)")
    p_serve.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    p_serve.add_argument("--name", default="nightly", help="deployment name (default: nightly)")
    p_serve.add_argument("--watch-interval", type=float, default=60.0, metavar="SECONDS",
                         help="poll the registry this often and audit a new version when it lands; 0: only the "
                              "schedule (default: 60)")
    p_serve.add_argument("--port", type=int, default=4200,
                         help="port of the local Prefect server started when PREFECT_API_URL is unset (default: 4200)")
    _add_common(p_serve, audit=audit)
    p_serve.set_defaults(handler=serve)

    p_approvals = commands.add_parser("approvals", help="verify the approval log's hash chain and the approved "
                                      "reports' sha256, and list the decisions (exit 1 with one line per problem)")
    p_approvals.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    p_approvals.add_argument("--model", help="one model's log (default: every model with a log under --out)")
    p_approvals.set_defaults(handler=approvals)

    p_sign = commands.add_parser("sign", help="sign a role's field of a certified report (a new revision)")
    p_sign.add_argument("report", metavar="REPORT.pdf", help="a report certified when it was produced")
    p_sign.add_argument("--role", required=True, choices=("reviewed", "approved"), help="the field to sign")
    p_sign.add_argument("--key", required=True, help="PEM file of the signer's private key")
    p_sign.add_argument("--cert", required=True, help="PEM file of the signer's certificate (its chain may follow)")
    p_sign.add_argument("--password-env", metavar="NAME", help="environment variable holding the key's password")
    p_sign.add_argument("--name", help="the signer's name as recorded (default: the certificate's common name)")
    p_sign.add_argument("--decision", choices=("approve", "reject"), help="the decision, recorded in the signature")
    p_sign.add_argument("--comment", help="a comment, recorded in the signature")
    p_sign.add_argument("--timestamp-url", metavar="URL", help="an RFC 3161 timestamp authority to timestamp it")
    p_sign.add_argument("--out", metavar="SIGNED.pdf", help="write the signed report here (default: in place)")
    p_sign.set_defaults(handler=sign)

    p_verify = commands.add_parser("verify", help="list a report's signatures and check them and its results.json")
    p_verify.add_argument("report", metavar="REPORT.pdf", help="a report")
    p_verify.add_argument("--trust", action="append", metavar="CA.pem",
                          help="a CA certificate the signers must chain to (repeatable); without it trust is not checked")
    p_verify.add_argument("--results", metavar="results.json",
                          help="compare with this results.json (default: the one beside the report, if any)")
    p_verify.set_defaults(handler=verify)

    p_demo = commands.add_parser("demo", help="build a demo registry (a model with known drivers, and a small image "
                                               "model) and audit it")
    p_demo.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    if audit:
        _add_audit_options(p_demo, only=("seed",))
    _add_verbose(p_demo)
    p_demo.set_defaults(handler=demo)

    p_publish = commands.add_parser("publish", help="put a model, its splits and a manifest into a registry as a new "
                                    "version; prints the version's reference")
    p_publish.add_argument("--registry", required=True, help=REGISTRY_HELP)
    p_publish.add_argument("--model", required=True, help="model name")
    p_publish.add_argument("--version", help="version folder to create (default: the next vN); not for MLflow, which "
                                             "numbers its versions")
    p_publish.add_argument("--model-file", required=True, help="the model: model.keras (model.h5 for a folder or "
                                                               "object store)")
    p_publish.add_argument("--test", required=True, help="test split: .parquet or .csv")
    p_publish.add_argument("--train", help="training split: .parquet or .csv (optional; ablation retrains on it)")
    p_publish.add_argument("--manifest", help="manifest.json (default: the newest version's)")
    p_publish.add_argument("--alias", help="MLflow only: point this alias (e.g. champion) at the new version")
    p_publish.set_defaults(handler=publish)
    parser.commands = commands.choices  # each command's own parser, for its usage beside an unknown flag
    return parser


def _add_common(parser: argparse.ArgumentParser, *, audit: bool) -> None:
    """The audit options (when ``audit``: tasks.methods.table.AuditOptions) and delivery, the same for run and
    serve."""
    if audit:
        _add_audit_options(parser)
    parser.add_argument("--email-to", action="append", metavar="ADDRESS",
                        help="email the PDF to this address (repeatable); SMTP settings from FEATUREAUDIT_SMTP_*")
    parser.add_argument("--await-approval", action="store_true",
                        help="after writing the report, pause the run until a reviewer approves or rejects it in the "
                             "Prefect UI; the decision is appended to <out>/<model>/approvals.jsonl")
    parser.add_argument("--approval-timeout", type=float, default=DEFAULT_APPROVAL_TIMEOUT_S, metavar="SECONDS",
                        help="how long the run waits for a decision before ending 'Awaiting approval' (default: "
                             f"{DEFAULT_APPROVAL_TIMEOUT_S:.0f}, a week)")
    parser.add_argument("--import", dest="imports", action="append", metavar="MODULE",
                        help="import this module before loading models, to register the custom Keras objects they use "
                             "(@keras.saving.register_keras_serializable; repeatable)")
    _add_verbose(parser)


def _add_audit_options(parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    """One flag per audit option, generated from the run's options and each method's (``only``: just these)."""
    from tasks.methods.table import AuditOptions, option_fields

    defaults = AuditOptions()
    fields = option_fields()
    for name, info in sorted(fields.items(), key=lambda item: item[0] != "methods"):  # --methods first
        if only is not None and name not in only:
            continue
        if name == "methods":
            parser.add_argument("--methods", help=f"comma-separated methods (default: {','.join(defaults.methods)})")
            continue
        default = info.get_default(call_default_factory=True)
        kinds = [k for k in typing.get_args(info.annotation) if k is not type(None)] or [info.annotation]
        parser.add_argument(flag(name), dest=name, type=kinds[0] if kinds[0] in (int, float) else str,
                            metavar=flag(name)[2:].upper().replace("-", "_"),
                            help=info.description + ("" if default is None else f" (default: {default})"))


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help="show Prefect's INFO logs, TensorFlow's C++ log and library warnings on stderr")


if __name__ == "__main__":
    sys.exit(main())
