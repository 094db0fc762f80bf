"""The settings of one search, in two parts: what to search, and where it runs.

As Ray Tune separates ``TuneConfig`` from ``RunConfig``: :class:`SearchConfig` is the
experiment - space, budget, target, data set, sampler, scheduler, constraints, seeds - and is
stored with the study, so ``resume``, ``status`` and ``pick`` read it back; :class:`RunConfig`
is the machinery - work directory, Optuna storage, MLflow tracking store, checkpoints, cluster
address, slots - and is what each command is given, so a copied or moved work directory is
resumed where it is now. Both validate themselves when made: every user string is parsed
once, here at the edge (budgets become :class:`~search.core.budget.Budget`, targets
:class:`~litv2.target.Target`), and a typo costs a one-line ValueError before anything is
created.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import MISSING, asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from litv2.target import Target

from ..core.budget import Budget, parse_budget
from ..core.constraints import Constraints
from ..core.datasets import DEFAULT_DATASET, parse_dataset_spec
from ..core.faults import DEFAULT_MAX_RETRIES
from ..core.samplers import DEFAULT_SAMPLER, SAMPLERS
from ..core.prediction import MEASURED, THROUGHPUT_SOURCES
from ..core.scheduler import SCHEDULERS, default_scheduler, make_scheduler
from ..core.target import default_target, parse_target
from .storage import check_storage_url, check_tracking_uri, default_storage_url, default_tracking_uri

# Study names: a file-name-safe set (they name checkpoint folders and MLflow runs), not starting with a dot.
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
STUDY_NAME_RULE = "1-100 letters, digits, '.', '_' or '-', starting with a letter or digit"
MAX_SEED = 2**32 - 1
LOG_FILE = "search.log"  # in the work directory  # numpy's and the samplers' seed range
PROXY_TRAINER = "search.training.proxy:train_proxy"
LEGACY_TRAINERS = {"search.train:train_proxy": PROXY_TRAINER}  # where it was before search/ had sub-packages


def check_study_name(name: str) -> str:
    """``name`` if it is a valid study name (:data:`STUDY_NAME_RULE`), else a one-line ValueError."""
    if not STUDY_NAME.fullmatch(name):
        raise ValueError(f"--study {name!r} is invalid: expected {STUDY_NAME_RULE}")
    return name


def default_study_name(prefix: str) -> str:
    """``PREFIX-DATE-TIME``, with PREFIX (a space file's stem, a recipe's name) made a valid study name."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", prefix).strip("-._")[:80] or "study"
    return f"{cleaned}-{time.strftime('%Y%m%d-%H%M%S')}"


def _positive(**values: int | None) -> None:
    for name, value in values.items():
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} {value} is invalid: expected a positive integer")


def _check_targets(targets: tuple[Target, ...], throughput: str) -> None:
    """Targets one study can serve: each once, one resolution (the architectures' FLOPs and a
    FLOPs constraint are counted at it), one device kind (one kind of measuring node serves
    them), and measured ones only where there are several."""
    keys = [t.key for t in targets]  # the instance's target_keys, before it is made
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ValueError(f"--target {repeated[0]} is given twice; expected each target once")
    if len({t.img_size for t in targets}) > 1:
        raise ValueError(f"--target {', '.join(keys)}: the targets of one study share a resolution; expected one "
                         f"of {targets[0].img_size} px (a study per resolution)")
    if len({t.device for t in targets}) > 1:
        raise ValueError(f"--target {', '.join(keys)}: the targets of one study run on one device kind; expected "
                         f"only {targets[0].device} targets (a study per device kind)")
    if len(targets) > 1 and throughput != MEASURED:
        raise ValueError(f"--throughput {throughput} ranks by one latency table, of one target; expected a single "
                         f"--target (given {len(targets)})")


