"""Read-only views of a study for ``search status`` and ``search front``."""
from __future__ import annotations

from pathlib import Path

import optuna

from .budget import parse_budget
from .front import evaluated_points, front_csv, front_table, hypervolume, pareto_front, plot_front
from .orchestrator import SETTINGS_ATTR, budget_used
from .settings import SearchSettings
from .storage import open_storage

TrialState = optuna.trial.TrialState


def _load(study_name: str, storage_url: str) -> tuple[optuna.Study, SearchSettings]:
    storage = open_storage(storage_url)
    if study_name not in {s.study_name for s in optuna.get_all_study_summaries(storage)}:
        raise ValueError(f"study {study_name!r} does not exist in {storage_url}")
    study = optuna.load_study(study_name=study_name, storage=storage)
    return study, SearchSettings.from_json(study.user_attrs[SETTINGS_ATTR])


def status_text(study_name: str, storage_url: str) -> str:
    study, settings = _load(study_name, storage_url)
    trials = study.get_trials(deepcopy=False)
    counts = {state: sum(t.state == state for t in trials) for state in TrialState}
    duplicates = sum("duplicate_of" in t.user_attrs for t in trials)
    budget = parse_budget(settings.budget)
    used = budget_used(study)
    front = pareto_front(evaluated_points(study))
    lines = [
        f"study {study_name}: space {settings.space}, data {settings.dataset}, target {settings.target}",
        f"trials: {counts[TrialState.COMPLETE] - duplicates} done, {duplicates} duplicates answered from the study, "
        f"{counts[TrialState.RUNNING]} running, {counts[TrialState.FAIL]} failed, {counts[TrialState.WAITING]} queued",
        f"budget: used {used:.0f} of {budget.seconds:.0f} {budget.kind}-s ({100 * used / budget.seconds:.1f}%), "
        f"left {max(0.0, budget.seconds - used):.0f}",
        f"front: {len(front)} architectures, hypervolume {hypervolume(front):.1f}",
        front_table(front),
    ]
    return "\n".join(lines)


def write_front(study_name: str, storage_url: str, csv_path: str | None, plot_path: str | None) -> str:
    study, settings = _load(study_name, storage_url)
    points = evaluated_points(study)
    front = pareto_front(points)
    if csv_path:
        Path(csv_path).write_text(front_csv(front))
    if plot_path:
        from litv2 import LITV2_S
        from space import arch_id

        plot_front(points, front, Path(plot_path), f"study {study_name}", settings.target, {arch_id(LITV2_S): "LITv2-S"})
    return front_table(front)
