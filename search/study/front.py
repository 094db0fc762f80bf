"""Pareto fronts of (proxy accuracy, measured throughput): rows, hypervolume, CSV and plot.

The front is Optuna's own ``Study.best_trials`` (feasible COMPLETE trials only, so trials
stopped early by successive halving, infeasible ones and duplicates answered from the
study never appear). A study of several targets has one front per target: the trials of
``best_trials`` (Pareto-optimal over accuracy and every throughput) that no other dominates
in accuracy and that target's throughput; with one target that is ``best_trials`` itself.
The hypervolume is :func:`search.core.hypervolume.hypervolume`, against
the reference point (0 % accuracy, 0 img/s): it only grows as the search improves, which makes
it a readable progress metric per trial. Objectives come from :data:`search.core.objectives.OBJECTIVES`.
A fixed-point study run with several seeds trains each row once per seed: its rows are the points
(:func:`seed_means`, the seeds' mean accuracy) and their front is :func:`nondominated`.
"""
from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import optuna

from space import row_label

from ..core import hypervolume as _hypervolume
from ..core.objectives import OBJECTIVES
from ..core.record import TrialRecord

FRONT_COLUMNS = ("trial", "arch_id", "accuracy", "throughput", "throughput_low", "throughput_high", "measured_times",
                 "params", "flops", "summary")


@dataclass(frozen=True)
class Point:
    """One evaluated architecture; ``throughput_low`` and ``throughput_high`` bound the 95 %
    interval of its measured median, ``measured_times`` is how many measurements it was kept
    from (:mod:`search.core.repeats`)."""

    trial: int
    arch_id: str
    accuracy: float
    throughput: float
    throughput_low: float
    throughput_high: float
    measured_times: int
    params: int
    flops: int
    summary: str


def _point(trial: optuna.trial.FrozenTrial, target: str | None) -> Point:
    """``trial`` on ``target`` (a target key; None: the study's first, or only, target)."""
    record = TrialRecord.of(trial)
    figures = record.target_figures.get(target) if target is not None else None
    if figures is None:  # the first target's figures are the record's own fields
        figures = dict(throughput=trial.values[1], throughput_low=record.throughput_low,
                       throughput_high=record.throughput_high, measured_times=record.measured_times)
    throughput = figures["throughput"]
    low = figures.get("throughput_low")
    high = figures.get("throughput_high")
    return Point(trial.number, record.arch_id if record.arch_id is not None else "", trial.values[0], throughput,
                 float(throughput if low is None else low), float(throughput if high is None else high),
                 int(figures.get("measured_times", 1)), int(record.params if record.params is not None else 0),
                 int(record.flops if record.flops is not None else 0), record.summary)


def evaluated_points(study: optuna.Study, target: str | None = None) -> list[Point]:
    """Every architecture trained to full fidelity (duplicates are never COMPLETE), on ``target``."""
    return [_point(t, target) for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]


def pareto_front(study: optuna.Study, target: str | None = None) -> list[Point]:
    """The study's feasible Pareto set on ``target`` (a key; None: its first), by throughput."""
    return nondominated([_point(t, target) for t in study.best_trials])


def nondominated(points: list[Point]) -> list[Point]:
    """The points no other dominates in accuracy and throughput, by throughput: the front of
    points Optuna does not rank itself (:func:`seed_means`), ordered as :func:`pareto_front`'s."""
    from ..core.scheduler import nondominated_ranks

    ranks = nondominated_ranks([(p.accuracy, p.throughput) for p in points])
    return sorted((p for p, rank in zip(points, ranks) if rank == 0), key=lambda p: (p.throughput, p.accuracy))