@dataclass(frozen=True)
class SearchConfig:
    """What to search (stored with the study). ``target`` None takes the budget's default
    device; ``more_targets`` are further deployment targets, each a throughput objective of
    its own beside the shared accuracy (constraints and a latency table's predictions are the
    first target's); ``scheduler`` None takes MO-ASHA where ``epochs`` leaves room for two rungs."""

    study: str
    space: str
    budget: Budget
    target: Target | None = None
    more_targets: tuple[Target, ...] = ()
    dataset: str = DEFAULT_DATASET
    sampler: str = DEFAULT_SAMPLER
    scheduler: str | None = None
    epochs: int = 2
    min_epochs: int = 1
    eta: int = 3
    seed: int = 0
    seeds: int = 1
    max_trials: int | None = None
    constraints: Constraints = field(default_factory=Constraints)
    measure_seconds: float | None = None  # time cap of one measurement (litv2.measure's max_seconds)
    trainer: str = PROXY_TRAINER  # "module:function" that trains a proxy (the overhead benchmark swaps it)
    throughput: str = MEASURED  # what ranks candidates: their measurement, or their prediction alone

    def __post_init__(self) -> None:
        from space import get_space

        check_study_name(self.study)
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"--seed {self.seed} is invalid: expected an integer from 0 to {MAX_SEED}")
        parse_dataset_spec(self.dataset)
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler {self.sampler!r} is unknown; expected one of {', '.join(SAMPLERS)}")
        _positive(epochs=self.epochs, max_trials=self.max_trials, seeds=self.seeds, min_epochs=self.min_epochs,
                  eta=self.eta)
        if self.min_epochs > self.epochs:  # whichever scheduler runs: a later `--scheduler mo-asha` must not meet it
            raise ValueError(f"--min-epochs {self.min_epochs} is invalid: expected 1 <= min-epochs <= --epochs "
                             f"{self.epochs}")
        if self.throughput not in THROUGHPUT_SOURCES:
            raise ValueError(f"--throughput {self.throughput!r} is unknown; expected one of "
                             f"{', '.join(THROUGHPUT_SOURCES)}")
        if self.measure_seconds is not None and not self.measure_seconds > 0:
            raise ValueError(f"--measure-seconds {self.measure_seconds} is invalid: expected a positive number "
                             "of seconds")
        space = get_space(self.space)
        if self.seeds > 1 and not space.fixed_points:
            raise ValueError(f"--seeds {self.seeds} is for fixed-point spaces (ablation tables); space "
                             f"{self.space!r} is searched")
        scheduler = self.scheduler
        if scheduler is not None and scheduler not in SCHEDULERS:
            raise ValueError(f"--scheduler {scheduler!r} is unknown; expected one of {', '.join(SCHEDULERS)}")
        if space.fixed_points:
            if scheduler == "mo-asha":
                raise ValueError(f"--scheduler mo-asha is for searched spaces; space {self.space!r} is a fixed-point "
                                 "table, whose rows all train to the last epoch")
            scheduler = "full"
        scheduler = scheduler or default_scheduler(self.epochs, self.min_epochs, self.eta)
        make_scheduler(scheduler, self.epochs, self.min_epochs, self.eta, space.fixed_points)  # checks the ladder
        object.__setattr__(self, "scheduler", scheduler)
        if self.target is None:
            object.__setattr__(self, "target", default_target(self.budget.kind))
        object.__setattr__(self, "more_targets", tuple(self.more_targets))
        _check_targets(self.targets, self.throughput)

    @property
    def targets(self) -> tuple[Target, ...]:
        """Every deployment target, the first (``target``) first: one throughput objective each."""
        return (self.target, *self.more_targets)

    @property
    def target_keys(self) -> tuple[str, ...]:
        return tuple(t.key for t in self.targets)

    def only_target(self, doing: str) -> Target:
        """The study's target where it has one; with several, which front ``doing`` (``write``,
        ``pick from``) is meant for is the user's to say: a one-line ValueError."""
        if self.more_targets:
            raise ValueError(f"study {self.study!r} has {len(self.targets)} targets, one front each: name the front "
                             f"to {doing} with --target (one of {', '.join(self.target_keys)})")
        return self.target

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self), budget=self.budget.text, target=self.target.key,
                    more_targets=[t.key for t in self.more_targets], constraints=self.constraints.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SearchConfig":
        """Stored settings, checked when they were made: not again (their space file may have
        moved since, and ``status`` answers without loading any space)."""
        trainer = data.get("trainer", PROXY_TRAINER)
        return _as_stored(cls, dict(data, budget=parse_budget(data["budget"]), target=parse_target(data["target"]),
                                    more_targets=tuple(parse_target(t) for t in data.get("more_targets") or ()),
                                    constraints=Constraints.from_dict(data.get("constraints") or {}),
                                    trainer=LEGACY_TRAINERS.get(trainer, trainer)))


