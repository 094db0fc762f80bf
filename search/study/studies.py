"""A search's study in its Optuna storage: the attributes the engine keeps on it, and
read-only access for ``status``, ``front``, ``pick`` and ``resume``.

Kept apart from the orchestrator (which pulls in torch through the models) so the read-only
commands answer from the storage alone, without the deep-learning stack.
"""
from __future__ import annotations

import optuna

from ..core.record import TrialRecord
from .settings import SearchSettings
from .storage import open_existing_storage

SETTINGS_ATTR = "search_settings"
RUN_ID_ATTR = "mlflow_run_id"


def budget_used(study: optuna.Study) -> float:
    """Device-seconds charged to the study's trials: finished, stopped, failed and interrupted work."""
    return sum(TrialRecord.of(t).device_seconds for t in study.get_trials(deepcopy=False))


def open_study(storage_url: str, name: str) -> optuna.Study:
    """An existing study, or a one-line ValueError naming the storage; creates nothing."""
    try:
        storage = open_existing_storage(storage_url)
    except ValueError as error:
        raise ValueError(f"study {name!r} cannot be read: {error}") from None
    if name not in set(optuna.get_all_study_names(storage)):
        raise ValueError(f"study {name!r} does not exist in {storage_url}")
    return optuna.load_study(study_name=name, storage=storage)


def settings_of(study: optuna.Study) -> SearchSettings:
    """The settings ``study`` was started with, or a ValueError for a study the search did not make."""
    if SETTINGS_ATTR not in study.user_attrs:
        raise ValueError(f"study {study.study_name!r} was not made by 'python -m search run': it has no search settings")
    return SearchSettings.from_json(study.user_attrs[SETTINGS_ATTR])


def load_settings(study_name: str, storage_url: str) -> SearchSettings:
    """The settings a study was started with (for resume)."""
    return settings_of(open_study(storage_url, study_name))
