"""Executors run jobs and report their completion; the driver never talks to Ray itself.

:class:`RayExecutor` places jobs on a Ray cluster; :class:`InProcessExecutor` runs them in
the driver's process on a simulated clock, so the driver's policies (promotion, budget,
dedupe) are tested in milliseconds and search strategies can be replayed at no training
cost. Both share :class:`Placement`, the one rule of where work may go:

* a measurement holds a whole device of a node offering the ``bench`` resource (every CPU
  for a cpu target, one GPU for a cuda target), never beside training or another
  measurement there;
* a node with a measurement waiting or running takes no new work until it is done, so the
  measurement is never starved - but every other node goes on training (a measurement
  blocks only its own node);
* training and counting fill the other slots: ``cpus // cpus_per_trial`` per node for CPU
  budgets, ``gpus * trials_per_device`` for GPU budgets;
* a count (a fraction of a second on shapes only) may take a free slot of a node waiting to
  measure: the next candidate is then ready to measure as soon as the current one is done
  (Ray's resource requests keep it from ever running beside the measurement).
"""
from __future__ import annotations

import heapq
import itertools
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

from .jobs import RUNNERS, Job

BENCH_RESOURCE = "bench"
# Ray keeps no more idle workers than a node has CPUs and kills the others after a second.
# A search's job kinds (count, measure, train, the fingerprint) lease workers of their own,
# so on a small node that limit had Ray start a fresh worker, which imports torch and timm
# again (about 9 CPU-s, charged to the job), for most jobs: 6 workers for the 2-core
# quickstart instead of 2. Idle workers cost memory only.
WARM_WORKERS = 8


def ray_system_config() -> dict[str, int]:
    """Ray settings of a node that runs search jobs: the tool's own local Ray uses them;
    ``ray start --system-config '{"num_workers_soft_limit": 8}'`` gives them to a cluster's."""
    return {"num_workers_soft_limit": max(os.cpu_count() or 1, WARM_WORKERS)}


@dataclass(frozen=True)
class Node:
    """A node as placement sees it: work slots and whether it measures."""

    id: str
    slots: int
    bench: bool


@dataclass(frozen=True)
class Event:
    """A finished job: its result, or the error that ended it."""

    job: Job
    result: dict[str, Any] | None
    error: str | None = None
    node: str | None = None
    submitted: float = 0.0  # time.time() at submission (charged in full when the job failed)
    lost: bool = False  # the job's worker or node died under it: not the job's own failure


class Placement:
    """Which node a job may start on now (pure bookkeeping; see the module docstring)."""

    def __init__(self, nodes: Iterable[Node]) -> None:
        self.nodes = {n.id: n for n in nodes}
        self.work: dict[str, int] = {n: 0 for n in self.nodes}
        self.measuring: dict[str, int] = {n: 0 for n in self.nodes}

    def place(self, kind: str) -> str | None:
        """A node for a job of ``kind`` (count / train / measure), or None if none is free."""
        if kind == "measure":
            free = [n for n in self.nodes.values() if n.bench and self.measuring[n.id] == 0]
        else:
            free = [n for n in self.nodes.values()
                    if (kind == "count" or self.measuring[n.id] == 0) and self.work[n.id] < n.slots]
        if not free:
            return None
        # Work goes where the most slots are free; measurements to the least busy bench node.
        return max(free, key=lambda n: (n.slots - self.work[n.id], not n.bench, n.id)).id

    def start(self, kind: str, node: str) -> None:
        (self.measuring if kind == "measure" else self.work)[node] += 1

    def end(self, kind: str, node: str) -> None:
        (self.measuring if kind == "measure" else self.work)[node] -= 1

    def retire(self, node: str) -> None:
        """A node that died: nothing is placed there again (jobs it held still end normally)."""
        self.nodes.pop(node, None)

    @property
    def capacity(self) -> int:
        return sum(n.slots for n in self.nodes.values())


