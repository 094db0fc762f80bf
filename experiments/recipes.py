"""Ablation recipes: a space file whose points are a table's rows, plus an ``experiment`` block.

A recipe is read by the search as any fixed-point space (``python -m search run --space
FILE`` runs its trainings), so an ablation is a study of the same engine - workers, budget,
caches, MLflow - and nothing else. The ``experiment`` block says what the table needs
beyond the architectures::

    experiment:
      dataset: cluttered-digits   # the default data set (--dataset overrides it)
      epochs: 8                   # default proxy epochs (--epochs)
      budget: 0.5cpu-h            # default device budget (--budget)
      seeds: 3                    # default trainings per row (--seeds; 3, the fewest that can separate a change)
      sweep: alpha                # a trial parameter whose values are the x axis of a plot
      resolutions: [[800, 1280]]  # more inputs (height, width) for FLOPs and throughput
      compare: previous           # each row against the row above (a path of changes, as Table 5);
                                  # default "first": every row against the first
      paper: {source: ..., figures: {...}, changes: {...}}  # the paper's side (experiments.paper)
    # or, for tables that train nothing:
    experiment:
      measure: attention          # each row's attention layers alone
      stage: 2                    # the stage whose attention (dim, heads, kind, ...) is taken
      sides: [14, 28, 56, 112]    # token-map sides
      tokens: 12544               # tokens per forward (batch = tokens // side^2, at least 1);
                                  # without it, the target's batch at every side

Shipped recipes live in ``experiments/recipes/``; any other ``.yaml``/``.json`` file is a user
recipe. A bad file raises :class:`space.SpaceError` naming the file and the field.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from space import SearchSpace, SpaceError, load_space, row_label
from space.dims import Domain, check_keys, positive_int
from search.core.budget import parse_budget
from search.core.datasets import parse_dataset_spec
from space.registry import FILE_SUFFIXES

from .paper import PaperFigures, parse_paper

RECIPES_DIR = Path(__file__).with_name("recipes")
EXPERIMENT_KEYS = ("dataset", "epochs", "budget", "seeds", "sweep", "resolutions", "compare", "paper", "measure", "stage", "sides",
                   "tokens")
MEASURE_KEYS = ("measure", "stage", "sides", "tokens")
MEASURE_KINDS = ("attention",)
DEFAULT_EPOCHS = 8
DEFAULT_BUDGET = "0.5cpu-h"
DEFAULT_SEEDS = 3
COMPARE_MODES = ("first", "previous")


@dataclass(frozen=True)
class AttentionSweep:
    """A table that trains nothing: each row's stage-``stage`` attention alone at each side,
    ``tokens`` tokens per forward (``None``: the target's batch of maps)."""

    stage: int
    sides: tuple[int, ...]
    tokens: int | None = None

    def batch(self, side: int, target_batch: int) -> int:
        return max(1, self.tokens // side**2) if self.tokens else target_batch


@dataclass(frozen=True)
class Recipe:
    """One ablation: its rows (a fixed-point space) and how the table is made.

    Attributes:
        name, description: from the file.
        path: the file, absolute: the study stores it as its space, so ``search resume`` and
            ``experiments show`` find the recipe again.
        space: the rows.
        dataset, epochs, budget, seeds: defaults of ``experiments run`` (``None`` dataset: the search's).
        sweep: the trial parameter plotted on the x axis, if the rows are a sweep.
        resolutions: extra ``(height, width)`` inputs for FLOPs and throughput columns.
        compare: ``first`` (every row against the first) or ``previous`` (against the row above).
        paper: the paper's figures and reported directions, if the recipe has them.
        attention: set for recipes that measure attention layers instead of training.
    """

    name: str
    description: str
    path: Path
    space: SearchSpace
    dataset: str | None = None
    epochs: int = DEFAULT_EPOCHS
    budget: str = DEFAULT_BUDGET
    seeds: int = DEFAULT_SEEDS
    sweep: str | None = None
    resolutions: tuple[tuple[int, int], ...] = ()
    compare: str = "first"
    paper: PaperFigures | None = None
    attention: AttentionSweep | None = None

    @property
    def labels(self) -> list[str]:
        """The rows, in table order."""
        return [row_label(params) for params in self.space.grid_params()]


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str) -> Recipe:
    """A shipped recipe by name, or a recipe file.

    Raises:
        SpaceError: an unknown name, or a file that is not a valid recipe (one line naming
            the file, the field and the value).
    """
    if name_or_path in recipe_names():
        path = RECIPES_DIR / f"{name_or_path}.yaml"
    elif Path(name_or_path).suffix.lower() in FILE_SUFFIXES:
        path = Path(name_or_path)
    else:
        raise SpaceError(None, f"unknown recipe {name_or_path!r}; expected one of {', '.join(recipe_names())} "
                               f"or a {'/'.join(FILE_SUFFIXES)} file")
    space = load_space(path)  # a recipe is first of all a valid space file
    text = path.read_text()
    data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    try:
        return _parse(data, space, path.resolve())
    except SpaceError as err:
        raise err.located(str(path)) from None


def _parse(data: dict[str, Any], space: SearchSpace, path: Path) -> Recipe:
    if not space.fixed_points:
        raise SpaceError("fixed_points", "a recipe's rows are fixed points: set 'fixed_points: true'")
    block = data.get("experiment", {})
    if not isinstance(block, dict):
        raise SpaceError("experiment", f"expected a mapping, got {type(block).__name__}")
    check_keys(block, EXPERIMENT_KEYS, "experiment")
    common = dict(name=space.name, description=space.description, path=path, space=space)
    if "measure" in block:
        return Recipe(**common, attention=_attention(block, space))
    misplaced = sorted(set(block) & set(MEASURE_KEYS))
    if misplaced:
        raise SpaceError(f"experiment.{misplaced[0]}", "is for tables that measure ('measure: attention')")
    dataset = block.get("dataset")
    if dataset is not None:

        dataset = Domain(str).coerce(dataset, "experiment.dataset")
        try:
            parse_dataset_spec(dataset)
        except ValueError as err:
            raise SpaceError("experiment.dataset", str(err)) from None
    sweep = block.get("sweep")
    if sweep is not None:
        swept = sorted({name for name, _, _ in space.dimensions()} - {"point"})
        if Domain(str).coerce(sweep, "experiment.sweep") not in swept:
            expected = f"expected one of {', '.join(swept)}" if swept else "these rows are points, not a sweep"
            raise SpaceError("experiment.sweep", f"{sweep!r} is not a swept parameter of these rows; {expected}")
    compare = Domain(str).coerce(block.get("compare", "first"), "experiment.compare")
    if compare not in COMPARE_MODES:
        raise SpaceError("experiment.compare", f"{compare!r} is not one of {', '.join(COMPARE_MODES)}")
    labels = [row_label(params) for params in space.grid_params()]
    budget = Domain(str).coerce(block.get("budget", DEFAULT_BUDGET), "experiment.budget")
    try:
        parse_budget(budget)
    except ValueError as err:
        raise SpaceError("experiment.budget", str(err)) from None
    return Recipe(
        **common, dataset=dataset, compare=compare, budget=budget,
        paper=parse_paper(block["paper"], labels) if "paper" in block else None,
        epochs=Domain(int, positive_int).coerce(block.get("epochs", DEFAULT_EPOCHS), "experiment.epochs"),
        seeds=Domain(int, positive_int).coerce(block.get("seeds", DEFAULT_SEEDS), "experiment.seeds"),
        sweep=sweep, resolutions=_resolutions(block.get("resolutions", [])),
    )


def _resolutions(raw: Any) -> tuple[tuple[int, int], ...]:
    field = "experiment.resolutions"
    if not isinstance(raw, list):
        raise SpaceError(field, f"expected a list of [height, width] pairs, got {raw!r}")
    out = []
    for i, pair in enumerate(raw):
        if not isinstance(pair, list) or len(pair) != 2:
            raise SpaceError(f"{field}[{i}]", f"expected [height, width], got {pair!r}")
        out.append(tuple(Domain(int, positive_int).coerce(v, f"{field}[{i}]") for v in pair))
    return tuple(out)


def _attention(block: dict[str, Any], space: SearchSpace) -> AttentionSweep:
    measure = Domain(str).coerce(block["measure"], "experiment.measure")
    if measure not in MEASURE_KINDS:
        raise SpaceError("experiment.measure", f"{measure!r} is not one of {', '.join(MEASURE_KINDS)}")
    trained = sorted(set(block) - set(MEASURE_KEYS))
    if trained:
        raise SpaceError(f"experiment.{trained[0]}", "is for tables that train; 'measure: attention' trains nothing")
    for key in ("stage", "sides"):
        if key not in block:
            raise SpaceError("experiment", f"'measure: attention' needs '{key}'")
    stage = Domain(int).coerce(block["stage"], "experiment.stage")
    if not 0 <= stage < space.base.num_stages:
        raise SpaceError("experiment.stage", f"{stage} is not a stage index (0..{space.base.num_stages - 1})")
    for point in space.points:
        if not point.config.attention[stage]:
            raise SpaceError("experiment.stage", f"row {point.label!r} has no attention in stage {stage}")
    sides = block["sides"]
    if not isinstance(sides, list) or not sides:
        raise SpaceError("experiment.sides", f"expected a non-empty list of token-map sides, got {sides!r}")
    tokens = block.get("tokens")
    return AttentionSweep(stage, tuple(Domain(int, positive_int).coerce(s, "experiment.sides") for s in sides),
                          None if tokens is None else Domain(int, positive_int).coerce(tokens, "experiment.tokens"))
