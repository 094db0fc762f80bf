"""Architectures the study already has: answered from it, never trained again.

A sampler proposes parameters, and many parameter sets make the same network (a window size
of a stage without attention, say); the study keeps one verdict per architecture (and seed,
for the fixed points of an ablation table). :class:`Duplicates` answers a known one as
PRUNED, hands a sampler that keeps proposing known architectures an unseen one, and tells
the driver when a finite space is exhausted.
"""
from __future__ import annotations

import random
from typing import Any

import optuna

from ..core.record import TrialRecord, write
from .context import SearchContext

TrialState = optuna.trial.TrialState
MAX_CONSECUTIVE_DUPLICATES = 200
UNSEEN_AFTER_DUPLICATES = 3  # known architectures proposed in a row before one is drawn among the unseen


class Duplicates:
    def __init__(self, context: SearchContext, arch_id: Any) -> None:
        self.context = context
        self.arch_id = arch_id  # space.arch_id: the architecture's identity
        self.in_a_row = 0
        self.exhausted = False
        self._grid: list[tuple[dict[str, Any], str]] | None = None  # a finite space's (params, arch id), once needed

    def answer(self, trial: optuna.trial.Trial, arch: str, seed: int) -> bool:
        """Whether ``trial`` is a known architecture (and seed, for fixed points): then it is
        recorded as PRUNED, pointing at the trial it duplicates, so it never doubles a point of
        the front."""
        context = self.context
        fixed = context.space.fixed_points

        def same(t: optuna.trial.FrozenTrial) -> bool:
            record = TrialRecord.of(t)
            return record.arch_id == arch and record.duplicate_of is None and (not fixed or record.seed == seed)

        done = [t for t in context.study.get_trials(deepcopy=False) if self.evaluated(t) and same(t)]
        running = [c.number for c in context.active.values() if c.arch == arch and (not fixed or c.seed == seed)]
        if not done and not running:
            self.in_a_row = 0
            return False
        self.in_a_row += 1
        context.tally.duplicates += 1
        if self.in_a_row >= self._limit():
            self.exhausted = True
        write(trial, duplicate_of=done[0].number if done else running[0])
        for name, value in (done[0].constraints if done else {}).items():
            trial.set_constraint(name, value)
        context.study.tell(trial, state=TrialState.PRUNED)
        if self.in_a_row % UNSEEN_AFTER_DUPLICATES == 0 and not self.exhausted:
            self._enqueue_unseen(trial.number)
        return True

    def evaluated(self, trial: optuna.trial.FrozenTrial) -> bool:
        """Whether the study has this trial's verdict: an outcome, or a failure that would recur.

        A trial the budget left untrained (PRUNED; FAIL in studies from before it was) has
        one only if it reached a rung, whose result the scheduler keeps: one that never
        trained says nothing of its architecture, which a later sample trains (after
        ``resume`` with more budget, say)."""
        record = TrialRecord.of(trial)
        if record.not_trained is not None:
            return record.epochs_done > 0
        return (trial.state in (TrialState.COMPLETE, TrialState.PRUNED)
                or (trial.state == TrialState.FAIL and self.context.retry.architecture_fault(record.failure or "")))

    def _enqueue_unseen(self, number: int) -> None:
        """A sampler that keeps proposing known architectures of a finite space is handed an
        unseen one, drawn at random (seeded), as its next trial.

        Duplicates are answered as PRUNED without values, so a model-based sampler (GP above
        all, and any sampler once MO-ASHA has stopped the architectures it likes) learns nothing
        from them and proposes the same points again; left alone it would end the search as
        'exhausted' with most of a small space untried and the budget unspent.
        """
        context = self.context
        space = context.space
        if space.fixed_points or space.size() == float("inf"):
            return
        if self._grid is None:
            self._grid = list(zip(space.grid_params(), map(self.arch_id, space.enumerate())))
        seen = {TrialRecord.of(t).arch_id for t in context.study.get_trials(deepcopy=False)}
        seen |= {c.arch for c in context.active.values()}
        unseen = [params for params, arch in self._grid if arch not in seen]
        if not unseen:
            return
        params = random.Random(context.settings.search.seed * 1_000_003 + number).choice(unseen)
        context.study.enqueue_trial(params, user_attrs=TrialRecord(drawn_unseen=True).to_user_attrs())
        context.say(f"[trial {number}] {UNSEEN_AFTER_DUPLICATES} known architectures proposed in a row: "
                    f"the next trial is an unseen one, drawn at random")

    def _limit(self) -> int:
        """Duplicates in a row that end the search: one once every architecture of a finite
        space has its verdict, else :data:`MAX_CONSECUTIVE_DUPLICATES`."""
        size = self.context.space.size()
        if size != float("inf"):
            trials = self.context.study.get_trials(deepcopy=False)
            distinct = {record.arch_id for t, record in zip(trials, map(TrialRecord.of, trials))
                        if record.duplicate_of is None
                        and (t.state in (TrialState.RUNNING, TrialState.WAITING) or self.evaluated(t))}
            if len(distinct) >= size:
                return 1
        return MAX_CONSECUTIVE_DUPLICATES
