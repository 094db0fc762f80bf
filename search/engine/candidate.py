"""One trial on its way through the search: count -> measure -> rungs of training.

A candidate's :attr:`~Candidate.stage` is the job it needs next, read from what it has:
no figures yet, it is counted; no throughput on one of the study's targets yet, it is
measured there (targets in the order given: the first, which constraints are checked on,
first); then it trains rung by rung. The stage names are the job kinds (:mod:`search.engine.jobs`), which name the
driver's queues and the budget's cost entries too.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import optuna

from litv2 import LITConfig

from ..core.record import write

COUNT, MEASURE, TRAIN = "count", "measure", "train"
STAGES = (COUNT, MEASURE, TRAIN)


@dataclass
class Candidate:
    """A trial the driver is working on, until it ends (complete, stopped, infeasible, failed,
    not trained for budget, or interrupted)."""

    trial: optuna.trial.Trial
    config: LITConfig
    arch: str
    summary: str
    seed: int
    targets: tuple[str, ...]  # the study's target keys, the first first
    started: float = field(default_factory=time.perf_counter)
    figures: dict[str, Any] | None = None  # params and FLOPs at full size
    measured: dict[str, dict[str, Any]] = field(default_factory=dict)  # target key -> the figure kept (now or cached)
    measured_now: bool = False
    predicted: float | None = None  # img/s on the first target from the latency table, where it has every part
    measurements: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # this trial's own, by target
    epochs_done: int = 0
    accuracies: list[float] = field(default_factory=list)
    costs: dict[str, float] = field(default_factory=dict)  # device-seconds by job kind
    busy: float = 0.0  # seconds its jobs ran
    training_started: bool = False  # a first rung was submitted (a retried one is not a second architecture)

    @property
    def number(self) -> int:
        return self.trial.number

    @property
    def stage(self) -> str:
        """The job it needs next: :data:`COUNT`, :data:`MEASURE` or :data:`TRAIN`."""
        if self.figures is None:
            return COUNT
        return MEASURE if self.unmeasured is not None else TRAIN

    @property
    def unmeasured(self) -> str | None:
        """The first target it has no throughput figure on yet (None: it has them all)."""
        return next((key for key in self.targets if key not in self.measured), None)

    @property
    def first_measured(self) -> dict[str, Any] | None:
        """Its figure on the first target, the one constraints and predictions are of."""
        return self.measured.get(self.targets[0])

    @property
    def throughputs(self) -> list[float]:
        """Its throughput on every target, in the study's order (once all are measured)."""
        return [self.measured[key]["throughput"] for key in self.targets]

    @property
    def untrained(self) -> bool:
        """Not trained at all yet: counting, measuring or waiting for its first rung."""
        return self.epochs_done == 0 and not self.training_started

    @property
    def key(self) -> tuple[str, int]:
        """What the scheduler knows it by: a re-run of the same architecture and seed replaces it."""
        return self.arch, self.seed

    def charge(self, kind: str, device_seconds: float) -> None:
        self.costs[kind] = self.costs.get(kind, 0.0) + device_seconds
        write(self.trial, device_seconds=sum(self.costs.values()), costs=self.costs)


def where_and_when(result: dict[str, Any]) -> list:
    """A job's [start, end, node id, worker pid], kept on its trial."""
    return [*result["interval"], result.get("node_id"), result.get("pid")]
