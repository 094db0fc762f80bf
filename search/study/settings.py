"""The settings of one search, validated up front and stored on the Optuna study.

Every user string (budget, target, data set, storage, tracking URI, space, sampler,
scheduler, constraints) is checked before anything is created, so a typo costs a one-line
error and leaves no study or run behind. The stored copy is what ``search resume`` and
``search status`` read back; where the study lives (work directory, storage, tracking store,
checkpoints) is always what the resuming command is given, never the stored paths, so a
copied or moved work directory is resumed where it is now.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..core.budget import parse_budget
from ..core.constraints import Constraints
from ..core.faults import DEFAULT_MAX_RETRIES
from ..core.samplers import SAMPLERS
from ..core.scheduler import SCHEDULERS, default_scheduler, make_scheduler
from .storage import check_storage_url, default_storage_url
from ..core.target import default_target, parse_target
from .preflight import check_tracking_uri


# Study names: a file-name-safe set (they name checkpoint folders and MLflow runs), not starting with a dot.
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
STUDY_NAME_RULE = "1-100 letters, digits, '.', '_' or '-', starting with a letter or digit"
MAX_SEED = 2**32 - 1  # numpy's and the samplers' seed range


def check_study_name(name: str) -> str:
    """``name`` if it is a valid study name (:data:`STUDY_NAME_RULE`), else a one-line ValueError."""
    if not STUDY_NAME.fullmatch(name):
        raise ValueError(f"--study {name!r} is invalid: expected {STUDY_NAME_RULE}")
    return name


def default_study_name(prefix: str) -> str:
    """``PREFIX-DATE-TIME``, with PREFIX (a space file's stem, a recipe's name) made a valid study name."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", prefix).strip("-._")[:80] or "study"
    return f"{cleaned}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_seed(seed: int) -> int:
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"--seed {seed} is invalid: expected an integer from 0 to {MAX_SEED}")
    return seed


def default_tracking_uri(workdir: Path) -> str:
    return f"sqlite:///{(workdir / 'mlflow.db').resolve()}"


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
    max_trials: int | None = None
    scheduler: str = "full"
    min_epochs: int = 1
    eta: int = 3
    seeds: int = 1
    constraints: dict[str, float] = field(default_factory=dict)
    checkpoint_dir: str | None = None  # None: WORKDIR/checkpoints
    keep_checkpoints: bool = False
    # Time cap of one throughput measurement (litv2.measure's max_seconds); None: the protocol's 6 s.
    measure_seconds: float | None = None
    max_retries: int = DEFAULT_MAX_RETRIES  # resubmissions of a trial's job whose worker or node was lost
    # Whether storage / tracking URI were the work directory's defaults: those follow the
    # work directory on resume, explicit ones are kept unless the resume command overrides them.
    default_storage: bool = True
    default_tracking: bool = True
    # "module:function" that trains a proxy; the overhead benchmark swaps in a fixed workload.
    trainer: str = "search.training.proxy:train_proxy"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "SearchSettings":
        data = json.loads(text)
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def with_budget(self, budget: str) -> "SearchSettings":
        return replace(self, budget=budget)

    @property
    def constraint_set(self) -> Constraints:
        return Constraints.from_dict(self.constraints)

    @property
    def checkpoints(self) -> Path:
        return Path(self.checkpoint_dir) if self.checkpoint_dir else Path(self.workdir) / "checkpoints"

    def relocated(self, workdir: str, storage: str | None, tracking_uri: str | None) -> "SearchSettings":
        """These settings in work directory ``workdir`` (``search resume``): the storage is the
        one the study was opened from (``storage``, or the work directory's default); the
        tracking store is ``tracking_uri`` if given, else the work directory's default if the
        study used the default, else the stored explicit one."""
        folder = _check_workdir(workdir)
        if storage:
            check_storage_url(storage)
        if tracking_uri:
            check_tracking_uri(tracking_uri)
        new_storage = storage or default_storage_url(folder)  # where the resuming command found the study
        new_tracking = tracking_uri or (default_tracking_uri(folder) if self.default_tracking else self.tracking_uri)
        return replace(self, workdir=str(folder.resolve()), storage=new_storage, tracking_uri=new_tracking,
                       default_storage=not storage,
                       default_tracking=self.default_tracking and not tracking_uri)


