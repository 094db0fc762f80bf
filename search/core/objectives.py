"""The study's objectives, declared once.

Study creation, ``tell``, MLflow, the fronts, the hypervolumes and the plots all read
:func:`objectives`, so an objective's name, direction and unit never drift apart between
them. Accuracy is shared by every target (the same trained proxy serves them all); each
deployment target adds a throughput objective of its own. A study of one target keeps the
names it always had (``proxy_top1``, ``throughput``); with several, each throughput is named
after its target (``throughput/cpu_bs1_224_fp32_t1_ort``: MLflow groups names by ``/``, and a
``:`` is refused in names on Windows).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import optuna


@dataclass(frozen=True)
class Objective:
    """One objective: its stored name, Optuna direction and how people read it."""

    name: str
    direction: str  # "maximize" or "minimize"
    label: str
    unit: str

    @property
    def sign(self) -> float:
        """+1 when larger is better: multiply to turn the objective into a maximisation."""
        return 1.0 if self.direction == "maximize" else -1.0


ACCURACY = Objective("proxy_top1", "maximize", "proxy top-1", "%")
THROUGHPUT = Objective("throughput", "maximize", "measured throughput", "img/s")
OBJECTIVES: tuple[Objective, ...] = (ACCURACY, THROUGHPUT)  # a study of one target


def slug(target_key: str) -> str:
    """A target key as a name MLflow takes everywhere, and a file name: ``:`` becomes ``_``."""
    return target_key.replace(":", "_")


def objectives(target_keys: Sequence[str]) -> tuple[Objective, ...]:
    """Accuracy, then one throughput per target, in the order the targets were given."""
    if len(target_keys) == 1:
        return OBJECTIVES
    return (ACCURACY, *(Objective(f"{THROUGHPUT.name}/{slug(key)}", THROUGHPUT.direction, THROUGHPUT.label,
                                  THROUGHPUT.unit) for key in target_keys))


def create_objective_study(name: str, storage: optuna.storages.BaseStorage, sampler: optuna.samplers.BaseSampler,
                           target_keys: Sequence[str] = ("",)) -> optuna.Study:
    """A new study with :func:`objectives` of ``target_keys`` as its directions and metric names."""
    import warnings

    chosen = objectives(target_keys)
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                directions=[o.direction for o in chosen])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([o.name for o in chosen])
    return study
