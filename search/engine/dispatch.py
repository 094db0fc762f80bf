"""Which job starts next, and whether the budget lets it.

:meth:`Dispatcher.advance` moves a candidate to its next stage, from the caches where they
hold the answer, and ends it as soon as a deployment constraint is broken (measure-first:
an architecture that is too slow is never trained). :meth:`Dispatcher.dispatch` submits
queued jobs wherever placement and the budget allow: a job starts only if its estimate fits
the ledger, and a measurement is stopped where it would use more than the budget has left.
"""
from __future__ import annotations

import time
from typing import Any

from ..core.faults import NO_PREDICTION
from ..core.prediction import PREDICTED
from ..core.record import write
from .candidate import COUNT, MEASURE, TRAIN, Candidate
from .context import SearchContext
from .endings import Endings
from .executor import try_submit
from .jobs import CountJob, Job, MeasureJob, TrainJob


class Dispatcher:
    def __init__(self, context: SearchContext, endings: Endings) -> None:
        self.context = context
        self.endings = endings

    def advance(self, candidate: Candidate) -> None:
        """Count, check, measure on each target (the first, then check), train a rung: queue
        the next job it needs."""
        context = self.context
        if candidate.figures is None:
            candidate.figures = context.cache.get_figures(candidate.arch, context.target.img_size)
        if candidate.stage == COUNT:
            context.queues[COUNT].append(candidate)
            return
        figures = candidate.figures
        if self.endings.infeasible(candidate, context.constraints.static_violations(figures["params"], figures["flops"])):
            return
        for key in candidate.targets:
            if key not in candidate.measured:
                self._from_cache(candidate, key)
        self._predict(candidate)
        if candidate.first_measured is None and context.settings.search.throughput == PREDICTED:
            if not self._take_prediction(candidate):
                return
        first = candidate.first_measured
        if first is None:
            if candidate.predicted is not None and self.endings.infeasible(
                    candidate, context.margin.rules_out(candidate.predicted, context.constraints,
                                                        context.target.batch_size), predicted=True):
                return
        elif self.endings.infeasible(candidate, context.constraints.measured_violations(
                first["throughput"], context.target.batch_size)):
            return
        if candidate.stage == MEASURE:
            context.queues[MEASURE].append(candidate)
            return
        earlier = context.cache.get_training(candidate.arch, context.recipe(candidate))
        if earlier is not None:
            self._reuse(candidate, earlier)
            return
        context.queues[TRAIN].append(candidate)

    def _from_cache(self, candidate: Candidate, target: str) -> bool:
        """Whether the throughput cache holds ``candidate``'s figure on ``target`` (measured
        here, under the same fingerprint); it becomes the candidate's if so."""
        context = self.context
        cached = context.cache.get(candidate.arch, target, context.fingerprints[target])
        if cached is not None:
            candidate.measured[target] = cached
        return cached is not None

    def _predict(self, candidate: Candidate) -> None:
        """The candidate's throughput predicted from the latency table (once; None where the
        table lacks one of its parts), recorded beside the figure it will be measured at."""
        if self.context.predictor is None or candidate.predicted is not None:
            return
        candidate.predicted = self.context.predictor(candidate.config)
        if candidate.predicted is not None:
            write(candidate.trial, predicted_throughput=candidate.predicted)

    def _take_prediction(self, candidate: Candidate) -> bool:
        """``--throughput predicted``: the prediction stands for a measurement (never cached as
        one: ``pick`` measures); a candidate the table cannot predict fails (three in a row end
        the search: the table is not this space's)."""
        if candidate.predicted is None:
            self.endings.fail(candidate, "predict", "the latency table lacks a part of this architecture, and "
                                                    "--throughput predicted measures nothing", NO_PREDICTION)
            return False
        candidate.measured[self.context.target.key] = dict(throughput=candidate.predicted, throughput_spread=0.0,
                                                           measured_times=0)
        write(candidate.trial, throughput_predicted_only=True)
        return True

    def dispatch(self) -> None:
        """Measurements first (they free candidates for training), then rung continuations
        before first rungs (successive halving spends on the promising), then counts."""
        context = self.context
        for candidate in list(context.queues[MEASURE]):
            if self._shared(candidate, MEASURE):
                continue
            # The longest measurement so far is no bound when the node's load rises: a
            # measurement holds its grant, and is stopped where it would use more than is left
            # (a measurement that costs no devices is never stopped).
            estimate, devices = context.costs.measure(context.devices[MEASURE]), context.devices[MEASURE]
            grant, allowed = context.ledger.grant(estimate), context.ledger.allowance()
            job = MeasureJob(candidate.number, candidate.config.to_json(), candidate.unmeasured,
                             context.settings.search.measure_seconds, allowed_seconds=allowed / devices if devices else None)
            if not self._submit(candidate, job, estimate, grant):
                break
        for candidate in sorted(context.queues[TRAIN], key=lambda c: (-c.epochs_done, c.number)):
            to_epoch = context.scheduler.next_rung(candidate.epochs_done)
            estimate = context.costs.train(candidate.figures["flops"], to_epoch - candidate.epochs_done,
                                           context.devices[TRAIN])
            if not context.ledger.fits(estimate):
                self._unaffordable(candidate, estimate)
                continue
            if not self._submit(candidate, self._train_job(candidate, to_epoch), estimate):
                break
        for candidate in list(context.queues[COUNT]):
            if self._shared(candidate, COUNT):
                continue
            job = CountJob(candidate.number, candidate.config.to_json(), context.target.img_size)
            if not self._submit(candidate, job, context.costs.count(context.devices[COUNT])):
                break

    def give_up_queued(self) -> None:
        """Nothing runs and nothing more can start: the candidates still queued for a count, a
        measurement or a rung end as not trained, so no trial outlives its search as RUNNING."""
        context = self.context
        left = max(context.ledger.left, 0)
        for kind, queue in context.queues.items():
            for candidate in list(queue):
                queue.remove(candidate)
                self.endings.leave_untrained(candidate, f"the budget ran out before its {kind} job "
                                                        f"({left:.0f} {context.budget.kind}-s left)",
                                             f"the budget ran out before its {kind} job")

    def _shared(self, candidate: Candidate, kind: str) -> bool:
        """Whether a queued count or measurement is answered by another trial of the same
        architecture (other seeds, re-runs): from the cache once that one is done - the
        candidate then moves on - or by waiting while it runs (a measurement: on the target
        this candidate needs next)."""
        context = self.context
        target = candidate.unmeasured
        if kind == COUNT:
            candidate.figures = context.cache.get_figures(candidate.arch, context.target.img_size)
            found = candidate.figures is not None
        else:
            found = self._from_cache(candidate, target)
        if found:
            context.queues[kind].remove(candidate)
            self.advance(candidate)
            return True
        return any(job.kind == kind and context.active[job.trial].arch == candidate.arch
                   and (kind == COUNT or job.target_key == target) for job in context.executor.running())

    def _submit(self, candidate: Candidate, job: Job, estimate: float, grant: float | None = None) -> bool:
        """Start ``job`` if its ``estimate`` fits the budget; ``grant`` (default: the estimate)
        is what the budget promises it until it ends."""
        context, kind = self.context, job.kind
        if not context.ledger.fits(estimate) or not try_submit(context.executor, job):
            return False
        context.queues[kind].remove(candidate)
        context.ledger.commit((candidate.number, kind), estimate if grant is None else grant)
        write(candidate.trial, job=dict(kind=kind, started=time.time(), devices=context.devices[kind]))
        if kind == TRAIN:
            context.unaffordable_in_a_row = 0
            if candidate.untrained:
                context.tally.trained += 1
            candidate.training_started = True
            context.say(f"[trial {candidate.number}] training {candidate.arch} {candidate.summary} "
                        f"epochs {candidate.epochs_done}->{job.to_epoch}")
        return True

    def _unaffordable(self, candidate: Candidate, estimate: float) -> None:
        """A rung the budget cannot pay for: wait while running jobs may leave money over,
        else give the trial up (cheaper architectures may still fit)."""
        context = self.context
        if any(job.kind != COUNT for job in context.executor.running()):
            return
        context.queues[TRAIN].remove(candidate)
        context.unaffordable_in_a_row += 1
        left, kind = max(context.ledger.left, 0), context.budget.kind
        self.endings.leave_untrained(candidate, f"its next rung would cost ~{estimate:.0f} {kind}-s, {left:.0f} left",
                                     f"the budget cannot pay its next rung (~{estimate:.0f} of {left:.0f} {kind}-s left)")

    def _reuse(self, candidate: Candidate, earlier: dict[str, Any]) -> None:
        """A training another study already ran to the last epoch (same recipe and seed)."""
        self.context.tally.reused += 1
        candidate.accuracies = list(earlier["epoch_accuracies"])
        candidate.epochs_done = len(candidate.accuracies)
        write(candidate.trial, epoch_accuracies=candidate.accuracies, epochs_done=candidate.epochs_done,
              training_reused_from=earlier.get("study"))
        self.context.say(f"[trial {candidate.number}] {candidate.arch}: trained before (study {earlier.get('study')}), "
                         "reused")
        self.endings.complete(candidate, reused=True)

    def _train_job(self, candidate: Candidate, to_epoch: int) -> TrainJob:
        context = self.context
        settings, executor = context.settings, context.executor
        return TrainJob(
            trial=candidate.number, proxy_json=context.space.proxy_of(candidate.config).to_json(),
            dataset=settings.search.dataset, data_root=settings.run.data_root, data_seed=settings.search.seed,
            img_size=context.space.proxy.img_size, from_epoch=candidate.epochs_done, to_epoch=to_epoch,
            max_epochs=context.scheduler.max_epochs, seed=candidate.seed, use_gpu=context.budget.kind == "gpu",
            threads=executor.train_threads, checkpoint=str(context.checkpoint(candidate)),
            trainer=settings.search.trainer, data_workers=executor.data_workers,
        )
