"""Deployment targets: where and how throughput is measured, e.g. ``cuda:bs64:224:fp16``.

Form: ``DEVICE:bsBATCH:RESOLUTION[:PRECISION]`` with DEVICE ``cpu`` or ``cuda``, PRECISION
``fp32`` (default), ``fp16`` or ``bf16``. The canonical string is the throughput cache key,
so ``cuda:bs64:224`` and ``cuda:bs64:224:fp32`` share measurements.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_PATTERN = re.compile(r"^(?P<device>cpu|cuda):bs(?P<batch>\d+):(?P<res>\d+)(?::(?P<precision>fp32|fp16|bf16))?$")


@dataclass(frozen=True)
class Target:
    device: str
    batch_size: int
    img_size: int
    precision: str = "fp32"

    @property
    def key(self) -> str:
        return f"{self.device}:bs{self.batch_size}:{self.img_size}:{self.precision}"

    def __str__(self) -> str:
        return self.key


def parse_target(text: str) -> Target:
    """``"cpu:bs1:224"`` -> ``Target("cpu", 1, 224, "fp32")``; bad strings raise a one-line ValueError."""
    match = _PATTERN.match(text.strip()) if isinstance(text, str) else None
    expected = "expected DEVICE:bsBATCH:RESOLUTION[:PRECISION] such as cpu:bs1:224 or cuda:bs64:224:fp16"
    if not match:
        raise ValueError(f"target {text!r} is invalid: {expected}")
    batch, res = int(match["batch"]), int(match["res"])
    if batch < 1 or res < 1:
        raise ValueError(f"target {text!r} is invalid: batch and resolution must be positive; {expected}")
    precision = match["precision"] or "fp32"
    if match["device"] == "cpu" and precision == "fp16":
        raise ValueError(f"target {text!r} is invalid: fp16 inference is for cuda targets; use fp32 or bf16 on cpu")
    return Target(match["device"], batch, res, precision)


def default_target(budget_kind: str) -> Target:
    """The local device of the budget's kind: a batch-64 fp16 GPU, or batch-1 CPU inference."""
    return Target("cuda", 64, 224, "fp16") if budget_kind == "gpu" else Target("cpu", 1, 224, "fp32")
