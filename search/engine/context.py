"""What the parts of a running search share: the study, its policies, the caches, the budget,
the work queues, and where lines go.

The driver (:mod:`search.engine.driver`) builds one :class:`SearchContext` once the study
is open and the executor is up; the stages that dispatch work, react to its results, end
trials and answer duplicates each read and change it, and nothing else.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

import optuna

from litv2 import LITConfig
from space.search_space import SearchSpace

from ..core.budget import Budget, CostModel, Ledger
from ..core.constraints import Constraints
from ..core.faults import RetryPolicy
from ..core.prediction import PredictionMargin
from ..core.scheduler import Scheduler
from ..core.target import Target
from ..study.settings import SearchSettings
from .cache import ThroughputCache
from .candidate import STAGES, Candidate
from .executor import Executor
from .tracking import StudyTracker


@dataclass
class Tally:
    """What a search did, for its closing line: in the words ``search status`` counts the
    study's trials by (left untrained for budget is neither stopped early nor failed)."""

    trained: int = 0
    duplicates: int = 0
    reruns: int = 0
    infeasible: int = 0
    stopped: int = 0
    completed: int = 0
    failed: int = 0
    unaffordable: int = 0
    reused: int = 0
    remeasured: int = 0

    def line(self) -> str:
        return (f"{self.trained} architectures trained: {self.completed} complete, {self.stopped} stopped early, "
                f"{self.failed} failed; {self.infeasible} infeasible, {self.duplicates} duplicates answered from "
                f"the study, {self.reruns} interrupted trials re-run, {self.unaffordable} left untrained for budget, "
                f"{self.reused} trainings reused from earlier studies; {self.remeasured} throughput figures "
                f"measured twice (too wide)")


@dataclass
class SearchContext:
    settings: SearchSettings
    study: optuna.Study
    space: SearchSpace
    target: Target  # the first target: constraints, predictions and the FLOPs' resolution are its
    budget: Budget
    scheduler: Scheduler
    constraints: Constraints
    retry: RetryPolicy
    executor: Executor
    devices: dict[str, float]  # devices a job of each kind holds ("lost": interrupted work)
    fingerprints: dict[str, dict[str, str]]  # target key -> where its measurements run: the throughput cache keys on it
    cache: ThroughputCache
    costs: CostModel
    ledger: Ledger
    tracker: StudyTracker
    out: TextIO
    predictor: Callable[[LITConfig], float | None] | None = None  # img/s from a latency table
    margin: PredictionMargin = field(default_factory=PredictionMargin)
    tally: Tally = field(default_factory=Tally)
    queues: dict[str, list[Candidate]] = field(default_factory=lambda: {stage: [] for stage in STAGES})
    active: dict[int, Candidate] = field(default_factory=dict)  # trial number -> candidate, until it ends
    failures_in_a_row: int = 0
    unaffordable_in_a_row: int = 0

    @property
    def targets(self) -> tuple[str, ...]:
        """Every target's key, the first first: one throughput objective each."""
        return self.settings.search.target_keys

    @property
    def fingerprint(self) -> dict[str, str]:
        """Where the first target's measurements run."""
        return self.fingerprints[self.target.key]

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def checkpoint(self, candidate: Candidate) -> Path:
        return self.settings.run.checkpoints / self.settings.search.study / f"{candidate.arch}-s{candidate.seed}.pt"

    def recipe(self, candidate: Candidate) -> str:
        """What a proxy training's result depends on besides the architecture."""
        return (f"{self.settings.search.dataset}|{self.space.proxy.img_size}|w{self.space.proxy.width_mult}|"
                f"{self.scheduler.max_epochs}|"
                f"{candidate.seed}|{self.settings.run.data_root or ''}|{self.settings.search.trainer}")

    def dequeue(self, candidate: Candidate) -> None:
        for queue in self.queues.values():
            if candidate in queue:
                queue.remove(candidate)
