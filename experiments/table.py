"""Ablation tables: rows of figures with their spread and their change against the first row,
written as Markdown (also the terminal's), CSV and LaTeX, and sweeps drawn with error bars.

A table is a list of row dicts plus :class:`Column` specs; a row's ``group`` (e.g. the
token-map side) picks the row it is compared with: the first row of its group. Files are
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

Row = dict[str, Any]


@dataclass(frozen=True)
class Column:
    """One figure of the table.

    Attributes:
        key: the row's value (``None`` or missing: not known).
        header: its heading, units included.
        show: formats a value (the spread uses it too).
        spread: the row key of the value's +- (a std over seeds, a measurement's spread).
        change: ``"%"`` (relative to the first row), ``"points"`` (difference) or ``None``.
        count: the row key of how many values the mean is over (seeds), shown as ``n=``.
        interval: the row keys of the value's 95 % interval (low, high): a change whose
            interval overlaps the first row's is marked "not separated" (within noise).
    """

    key: str
    header: str
    show: Callable[[float], str]
    spread: str | None = None
    change: str | None = "%"
    count: str | None = None
    interval: tuple[str, str] | None = None


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


def _bases(rows: Sequence[Row]) -> list[Row]:
    """Per row, the row it is compared with: the first row of its group."""
    first: dict[Any, Row] = {}
    return [first.setdefault(row.get("group"), row) for row in rows]


def separations(rows: Sequence[Row], columns: Sequence[Column]) -> list[dict[str, bool | None]]:
    """Per row and column with an interval: whether the row's interval and its base row's are
    apart (True), overlap (False: the change is within the measurement's noise), or either is
    unknown or the row is its own base (None)."""
    out = []
    for row, base in zip(rows, _bases(rows)):
        apart: dict[str, bool | None] = {}
        for column in columns:
            bounds = [r.get(k) for r in (row, base) for k in column.interval or ()]
            if column.interval is None or base is row or not all(_known(b) for b in bounds):
                apart[column.key] = None
            else:
                low, high, base_low, base_high = bounds
                apart[column.key] = high < base_low or base_high < low
        out.append(apart)
    return out


def separated_pairs(rows: Sequence[Row]) -> list[tuple[Row, Row]]:
    """Pairs of table rows (better first) with at least two seeds each whose mean top-1 differ
    by more than twice the larger of their two standard deviations (every trained table prints
    them; ``python -m experiments.separability`` exits on them)."""
    scored = [row for row in rows if row.get("seeds", 0) > 1 and row.get("top1_std") is not None]
    pairs = []
    for a, b in itertools.combinations(scored, 2):
        if abs(a["top1"] - b["top1"]) > 2 * max(a["top1_std"], b["top1_std"]):
            pairs.append((a, b) if a["top1"] >= b["top1"] else (b, a))
    return pairs


def changes(rows: Sequence[Row], columns: Sequence[Column]) -> list[dict[str, float | None]]:
    """Per row and column: the change against the first row of the row's group (``None`` for
    that first row itself, and where either value is unknown)."""
    out = []
    for row, base in zip(rows, _bases(rows)):
        delta: dict[str, float | None] = {}
        for column in columns:
            value, reference = row.get(column.key), base.get(column.key)
            if column.change is None or base is row or not (_known(value) and _known(reference)):
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
    if column.count and row.get(column.count) is not None:
        text += f" (n={row[column.count]})"
    if delta is not None:
        within = ", not separated" if apart is False else ""
        text += f" ({delta:+.1f}{'%' if column.change == '%' else ''}{within})"
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
    """A Markdown table (what the terminal shows too): value ± spread (n=seeds) (change vs the
    first row of its group)."""
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
        writer.writerow({k: ("" if v is None else v) for k, v in record.items() if k in fields})
    return buffer.getvalue()


@dataclass(frozen=True)
class Series:
    """One line of a plot: x values, y values and their error bars (``None``: none)."""

    label: str
    x: Sequence[float]
    y: Sequence[float | None]
    error: Sequence[float | None] | None = None


def plot_panels(path: Path, title: str, x_label: str, panels: dict[str, list[Series]],
                log_y: Sequence[str] = (), log_x: bool = False) -> None:
    """Side-by-side panels, one per figure, each with its series and error bars."""
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
            ax.errorbar(xs, ys, yerr=errors, marker="o", ms=4, capsize=3, lw=1.2, label=series.label)
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
