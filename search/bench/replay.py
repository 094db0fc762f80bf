"""Replaying a search on a recorded table: the real driver, samplers and schedulers, no training.

:class:`ReplayingExecutor` is the :class:`~search.engine.executor.InProcessExecutor` with jobs
answered from a :class:`~search.bench.table.BenchTable`: a count returns the recorded params and
FLOPs, a measurement the recorded throughput, a training the recorded accuracies up to the
epoch it reaches; each job ends on the simulated clock after the seconds the recording
took (a rung of ``k`` epochs: ``k`` recorded epoch-seconds). Everything else - asking the
sampler, deduplication, the cost model, the budget ledger, successive halving - is
:class:`~search.engine.driver.Search` itself, so a replay measures the strategy the search
really runs.

The simulated cluster is one CPU node of ``workers`` cores, planned as the Ray executor
plans a CPU budget: a training holds one core, a measurement holds the whole node (and is
charged for every core), a count one core.

A strategy that ranks by prediction (``--throughput predicted``) takes each architecture's
predicted throughput from the table and measures nothing while it searches; its progress is
scored as if it stopped at each point and measured its front there
(:class:`FrontMeasuringRecorder`): the budget it had used plus those measurements, against
the hypervolume of the front's measured figures.
"""
from __future__ import annotations

import csv
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..core import hypervolume as _hypervolume
from ..core.prediction import MEASURED, PREDICTED
from ..engine.executor import InProcessExecutor, Node
from ..engine.jobs import Job
from .table import BenchTable, Row

SCRATCH = "/dev/shm"


class TableJobs:
    """Count, measure and train runners answering from ``table``, and each job's recorded seconds."""

    def __init__(self, table: BenchTable) -> None:
        from litv2 import LITConfig
        from space import arch_id, get_space

        space = get_space(table.meta["space"])
        every = {arch_id(config) for config in space.enumerate()}
        if every - {row.arch_id for row in table.rows}:
            raise ValueError(
                f"the table ({table.meta['study']}) records {len(every & set(table.by_arch()))} of the {len(every)} "
                f"architectures of space {table.meta['space']!r}: a replay needs every one; grow it with "
                f"'python -m search resume --study {table.meta['study']} --budget ...' and 'python -m search bench-table'")
        self.table = table
        self.rows = table.by_arch()
        # A training job carries the proxy's config: map each proxy back to its row.
        self.by_proxy = {arch_id(space.proxy_of(LITConfig.from_json(row.config))): row for row in table.rows}
        self._arch_id, self._config = arch_id, LITConfig.from_json
        self.measurement = dict(device_name=table.meta["machine"]["device"],
                                versions=dict(table.meta["measurement_versions"]))

    def predicted(self, config: Any) -> float | None:
        """The table's predicted throughput of a full-size ``LITConfig`` (None: not recorded)."""
        return self.rows[self._arch_id(config)].predicted_throughput

    def runners(self) -> dict[str, Callable[[Job], dict[str, Any]]]:
        return {"count": self.count, "measure": self.measure, "train": self.train}

    def _row(self, config_json: str, rows: dict[str, Row]) -> Row:
        return rows[self._arch_id(self._config(config_json))]

    def count(self, job) -> dict[str, Any]:
        row = self._row(job.config_json, self.rows)
        return dict(params=row.params, flops=row.flops)

    def measure(self, job) -> dict[str, Any]:
        row = self._row(job.config_json, self.rows)
        return dict(throughput=row.throughput, throughput_spread=row.throughput_spread, measurement=self.measurement)

    def train(self, job) -> dict[str, Any]:
        row = self._row(job.proxy_json, self.by_proxy)
        accuracies = list(row.epoch_accuracies[:job.to_epoch])
        return dict(accuracy=accuracies[-1], epoch_accuracies=accuracies, train_seconds=self.seconds(job, {}))

    def seconds(self, job, result: dict[str, Any]) -> float:
        """Wall seconds the recording spent on what ``job`` asks."""
        if job.kind == "train":
            return self._row(job.proxy_json, self.by_proxy).epoch_seconds * (job.to_epoch - job.from_epoch)
        row = self._row(job.config_json, self.rows)
        return row.count_seconds if job.kind == "count" else row.measure_seconds


class ReplayingExecutor(InProcessExecutor):
    """An in-process executor on one simulated node of ``workers`` cores whose jobs are table look-ups."""

    def __init__(self, jobs: TableJobs, workers: int) -> None:
        self.jobs = jobs
        super().__init__([Node("replay", workers, bench=True)], self.jobs.runners(), self.jobs.seconds,
                         devices=dict(count=1.0, measure=float(workers), train=1.0))
        self.measures_anew = False  # the table holds one figure per architecture: a repeat would only cost

    def fingerprint(self, target_key: str) -> dict[str, str]:
        """Where the table's throughputs were measured (the throughput cache keys on it)."""
        return {"device_name": self.jobs.measurement["device_name"], **self.jobs.measurement["versions"]}


