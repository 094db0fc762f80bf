"""The settings of one search, validated up front and stored on the Optuna study.

Every user string (budget, target, data set, storage, tracking URI, space, sampler) is
checked before anything is created, so a typo costs a one-line error and leaves no study or
run behind. The stored copy is what ``search resume`` and ``search status`` read back.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .budget import parse_budget
from .storage import check_storage_url, default_storage_url
from .target import default_target, parse_target
from .tracking import check_tracking_uri

SAMPLERS = ("tpe", "nsga2", "gp", "random")


@dataclass(frozen=True)
class SearchSettings:
    study: str
    space: str
    budget: str
    dataset: str
    target: str
    storage: str
    tracking_uri: str
    workdir: str
    sampler: str = "tpe"
    epochs: int = 2
    seed: int = 0
    address: str | None = None
    data_root: str | None = None
    trials_per_device: int = 1
    cpus_per_trial: int = 1
    measure_repeats: int = 5
    max_trials: int | None = None
    # "module:function" that trains a proxy; the overhead benchmark swaps in a fixed workload.
    trainer: str = "search.train:train_proxy"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "SearchSettings":
        return cls(**json.loads(text))

    def with_budget(self, budget: str) -> "SearchSettings":
        return replace(self, budget=budget)


def build_settings(
    *, study: str, space: str, budget: str, dataset: str, target: str | None, storage: str | None,
    tracking_uri: str | None, workdir: str, sampler: str, epochs: int, seed: int, address: str | None,
    data_root: str | None, trials_per_device: int, cpus_per_trial: int, measure_repeats: int,
    max_trials: int | None = None,
) -> SearchSettings:
    """Validate every option and fill in the defaults; raises ValueError naming the bad value."""
    from space import get_space

    from .data import parse_dataset_spec

    parsed_budget = parse_budget(budget)
    parsed_target = parse_target(target) if target else default_target(parsed_budget.kind)
    parse_dataset_spec(dataset)
    get_space(space)
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler {sampler!r} is unknown; expected one of {', '.join(SAMPLERS)}")
    for name, value in (("epochs", epochs), ("trials-per-device", trials_per_device),
                        ("cpus-per-trial", cpus_per_trial), ("measure-repeats", measure_repeats),
                        ("max-trials", 1 if max_trials is None else max_trials)):
        if value < 1:
            raise ValueError(f"--{name} {value} is invalid: expected a positive integer")
    folder = Path(workdir)
    if not folder.is_dir():
        raise ValueError(f"workdir {workdir!r} does not exist or is not a folder")
    storage = storage or default_storage_url(folder)
    check_storage_url(storage)
    tracking_uri = tracking_uri or f"sqlite:///{(folder / 'mlflow.db').resolve()}"
    check_tracking_uri(tracking_uri)
    if not study or any(c in study for c in "/\\ "):
        raise ValueError(f"study name {study!r} is invalid: use letters, digits, '-', '_' or '.'")
    return SearchSettings(
        study=study, space=space, budget=parsed_budget.text, dataset=dataset, target=parsed_target.key,
        storage=storage, tracking_uri=tracking_uri, workdir=str(folder.resolve()), sampler=sampler, epochs=epochs,
        seed=seed, address=address, data_root=data_root, trials_per_device=trials_per_device,
        cpus_per_trial=cpus_per_trial, measure_repeats=measure_repeats, max_trials=max_trials,
    )
