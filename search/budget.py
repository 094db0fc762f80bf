"""Device budgets: ``64gpu-h``, ``2cpu-h``, ``90gpu-min``, ``600cpu-s``.

A budget is device-seconds: the sum over trials (and measurements) of wall-clock time times
devices held. Its unit decides the kind of device the search runs on. Strings parse strictly
so a typo never silently becomes a different budget.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_UNITS = {"h": 3600.0, "min": 60.0, "s": 1.0}
_PATTERN = re.compile(r"^(?P<amount>\d+(?:\.\d+)?|\.\d+)(?P<kind>gpu|cpu)-(?P<unit>h|min|s)$")


@dataclass(frozen=True)
class Budget:
    """``seconds`` of ``kind`` devices (``"gpu"`` or ``"cpu"`` cores)."""

    seconds: float
    kind: str
    text: str

    def __str__(self) -> str:
        return self.text

    def plus(self, other: "Budget") -> "Budget":
        if other.kind != self.kind:
            raise ValueError(f"budget {other.text!r} is in {other.kind}-seconds, but this study counts {self.kind}-seconds")
        total = self.seconds + other.seconds
        return Budget(total, self.kind, f"{total:g}{self.kind}-s")


def parse_budget(text: str) -> Budget:
    """``"64gpu-h"`` -> ``Budget(230400.0, "gpu")``; anything else raises a one-line ValueError."""
    match = _PATTERN.match(text.strip()) if isinstance(text, str) else None
    if not match:
        raise ValueError(
            f"budget {text!r} is invalid: expected a positive NUMBER then gpu-h, gpu-min, gpu-s, cpu-h, cpu-min "
            "or cpu-s, e.g. 64gpu-h or 0.05cpu-h"
        )
    seconds = float(match["amount"]) * _UNITS[match["unit"]]
    if seconds <= 0:
        raise ValueError(f"budget {text!r} is invalid: it must be more than zero")
    return Budget(seconds, match["kind"], text.strip())
