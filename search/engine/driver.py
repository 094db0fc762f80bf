"""The search driver: Optuna asks, the executor counts, measures and trains, the scheduler
decides, the budget caps, MLflow records.

A trial's story: the space samples a full-size architecture; one the study has already
evaluated is answered from the study. Otherwise its params and FLOPs are counted and its
throughput measured on the target (or read from the caches) *before* any training, so an
architecture that breaks a deployment constraint is recorded and never trained. Its proxy
then trains rung by rung; after each rung the scheduler continues it, stops it (it keeps
its partial fidelity and never reaches the front) or completes it. No job starts that the
cost model says would overrun the budget, and everything that ran - interrupted work
included - is charged to the trial it ran for.

This module keeps the story (:meth:`Search.run` and :meth:`Search._step`: ask -> dispatch ->
react) and the asking; the parts it tells it with share one
:class:`~search.engine.context.SearchContext`: :mod:`~search.engine.dispatch` (which job
starts, within the budget), :mod:`~search.engine.reactions` (what a finished job changes),
:mod:`~search.engine.endings` (how a trial ends and is recorded),
:mod:`~search.engine.duplicates` and :mod:`~search.engine.recovery` (resume).
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, TextIO

import optuna

from litv2 import LITConfig

from ..core.budget import CostModel, Ledger
from ..core.faults import RetryPolicy
from ..core.objectives import create_objective_study
from ..core.prediction import PREDICTED
from ..core.record import TrialRecord, write
from ..core.samplers import make_sampler
from ..core.scheduler import make_scheduler
from ..core.versions import installed_versions
from ..study.settings import SearchSettings
from ..study.storage import open_storage
from ..study.studies import RUN_ID_ATTR, SETTINGS_ATTR, budget_used
from .cache import CACHE_FILE, ThroughputCache
from .candidate import COUNT, MEASURE, TRAIN, Candidate
from .context import SearchContext
from .dispatch import Dispatcher
from .duplicates import Duplicates
from .endings import Endings, SearchError
from .executor import Executor
from .lease import TTL_SECONDS, Lease
from .reactions import Reactions
from .signals import exit_code, stop_reason, stopped_by_signals
from .recovery import as_candidate, learn_costs, learn_margin, report_rungs, requeue_interrupted
from .tracking import ARTIFACTS_DIR, StudyTracker

__all__ = ["Search", "SearchError"]

MAX_UNAFFORDABLE_IN_A_ROW = 10
IMAGEFOLDER_GPU_WORKERS = 3  # JPEG decoding processes per GPU training on an image folder
TrialState = optuna.trial.TrialState


class Search:
    """Runs (or resumes) one study until its budget, its space or its points are used up.

    ``executor`` builds the executor from the settings (default: Ray); tests pass an
    in-process one. ``tracker`` replaces the MLflow tracker: a replay of thousands of
    simulated searches (``search bench-strategies``) keeps its progress in memory instead.
    ``predictor`` replaces the latency table's predictions (a replay's come from its table).
    """

    def __init__(self, settings: SearchSettings, out: TextIO | None = None,
                 executor: Callable[["Search"], Executor] | None = None, lease_ttl: float = TTL_SECONDS,
                 tracker: StudyTracker | None = None,
                 predictor: Callable[[LITConfig], float | None] | None = None) -> None:
        from space import get_space

        self.settings = settings
        self.out = out or sys.stdout
        self.space = get_space(settings.search.space)
        self.budget = settings.search.budget
        self.target = settings.search.target
        self._make_executor = executor or _ray_executor
        self.lease_ttl = lease_ttl
        self._tracker = tracker
        self._given_predictor = predictor

    # ================================================================== the story
    def run(self, resume: bool = False) -> int:
        study = self._open(resume)
        with Lease(study, ttl=self.lease_ttl) as lease:
            recovered = requeue_interrupted(study, lease.previous, self.settings.search.seed) if resume else []
            # stored on resume too: a budget raised by `resume --budget MORE` is the study's from now on
            study.set_user_attr(SETTINGS_ATTR, self.settings.to_json())
            self._prepare(study)
            for number in recovered:
                self.endings.interrupted(as_candidate(study.trials[number], self.space, self.settings.search.seed,
                                                      self.context.targets))
            status = "FAILED"
            with stopped_by_signals():
                try:
                    while self._step():
                        pass
                    self.dispatcher.give_up_queued()
                    status = "FINISHED"
                except KeyboardInterrupt as stop:
                    status = "KILLED"
                    self._interrupt()
                    self.context.say(f"{stop_reason(stop)}: running trials were stopped and will continue on "
                                     "'search resume'")
                    return exit_code(stop)
                except BaseException:
                    self._interrupt()  # whatever else was running re-runs on resume
                    raise
                finally:
                    self.context.tracker.finish(status)
        self.context.say(self._closing_line())
        return 0

    def _step(self) -> bool:
        """Ask for trials while a slot and the budget can take one, start what can start; wait
        for jobs to end and react. False when nothing runs and nothing can start."""
        self.dispatcher.dispatch()
        while self._may_ask():
            candidate = self._ask()
            if candidate is not None:
                self.dispatcher.advance(candidate)
            self.dispatcher.dispatch()
        if not self.context.executor.running():
            return False
        for event in self.context.executor.wait():
            self.reactions.on_event(event)
        return True

    # ================================================================== asking
    def _may_ask(self) -> bool:
        """A new trial while fewer candidates wait for their first rung than there are training
        slots, and it can afford at least its count and measurement.

        Asking a slot's worth ahead lets measurements run back to back while the node is
        drained for one, and leaves a measured candidate ready for every slot that frees:
        asking only for an idle slot trained one proxy at a time on a single node (each
        measurement waits for the other training to end, then its own training starts alone).
        """
        context = self.context
        if self.duplicates.exhausted or context.unaffordable_in_a_row >= MAX_UNAFFORDABLE_IN_A_ROW:
            return False
        if self.space.fixed_points and not self._waiting():
            return False
        untrained = sum(1 for c in context.active.values() if c.untrained)
        if self.settings.search.max_trials is not None and context.tally.trained + untrained >= self.settings.search.max_trials:
            return False
        if untrained >= max(1, context.executor.placement.capacity):
            return False  # every slot already has a trial on its way
        costs, devices = context.costs, context.devices
        estimate = 0.0 if self._next_is_cached_rerun() else costs.new_architecture(devices[COUNT], devices[MEASURE],
                                                                                   len(context.targets))
        typical = costs.typical_flops()
        if typical is not None:  # and a first rung of a typical architecture
            estimate += costs.train(typical, context.scheduler.rungs[0], devices[TRAIN])
        return context.ledger.fits(estimate)

    def _next_is_cached_rerun(self) -> bool:
        """Whether the next trial is a queued re-run of an interrupted trial whose figures and
        measurement are cached: it costs no count or measurement, so a resume near the end of
        its budget still re-runs what the dead driver left."""
        waiting = self._waiting()
        rerun_of = TrialRecord.of(waiting[0]).rerun_of if waiting else None
        if rerun_of is None:
            return False
        context = self.context
        arch = TrialRecord.of(self.study.trials[rerun_of]).arch_id
        return (arch is not None and context.cache.get_figures(arch, self.target.img_size) is not None
                and all(context.cache.get(arch, key, context.fingerprints[key]) is not None
                        for key in context.targets))

    def _ask(self) -> Candidate | None:
        """The next trial as a candidate, or None when the study already has its architecture."""
        from space import arch_id, canonical, summary

        trial = self.study.ask()
        drawn = self.space.draw(trial)
        config = canonical(drawn)
        arch, text = arch_id(config), summary(drawn)
        queued = TrialRecord.of(trial)  # what a queued trial came with: its seed, what it re-runs
        seed = self.settings.search.seed if queued.seed is None else queued.seed
        write(trial, arch_id=arch, summary=text, config=config.to_json(), seed=seed)
        if self.duplicates.answer(trial, arch, seed):
            return None
        candidate = Candidate(trial, config, arch, text, seed, self.context.targets)
        if queued.rerun_of is not None:
            self._continue_interrupted(candidate, self.study.get_trials(deepcopy=False)[queued.rerun_of])
        self.context.active[trial.number] = candidate
        return candidate

    def _continue_interrupted(self, candidate: Candidate, earlier: optuna.trial.FrozenTrial) -> None:
        """A re-run keeps what the interrupted trial finished: its rungs (from the checkpoint)."""
        self.context.tally.reruns += 1
        record = TrialRecord.of(earlier)
        if record.epochs_done and self.context.checkpoint(candidate).is_file():
            candidate.epochs_done = record.epochs_done
            candidate.accuracies = list(record.epoch_accuracies)[:record.epochs_done]
        self.context.say(f"[trial {candidate.number}] re-runs interrupted trial {earlier.number} ({candidate.arch}) "
                         f"from epoch {candidate.epochs_done}")

    def _waiting(self) -> list[optuna.trial.FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))

    # ================================================================== setup
    def _open(self, resume: bool) -> optuna.Study:
        """The study (created only after the cluster was found able to serve it)."""
        sampler = make_sampler(self.settings.search.sampler, self.settings.search.seed)
        # A cluster that cannot serve the search must leave nothing behind, not even a storage.
        self.executor = None if resume else self._make_executor(self)
        if not resume:
            self._check_affordable(self.executor.devices)
        storage = open_storage(self.settings.run.storage)
        names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
        if resume:
            if self.settings.search.study not in names:
                raise ValueError(f"study {self.settings.search.study!r} does not exist in {self.settings.run.storage}")
            self.study = optuna.load_study(study_name=self.settings.search.study, storage=storage, sampler=sampler)
            return self.study  # the executor is made once the lease is held
        if self.settings.search.study in names:
            raise ValueError(f"study {self.settings.search.study!r} already exists; continue it with "
                             f"'python -m search resume --study {self.settings.search.study}' or pick another --study")
        self.study = create_objective_study(self.settings.search.study, storage, sampler,
                                            self.settings.search.target_keys)
        if self.space.fixed_points:
            # Ablation tables: every (point, seed) exactly once, seed by seed in the table's order,
            # so a budget that runs short leaves seeds missing, not whole rows.
            for seed in range(self.settings.search.seed, self.settings.search.seed + self.settings.search.seeds):
                for params in self.space.grid_params():
                    self.study.enqueue_trial(params, user_attrs=TrialRecord(seed=seed).to_user_attrs())
        return self.study

    def _check_affordable(self, devices: dict[str, float]) -> None:
        """A new study whose budget cannot pay one trial's count and measurements, as the search
        estimates them before it has measured anything, would end having trained nothing: it
        is refused before it exists, naming the smallest budget that starts a trial."""
        priors = CostModel(self.budget.kind, train_images=1, proxy_scale=1.0)
        first = priors.new_architecture(devices[COUNT], devices[MEASURE], len(self.settings.search.targets))
        if self.budget.seconds < first:
            kind = self.budget.kind
            raise ValueError(f"--budget {self.budget} ({self.budget.seconds:g} {kind}-s) cannot pay one trial's count "
                             f"and measurement as they are estimated before anything is measured here (about "
                             f"{first:.0f} {kind}-s: a measurement holds {devices[MEASURE]:g} {kind}s); expected at "
                             f"least {math.ceil(first)}{kind}-s")

    def _prepare(self, study: optuna.Study) -> None:
        """The executor, caches, MLflow run, cost model and ledger; then the parts that use them."""
        from space import arch_id

        settings, workdir = self.settings, Path(self.settings.run.workdir)
        executor = self.executor or self._make_executor(self)
        tracker = self._tracker or StudyTracker(settings.run.tracking_uri, workdir / ARTIFACTS_DIR, self._say)
        run_id = tracker.start(settings.search.study, self._parent_params(), study.user_attrs.get(RUN_ID_ATTR))
        study.set_user_attr(RUN_ID_ATTR, run_id)
        proxy = self.space.proxy
        costs = CostModel(self.budget.kind, _train_images(settings),
                          proxy.width_mult ** 2 * (proxy.img_size / self.target.img_size) ** 2)
        learn_costs(study, costs)
        scheduler = make_scheduler(settings.search.scheduler, settings.search.epochs, settings.search.min_epochs, settings.search.eta,
                                   self.space.fixed_points)
        report_rungs(study, scheduler, settings.search.target_keys)
        self.context = SearchContext(
            settings=settings, study=study, space=self.space, target=self.target, budget=self.budget,
            scheduler=scheduler, constraints=settings.search.constraints, retry=RetryPolicy(settings.run.max_retries),
            executor=executor, devices={**executor.devices, "lost": 0.0},
            # Asked where measurements run (device model, library versions): the cache keys on it.
            fingerprints={t.key: executor.fingerprint(t.key) for t in settings.search.targets},
            cache=ThroughputCache(workdir / CACHE_FILE),
            costs=costs, ledger=Ledger(self.budget, budget_used(study)), tracker=tracker, out=self.out)
        self.context.predictor = self._given_predictor or self._predictor(settings.run.latency_table,
                                                                          self.context.fingerprint)
        learn_margin(study, self.context.margin)
        self.endings = Endings(self.context)
        self.dispatcher = Dispatcher(self.context, self.endings)
        self.reactions = Reactions(self.context, self.dispatcher, self.endings)
        self.duplicates = Duplicates(self.context, arch_id)
        self._say(f"study {settings.search.study}: space {settings.search.space}, budget {self.budget} "
                  f"({self.budget.seconds:.0f} {self.budget.kind}-s), used {self.context.ledger.spent:.0f}, "
                  f"target {', '.join(settings.search.target_keys)}, data {settings.search.dataset}, scheduler {scheduler.name} "
                  f"(rungs {', '.join(map(str, scheduler.rungs))}); storage {settings.run.storage}; MLflow run {run_id}")

    def _predictor(self, path: Path | None, fingerprint: dict[str, str]) -> Callable[[LITConfig], float | None] | None:
        """Predicted img/s from the latency table (``path``, else the node's own for the target,
        if it has built one: ``python -m space lut build``); None without a table, or where the
        node's own is of an older format (said; a table named by ``path`` is refused). A search
        ranked by prediction alone takes a table made on the target's own machine, which is
        not a node of this cluster: only its target must match."""
        from litv2.latency import OutdatedTable, default_table_path, open_table, predict

        named, path = path is not None, path or default_table_path(self.target, fingerprint)
        if not path.is_file():
            return None
        try:
            _, table = open_table(self.target, None if self.settings.search.throughput == PREDICTED else fingerprint,
                                  path)
        except OutdatedTable as error:
            if named:  # asked for by --latency-table: refused in one line
                raise
            self._say(f"not predicting throughput: the node's {path}: {error} (python -m space lut build)")
            return None
        self._say(f"predicting throughput from {path} ({len(table.parts)} parts): a constraint a prediction "
                  f"settles is not measured")

        def predicted(config: LITConfig) -> float | None:
            try:
                return predict(config, self.target, table).img_s
            except KeyError:  # a part the table lacks: measured only
                return None
        return predicted

    # ================================================================== endings
    def _interrupt(self) -> None:
        """Ctrl-C: cancel every job, charge what it ran, leave the trials to re-run on resume."""
        context = self.context
        for job, seconds in context.executor.cancel_all():
            candidate = context.active.get(job.trial)
            if candidate is not None:
                self.reactions.charge(candidate, job.kind, seconds * context.devices[job.kind])
        for candidate in list(context.active.values()):
            write(candidate.trial, interrupted=True, job=None)
            self.study.tell(candidate.trial, state=TrialState.FAIL)
            self.endings.interrupted(candidate)
        context.active.clear()

    def _closing_line(self) -> str:
        context, settings = self.context, self.settings
        used, tally = budget_used(self.study), context.tally
        if self.duplicates.exhausted:
            reason = "the space is exhausted"
        elif self.space.fixed_points and not self._waiting():
            reason = "every point was run"
        elif settings.search.max_trials is not None and tally.trained >= settings.search.max_trials:
            reason = f"--max-trials {settings.search.max_trials} reached"
        else:
            reason = "the budget is spent"
        line = (f"done ({reason}): used {used:.0f} of {self.budget.seconds:.0f} {self.budget.kind}-s "
                f"({100 * used / self.budget.seconds:.1f}%); {tally.line()}")
        queued = [w for w in self._waiting() if TrialRecord.of(w).rerun_of is not None]
        if queued:  # kept for a resume with more budget: a re-run keeps the trial's seed and checkpoint
            line += f"\n{len(queued)} re-runs of interrupted trials stay queued for 'search resume --budget MORE'"
        typical = context.costs.typical_flops()
        if tally.trained and not self.study.best_trials and typical is not None:
            epochs = context.scheduler.max_epochs
            full = context.costs.train(typical, epochs, context.devices[TRAIN])
            line += (f"\nno trial reached the last epoch ({epochs}): one such training costs about "
                     f"{full:.0f} {self.budget.kind}-s here; raise --budget or lower --epochs")
        return line

    def _parent_params(self) -> dict[str, Any]:
        versions = installed_versions(("torch", "timm", "optuna", "ray", "mlflow", "litv2-search"))
        return {**self.settings.as_params(), **{f"version.{package}": v for package, v in versions.items()}}

    def _say(self, line: str) -> None:
        print(line, file=self.out, flush=True)


def _train_images(settings: SearchSettings) -> int:
    from ..training.data import train_size

    return train_size(settings.search.dataset, settings.run.data_root)


def _ray_executor(search: Search) -> Executor:
    """Join (or start) Ray and build the executor; a cluster that cannot serve raises ValueError."""
    import ray

    from .executor import BENCH_RESOURCE, RayExecutor, plan_resources, ray_system_config

    if not ray.is_initialized():
        if search.settings.run.address:
            from .joining import join_cluster

            join_cluster(search.settings.run.address, search.settings.run.log_file)
        else:
            from .reaper import children_of, guard

            before = children_of(os.getpid())
            # address="local": a new instance even where `ray start` left one running on this machine
            ray.init(address="local", resources={BENCH_RESOURCE: 1}, include_dashboard=False, log_to_driver=False,
                     _system_config=ray_system_config())
            guard(children_of(os.getpid()) - before)  # this Ray dies with this driver, even a SIGKILLed one
    on_disk_images = search.settings.search.dataset.startswith("imagefolder:")
    # A study's targets share a device kind (SearchConfig): the one of most threads asks most of a measuring node.
    widest = max(search.settings.search.targets, key=lambda target: target.threads)
    resources = plan_resources(search.budget.kind, widest, search.settings.run.trials_per_device,
                               search.settings.run.cpus_per_trial, data_workers=IMAGEFOLDER_GPU_WORKERS if on_disk_images else 0)
    return RayExecutor(resources)
