"""When a throughput measurement's warm-up ends and its sampling stops (:class:`MeasureProtocol`).

Plain settings, apart from :mod:`litv2.measure` (which runs them on torch), so command lines
can state and check them before importing torch.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MeasureProtocol:
    """When warm-up ends and sampling stops. The defaults keep a measurement of a LITv2-S-sized
    network at CPU batch 1 (~0.2 s a forward on one thread) under 10 s of wall time, model
    construction included, and a small network's (~20 ms) at about 3 s when the machine is quiet."""

    min_warmup_seconds: float = 1.0
    max_warmup_seconds: float = 3.0
    min_warmup_calls: int = 3
    warmup_agreement: float = 0.02  # two consecutive warm-up blocks within 2% of each other
    block_seconds: float = 0.2  # one sample: back-to-back calls lasting at least this long
    min_samples: int = 8  # before stopping on the interval; the time cap may stop at MIN_SAMPLES_FOR_CI
    target_ci: float = 0.02  # stop when the 95% interval of the median is narrower than 2% of it
    max_seconds: float = 6.0  # warm-up + sampling, after the first call

    def __post_init__(self) -> None:
        for name in ("min_warmup_seconds", "max_warmup_seconds", "warmup_agreement", "block_seconds", "target_ci",
                     "max_seconds"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} {getattr(self, name)!r} is invalid: expected a number >= 0")


CONFIDENCE = 0.95
MIN_SAMPLES_FOR_CI = 6  # the fewest samples whose range covers the median with 95% confidence
