"""The three kinds of work a search hands to an executor, as plain data.

Jobs cross process (and node) borders, so they hold only strings and numbers. Their bodies
run wherever the executor puts them: :func:`count` and :func:`train` here,
measurement in :mod:`search.engine.measuring`.
"""
from __future__ import annotations

import functools
import importlib
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Union


@dataclass(frozen=True)
class CountJob:
    """Params and FLOPs of the full-size network at the deployment resolution."""

    trial: int
    config_json: str
    img_size: int
    kind: str = field(default="count", init=False)


@dataclass(frozen=True)
class MeasureJob:
    """Throughput of the full-size network on the target (holds the whole device)."""

    trial: int
    config_json: str
    target_key: str
    max_seconds: float | None = None  # the protocol's time cap; None: its default
    allowed_seconds: float | None = None  # what the budget granted: a hard stop (None: no limit)
    kind: str = field(default="measure", init=False)


@dataclass(frozen=True)
class TrainJob:
    """Proxy training from ``from_epoch`` to ``to_epoch`` of a ``max_epochs`` schedule.

    ``checkpoint`` is where the state is read (``from_epoch > 0``) and written
    (``to_epoch < max_epochs``): a path every node can read.
    """

    trial: int
    proxy_json: str
    dataset: str
    data_root: str | None
    data_seed: int
    img_size: int
    from_epoch: int
    to_epoch: int
    max_epochs: int
    seed: int
    use_gpu: bool
    threads: int
    checkpoint: str
    trainer: str = "search.training.proxy:train_proxy"
    data_workers: int = 0  # DataLoader decoding processes (on-disk image folders)
    kind: str = field(default="train", init=False)


Job = Union[CountJob, MeasureJob, TrainJob]


@functools.lru_cache(maxsize=4)
def _worker_data(dataset: str, root: str | None, seed: int, img_size: int):
    """Data sets are loaded once per worker process and reused by every job it runs."""
    from search.training.data import load_dataset

    return load_dataset(dataset, root=root, seed=seed, img_size=img_size)


def _resolve(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def _node_id() -> str | None:
    """The Ray node a job runs on (hosts of a one-machine test cluster share one name)."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # noqa: BLE001 - outside Ray (in-process executor) there is no node id
        return None


def _stamp(result: dict[str, Any], start: float, began: float) -> dict[str, Any]:
    """Where and when a job ran: wall seconds (what the budget is charged), host, node, interval."""
    result.update(wall_seconds=time.perf_counter() - start, host=socket.gethostname(), node_id=_node_id(),
                  pid=os.getpid(), interval=(began, time.time()))
    return result


def count(job: CountJob) -> dict[str, Any]:
    from search.engine.measuring import count_architecture

    start, began = time.perf_counter(), time.time()
    return _stamp(dict(count_architecture(job.config_json, job.img_size)), start, began)


def measure(job: MeasureJob) -> dict[str, Any]:
    from search.engine.measuring import measure_architecture

    start, began = time.perf_counter(), time.time()
    limits = {name: getattr(job, name) for name in ("max_seconds", "allowed_seconds") if getattr(job, name) is not None}
    return _stamp(dict(measure_architecture(job.config_json, job.target_key, **limits)), start, began)


def train(job: TrainJob) -> dict[str, Any]:
    """Train a proxy over one rung and return its per-epoch accuracies and timings."""
    import torch

    from litv2 import LITConfig

    start, began = time.perf_counter(), time.time()
    torch.set_num_threads(max(1, job.threads))
    data = _worker_data(job.dataset, job.data_root, job.data_seed, job.img_size)
    result = _resolve(job.trainer)(
        LITConfig.from_json(job.proxy_json), data, epochs=job.max_epochs, start_epoch=job.from_epoch,
        stop_epoch=job.to_epoch, checkpoint=job.checkpoint, seed=job.seed, device="cuda" if job.use_gpu else "cpu",
        num_workers=job.data_workers,
    )
    return _stamp(dict(
        accuracy=float(result.accuracy), epoch_accuracies=[float(a) for a in result.epoch_accuracies],
        train_seconds=float(result.train_seconds), checkpoint_seconds=float(getattr(result, "checkpoint_seconds", 0.0)),
    ), start, began)


RUNNERS = {"count": count, "measure": measure, "train": train}
