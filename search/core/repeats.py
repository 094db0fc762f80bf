"""When a throughput figure is measured again, and which of several figures is kept.

A figure comes with the 95 % interval of its median. Two kinds of figure are not trusted
as they stand: a **wide** one (the interval is wider than :data:`WIDE_RELATIVE_CI` of the
median, or the measurement did not get its cores: ``contended``), and one that **disagrees**
with an earlier figure of the same architecture on the same fingerprint (their intervals do
not overlap). The search measures a wide figure once more; ``pick`` measures a figure that
disagrees with the cached one a third time. Of the figures then at hand the one the others
support is kept: the one whose interval overlaps the most others, and of those the narrowest.

Plain functions of result records (:func:`search.engine.measuring.measure_architecture`'s dicts),
testable without torch or Ray.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from .constraints import latency_ms

WIDE_RELATIVE_CI = 0.10
"""Five times the protocol's stopping target (2 %). On the 2-core VM, idle, a 6-s CPU
measurement's interval is 2.3-10 % wide (median about 4 %); at 5 % half of all figures were
measured twice, and each repeat holds the whole node for another 7 s (8 % of the
quickstart's budget). A figure over 10 % is an outlier that can move a front."""


def interval(record: Mapping[str, Any]) -> tuple[float, float]:
    """The 95 % interval of a result's throughput: its measurement's order statistics, else
    (a figure recorded before intervals were kept) the median +- its spread."""
    measurement = record.get("measurement") or {}
    median = float(record["throughput"])
    spread = float(record.get("throughput_spread") or 0.0)
    return float(measurement.get("ci_low", median - spread)), float(measurement.get("ci_high", median + spread))


def throughput_text(record: Mapping[str, Any] | None) -> str:
    """A record's throughput as ``median [low, high]`` img/s, or ``-`` without a record: the
    one way a figure is written in tables, cards and error lines."""
    if not record:
        return "-"
    low, high = interval(record)
    return f"{float(record['throughput']):.1f} [{low:.1f}, {high:.1f}]"


def latency_text(record: Mapping[str, Any] | None, batch_size: int) -> str:
    """The latency a record's throughput means, ms per batch, with its interval (the slow end
    of the throughput is the long latency), or ``-`` without a record."""
    if not record:
        return "-"
    low, high = interval(record)
    return (f"{latency_ms(float(record['throughput']), batch_size):.2f} [{latency_ms(high, batch_size):.2f}, "
            f"{latency_ms(low, batch_size):.2f}]")


def relative_width(record: Mapping[str, Any]) -> float:
    """The interval's width over the median (infinite for a figure of 0 img/s)."""
    low, high = interval(record)
    median = float(record["throughput"])
    return (high - low) / median if median > 0 else float("inf")


def is_wide(record: Mapping[str, Any]) -> bool:
    """Whether a figure is too uncertain to rank by without measuring it again."""
    return relative_width(record) > WIDE_RELATIVE_CI or bool((record.get("measurement") or {}).get("contended"))


def overlap(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two figures' intervals share a value (they do not contradict each other)."""
    (low_a, high_a), (low_b, high_b) = interval(a), interval(b)
    return low_a <= high_b and low_b <= high_a


def disagree(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return not overlap(a, b)


def best_supported(records: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The figure the others agree with most, the narrowest of those (the first on a tie)."""
    if not records:
        raise ValueError("best_supported needs at least one figure")

    def support(index: int) -> tuple[int, float, int]:
        record = records[index]
        agreeing = sum(overlap(record, other) for j, other in enumerate(records) if j != index)
        return -agreeing, relative_width(record), index

    return records[min(range(len(records)), key=support)]
