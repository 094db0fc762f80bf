"""Pareto fronts of (proxy accuracy, measured throughput): rows, hypervolume, CSV and plot.

Both objectives are maximised. Hypervolume is the area dominated by the front above the
reference point (0 % accuracy, 0 img/s), in %-img/s; it only grows as the search improves,
which makes it a readable progress metric per trial.
"""
from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass
from pathlib import Path

import optuna

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


def evaluated_points(study: optuna.Study) -> list[Point]:
    """One point per distinct architecture that finished (duplicates of earlier trials skipped)."""
    points = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        attrs = trial.user_attrs
        if "duplicate_of" in attrs or "arch_id" not in attrs:
            continue
        points.append(Point(trial.number, attrs["arch_id"], trial.values[0], trial.values[1],
                            int(attrs.get("params", 0)), int(attrs.get("flops", 0)), attrs.get("summary", "")))
    return points


def pareto_front(points: list[Point]) -> list[Point]:
    """Points not dominated by any other (>= on both objectives, > on one), by throughput."""
    front = [
        p for p in points
        if not any(q.accuracy >= p.accuracy and q.throughput >= p.throughput
                   and (q.accuracy > p.accuracy or q.throughput > p.throughput) for q in points)
    ]
    return sorted(front, key=lambda p: (p.throughput, p.accuracy))


def hypervolume(front: list[Point]) -> float:
    """Area dominated by a 2-objective front above (0, 0)."""
    area, last_throughput = 0.0, 0.0
    for point in sorted(front, key=lambda p: p.throughput):
        if point.throughput > last_throughput and point.accuracy > 0:
            # Each strip to the right of the previous point is bounded by this point's accuracy,
            # which is the highest accuracy available at that throughput or above.
            area += (point.throughput - last_throughput) * max(
                q.accuracy for q in front if q.throughput >= point.throughput)
            last_throughput = point.throughput
    return area


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
    ax.set_xlabel(f"measured throughput on {target} (img/s)")
    ax.set_ylabel("proxy top-1 (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