class Executor(Protocol):
    """Runs jobs where :attr:`placement` puts them. ``devices``: budget devices one job of each
    kind holds (count / measure / train); ``train_threads``: CPU threads of one training;
    ``data_workers``: its DataLoader processes; ``measures_anew``: whether measuring an
    architecture again gives a new figure (a replayed table holds one per architecture)."""

    placement: Placement
    devices: dict[str, float]
    train_threads: int
    data_workers: int
    measures_anew: bool

    def submit(self, job: Job, node: str) -> None: ...

    def fingerprint(self, target_key: str) -> dict[str, str]:
        """Device model and library versions a measurement on ``target_key`` runs under."""
        ...

    def wait(self) -> list[Event]: ...

    def running(self) -> list[Job]: ...

    def cancel_all(self) -> list[tuple[Job, float]]: ...


def try_submit(executor: Executor, job: Job) -> bool:
    """Start ``job`` if placement has a node for it now."""
    node = executor.placement.place(job.kind)
    if node is None:
        return False
    executor.placement.start(job.kind, node)
    executor.submit(job, node)
    return True


# ---------------------------------------------------------------------- in process
class InProcessExecutor:
    """Runs each job in the driver's process when submitted and reports it at its simulated
    end time, ``duration(job, result)`` seconds after it starts. Events come back in
    simulated-time order, one at a time, so completions interleave as they would on real
    workers (asynchronous promotion is testable).

    A job starts when Ray would start it: at once, except that a measurement (which asks for
    every core of its node) starts when the jobs already on its node have ended, and nothing
    starts on a node while a measurement runs there.
    """

    def __init__(self, nodes: Iterable[Node], runners: dict[str, Callable[[Job], dict[str, Any]]] | None = None,
                 duration: Callable[[Job, dict[str, Any]], float] | None = None,
                 devices: dict[str, float] | None = None, train_threads: int = 1) -> None:
        self.placement = Placement(nodes)
        self.devices = devices or dict(count=1.0, measure=1.0, train=1.0)
        self.train_threads = train_threads
        self.data_workers = 0
        self.measures_anew = True
        self.runners = runners or RUNNERS
        self.duration = duration or (lambda job, result: float(result.get("wall_seconds", 1.0)))
        self.clock = 0.0
        self._queue: list[tuple[float, int, Event, float, float]] = []  # (end, order, event, submitted, start)
        self._order = itertools.count()

    def fingerprint(self, target_key: str) -> dict[str, str]:
        from .measuring import measuring_fingerprint

        return measuring_fingerprint(target_key)

    def submit(self, job: Job, node: str) -> None:
        try:
            result, error = self.runners[job.kind](job), None
        except Exception as exc:  # noqa: BLE001 - reported as the job's failure, like a worker's
            result, error = None, f"{type(exc).__name__}: {exc}"
        seconds = self.duration(job, result or {})
        start = self._start(job.kind, node)
        if result is not None:
            result = {**result, "wall_seconds": seconds, "interval": (start, start + seconds), "node": node}
        event = Event(job, result, error, node, submitted=time.time())
        heapq.heappush(self._queue, (start + seconds, next(self._order), event, self.clock, start))

    def _start(self, kind: str, node: str) -> float:
        here = [(start, end, event.job.kind) for end, _, event, _, start in self._queue if event.node == node]
        if kind == "measure":
            return max([self.clock] + [end for _, end, _ in here])
        return max([self.clock] + [end for start, end, k in here if k == "measure" and start <= self.clock])

    def wait(self) -> list[Event]:
        end, _, event, _, _ = heapq.heappop(self._queue)
        self.clock = max(self.clock, end)
        self.placement.end(event.job.kind, event.node)
        return [event]

    def running(self) -> list[Job]:
        return [event.job for _, _, event, _, _ in self._queue]

    def cancel_all(self) -> list[tuple[Job, float]]:
        cancelled = [(event.job, self.clock - submitted) for _, _, event, submitted, _ in self._queue]
        for _, _, event, _, _ in self._queue:
            self.placement.end(event.job.kind, event.node)
        self._queue.clear()
        return cancelled


# ---------------------------------------------------------------------- Ray
@dataclass(frozen=True)
class Resources:
    """What one job of each kind holds on Ray, and how many budget devices that counts as."""

    train_options: dict[str, Any]
    train_devices: float
    measure_options: dict[str, Any]
    measure_devices: float
    count_devices: float
    train_threads: int
    use_gpu: bool
    nodes: tuple[Node, ...] = field(default=())
    data_workers: int = 0


