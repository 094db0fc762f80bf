"""``python -m search bench-strategies``: how far a budget goes with each search strategy.

Every (sampler, scheduler) pair is replayed on the recorded table (:mod:`search.bench.replay`)
with several seeds; the report gives, per strategy, the hypervolume of the front against the
budget spent (median and interquartile range over seeds), the budget it needs to reach the
final hypervolume of full-fidelity random search (the baseline every cleverer strategy must
beat), and - to choose ``--min-epochs`` - the rank correlation between the accuracy after
each epoch and after the last, over the table's architectures.
"""
from __future__ import annotations

import functools
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..core.prediction import MEASURED, PREDICTED
from .replay import Curve, Strategy, TableJobs, replay
from .table import BenchTable

BASELINE = Strategy("random", "full")
NO_BASELINE = (f"the baseline {BASELINE.name} every strategy is measured against is left out: keep "
               f"'{BASELINE.sampler}' in --samplers and '{BASELINE.scheduler}' in --schedulers")
GRID_POINTS = 101  # budget fractions 0, 1%, ..., 100% at which curves are compared
DEFAULT_BUDGET_SHARE = 0.25  # of the cost of training the whole table at full fidelity


def table_cost(table: BenchTable, workers: int) -> float:
    """Device-seconds a full-fidelity search of every architecture would spend on ``workers`` cores:
    a count (one core), a measurement (every core) and every epoch (one core) each."""
    return sum(row.count_seconds + row.measure_seconds * workers + row.epoch_seconds * table.epochs
               for row in table.rows)


def default_budget(table: BenchTable, workers: int) -> str:
    return f"{DEFAULT_BUDGET_SHARE * table_cost(table, workers):.0f}cpu-s"


@functools.lru_cache(maxsize=2)
def _table_jobs(path: str) -> TableJobs:
    """One per process: mapping every proxy back to its row takes a second."""
    return TableJobs(BenchTable.load(path))


def _replay_one(args: tuple[str, Strategy, int, int, str]) -> Curve:
    path, strategy, seed, workers, budget = args
    return replay(_table_jobs(path), strategy, seed, workers, budget)


def _replay_worker() -> None:
    """Replays run side by side, one per core: samplers' torch (GP) must not spread over all of
    them, and thousands of replayed studies would repeat Optuna's notices thousands of times."""
    import optuna
    import torch

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # GP warns on every conditional parameter it samples at random


def run_strategies(table_path: Path, strategies: Sequence[Strategy], seeds: int, workers: int, budget: str,
                   processes: int, progress: Callable[[Curve, int, int], None] | None = None) -> list[Curve]:
    """Replay every strategy with seeds 0..seeds-1, ``processes`` replays at a time (results in a fixed order)."""
    tasks = [(str(table_path), strategy, seed, workers, budget) for strategy in strategies for seed in range(seeds)]
    curves = []
    if processes <= 1:  # in this process (tests): its thread count and logging are left as they are
        for task in tasks:
            curves.append(_replay_one(task))
            if progress:
                progress(curves[-1], len(curves), len(tasks))
        return curves
    with ProcessPoolExecutor(max_workers=processes, initializer=_replay_worker) as pool:
        for curve in pool.map(_replay_one, tasks):
            curves.append(curve)
            if progress:
                progress(curve, len(curves), len(tasks))
    return curves


# ---------------------------------------------------------------------- summaries
@dataclass(frozen=True)
class StrategySummary:
    """One strategy over its seeds. Fractions are of the budget; ``None``: not reached."""

    name: str
    seeds: int
    final: tuple[float, float, float]  # hypervolume: 25th, 50th, 75th percentile
    trained: float  # median architectures trained
    to_target: tuple[float | None, float | None, float | None]  # budget fraction to reach the baseline's final HV
    reached: int  # seeds that reached it


def _quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    low, mid, high = np.percentile(np.asarray(values, dtype=float), [25, 50, 75])
    return float(low), float(mid), float(high)


def _quartiles_or_never(values: Sequence[float | None]) -> tuple[float | None, float | None, float | None]:
    """Quartiles where a seed that never got there counts as worse than any that did."""
    ranked = np.array([np.inf if v is None else v for v in values], dtype=float)
    return tuple(None if np.isinf(q) else float(q)
                 for q in np.percentile(ranked, [25, 50, 75], method="inverted_cdf"))  # type: ignore[return-value]


