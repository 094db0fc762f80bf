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


# Before anything has run, a proxy epoch is assumed to cost this many device-seconds per
# proxy GFLOP (forward, one image) per thousand training images. Measured here: 400-1000 for
# the tiny and default spaces' proxies on one CPU core (small proxies are overhead-bound), so
# the CPU prior sits at the slow end; a GPU is assumed 50x faster. The first job therefore
# starts only if it surely fits, and the rate learned from it replaces the prior.
PRIOR_EPOCH_SECONDS_PER_GFLOP_KIMAGE = {"cpu": 1000.0, "gpu": 20.0}
PRIOR_MEASURE_SECONDS = 30.0
PRIOR_COUNT_SECONDS = 20.0


class CostModel:
    """Device-seconds a job will cost, learned from the jobs that finished.

    Training cost scales with the architecture: seconds per proxy epoch are charged at a rate
    per (proxy GFLOP x thousand training images), so a deep stage-3 variant is charged several
    times a shallow one. The rate is the slowest any finished training job ran at, not their
    mean: FLOPs do not price every part alike (a DTM merge costs more per FLOP than a patch
    merge) and a node's load slows jobs, so a mean let the last trainings a budget started
    overrun it (a 100 cpu-s budget ended at 112 beside a loaded test suite). Proxy FLOPs are
    the full-size count scaled by ``proxy_scale`` (width_mult^2 x resolution^2 ratio: the
    proxy has the same structure), so nothing is counted twice.
    Measurements and counts are charged the largest cost seen so far too. Until a kind of job
    has finished once, a conservative prior applies.
    """

    def __init__(self, kind: str, train_images: int, proxy_scale: float) -> None:
        self.kind = kind
        self.kimages = max(train_images, 1) / 1000.0
        self.proxy_scale = proxy_scale
        self._train_rate: float | None = None  # device-seconds per unit of work: the slowest seen
        self._flops_sum = 0.0
        self._flops_n = 0
        self._measure: float | None = None  # device-seconds: the largest seen, None before any
        self._count: float | None = None

    def _epoch_work(self, flops: float) -> float:
        return max(flops * self.proxy_scale, 1e6) / 1e9 * self.kimages

    def typical_flops(self) -> float | None:
        """Mean full-size FLOPs of the architectures trained so far (None before any)."""
        return self._flops_sum / self._flops_n if self._flops_n else None

    def observe_train(self, flops: float, epochs: int, device_seconds: float) -> None:
        self._flops_sum += flops
        self._flops_n += 1
        rate = device_seconds / (self._epoch_work(flops) * max(epochs, 1))
        self._train_rate = rate if self._train_rate is None else max(self._train_rate, rate)

    def observe_measure(self, device_seconds: float) -> None:
        """``device_seconds``: wall seconds times the devices the measurement held."""
        self._measure = device_seconds if self._measure is None else max(self._measure, device_seconds)

    def observe_count(self, device_seconds: float) -> None:
        self._count = device_seconds if self._count is None else max(self._count, device_seconds)

    def train(self, flops: float, epochs: int, devices: float) -> float:
        """Device-seconds of ``epochs`` proxy epochs of an architecture of ``flops`` (full size)."""
        if self._train_rate is not None:
            rate = self._train_rate
        else:
            rate = PRIOR_EPOCH_SECONDS_PER_GFLOP_KIMAGE[self.kind] * devices
        return rate * self._epoch_work(flops) * epochs

    def measure(self, devices: float) -> float:
        """Device-seconds of a measurement holding ``devices``: the largest seen so far (already
        in device-seconds), or the prior's seconds on that many devices."""
        return PRIOR_MEASURE_SECONDS * devices if self._measure is None else self._measure

    def count(self, devices: float) -> float:
        """Device-seconds of a count on ``devices`` (as :meth:`measure`)."""
        return PRIOR_COUNT_SECONDS * devices if self._count is None else self._count

    def new_architecture(self, count_devices: float, measure_devices: float, targets: int = 1) -> float:
        """Device-seconds an architecture costs before it trains: its count, and a measurement
        on each of ``targets`` targets."""
        return self.count(count_devices) + targets * self.measure(measure_devices)


GRANT_FACTOR = 2.0
"""A measurement's estimate is the longest one so far; with three test workers joining the
node's load, measurements took twice that (a 100 cpu-s budget ended at 130). So a measurement
holds twice its estimate against other jobs while it runs, and is stopped only where it would
use more than the budget has left when it starts (:meth:`Ledger.allowance`): stopping it at
its grant early in a budget dropped candidates for no reason."""


class Ledger:
    """What a budget has spent and promised: the hard cap that no job may break.

    ``spent`` is what finished (or was interrupted) work really cost; ``committed`` holds the
    estimates of jobs running now. A job starts only if spent + committed + its estimate fits.
    """

    def __init__(self, budget: Budget, spent: float) -> None:
        self.budget = budget
        self.spent = spent
        self.committed: dict[object, float] = {}

    @property
    def left(self) -> float:
        return self.budget.seconds - self.spent - sum(self.committed.values())

    def fits(self, estimate: float) -> bool:
        return estimate <= self.left

    def grant(self, estimate: float) -> float:
        """What a job that fits at ``estimate`` holds against other jobs while it runs:
        :data:`GRANT_FACTOR` times the estimate where the budget has it, else what is left."""
        return max(min(GRANT_FACTOR * estimate, self.left), estimate)

    def allowance(self) -> float:
        """What a job starting now may use before it is stopped: all that is left (called
        before its grant is committed)."""
        return max(self.left, 0.0)

    def commit(self, key: object, estimate: float) -> None:
        self.committed[key] = estimate

    def settle(self, key: object, device_seconds: float) -> None:
        self.committed.pop(key, None)
        self.spent += device_seconds
