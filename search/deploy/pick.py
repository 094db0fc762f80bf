"""``search pick``: the most accurate model of a study's front that meets a deployment target.

Candidates are the study's full-fidelity Pareto set (``Study.best_trials``: feasible COMPLETE
trials; trials stopped by successive halving never); on a target of a study of several,
that target's own front (:func:`search.study.front.pareto_front`). The target may differ from the one the
search measured on: every candidate is measured there unless the work directory's throughput
cache holds a figure for it under this machine's measuring fingerprint (device and library
versions: a figure from another GPU model or another torch does not count), and new figures
are cached.
One cached figure is one noisy sample, so before choosing, the K most accurate candidates
that may be feasible are measured again: a candidate whose cached figure breaks a
throughput or latency constraint while its 95 % interval reaches it counts as possibly
feasible (:meth:`Candidate.plausible`). A re-measured figure that disagrees with the cached
one (their intervals do not overlap) is measured a third time, and the figure the others
support is kept (:mod:`search.core.repeats`). A candidate whose kept figure breaks a constraint
drops out and the next one is measured, until the K best feasible ones all carry a fresh
figure. The choice is the most accurate of them (ties: the faster). The table of every
candidate's figures is shown on failure too (:class:`NoFeasibleModel` carries it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import optuna

from litv2 import LITConfig
from litv2.measure import torch_threads

from ..engine.cache import ThroughputCache
from ..core.constraints import Constraints, latency_ms, violated
from ..core.record import TrialRecord
from ..core.repeats import best_supported, disagree, interval, latency_text, throughput_text
from ..study.settings import SearchSettings
from ..core.target import Target

Measure = Callable[[str, str], dict[str, Any]]
Count = Callable[[str, int], dict[str, Any]]


class NoFeasibleModel(ValueError):
    """No front candidate meets the constraints (a usage error: exit code 2); ``table`` is
    every candidate's figures, for the user to see how close each came."""

    def __init__(self, message: str, table: str = "") -> None:
        super().__init__(message)
        self.table = table


@dataclass
class Candidate:
    """One architecture of the front, with its figures on the pick's target."""

    trial: int
    arch_id: str
    summary: str
    config: LITConfig
    accuracy: float
    epochs: int
    seed: int
    params: float
    flops: float
    cached: dict[str, Any] | None = None  # the figure known before re-measuring
    source: str = ""  # where ``cached`` came from: "cache" or "measured now"
    remeasured: dict[str, Any] | None = None  # the figure kept after re-measuring (see search.core.repeats)
    measured_times: int = 0  # measurements made by this pick

    @property
    def measured(self) -> dict[str, Any]:
        """The latest figure: re-measured if it was, else the cached one."""
        return self.remeasured or self.cached or {}

    @property
    def throughput(self) -> float:
        return float(self.measured["throughput"])

    def violations(self, constraints: Constraints, batch_size: int, throughput: float | None = None) -> dict[str, float]:
        """Relative violation per constraint on the latest figures (> 0: broken); ``throughput``
        replaces the latest figure's (e.g. the fast end of its interval)."""
        return {**constraints.static_violations(self.params, self.flops),
                **constraints.measured_violations(self.throughput if throughput is None else throughput, batch_size)}

    def feasible(self, constraints: Constraints, batch_size: int) -> bool:
        return not violated(self.violations(constraints, batch_size))

    def plausible(self, constraints: Constraints, batch_size: int) -> bool:
        """Feasible on its figure, or - while it has not been re-measured - on the fast end
        of its interval: one noisy figure just under a limit is no reason to drop a candidate."""
        if self.feasible(constraints, batch_size):
            return True
        if self.remeasured is not None or not self.measured:
            return False
        return not violated(self.violations(constraints, batch_size, throughput=interval(self.measured)[1]))


@dataclass
class Pick:
    """The outcome of :func:`pick_model`."""

    study: str
    target: Target
    constraints: Constraints
    top: int
    candidates: list[Candidate]
    chosen: Candidate | None  # None only for the table of a failed pick

    def feasible(self, candidate: Candidate) -> bool:
        return candidate.feasible(self.constraints, self.target.batch_size)


def front_candidates(study: optuna.Study, target: str | None = None) -> list[Candidate]:
    """The study's full-fidelity feasible Pareto set as candidates (figures not yet attached);
    ``target``: the front on that target of the study's (a key), not the whole Pareto set."""
    from ..study.front import pareto_front

    trials = study.best_trials
    if target is not None:
        on_front = {point.trial for point in pareto_front(study, target)}
        trials = [trial for trial in trials if trial.number in on_front]
    out = []
    for trial in trials:
        record = TrialRecord.of(trial)
        out.append(Candidate(
            trial=trial.number, arch_id=record.arch_id, summary=record.summary,
            config=LITConfig.from_json(record.config), accuracy=float(trial.values[0]),
            epochs=int(record.epochs_done), seed=int(record.seed if record.seed is not None else 0),
            params=float(record.params if record.params is not None else 0),
            flops=float(record.flops if record.flops is not None else 0),
        ))
    return out


