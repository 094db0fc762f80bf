"""MLflow tracking of a study: one parent run, one nested child run per trial, the live front.

Only the driver talks to MLflow (workers return plain results), so a cluster needs just
one tracking URI reachable from the driver. The parent run id is stored on the Optuna
study, which is how ``search resume`` continues the same run.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

EXPERIMENT = "litv2-search"


class StudyTracker:
    """Logs one study into MLflow under experiment :data:`EXPERIMENT`."""

    def __init__(self, tracking_uri: str, artifact_root: Path | None = None) -> None:
        self.client = MlflowClient(tracking_uri)
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        if experiment is None:
            location = artifact_root.resolve().as_uri() if artifact_root is not None else None
            self.experiment_id = self.client.create_experiment(EXPERIMENT, artifact_location=location)
        else:
            self.experiment_id = experiment.experiment_id
        self.run_id: str | None = None

    def start(self, study_name: str, params: dict[str, Any], run_id: str | None = None) -> str:
        """Create the study's parent run, or reopen ``run_id`` when resuming."""
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=study_name, tags={"study": study_name, "kind": "study"})
        self.run_id = run.info.run_id
        self.client.log_batch(self.run_id, params=[Param(k, _short(v)) for k, v in params.items()])
        return self.run_id

    def log_trial(self, number: int, params: dict[str, Any], metrics: dict[str, float], tags: dict[str, str],
                  history: dict[str, list[float]] | None = None) -> str:
        """One finished nested child run under the parent; ``history`` holds per-epoch series
        (logged with the epoch as the step, so MLflow draws learning curves)."""
        run = self.client.create_run(
            self.experiment_id, run_name=f"trial-{number}",
            tags={"mlflow.parentRunId": self.run_id, "trial": str(number), **tags},
        )
        now = _now_ms()
        series = [Metric(name, float(v), now, epoch) for name, values in (history or {}).items()
                  for epoch, v in enumerate(values, start=1)]
        self.client.log_batch(
            run.info.run_id,
            params=[Param(k, _short(v)) for k, v in params.items()],
            metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None] + series,
        )
        self.client.set_terminated(run.info.run_id)
        return run.info.run_id

    def log_progress(self, step: int, metrics: dict[str, float]) -> None:
        now = _now_ms()
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_front(self, csv_text: str, plot: Callable[[Path], None]) -> None:
        """Replace the parent's ``front.csv`` and ``front.png`` with the current front."""
        with tempfile.TemporaryDirectory() as folder:
            csv_path = Path(folder) / "front.csv"
            csv_path.write_text(csv_text)
            png_path = Path(folder) / "front.png"
            plot(png_path)
            self.client.log_artifact(self.run_id, str(csv_path))
            self.client.log_artifact(self.run_id, str(png_path))

    def log_artifacts(self, paths: Iterable[Path], run_id: str | None = None) -> None:
        """Attach files (tables, plots) to the study's parent run, or to the run ``run_id``."""
        for path in paths:
            self.client.log_artifact(run_id or self.run_id, str(path))

    def finish(self, status: str = "FINISHED") -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


def _now_ms() -> int:
    return int(time.time() * 1000)
