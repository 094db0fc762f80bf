"""Throughput measurement on a device, following the official LITv2 protocol.

Inference mode, warm-up forwards, then repeated timed runs; on CUDA each run is bracketed
by ``torch.cuda.synchronize()`` and peak memory comes from the caching allocator. The
result keeps every repeat so callers can report a median with its spread (or a confidence
interval) instead of one lucky number.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn


@dataclass(frozen=True)
class Throughput:
    """Images per second over ``repeats`` timed runs of ``iters`` forwards each."""

    device: str
    batch_size: int
    img_size: int
    precision: str
    samples: tuple[float, ...]
    peak_memory_mb: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def spread(self) -> float:
        """Half the range of the samples: a robust, easy-to-read +- for the median."""
        return (max(self.samples) - min(self.samples)) / 2

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(median=self.median, spread=self.spread)
        return out


def resolve_device(name: str | None = None) -> torch.device:
    """``"cuda"``/``"cpu"``/``None`` (the best available) -> a usable ``torch.device``."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available on this machine")
    return device


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast_dtype(precision: str) -> torch.dtype | None:
    """``fp32`` -> None (no autocast), ``fp16``/``bf16`` -> the autocast dtype."""
    table = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision not in table:
        raise ValueError(f"precision {precision!r} is unknown; expected one of {', '.join(table)}")
    return table[precision]


def time_callable(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int, iters: int | None = None,
                  min_warmup_seconds: float = 0.5, min_repeat_seconds: float = 0.2) -> list[float]:
    """Seconds per call of ``fn`` for each of ``repeats`` runs of ``iters`` calls, after warm-up.

    Warm-up runs at least ``warmup`` calls and at least ``min_warmup_seconds``: a fresh
    worker process pays one-off kernel selection and allocation on its first calls, which a
    fixed small count does not cover for fast models. With ``iters=None`` each timed run
    repeats the call until it lasts about ``min_repeat_seconds`` (sized from the warm-up), so a
    10 ms batch-1 forward is not timed from one call that a single scheduler tick can double.
    """
    start = time.perf_counter()
    done, last_call = 0, 0.0
    while done < warmup or time.perf_counter() - start < min_warmup_seconds or (iters is None and done == 0):
        call_start = time.perf_counter()
        fn()
        _synchronize(device)
        last_call = time.perf_counter() - call_start
        done += 1
    if iters is None:
        # Sized from the last warm-up call: the first calls of a fresh process are the slow ones.
        iters = max(1, math.ceil(min_repeat_seconds / max(last_call, 1e-9)))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        _synchronize(device)
        samples.append((time.perf_counter() - start) / iters)
    return samples


def measure_throughput(
    model: nn.Module,
    batch_size: int = 64,
    img_size: int = 224,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    warmup: int = 10,
    repeats: int = 5,
    iters: int | None = None,
    in_chans: int = 3,
    channels_last: bool | None = None,
) -> Throughput:
    """Measure ``model``'s inference throughput (img/s) on ``device``.

    ``iters`` forwards make one timed run; None sizes runs to about 0.2 s each.
    ``channels_last`` defaults to True on CUDA, where convolutions (patch embedding, DTM,
    ConvFFN) run faster in that layout.
    """
    device = resolve_device(device if isinstance(device, str) or device is None else str(device))
    dtype = autocast_dtype(precision)
    channels_last = device.type == "cuda" if channels_last is None else channels_last
    model = model.to(device).eval()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    inputs = torch.randn(batch_size, in_chans, img_size, img_size, device=device).to(memory_format=memory_format)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def forward() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            model(inputs)

    with torch.inference_mode():
        seconds = time_callable(forward, device, warmup, repeats, iters)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return Throughput(
        device=str(device), batch_size=batch_size, img_size=img_size, precision=precision,
        samples=tuple(batch_size / s for s in seconds), peak_memory_mb=peak,
    )