def pick_model(study: optuna.Study, settings: SearchSettings, target: Target, constraints: Constraints, top: int,
               cache: ThroughputCache, measure: Measure | None = None, count: Count | None = None,
               say: Callable[[str], None] = print) -> Pick:
    """Choose the most accurate feasible candidate of ``study``'s front on ``target``, measured here.

    ``measure(config_json, target_key)`` and ``count(config_json, img_size)`` default to
    :mod:`search.engine.measuring`'s (tests pass deterministic ones). Raises :class:`NoFeasibleModel`
    with the closest achievable figures when no candidate meets ``constraints``.
    """
    from ..engine.measuring import count_architecture, measure_architecture, measuring_fingerprint

    measure = measure or measure_architecture
    count = count or count_architecture
    fingerprint = measuring_fingerprint(target.key)
    if top < 1:
        raise ValueError(f"--top {top} is invalid: expected a positive integer")
    keys = settings.search.target_keys
    candidates = front_candidates(study, target.key if len(keys) > 1 and target.key in keys else None)
    if not candidates:
        raise ValueError(f"study {study.study_name!r} has no full-fidelity feasible trial to pick from (its front is "
                         f"empty): resume the search with more budget, or lower --epochs in a new one")
    searched = settings.search.target
    for candidate in candidates:
        _attach_figures(candidate, target, searched, fingerprint, cache, count)
    unmeasured = [c for c in candidates if c.cached is None]
    if unmeasured:
        say(f"measuring {len(unmeasured)} of {len(candidates)} candidates on {target} (not measured there yet)")
    for candidate in unmeasured:
        with torch_threads():  # a measurement sets the target's thread count; this process keeps its own
            candidate.cached = measure(candidate.config.to_json(), target.key)
        candidate.source = "measured now"
        cache.put(candidate.arch_id, target.key, candidate.cached)
    batch = target.batch_size
    while True:
        best = sorted((c for c in candidates if c.plausible(constraints, batch)),
                      key=lambda c: (-c.accuracy, -c.throughput))[:top]
        stale = [c for c in best if c.remeasured is None]
        if not stale:
            break
        say(f"re-measuring the most accurate candidates that may be feasible on {target}: "
            + ", ".join(f"trial {c.trial}" for c in stale))
        for candidate in stale:
            _remeasure(candidate, target, measure, say)
    feasible = [c for c in best if c.feasible(constraints, batch)]
    if not feasible:
        table = pick_table(Pick(study.study_name, target, constraints, top, candidates, chosen=None))
        raise NoFeasibleModel(infeasible_message(candidates, constraints, target), table)
    return Pick(study.study_name, target, constraints, top, candidates, chosen=feasible[0])


def _remeasure(candidate: Candidate, target: Target, measure: Measure, say: Callable[[str], None]) -> None:
    """Measure ``candidate`` again; a figure that disagrees with the earlier one is measured a
    third time, and the best-supported figure is kept."""
    figures = [candidate.cached] if candidate.cached else []
    for _ in range(2):
        with torch_threads():
            figures.append(measure(candidate.config.to_json(), target.key))
        candidate.measured_times += 1
        if len(figures) < 2 or not disagree(figures[-2], figures[-1]):
            break
        (low_a, high_a), (low_b, high_b) = interval(figures[-2]), interval(figures[-1])
        say(f"trial {candidate.trial}: {figures[-1]['throughput']:.1f} img/s [{low_b:.1f}, {high_b:.1f}] disagrees "
            f"with {figures[-2]['throughput']:.1f} [{low_a:.1f}, {high_a:.1f}]; measuring it a third time")
    # the fresh figure, unless a third was needed: then the one the others support
    candidate.remeasured = dict(figures[-1] if len(figures) <= 2 else best_supported(figures))


def _attach_figures(candidate: Candidate, target: Target, searched: Target, fingerprint: Mapping[str, str],
                    cache: ThroughputCache, count: Count) -> None:
    """Params/FLOPs at the target's resolution and any throughput already known on the target."""
    if target.img_size != searched.img_size:
        figures = cache.get_figures(candidate.arch_id, target.img_size)
        if figures is None:
            figures = count(candidate.config.to_json(), target.img_size)
            cache.put_figures(candidate.arch_id, target.img_size, figures)
        candidate.params, candidate.flops = float(figures["params"]), float(figures["flops"])
    cached = cache.get(candidate.arch_id, target.key, fingerprint)
    if cached is not None:
        candidate.cached, candidate.source = cached, "cache"


