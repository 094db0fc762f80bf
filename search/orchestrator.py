"""The search loop: Optuna asks, Ray trains and measures, MLflow records, the budget decides.

One driver owns the study (ask/tell). Per trial: the space samples a full-size architecture;
an architecture the study already evaluated is answered from the study without training;
otherwise its proxy is trained on a Ray worker and the full-size network is measured on the
target (or taken from the throughput cache). The loop never starts a trial that its cost
estimate (the costliest trial so far) says would overrun the budget. Trained trials queue for
measurement, one per measuring node at a time (on one node: each only after the driver has
logged the previous one), and new training waits until the queue is empty: a measurement
then runs on an idle device beside an idle driver.
"""
from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import optuna
import ray

from litv2 import LITV2_S, LITConfig

from . import executor
from .budget import parse_budget
from .cache import ThroughputCache
from .front import evaluated_points, front_csv, hypervolume, pareto_front, plot_front
from .measuring import measuring_fingerprint
from .settings import SearchSettings
from .storage import open_storage
from .target import parse_target
from .tracking import StudyTracker

SETTINGS_ATTR = "search_settings"
RUN_ID_ATTR = "mlflow_run_id"
MAX_CONSECUTIVE_DUPLICATES = 200
TrialState = optuna.trial.TrialState


class SearchError(RuntimeError):
    """A search that cannot go on (all trials failing, an unusable cluster)."""


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


def budget_used(study: optuna.Study) -> float:
    """Device-seconds recorded on the study's trials (interrupted work is not recorded)."""
    return sum(t.user_attrs.get("device_seconds", 0.0) for t in study.get_trials(deepcopy=False))


