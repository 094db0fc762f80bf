"""Ablation tables: rows of figures with their spread and their change against a compared row,
written as Markdown (also the terminal's), CSV and LaTeX, and sweeps drawn with error bars.

A table is a list of row dicts plus :class:`Column` specs. Each row is compared with one
other: the row its ``versus`` key names (e.g. the row above, for a path of changes), else the
first row of its ``group`` (e.g. the token-map side). A row may carry a column's change
already worked out - ``{key}_change`` with its interval ``{key}_change_low`` /
``{key}_change_high`` and verdict ``{key}_separated`` - where the change needs more than the
two rows' figures (a difference of means over seeds, :mod:`experiments.intervals`). Files are
written to a temporary name and renamed, so a reader never sees half a table.
"""
from __future__ import annotations

import csv
import io
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from litv2.files import atomic_write_text

from .intervals import difference_interval, separated

Row = dict[str, Any]


@dataclass(frozen=True)
class Column:
    """One figure of the table.

    Attributes:
        key: the row's value (``None`` or missing: not known).
        header: its heading, units included.
        show: formats a value (the spread uses it too).
        spread: the row key of the value's +- (a std over seeds, a measurement's spread).
        change: ``"%"`` (relative to the compared row), ``"points"`` (difference) or ``None``.
        count: the row key of how many values the mean is over (seeds), shown as ``n=``.
        interval: the row keys of the value's 95 % interval (low, high): a change whose
            interval overlaps the compared row's is marked "not separated" (within noise),
            unless the row carries the change's own verdict.
        show_interval: print the interval as ``[low, high]`` after the value.
    """

    key: str
    header: str
    show: Callable[[float], str]
    spread: str | None = None
    change: str | None = "%"
    count: str | None = None
    interval: tuple[str, str] | None = None
    show_interval: bool = False


def exact(value: float) -> str:
    return f"{value:,.0f}"


def giga(value: float) -> str:
    return f"{value / 1e9:.3f}"


def fixed(digits: int) -> Callable[[float], str]:
    return lambda value: f"{value:.{digits}f}"


def significant(digits: int) -> Callable[[float], str]:
    """For figures spanning decades (maps/s from tens to hundredths)."""
    def show(value: float) -> str:
        decimals = digits - 1 - math.floor(math.log10(abs(value))) if value else digits - 1
        return f"{value:.{max(0, decimals)}f}"

    return show