@dataclass(frozen=True)
class RunConfig:
    """Where a search runs (each command's own). ``storage`` and ``tracking_uri`` None are the
    work directory's sqlite files; ``checkpoint_dir`` None is ``WORKDIR/checkpoints``."""

    workdir: Path
    storage: str | None = None
    tracking_uri: str | None = None
    address: str | None = None  # a Ray cluster's; None starts a local Ray
    data_root: str | None = None
    trials_per_device: int = 1
    cpus_per_trial: int = 1
    checkpoint_dir: Path | None = None
    keep_checkpoints: bool = False
    max_retries: int = DEFAULT_MAX_RETRIES  # resubmissions of a job whose worker or node was lost
    latency_table: Path | None = None  # litv2.latency table; None: the measuring node's own, if it has one
    # Whether storage / tracking URI are the work directory's: those follow the work directory
    # on resume, explicit ones are kept unless the resuming command names others.
    default_storage: bool = field(default=True, init=False)
    default_tracking: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        folder = Path(self.workdir)
        if not folder.is_dir():
            raise ValueError(f"workdir {str(self.workdir)!r} does not exist or is not a folder")
        _positive(trials_per_device=self.trials_per_device, cpus_per_trial=self.cpus_per_trial)
        if self.max_retries < 0:
            raise ValueError(f"--max-retries {self.max_retries} is invalid: expected 0 or more")
        object.__setattr__(self, "workdir", folder.resolve())
        object.__setattr__(self, "default_storage", self.storage is None)
        object.__setattr__(self, "default_tracking", self.tracking_uri is None)
        object.__setattr__(self, "storage", self.storage or default_storage_url(folder))
        object.__setattr__(self, "tracking_uri", self.tracking_uri or default_tracking_uri(folder))
        check_storage_url(self.storage)
        check_tracking_uri(self.tracking_uri)
        if self.checkpoint_dir is not None:
            object.__setattr__(self, "checkpoint_dir", Path(self.checkpoint_dir))
        if self.latency_table is not None:
            object.__setattr__(self, "latency_table", Path(self.latency_table))
            if not self.latency_table.is_file():
                raise ValueError(f"--latency-table {str(self.latency_table)!r} does not exist")

    @property
    def checkpoints(self) -> Path:
        return self.checkpoint_dir or self.workdir / "checkpoints"

    @property
    def log_file(self) -> Path:
        """Where the libraries' own lines go (``search.cli.logs``), Ray's C++ ones included."""
        return self.workdir / LOG_FILE

    def moved_to(self, workdir: str | Path, storage: str | None, tracking_uri: str | None) -> "RunConfig":
        """This run's settings for a command in ``workdir`` (``resume``, ``pick``, ...): the storage
        is the one the study was opened from (``storage``, or the work directory's default); the
        tracking store is ``tracking_uri`` if given, else the work directory's default if the
        study used the default, else the stored explicit one."""
        tracking = tracking_uri or (None if self.default_tracking else self.tracking_uri)
        return replace(self, workdir=Path(workdir), storage=storage, tracking_uri=tracking)

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self), workdir=str(self.workdir),
                    checkpoint_dir=None if self.checkpoint_dir is None else str(self.checkpoint_dir),
                    latency_table=None if self.latency_table is None else str(self.latency_table))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        """Stored settings, as recorded: their work directory may be gone (a moved study), so
        they are not checked again until :meth:`moved_to` places them."""
        checkpoints, table = data.get("checkpoint_dir"), data.get("latency_table")
        return _as_stored(cls, dict(data, workdir=Path(data["workdir"]),
                                    checkpoint_dir=None if checkpoints is None else Path(checkpoints),
                                    latency_table=None if table is None else Path(table)))


def _as_stored(cls: type, data: dict[str, Any]) -> Any:
    """An instance of the dataclass ``cls`` from stored fields, without its checks; a field
    it does not have is ignored, a missing one takes its default."""
    made = object.__new__(cls)
    for name, spec in cls.__dataclass_fields__.items():
        default = spec.default_factory() if spec.default_factory is not MISSING else spec.default
        object.__setattr__(made, name, data.get(name, default))
    return made


@dataclass(frozen=True)
class SearchSettings:
    """A search: what to search, and where it runs."""

    search: SearchConfig
    run: RunConfig

    def to_json(self) -> str:
        return json.dumps(dict(search=self.search.to_dict(), run=self.run.to_dict()), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "SearchSettings":
        data = json.loads(text)
        if "search" not in data:  # a study made before the settings were split: one flat record
            data = dict(search=data, run=data)
        return cls(SearchConfig.from_dict(data["search"]), RunConfig.from_dict(data["run"]))

    def with_budget(self, budget: Budget) -> "SearchSettings":
        return replace(self, search=replace(self.search, budget=budget))

    def with_run(self, run: RunConfig) -> "SearchSettings":
        return replace(self, run=run)

    def as_params(self) -> dict[str, Any]:
        """The settings as MLflow parameters (paths included, for the record)."""
        flat = {**self.search.to_dict(), **self.run.to_dict()}
        return {k: v for k, v in flat.items() if v is not None and v != {} and v != []}
