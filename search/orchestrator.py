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
"""
from __future__ import annotations

import os
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

import optuna

from litv2 import LITConfig

from .budget import CostModel, Ledger, parse_budget
from .cache import CACHE_FILE, ThroughputCache
from .constraints import latency_ms, violated
from .executor import Event, Executor, try_submit
from .faults import RetryPolicy, failure_reason
from .jobs import CountJob, Job, MeasureJob, TrainJob
from .lease import TTL_SECONDS, Lease
from .objectives import OBJECTIVES, create_objective_study
from .repeats import best_supported, interval, is_wide
from .scheduler import Decision, RungResult, make_scheduler
from .settings import SearchSettings, stored
from .storage import open_storage
from .studies import RUN_ID_ATTR, SETTINGS_ATTR, budget_used
from .target import parse_target
from .tracking import StudyTracker

MAX_CONSECUTIVE_DUPLICATES = 200
UNSEEN_AFTER_DUPLICATES = 3  # known architectures proposed in a row before one is drawn among the unseen
MAX_UNAFFORDABLE_IN_A_ROW = 10
IMAGEFOLDER_GPU_WORKERS = 3  # JPEG decoding processes per GPU training on an image folder
TrialState = optuna.trial.TrialState


class SearchError(RuntimeError):
    """A search that cannot go on (all trials failing, an unusable cluster, a held study)."""


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """Samplers are not stored in the storage: they are re-created with their seed on resume."""
    if name == "tpe":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=5)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=16)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


@dataclass
class Candidate:
    """One trial on its way through count -> measure -> rungs of training."""

    trial: optuna.trial.Trial
    config: LITConfig
    arch: str
    summary: str
    seed: int
    started: float
    figures: dict[str, Any] | None = None
    measured: dict[str, Any] | None = None
    measured_now: bool = False
    measurements: list[dict[str, Any]] = field(default_factory=list)  # this trial's own, repeats included
    epochs_done: int = 0
    accuracies: list[float] = field(default_factory=list)
    costs: dict[str, float] = field(default_factory=dict)  # device-seconds by job kind
    busy: float = 0.0  # seconds its jobs ran
    training_started: bool = False  # a first rung was submitted (a retried one is not a second architecture)

    @property
    def number(self) -> int:
        return self.trial.number

    def charge(self, kind: str, device_seconds: float) -> None:
        self.costs[kind] = self.costs.get(kind, 0.0) + device_seconds
        self.trial.set_user_attr("device_seconds", sum(self.costs.values()))
        self.trial.set_user_attr("costs", self.costs)


class Search:
    """Runs (or resumes) one study until its budget, its space or its points are used up.

    ``executor`` builds the executor from the settings (default: Ray); tests pass an
    in-process one. ``tracker`` replaces the MLflow tracker: a replay of thousands of
    simulated searches (``search bench-strategies``) keeps its progress in memory instead.
    """

    def __init__(self, settings: SearchSettings, out: TextIO | None = None,
                 executor: Callable[["Search"], Executor] | None = None, lease_ttl: float = TTL_SECONDS,
                 tracker: StudyTracker | None = None) -> None:
        from space import arch_id, get_space, summary

        self.settings = settings
        self.out = out or sys.stdout
        self.space = get_space(settings.space)
        self._arch_id, self._summary = arch_id, summary
        self.budget = parse_budget(settings.budget)
        self.target = parse_target(settings.target)
        self.workdir = Path(settings.workdir)
        self.scheduler = make_scheduler(settings.scheduler, settings.epochs, settings.min_epochs, settings.eta,
                                        self.space.fixed_points)
        self.constraints = settings.constraint_set
        self.retry = RetryPolicy(settings.max_retries)
        self._make_executor = executor or _ray_executor
        self.lease_ttl = lease_ttl
        self._tracker = tracker
        self.queues: dict[str, list[Candidate]] = {"count": [], "measure": [], "train": []}
        self.active: dict[int, Candidate] = {}  # trial number -> candidate, until finalised
        self.rung_results: dict[int, dict[tuple[str, int], RungResult]] = {}
        self.failures_in_a_row = 0
        self.duplicates_in_a_row = 0
        self.unaffordable_in_a_row = 0
        self.exhausted = False
        self._grid: list[tuple[dict[str, Any], str]] | None = None  # a finite space's (params, arch id), once needed
        self.tally = dict(trained=0, duplicates=0, reruns=0, infeasible=0, stopped=0, completed=0, failed=0,
                          unaffordable=0, reused=0, remeasured=0)

    # ================================================================== the story
    def run(self, resume: bool = False) -> int:
        study = self._open(resume)
        with Lease(study, ttl=self.lease_ttl) as lease:
            recovered = self._recover(lease.previous) if resume else []
            if not resume:
                study.set_user_attr(SETTINGS_ATTR, self.settings.to_json())
            self._prepare()
            for number in recovered:
                self._log_interrupted(self._recovered_candidate(self.study.trials[number]))
            status = "FAILED"
            try:
                while self._step():
                    pass
                self._give_up_queued()
                status = "FINISHED"
            except KeyboardInterrupt:
                status = "KILLED"
                self._interrupt()
                self._say("interrupted: running trials were stopped and will continue on 'search resume'")
                return 130
            except BaseException:
                self._interrupt()  # whatever else was running re-runs on resume
                raise
            finally:
                self.tracker.finish(status)
        self._say(self._closing_line())
        return 0

    def _step(self) -> bool:
        """Start what can start; wait for one job to end and react. False when all is done."""
        self._start_work()
        if not self.executor.running():
            return False
        for event in self.executor.wait():
            self._on_event(event)
        return True

    # ================================================================== setup
    def _open(self, resume: bool) -> optuna.Study:
        """The study (created only after the cluster was found able to serve it)."""
        sampler = make_sampler(self.settings.sampler, self.settings.seed)
        # A cluster that cannot serve the search must leave nothing behind, not even a storage.
        self.executor = None if resume else self._make_executor(self)
        storage = open_storage(self.settings.storage)
        names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
        if resume:
            if self.settings.study not in names:
                raise ValueError(f"study {self.settings.study!r} does not exist in {self.settings.storage}")
            self.study = optuna.load_study(study_name=self.settings.study, storage=storage, sampler=sampler)
            return self.study  # the executor is made once the lease is held
        if self.settings.study in names:
            raise ValueError(f"study {self.settings.study!r} already exists; continue it with "
                             f"'python -m search resume --study {self.settings.study}' or pick another --study")
        self.study = create_objective_study(self.settings.study, storage, sampler)
        if self.space.fixed_points:
            # Ablation tables: every (point, seed) exactly once, seed by seed in the table's order,
            # so a budget that runs short leaves seeds missing, not whole rows.
            for seed in range(self.settings.seed, self.settings.seed + self.settings.seeds):
                for params in self.space.grid_params():
                    self.study.enqueue_trial(params, user_attrs={"seed": seed})
        return self.study

    def _prepare(self) -> None:
        if self.executor is None:
            self.executor = self._make_executor(self)
        self.cache = ThroughputCache(self.workdir / CACHE_FILE)
        self.tracker = self._tracker or StudyTracker(self.settings.tracking_uri, self.workdir / "mlartifacts",
                                                     self._say)
        run_id = self.tracker.start(self.settings.study, self._parent_params(), self.study.user_attrs.get(RUN_ID_ATTR))
        self.study.set_user_attr(RUN_ID_ATTR, run_id)
        self.devices = {**self.executor.devices, "lost": 0.0}
        # Asked where measurements run (device model, library versions): the cache keys on it.
        self.fingerprint = self.executor.fingerprint(self.target.key)
        proxy = self.space.proxy
        self.costs = CostModel(self.budget.kind, _train_images(self.settings),
                               proxy.width_mult ** 2 * (proxy.img_size / self.target.img_size) ** 2)
        self.ledger = Ledger(self.budget, budget_used(self.study))
        self._learn_costs()
        self._rebuild_rungs()
        self._say(f"study {self.settings.study}: space {self.settings.space}, budget {self.budget} "
                  f"({self.budget.seconds:.0f} {self.budget.kind}-s), used {self.ledger.spent:.0f}, "
                  f"target {self.target}, data {self.settings.dataset}, scheduler {self.scheduler.name} "
                  f"(rungs {', '.join(map(str, self.scheduler.rungs))}); storage {self.settings.storage}; "
                  f"MLflow run {run_id}")

    def _recover(self, previous_lease: dict[str, Any] | None) -> list[int]:
        """Trials left RUNNING by a dead driver or interrupted by Ctrl-C run again.

        A dead driver's running jobs are charged up to its last heartbeat; the re-run keeps
        the trial's seed and continues from its last rung checkpoint. Returns the numbers of
        the dead driver's trials (their MLflow child runs are logged once MLflow is open).
        """
        last_beat = previous_lease["heartbeat"] if previous_lease else time.time()
        trials = self.study.get_trials(deepcopy=False)
        already = {t.user_attrs.get("rerun_of") for t in trials}
        recovered = []
        for trial in trials:
            if trial.state == TrialState.RUNNING:
                recovered.append(trial.number)
                # Reopened by id: the dead driver's Trial objects are gone with it.
                orphan = optuna.trial.Trial(self.study, trial._trial_id)
                job = trial.user_attrs.get("job")
                if job:
                    costs = dict(trial.user_attrs.get("costs", {}))
                    costs["lost"] = costs.get("lost", 0.0) + max(0.0, last_beat - job["started"]) * job["devices"]
                    orphan.set_user_attr("costs", costs)
                    orphan.set_user_attr("device_seconds", sum(costs.values()))
                orphan.set_user_attr("interrupted", True)
                self.study.tell(trial.number, state=TrialState.FAIL)
            elif not (trial.state == TrialState.FAIL and trial.user_attrs.get("interrupted")):
                continue
            if trial.number not in already:
                attrs = {"rerun_of": trial.number, "seed": trial.user_attrs.get("seed", self.settings.seed)}
                self.study.enqueue_trial(trial.params, user_attrs=attrs)
        return recovered

    def _recovered_candidate(self, trial: optuna.trial.FrozenTrial) -> Candidate:
        """A dead driver's trial as far as its record goes (for its MLflow child run)."""
        attrs = trial.user_attrs
        config = LITConfig.from_json(attrs["config"]) if "config" in attrs else self.space.sample(
            optuna.trial.FixedTrial(trial.params))
        candidate = Candidate(trial, config, attrs.get("arch_id", self._arch_id(config)),
                              attrs.get("summary", self._summary(config)), attrs.get("seed", self.settings.seed),
                              time.perf_counter(), epochs_done=attrs.get("epochs_done", 0),
                              accuracies=list(attrs.get("epoch_accuracies", [])))
        candidate.costs = dict(attrs.get("costs", {}))
        return candidate

    def _learn_costs(self) -> None:
        """What earlier drivers' jobs cost (resume): a resumed search estimates from them, not
        from the conservative priors, so what is left of its budget is not left unused."""
        for trial in self.study.get_trials(deepcopy=False):
            costs = trial.user_attrs.get("costs", {})
            if "count" in costs:
                self.costs.observe_count(costs["count"])
            if "measure" in costs:
                self.costs.observe_measure(costs["measure"])
            if costs.get("train") and trial.user_attrs.get("epochs_done") and "flops" in trial.user_attrs:
                self.costs.observe_train(trial.user_attrs["flops"], trial.user_attrs["epochs_done"], costs["train"])

    def _rebuild_rungs(self) -> None:
        """Rung results recorded by earlier drivers (for asynchronous promotion after resume)."""
        for trial in self.study.get_trials(deepcopy=False):
            accuracies = trial.user_attrs.get("epoch_accuracies")
            throughput = trial.user_attrs.get("throughput")
            if accuracies and throughput and "duplicate_of" not in trial.user_attrs:
                self._record_rungs(trial.user_attrs["arch_id"], trial.user_attrs.get("seed", 0), trial.number,
                                   accuracies, throughput)

    def _record_rungs(self, arch: str, seed: int, number: int, accuracies: list[float], throughput: float) -> None:
        for rung in self.scheduler.rungs:
            if len(accuracies) >= rung:
                self.rung_results.setdefault(rung, {})[(arch, seed)] = RungResult(number, accuracies[rung - 1], throughput)

    # ================================================================== starting work
    def _start_work(self) -> None:
        self._dispatch()
        while self._may_ask():
            candidate = self._ask()
            if candidate is not None:
                self._advance(candidate)
            self._dispatch()

    def _may_ask(self) -> bool:
        """A new trial while fewer candidates wait for their first rung than there are training
        slots, and it can afford at least its count and measurement.

        Asking a slot's worth ahead lets measurements run back to back while the node is
        drained for one, and leaves a measured candidate ready for every slot that frees:
        asking only for an idle slot trained one proxy at a time on a single node (each
        measurement waits for the other training to end, then its own training starts alone).
        """
        if self.exhausted or self.unaffordable_in_a_row >= MAX_UNAFFORDABLE_IN_A_ROW:
            return False
        if self.space.fixed_points and not self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return False
        if self.settings.max_trials is not None and self.tally["trained"] + self._before_training() >= self.settings.max_trials:
            return False
        if self._before_training() >= max(1, self.executor.placement.capacity):
            return False  # every slot already has a trial on its way
        estimate = 0.0 if self._next_is_cached_rerun() else (
            self.costs.count(self.devices["count"]) + self.costs.measure(self.devices["measure"]))
        typical = self.costs.typical_flops()
        if typical is not None:  # and a first rung of a typical architecture
            estimate += self.costs.train(typical, self.scheduler.rungs[0], self.devices["train"])
        return self.ledger.fits(estimate)

    def _next_is_cached_rerun(self) -> bool:
        """Whether the next trial is a queued re-run of an interrupted trial whose figures and
        measurement are cached: it costs no count or measurement, so a resume near the end of
        its budget still re-runs what the dead driver left."""
        waiting = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if not waiting or "rerun_of" not in waiting[0].user_attrs:
            return False
        arch = self.study.trials[waiting[0].user_attrs["rerun_of"]].user_attrs.get("arch_id")
        return (arch is not None and self.cache.get_figures(arch, self.target.img_size) is not None
                and self.cache.get(arch, self.target.key, self.fingerprint) is not None)

    def _before_training(self) -> int:
        """Candidates not yet trained at all (counting, measuring or queued for a first rung)."""
        return sum(1 for c in self.active.values() if c.epochs_done == 0 and not c.training_started)

    def _ask(self) -> Candidate | None:
        trial = self.study.ask()
        config = self.space.sample(trial)
        arch, text = self._arch_id(config), self._summary(config)
        seed = trial.user_attrs.get("seed", self.settings.seed)
        for key, value in (("arch_id", arch), ("summary", text), ("config", config.to_json()), ("seed", seed)):
            trial.set_user_attr(key, value)
        if self._answer_duplicate(trial, arch, seed):
            return None
        self.duplicates_in_a_row = 0
        candidate = Candidate(trial, config, arch, text, seed, time.perf_counter())
        rerun_of = trial.user_attrs.get("rerun_of")
        if rerun_of is not None:
            self._continue_interrupted(candidate, self.study.get_trials(deepcopy=False)[rerun_of])
        self.active[trial.number] = candidate
        return candidate

    def _continue_interrupted(self, candidate: Candidate, earlier: optuna.trial.FrozenTrial) -> None:
        """A re-run keeps what the interrupted trial finished: its rungs (from the checkpoint)."""
        self.tally["reruns"] += 1
        done = earlier.user_attrs.get("epochs_done", 0)
        if done and self._checkpoint(candidate).is_file():
            candidate.epochs_done = done
            candidate.accuracies = list(earlier.user_attrs.get("epoch_accuracies", []))[:done]
        self._say(f"[trial {candidate.number}] re-runs interrupted trial {earlier.number} ({candidate.arch}) "
                  f"from epoch {candidate.epochs_done}")

    def _answer_duplicate(self, trial: optuna.trial.Trial, arch: str, seed: int) -> bool:
        """An architecture (and seed, for fixed points) the study already has is answered from it,
        never trained again; it is recorded as PRUNED so it never doubles a point of the front."""
        def same(t: optuna.trial.FrozenTrial) -> bool:
            return (t.user_attrs.get("arch_id") == arch and "duplicate_of" not in t.user_attrs
                    and (not self.space.fixed_points or t.user_attrs.get("seed") == seed))

        done = [t for t in self.study.get_trials(deepcopy=False) if self._evaluated(t) and same(t)]
        running = [c.number for c in self.active.values() if c.arch == arch and (not self.space.fixed_points or c.seed == seed)]
        if not done and not running:
            return False
        self.duplicates_in_a_row += 1
        self.tally["duplicates"] += 1
        if self.duplicates_in_a_row >= self._duplicate_limit():
            self.exhausted = True
        trial.set_user_attr("duplicate_of", done[0].number if done else running[0])
        for name, value in (done[0].constraints if done else {}).items():
            trial.set_constraint(name, value)
        self.study.tell(trial, state=TrialState.PRUNED)
        if self.duplicates_in_a_row % UNSEEN_AFTER_DUPLICATES == 0 and not self.exhausted:
            self._enqueue_unseen(trial.number)
        return True

    def _enqueue_unseen(self, number: int) -> None:
        """A sampler that keeps proposing known architectures of a finite space is handed an
        unseen one, drawn at random (seeded), as its next trial.

        Duplicates are answered as PRUNED without values, so a model-based sampler (GP above
        all, and any sampler once MO-ASHA has stopped the architectures it likes) learns nothing
        from them and proposes the same points again; left alone it would end the search as
        'exhausted' with most of a small space untried and the budget unspent.
        """
        if self.space.fixed_points or self.space.size() == float("inf"):
            return
        if self._grid is None:
            self._grid = list(zip(self.space.grid_params(), map(self._arch_id, self.space.enumerate())))
        seen = {t.user_attrs.get("arch_id") for t in self.study.get_trials(deepcopy=False)}
        seen |= {c.arch for c in self.active.values()}
        unseen = [params for params, arch in self._grid if arch not in seen]
        if not unseen:
            return
        params = random.Random(self.settings.seed * 1_000_003 + number).choice(unseen)
        self.study.enqueue_trial(params, user_attrs={"drawn_unseen": True})
        self._say(f"[trial {number}] {UNSEEN_AFTER_DUPLICATES} known architectures proposed in a row: "
                  f"the next trial is an unseen one, drawn at random")

    def _evaluated(self, trial: optuna.trial.FrozenTrial) -> bool:
        """Whether the study has this trial's verdict: an outcome, or a failure that would recur."""
        return (trial.state in (TrialState.COMPLETE, TrialState.PRUNED)
                or (trial.state == TrialState.FAIL and self.retry.architecture_fault(trial.user_attrs.get("failure", ""))))

    def _duplicate_limit(self) -> int:
        size = self.space.size()
        if size != float("inf"):
            distinct = {t.user_attrs.get("arch_id") for t in self.study.get_trials(deepcopy=False)
                        if "duplicate_of" not in t.user_attrs and (t.state != TrialState.FAIL or self._evaluated(t))}
            if len(distinct) >= size:
                return 1
        return MAX_CONSECUTIVE_DUPLICATES

    def _advance(self, candidate: Candidate) -> None:
        """Move a candidate to its next step: count, check, measure, check, train a rung."""
        if candidate.figures is None:
            candidate.figures = self.cache.get_figures(candidate.arch, self.target.img_size)
            if candidate.figures is None:
                self.queues["count"].append(candidate)
                return
        if self._infeasible(candidate, self.constraints.static_violations(candidate.figures["params"],
                                                                             candidate.figures["flops"])):
            return
        if candidate.measured is None:
            candidate.measured = self.cache.get(candidate.arch, self.target.key, self.fingerprint)
            if candidate.measured is None:
                self.queues["measure"].append(candidate)
                return
        if self._infeasible(candidate, self.constraints.measured_violations(candidate.measured["throughput"],
                                                                               self.target.batch_size)):
            return
        earlier = self.cache.get_training(candidate.arch, self._recipe(candidate))
        if earlier is not None:
            self._reuse(candidate, earlier)
            return
        self.queues["train"].append(candidate)

    def _recipe(self, candidate: Candidate) -> str:
        """What a proxy training's result depends on besides the architecture."""
        return (f"{self.settings.dataset}|{self.space.proxy.img_size}|{self.scheduler.max_epochs}|"
                f"{candidate.seed}|{self.settings.data_root or ''}|{self.settings.trainer}")

    def _reuse(self, candidate: Candidate, earlier: dict[str, Any]) -> None:
        """A training another study already ran to the last epoch (same recipe and seed)."""
        self.tally["reused"] += 1
        candidate.accuracies = list(earlier["epoch_accuracies"])
        candidate.epochs_done = len(candidate.accuracies)
        candidate.trial.set_user_attr("epoch_accuracies", candidate.accuracies)
        candidate.trial.set_user_attr("epochs_done", candidate.epochs_done)
        candidate.trial.set_user_attr("training_reused_from", earlier.get("study"))
        self._say(f"[trial {candidate.number}] {candidate.arch}: trained before (study {earlier.get('study')}), reused")
        self._complete(candidate)

    def _dispatch(self) -> None:
        """Submit queued jobs wherever placement and the budget allow.

        Measurements first (they free candidates for training), then rung continuations
        before first rungs (successive halving spends on the promising), then counts.
        """
        for candidate in list(self.queues["measure"]):
            if self._shared(candidate, "measure"):
                continue
            # The longest measurement so far is no bound when the node's load rises: a
            # measurement is stopped at what the ledger grants it (none costs no devices).
            estimate, devices = self.costs.measure(self.devices["measure"]), self.devices["measure"]
            grant = self.ledger.grant(estimate)
            job = MeasureJob(candidate.number, candidate.config.to_json(), self.target.key,
                             self.settings.measure_seconds, allowed_seconds=grant / devices if devices else None)
            if not self._submit(candidate, job, estimate, "measure", grant=grant):
                break
        waiting = sorted(self.queues["train"], key=lambda c: (-c.epochs_done, c.number))
        for candidate in waiting:
            to_epoch = self.scheduler.next_rung(candidate.epochs_done)
            estimate = self.costs.train(candidate.figures["flops"], to_epoch - candidate.epochs_done,
                                        self.devices["train"])
            if not self.ledger.fits(estimate):
                self._unaffordable(candidate, estimate)
                continue
            if not self._submit(candidate, self._train_job(candidate, to_epoch), estimate, "train"):
                break
        for candidate in list(self.queues["count"]):
            if self._shared(candidate, "count"):
                continue
            job = CountJob(candidate.number, candidate.config.to_json(), self.target.img_size)
            if not self._submit(candidate, job, self.costs.count(self.devices["count"]), "count"):
                break

    def _shared(self, candidate: Candidate, kind: str) -> bool:
        """Whether a queued count or measurement is answered by another trial of the same
        architecture (other seeds, re-runs): from the cache once that one is done - the
        candidate then moves on - or by waiting while it runs."""
        if kind == "count":
            candidate.figures = self.cache.get_figures(candidate.arch, self.target.img_size)
            found = candidate.figures is not None
        else:
            candidate.measured = self.cache.get(candidate.arch, self.target.key, self.fingerprint)
            found = candidate.measured is not None
        if found:
            self.queues[kind].remove(candidate)
            self._advance(candidate)
            return True
        return any(job.kind == kind and self.active[job.trial].arch == candidate.arch for job in self.executor.running())

    def _submit(self, candidate: Candidate, job: Job, estimate: float, kind: str, grant: float | None = None) -> bool:
        """Start ``job`` if its ``estimate`` fits the budget; ``grant`` (default: the estimate)
        is what the budget promises it until it ends."""
        if not self.ledger.fits(estimate) or not try_submit(self.executor, job):
            return False
        self.queues[kind].remove(candidate)
        self.ledger.commit((candidate.number, kind), estimate if grant is None else grant)
        candidate.trial.set_user_attr("job", dict(kind=kind, started=time.time(), devices=self.devices[kind]))
        if kind == "train":
            self.unaffordable_in_a_row = 0
            if candidate.epochs_done == 0 and not candidate.training_started:
                self.tally["trained"] += 1
            candidate.training_started = True
            self._say(f"[trial {candidate.number}] training {candidate.arch} {candidate.summary} "
                      f"epochs {candidate.epochs_done}->{job.to_epoch}")
        return True

    def _unaffordable(self, candidate: Candidate, estimate: float) -> None:
        """A rung the budget cannot pay for: wait while running jobs may leave money over,
        else give the trial up (cheaper architectures may still fit)."""
        if any(job.kind != "count" for job in self.executor.running()):
            return
        self.queues["train"].remove(candidate)
        self.unaffordable_in_a_row += 1
        left = max(self.ledger.left, 0)
        kind = self.budget.kind
        self._leave_untrained(candidate, f"its next rung would cost ~{estimate:.0f} {kind}-s, {left:.0f} left",
                              f"the budget cannot pay its next rung (~{estimate:.0f} of {left:.0f} {kind}-s left)")

    def _give_up_queued(self) -> None:
        """Nothing runs and nothing more can start: the candidates still queued for a count, a
        measurement or a rung end as not trained, so no trial outlives its search as RUNNING."""
        left = max(self.ledger.left, 0)
        for kind, queue in self.queues.items():
            for candidate in list(queue):
                queue.remove(candidate)
                self._leave_untrained(candidate, f"the budget ran out before its {kind} job "
                                                 f"({left:.0f} {self.budget.kind}-s left)",
                                      f"the budget ran out before its {kind} job")

    def _leave_untrained(self, candidate: Candidate, why: str, line: str) -> None:
        """End a trial the budget cannot carry further: its reason recorded, counted among
        those left untrained for budget, stopped (PRUNED) if it has a rung, else FAIL."""
        self.tally["unaffordable"] += 1
        candidate.trial.set_user_attr("not_trained", why)
        self._say(f"[trial {candidate.number}] {candidate.arch}: not trained, {line}")
        self._close(candidate, state=TrialState.PRUNED if candidate.epochs_done else TrialState.FAIL)

    def _train_job(self, candidate: Candidate, to_epoch: int) -> TrainJob:
        return TrainJob(
            trial=candidate.number, proxy_json=self.space.proxy_of(candidate.config).to_json(),
            dataset=self.settings.dataset, data_root=self.settings.data_root, data_seed=self.settings.seed,
            img_size=self.space.proxy.img_size, from_epoch=candidate.epochs_done, to_epoch=to_epoch,
            max_epochs=self.scheduler.max_epochs, seed=candidate.seed, use_gpu=self.budget.kind == "gpu",
            threads=self.executor.train_threads, checkpoint=str(self._checkpoint(candidate)),
            trainer=self.settings.trainer, data_workers=self.executor.data_workers,
        )

    def _checkpoint(self, candidate: Candidate) -> Path:
        return self.settings.checkpoints / self.settings.study / f"{candidate.arch}-s{candidate.seed}.pt"

    # ================================================================== events
    def _on_event(self, event: Event) -> None:
        candidate = self.active[event.job.trial]
        kind = event.job.kind
        candidate.trial.set_user_attr("job", None)
        if event.error is not None:
            # A failed job is charged what it ran: the whole time since it was submitted.
            self._charge(candidate, kind, max(time.time() - event.submitted, 0.0) * self.devices[kind])
            reason = failure_reason(event.error, event.lost)
            if not self._retried(candidate, kind, reason, event.error):
                self._fail(candidate, kind, event.error, reason)
            return
        result = event.result
        self._charge(candidate, kind, result["wall_seconds"] * self.devices[kind])
        candidate.busy += result["wall_seconds"]
        if kind == "count":
            self.costs.observe_count(result["wall_seconds"] * self.devices["count"])
            candidate.figures = dict(params=result["params"], flops=result["flops"])
            candidate.trial.set_user_attr("count_interval", _where_and_when(result))
            self.cache.put_figures(candidate.arch, self.target.img_size, candidate.figures)
            self._advance(candidate)
        elif kind == "measure":
            # The node's one-off calibration is charged, but is no estimate of the next measurement.
            once = result.get("calibration_seconds", 0.0)
            self.costs.observe_measure((result["wall_seconds"] - once) * self.devices["measure"])
            candidate.trial.set_user_attr("measure_interval", _where_and_when(result))
            if result.get("out_of_time"):
                self._leave_untrained(candidate, "its measurement used up what the budget could grant it",
                                      "its measurement used up what the budget could grant it")
            else:
                self._measured(candidate, result)
        else:
            self._trained(candidate, event.job, result)

    def _measured(self, candidate: Candidate, result: dict[str, Any]) -> None:
        """Keep a new figure, or measure once more when it is too wide to rank by
        (:mod:`search.repeats`); of the two, the better-supported one is kept and cached."""
        candidate.measurements.append(result)
        # A repeat is worth its cost only if the candidate can still be trained after it and
        # after the measurements queued before it (other repeats among them).
        first_rung = self.costs.train(candidate.figures["flops"], self.scheduler.next_rung(0), self.devices["train"])
        measurements = (1 + len(self.queues["measure"])) * self.costs.measure(self.devices["measure"])
        if (len(candidate.measurements) == 1 and is_wide(result) and self.executor.measures_anew
                and self.ledger.fits(measurements + first_rung)):
            self.tally["remeasured"] += 1
            low, high = interval(result)
            self._say(f"[trial {candidate.number}] {candidate.arch}: {result['throughput']:.1f} img/s "
                      f"[{low:.1f}, {high:.1f}] is too wide to rank by; measuring it again")
            self.queues["measure"].append(candidate)
            return
        kept = dict(best_supported(candidate.measurements))
        kept["measured_times"] = len(candidate.measurements)
        candidate.measured, candidate.measured_now = kept, True
        self.cache.put(candidate.arch, self.target.key, kept)
        self._advance(candidate)

    def _retried(self, candidate: Candidate, kind: str, reason: str, message: str) -> bool:
        """Lost work goes back to its queue, to run on whatever node placement picks next; a
        rung restarts from the trial's last rung checkpoint."""
        retries = list(candidate.trial.user_attrs.get("retries", []))
        if not self.retry.retry(reason, len(retries)):
            return False
        candidate.trial.set_user_attr("retries", retries + [dict(kind=kind, error=message[:500])])
        where = f" from epoch {candidate.epochs_done}" if kind == "train" else ""
        self._say(f"[trial {candidate.number}] {reason} during {kind} ({message}); retry {len(retries) + 1} "
                  f"of {self.retry.max_retries}{where}")
        self.queues[kind].append(candidate)
        return True

    def _charge(self, candidate: Candidate, kind: str, device_seconds: float) -> None:
        candidate.charge(kind, device_seconds)
        self.ledger.settle((candidate.number, kind), device_seconds)

    def _trained(self, candidate: Candidate, job: TrainJob, result: dict[str, Any]) -> None:
        self.failures_in_a_row = 0  # a trained rung, not a count or a measurement, shows the search works
        self.costs.observe_train(candidate.figures["flops"], job.to_epoch - job.from_epoch,
                                 result["wall_seconds"] * self.devices["train"])
        candidate.epochs_done = job.to_epoch
        candidate.accuracies = list(result["epoch_accuracies"])
        trial = candidate.trial
        trial.set_user_attr("epochs_done", candidate.epochs_done)
        trial.set_user_attr("epoch_accuracies", candidate.accuracies)
        trial.set_user_attr("checkpoint_seconds", trial.user_attrs.get("checkpoint_seconds", 0.0)
                            + result.get("checkpoint_seconds", 0.0))
        intervals = trial.user_attrs.get("train_intervals", []) + [_where_and_when(result)]
        trial.set_user_attr("train_intervals", intervals)
        throughput = candidate.measured["throughput"]
        self._record_rungs(candidate.arch, candidate.seed, candidate.number, candidate.accuracies, throughput)
        rung = job.to_epoch
        recorded = list(self.rung_results[rung].values())
        mine = self.rung_results[rung][(candidate.arch, candidate.seed)]
        decision = self.scheduler.decide(mine, rung, recorded)
        if decision == Decision.CONTINUE:
            self._say(f"[trial {candidate.number}] rung {rung}: top-1 {mine.accuracy:.2f}% -> continues "
                      f"({len(recorded)} recorded at this rung)")
            self.queues["train"].append(candidate)
        elif decision == Decision.STOP:
            self._stop(candidate, rung, len(recorded))
        else:
            self._complete(candidate)

    # ================================================================== endings
    def _infeasible(self, candidate: Candidate, violations: dict[str, float]) -> bool:
        """Record a constraint violation (Optuna trial constraints) and end the trial untrained."""
        trial = candidate.trial
        for name, value in violations.items():
            if name not in trial.user_attrs.get("constraint_values", {}):
                trial.set_constraint(name, value)
        trial.set_user_attr("constraint_values", {**trial.user_attrs.get("constraint_values", {}), **violations})
        broken = violated(violations)
        if not broken:
            return False
        self.tally["infeasible"] += 1
        trial.set_user_attr("infeasible", broken)
        figures = self._figures(candidate)
        self._say(f"[trial {candidate.number}] {candidate.arch} {candidate.summary}: infeasible "
                  f"({', '.join(broken)}: {self._figure_text(figures)}), not trained")
        self._close(candidate, TrialState.PRUNED, figures, status="infeasible")
        return True

    def _stop(self, candidate: Candidate, rung: int, recorded: int) -> None:
        self.tally["stopped"] += 1
        candidate.trial.set_user_attr("stopped_at", rung)
        self._say(f"[trial {candidate.number}] rung {rung}: top-1 {candidate.accuracies[-1]:.2f}% -> stopped "
                  f"(not in the top 1/{getattr(self.scheduler, 'eta', 1)} of {recorded})")
        self._close(candidate, TrialState.PRUNED, self._figures(candidate), status="stopped")

    def _complete(self, candidate: Candidate) -> None:
        self.tally["completed"] += 1
        self.cache.put_training(candidate.arch, self._recipe(candidate), dict(
            epoch_accuracies=candidate.accuracies, study=self.settings.study, trial=candidate.number))
        figures = self._figures(candidate)
        values = [candidate.accuracies[-1], candidate.measured["throughput"]]
        self._close(candidate, TrialState.COMPLETE, figures, values=values, status="complete")
        self._publish_front()
        used = budget_used(self.study)
        self._say(f"[trial {candidate.number}] top-1 {values[0]:.2f}%  {values[1]:.1f} img/s  "
                  f"{figures['params'] / 1e6:.2f}M params | budget {used:.0f}/{self.budget.seconds:.0f} "
                  f"{self.budget.kind}-s ({100 * used / self.budget.seconds:.0f}%)")

    def _fail(self, candidate: Candidate, kind: str, message: str, reason: str) -> None:
        self.tally["failed"] += 1
        if not self.retry.architecture_fault(reason):
            self.failures_in_a_row += 1
        candidate.trial.set_user_attr("error", message[:2000])
        candidate.trial.set_user_attr("failure", reason)
        self._say(f"[trial {candidate.number}] FAILED during {kind}: {reason} ({message})")
        for queue in self.queues.values():
            if candidate in queue:
                queue.remove(candidate)
        self._close(candidate, TrialState.FAIL, status="failed")
        if self.failures_in_a_row >= 3:
            raise SearchError(f"3 trials failed in a row; last error: {message}")

    def _close(self, candidate: Candidate, state: TrialState, figures: dict[str, Any] | None = None,
               values: list[float] | None = None, status: str = "") -> None:
        """Store the trial's record, tell the study, log the child run, drop the checkpoint."""
        trial = candidate.trial
        attrs = dict(figures or {})
        attrs.update(trial_wall_seconds=time.perf_counter() - candidate.started, busy_seconds=candidate.busy,
                     fidelity=candidate.epochs_done, throughput_cached=not candidate.measured_now, status=status)
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        self.study.tell(trial, values, state=state)
        self.active.pop(candidate.number, None)
        if not self.settings.keep_checkpoints:
            self._checkpoint(candidate).unlink(missing_ok=True)
        self._log_trial(candidate, attrs, values)

    def _figures(self, candidate: Candidate) -> dict[str, Any]:
        out = dict(candidate.figures or {})
        if candidate.measured is not None:
            low, high = interval(candidate.measured)
            out.update(throughput=candidate.measured["throughput"],
                       throughput_spread=candidate.measured.get("throughput_spread", 0.0),
                       throughput_low=low, throughput_high=high,
                       measured_times=candidate.measured.get("measured_times", 1),
                       peak_memory_mb=candidate.measured.get("peak_memory_mb"),
                       latency_ms=latency_ms(candidate.measured["throughput"], self.target.batch_size))
        return out

    @staticmethod
    def _figure_text(figures: dict[str, Any]) -> str:
        parts = [f"{figures['params'] / 1e6:.2f}M params", f"{figures['flops'] / 1e9:.3f} GFLOPs"]
        if "throughput" in figures:
            parts.append(f"{figures['throughput']:.1f} img/s")
        return ", ".join(parts)

    def _interrupt(self) -> None:
        """Ctrl-C: cancel every job, charge what it ran, leave the trials to re-run on resume."""
        for job, seconds in self.executor.cancel_all():
            candidate = self.active.get(job.trial)
            if candidate is not None:
                self._charge(candidate, job.kind, seconds * self.devices[job.kind])
        for candidate in list(self.active.values()):
            candidate.trial.set_user_attr("interrupted", True)
            candidate.trial.set_user_attr("job", None)
            self.study.tell(candidate.trial, state=TrialState.FAIL)
            self._log_interrupted(candidate)
        self.active.clear()

    def _log_interrupted(self, candidate: Candidate) -> None:
        """An interrupted trial's child run: what it reached and cost; its re-run gets its own."""
        self._log_trial(candidate, dict(self._figures(candidate), status="interrupted"), None)

    # ================================================================== reporting
    def _log_trial(self, candidate: Candidate, attrs: dict[str, Any], values: list[float] | None) -> None:
        params = {f"arch.{k}": v for k, v in candidate.config.to_dict().items()}
        params.update(arch_id=candidate.arch, summary=candidate.summary, seed=candidate.seed,
                      **{f"space.{k}": v for k, v in candidate.trial.params.items()})
        metrics = {k: attrs[k] for k in ("params", "flops", "throughput", "throughput_spread", "throughput_low",
                                         "throughput_high", "measured_times", "latency_ms") if k in attrs}
        metrics.update(fidelity_epochs=candidate.epochs_done, device_seconds=sum(candidate.costs.values()))
        if values is not None:
            metrics.update({o.name: v for o, v in zip(OBJECTIVES, values)})
        tags = {"arch_id": candidate.arch, "summary": candidate.summary, "status": attrs["status"]}
        if "failure" in candidate.trial.user_attrs:
            tags["failure"] = candidate.trial.user_attrs["failure"]
        history = {"val_top1": candidate.accuracies}
        self.tracker.log_trial(candidate.number, params, metrics, tags, history)

    def _publish_front(self) -> None:
        from litv2 import LITV2_S

        from .front import evaluated_points, front_csv, hypervolume, pareto_front, plot_front

        points = evaluated_points(self.study)
        front = pareto_front(self.study)
        volume = hypervolume(front)
        self.tracker.log_progress(self.tally["completed"], dict(
            hypervolume=volume, front_size=len(front), budget_used=budget_used(self.study)))
        marked = {self._arch_id(LITV2_S): "LITv2-S"}
        self.tracker.log_front(front_csv(front), lambda path: plot_front(
            points, front, path, f"study {self.settings.study}", self.target.key, marked))

    def _closing_line(self) -> str:
        used = budget_used(self.study)
        if self.exhausted:
            reason = "the space is exhausted"
        elif self.space.fixed_points and not self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            reason = "every point was run"
        elif self.settings.max_trials is not None and self.tally["trained"] >= self.settings.max_trials:
            reason = f"--max-trials {self.settings.max_trials} reached"
        else:
            reason = "the budget is spent"
        t = self.tally
        line = (f"done ({reason}): used {used:.0f} of {self.budget.seconds:.0f} {self.budget.kind}-s "
                f"({100 * used / self.budget.seconds:.1f}%); {t['trained']} architectures trained: "
                f"{t['completed']} complete, {t['stopped']} stopped early, {t['failed']} failed; "
                f"{t['infeasible']} infeasible, {t['duplicates']} duplicates answered from the study, "
                f"{t['reruns']} interrupted trials re-run, {t['unaffordable']} left untrained for budget, "
                f"{t['reused']} trainings reused from earlier studies; {t['remeasured']} throughput figures "
                f"measured twice (too wide)")
        queued = [w for w in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)) if "rerun_of" in w.user_attrs]
        if queued:  # kept for a resume with more budget: a re-run keeps the trial's seed and checkpoint
            line += f"\n{len(queued)} re-runs of interrupted trials stay queued for 'search resume --budget MORE'"
        typical = self.costs.typical_flops()
        if t["trained"] and not self.study.best_trials and typical is not None:
            full = self.costs.train(typical, self.scheduler.max_epochs, self.devices["train"])
            line += (f"\nno trial reached the last epoch ({self.scheduler.max_epochs}): one such training costs about "
                     f"{full:.0f} {self.budget.kind}-s here; raise --budget or lower --epochs")
        return line

    def _parent_params(self) -> dict[str, Any]:
        import importlib.metadata as metadata

        params = stored(self.settings)
        for package in ("torch", "timm", "optuna", "ray", "mlflow", "litv2-search"):
            try:
                params[f"version.{package}"] = metadata.version(package)
            except metadata.PackageNotFoundError:
                params[f"version.{package}"] = "not installed"
        return params

    def _say(self, line: str) -> None:
        print(line, file=self.out, flush=True)


