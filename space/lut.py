"""``python -m space lut build|check``: a space's latency table, and how well it predicts.

``build`` measures every part (:mod:`litv2.latency`) that the space's architectures are made
of - every architecture of a finite space, ``--samples`` random draws of an infinite one -
and fits the per-forward overhead on a few whole networks; the table is saved after every
part, so an interrupted build resumes. ``check`` draws ``--n`` architectures, predicts and
measures each, and prints the errors (median absolute, share within +-10 %) with a scatter
plot of predicted against measured.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .identity import arch_id

if TYPE_CHECKING:
    from litv2 import LITConfig
    from litv2.latency import LatencyTable
    from litv2.target import Target

    from .search_space import SearchSpace

OVERHEAD_NETWORKS = 3
WITHIN = 0.10


def _progress(done: int, total: int, kind: str) -> None:
    print(f"\r  part {done}/{total} ({kind})", end="" if done < total else "\n", file=sys.stderr, flush=True)


def build(space: "SearchSpace", target: "Target", out: Path | None, configs: list["LITConfig"],
          overhead_configs: list["LITConfig"]) -> "LatencyTable":
    """Measure what ``configs``' parts the table at ``out`` (default: the node's) lacks, fit the
    overhead on ``overhead_configs``, save."""
    from litv2.latency import build_table, default_table_path, load_table, save_table
    from litv2.measure import device_fingerprint

    path = out or default_table_path(target, device_fingerprint(target.device))
    table = load_table(path) if path.is_file() else None
    started = time.perf_counter()
    table = build_table(configs, target, table, overhead_configs, _progress, lambda t: save_table(t, path))
    print(f"{len(table.parts)} parts of {len(configs)} architectures of {space.name!r} on {target.key}; "
          f"overhead x{table.overhead_factor:.3f} per forward; {time.perf_counter() - started:.0f} s; "
          f"saved to {path}")
    return table


def check(space: "SearchSpace", target: "Target", table: "LatencyTable", configs: list["LITConfig"],
          plot: Path | None) -> list[dict]:
    """Predict and measure each of ``configs``; print the table and the error figures."""
    from litv2.latency import predict
    from litv2.measure import measure_config

    rows = []
    for index, config in enumerate(configs, 1):
        predicted = predict(config, target, table).img_s
        measured = measure_config(config, target).median
        rows.append(dict(arch=arch_id(config), predicted=predicted, measured=measured,
                         error=predicted / measured - 1))
        print(f"\r  architecture {index}/{len(configs)}", end="" if index < len(configs) else "\n",
              file=sys.stderr, flush=True)
    print(f"{'arch':<14}{'predicted':>11}{'measured':>10}{'error':>8}")
    for row in rows:
        print(f"{row['arch']:<14}{row['predicted']:>11.1f}{row['measured']:>10.1f}{100 * row['error']:>+7.1f}%")
    errors = [abs(r["error"]) for r in rows]
    print(f"{space.name} on {target.key}: {len(rows)} architectures, median absolute error "
          f"{100 * statistics.median(errors):.1f} %, {sum(e <= WITHIN for e in errors)}/{len(rows)} within "
          f"+-{100 * WITHIN:.0f} %")
    if plot is not None:
        _scatter(rows, plot, f"{space.name} on {target.key}")
    return rows


def _scatter(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    from litv2.files import atomic_write

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(4.5, 4.5))
    measured, predicted = [r["measured"] for r in rows], [r["predicted"] for r in rows]
    low, high = min(measured + predicted) * 0.9, max(measured + predicted) * 1.1
    axes.plot([low, high], [low, high], color="grey", linewidth=0.8)
    axes.fill_between([low, high], [low * (1 - WITHIN), high * (1 - WITHIN)], [low * (1 + WITHIN), high * (1 + WITHIN)],
                      color="grey", alpha=0.15, label="+-10 %")
    axes.scatter(measured, predicted, s=14)
    axes.set(xlabel="measured img/s", ylabel="predicted img/s", title=title, xlim=(low, high), ylim=(low, high))
    axes.legend(loc="upper left")
    figure.tight_layout()
    atomic_write(path, lambda partial: figure.savefig(partial, dpi=120))
    plt.close(figure)

