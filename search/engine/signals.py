"""How a search is stopped from outside: Ctrl-C (SIGINT) and SIGTERM alike.

Both stop the running jobs, charge what they ran and leave the trials to re-run on
``search resume``; the MLflow run is marked KILLED and the exit code says which signal it
was (130, 143). Ray's core worker installs its own SIGTERM handler when the driver joins a
cluster (it aborted the driver with six ``*** SIGTERM received`` lines and no word of ours),
so the search's handlers go in after Ray is up, for the search loop alone. Once a stop is
under way, a second signal ends the process at once, without a traceback. Which signal it
was is kept apart from the exception: a signal that arrives while Ray waits reaches Python
through Ray's C++ loop, which turns any exception into a plain KeyboardInterrupt.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Iterator

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal's number
_received: list[int] = []  # the signals the current block was stopped by


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt, so both take one path."""


def _signal_of(stop: KeyboardInterrupt) -> int:
    if _received:
        return _received[0]
    return signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT


def stop_reason(stop: KeyboardInterrupt) -> str:
    return "terminated (SIGTERM)" if _signal_of(stop) == signal.SIGTERM else "interrupted"


def exit_code(stop: KeyboardInterrupt) -> int:
    """What the process exits with after ``stop`` (130 for SIGINT, 143 for SIGTERM)."""
    return EXIT_CODES[_signal_of(stop)]


def _raise(signum: int, _frame) -> None:
    _received.append(signum)
    quit_on_signals()  # the stop itself must not be stopped half-way by a Python exception
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _quit(signum: int, _frame) -> None:
    os._exit(EXIT_CODES[signum])


def quit_on_signals() -> None:
    """From now on SIGINT and SIGTERM end the process at once, without a traceback: for a
    command that was stopped and is exiting (Ray's shutdown at exit takes a second or two)."""
    for stopping in EXIT_CODES:
        signal.signal(stopping, _quit)


@contextlib.contextmanager
def stopped_by_signals() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise (:class:`Terminated` for SIGTERM); after
    one has, the next ends the process, so the block's own handling of the first (stopping
    jobs, marking the run) is never cut off by a traceback. Outside the main thread (where
    Python takes no handlers) the block runs with the process's own."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    previous = {stopping: signal.signal(stopping, _raise) for stopping in EXIT_CODES}
    try:
        yield
    finally:
        for stopping, handler in previous.items():
            signal.signal(stopping, handler)