def _known(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def bases(rows: Sequence[Row]) -> list[Row]:
    """Per row, the row it is compared with: the row of its group its ``versus`` names, else
    the first row of its group."""
    first: dict[Any, Row] = {}
    named = {(row.get("group"), row["row"]): row for row in rows}
    return [named.get((row.get("group"), row.get("versus")), first.setdefault(row.get("group"), row)) for row in rows]


def separations(rows: Sequence[Row], columns: Sequence[Column]) -> list[dict[str, bool | None]]:
    """Per row and column with an interval: whether the row's interval and its base row's are
    apart (True), overlap (False: the change is within the measurement's noise), or either is
    unknown or the row is its own base (None)."""
    out = []
    for row, base in zip(rows, bases(rows)):
        apart: dict[str, bool | None] = {}
        for column in columns:
            bounds = [r.get(k) for r in (row, base) for k in column.interval or ()]
            if f"{column.key}_separated" in row:
                apart[column.key] = row[f"{column.key}_separated"]
            elif column.interval is None or base is row or not all(_known(b) for b in bounds):
                apart[column.key] = None
            else:
                low, high, base_low, base_high = bounds
                apart[column.key] = high < base_low or base_high < low
        out.append(apart)
    return out


def separated_pairs(rows: Sequence[Row]) -> list[tuple[Row, Row]]:
    """Pairs of rows (better first) whose top-1 difference is separated by the rule of
    :mod:`experiments.intervals` (its 95 % interval excludes 0, both rows with enough seeds):
    ``python -m experiments.separability`` exits on them."""
    scored = [row for row in rows if row.get("top1_values")]
    pairs = []
    for a, b in itertools.combinations(scored, 2):
        change = difference_interval(a["top1_values"], b["top1_values"])
        if separated(change, len(a["top1_values"]), len(b["top1_values"])):
            pairs.append((a, b) if change.mean >= 0 else (b, a))
    return pairs


def changes(rows: Sequence[Row], columns: Sequence[Column]) -> list[dict[str, float | None]]:
    """Per row and column: the change against the row's compared row (:func:`bases`; ``None``
    for a row compared with itself, and where either value is unknown)."""
    out = []
    for row, base in zip(rows, bases(rows)):
        delta: dict[str, float | None] = {}
        for column in columns:
            value, reference = row.get(column.key), base.get(column.key)
            if f"{column.key}_change" in row:
                delta[column.key] = row[f"{column.key}_change"]
            elif column.change is None or base is row or not (_known(value) and _known(reference)):
                delta[column.key] = None
            elif column.change == "points":
                delta[column.key] = value - reference
            else:
                delta[column.key] = 100.0 * (value / reference - 1) if reference else None
        out.append(delta)
    return out


def _cell(row: Row, column: Column, delta: float | None, apart: bool | None = None) -> str:
    value = row.get(column.key)
    if not _known(value):
        return "-"
    text = column.show(value)
    spread = row.get(column.spread) if column.spread else None
    if _known(spread):
        text += f" ± {column.show(spread)}"
    bounds = [row.get(key) for key in column.interval or ()]
    if column.show_interval and bounds and all(_known(b) for b in bounds):
        text += f" [{column.show(bounds[0])}, {column.show(bounds[1])}]"
    if column.count and row.get(column.count) is not None:
        text += f" (n={row[column.count]})"
    if delta is not None:
        verdict_due = f"{column.key}_separated" in row  # the row's own verdict, None when it has too few seeds
        within = ", not separated" if apart is False else (", no verdict" if apart is None and verdict_due else "")
        change = [row.get(f"{column.key}_change_{end}") for end in ("low", "high")]
        between = f" [{change[0]:+.2f}, {change[1]:+.2f}]" if all(_known(b) for b in change) else ""
        digits = 2 if between else 1
        text += f" ({delta:+.{digits}f}{'%' if column.change == '%' else ''}{between}{within})"
    return text


def _cells(rows: Sequence[Row], columns: Sequence[Column], label: str) -> tuple[list[str], list[list[str]]]:
    """Header and cells shared by every text form; a ``note`` column appears when a row has one."""
    noted = any(row.get("note") for row in rows)
    header = [label, *(c.header for c in columns), *(["note"] if noted else [])]
    body = [[str(row["row"]), *(_cell(row, c, delta[c.key], apart[c.key]) for c in columns),
             *([row.get("note", "")] if noted else [])]
            for row, delta, apart in zip(rows, changes(rows, columns), separations(rows, columns))]
    return header, body


def markdown(rows: Sequence[Row], columns: Sequence[Column], label: str = "row") -> str:
    """A Markdown table (what the terminal shows too): value ± spread or [interval] (n=seeds)
    (change against the compared row [its interval], its verdict)."""
    header, body = _cells(rows, columns, label)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def latex(rows: Sequence[Row], columns: Sequence[Column], label: str = "row") -> str:
    """A ``tabular`` for papers (booktabs rules)."""
    def escape(text: str) -> str:
        for char, replacement in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"),
                                  ("#", r"\#"), ("$", r"\$"), ("±", r"$\pm$")):
            text = text.replace(char, replacement)
        return text

    header, body = _cells(rows, columns, label)
    lines = [r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule",
             " & ".join(escape(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(escape(cell) for cell in cells) + r" \\" for cells in body]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


def csv_text(rows: Sequence[Row], columns: Sequence[Column], extra: Sequence[str] = ()) -> str:
    """Raw numbers: per column its value, its spread and its change, plus the ``extra`` keys."""
    fields = ["row", *extra, "note"]
    for column in columns:
        fields.append(column.key)
        if column.spread:
            fields.append(column.spread)
        if column.count:
            fields.append(column.count)
        if column.change:
            fields.append(f"{column.key}_change_{'pct' if column.change == '%' else 'points'}")
        if column.interval:
            fields += [*column.interval, f"{column.key}_separated"]
        if any(f"{column.key}_change_low" in row for row in rows):
            fields += [f"{column.key}_change_low", f"{column.key}_change_high"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row, delta, apart in zip(rows, changes(rows, columns), separations(rows, columns)):
        record = dict(row)
        for column in columns:
            if column.change:
                record[f"{column.key}_change_{'pct' if column.change == '%' else 'points'}"] = delta[column.key]
            if column.interval:
                record[f"{column.key}_separated"] = apart[column.key]
        writer.writerow({k: _csv_value(v) for k, v in record.items() if k in fields})
    return buffer.getvalue()


def seeds_csv(rows: Sequence[Row]) -> str:
    """One line per (row, seed): the values the means and intervals of the table come from."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["row", "arch_id", "seed", "trial", "top1"])
    for row in rows:
        for seed, trial, value in zip(row["top1_seeds"], row["top1_trials"], row["top1_values"]):
            writer.writerow([row["row"], row["arch_id"], seed, trial, value])
    return buffer.getvalue()


def _csv_value(value: Any) -> Any:
    """Blank for unknown; a list (each seed's value) as its items separated by spaces."""
    if value is None:
        return ""
    return " ".join(str(v) for v in value) if isinstance(value, list) else value


@dataclass(frozen=True)
class Series:
    """One line of a plot: x values, y values and their error bars (``None``: none)."""

    label: str
    x: Sequence[float]
    y: Sequence[float | None]
    error: Sequence[float | tuple[float, float] | None] | None = None  # symmetric, or (down, up)


def _bars(errors: Sequence[float | tuple[float, float]]) -> list[list[float]]:
    pairs = [e if isinstance(e, tuple) else (e, e) for e in errors]
    return [[down for down, _ in pairs], [up for _, up in pairs]]


def plot_panels(path: Path, title: str, x_label: str, panels: dict[str, list[Series]],
                log_y: Sequence[str] = (), log_x: bool = False, paper: dict[str, Series] | None = None) -> None:
    """Side-by-side panels, one per figure, each with its series and error bars; ``paper``
    draws the paper's values of a panel as crosses on an axis of their own (ImageNet top-1
    and a proxy's top-1 do not share a scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), dpi=120, squeeze=False)
    for ax, (name, series_list) in zip(axes[0], panels.items()):
        for series in series_list:
            points = [(x, y, (series.error[i] if series.error else None) or 0.0)
                      for i, (x, y) in enumerate(zip(series.x, series.y)) if _known(y)]
            if not points:
                continue
            xs, ys, errors = zip(*points)
            ax.errorbar(xs, ys, yerr=_bars(errors), marker="o", ms=4, capsize=3, lw=1.2, label=series.label)
        theirs = (paper or {}).get(name)
        if theirs is not None:
            twin = ax.twinx()
            known = [(x, y) for x, y in zip(theirs.x, theirs.y) if _known(y)]
            twin.plot(*zip(*known), "x--", color="C3", ms=7, lw=0.8, label=theirs.label)
            twin.set_ylabel(theirs.label, color="C3", fontsize=8)
            twin.tick_params(axis="y", colors="C3", labelsize=7)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(x_label)
        if name in log_y:
            ax.set_yscale("log")
        if log_x:
            ax.set_xscale("log", base=2)
            ticks = sorted({x for series in series_list for x in series.x})
            ax.set_xticks(ticks, [f"{x:g}" for x in ticks])
            ax.minorticks_off()
        ax.grid(alpha=0.3)
        if len(series_list) > 1:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_text(path: Path, text: str) -> Path:
    """``text`` as the whole of ``path``, ending in a newline, replaced atomically."""
    return atomic_write_text(path, text if text.endswith("\n") else text + "\n")


@dataclass(frozen=True)
class Dots:
    """One panel of a dot plot: per row a value and its interval, each seed's value (faint)
    and the paper's value (a cross on an axis of its own) where there are any."""

    title: str
    values: Sequence[float | None]
    low: Sequence[float | None]
    high: Sequence[float | None]
    each: Sequence[Sequence[float]] | None = None
    paper: Sequence[float | None] | None = None
    paper_label: str = "paper"


def plot_dots(path: Path, title: str, labels: Sequence[str], panels: Sequence[Dots]) -> None:
    """A dot plot of a table's rows (one line per row, first at the top), a panel per figure:
    the mean or median with its 95 % interval, the seeds beside it, the paper's value marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height = 2.2 + 0.45 * len(labels)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), height), dpi=120, squeeze=False,
                             sharey=True)
    ys = list(range(len(labels)))[::-1]
    legend: dict[str, Any] = {}
    for ax, panel in zip(axes[0], panels):
        for y, each in zip(ys, panel.each or []):
            legend["each seed"] = ax.scatter(each, [y] * len(each), s=14, color="0.5", alpha=0.8, zorder=2)
        shown = [(y, v, lo if _known(lo) else v, hi if _known(hi) else v)
                 for y, v, lo, hi in zip(ys, panel.values, panel.low, panel.high) if _known(v)]
        if shown:
            y, v, lo, hi = zip(*shown)
            legend["ours: mean or median [95 % interval]"] = ax.errorbar(
                v, y, xerr=[[a - b for a, b in zip(v, lo)], [b - a for a, b in zip(v, hi)]], fmt="o", color="C0",
                ms=6, capsize=4, lw=1.4, zorder=3)
        if panel.paper and sum(1 for v in panel.paper if _known(v)) > 1:  # one value alone has no scale
            twin = ax.twiny()
            marked = [(v, y) for y, v in zip(ys, panel.paper) if _known(v)]
            legend["the paper (top axis)"], = twin.plot(*zip(*marked), "x", color="C3", ms=9, mew=2)
            twin.set_xlabel(panel.paper_label, color="C3", fontsize=8)
            twin.tick_params(axis="x", colors="C3", labelsize=7)
            lows, highs = min(v for v, _ in marked), max(v for v, _ in marked)
            pad = (highs - lows) * 0.2 or abs(highs) * 0.01 or 1.0
            twin.set_xlim(lows - pad, highs + pad)
        ax.set_xlabel(panel.title, fontsize=9)
        ax.set_yticks(ys, labels)
        ax.set_ylim(-0.6, len(labels) - 0.4)
        ax.grid(alpha=0.3, axis="x")
    fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=len(legend), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path)
    plt.close(fig)