def baseline_target(curves: Sequence[Curve]) -> float:
    """The median final hypervolume of full-fidelity random search."""
    finals = [c.points[-1][1] for c in curves if c.strategy == BASELINE.name]
    if not finals:
        raise ValueError(NO_BASELINE)
    return float(np.median(finals))


def summarise(curves: Sequence[Curve], strategies: Sequence[Strategy]) -> tuple[float, list[StrategySummary]]:
    target = baseline_target(curves)
    rows = []
    for strategy in strategies:
        mine = [c for c in curves if c.strategy == strategy.name]
        to_target = [None if (b := c.budget_to_reach(target)) is None else b / c.budget for c in mine]
        rows.append(StrategySummary(
            strategy.name, len(mine), _quartiles([c.points[-1][1] for c in mine]),
            float(np.median([c.trained for c in mine])), _quartiles_or_never(to_target),
            sum(1 for t in to_target if t is not None)))
    return target, rows


def hypervolume_grid(curves: Sequence[Curve]) -> tuple[np.ndarray, np.ndarray]:
    """Budget fractions and each curve's hypervolume there (one row per curve)."""
    fractions = np.linspace(0.0, 1.0, GRID_POINTS)
    values = np.array([[c.hypervolume_at(f * c.budget) for f in fractions] for c in curves])
    return fractions, values


def kendall_by_epoch(table: BenchTable) -> list[tuple[int, float]]:
    """Kendall tau between each epoch's accuracy and the last epoch's, over the table's architectures."""
    from scipy.stats import kendalltau

    final = [row.epoch_accuracies[-1] for row in table.rows]
    return [(epoch, float(kendalltau([row.epoch_accuracies[epoch - 1] for row in table.rows], final).statistic))
            for epoch in range(1, table.epochs + 1)]


# ---------------------------------------------------------------------- report
def _percent(value: float | None) -> str:
    return "not reached" if value is None else f"{100 * value:.0f}%"


