"""Ray side of the search: proxy training and exclusive throughput measurement as Ray tasks.

Why Ray core tasks with Optuna's ask/tell in the driver (rather than Ray Tune): the study
stays the single source of truth (resume = reopen the storage), multi-objective values and
per-epoch reports are kept, and the driver can dedupe architectures and check the budget
before anything starts. Ray provides what it is good at: placing tasks on devices across a
cluster, resource accounting, and retrying tasks whose worker died.

Exclusivity of measurements comes from resources, not from hope: a measurement asks for a
whole device (one GPU, or every CPU of the node for CPU targets) plus the custom ``bench``
resource, so Ray never runs it beside a training task on that device, and never runs two
measurements on one node at once. Data sets are cached per worker process, so a worker loads
its data once and reuses it for every trial it runs.
"""
from __future__ import annotations

import functools
import importlib
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import ray

from .target import Target

BENCH_RESOURCE = "bench"


@dataclass(frozen=True)
class TrainJob:
    """Everything a worker needs to train one proxy (plain data: it crosses process borders)."""

    proxy_json: str
    dataset: str
    data_root: str | None
    data_seed: int
    img_size: int
    epochs: int
    seed: int
    use_gpu: bool
    threads: int
    trainer: str = "search.train:train_proxy"


@functools.lru_cache(maxsize=4)
def _worker_data(dataset: str, root: str | None, seed: int, img_size: int):
    from search.data import load_dataset

    return load_dataset(dataset, root=root, seed=seed, img_size=img_size)


def _resolve(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def train_job(job: TrainJob) -> dict[str, Any]:
    """Train a proxy and return its accuracy and timings (runs inside a Ray worker)."""
    import torch

    from litv2 import LITConfig

    start, began = time.perf_counter(), time.time()
    torch.set_num_threads(max(1, job.threads))
    data = _worker_data(job.dataset, job.data_root, job.data_seed, job.img_size)
    result = _resolve(job.trainer)(
        LITConfig.from_json(job.proxy_json), data, epochs=job.epochs, seed=job.seed,
        device="cuda" if job.use_gpu else "cpu",
    )
    return dict(
        accuracy=float(result.accuracy), epoch_accuracies=list(result.epoch_accuracies),
        train_seconds=float(result.train_seconds), proxy_params=int(getattr(result, "params", 0)),
        wall_seconds=time.perf_counter() - start, node=socket.gethostname(), pid=os.getpid(),
        interval=(began, time.time()),
    )


def measure_job(config_json: str, target_key: str, repeats: int, warmup: int) -> dict[str, Any]:
    """Measure the full-size model on the target (:func:`search.measuring.measure_architecture`:
    ``repeats`` is the least number of timed blocks, ``warmup`` of warm-up calls); params and
    FLOPs are counted after the measurement until the driver calls ``count_architecture``."""
    from search.measuring import count_architecture, measure_architecture
    from search.target import parse_target

    measured = measure_architecture(config_json, target_key, min_samples=repeats, min_warmup_calls=warmup)
    return {**count_architecture(config_json, parse_target(target_key).img_size), **measured}


@dataclass(frozen=True)
class Resources:
    """What one training and one measurement hold, and how many devices that counts as."""

    train_options: dict[str, Any]
    train_devices: float
    measure_options: dict[str, Any]
    measure_devices: float
    train_threads: int
    use_gpu: bool
    measure_slots: int = 1  # measurements at once: one per node offering the bench resource


def plan_resources(budget_kind: str, target: Target, trials_per_device: int, cpus_per_trial: int) -> Resources:
    """Ray resource requests for the budget's device kind and the target.

    Raises ValueError when the connected cluster cannot satisfy them (no GPU for a GPU
    budget or a cuda target, no node offering the ``bench`` resource, fewer cores on the
    measuring node than the target's threads).
    """
    target_device = target.device
    total = ray.cluster_resources()
    if budget_kind == "gpu" and total.get("GPU", 0) < 1:
        raise ValueError("budget is in GPU-hours but the Ray cluster has no GPU; use a cpu-h budget or add GPU nodes")
    if target_device == "cuda" and total.get("GPU", 0) < 1:
        raise ValueError("target is a cuda device but the Ray cluster has no GPU; use a cpu:... target")
    bench_nodes = [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get(BENCH_RESOURCE)]
    if not bench_nodes:
        raise ValueError(
            f"no Ray node offers the {BENCH_RESOURCE!r} resource that throughput measurement needs; start the "
            f"target node with: ray start ... --resources='{{\"{BENCH_RESOURCE}\": 1}}'"
        )
    bench_cpus = int(min(n["Resources"].get("CPU", 1) for n in bench_nodes))
    if target_device == "cpu" and target.threads > bench_cpus:
        raise ValueError(f"target {target} uses {target.threads} threads but the measuring node has "
                         f"{bench_cpus} CPUs; lower the target's :tTHREADS")
    if budget_kind == "gpu":
        train = dict(num_gpus=1.0 / trials_per_device, num_cpus=1)
        train_devices, train_threads = 1.0 / trials_per_device, 1
    else:
        cpus = min(cpus_per_trial, int(total.get("CPU", 1)))
        train = dict(num_cpus=cpus)
        train_devices, train_threads = float(cpus), cpus
    if target_device == "cuda":
        measure = dict(num_gpus=1, num_cpus=1, resources={BENCH_RESOURCE: 1})
        measure_devices = 1.0
    else:
        measure = dict(num_cpus=bench_cpus, resources={BENCH_RESOURCE: 1})
        measure_devices = float(bench_cpus)
    if budget_kind == "gpu" and target_device == "cpu":
        measure_devices = 0.0  # CPU time does not draw on a GPU budget
    if budget_kind == "cpu" and target_device == "cuda":
        measure_devices = 0.0
    return Resources(train, train_devices, measure, measure_devices, train_threads, budget_kind == "gpu",
                     measure_slots=len(bench_nodes))


_remote_train = ray.remote(max_retries=2)(train_job)
_remote_measure = ray.remote(max_retries=2)(measure_job)


def submit_train(job: TrainJob, resources: Resources) -> ray.ObjectRef:
    return _remote_train.options(**resources.train_options).remote(job)


def submit_measure(config_json: str, target_key: str, resources: Resources, repeats: int = 5, warmup: int = 3) -> ray.ObjectRef:
    return _remote_measure.options(**resources.measure_options).remote(config_json, target_key, repeats, warmup)