@dataclass
class _Pending:
    trial: optuna.trial.Trial
    config: LITConfig
    arch: str
    summary: str
    started: float
    train: dict[str, Any] | None = None
    cost: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class Search:
    """Runs (or resumes) one study to the end of its budget."""

    def __init__(self, settings: SearchSettings, out: TextIO | None = None) -> None:
        from space import arch_id, get_space, summary

        self.settings = settings
        self.out = out or sys.stdout
        self.space = get_space(settings.space)
        self._arch_id, self._summary = arch_id, summary
        self.budget = parse_budget(settings.budget)
        self.target = parse_target(settings.target)
        self.workdir = Path(settings.workdir)
        self.in_flight: dict[ray.ObjectRef, tuple[str, _Pending]] = {}
        self.measure_queue: list[_Pending] = []
        self.max_cost = 0.0
        self.failures_in_a_row = 0
        self.duplicates_in_a_row = 0
        self.exhausted = False
        self.trained_here = 0

    # ------------------------------------------------------------------ setup
    def open_study(self, resume: bool) -> optuna.Study:
        storage = open_storage(self.settings.storage)
        sampler = make_sampler(self.settings.sampler, self.settings.seed)
        names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
        if resume:
            if self.settings.study not in names:
                raise ValueError(f"study {self.settings.study!r} does not exist in {self.settings.storage}")
            study = optuna.load_study(study_name=self.settings.study, storage=storage, sampler=sampler)
            self._requeue_interrupted(study)
        else:
            if self.settings.study in names:
                raise ValueError(f"study {self.settings.study!r} already exists; continue it with "
                                 f"'python -m search resume --study {self.settings.study}' or pick another --study")
            study = optuna.create_study(study_name=self.settings.study, storage=storage, sampler=sampler,
                                        directions=["maximize", "maximize"])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(["proxy_top1", "throughput"])
            if self.space.fixed_points:
                # Ablation tables: every point exactly once, in the table's order.
                for params in self.space.grid_params():
                    study.enqueue_trial(params)
        study.set_user_attr(SETTINGS_ATTR, self.settings.to_json())
        self.study = study
        return study

    def _requeue_interrupted(self, study: optuna.Study) -> None:
        """Trials still RUNNING in the storage (the driver died) or stopped by Ctrl-C run again."""
        trials = study.get_trials(deepcopy=False)
        already = {t.user_attrs.get("rerun_of") for t in trials}
        for trial in trials:
            if trial.state == TrialState.RUNNING:
                study.tell(trial.number, state=TrialState.FAIL)
            elif not (trial.state == TrialState.FAIL and trial.user_attrs.get("interrupted")):
                continue
            if trial.number not in already:
                study.enqueue_trial(trial.params, user_attrs={"rerun_of": trial.number})

    def connect(self) -> executor.Resources:
        if not ray.is_initialized():
            if self.settings.address:
                ray.init(address=self.settings.address, log_to_driver=False)
            else:
                ray.init(resources={executor.BENCH_RESOURCE: 1}, include_dashboard=False, log_to_driver=False)
        return executor.plan_resources(self.budget.kind, self.target, self.settings.trials_per_device,
                                       self.settings.cpus_per_trial)

    # ------------------------------------------------------------------ the loop
    def run(self, resume: bool = False) -> int:
        self.resources = self.connect()  # first: a cluster that cannot serve the search leaves nothing behind
        study = self.open_study(resume)
        self.cache = ThroughputCache(self.workdir / "throughput_cache.db")
        # Asked where measurements run (device model, library versions): the cache keys on it.
        self.fingerprint = ray.get(ray.remote(measuring_fingerprint).options(**self.resources.measure_options)
                                   .remote(self.target.key))
        self.tracker = StudyTracker(self.settings.tracking_uri, self.workdir / "mlartifacts")
        run_id = self.tracker.start(self.settings.study, self._parent_params(), study.user_attrs.get(RUN_ID_ATTR))
        study.set_user_attr(RUN_ID_ATTR, run_id)
        self.max_cost = max((t.user_attrs.get("device_seconds", 0.0) for t in study.get_trials(deepcopy=False)), default=0.0)
        self._say(f"study {self.settings.study}: space {self.settings.space}, budget {self.budget} "
                  f"({self.budget.seconds:.0f} {self.budget.kind}-s), used {budget_used(study):.0f}, "
                  f"target {self.target}, data {self.settings.dataset}; storage {self.settings.storage}; "
                  f"MLflow run {run_id}")
        status = "FINISHED"
        try:
            while True:
                self._launch()
                self._submit_next_measurement()
                if self.in_flight:
                    self._collect()
                elif not self._can_start():
                    break
        except KeyboardInterrupt:
            status = "KILLED"
            self._interrupt()
            self._say("interrupted: running trials were stopped and will re-run on 'search resume'")
            return 130
        finally:
            self.tracker.finish(status)
        used = budget_used(study)
        if self.exhausted:
            reason = "the space is exhausted"
        elif self.settings.max_trials is not None and self.trained_here >= self.settings.max_trials:
            reason = f"--max-trials {self.settings.max_trials} reached"
        else:
            reason = "the budget is spent"
        self._say(f"done ({reason}): used {used:.0f} of {self.budget.seconds:.0f} {self.budget.kind}-s "
                  f"({100 * used / self.budget.seconds:.1f}%), {self._count(TrialState.COMPLETE)} trials complete")
        return 0

    def _can_start(self) -> bool:
        if self.exhausted or self.measure_queue or self._measurements_running():
            return False
        if self.settings.max_trials is not None and self.trained_here >= self.settings.max_trials:
            return False
        trainings = sum(1 for kind, _ in self.in_flight.values() if kind == "train")
        if self.max_cost == 0.0:
            return trainings == 0  # no cost estimate yet: one trial first, to learn it
        if trainings >= self._capacity():
            return False
        left = self.budget.seconds - budget_used(self.study)
        return (trainings + 1) * self.max_cost <= left

    def _unfinished(self) -> list[_Pending]:
        """Trials training, measuring or queued for measurement."""
        return [pending for _, pending in self.in_flight.values()] + self.measure_queue

    def _measurements_running(self) -> int:
        return sum(1 for kind, _ in self.in_flight.values() if kind == "measure")

    def _capacity(self) -> int:
        total = ray.cluster_resources()
        if self.resources.use_gpu:
            return max(1, int(total.get("GPU", 1) * self.settings.trials_per_device))
        return max(1, int(total.get("CPU", 1) // self.resources.train_devices))

    def _launch(self) -> None:
        while self._can_start():
            trial = self.study.ask()
            config = self.space.sample(trial)
            arch, text = self._arch_id(config), self._summary(config)
            trial.set_user_attr("arch_id", arch)
            trial.set_user_attr("summary", text)
            trial.set_user_attr("config", config.to_json())
            if self._answer_duplicate(trial, arch):
                continue
            self.duplicates_in_a_row = 0
            pending = _Pending(trial, config, arch, text, time.perf_counter())
            earlier = self._earlier_training(trial)
            if earlier is not None:
                self._trained(pending, earlier)
                self._say(f"[trial {trial.number}] {arch} {text}: trained before the interruption, "
                          f"measuring only")
                continue
            proxy = self.space.proxy_of(config)
            job = executor.TrainJob(
                proxy_json=proxy.to_json(), dataset=self.settings.dataset, data_root=self.settings.data_root,
                data_seed=self.settings.seed, img_size=self.space.proxy.img_size, epochs=self.settings.epochs,
                seed=self.settings.seed, use_gpu=self.resources.use_gpu, threads=self.resources.train_threads,
                trainer=self.settings.trainer,
            )
            self.in_flight[executor.submit_train(job, self.resources)] = ("train", pending)
            self.trained_here += 1
            self._say(f"[trial {trial.number}] started {arch} {text}")

    def _earlier_training(self, trial: optuna.trial.Trial) -> dict[str, Any] | None:
        """The finished proxy training of the interrupted trial this one re-runs, if any:
        a driver stopped between training and measurement loses no training."""
        rerun_of = trial.user_attrs.get("rerun_of")
        if rerun_of is None:
            return None
        return self.study.get_trials(deepcopy=False)[rerun_of].user_attrs.get("train_result")

    def _answer_duplicate(self, trial: optuna.trial.Trial, arch: str) -> bool:
        """Tell the study an architecture's known result instead of training it again."""
        done = [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.user_attrs.get("arch_id") == arch]
        running = any(p.arch == arch for p in self._unfinished())
        if not done and not running:
            return False
        self.duplicates_in_a_row += 1
        if self.duplicates_in_a_row >= self._duplicate_limit():
            self.exhausted = True
        if done:
            trial.set_user_attr("duplicate_of", done[0].number)
            self.study.tell(trial, done[0].values)
        else:
            trial.set_user_attr("duplicate_of", "in-flight")
            self.study.tell(trial, state=TrialState.PRUNED)
        return True

    def _duplicate_limit(self) -> int:
        size = self.space.size()
        if math.isfinite(size):
            distinct = len({t.user_attrs.get("arch_id") for t in self.study.get_trials(deepcopy=False)
                            if t.state == TrialState.COMPLETE})
            if distinct >= size:
                return 1
        return MAX_CONSECUTIVE_DUPLICATES

    def _collect(self) -> None:
        ready, _ = ray.wait(list(self.in_flight), num_returns=1)
        ref = ready[0]
        kind, pending = self.in_flight.pop(ref)
        try:
            result = ray.get(ref)
        except Exception as error:  # noqa: BLE001 - a trial's failure (task error, dead worker) must not stop the search
            self._fail(pending, kind, error)
        else:
            self.failures_in_a_row = 0
            if kind == "train":
                self._trained(pending, result)
            else:
                pending.cost += result["wall_seconds"] * self.resources.measure_devices
                self.cache.put(pending.arch, self.target.key, result)
                self._finish(pending, result, measured_now=True)
        self._submit_next_measurement()

    def _trained(self, pending: _Pending, result: dict[str, Any]) -> None:
        pending.trial.set_user_attr("train_result", result)
        pending.train = result
        pending.cost += result["wall_seconds"] * self.resources.train_devices
        self.measure_queue.append(pending)

    def _submit_next_measurement(self) -> None:
        """Finish queued trials in order: from the throughput cache, or by a measurement task."""
        while self.measure_queue and self._measurements_running() < self.resources.measure_slots:
            pending = self.measure_queue.pop(0)
            cached = self.cache.get(pending.arch, self.target.key, self.fingerprint)
            if cached is not None:
                self._finish(pending, cached, measured_now=False)
                continue
            ref = executor.submit_measure(pending.config.to_json(), self.target.key, self.resources,
                                          repeats=self.settings.measure_repeats)
            self.in_flight[ref] = ("measure", pending)

    def _fail(self, pending: _Pending, kind: str, error: BaseException) -> None:
        message = f"{type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error).strip() else ''}"
        pending.trial.set_user_attr("error", message[:2000])
        pending.trial.set_user_attr("device_seconds", pending.cost)
        self.study.tell(pending.trial, state=TrialState.FAIL)
        self.failures_in_a_row += 1
        self._say(f"[trial {pending.trial.number}] FAILED during {kind}: {message}")
        if self.failures_in_a_row >= 3:
            raise SearchError(f"3 trials failed in a row; last error: {message}")

    def _finish(self, pending: _Pending, measured: dict[str, Any], measured_now: bool) -> None:
        trial, train = pending.trial, pending.train
        attrs = dict(
            params=measured["params"], flops=measured["flops"], throughput_spread=measured["throughput_spread"],
            train_seconds=train["train_seconds"], epoch_accuracies=train["epoch_accuracies"],
            device_seconds=pending.cost, throughput_cached=not measured_now,
            trial_wall_seconds=time.perf_counter() - pending.started,
            busy_seconds=train["train_seconds"] + (measured["wall_seconds"] if measured_now else 0.0),
            # (start, end) in epoch seconds on the worker's clock: what ran when, for audits of exclusivity
            train_interval=list(train["interval"]), measure_interval=list(measured["interval"]) if measured_now else None,
        )
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        values = [train["accuracy"], measured["throughput"]]
        self.study.tell(trial, values)
        self.max_cost = max(self.max_cost, pending.cost)
        self._log_trial(pending, values, attrs)

    def _log_trial(self, pending: _Pending, values: list[float], attrs: dict[str, Any]) -> None:
        trial = pending.trial
        params = {f"arch.{k}": v for k, v in pending.config.to_dict().items()}
        params.update(arch_id=pending.arch, summary=pending.summary, **{f"space.{k}": v for k, v in trial.params.items()})
        metrics = dict(accuracy=values[0], throughput=values[1], params=attrs["params"], flops=attrs["flops"],
                       throughput_spread=attrs["throughput_spread"], train_seconds=attrs["train_seconds"],
                       device_seconds=attrs["device_seconds"])
        self.tracker.log_trial(trial.number, params, metrics, {"arch_id": pending.arch, "summary": pending.summary})
        points = evaluated_points(self.study)
        front = pareto_front(points)
        volume = hypervolume(front)
        used = budget_used(self.study)
        complete = self._count(TrialState.COMPLETE)
        self.tracker.log_progress(complete, dict(hypervolume=volume, front_size=len(front), budget_used=used))
        marked = {self._arch_id(LITV2_S): "LITv2-S"}
        self.tracker.log_front(front_csv(front), lambda path: plot_front(
            points, front, path, f"study {self.settings.study}", self.target.key, marked))
        self._say(f"[trial {trial.number}] top-1 {values[0]:.2f}%  {values[1]:.1f} img/s  "
                  f"{attrs['params'] / 1e6:.2f}M params | budget {used:.0f}/{self.budget.seconds:.0f} "
                  f"{self.budget.kind}-s ({100 * used / self.budget.seconds:.0f}%) | front {len(front)} | HV {volume:.1f}")

    def _interrupt(self) -> None:
        for ref in self.in_flight:
            ray.cancel(ref, force=True)
        for pending in self._unfinished():
            pending.trial.set_user_attr("interrupted", True)
            self.study.tell(pending.trial, state=TrialState.FAIL)
        self.in_flight.clear()
        self.measure_queue.clear()

    # ------------------------------------------------------------------ helpers
    def _count(self, state: TrialState) -> int:
        return len(self.study.get_trials(deepcopy=False, states=(state,)))

    def _parent_params(self) -> dict[str, Any]:
        import importlib.metadata as metadata

        params = {k: v for k, v in vars(self.settings).items() if v is not None}
        for package in ("torch", "timm", "optuna", "ray", "mlflow", "litv2-search"):
            try:
                params[f"version.{package}"] = metadata.version(package)
            except metadata.PackageNotFoundError:
                params[f"version.{package}"] = "not installed"
        return params

    def _say(self, line: str) -> None:
        print(line, file=self.out, flush=True)


def load_settings(study_name: str, storage_url: str) -> SearchSettings:
    """The settings a study was started with (for resume and status)."""
    storage = open_storage(storage_url)
    names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    if study_name not in names:
        raise ValueError(f"study {study_name!r} does not exist in {storage_url}")
    study = optuna.load_study(study_name=study_name, storage=storage)
    return SearchSettings.from_json(study.user_attrs[SETTINGS_ATTR])
