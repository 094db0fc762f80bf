"""MLflow tracking of a study: one parent run, one nested child run per trial, the live front.

Only the driver talks to MLflow (workers return plain results), so a cluster needs just
one tracking URI reachable from the driver. The parent run id is stored on the Optuna
study, which is how ``search resume`` continues the same run. Starting the parent run talks
to MLflow directly; every write after it goes through an :class:`search.engine.outbox.Outbox`, so
an MLflow outage during a search delays the records and never the search.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from .outbox import Outbox, Record, batch, fail_fast_over_http, load_pending, pending_file, save_pending, sync

EXPERIMENT = "litv2-search"
ARTIFACTS_DIR = "mlartifacts"  # in the work directory: the artifact store of the experiment, when this creates it
OUTBOX_DIR = "mlflow-outbox"  # in the work directory: spooled files and records MLflow has not taken yet


class StudyTracker:
    """Logs one study into MLflow under experiment :data:`EXPERIMENT`."""

    def __init__(self, tracking_uri: str, artifact_root: Path | None = None,
                 say: Callable[[str], None] | None = None) -> None:
        # A tracking server's client prints "View run ... / View experiment ..." on every run it
        # ends (a dozen lines a search); the tool prints the study's run once.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.uri = tracking_uri
        self.say = say or _to_stderr
        self.spool = (artifact_root.parent if artifact_root is not None else Path(tempfile.gettempdir())) / OUTBOX_DIR
        self.client = MlflowClient(tracking_uri)
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        if experiment is None:
            # A server decides where artifacts go (mlflow-artifacts:/ when it serves them): a
            # file:// location would keep fronts and deployments on the driver's disk alone.
            local = artifact_root is not None and not tracking_uri.startswith(("http://", "https://"))
            location = artifact_root.resolve().as_uri() if local else None
            self.experiment_id = self.client.create_experiment(EXPERIMENT, artifact_location=location)
        else:
            self.experiment_id = experiment.experiment_id
        self.run_id: str | None = None
        self.study: str | None = None
        self.outbox: Outbox | None = None

    def start(self, study_name: str, params: dict[str, Any], run_id: str | None = None) -> str:
        """Create the study's parent run, or reopen ``run_id`` when resuming (first sending
        what an earlier driver of the study could not)."""
        fail_fast_over_http(self.uri)  # the outbox retries from here on
        self.study = study_name
        if run_id is not None:
            sent = sync(self.client, pending_file(self.spool, study_name))  # before RUNNING: they may end the run
            if sent:
                self.say(f"sent {sent} MLflow records an earlier driver of this study had kept")
            self.client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
        else:
            run = self.client.create_run(self.experiment_id, run_name=study_name,
                                         tags={"study": study_name, "kind": "study"})
            self.run_id = run.info.run_id
            self.client.log_batch(self.run_id, params=[Param(k, _short(v)) for k, v in params.items()])
        self.outbox = Outbox(self.client, self.spool, self.uri, self.say)
        return self.run_id

    def log_trial(self, number: int, params: dict[str, Any], metrics: dict[str, float], tags: dict[str, str],
                  history: dict[str, list[float]] | None = None) -> None:
        """One finished nested child run under the parent; ``history`` holds per-epoch series
        (logged with the epoch as the step, so MLflow draws learning curves)."""
        now = _now_ms()
        series = [[name, float(v), now, epoch] for name, values in (history or {}).items()
                  for epoch, v in enumerate(values, start=1)]
        self.outbox.put(Record("child", dict(
            experiment_id=self.experiment_id, name=f"trial-{number}",
            tags={"mlflow.parentRunId": self.run_id, "trial": str(number), **tags},
            params={k: _short(v) for k, v in params.items()},
            metrics=[[k, float(v), now, 0] for k, v in metrics.items() if v is not None] + series)))

    def log_progress(self, step: int, metrics: dict[str, float]) -> None:
        now = _now_ms()
        self.outbox.put(batch(self.run_id, metrics=[(k, float(v), now, step) for k, v in metrics.items()]))

    def log_front(self, csv_text: str, plot: Callable[[Path], None], name: str = "") -> None:
        """Replace the parent's ``front{name}.csv`` and ``front{name}.png`` with the current
        front (``name``: a target's, in a study of several)."""
        with tempfile.TemporaryDirectory() as folder:
            csv_path = Path(folder) / f"front{name}.csv"
            csv_path.write_text(csv_text)
            png_path = Path(folder) / f"front{name}.png"
            plot(png_path)
            self.outbox.put_file(self.run_id, csv_path)
            self.outbox.put_file(self.run_id, png_path)

    def log_artifacts(self, paths: Iterable[Path], run_id: str | None = None) -> None:
        """Attach files (tables, plots) to the study's parent run, or to the run ``run_id``."""
        for path in paths:
            self.client.log_artifact(run_id or self.run_id, str(path))

    def finish(self, status: str = "FINISHED") -> None:
        """End the parent run; what MLflow has not taken within the outbox's flush time is kept
        in the work directory for ``python -m search sync-mlflow``."""
        if self.outbox is None:
            return
        self.outbox.put(Record("terminate", dict(run_id=self.run_id, status=status)))
        unsent = self.outbox.close()
        if unsent:
            path = pending_file(self.spool, self.study)
            save_pending(path, unsent)
            self.say(f"warning: MLflow at {self.uri} did not take {len(unsent)} records; they are kept in {path}: "
                      f"send them with 'python -m search sync-mlflow --study {self.study}' once it is back")


def send_kept(tracking_uri: str, workdir: Path, study: str) -> str:
    """``python -m search sync-mlflow``: send the records a driver of ``study`` kept in
    ``workdir`` because MLflow was unreachable; returns what was done, in one line."""
    path = pending_file(workdir / OUTBOX_DIR, study)
    if not path.exists():
        return f"nothing to send: no MLflow records of study {study!r} are kept in {path.parent}"
    load_pending(path)  # a damaged file is ours to name, not MLflow's fault
    fail_fast_over_http(tracking_uri)
    try:
        sent = sync(MlflowClient(tracking_uri), path)
    except Exception as error:  # noqa: BLE001 - whatever stops MLflow, the records stay kept
        raise RuntimeError(f"MLflow at {tracking_uri} did not take the kept records ({type(error).__name__}); "
                           f"they stay in {path}") from error
    return f"sent {sent} kept records of study {study!r} to MLflow at {tracking_uri}"


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


def _now_ms() -> int:
    return int(time.time() * 1000)
