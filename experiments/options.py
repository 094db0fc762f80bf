"""``experiments run``'s options and the study settings they make, validated without the
deep-learning stack, so the command line refuses bad input before importing it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from search.core.datasets import DEFAULT_DATASET
from search.core.budget import parse_budget
from search.core.constraints import parse_count
from search.core.target import parse_target
from search.study.settings import RunConfig, SearchConfig, SearchSettings, default_study_name

from .recipes import Recipe


@dataclass(frozen=True)
class RunOptions:
    """``experiments run``'s options; ``None`` takes the recipe's (or the search's) default."""

    budget: str | None = None
    dataset: str | None = None
    target: str | None = None
    seeds: int | None = None
    epochs: int | None = None
    out: str | None = None
    study: str | None = None
    workdir: str = "."
    storage: str | None = None
    tracking_uri: str | None = None
    address: str | None = None
    data_root: str | None = None
    max_memory: str | None = None
    seed: int = 0
    measure_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.max_memory is not None:  # read by measured recipes alone, checked for every recipe, before any work
            parse_count(self.max_memory, "--max-memory")


def settings_for(recipe: Recipe, options: RunOptions) -> SearchSettings:
    """The study's settings, every option validated (a one-line ValueError naming the bad one)."""
    return SearchSettings(
        SearchConfig(
            study=default_study_name(recipe.name) if options.study is None else options.study, space=str(recipe.path),
            budget=parse_budget(recipe.budget if options.budget is None else options.budget), target=parse_target(options.target) if options.target else None,
            dataset=options.dataset or recipe.dataset or DEFAULT_DATASET, sampler="random",
            epochs=recipe.epochs if options.epochs is None else options.epochs, seed=options.seed,
            seeds=recipe.seeds if options.seeds is None else options.seeds, measure_seconds=options.measure_seconds),
        RunConfig(Path(options.workdir), storage=options.storage, tracking_uri=options.tracking_uri,
                  address=options.address, data_root=options.data_root))