class ProgressRecorder:
    """The search's tracker during a replay: instead of MLflow runs it keeps, in memory, the
    (budget used, hypervolume) the driver reports after each completed trial."""

    def __init__(self) -> None:
        self.progress: list[tuple[float, float]] = []

    def start(self, study_name: str, params: dict[str, Any], run_id: str | None = None) -> str:
        return run_id or "replay"

    def log_progress(self, step: int, metrics: dict[str, float]) -> None:
        self.progress.append((float(metrics["budget_used"]), float(metrics["hypervolume"])))

    # A replay keeps no per-trial runs, fronts or plots: thousands of simulated trials would
    # cost more to log than to replay.
    def log_trial(self, *args: Any, **kwargs: Any) -> None:
        return None

    def log_front(self, *args: Any, **kwargs: Any) -> None:
        return None

    def finish(self, status: str = "FINISHED") -> None:
        return None

    def closing_point(self, spent: float) -> tuple[float, float]:
        """The curve's last point once the search has spent ``spent`` in all."""
        return spent, self.progress[-1][1] if self.progress else 0.0


class FrontMeasuringRecorder(ProgressRecorder):
    """Progress of a search ranked by prediction: at each point, what stopping there would
    give - the budget used so far plus measuring the front (each member's recorded
    measurement, charged for every core), and the hypervolume of the front's measured
    throughputs (a member the prediction put on the front may be dominated once measured)."""

    def __init__(self, jobs: TableJobs, workers: int) -> None:
        super().__init__()
        self.jobs = jobs
        self.workers = workers
        self._used = 0.0
        self._front_cost = 0.0

    def log_progress(self, step: int, metrics: dict[str, float]) -> None:
        self._used = float(metrics["budget_used"])  # the front follows (log_front)

    def log_front(self, csv_text: str, plot: Any, name: str = "") -> None:
        front = [(float(point["accuracy"]), self.jobs.rows[point["arch_id"]])
                 for point in csv.DictReader(io.StringIO(csv_text))]
        self._front_cost = sum(row.measure_seconds for _, row in front) * self.workers
        measured = _hypervolume.hypervolume([(accuracy, row.throughput) for accuracy, row in front])
        self.progress.append((self._used + self._front_cost, measured))

    def closing_point(self, spent: float) -> tuple[float, float]:
        return spent + self._front_cost, self.progress[-1][1] if self.progress else 0.0


@dataclass(frozen=True)
class Strategy:
    """A sampler (:data:`search.core.samplers.SAMPLERS`) with a scheduler
    (:data:`search.core.scheduler.SCHEDULERS`), ranking by measured or predicted throughput
    (:data:`search.core.prediction.THROUGHPUT_SOURCES`)."""

    sampler: str
    scheduler: str
    throughput: str = MEASURED

    @property
    def name(self) -> str:
        return f"{self.sampler}+{self.scheduler}" + ("+predicted" if self.throughput == PREDICTED else "")


@dataclass(frozen=True)
class Curve:
    """Hypervolume against budget spent (device-seconds) of one replayed search: a step
    function through ``points``, ending at what the search spent in all."""

    strategy: str
    seed: int
    budget: float
    points: tuple[tuple[float, float], ...]
    spent: float
    trained: int

    def hypervolume_at(self, spent: float) -> float:
        """The front's hypervolume once ``spent`` device-seconds were used."""
        reached = [hv for used, hv in self.points if used <= spent]
        return max(reached, default=0.0)

    def budget_to_reach(self, hypervolume: float) -> float | None:
        """The least budget after which the hypervolume is at least ``hypervolume`` (None: never)."""
        return next((used for used, hv in self.points if hv >= hypervolume), None)


def replay(jobs: TableJobs, strategy: Strategy, seed: int, workers: int, budget: str,
           min_epochs: int = 1, eta: int = 3) -> Curve:
    """Run the real search for ``strategy`` on ``jobs``' table, in a throw-away work directory."""
    from ..engine.driver import Search, budget_used
    from ..core.budget import parse_budget
    from ..core.target import parse_target
    from ..study.settings import RunConfig, SearchConfig, SearchSettings

    # Its study, caches and journal are scratch: on a RAM disk their fsyncs cost nothing.
    scratch = SCRATCH if Path(SCRATCH).is_dir() else None
    table = jobs.table
    with tempfile.TemporaryDirectory(prefix="replay-", dir=scratch) as folder:
        settings = SearchSettings(
            SearchConfig(study=f"{strategy.sampler}-{strategy.scheduler}-{seed}", space=table.meta["space"],
                         budget=parse_budget(budget), target=parse_target(table.meta["target"]),
                         dataset=table.meta["dataset"], sampler=strategy.sampler, scheduler=strategy.scheduler,
                         epochs=table.epochs, min_epochs=min_epochs, eta=eta, seed=seed,
                         throughput=strategy.throughput),
            RunConfig(Path(folder), storage=f"journal:{Path(folder) / 'optuna.journal'}"))
        predicted = strategy.throughput == PREDICTED
        recorder = FrontMeasuringRecorder(jobs, workers) if predicted else ProgressRecorder()
        search = Search(settings, out=io.StringIO(), executor=lambda _: ReplayingExecutor(jobs, workers),
                        tracker=recorder, predictor=jobs.predicted if predicted else None)
        search.run()
        spent, final = recorder.closing_point(budget_used(search.study))
        return Curve(strategy.name, seed, search.budget.seconds, (*recorder.progress, (spent, final)), spent,
                     search.context.tally.trained)
