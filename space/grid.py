"""Grid walks of define-by-run builders: every architecture a finite space can produce.

A define-by-run space has no static list of dimensions - which ones exist depends on
earlier draws (no window for an MLP-only stage, no alpha where the window is 1) - so
the grid is found by running the sampling code itself with a replaying ``draw``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .dims import Dimension

# draw(name, dimension) -> value, called for every dimension that is not fixed.
Draw = Callable[[str, Dimension], Any]


class Continuous(ValueError):
    """A grid walk reached a continuous dimension: the space is infinite."""


class _Branch(Exception):
    """A grid walk reached a dimension it has not fixed yet."""

    def __init__(self, name: str, values: Sequence[Any]) -> None:
        super().__init__(name)
        self.name = name
        self.values = values


def walk(build: Callable[[Draw], Any]) -> Iterator[tuple[dict[str, Any], Any]]:
    """Every ``(params, config)`` a define-by-run ``build`` can produce, depth first.

    Re-runs ``build`` with a growing set of fixed draws; the first draw outside the set
    stops the run and queues one continuation per value. Conditional dimensions are thus
    walked exactly where they apply, with the very code that samples.
    """
    pending: list[dict[str, Any]] = [{}]
    while pending:
        fixed = pending.pop()

        def draw(name: str, dim: Dimension, fixed: dict[str, Any] = fixed) -> Any:
            if name in fixed:
                return fixed[name]
            values = dim.grid()
            if values is None:
                raise Continuous(name)
            raise _Branch(name, values)

        try:
            config = build(draw)
        except _Branch as branch:
            pending.extend({**fixed, branch.name: value} for value in reversed(branch.values))
            continue
        yield fixed, config


def row_label(params: dict[str, Any]) -> str:
    """A fixed-point study's row name from its trial parameters (the ``params`` :func:`walk`
    yields): the point's label, or its swept values (``alpha=0.2``). The ablation tables and the
    search's front both name rows, so the name is made here, below either of them."""
    if "point" in params:
        return str(params["point"])
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "base"