def _limit_text(name: str, value: float) -> str:
    if name == "max_params":
        return f"{value / 1e6:g}M"
    if name == "max_flops":
        return f"{value / 1e9:g}G"
    return f"{value:g}"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def infeasible_message(candidates: list[Candidate], constraints: Constraints, target: Target) -> str:
    """One line: for each constraint no candidate can meet, the candidate that comes closest
    (trial, figure and its 95 % interval); if each can be met alone but not together, the
    candidate that comes closest to meeting them all."""
    limits = constraints.to_dict()
    bs = target.batch_size
    fastest = max(candidates, key=lambda c: c.throughput)
    smallest = min(candidates, key=lambda c: c.params)
    leanest = min(candidates, key=lambda c: c.flops)
    closest_to = {
        "min_throughput": (fastest, fastest.throughput,
                           f"fastest candidate: trial {fastest.trial}, {throughput_text(fastest.measured)} img/s on {target}"),
        "max_latency_ms": (fastest, latency_ms(fastest.throughput, bs),
                           f"lowest latency: trial {fastest.trial}, {latency_text(fastest.measured, bs)} ms per "
                           f"batch of {bs} on {target}"),
        "max_params": (smallest, smallest.params, f"smallest candidate: trial {smallest.trial}, "
                                                  f"{smallest.params / 1e6:.2f}M params"),
        "max_flops": (leanest, leanest.flops, f"fewest FLOPs: trial {leanest.trial}, {leanest.flops / 1e9:.3f} GFLOPs "
                                              f"at {target.img_size} px"),
    }
    alone = []
    for name, limit in limits.items():
        _, value, described = closest_to[name]
        meets = value >= limit if name == "min_throughput" else value <= limit
        if not meets:
            alone.append(f"{described}; {_flag(name)} {_limit_text(name, limit)} cannot be met")
    if alone:
        return "; ".join(alone)
    closest = min(candidates, key=lambda c: max(c.violations(constraints, bs).values()))
    broken = violated(closest.violations(constraints, bs))
    flags = " and ".join(f"{_flag(n)} {_limit_text(n, v)}" for n, v in limits.items())
    return (f"no front candidate meets {flags} together; closest: trial {closest.trial} ({throughput_text(closest.measured)} "
            f"img/s, {latency_text(closest.measured, bs)} ms, {closest.params / 1e6:.2f}M params, "
            f"{closest.flops / 1e9:.3f} GFLOPs), which breaks {', '.join(_flag(n) for n in broken)}")


def _times(candidate: Candidate) -> str:
    return f" (best of {candidate.measured_times})" if candidate.measured_times > 1 else ""


def pick_table(pick: Pick) -> str:
    """Every candidate with its cached and re-measured figures, most accurate first."""
    lines = [
        f"| trial | arch id | proxy top-1 % (epochs) | params | GFLOPs | cached img/s | re-measured img/s "
        f"| ms per batch of {pick.target.batch_size} | feasible |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in sorted(pick.candidates, key=lambda c: (-c.accuracy, -c.throughput)):
        mark = "**picked**" if c is pick.chosen else ("yes" if pick.feasible(c) else
                                                      "no: " + ", ".join(violated(c.violations(pick.constraints, pick.target.batch_size))))
        lines.append(f"| {c.trial} | {c.arch_id} | {c.accuracy:.2f} ({c.epochs}) | {c.params / 1e6:.2f}M "
                     f"| {c.flops / 1e9:.3f} | {throughput_text(c.cached)} ({c.source}) | {throughput_text(c.remeasured)}{_times(c)} "
                     f"| {latency_ms(c.throughput, pick.target.batch_size):.2f} | {mark} |")
    return "\n".join(lines)


def pick_summary(pick: Pick) -> str:
    """One line naming the choice and its figures."""
    c = pick.chosen
    return (f"picked trial {c.trial} ({c.arch_id}, {c.summary}): proxy top-1 {c.accuracy:.2f}% after {c.epochs} "
            f"epochs, {throughput_text(c.remeasured)} img/s re-measured on {pick.target} (cached {throughput_text(c.cached)}), "
            f"{latency_ms(c.throughput, pick.target.batch_size):.2f} ms per batch, {c.params / 1e6:.2f}M params, "
            f"{c.flops / 1e9:.3f} GFLOPs")