def _where_and_when(result: dict[str, Any]) -> list:
    """A job's [start, end, node id, worker pid], kept on its trial."""
    return [*result["interval"], result.get("node_id"), result.get("pid")]


def _train_images(settings: SearchSettings) -> int:
    from .data import train_size

    return train_size(settings.dataset, settings.data_root)


def _ray_executor(search: Search) -> Executor:
    """Join (or start) Ray and build the executor; a cluster that cannot serve raises ValueError."""
    import ray

    from .executor import BENCH_RESOURCE, RayExecutor, plan_resources, ray_system_config

    if not ray.is_initialized():
        if search.settings.address:
            ray.init(address=search.settings.address, log_to_driver=False)
        else:
            from .reaper import children_of, guard

            before = children_of(os.getpid())
            # address="local": a new instance even where `ray start` left one running on this machine
            ray.init(address="local", resources={BENCH_RESOURCE: 1}, include_dashboard=False, log_to_driver=False,
                     _system_config=ray_system_config())
            guard(children_of(os.getpid()) - before)  # this Ray dies with this driver, even a SIGKILLed one
    on_disk_images = search.settings.dataset.startswith("imagefolder:")
    resources = plan_resources(search.budget.kind, search.target, search.settings.trials_per_device,
                               search.settings.cpus_per_trial, data_workers=IMAGEFOLDER_GPU_WORKERS if on_disk_images else 0)
    return RayExecutor(resources)
