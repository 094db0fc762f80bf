"""The paper's figures beside ours: what a recipe's ``paper`` block holds, and how our changes
compare with the paper's in direction.

A proxy trained for minutes on an embedded data set cannot reproduce ImageNet accuracies,
but a reader can check that every change goes the way the paper's does. A recipe carries
the published figures where the paper gives them, and the directions it reports where it
gives none::

    experiment:
      paper:
        source: LITv2 paper, Table 5 ...        # printed under the table
        figures:                                 # the paper's values, by row label
          LITv1-S: {params: 27.0e6, flops: 4.1e9, top1: 81.5}
        changes:                                 # directions the paper reports without a figure
          + ConvFFN: {top1: up}

The figures are those of ``shared/reference/paper_facts.md``, checked against the paper and
the official code (``tests/test_ablation_statistics.py`` holds the shipped recipes to them);
the directions of ``changes`` are those the paper's text reports for its ablations. A
change's direction in the paper comes from two rows' figures when both have one, else from
``changes``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from space import SpaceError
from space.dims import check_keys

from .table import Column, Row, bases, changes, separations

UP, DOWN = "up", "down"
PAPER_IMG_SIZE = 224  # the resolution of the paper's ImageNet figures (FLOPs, throughput)
DIRECTIONS = (UP, DOWN)


@dataclass(frozen=True)
class Metric:
    """A figure the paper can give: how it is named and printed, the row key of ours (None: we
    have no such figure, e.g. COCO AP), and whether ours is exact (a count: any change is real)."""

    label: str
    show: Callable[[float], str]
    ours: str | None = None
    exact: bool = False


METRICS: dict[str, Metric] = {
    "params": Metric("params", lambda v: f"{v / 1e6:.0f}M", "params", exact=True),
    "flops": Metric("FLOPs", lambda v: f"{v / 1e9:.2f}G" if round(v / 1e7) % 10 else f"{v / 1e9:.1f}G", "flops",
                    exact=True),
    "throughput": Metric("img/s", lambda v: f"{v:,.0f} img/s", "throughput"),
    "top1": Metric("top-1", lambda v: f"{v:.2f} %" if round(v * 100) % 10 else f"{v:.1f} %", "top1"),
    "test_memory_gb": Metric("test memory", lambda v: f"test memory {v:.1f} GB"),
    "retinanet_ap": Metric("RetinaNet AP", lambda v: f"RetinaNet {v:.1f} AP"),
    "maskrcnn_ap_box": Metric("Mask R-CNN box AP", lambda v: f"Mask R-CNN {v:.1f} APb"),
    "maskrcnn_ap_mask": Metric("Mask R-CNN mask AP", lambda v: f"{v:.1f} APm"),
}
PAPER_KEYS = ("source", "figures", "changes")


@dataclass(frozen=True)
class PaperFigures:
    """The paper's side of a table: ``figures[row][metric]`` values, ``changes[row][metric]``
    directions reported without figures, and where they come from."""

    source: str
    figures: dict[str, dict[str, float]] = field(default_factory=dict)
    changes: dict[str, dict[str, str]] = field(default_factory=dict)

    def text(self, row: str) -> str:
        """The paper's figures of ``row`` in one cell (``-`` where it gives none)."""
        values = self.figures.get(row, {})
        return ", ".join(metric.show(values[name]) for name, metric in METRICS.items() if name in values) or "-"

    def direction(self, row: str, versus: str, metric: str) -> str | None:
        """Which way the paper moves ``metric`` from row ``versus`` to ``row``, if it says."""
        mine, theirs = self.value(row, metric), self.value(versus, metric)
        if mine is not None and theirs is not None and mine != theirs:
            return UP if mine > theirs else DOWN
        return self.changes.get(row, {}).get(metric)

    def value(self, row: str, metric: str) -> float | None:
        return self.figures.get(row, {}).get(metric)


