"""Can the proxy data set tell architectures apart?

A search ranks architectures by proxy accuracy, so the proxy data set must separate
architectures by more than seed noise. The check is the ``separability`` recipe - four tiny
proxies that differ only in their attention (HiLo at alpha 0.9, alpha 0, alpha 1, none) -
run as any ablation table, on the search engine, one training per (row, seed); a pair
separates when the 95 % interval of its top-1 difference excludes zero, both rows having at
least three seeds (the rule of every trained table, :mod:`experiments.intervals`)::

    python -m experiments.separability [--dataset pathfinder] [--seeds 3] [--epochs 20] [run options]

is ``python -m experiments run separability ...`` with an exit code: 0 when at least one
pair separates, 1 when none does (:func:`experiments.table.separated_pairs`). This module is a command: it is built on
:mod:`experiments.cli`, and no library module imports it.
"""
from __future__ import annotations

import sys
from typing import Sequence

from .cli import build_parser, guarded, run_command
from .intervals import difference_interval
from .table import separated_pairs

RECIPE = "separability"
__all__ = ["RECIPE", "main", "separated_pairs"]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(["run", RECIPE, *(sys.argv[1:] if argv is None else argv)])
    outcomes = []

    def run() -> int:
        outcomes.append(run_command(args))
        return outcomes[0].code

    code = guarded(run)
    if code:
        return code
    pairs = separated_pairs(outcomes[0].rows)
    print("separated pairs (the 95 % interval of the top-1 difference excludes 0, both rows n >= 3): "
          + ("; ".join(f"{a['row']} > {b['row']} {_difference(a, b)}" for a, b in pairs) or "none"))
    return 0 if pairs else 1


def _difference(better: dict, worse: dict) -> str:
    change = difference_interval(better["top1_values"], worse["top1_values"])
    return f"{change.mean:+.2f} [{change.low:+.2f}, {change.high:+.2f}]"


if __name__ == "__main__":
    sys.exit(main())
