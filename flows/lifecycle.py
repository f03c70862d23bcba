"""No process of ours outlives a run, whatever ends it; SIGTERM and SIGINT stop a run at once.

- **Servers die with us.** The Prefect servers the command line starts (the temporary API of
  ``run`` and ``demo``, the ``prefect server start`` of ``serve``) are started with the kernel's
  parent-death signal (``prctl(PR_SET_PDEATHSIG, SIGKILL)``): when our process ends — even by
  ``kill -9``, which no handler can see — the kernel kills them too.
- **Stop means stop.** While a ``run`` or ``demo`` works, SIGTERM and SIGINT are blocked in every
  thread and taken by one watcher thread (``sigwait``), so neither Prefect's handler (which waits
  for running tasks: minutes to hours of training) nor a library sees them. The watcher removes the
  report folder being assembled, prints one line and ends the process with 128 + the signal's
  number (143 for SIGTERM, 130 for SIGINT); the servers above die with it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_PR_SET_PDEATHSIG = 1
_DONE = signal.SIGUSR1  # sent to the watcher when the run ends normally


def die_with_parent(parent: int) -> Callable[[], None]:
    """A ``preexec_fn``: in the child, ask the kernel for SIGKILL when ``parent`` dies; unblock the stop signals."""

    def prepare() -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, (*STOP_SIGNALS, _DONE))  # the mask survives exec
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request: follow it now
            os._exit(1)

    return prepare


def _silence_logging() -> None:
    """No log record of a still-running thread may follow the stop line: refuse new records, and wait (briefly) for
    one being written to finish, by taking every handler's lock; the process ends holding them."""
    logging.disable(logging.CRITICAL)
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    for handler in {h for lg in loggers for h in lg.handlers}:
        if handler.lock is not None:
            handler.lock.acquire(timeout=1)


def tied_popen(args: list[str], **kwargs: Any) -> subprocess.Popen:
    """``subprocess.Popen`` for a child that must not outlive this thread's process (see :func:`die_with_parent`).

    Call it from the thread that lives as long as the child should: the kernel ties the child to it.
    """
    return subprocess.Popen(args, preexec_fn=die_with_parent(os.getpid()), **kwargs)


@contextmanager
def stop_on_signals(on_stop: Callable[[signal.Signals], str]) -> Iterator[None]:
    """Within the block, SIGTERM/SIGINT end the process at once: ``on_stop(signal)`` cleans up and returns the line to print."""
    signal.pthread_sigmask(signal.SIG_BLOCK, (*STOP_SIGNALS, _DONE))

    def watch() -> None:
        received = signal.Signals(signal.sigwait((*STOP_SIGNALS, _DONE)))
        if received == _DONE:
            return
        try:
            line = on_stop(received)
        except BaseException as exc:  # cleaning up must not keep us alive
            line = f"stopped by {received.name} ({type(exc).__name__} while cleaning up)"
        _silence_logging()
        print(f"featureaudit: error: {line}", file=sys.stderr, flush=True)
        os._exit(128 + received)

    watcher = threading.Thread(target=watch, name="featureaudit-stop-signals", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        signal.pthread_kill(watcher.ident, _DONE)
        watcher.join()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, (*STOP_SIGNALS, _DONE))
