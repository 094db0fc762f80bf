"""The terminal is for the tool's own lines: Ray's and MLflow's INFO chatter goes to a log file.

Ray prints its start-up ("Started a local Ray instance"), MLflow its table creation
("Creating initial MLflow database tables") and Optuna each new study through their own
stream handlers; those handlers are raised to WARNING, so warnings and errors still reach the
terminal (but for :data:`ROUTINE_WARNINGS`), and every record at INFO and above is kept in
WORKDIR/search.log.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..study.settings import LOG_FILE

LIBRARY_LOGGERS = ("ray", "mlflow", "alembic", "optuna")
# Warnings that say all is as it should be, printed on every run: Ray's notice that the
# local cluster it starts has token authentication on (its safe default). They go to the log
# file only; the notice that authentication is off still reaches the terminal.
ROUTINE_WARNINGS = ("Token authentication is enabled for this Ray cluster",)


class _NoRoutineWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(ROUTINE_WARNINGS)


_NO_ROUTINE_WARNINGS = _NoRoutineWarnings()
_to_file: logging.FileHandler | None = None  # the handler the last call installed


def route_library_logs(workdir: Path) -> Path:
    """Send the libraries' INFO lines to ``workdir/search.log`` (made on the first record);
    call once the checks have passed, since it imports Ray and MLflow, whose import installs
    the handlers this re-levels."""
    import mlflow  # noqa: F401 (installs the 'mlflow' handler)
    import optuna  # noqa: F401 (installs the 'optuna' handler: "A new study created ...")
    import ray  # noqa: F401 (installs the 'ray' handler)

    global _to_file
    path = (workdir / LOG_FILE).resolve()
    to_file = logging.FileHandler(path, delay=True)
    to_file.setLevel(logging.INFO)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.WARNING)
                handler.addFilter(_NO_ROUTINE_WARNINGS)
        if _to_file is not None:
            logger.removeHandler(_to_file)  # a second search in one process logs to its own work directory
        logger.addHandler(to_file)
    if _to_file is not None:
        _to_file.close()
    _to_file = to_file
    return path