def report_text(table: BenchTable, budget_seconds: float, workers: int, target: float,
                rows: Sequence[StrategySummary], taus: Sequence[tuple[int, float]], rungs: Sequence[int]) -> str:
    meta = table.meta
    lines = [
        f"table: {len(table.rows)} architectures of space {meta['space']}, {meta['dataset']}, {meta['epochs']} epochs, "
        f"throughput on {meta['target']} ({meta['machine']['cpu']}, {meta['machine']['cores']} cores)",
        f"budget: {budget_seconds:.0f} cpu-s on {workers} simulated workers; target: the final hypervolume of "
        f"{BASELINE.name} (median over seeds) = {target:.1f} %-img/s",
        "",
        "| strategy | seeds | final HV median [IQR] | trained (median) | budget to reach random+full's final HV: "
        "median [IQR] | seeds that reach it |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        low, mid, high = r.final
        tlow, tmid, thigh = r.to_target
        lines.append(f"| {r.name} | {r.seeds} | {mid:.1f} [{low:.1f}, {high:.1f}] | {r.trained:.0f} | "
                     f"{_percent(tmid)} [{_percent(tlow)}, {_percent(thigh)}] | {r.reached}/{r.seeds} |")
    lines += ["", "Kendall tau between the accuracy after each epoch and after the last "
              f"(over {len(table.rows)} architectures; * = a mo-asha rung):", "",
              "| epoch | " + " | ".join(f"{e}{'*' if e in rungs else ''}" for e, _ in taus) + " |",
              "|---" * (len(taus) + 1) + "|",
              "| tau | " + " | ".join(f"{t:.2f}" for _, t in taus) + " |"]
    return "\n".join(lines)


def plot_curves(curves: Sequence[Curve], strategies: Sequence[Strategy], target: float, path: Path,
                title: str) -> None:
    """Median hypervolume against budget fraction per strategy, with the interquartile band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    colours = list(dict.fromkeys((s.sampler, s.throughput) for s in strategies))  # a colour a sampler and source
    for index, strategy in enumerate(strategies):
        mine = [c for c in curves if c.strategy == strategy.name]
        fractions, values = hypervolume_grid(mine)
        low, mid, high = np.percentile(values, [25, 50, 75], axis=0)
        style = "-" if strategy.scheduler == "mo-asha" else "--"
        color = f"C{colours.index((strategy.sampler, strategy.throughput)) % 10}"
        width = 2.2 if strategy.throughput == PREDICTED else 1.5
        ax.plot(100 * fractions, mid, style, color=color, lw=width, label=strategy.name)
        ax.fill_between(100 * fractions, low, high, color=color, alpha=0.12 if index % 2 else 0.08, lw=0)
    ax.axhline(target, color="0.3", lw=0.8, ls=":", label=f"final HV of {BASELINE.name}")
    ax.set_ylim(bottom=0.8 * target)  # the early climb is alike for all; the race is at the top
    ax.set_xlabel("budget spent (% of the budget)")
    ax.set_ylabel("hypervolume (%-img/s, ref. 0, 0)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    temporary = path.with_name(path.stem + ".tmp.png")
    fig.savefig(temporary)
    plt.close(fig)
    os.replace(temporary, path)


def write_curves_csv(curves: Sequence[Curve], path: Path) -> None:
    fractions, values = hypervolume_grid(curves)
    lines = ["strategy,seed,budget_fraction,hypervolume"]
    for curve, row in zip(curves, values):
        lines += [f"{curve.strategy},{curve.seed},{f:.2f},{v:.3f}" for f, v in zip(fractions, row)]
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("\n".join(lines) + "\n")
    os.replace(temporary, path)


def bench_strategies(table_path: Path, samplers: Sequence[str], schedulers: Sequence[str], seeds: int,
                     workers: int, budget: str | None, out: Path, processes: int,
                     say: Callable[[str], None] = print, throughputs: Sequence[str] = (MEASURED,)) -> str:
    """Replay, summarise, and write ``out``/strategies.md, strategies.png and curves.csv."""
    from ..core.budget import parse_budget
    from ..core.scheduler import MOASHA

    table = _table_jobs(str(table_path)).table  # refuses, before anything runs, a table missing architectures
    budget = budget or default_budget(table, workers)
    budget_seconds = parse_budget(budget).seconds
    strategies = [Strategy(sampler, scheduler, throughput) for throughput in throughputs for sampler in samplers
                  for scheduler in schedulers]
    if BASELINE not in strategies:  # refused before minutes of replays, not after
        raise ValueError(NO_BASELINE)
    if PREDICTED in throughputs and any(row.predicted_throughput is None for row in table.rows):
        raise ValueError(f"--throughputs predicted needs the table's predictions: add them with 'python -m search "
                         f"bench-table --predict {table_path} --lut FILE --out ...'")
    say(f"replaying {len(strategies)} strategies x {seeds} seeds on {table_path} ({len(table.rows)} architectures), "
        f"budget {budget} ({budget_seconds:.0f} cpu-s; the whole table at full fidelity costs "
        f"{table_cost(table, workers):.0f}), {workers} simulated workers, {processes} processes")
    started = time.perf_counter()

    def progress(curve: Curve, done: int, total: int) -> None:
        say(f"[{done}/{total}] {curve.strategy} seed {curve.seed}: {curve.trained} trained, "
            f"HV {curve.points[-1][1]:.1f}, spent {curve.spent:.0f}/{curve.budget:.0f} cpu-s "
            f"({time.perf_counter() - started:.0f} s)")

    curves = run_strategies(table_path, strategies, seeds, workers, budget, processes, progress)
    target, rows = summarise(curves, strategies)
    taus = kendall_by_epoch(table)
    text = report_text(table, budget_seconds, workers, target, rows, taus, MOASHA(table.epochs).rungs)
    out.mkdir(parents=True, exist_ok=True)
    report = out / "strategies.md"
    temporary = report.with_name(report.name + ".tmp")
    temporary.write_text(text + "\n")
    os.replace(temporary, report)
    plot_curves(curves, strategies, target, out / "strategies.png",
                f"{len(table.rows)}-architecture table ({table.meta['space']}), {seeds} seeds, budget {budget}")
    write_curves_csv(curves, out / "curves.csv")
    say(f"replayed in {time.perf_counter() - started:.0f} s; wrote {report}, {out / 'strategies.png'}, "
        f"{out / 'curves.csv'}")
    return text


def default_processes() -> int:
    return max(1, min(os.cpu_count() or 1, 4))