def parse_paper(block: Any, labels: list[str]) -> PaperFigures:
    """A recipe's ``experiment.paper`` block; every row label must be one of ``labels``.

    Raises:
        SpaceError: naming the field and the bad value.
    """
    where = "experiment.paper"
    if not isinstance(block, dict):
        raise SpaceError(where, f"expected a mapping with {', '.join(PAPER_KEYS)}, got {block!r}")
    check_keys(block, PAPER_KEYS, where)
    source = block.get("source")
    if not isinstance(source, str) or not source.strip():
        raise SpaceError(f"{where}.source", "expected the text naming where the figures come from")
    figures = {row: {name: _number(value, f"{where}.figures.{row}.{name}") for name, value in values.items()}
               for row, values in _rows(block.get("figures", {}), labels, f"{where}.figures").items()}
    changes = {row: {name: _direction(value, f"{where}.changes.{row}.{name}") for name, value in values.items()}
               for row, values in _rows(block.get("changes", {}), labels, f"{where}.changes").items()}
    return PaperFigures(source.strip(), figures, changes)


def _rows(raw: Any, labels: list[str], where: str) -> dict[str, dict[str, Any]]:
    if not isinstance(raw, dict):
        raise SpaceError(where, f"expected a mapping of row labels, got {raw!r}")
    for row, values in raw.items():
        if row not in labels:
            raise SpaceError(f"{where}.{row}", f"is not a row of this recipe; expected one of {', '.join(labels)}")
        if not isinstance(values, dict):
            raise SpaceError(f"{where}.{row}", f"expected a mapping of {', '.join(METRICS)}, got {values!r}")
        check_keys(values, tuple(METRICS), f"{where}.{row}")
    return raw


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpaceError(where, f"expected a number, got {value!r}")
    return float(value)


def _direction(value: Any, where: str) -> str:
    if value not in DIRECTIONS:
        raise SpaceError(where, f"expected one of {', '.join(DIRECTIONS)}, got {value!r}")
    return value


@dataclass(frozen=True)
class Verdict:
    """One change the paper gives a direction for, beside ours: ``ours`` is None where we have
    no figure or no change; ``separated`` is ours' verdict (None: none, e.g. fewer than 3 seeds)."""

    row: str
    versus: str
    metric: str
    paper: str
    ours: str | None
    separated: bool | None

    @property
    def agrees(self) -> bool | None:
        return None if self.ours is None else self.ours == self.paper

    def text(self) -> str:
        label = METRICS[self.metric].label
        if self.ours is None:
            return f"{label}: paper {self.paper}, ours unchanged or unknown"
        word = "agrees" if self.agrees else "disagrees"
        hedge = {True: "", False: ", not separated", None: ", no verdict"}[self.separated]
        return f"{label}: paper {self.paper}, ours {self.ours} ({word}{hedge})"


def paper_verdicts(rows: list[Row], columns: list[Column], paper: PaperFigures) -> list[Verdict]:
    """Every change the paper gives a direction for, with ours beside it. Sets each row's
    ``paper`` (its figures) and ``paper_verdict`` (its changes against the paper's), the
    cells of :data:`PAPER_COLUMNS`."""
    found = []
    for row, base, delta, apart in zip(rows, bases(rows), changes(rows, columns), separations(rows, columns)):
        row["paper"] = paper.text(row["row"])
        mine = []
        for name, metric in METRICS.items():
            direction = paper.direction(row["row"], base["row"], name) if base is not row else None
            if direction is None:
                continue
            change = delta.get(metric.ours) if metric.ours else None
            ours = None if not change else (UP if change > 0 else DOWN)
            mine.append(Verdict(row["row"], base["row"], name, direction, ours,
                                True if metric.exact else apart.get(metric.ours)))
        row["paper_verdict"] = "; ".join(v.text() for v in mine) or "-"
        found += mine
    return found


def verdict_lines(verdicts: list[Verdict], paper: PaperFigures | None) -> list[str]:
    """The table's summary of its agreement with the paper, and where the paper's side comes from."""
    if paper is None:
        return []
    judged = [v for v in verdicts if v.agrees is not None]
    lines = [f"paper: {paper.source}"]
    if judged:
        agree = [v for v in judged if v.agrees]
        lines.append(f"directions against the paper: {len(agree)} of {len(judged)} agree in sign "
                     f"({sum(1 for v in agree if v.separated)} of them separated), "
                     f"{len(judged) - len(agree)} disagree "
                     f"({sum(1 for v in judged if not v.agrees and v.separated)} of them separated): "
                     + "; ".join(f"{v.row} vs {v.versus}: {v.text()}" for v in judged))
    return lines


PAPER_COLUMNS = [Column("paper", "paper (ImageNet-1K; COCO)", str, change=None),
                 Column("paper_verdict", "change vs paper", str, change=None)]
