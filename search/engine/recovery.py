"""``search resume``: what earlier drivers of a study left, taken up again.

Trials a dead driver left RUNNING (or Ctrl-C interrupted) are charged what they ran and
queued to run again with their seed, from their last rung checkpoint. What earlier jobs
cost teaches the cost model, and every rung result they recorded goes back to the
scheduler, so promotion after a resume sees the same rungs as before it. Trials the budget
left untrained (PRUNED with ``not_trained``) are ended, not interrupted: none is re-run, and
an architecture of theirs that never trained is trained when sampled again
(:meth:`search.engine.duplicates.Duplicates.evaluated`).
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import optuna

from litv2 import LITConfig
from space.search_space import SearchSpace

from ..core.budget import CostModel
from ..core.prediction import PredictionMargin
from ..core.record import TrialRecord, write
from ..core.scheduler import Scheduler
from .candidate import COUNT, MEASURE, TRAIN, Candidate

TrialState = optuna.trial.TrialState


def requeue_interrupted(study: optuna.Study, previous_lease: dict[str, Any] | None, default_seed: int) -> list[int]:
    """Fail the trials a dead driver left RUNNING and queue a re-run of every interrupted
    trial that has none yet.

    A dead driver's running jobs are charged up to its last heartbeat; the re-run keeps the
    trial's seed and continues from its last rung checkpoint. Returns the numbers of the dead
    driver's trials (their MLflow child runs are logged once MLflow is open).
    """
    last_beat = previous_lease["heartbeat"] if previous_lease else time.time()
    trials = study.get_trials(deepcopy=False)
    already = {TrialRecord.of(t).rerun_of for t in trials}
    recovered = []
    for trial in trials:
        if trial.state == TrialState.RUNNING:
            recovered.append(trial.number)
            # Reopened by id: the dead driver's Trial objects are gone with it.
            orphan = optuna.trial.Trial(study, trial._trial_id)
            record = TrialRecord.of(trial)
            if record.job:
                costs = dict(record.costs)
                costs["lost"] = costs.get("lost", 0.0) + max(0.0, last_beat - record.job["started"]) * record.job["devices"]
                write(orphan, costs=costs, device_seconds=sum(costs.values()))
            write(orphan, interrupted=True)
            study.tell(trial.number, state=TrialState.FAIL)
        elif not (trial.state == TrialState.FAIL and TrialRecord.of(trial).interrupted):
            continue
        if trial.number not in already:
            seed = TrialRecord.of(trial).seed
            rerun = TrialRecord(rerun_of=trial.number, seed=default_seed if seed is None else seed)
            study.enqueue_trial(trial.params, user_attrs=rerun.to_user_attrs())
    return recovered


def as_candidate(trial: optuna.trial.FrozenTrial, space: SearchSpace, default_seed: int,
                 targets: tuple[str, ...]) -> Candidate:
    """A dead driver's trial as far as its record goes (for its MLflow child run)."""
    from space import arch_id, canonical, summary

    record = TrialRecord.of(trial)
    drawn = LITConfig.from_json(record.config) if record.config else space.draw(optuna.trial.FixedTrial(trial.params))
    config = canonical(drawn)
    return Candidate(trial, config, record.arch_id or arch_id(config), record.summary or summary(drawn),
                     default_seed if record.seed is None else record.seed, targets, epochs_done=record.epochs_done,
                     accuracies=list(record.epoch_accuracies), costs=dict(record.costs))


def learn_costs(study: optuna.Study, costs: CostModel) -> None:
    """What earlier drivers' jobs cost: a resumed search estimates from them, not from the
    conservative priors, so what is left of its budget is not left unused."""
    for trial in study.get_trials(deepcopy=False):
        record = TrialRecord.of(trial)
        spent = record.costs
        if COUNT in spent:
            costs.observe_count(spent[COUNT])
        if MEASURE in spent:
            costs.observe_measure(spent[MEASURE])
        if spent.get(TRAIN) and record.epochs_done and record.flops is not None:
            costs.observe_train(record.flops, record.epochs_done, spent[TRAIN])


def learn_margin(study: optuna.Study, margin: PredictionMargin) -> None:
    """Earlier drivers' pairs of predicted and measured throughput, for the prediction margin."""
    for trial in study.get_trials(deepcopy=False):
        record = TrialRecord.of(trial)
        if record.predicted_throughput is not None and record.throughput and not record.throughput_cached:
            margin.observe(record.predicted_throughput, record.throughput)


def report_rungs(study: optuna.Study, scheduler: Scheduler, targets: Sequence[str]) -> None:
    """Rung results recorded by earlier drivers, for asynchronous promotion after a resume."""
    for trial in study.get_trials(deepcopy=False):
        record = TrialRecord.of(trial)
        if record.epoch_accuracies and record.throughput and record.duplicate_of is None:
            scheduler.report((record.arch_id, record.seed or 0), trial.number, record.epoch_accuracies,
                             throughputs(record, targets))


def throughputs(record: TrialRecord, targets: Sequence[str]) -> list[float]:
    """A trial's throughput on each target (a study of one target keeps it in ``throughput``)."""
    if len(targets) == 1:
        return [record.throughput]
    return [record.target_figures[key]["throughput"] for key in targets]
