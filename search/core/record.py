"""What the engine keeps on each trial, typed: the one place that knows the attribute names.

Optuna keeps a trial's own data as free-form ``user_attrs``. The engine writes them as it
goes (each write goes to the storage at once, so a driver that dies leaves what it knew:
the job it was running, what it cost), and every reader - ``status``, ``front``, ``pick``,
the tabular benchmark, the ablation tables - reads them back. Both sides go through
:class:`TrialRecord`: :func:`write` refuses a name that is not one of its fields, and
:meth:`TrialRecord.of` gives a reader typed fields with their defaults.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Protocol


class _HasUserAttrs(Protocol):
    @property
    def user_attrs(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class TrialRecord:
    # ---- which architecture, and why this trial exists
    arch_id: str | None = None
    summary: str = ""
    config: str | None = None  # LITConfig JSON of the full-size network
    seed: int | None = None
    rerun_of: int | None = None  # the interrupted trial this one runs again
    duplicate_of: int | None = None  # the trial that already has this architecture's verdict
    drawn_unseen: bool = False  # handed to a sampler stuck on known architectures
    # ---- figures of the full-size network on the target
    params: int | None = None
    flops: int | None = None
    throughput: float | None = None  # img/s, the median
    throughput_spread: float | None = None  # half the 95 % interval's width
    throughput_low: float | None = None
    throughput_high: float | None = None
    measured_times: int = 1
    throughput_cached: bool = False  # taken from the throughput cache, not measured for this trial
    peak_memory_mb: float | None = None
    latency_ms: float | None = None
    predicted_throughput: float | None = None  # img/s from the node's latency table (litv2.latency)
    throughput_predicted_only: bool = False  # --throughput predicted: the throughput figures are the prediction
    # a study of several targets: each target's figures (throughput, its interval, latency), by target key; the
    # fields above are the first target's
    target_figures: dict[str, dict[str, Any]] = field(default_factory=dict)
    # ---- proxy training
    epochs_done: int = 0
    epoch_accuracies: list[float] = field(default_factory=list)
    fidelity: int = 0  # epochs trained when the trial ended
    training_reused_from: str | None = None  # the study whose identical training this one reused
    stopped_at: int | None = None  # the rung at which the scheduler stopped it
    checkpoint_seconds: float = 0.0
    # ---- what it cost, and when its jobs ran ([start, end, node id, worker pid])
    costs: dict[str, float] = field(default_factory=dict)  # device-seconds by job kind
    device_seconds: float = 0.0
    busy_seconds: float = 0.0
    trial_wall_seconds: float | None = None
    count_interval: list | None = None
    measure_interval: list | None = None
    train_intervals: list[list] = field(default_factory=list)
    job: dict[str, Any] | None = None  # the job running now: kind, start, devices
    retries: list[dict[str, str]] = field(default_factory=list)
    # ---- how it ended
    status: str | None = None  # complete, stopped, infeasible, failed, interrupted
    infeasible: list[str] = field(default_factory=list)  # the constraints it broke
    infeasible_predicted: bool = False  # ruled out by its predicted throughput, never measured
    constraint_values: dict[str, float] = field(default_factory=dict)
    not_trained: str | None = None  # why the budget left it untrained
    failure: str | None = None  # the failure's kind (search.core.faults)
    error: str | None = None
    interrupted: bool = False

    @classmethod
    def of(cls, trial: _HasUserAttrs) -> "TrialRecord":
        """The record of an Optuna trial (frozen or live); attributes it does not know are ignored."""
        attrs = trial.user_attrs
        return cls(**{name: attrs[name] for name in NAMES if name in attrs})

    def to_user_attrs(self) -> dict[str, Any]:
        """The fields that differ from their defaults, as Optuna user attributes."""
        blank = TrialRecord()
        return {name: getattr(self, name) for name in NAMES if getattr(self, name) != getattr(blank, name)}


NAMES = frozenset(f.name for f in fields(TrialRecord))


def write(trial: Any, **values: Any) -> None:
    """Set fields of ``trial``'s record (an Optuna ``Trial``), each stored at once."""
    unknown = sorted(set(values) - NAMES)
    if unknown:
        raise TypeError(f"not fields of a TrialRecord: {', '.join(unknown)}")
    for name, value in values.items():
        trial.set_user_attr(name, value)