def seed_means(trials: Iterable[optuna.trial.FrozenTrial], target: str | None = None) -> list[Point]:
    """One point per architecture of ``trials`` (COMPLETE ones of a fixed-point study run with
    several seeds), on ``target``: its mean accuracy over the seeds, its throughput figures
    (measured once per architecture, so every seed's are the same; the first trial's), its
    lowest trial number, and its row and seed count as the summary (``LITv1-S (mean of 3
    seeds)``). Seeds differ only in the proxy's training noise, so a row belongs on the front by
    its mean: one lucky seed must not put it there, nor draw the row once per seed."""
    seeds: dict[str, list[tuple[Point, dict[str, Any]]]] = {}
    for trial in sorted(trials, key=lambda t: t.number):
        point = _point(trial, target)
        seeds.setdefault(point.arch_id, []).append((point, trial.params))
    means = []
    for runs in seeds.values():
        (first, params), count = runs[0], len(runs)
        averaged = f"mean of {count} seeds" if count > 1 else "1 seed"
        means.append(replace(first, accuracy=statistics.fmean(p.accuracy for p, _ in runs),
                             summary=f"{row_label(params)} ({averaged})"))
    return means


def hypervolume(front: list[Point]) -> float:
    """Area the front dominates above the reference point (0, 0), in %-img/s."""
    return _hypervolume.hypervolume([(p.accuracy, p.throughput) for p in front])


def study_hypervolume(study: optuna.Study) -> float:
    """The volume ``best_trials`` dominate in every objective (accuracy and each target's
    throughput): the study's one progress figure; with one target, its front's area."""
    return _hypervolume.hypervolume([tuple(t.values) for t in study.best_trials])


def front_csv(front: list[Point]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FRONT_COLUMNS)
    writer.writeheader()
    for point in front:
        writer.writerow(asdict(point))
    return buffer.getvalue()


def front_table(front: list[Point]) -> str:
    lines = ["| trial | arch id | proxy top-1 % | img/s [95% interval] | params | GFLOPs | architecture |",
             "|---|---|---|---|---|---|---|"]
    for p in sorted(front, key=lambda p: -p.accuracy):
        spread = "predicted" if p.measured_times == 0 else f"[{p.throughput_low:.1f}, {p.throughput_high:.1f}]"
        lines.append(f"| {p.trial} | {p.arch_id} | {p.accuracy:.2f} | {p.throughput:.1f} {spread} | {p.params / 1e6:.2f}M "
                     f"| {p.flops / 1e9:.3f} | {p.summary} |")
    return "\n".join(lines)


def plot_front(points: list[Point], front: list[Point], path: Path, title: str, target: str,
               marked: dict[str, str] | None = None) -> None:
    """Scatter every architecture with its throughput interval as an error bar, draw the front
    as a staircase, label front points by trial and marked ids by name (e.g. LITv2-S)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def bars(chosen: list[Point]) -> list[list[float]]:
        return [[p.throughput - p.throughput_low for p in chosen], [p.throughput_high - p.throughput for p in chosen]]

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.errorbar([p.throughput for p in points], [p.accuracy for p in points], xerr=bars(points), fmt="o", ms=4,
                color="0.6", ecolor="0.75", elinewidth=1, capsize=2, label="evaluated (95% interval of img/s)")
    ordered = sorted(front, key=lambda p: p.throughput)
    ax.step([p.throughput for p in ordered], [p.accuracy for p in ordered], where="post", color="C3", lw=1.2)
    ax.errorbar([p.throughput for p in ordered], [p.accuracy for p in ordered], xerr=bars(ordered), fmt="o", ms=6,
                color="C3", ecolor="C3", elinewidth=1.2, capsize=3, label="Pareto front")
    for p in ordered:
        ax.annotate(f"#{p.trial}", (p.throughput, p.accuracy), textcoords="offset points", xytext=(4, -10), fontsize=7,
                    color="C3")
    for arch_id, label in (marked or {}).items():
        chosen = [p for p in points if p.arch_id == arch_id]  # one per seed in a study of several seeds
        if chosen:  # one scatter: one legend entry however many points carry the id
            ax.scatter([p.throughput for p in chosen], [p.accuracy for p in chosen], marker="*", s=160, color="C0",
                       zorder=5, label=label)
        for p in chosen:
            ax.annotate(label, (p.throughput, p.accuracy), textcoords="offset points", xytext=(6, 6))
    accuracy, throughput = OBJECTIVES
    ax.set_xlabel(f"{throughput.label} on {target} ({throughput.unit})")
    ax.set_ylabel(f"{accuracy.label} ({accuracy.unit})")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
