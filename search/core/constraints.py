"""Deployment constraints: ``--min-throughput``, ``--max-latency-ms``, ``--max-params``, ``--max-flops``.

A constraint is checked as soon as its figure is known - params and FLOPs when the
architecture is sampled, throughput and latency once it is measured - so an architecture
that cannot be deployed is never trained. Violations are stored as Optuna trial
constraints (``Trial.set_constraint``: feasible when <= 0), which every constrained sampler
and ``Study.best_trials`` understand. Values are relative (0.25 = 25 % past the limit), so
TPE ranks infeasible trials sensibly whatever the units.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

_SUFFIX = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_COUNT = re.compile(r"^(\d+(?:\.\d+)?|\.\d+)([kKMGT]?)$")


def parse_count(text: str, flag: str) -> float:
    """``"30M"`` -> 3e7, ``"4G"`` -> 4e9, ``"1500"`` -> 1500.0; a one-line ValueError otherwise."""
    match = _COUNT.match(str(text).strip())
    if not match or float(match[1]) <= 0:
        raise ValueError(f"{flag} {text!r} is invalid: expected a positive number with an optional k, M or G "
                         f"suffix, e.g. 30M or 4G")
    return float(match[1]) * _SUFFIX[match[2]]


def parse_positive(text: str | float, flag: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{flag} {text!r} is invalid: expected a positive number")
    return value


@dataclass(frozen=True)
class Constraints:
    """Limits an architecture must meet on the target; None = no limit."""

    min_throughput: float | None = None  # img/s
    max_latency_ms: float | None = None  # ms per batch
    max_params: float | None = None
    max_flops: float | None = None

    @property
    def active(self) -> bool:
        return any(v is not None for v in asdict(self).values())

    def to_dict(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "Constraints":
        return cls(**(data or {}))

    def static_violations(self, params: float, flops: float) -> dict[str, float]:
        """Violations known before measuring (size and FLOPs)."""
        out = {}
        if self.max_params is not None:
            out["max_params"] = params / self.max_params - 1.0
        if self.max_flops is not None:
            out["max_flops"] = flops / self.max_flops - 1.0
        return out

    def measured_violations(self, throughput: float, batch_size: int) -> dict[str, float]:
        """Violations that need the measured throughput on the target."""
        out = {}
        if self.min_throughput is not None:
            out["min_throughput"] = self.min_throughput / throughput - 1.0
        if self.max_latency_ms is not None:
            out["max_latency_ms"] = latency_ms(throughput, batch_size) / self.max_latency_ms - 1.0
        return out


def latency_ms(throughput: float, batch_size: int) -> float:
    """Milliseconds for one batch at ``throughput`` img/s."""
    return 1000.0 * batch_size / throughput


def violated(violations: dict[str, float]) -> list[str]:
    """Names of the constraints a set of violation values breaks (value > 0)."""
    return [name for name, value in violations.items() if value > 0]
