"""Pareto fronts of (proxy accuracy, measured throughput): rows, hypervolume, CSV and plot.

The front is Optuna's own ``Study.best_trials`` (feasible COMPLETE trials only, so trials
stopped early by successive halving, infeasible ones and duplicates answered from the
study never appear), and the hypervolume is Optuna's, against the reference point
(0 % accuracy, 0 img/s): it only grows as the search improves, which makes it a readable
progress metric per trial. Objectives come from :data:`search.objectives.OBJECTIVES`.
"""
from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import optuna
from optuna._hypervolume import compute_hypervolume

from .objectives import OBJECTIVES

FRONT_COLUMNS = ("trial", "arch_id", "accuracy", "throughput", "params", "flops", "summary")


@dataclass(frozen=True)
class Point:
    trial: int
    arch_id: str
    accuracy: float
    throughput: float
    params: int
    flops: int
    summary: str


def _point(trial: optuna.trial.FrozenTrial) -> Point:
    attrs = trial.user_attrs
    return Point(trial.number, attrs.get("arch_id", ""), trial.values[0], trial.values[1],
                 int(attrs.get("params", 0)), int(attrs.get("flops", 0)), attrs.get("summary", ""))


def evaluated_points(study: optuna.Study) -> list[Point]:
    """Every architecture trained to full fidelity (duplicates are never COMPLETE)."""
    return [_point(t) for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]


def pareto_front(study: optuna.Study) -> list[Point]:
    """The study's feasible Pareto set, by throughput."""
    return sorted((_point(t) for t in study.best_trials), key=lambda p: (p.throughput, p.accuracy))


def hypervolume(front: list[Point]) -> float:
    """Area the front dominates above the reference point (0, 0), in %-img/s."""
    if not front:
        return 0.0
    signs = np.array([o.sign for o in OBJECTIVES])
    losses = -signs * np.array([[p.accuracy, p.throughput] for p in front])
    return float(compute_hypervolume(losses, np.zeros(len(OBJECTIVES))))


def front_csv(front: list[Point]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FRONT_COLUMNS)
    writer.writeheader()
    for point in front:
        writer.writerow(asdict(point))
    return buffer.getvalue()


def front_table(front: list[Point]) -> str:
    lines = ["| trial | arch id | proxy top-1 % | img/s | params | GFLOPs | architecture |", "|---|---|---|---|---|---|---|"]
    for p in sorted(front, key=lambda p: -p.accuracy):
        lines.append(f"| {p.trial} | {p.arch_id} | {p.accuracy:.2f} | {p.throughput:.1f} | {p.params / 1e6:.2f}M "
                     f"| {p.flops / 1e9:.3f} | {p.summary} |")
    return "\n".join(lines)


def plot_front(points: list[Point], front: list[Point], path: Path, title: str, target: str,
               marked: dict[str, str] | None = None) -> None:
    """Scatter every architecture, draw the front as a staircase and label marked ids (e.g. LITv2-S)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.scatter([p.throughput for p in points], [p.accuracy for p in points], s=18, color="0.6", label="evaluated")
    ordered = sorted(front, key=lambda p: p.throughput)
    ax.step([p.throughput for p in ordered], [p.accuracy for p in ordered], where="post", color="C3", lw=1.2)
    ax.scatter([p.throughput for p in ordered], [p.accuracy for p in ordered], s=36, color="C3", label="Pareto front")
    for arch_id, label in (marked or {}).items():
        for p in points:
            if p.arch_id == arch_id:
                ax.scatter([p.throughput], [p.accuracy], marker="*", s=160, color="C0", zorder=5, label=label)
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
