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
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .identity import arch_id

if TYPE_CHECKING:
    from litv2 import LITConfig
    from litv2.latency import LatencyTable
    from litv2.target import Target

    from .search_space import SearchSpace

OVERHEAD_NETWORKS = 5
WITHIN = 0.10


def _progress(done: int, total: int, kind: str) -> None:
    from litv2.progress import show_count

    show_count("part", done, total, kind)


def build(space: "SearchSpace", target: "Target", out: Path | None, configs: list["LITConfig"],
          interpolate: bool = True) -> "LatencyTable":
    """Measure what the table at ``out`` (default: the node's) lacks to predict ``configs``'
    parts (every distinct part unless ``interpolate``), fit the overhead on
    ``OVERHEAD_NETWORKS`` of them spread over their sizes, save; print how far interpolation
    strays where it can be seen."""
    from litv2.latency import build_table, default_table_path, resume_table, save_table
    from litv2.measure import device_fingerprint

    path = out or default_table_path(target, device_fingerprint(target.device))
    table = resume_table(path)
    started = time.perf_counter()
    table = build_table(configs, target, table, (), _progress, lambda t: save_table(t, path), interpolate,
                        overhead_spread=OVERHEAD_NETWORKS)
    print(f"{len(table.parts)} parts of {len(configs)} architectures of {space.name!r} on {target.key}; "
          f"overhead x{table.overhead_factor:.3f} per forward; {time.perf_counter() - started:.0f} s; "
          f"saved to {path}")
    errors = [abs(e) for e in table.interpolation_errors()]
    if errors:
        print(f"interpolation: the line through their neighbours misses {len(errors)} measured parts by a median "
              f"{100 * statistics.median(errors):.1f} % (at most {100 * max(errors):.1f} %)")
    return table


def check(space: "SearchSpace", target: "Target", tables: dict[str, "LatencyTable"], configs: list["LITConfig"],
          plot: Path | None) -> list[dict]:
    """Predict each of ``configs`` from each of ``tables`` (by name), measure it once, and print
    the table and each one's error figures: tables built differently are compared on the
    very same measurements."""
    from litv2.latency import predict
    from litv2.measure import measure_config
    from litv2.progress import show_count

    predictions: list[dict[str, float]] = []
    for config in configs:  # all of them before anything is measured
        try:
            predictions.append({name: predict(config, target, table).img_s for name, table in tables.items()})
        except KeyError as error:
            raise ValueError(f"architecture {arch_id(config)}: {error.args[0]}: build the table from more "
                             "architectures (lut build --samples)") from None
    rows = []
    for index, (config, predicted) in enumerate(zip(configs, predictions), 1):
        measured = measure_config(config, target).median
        rows.append(dict(arch=arch_id(config), measured=measured, predicted=predicted,
                         error={name: value / measured - 1 for name, value in predicted.items()}))
        show_count("architecture", index, len(configs))
    names = list(tables)
    header = "".join(f"{'predicted':>11}{'error':>8}" for _ in names)
    print(f"{'arch':<14}{'measured':>10}{header}" + (f"   tables: {', '.join(names)}" if len(names) > 1 else ""))
    for row in rows:
        print(f"{row['arch']:<14}{row['measured']:>10.1f}" + "".join(
            f"{row['predicted'][name]:>11.1f}{100 * row['error'][name]:>+7.1f}%" for name in names))
    for name in names:
        signed = [r["error"][name] for r in rows]
        errors = [abs(e) for e in signed]
        offset = statistics.median(signed)
        level = [abs((1 + e) / (1 + offset) - 1) for e in signed]
        print(f"{space.name} on {target.key}{', ' + name if len(names) > 1 else ''}: {len(rows)} architectures, "
              f"median absolute error {100 * statistics.median(errors):.1f} %, {sum(e <= WITHIN for e in errors)}/"
              f"{len(rows)} within +-{100 * WITHIN:.0f} %; the median error is {100 * offset:+.1f} %, and around it "
              f"{100 * statistics.median(level):.1f} % ({sum(e <= WITHIN for e in level)}/{len(rows)} within)")
    if plot is not None:
        _scatter(rows, names, plot, f"{space.name} on {target.key}")
    return rows


def _scatter(rows: list[dict], names: list[str], path: Path, title: str) -> None:
    import matplotlib

    from litv2.files import atomic_write

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(4.5, 4.5))
    measured = [r["measured"] for r in rows]
    every = measured + [r["predicted"][name] for r in rows for name in names]
    low, high = min(every) * 0.9, max(every) * 1.1
    axes.plot([low, high], [low, high], color="grey", linewidth=0.8)
    axes.fill_between([low, high], [low * (1 - WITHIN), high * (1 - WITHIN)], [low * (1 + WITHIN), high * (1 + WITHIN)],
                      color="grey", alpha=0.15, label="+-10 %")
    for name in names:
        axes.scatter(measured, [r["predicted"][name] for r in rows], s=14, label=name if len(names) > 1 else None)
    axes.set(xlabel="measured img/s", ylabel="predicted img/s", title=title, xlim=(low, high), ylim=(low, high))
    axes.legend(loc="upper left")
    figure.tight_layout()
    atomic_write(path, lambda partial: figure.savefig(partial, dpi=120))
    plt.close(figure)

