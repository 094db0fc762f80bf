"""Schedulers: which fidelity a trial gets, and whether it goes on after each rung.

Pure policy, no Ray and no storage: the driver reports each finished rung
(:meth:`Scheduler.report`), the scheduler keeps what every trial scored at every rung, and
the driver follows its decision (:meth:`Scheduler.decide`). Three schedulers:

* :class:`FullFidelity` trains every architecture to the last epoch (one rung).
* :class:`MOASHA` - multi-objective asynchronous successive halving. Rungs sit on a
  geometric ladder of epochs counted down from the top: ``epochs // eta**k`` while that is
  at least ``min_epochs`` (9 epochs, eta 3: rungs 1, 3, 9; 10 epochs: 1, 3, 10). A trial that
  finishes a rung continues only if it is in the top ``1/eta`` of every result recorded at
  that rung so far, ranked over (accuracy at the rung, measured throughput on each of the
  study's targets): first by
  non-dominated sorting, then, inside the front where the cut falls, by each point's
  hypervolume contribution. Hypervolume contribution rather than crowding distance because
  (a) it rewards exactly what the search is scored by (the front's hypervolume), (b) in two
  objectives it is a product of gaps, so the ranking does not depend on the units of either
  objective, and (c) crowding distance gives both extremes of a front infinite worth, which
  would always promote the fastest architecture whatever its accuracy. The decision uses
  what has been recorded: no trial ever waits for a rung to fill (asynchronous). With fewer
  than ``eta`` results at a rung, the best one goes on.
* :class:`FixedPoints` - ablation tables: every listed point x every seed, once each, in the
  listed order, at full fidelity.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Hashable, Sequence

from .hypervolume import hypervolume_contributions

SCHEDULERS = ("mo-asha", "full")


class Decision(enum.Enum):
    CONTINUE = "continue"  # train to the next rung
    STOP = "stop"          # keep its partial fidelity; never on the front
    COMPLETE = "complete"  # reached the top rung


@dataclass(frozen=True)
class RungResult:
    """What a trial scored at a rung, and its throughput on each target: all maximised."""

    trial: int
    accuracy: float
    throughputs: tuple[float, ...]


class Scheduler:
    """Full fidelity: one rung at the last epoch.

    A trial is known by a ``key`` the driver chooses (architecture and seed: a re-run of an
    interrupted trial replaces its predecessor's results instead of counting twice).
    """

    name = "full"

    def __init__(self, epochs: int) -> None:
        self.rungs: tuple[int, ...] = (epochs,)
        self._results: dict[int, dict[Hashable, RungResult]] = {}

    @property
    def max_epochs(self) -> int:
        return self.rungs[-1]

    def next_rung(self, epochs_done: int) -> int:
        """The epoch a trial that has trained ``epochs_done`` epochs trains up to next."""
        return next(r for r in self.rungs if r > epochs_done)

    def report(self, key: Hashable, trial: int, accuracies: Sequence[float], throughputs: Sequence[float]) -> None:
        """A trial's accuracy after each epoch trained so far, and its measured throughput on
        each target: kept at every rung it has reached (also for trials of earlier drivers, on
        resume)."""
        for rung in self.rungs:
            if len(accuracies) >= rung:
                self._results.setdefault(rung, {})[key] = RungResult(trial, accuracies[rung - 1], tuple(throughputs))

    def recorded(self, rung: int) -> int:
        """How many trials have a result at ``rung``."""
        return len(self._results.get(rung, {}))

    def decide(self, key: Hashable, rung: int) -> Decision:
        """Whether the trial ``key``, just reported at ``rung``, goes on."""
        results = self._results[rung]
        return self._rule(results[key], rung, list(results.values()))

    def _rule(self, result: RungResult, rung: int, recorded: Sequence[RungResult]) -> Decision:
        """``recorded``: every result at ``rung`` so far, ``result`` included."""
        return Decision.COMPLETE if rung >= self.max_epochs else Decision.CONTINUE


FullFidelity = Scheduler


class FixedPoints(Scheduler):
    """Every (point, seed) once, at full fidelity; the points come from the study's queue."""

    name = "fixed"


class MOASHA(Scheduler):
    """Multi-objective asynchronous successive halving (see the module docstring)."""

    name = "mo-asha"

    def __init__(self, epochs: int, min_epochs: int = 1, eta: int = 3) -> None:
        if eta < 2:
            raise ValueError(f"--eta {eta} is invalid: expected an integer >= 2")
        if not 1 <= min_epochs <= epochs:
            raise ValueError(f"--min-epochs {min_epochs} is invalid: expected 1 <= min-epochs <= --epochs {epochs}")
        rungs = [epochs]
        while rungs[-1] // eta >= min_epochs:
            rungs.append(rungs[-1] // eta)
        super().__init__(epochs)
        self.rungs = tuple(sorted(rungs))
        self.eta = eta

    def _rule(self, result: RungResult, rung: int, recorded: Sequence[RungResult]) -> Decision:
        if rung >= self.max_epochs:
            return Decision.COMPLETE
        keep = max(1, len(recorded) // self.eta)
        order = promotion_order([(r.accuracy, *r.throughputs) for r in recorded])
        kept = {recorded[i].trial for i in order[:keep]}
        return Decision.CONTINUE if result.trial in kept else Decision.STOP


def make_scheduler(name: str, epochs: int, min_epochs: int, eta: int, fixed_points: bool) -> Scheduler:
    """The scheduler of a study: fixed points always run at full fidelity."""
    if fixed_points:
        return FixedPoints(epochs)
    if name == "mo-asha":
        return MOASHA(epochs, min_epochs, eta)
    if name == "full":
        return FullFidelity(epochs)
    raise ValueError(f"--scheduler {name!r} is unknown; expected one of {', '.join(SCHEDULERS)}")


def default_scheduler(epochs: int, min_epochs: int, eta: int) -> str:
    """mo-asha when ``--epochs`` leaves room for at least two rungs, full otherwise."""
    return "mo-asha" if min_epochs * eta <= epochs else "full"


# ---------------------------------------------------------------------- ranking
def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(x >= y for x, y in zip(a, b)) and tuple(a) != tuple(b)


def nondominated_ranks(points: Sequence[Sequence[float]]) -> list[int]:
    """Front index of each point (0 = not dominated), every objective maximised."""
    ranks = [-1] * len(points)
    left = set(range(len(points)))
    front = 0
    while left:
        current = {i for i in left if not any(_dominates(points[j], points[i]) for j in left if j != i)}
        for i in current:
            ranks[i] = front
        left -= current
        front += 1
    return ranks


def promotion_order(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices best first: by non-dominated rank, then by hypervolume contribution inside a
    rank, then by accuracy (the objective the proxy exists to estimate), then index."""
    ranks = nondominated_ranks(points)
    worth = [0.0] * len(points)
    for rank in set(ranks):
        members = [i for i, r in enumerate(ranks) if r == rank]
        for i, value in zip(members, hypervolume_contributions([points[i] for i in members])):
            worth[i] = value
    return sorted(range(len(points)), key=lambda i: (ranks[i], -worth[i], -points[i][0], i))


def rung_counts(rungs: Sequence[int], reached: Sequence[int], stopped_at: Sequence[int]) -> list[tuple[int, int, int, int]]:
    """Per rung: (epoch, trials that reached it, continued past it, stopped at it)."""
    rows = []
    for rung in rungs:
        got = sum(1 for r in reached if r >= rung)
        stopped = sum(1 for s in stopped_at if s == rung)
        past = sum(1 for r in reached if r > rung)
        rows.append((rung, got, past, stopped))
    return rows
