"""What the driver does when a job ends: charge it, then move its candidate on.

A count gives the candidate its figures; a measurement its throughput (or, when the figure
is too wide to rank by, one more measurement: :mod:`search.core.repeats`); a rung its
accuracies, after which the scheduler continues, stops or completes the trial. A failed
job is retried if its worker was lost, else it ends the trial.
"""
from __future__ import annotations

import time
from typing import Any

from ..core.faults import failure_reason
from ..core.record import TrialRecord, write
from ..core.repeats import best_supported, interval, is_wide
from ..core.scheduler import Decision
from .candidate import COUNT, MEASURE, TRAIN, Candidate, where_and_when
from .context import SearchContext
from .dispatch import Dispatcher
from .endings import Endings
from .executor import Event
from .jobs import TrainJob


class Reactions:
    def __init__(self, context: SearchContext, dispatcher: Dispatcher, endings: Endings) -> None:
        self.context = context
        self.dispatcher = dispatcher
        self.endings = endings

    def on_event(self, event: Event) -> None:
        context = self.context
        candidate = context.active[event.job.trial]
        kind = event.job.kind
        write(candidate.trial, job=None)
        if event.error is not None:
            # A failed job is charged what it ran: the whole time since it was submitted.
            self.charge(candidate, kind, max(time.time() - event.submitted, 0.0) * context.devices[kind])
            reason = failure_reason(event.error, event.lost)
            if not self._retried(candidate, kind, reason, event.error):
                self.endings.fail(candidate, kind, event.error, reason)
            return
        result = event.result
        self.charge(candidate, kind, result["wall_seconds"] * context.devices[kind])
        candidate.busy += result["wall_seconds"]
        if kind == COUNT:
            self._counted(candidate, result)
        elif kind == MEASURE:
            self._measured(candidate, event.job.target_key, result)
        else:
            self._trained(candidate, event.job, result)

    def charge(self, candidate: Candidate, kind: str, device_seconds: float) -> None:
        candidate.charge(kind, device_seconds)
        self.context.ledger.settle((candidate.number, kind), device_seconds)

    def _counted(self, candidate: Candidate, result: dict[str, Any]) -> None:
        context = self.context
        context.costs.observe_count(result["wall_seconds"] * context.devices[COUNT])
        candidate.figures = dict(params=result["params"], flops=result["flops"])
        write(candidate.trial, count_interval=where_and_when(result))
        context.cache.put_figures(candidate.arch, context.target.img_size, candidate.figures)
        self.dispatcher.advance(candidate)

    def _measured(self, candidate: Candidate, target: str, result: dict[str, Any]) -> None:
        """Keep a new figure on ``target``, or measure once more when it is too wide to rank
        by; of the figures then at hand the better-supported one is kept and cached."""
        context = self.context
        # The node's one-off calibration is charged, but is no estimate of the next measurement.
        once = result.get("calibration_seconds", 0.0)
        context.costs.observe_measure((result["wall_seconds"] - once) * context.devices[MEASURE])
        write(candidate.trial, measure_interval=where_and_when(result))
        if result.get("out_of_time"):
            why = "its measurement used up what was left of the budget"
            self.endings.leave_untrained(candidate, why, why)
            return
        measurements = candidate.measurements.setdefault(target, [])
        measurements.append(result)
        if len(measurements) == 1 and is_wide(result) and self._repeat_affordable(candidate):
            context.tally.remeasured += 1
            low, high = interval(result)
            on = f" on {target}" if len(context.targets) > 1 else ""
            context.say(f"[trial {candidate.number}] {candidate.arch}: {result['throughput']:.1f} img/s{on} "
                        f"[{low:.1f}, {high:.1f}] is too wide to rank by; measuring it again")
            context.queues[MEASURE].append(candidate)
            return
        kept = dict(best_supported(measurements))
        kept["measured_times"] = len(measurements)
        if candidate.predicted is not None and target == context.target.key:  # the margin learns from it
            context.margin.observe(candidate.predicted, kept["throughput"])
        candidate.measured[target], candidate.measured_now = kept, True
        context.cache.put(candidate.arch, target, kept)
        self.dispatcher.advance(candidate)

    def _repeat_affordable(self, candidate: Candidate) -> bool:
        """A repeat is worth its cost only where the executor measures anew (a replayed table
        holds one figure per architecture) and the candidate can still be trained after it
        and after the measurements queued before it (other repeats among them)."""
        context = self.context
        first_rung = context.costs.train(candidate.figures["flops"], context.scheduler.next_rung(0),
                                         context.devices[TRAIN])
        measurements = (1 + len(context.queues[MEASURE])) * context.costs.measure(context.devices[MEASURE])
        return context.executor.measures_anew and context.ledger.fits(measurements + first_rung)

    def _trained(self, candidate: Candidate, job: TrainJob, result: dict[str, Any]) -> None:
        context = self.context
        context.failures_in_a_row = 0  # a trained rung, not a count or a measurement, shows the search works
        context.costs.observe_train(candidate.figures["flops"], job.to_epoch - job.from_epoch,
                                    result["wall_seconds"] * context.devices[TRAIN])
        candidate.epochs_done = job.to_epoch
        candidate.accuracies = list(result["epoch_accuracies"])
        record = TrialRecord.of(candidate.trial)
        write(candidate.trial, epochs_done=candidate.epochs_done, epoch_accuracies=candidate.accuracies,
              checkpoint_seconds=record.checkpoint_seconds + result.get("checkpoint_seconds", 0.0),
              train_intervals=record.train_intervals + [where_and_when(result)])
        scheduler, rung = context.scheduler, job.to_epoch
        scheduler.report(candidate.key, candidate.number, candidate.accuracies, candidate.throughputs)
        decision = scheduler.decide(candidate.key, rung)
        if decision == Decision.CONTINUE:
            context.say(f"[trial {candidate.number}] rung {rung}: top-1 {candidate.accuracies[-1]:.2f}% -> continues "
                        f"({scheduler.recorded(rung)} recorded at this rung)")
            context.queues[TRAIN].append(candidate)
        elif decision == Decision.STOP:
            self.endings.stop(candidate, rung)
        else:
            self.endings.complete(candidate)

    def _retried(self, candidate: Candidate, kind: str, reason: str, message: str) -> bool:
        """Lost work goes back to its queue, to run on whatever node placement picks next; a
        rung restarts from the trial's last rung checkpoint."""
        context = self.context
        retries = TrialRecord.of(candidate.trial).retries
        if not context.retry.retry(reason, len(retries)):
            return False
        write(candidate.trial, retries=retries + [dict(kind=kind, error=message[:500])])
        where = f" from epoch {candidate.epochs_done}" if kind == TRAIN else ""
        context.say(f"[trial {candidate.number}] {reason} during {kind} ({message}); retry {len(retries) + 1} "
                    f"of {context.retry.max_retries}{where}")
        context.queues[kind].append(candidate)
        return True
