"""The study's objectives, declared once.

Study creation, ``tell``, MLflow, the front, the hypervolume and the plots all read this
tuple, so an objective's name, direction and unit never drift apart between them.
"""
from __future__ import annotations

from dataclasses import dataclass

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
OBJECTIVES: tuple[Objective, ...] = (ACCURACY, THROUGHPUT)


def create_objective_study(name: str, storage: optuna.storages.BaseStorage,
                           sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    """A new study with :data:`OBJECTIVES` as its directions and metric names."""
    import warnings

    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                directions=[o.direction for o in OBJECTIVES])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([o.name for o in OBJECTIVES])
    return study
