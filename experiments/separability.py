"""Can the proxy data set tell architectures apart?

A search ranks architectures by proxy accuracy, so the proxy data set must separate
architectures by more than seed noise. The check is the ``separability`` recipe - four tiny
proxies that differ only in their attention (HiLo at alpha 0.9, alpha 0, alpha 1, none) -
run as any ablation table, on the search engine, one training per (row, seed); its table
lists the pairs whose mean top-1 differ by more than twice the larger of their two standard
deviations::

    python -m experiments.separability [--dataset pathfinder] [--seeds 3] [--epochs 20] [run options]

is ``python -m experiments run separability ...`` with an exit code: 0 when at least one
pair separates, 1 when none does. Every trained table prints the same pairs.
"""
from __future__ import annotations

import itertools
import sys
from typing import Any, Sequence

RECIPE = "separability"


def separated_pairs(rows: Sequence[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Pairs of table rows (better first) with at least two seeds each whose mean top-1 differ
    by more than twice the larger of their two standard deviations."""
    scored = [row for row in rows if row.get("seeds", 0) > 1 and row.get("top1_std") is not None]
    pairs = []
    for a, b in itertools.combinations(scored, 2):
        if abs(a["top1"] - b["top1"]) > 2 * max(a["top1_std"], b["top1_std"]):
            pairs.append((a, b) if a["top1"] >= b["top1"] else (b, a))
    return pairs


def main(argv: Sequence[str] | None = None) -> int:
    from .cli import build_parser, guarded, run_command

    args = build_parser().parse_args(["run", RECIPE, *(sys.argv[1:] if argv is None else argv)])
    outcomes = []

    def run() -> int:
        outcomes.append(run_command(args))
        return outcomes[0].code

    code = guarded(run)
    return code or (0 if separated_pairs(outcomes[0].rows) else 1)


if __name__ == "__main__":
    sys.exit(main())
