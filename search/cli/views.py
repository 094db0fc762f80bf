"""Read-only views of a study for ``search status`` and ``search front``."""
from __future__ import annotations

from collections import Counter

import optuna

from litv2.files import atomic_write, atomic_write_text

from ..core.prediction import PredictionMargin
from ..core.record import TrialRecord
from ..study.front import evaluated_points, front_csv, front_table, hypervolume, pareto_front, plot_front
from ..study.studies import budget_used, open_study, settings_of
from ..core.scheduler import make_scheduler, rung_counts
from ..study.settings import SearchSettings
from ..core.target import Target

TrialState = optuna.trial.TrialState
COST_KINDS = (("train", "training"), ("measure", "measuring"), ("count", "counting"), ("lost", "lost to crashes"))


def _load(study_name: str, storage_url: str) -> tuple[optuna.Study, SearchSettings]:
    study = open_study(storage_url, study_name)
    return study, settings_of(study)


def status_text(study_name: str, storage_url: str) -> str:
    """Trials by outcome, per-rung progress, the budget split and the current front.

    PRUNED in Optuna is three outcomes here: stopped early by the scheduler, infeasible, and
    left untrained for budget (duplicates, answered from the study, are a fourth); none of
    them counts as failed."""
    study, settings = _load(study_name, storage_url)
    trials = study.get_trials(deepcopy=False)
    records = {t.number: TrialRecord.of(t) for t in trials}
    duplicates = [t for t in trials if records[t.number].duplicate_of is not None]
    own = [t for t in trials if records[t.number].duplicate_of is None]
    rerun = {records[t.number].rerun_of for t in own if records[t.number].rerun_of is not None}
    status = Counter(records[t.number].status for t in own if t.state != TrialState.RUNNING)
    interrupted = [t for t in own if records[t.number].interrupted]
    # Left untrained for budget: PRUNED, with its reason; studies from before stored it as FAIL.
    untrained = [t for t in own if records[t.number].not_trained is not None]
    failed = [t for t in own if t.state == TrialState.FAIL and not records[t.number].interrupted
              and records[t.number].not_trained is None]
    running = sum(t.state == TrialState.RUNNING for t in own)
    waiting = sum(t.state == TrialState.WAITING for t in own)
    budget = settings.search.budget
    used = budget_used(study)
    split = Counter()
    for trial in trials:
        split.update(records[trial.number].costs)
    lines = [
        f"study {study_name}: space {settings.search.space}, data {settings.search.dataset}, "
        f"target {', '.join(settings.search.target_keys)}, "
        f"scheduler {settings.search.scheduler}",
        f"trials: {status['complete']} complete, {status['stopped']} stopped early, {status['infeasible']} infeasible, "
        f"{len(failed)} failed, {len(untrained)} left untrained for budget, "
        f"{len(duplicates)} duplicates answered from the study, "
        f"{len(interrupted)} interrupted (of which {len(rerun)} re-run), {running} running, {waiting} queued",
        f"budget: used {used:.0f} of {budget.seconds:.0f} {budget.kind}-s ({100 * used / budget.seconds:.1f}%), "
        f"left {max(0.0, budget.seconds - used):.0f}; "
        + ", ".join(f"{label} {split.get(key, 0.0):.0f}" for key, label in COST_KINDS),
    ]
    scheduler = make_scheduler(settings.search.scheduler, settings.search.epochs, settings.search.min_epochs, settings.search.eta, False)
    trained = [records[t.number] for t in own if records[t.number].epochs_done]
    stopped_at = [records[t.number].stopped_at for t in own if records[t.number].stopped_at is not None]
    lines.append("rungs (epoch: reached / continued / stopped): " + "; ".join(
        f"{rung}: {got} / {past} / {stopped}"
        for rung, got, past, stopped in rung_counts(scheduler.rungs, [r.epochs_done for r in trained],
                                                    stopped_at)))
    violations = Counter(name for t in own for name in records[t.number].infeasible)
    if settings.search.constraints.active:
        lines.append("constraints " + ", ".join(f"{k}={v:g}" for k, v in settings.search.constraints.to_dict().items())
                     + ": violated by " + (", ".join(f"{n} ({k})" for k, n in violations.items()) or "none"))
    lines.append(measurement_line(own))
    for target in settings.search.targets:
        front = pareto_front(study, target.key)
        on = f" on {target}" if len(settings.search.targets) > 1 else ""
        lines += [f"front{on} (full fidelity only): {len(front)} architectures, hypervolume {hypervolume(front):.1f}",
                  front_table(front)]
    return "\n".join(lines)


def measurement_line(trials: list[optuna.trial.FrozenTrial]) -> str:
    """How far the study's throughput figures can be trusted: how many there are, how wide
    their intervals run, how many were measured twice, and how contended the node was."""
    records = [TrialRecord.of(t) for t in trials]
    measured = [r for r in records if r.throughput_low is not None and r.throughput and not r.throughput_predicted_only]
    predicted_only = sum(r.throughput_predicted_only for r in records)
    if predicted_only:
        return (f"throughput figures: predicted only (--throughput predicted), {predicted_only} trials; nothing "
                f"measured: 'search pick' measures the front on the target")
    if not measured:
        return "throughput figures: none with an interval yet"
    widths = sorted((r.throughput_high - r.throughput_low) / r.throughput for r in measured)
    twice = sum(r.measured_times > 1 for r in measured)
    line = (f"throughput figures: {len(measured)} trials, 95% intervals {widths[0]:.1%} to {widths[-1]:.1%} of the "
            f"median (median {widths[len(widths) // 2]:.1%}), {twice} measured twice for a wide interval")
    return line + prediction_text(records)


def prediction_text(records: list[TrialRecord]) -> str:
    """The latency table's error so far (predicted against measured) and what it ruled out."""
    pairs = PredictionMargin()
    for r in records:
        if r.predicted_throughput is not None and r.throughput and not r.throughput_predicted_only:
            pairs.observe(r.predicted_throughput, r.throughput)
    ruled_out = sum(r.infeasible_predicted for r in records)
    if not pairs.errors and not ruled_out:
        return ""
    errors = (f"median error {pairs.median_error():.1%} over {len(pairs.errors)} measured" if pairs.errors
              else "none measured yet")
    return f"\npredicted throughput: {errors}; {ruled_out} ruled out by prediction (not measured)"


def write_front(study_name: str, storage_url: str, csv_path: str | None, plot_path: str | None,
                target: Target | None = None) -> str:
    """The front on ``target`` (one of the study's; None: its only one) as a table, and as CSV
    and plot files where asked; a study of several targets without ``target`` prints every
    front and writes none (which one would a file hold?)."""
    study, settings = _load(study_name, storage_url)
    keys = settings.search.target_keys
    if target is not None and target.key not in keys:
        raise ValueError(f"--target {target.key} is not a target of study {study_name!r}; expected one of "
                         f"{', '.join(keys)}")
    if target is None and len(keys) > 1 and not (csv_path or plot_path):
        return "\n\n".join(f"front on {key}:\n{front_table(pareto_front(study, key))}" for key in keys)
    key = (target or settings.search.only_target("write")).key
    points, front = evaluated_points(study, key), pareto_front(study, key)
    if csv_path:
        atomic_write_text(csv_path, front_csv(front))
    if plot_path:
        from litv2 import LITV2_S
        from space import arch_id

        marked = {arch_id(LITV2_S): "LITv2-S"}
        atomic_write(plot_path, lambda partial: plot_front(points, front, partial, f"study {study_name}", key, marked))
    return front_table(front)