def plan_resources(budget_kind: str, target, trials_per_device: int, cpus_per_trial: int,
                   data_workers: int = 0) -> Resources:
    """Ray resource requests for the budget's device kind and the target, from the live cluster.

    ``data_workers``: decoding processes a GPU training needs beside it (on-disk image
    folders); they are reserved as CPUs so Ray does not pack more trainings onto the cores.

    Raises ValueError when the cluster cannot serve them: no GPU for a GPU budget, no node
    offering ``bench`` (with a GPU, for a cuda target), fewer cores on a measuring node than
    the target's threads, or more cores per trial than any node has.
    """
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    total_gpus = sum(n["Resources"].get("GPU", 0) for n in alive)
    if budget_kind == "gpu" and total_gpus < 1:
        raise ValueError("budget is in GPU-hours but the Ray cluster has no GPU; use a cpu-h budget or add GPU nodes")
    if target.device == "cuda" and total_gpus < 1:
        raise ValueError("target is a cuda device but the Ray cluster has no GPU; use a cpu:... target")
    bench = [n for n in alive if n["Resources"].get(BENCH_RESOURCE)]
    if target.device == "cuda":
        bench = [n for n in bench if n["Resources"].get("GPU", 0) >= 1]
    if not bench:
        need = " and a GPU" if target.device == "cuda" else ""
        raise ValueError(
            f"no Ray node offers the {BENCH_RESOURCE!r} resource{need} that measuring on {target} needs; start the "
            f"target node with: ray start ... --resources='{{\"{BENCH_RESOURCE}\": 1}}'"
        )
    bench_cpus = int(min(n["Resources"].get("CPU", 1) for n in bench))
    if target.device == "cpu" and target.threads > bench_cpus:
        raise ValueError(f"target {target} uses {target.threads} threads but the measuring node has "
                         f"{bench_cpus} CPUs; lower the target's :tTHREADS")
    most_cpus = int(max(n["Resources"].get("CPU", 0) for n in alive))
    if budget_kind == "cpu" and cpus_per_trial > most_cpus:
        raise ValueError(f"--cpus-per-trial {cpus_per_trial} is more than the {most_cpus} CPUs of the largest node")
    bench_ids = {n["NodeID"] for n in bench}
    nodes = []
    for n in alive:
        if budget_kind == "gpu":
            slots = int(n["Resources"].get("GPU", 0) * trials_per_device)
        else:
            slots = int(n["Resources"].get("CPU", 0) // cpus_per_trial)
        nodes.append(Node(n["NodeID"], slots, n["NodeID"] in bench_ids))
    if budget_kind == "gpu":
        train = dict(num_gpus=1.0 / trials_per_device, num_cpus=1 + data_workers)
        train_devices, train_threads = 1.0 / trials_per_device, 1
    else:
        train = dict(num_cpus=cpus_per_trial)
        train_devices, train_threads = float(cpus_per_trial), cpus_per_trial
    if target.device == "cuda":
        measure = dict(num_gpus=1, num_cpus=1, resources={BENCH_RESOURCE: 1})
        measure_devices = 1.0 if budget_kind == "gpu" else 0.0  # device time of the budget's kind only
    else:
        measure = dict(num_cpus=bench_cpus, resources={BENCH_RESOURCE: 1})
        measure_devices = float(bench_cpus) if budget_kind == "cpu" else 0.0
    count_devices = 1.0 if budget_kind == "cpu" else 0.0
    return Resources(train, train_devices, measure, measure_devices, count_devices, train_threads,
                     budget_kind == "gpu", tuple(nodes), data_workers if budget_kind == "gpu" else 0)


def _run(job: Job) -> dict[str, Any]:
    return RUNNERS[job.kind](job)


class RayExecutor:
    """Jobs as Ray tasks pinned to the node :class:`Placement` chose.

    GPU work runs in tasks declared with ``num_gpus``, for which Ray starts a fresh worker
    per task (``max_calls=1``): a worker whose CUDA context lives on one GPU is never handed a
    task placed on another, and a finished job's GPU memory is freed with its process. CPU
    work reuses warm workers (and their cached data sets).

    Ray does not retry a task (``max_retries=0``): a task pinned to a node that died could
    only be retried there. A job whose worker or node was lost comes back as a ``lost``
    event, the dead node is retired from placement, and the driver decides whether to
    submit the job again elsewhere (:class:`search.core.faults.RetryPolicy`).
    """

    def __init__(self, resources: Resources) -> None:
        import ray

        self.ray = ray
        self.resources = resources
        self.placement = Placement(resources.nodes)
        self.devices = dict(count=resources.count_devices, measure=resources.measure_devices,
                            train=resources.train_devices)
        self.train_threads = resources.train_threads
        self.data_workers = resources.data_workers
        self.measures_anew = True
        self._cpu_task = ray.remote(max_retries=0)(_run)
        self._gpu_task = ray.remote(num_gpus=1, max_calls=1, max_retries=0)(_run)
        self._refs: dict[Any, tuple[Job, str, float]] = {}

    def _options(self, job: Job) -> tuple[Any, dict[str, Any]]:
        if job.kind == "measure":
            options = self.resources.measure_options
        elif job.kind == "train":
            options = self.resources.train_options
        else:
            options = dict(num_cpus=1)
        task = self._gpu_task if options.get("num_gpus") else self._cpu_task
        return task, options

    def fingerprint(self, target_key: str) -> dict[str, str]:
        """Asked of a measuring node: the driver may run on another machine."""
        from .measuring import measuring_fingerprint

        options = {k: v for k, v in self.resources.measure_options.items() if k != "num_cpus"}
        return self.ray.get(self.ray.remote(measuring_fingerprint).options(num_cpus=0, **options).remote(target_key))

    def submit(self, job: Job, node: str) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        task, options = self._options(job)
        strategy = NodeAffinitySchedulingStrategy(node_id=node, soft=False)
        ref = task.options(**options, scheduling_strategy=strategy).remote(job)
        self._refs[ref] = (job, node, time.time())

    def wait(self) -> list[Event]:
        ready, _ = self.ray.wait(list(self._refs), num_returns=1)
        events = []
        for ref in ready:
            job, node, submitted = self._refs.pop(ref)
            self.placement.end(job.kind, node)
            try:
                events.append(Event(job, self.ray.get(ref), node=node, submitted=submitted))
            except Exception as error:  # noqa: BLE001 - a job's failure (task error, dead worker) is an event
                text = str(error).strip()
                message = f"{type(error).__name__}: {text.splitlines()[-1] if text else ''}"
                lost = not isinstance(error, self.ray.exceptions.RayTaskError)  # not raised by the job itself
                if lost:
                    self._retire_dead_nodes(node, error)
                events.append(Event(job, None, message, node, submitted, lost))
        return events

    def _retire_dead_nodes(self, node: str, error: Exception) -> None:
        """Take dead nodes out of placement: the job's node if the error says it died (the
        cluster's node table may not know yet), and any the node table reports dead."""
        gone = (self.ray.exceptions.NodeDiedError, self.ray.exceptions.TaskUnschedulableError)
        dead = {node} if isinstance(error, gone) else set()
        alive = {n["NodeID"] for n in self.ray.nodes() if n.get("Alive")}
        for known in list(self.placement.nodes):
            if known in dead or known not in alive:
                self.placement.retire(known)

    def running(self) -> list[Job]:
        return [job for job, _, _ in self._refs.values()]

    def cancel_all(self) -> list[tuple[Job, float]]:
        now = time.time()
        cancelled = []
        # A task whose reply is on its way is not force-cancelled: Ray 2.60 aborted the driver
        # ("Tried to complete task that was not pending") when the kill and the reply crossed.
        finished = self.ray.wait(list(self._refs), num_returns=len(self._refs), timeout=0)[0] if self._refs else []
        for ref, (job, node, started) in self._refs.items():
            if ref not in finished:
                self.ray.cancel(ref, force=True)
            self.placement.end(job.kind, node)
            cancelled.append((job, now - started))
        self._refs.clear()
        return cancelled
