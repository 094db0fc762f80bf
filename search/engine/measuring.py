"""The search's throughput measurement: what runs on the measuring device, and what does not.

:func:`measure_architecture` is the body of the measurement task: it builds the full-size
network and times it by :mod:`litv2.measure`'s protocol while holding the whole device.
Counting FLOPs traces the network and takes seconds that the device would sit idle for, so
:func:`count_architecture` runs as its own one-CPU job (cached: an architecture's counts
never change). :func:`measuring_fingerprint` tells the driver which device and library
versions a measurement would run under, which the throughput cache keys on.
"""
from __future__ import annotations

import functools
import socket
import time
from typing import Any

from litv2 import LITConfig, build_model, build_zeroed_model, count_flops, count_params
from litv2.measure import MeasurementOutOfTime, MeasureProtocol, device_fingerprint, measure_target

from ..core.target import parse_target


@functools.lru_cache(maxsize=1024)
def count_architecture(config_json: str, img_size: int) -> dict[str, int]:
    """Parameters and FLOPs (one multiply-add = one FLOP) of the full-size network at ``img_size``.

    Runs on the CPU wherever it is called (the search's one-CPU count job, never the device
    that measures); cached per process. Only shapes matter, so weights are not initialised.
    """
    model = build_zeroed_model(LITConfig.from_json(config_json), num_classes=1000, img_size=img_size)
    return dict(params=count_params(model), flops=count_flops(model, (3, img_size, img_size)))


def measure_architecture(config_json: str, target_key: str, *, channels_last: bool | None = None,
                         cudnn_benchmark: bool = True, tf32: bool = False, allowed_seconds: float | None = None,
                         **protocol: Any) -> dict[str, Any]:
    """Build the full-size network of ``config_json`` and measure it on ``target_key``.

    ``protocol`` holds :class:`~litv2.measure.MeasureProtocol` fields (``min_samples``,
    ``max_seconds``, ...); the other options are :func:`~litv2.measure.measure_throughput`'s.
    Returns plain data (it crosses process borders): ``throughput`` (the median, img/s),
    ``throughput_spread`` (half the width of its 95% interval), ``samples``,
    ``peak_memory_mb``, ``params``, ``wall_seconds`` (building included), ``calibration_seconds``
    (the part of it that calibrated the node's reference: once per node), ``node``,
    ``interval`` ((start, end) in epoch seconds) and ``measurement``, the full record of
    :meth:`~litv2.measure.Throughput.to_dict` (interval, sample count, device name,
    library versions, flags, ``capped``, ...). FLOPs are :func:`count_architecture`'s job.

    ``allowed_seconds`` is what the search's budget granted this job (building included): a
    measurement that has no figure when they are spent stops, and returns ``out_of_time``
    True with its ``wall_seconds``, ``node`` and ``interval`` alone.

    The task holds the whole device but runs the target's own thread count, so a CPU
    target's idle cores absorb the node's background work. ``peak_memory_mb`` is None for a
    CPU target: there the figure is the resident set's growth, and a warm worker reuses the
    heap its earlier jobs grew (it read 0-1 MB), so only CUDA's allocator gives a peak here.
    """
    start, began = time.perf_counter(), time.time()
    target = parse_target(target_key)
    model = build_model(LITConfig.from_json(config_json), num_classes=1000, img_size=target.img_size)
    params = count_params(model)
    deadline = None if allowed_seconds is None else start + allowed_seconds
    try:
        measured = measure_target(model, target, channels_last=channels_last, deadline=deadline,
                                  cudnn_benchmark=cudnn_benchmark, tf32=tf32, protocol=MeasureProtocol(**protocol))
    except MeasurementOutOfTime:
        return dict(out_of_time=True, wall_seconds=time.perf_counter() - start, node=socket.gethostname(),
                    interval=(began, time.time()))
    return dict(
        throughput=measured.median, throughput_spread=measured.spread, samples=list(measured.samples),
        calibration_seconds=(measured.reference or {}).get("calibration_seconds", 0.0),
        peak_memory_mb=measured.peak_memory_mb if target.device == "cuda" else None, params=params, wall_seconds=time.perf_counter() - start,
        node=socket.gethostname(), interval=(began, time.time()), measurement=measured.to_dict(),
    )


def measuring_fingerprint(target_key: str) -> dict[str, str]:
    """The device name and library versions a measurement of ``target_key`` runs under,
    called where the measurement would run (for a cache lookup before measuring)."""
    target = parse_target(target_key)
    return device_fingerprint(target.device, target.runtime)
