"""How a trial ends, and what is recorded when it does.

Every ending - complete, stopped by the scheduler, infeasible, failed, not trained for
budget, interrupted - goes through :meth:`Endings.close`: the trial's figures are stored on
it, the study is told, its MLflow child run is logged and its checkpoint dropped. A
completed trial also refreshes the study's live front in MLflow (in a fixed-point study of
several seeds, a front of its rows, each seed's accuracy averaged).
"""
from __future__ import annotations

import time
from typing import Any

import optuna

from ..core.constraints import latency_ms, violated
from ..core.objectives import objectives, slug
from ..core.record import TrialRecord, write
from ..core.repeats import interval
from ..study.studies import budget_used
from .candidate import Candidate
from .context import SearchContext

TrialState = optuna.trial.TrialState
MAX_FAILURES_IN_A_ROW = 3


class SearchError(RuntimeError):
    """A search that cannot go on (all trials failing, an unusable cluster, a held study)."""


class Endings:
    def __init__(self, context: SearchContext) -> None:
        self.context = context

    def infeasible(self, candidate: Candidate, violations: dict[str, float], predicted: bool = False) -> bool:
        """Record constraint values (Optuna trial constraints); end the trial untrained if one
        is broken. ``predicted``: the values are those of the predicted throughput's optimistic
        bound (:mod:`search.core.prediction`), and the trial is never measured."""
        trial, known = candidate.trial, TrialRecord.of(candidate.trial).constraint_values
        for name, value in violations.items():
            if name not in known:
                trial.set_constraint(name, value)
        write(trial, constraint_values={**known, **violations})
        broken = violated(violations)
        if not broken:
            return False
        self.context.tally.infeasible += 1
        write(trial, infeasible=broken, infeasible_predicted=predicted)
        figures = self.figures(candidate)
        how = (f"by prediction: {candidate.predicted:.1f} img/s predicted, +{100 * self.context.margin.margin:.0f} % "
               "at best; not measured") if predicted else "not trained"
        self.context.say(f"[trial {candidate.number}] {candidate.arch} {candidate.summary}: infeasible "
                         f"({', '.join(broken)}: {_figure_text(figures)}), {how}")
        self.close(candidate, TrialState.PRUNED, figures, status="infeasible")
        return True

    def stop(self, candidate: Candidate, rung: int) -> None:
        self.context.tally.stopped += 1
        write(candidate.trial, stopped_at=rung)
        scheduler = self.context.scheduler
        self.context.say(f"[trial {candidate.number}] rung {rung}: top-1 {candidate.accuracies[-1]:.2f}% -> stopped "
                         f"(not in the top 1/{getattr(scheduler, 'eta', 1)} of {scheduler.recorded(rung)})")
        self.close(candidate, TrialState.PRUNED, self.figures(candidate), status="stopped")

    def complete(self, candidate: Candidate, reused: bool = False) -> None:
        """``reused``: its training is another study's (the cache keeps naming that study)."""
        context = self.context
        context.tally.completed += 1
        if not reused:
            context.cache.put_training(candidate.arch, context.recipe(candidate), dict(
                epoch_accuracies=candidate.accuracies, study=context.settings.search.study, trial=candidate.number))
        figures = self.figures(candidate)
        values = [candidate.accuracies[-1], *candidate.throughputs]
        self.close(candidate, TrialState.COMPLETE, figures, values=values, status="complete")
        self._publish_front()
        used, budget = budget_used(context.study), context.budget
        speeds = " / ".join(f"{v:.1f}" for v in values[1:])
        context.say(f"[trial {candidate.number}] top-1 {values[0]:.2f}%  {speeds} img/s  "
                    f"{figures['params'] / 1e6:.2f}M params | budget {used:.0f}/{budget.seconds:.0f} "
                    f"{budget.kind}-s ({100 * used / budget.seconds:.0f}%)")

    def fail(self, candidate: Candidate, kind: str, message: str, reason: str) -> None:
        """A job's failure that is not retried; three in a row (not the architecture's own)
        end the search."""
        context = self.context
        context.tally.failed += 1
        if not context.retry.architecture_fault(reason):
            context.failures_in_a_row += 1
        write(candidate.trial, error=message[:2000], failure=reason)
        context.say(f"[trial {candidate.number}] FAILED during {kind}: {reason} ({message})")
        context.dequeue(candidate)
        self.close(candidate, TrialState.FAIL, status="failed")
        if context.failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
            raise SearchError(f"{MAX_FAILURES_IN_A_ROW} trials failed in a row; last error: {message}")

    def leave_untrained(self, candidate: Candidate, why: str, line: str) -> None:
        """End a trial the budget cannot carry further, rung or no rung, as PRUNED with its
        reason recorded (``not_trained``): nothing went wrong with it, so it is no FAIL, which
        ``status`` and optuna-dashboard would show as a failure. ``status``, the closing line
        and its MLflow child run count it as left untrained for budget, apart from the trials
        the scheduler stopped (PRUNED too)."""
        self.context.tally.unaffordable += 1
        write(candidate.trial, not_trained=why)
        self.context.say(f"[trial {candidate.number}] {candidate.arch}: not trained, {line}")
        self.close(candidate, TrialState.PRUNED, status="untrained")

    def interrupted(self, candidate: Candidate) -> None:
        """Ctrl-C or a dead driver: the trial re-runs on resume; its child run records what it
        reached and cost (the re-run gets its own)."""
        self._log(candidate, dict(self.figures(candidate), status="interrupted"), None)

    def close(self, candidate: Candidate, state: TrialState, figures: dict[str, Any] | None = None,
              values: list[float] | None = None, status: str = "") -> None:
        """Store the trial's record, tell the study, log the child run, drop the checkpoint."""
        context, trial = self.context, candidate.trial
        attrs = dict(figures or {})
        attrs.update(trial_wall_seconds=time.perf_counter() - candidate.started, busy_seconds=candidate.busy,
                     fidelity=candidate.epochs_done, throughput_cached=not candidate.measured_now, status=status)
        write(trial, **attrs)
        context.study.tell(trial, values, state=state)
        context.active.pop(candidate.number, None)
        if not context.settings.run.keep_checkpoints:
            context.checkpoint(candidate).unlink(missing_ok=True)
        self._log(candidate, attrs, values)

    def figures(self, candidate: Candidate) -> dict[str, Any]:
        """Params and FLOPs, and the first target's throughput figure with its interval and
        latency; with several targets, each one's figures under ``target_figures``."""
        out = dict(candidate.figures or {})
        first = candidate.first_measured
        if first is not None:
            out.update(_throughput_figures(first, self.context.target.batch_size))
        if len(candidate.targets) > 1:
            batch = {t.key: t.batch_size for t in self.context.settings.search.targets}
            out["target_figures"] = {key: _throughput_figures(measured, batch[key])
                                     for key, measured in candidate.measured.items()}
        return out

    def _log(self, candidate: Candidate, attrs: dict[str, Any], values: list[float] | None) -> None:
        params = {f"arch.{k}": v for k, v in candidate.config.to_dict().items()}
        params.update(arch_id=candidate.arch, summary=candidate.summary, seed=candidate.seed,
                      **{f"space.{k}": v for k, v in candidate.trial.params.items()})
        metrics = {k: attrs[k] for k in ("params", "flops", "throughput", "throughput_spread", "throughput_low",
                                         "throughput_high", "measured_times", "latency_ms") if k in attrs}
        for key, figures in attrs.get("target_figures", {}).items():  # a study of several targets
            metrics.update({f"{name}/{slug(key)}": figures[name] for name in
                            ("throughput", "throughput_low", "throughput_high", "latency_ms")})
        if candidate.predicted is not None:
            metrics["predicted_throughput"] = candidate.predicted
        metrics.update(fidelity_epochs=candidate.epochs_done, device_seconds=sum(candidate.costs.values()))
        if values is not None:
            metrics.update({o.name: v for o, v in zip(objectives(self.context.targets), values)})
        tags = {"arch_id": candidate.arch, "summary": candidate.summary, "status": attrs["status"]}
        record = TrialRecord.of(candidate.trial)
        if record.failure is not None:
            tags["failure"] = record.failure
        if record.not_trained is not None:
            tags["not_trained"] = record.not_trained
        if record.infeasible_predicted:
            tags["infeasible_by"] = "prediction"
        if record.throughput_predicted_only:
            tags["throughput_from"] = "prediction"
        self.context.tracker.log_trial(candidate.number, params, metrics, tags, {"val_top1": candidate.accuracies})

    def _publish_front(self) -> None:
        from litv2 import LITV2_S
        from space import arch_id

        from ..study.front import evaluated_points, front_csv, hypervolume, nondominated, pareto_front, plot_front, \
            seed_means, study_hypervolume

        context = self.context  # one front per target, named after it where there are several
        if context.settings.search.seeds > 1:  # a row's seeds averaged: one point per row, placed by its mean
            complete = context.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            rows = {key: seed_means(complete, key) for key in context.targets}
            fronts = {key: (points, nondominated(points)) for key, points in rows.items()}
        else:
            fronts = {key: (evaluated_points(context.study, key), pareto_front(context.study, key))
                      for key in context.targets}
        named = {key: "" if len(fronts) == 1 else f"/{slug(key)}" for key in fronts}
        averaged = context.settings.search.seeds > 1 and len(fronts) == 1  # the rows' front, not a point per seed
        progress = dict(budget_used=budget_used(context.study), hypervolume=hypervolume(
            next(iter(fronts.values()))[1]) if averaged else study_hypervolume(context.study))
        for key, (_, front) in fronts.items():
            progress[f"front_size{named[key]}"] = len(front)
            if named[key]:
                progress[f"hypervolume{named[key]}"] = hypervolume(front)
        context.tracker.log_progress(context.tally.completed, progress)
        marked = {arch_id(LITV2_S): "LITv2-S"}
        for key, (points, front) in fronts.items():
            context.tracker.log_front(front_csv(front), lambda path, points=points, front=front, key=key: plot_front(
                points, front, path, f"study {context.settings.search.study}", key, marked),
                name=named[key].replace("/", "-"))


def _throughput_figures(measured: dict[str, Any], batch_size: int) -> dict[str, Any]:
    """A kept throughput figure as a trial records it: median, interval, latency per batch."""
    low, high = interval(measured)
    return dict(throughput=measured["throughput"], throughput_spread=measured.get("throughput_spread", 0.0),
                throughput_low=low, throughput_high=high, measured_times=measured.get("measured_times", 1),
                peak_memory_mb=measured.get("peak_memory_mb"), latency_ms=latency_ms(measured["throughput"], batch_size))


def _figure_text(figures: dict[str, Any]) -> str:
    parts = [f"{figures['params'] / 1e6:.2f}M params", f"{figures['flops'] / 1e9:.3f} GFLOPs"]
    if "throughput" in figures:
        parts.append(f"{figures['throughput']:.1f} img/s")
    return ", ".join(parts)