def _check_workdir(workdir: str) -> Path:
    folder = Path(workdir)
    if not folder.is_dir():
        raise ValueError(f"workdir {workdir!r} does not exist or is not a folder")
    return folder


def build_settings(
    *, study: str, space: str, budget: str, dataset: str, target: str | None, storage: str | None,
    tracking_uri: str | None, workdir: str, sampler: str, epochs: int, seed: int, address: str | None,
    data_root: str | None, trials_per_device: int, cpus_per_trial: int, max_trials: int | None = None,
    scheduler: str | None = None, min_epochs: int = 1, eta: int = 3, seeds: int = 1,
    constraints: Constraints | None = None, checkpoint_dir: str | None = None, keep_checkpoints: bool = False,
    measure_seconds: float | None = None,
    max_retries: int = DEFAULT_MAX_RETRIES,
) -> SearchSettings:
    """Validate every option and fill in the defaults; raises ValueError naming the bad value."""
    from space import get_space

    from ..core.datasets import parse_dataset_spec

    check_study_name(study)
    check_seed(seed)
    parsed_budget = parse_budget(budget)
    parsed_target = parse_target(target) if target else default_target(parsed_budget.kind)
    parse_dataset_spec(dataset)
    study_space = get_space(space)
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler {sampler!r} is unknown; expected one of {', '.join(SAMPLERS)}")
    for name, value in (("epochs", epochs), ("trials-per-device", trials_per_device),
                        ("cpus-per-trial", cpus_per_trial), ("max-trials", 1 if max_trials is None else max_trials),
                        ("seeds", seeds), ("min-epochs", min_epochs), ("eta", eta)):
        if value < 1:
            raise ValueError(f"--{name} {value} is invalid: expected a positive integer")
    if measure_seconds is not None and not measure_seconds > 0:
        raise ValueError(f"--measure-seconds {measure_seconds} is invalid: expected a positive number of seconds")
    if max_retries < 0:
        raise ValueError(f"--max-retries {max_retries} is invalid: expected 0 or more")
    if seeds > 1 and not study_space.fixed_points:
        raise ValueError(f"--seeds {seeds} is for fixed-point spaces (ablation tables); space {space!r} is searched")
    if scheduler is not None and scheduler not in SCHEDULERS:
        raise ValueError(f"--scheduler {scheduler!r} is unknown; expected one of {', '.join(SCHEDULERS)}")
    if study_space.fixed_points:
        if scheduler == "mo-asha":
            raise ValueError(f"--scheduler mo-asha is for searched spaces; space {space!r} is a fixed-point table, "
                             "whose rows all train to the last epoch")
        scheduler = "full"
    scheduler = scheduler or default_scheduler(epochs, min_epochs, eta)
    make_scheduler(scheduler, epochs, min_epochs, eta, study_space.fixed_points)  # validates the ladder
    folder = _check_workdir(workdir)
    resolved_storage = storage or default_storage_url(folder)
    check_storage_url(resolved_storage)
    resolved_tracking = tracking_uri or default_tracking_uri(folder)
    check_tracking_uri(resolved_tracking)
    return SearchSettings(
        study=study, space=space, budget=parsed_budget.text, dataset=dataset, target=parsed_target.key,
        storage=resolved_storage, tracking_uri=resolved_tracking, workdir=str(folder.resolve()), sampler=sampler,
        epochs=epochs, seed=seed, address=address, data_root=data_root, trials_per_device=trials_per_device,
        cpus_per_trial=cpus_per_trial, max_trials=max_trials, scheduler=scheduler, min_epochs=min_epochs, eta=eta,
        seeds=seeds, constraints=(constraints or Constraints()).to_dict(), checkpoint_dir=checkpoint_dir,
        keep_checkpoints=keep_checkpoints, measure_seconds=measure_seconds, max_retries=max_retries,
        default_storage=storage is None, default_tracking=tracking_uri is None,
    )


def stored(settings: SearchSettings) -> dict[str, Any]:
    """The settings as MLflow parameters (paths included, for the record)."""
    return {k: v for k, v in asdict(settings).items() if v is not None and v != {}}
