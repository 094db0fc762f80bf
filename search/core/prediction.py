"""When a predicted throughput may decide a constraint without a measurement.

A latency table (:mod:`litv2.latency`) predicts a candidate's throughput before it is
measured. The prediction may rule a candidate out - recorded infeasible, marked as
predicted, never measured nor trained - only when even its optimistic bound breaks a
throughput or latency constraint: the prediction times (1 + margin). Until :data:`MIN_PAIRS`
pairs of predicted and measured figures exist the margin is :data:`PRIOR_MARGIN`; then it is
learned from the study's own pairs: the error :data:`COVERED` of them stayed within, never
below :data:`FLOOR`. A constraint the prediction cannot settle is measured, as every figure
that reaches the front is.

A search run with ``--throughput predicted`` (:data:`PREDICTED`) measures nothing: its
candidates are ranked, constrained and scheduled by the prediction alone (for a target the
cluster cannot reach), their records say so, and ``search pick`` measures the front on the
target.
"""
from __future__ import annotations

import math
import statistics

from .constraints import Constraints, violated

MEASURED, PREDICTED = "measured", "predicted"
THROUGHPUT_SOURCES = (MEASURED, PREDICTED)  # what ranks a search's candidates (SearchConfig.throughput)
PRIOR_MARGIN = 0.10  # the lut checks on the project's CPU VM: 20/20 (tiny) and 13/15 (bench) within 10 %
FLOOR = 0.05  # about one 95 % interval of a measured figure: a prediction is never trusted closer
MIN_PAIRS = 5
COVERED = 0.9


class PredictionMargin:
    """The relative error a prediction is trusted within, learned from (predicted, measured)."""

    def __init__(self) -> None:
        self.errors: list[float] = []

    def observe(self, predicted: float, measured: float) -> None:
        self.errors.append(abs(predicted / measured - 1.0))

    @property
    def margin(self) -> float:
        if len(self.errors) < MIN_PAIRS:
            return PRIOR_MARGIN
        ordered = sorted(self.errors)
        return max(FLOOR, ordered[min(len(ordered) - 1, math.ceil(COVERED * len(ordered)) - 1)])

    def median_error(self) -> float | None:
        return statistics.median(self.errors) if self.errors else None

    def rules_out(self, predicted: float, constraints: Constraints, batch_size: int) -> dict[str, float]:
        """The constraint violations of the optimistic bound of ``predicted`` (empty where the
        prediction settles nothing): the bound is ``predicted * (1 + margin)``."""
        bound = constraints.measured_violations(predicted * (1.0 + self.margin), batch_size)
        return bound if violated(bound) else {}
