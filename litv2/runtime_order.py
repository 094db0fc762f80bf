"""How much the runtime matters: the same architectures measured in several runtimes (targets
that differ in their runtime, :mod:`litv2.runtimes`), and how their order changes.

A search ranks by one runtime's figures; if another runtime would serve the model, what
matters is whether it orders the architectures the same way. :func:`compare_runtimes`
measures every architecture on every target with the one protocol, and
:class:`RuntimeComparison` gives the speed-ups, Kendall's tau between every pair of targets
and the pairs of architectures whose order flips. ``python -m litv2.bench runtimes`` runs it
on named configs, ``python -m space runtimes`` on draws of a space.
"""
from __future__ import annotations

import functools
import itertools
import statistics
from dataclasses import dataclass, field
from typing import Callable

from .config import LITConfig
from .measure import measure_config
from .progress import show_count
from .protocol import MeasureProtocol
from .target import Target


@dataclass
class RuntimeComparison:
    """img/s of each architecture (by name) on each target (by key), with the seconds each
    runtime took to start: ONNX export and session, ``torch.compile``'s compilation (in
    the first call), apart from the measurement."""

    targets: list[Target]
    img_s: dict[str, dict[str, float]] = field(default_factory=dict)
    start_seconds: dict[str, dict[str, float]] = field(default_factory=dict)

    def kendall_tau(self, a: Target, b: Target) -> float:
        """Kendall's tau-b between the architectures' img/s on ``a`` and on ``b`` (1: the same order)."""
        from scipy.stats import kendalltau

        names = list(self.img_s)
        return float(kendalltau([self.img_s[n][a.key] for n in names], [self.img_s[n][b.key] for n in names]).statistic)

    def flips(self, a: Target, b: Target) -> list[tuple[str, str]]:
        """The pairs (x, y) that ``a`` puts x faster than y and ``b`` y faster than x."""
        return [(x, y) if self.img_s[x][a.key] > self.img_s[y][a.key] else (y, x)
                for x, y in itertools.combinations(self.img_s, 2)
                if (self.img_s[x][a.key] - self.img_s[y][a.key]) * (self.img_s[x][b.key] - self.img_s[y][b.key]) < 0]

    def report(self) -> str:
        """The table (img/s, speed-up over the first target), Kendall's tau and the flips of
        every pair of targets, as Markdown."""
        first = self.targets[0]
        head = ["arch", *(t.key for t in self.targets), *(f"{t.runtime} / {first.runtime}" for t in self.targets[1:])]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, figures in self.img_s.items():
            cells = [name, *(f"{figures[t.key]:.1f}" for t in self.targets),
                     *(f"{figures[t.key] / figures[first.key]:.2f}x" for t in self.targets[1:])]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        for target in self.targets[1:]:
            ratios = [f[target.key] / f[first.key] for f in self.img_s.values()]
            starts = [s[target.key] for s in self.start_seconds.values()]
            lines.append(f"{target.runtime} / {first.runtime}: {min(ratios):.2f}x to {max(ratios):.2f}x (median "
                         f"{statistics.median(ratios):.2f}x); start-up (export, session, compilation) median "
                         f"{statistics.median(starts):.1f} s a network")
        for a, b in itertools.combinations(self.targets, 2):
            flips = self.flips(a, b)
            shown = ", ".join(f"{x} > {y}" for x, y in flips[:6]) + (", ..." if len(flips) > 6 else "")
            lines.append(f"Kendall tau {a.runtime} vs {b.runtime}: {self.kendall_tau(a, b):.3f}; "
                         f"{len(flips)} of {len(self.img_s) * (len(self.img_s) - 1) // 2} pairs flip"
                         + (f" ({a.runtime} order: {shown})" if flips else ""))
        return "\n".join(lines)


def compare_runtimes(configs: dict[str, LITConfig], targets: list[Target], protocol: MeasureProtocol = MeasureProtocol(),
                     progress: Callable[[int, int], None] = functools.partial(show_count, "measurement")
                     ) -> RuntimeComparison:
    """Measure every one of ``configs`` (by name) on every one of ``targets``, target by target
    within each architecture (so a drift of the node moves every runtime's figure alike);
    ``progress(done, total)`` after each measurement (default: a count on stderr)."""
    comparison = RuntimeComparison(targets)
    total = len(configs) * len(targets)
    for index, (name, config) in enumerate(configs.items()):
        for offset, target in enumerate(targets, 1):
            figure = measure_config(config, target, protocol=protocol)
            comparison.img_s.setdefault(name, {})[target.key] = figure.median
            comparison.start_seconds.setdefault(name, {})[target.key] = figure.prepare_seconds + figure.first_call_seconds
            progress(index * len(targets) + offset, total)
    return comparison


def write_report(comparison: RuntimeComparison, out: str | None) -> None:
    """Print the report, and write it to ``out`` too (atomically) if given."""
    from .files import atomic_write_text

    report = comparison.report()
    print(report)
    if out is not None:
        atomic_write_text(out, report + "\n")

