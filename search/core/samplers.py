"""The samplers a search may use: their names (``--sampler``, ``search bench strategies
--samplers``, the settings check) and the Optuna sampler each name makes.

Samplers are not stored in the storage: the driver re-creates one from its name and seed on
resume. Optuna is imported only when a sampler is made, so the command lines list and check
the names without loading it.
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

SAMPLERS = ("tpe", "nsga2", "gp", "random")
DEFAULT_SAMPLER = "tpe"


def sampler_choices() -> str:
    """The sampler names as help texts and errors list them: ``tpe, nsga2, gp or random``."""
    return f"{', '.join(SAMPLERS[:-1])} or {SAMPLERS[-1]}"


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """Samplers are not stored in the storage: they are re-created with their seed on resume."""
    import optuna

    if name == "tpe":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=5)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=16)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)
