"""Search settings from one flat set of options, as the tests write them (``budget="1cpu-h"``,
``workdir=tmp_path``, ...): split into what to search and where it runs, as the CLI does."""
from __future__ import annotations

from pathlib import Path

from search.core.budget import parse_budget
from search.core.constraints import Constraints
from search.core.target import parse_target
from search.study.settings import RunConfig, SearchConfig, SearchSettings

RUN_FIELDS = set(RunConfig.__dataclass_fields__) - {"default_storage", "default_tracking"}


def flat_settings(**options) -> SearchSettings:
    run = {name: options.pop(name) for name in list(options) if name in RUN_FIELDS}
    options["budget"] = parse_budget(options["budget"])
    options["target"] = parse_target(options["target"]) if options.get("target") else None
    options["more_targets"] = tuple(parse_target(t) for t in options.get("more_targets", ()))
    options["constraints"] = options.get("constraints") or Constraints()
    return SearchSettings(SearchConfig(**options), RunConfig(Path(run.pop("workdir")), **run))
