"""One throughput protocol, used by the search, ``litv2.bench`` and the ablations.

A figure is only worth ranking architectures by if a second measurement gives it again, so
every step here removes a source of spread that was seen (README, "Measuring throughput"):

* **An allocator in its steady state.** glibc's malloc returns freed activations to the
  kernel and page-faults them back on the next forward: about a third of a batch-1 CPU
  forward, at a cost that depends on the process's history and the kernel's load.
  :func:`pin_allocator` keeps freed memory in the process (as jemalloc or tcmalloc in an
  inference server would), so every process reaches the same steady state.
* **Steady state first.** After one untimed call (lazy initialisation, ``torch.compile``,
  cuDNN's autotuning) the workload runs in blocks until two consecutive blocks agree within
  ``warmup_agreement`` and at least ``min_warmup_seconds`` have passed: a fresh process pays
  page faults and allocator growth on its first forwards, for a length of time no fixed
  count of calls covers.
* **Samples long enough for the clock.** One sample is a block of back-to-back calls lasting
  ``block_seconds`` (a batch-1 forward of ~10 ms is visibly moved by one scheduler tick).
* **Stop on evidence.** Blocks are added until the 95% confidence interval of the median
  (order statistics: nothing assumed about the noise) is narrower than ``target_ci`` of the
  median, or until ``max_seconds``; a capped figure says so (``capped``).
* **The device's own clock.** CUDA blocks are timed by CUDA events after a synchronize; CPU
  blocks by :mod:`timeit`'s loop, which keeps the garbage collector out of a block, on the
  measuring thread's CPU clock for one-thread targets (time spent waiting for a core is not
  on it; see :class:`CpuTimer` for ``:tN`` targets). Both clocks are recorded.
* **A reference that drifts with the node.** On a CPU target each block of the network is
  followed by a block of a fixed reference network (:mod:`litv2.reference`), and the figure
  is the reference's calibrated speed times the median of their ratio: the host's drift
  (caches, memory, clock frequency) moves both, and their ratio far less than either.
* **Everything that changes kernels is fixed and recorded**: precision (autocast entered
  once around warm-up and all blocks, so the weights are cast once - autocast caches
  parameter casts until its outermost exit), ``channels_last``, ``torch.compile``,
  ``cudnn.benchmark`` and TF32 (set explicitly on CUDA), the CPU thread count, the device
  name and the library versions. Peak memory is what the measurement added: CUDA's peak
  allocation minus what was allocated before, or the CPU's peak resident-set growth.

Why not ``torch.utils.benchmark.Timer`` for all of it: its ``timeit(n)`` runs ``max(n // 100,
2)`` untimed calls before every block (two thirds of the cost of a 3-call block of a 100 ms
network), ``blocked_autorange`` sizes blocks against the timer's overhead (one call of
anything over 0.2 ms), ``adaptive_autorange`` stops on IQR/median with no interval and no
cap flag, and none of them warm up to a steady state or time with CUDA events. What it does
well - timeit's loop with the GC off - is what :class:`CpuTimer` uses.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import importlib.metadata
import math
import platform
import statistics
import tempfile
import time
import timeit
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from .config import LITConfig
from .protocol import CONFIDENCE, MIN_SAMPLES_FOR_CI, MeasureProtocol
from .model import build_model
from .reference import REFERENCE_CONFIG, REFERENCE_NAME, CalibrationStore, calibration_key
from .runtimes import ONNX_RUNTIMES, prepare, runtime_versions
from .target import Target

try:
    import resource
except ImportError:  # not on Windows: no page-fault counts there
    resource = None

BlockTimer = Callable[[int], float]
"""Runs the workload ``calls`` times back to back and returns the seconds they took,
device work included."""

Clock = Callable[[], float]


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """``"cuda"``/``"cpu"``/``None`` (the best available) -> a usable ``torch.device``."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(name)!r} requested but CUDA is not available on this machine")
    return device


def autocast_dtype(precision: str) -> torch.dtype | None:
    """``fp32`` -> None (no autocast), ``fp16``/``bf16`` -> the autocast dtype."""
    table = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision not in table:
        raise ValueError(f"precision {precision!r} is unknown; expected one of {', '.join(table)}")
    return table[precision]


# ---------------------------------------------------------------------------- the stopping rule
def median_ci(values: list[float] | tuple[float, ...], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Distribution-free confidence interval of the median: the order statistics
    ``x(j)`` and ``x(n+1-j)`` for the largest ``j`` with ``P(Binomial(n, 1/2) < j) <= (1 - confidence) / 2``.

    Timing noise is skewed (interruptions only ever add time), so no normal approximation.
    Raises ValueError when ``values`` are too few for any such interval (5 or fewer at 95%).
    """
    n, ordered = len(values), sorted(values)
    tail_allowed = (1 - confidence) / 2
    tail, rank = 0.0, 0
    while rank < n:
        tail += math.comb(n, rank) / 2**n  # P(B <= rank)
        if tail > tail_allowed:
            break
        rank += 1
    if rank == 0:
        raise ValueError(f"{n} samples are too few for a {confidence:.0%} interval of the median")
    return ordered[rank - 1], ordered[n - rank]


def relative_ci_width(values: list[float] | tuple[float, ...]) -> float:
    """Width of the 95% interval of the median over the median (inf when too few values)."""
    if len(values) < MIN_SAMPLES_FOR_CI:
        return math.inf
    low, high = median_ci(values)
    return (high - low) / statistics.median(values)


@dataclass(frozen=True)
class Timing:
    """What :func:`run_protocol` saw: seconds per call in each timed block, and how it ended.

    With a reference, ``seconds_per_call`` are the network's seconds corrected to the
    reference's calibrated speed (``raw_seconds_per_call`` times calibrated / observed
    reference seconds of the block that followed), and ``reference_seconds_per_call`` are
    the reference's own blocks; without one the two network tuples are equal."""

    seconds_per_call: tuple[float, ...]
    calls_per_block: int
    first_call_seconds: float
    warmup_seconds: float
    warmup_converged: bool
    capped: bool
    seconds: float  # warm-up + sampling, after the first call
    raw_seconds_per_call: tuple[float, ...] = ()
    reference_seconds_per_call: tuple[float, ...] = ()


def _calls_for(seconds_per_call: float, block_seconds: float) -> int:
    return max(1, math.ceil(block_seconds / max(seconds_per_call, 1e-9)))


@dataclass(frozen=True)
class WarmUp:
    """How :func:`warm_up` ended: the block size for sampling and what warming up cost."""

    calls_per_block: int
    first_call_seconds: float
    seconds: float  # after the first call
    converged: bool


class MeasurementOutOfTime(RuntimeError):
    """A measurement reached its ``deadline`` before it had a figure: the search grants each
    measurement what its budget can still pay, and a figure bought with more is not bought."""


def _check_deadline(deadline: float | None, clock: Clock) -> None:
    if deadline is not None and clock() >= deadline:
        raise MeasurementOutOfTime(f"the measurement's time ran out {clock() - deadline:.1f} s ago, before a figure")


def warm_up(timer: BlockTimer, protocol: MeasureProtocol = MeasureProtocol(),
            clock: Clock = time.perf_counter, deadline: float | None = None) -> WarmUp:
    """One untimed call, then blocks of about ``block_seconds`` (each sized from the one
    before) until two in a row agree after the minimum time and calls, or the warm-up cap
    (``max_warmup_seconds``, or ``max_seconds`` if that is shorter).

    The first call (lazy initialisation, compilation, autotuning) is outside the clocks of
    the protocol: it only sizes the first block. Past ``deadline`` (a ``clock`` time) it
    raises :class:`MeasurementOutOfTime` at the next block's end.
    """
    before = clock()
    timer(1)
    start = clock()
    first_call = start - before
    calls, done, previous = _calls_for(first_call, protocol.block_seconds), 1, None
    while True:
        per_call = timer(calls) / calls
        _check_deadline(deadline, clock)
        done += calls
        elapsed = clock() - start
        agree = previous is not None and abs(per_call / previous - 1) <= protocol.warmup_agreement
        converged = agree and elapsed >= protocol.min_warmup_seconds and done >= protocol.min_warmup_calls
        if converged or elapsed >= min(protocol.max_warmup_seconds, protocol.max_seconds):
            return WarmUp(_calls_for(per_call, protocol.block_seconds), first_call, clock() - start, converged)
        previous, calls = per_call, _calls_for(per_call, protocol.block_seconds)


@dataclass(frozen=True)
class Reference:
    """A reference workload to time between the network's blocks, and its calibrated
    seconds per call on this node (see :mod:`litv2.reference`)."""

    timer: BlockTimer
    seconds_per_call: float


REFERENCE_WARMUP_SECONDS = 0.4  # the reference is small and was warmed before on this node: a short warm-up will do


def run_protocol(timer: BlockTimer, protocol: MeasureProtocol = MeasureProtocol(),
                 clock: Clock = time.perf_counter, reference: Reference | None = None,
                 deadline: float | None = None) -> Timing:
    """:func:`warm_up`, then time blocks until the median's interval is narrow enough or
    ``max_seconds`` (counted from the end of the first call) have passed.

    With a ``reference``, every block of the network is followed by a block of the
    reference, and each sample is the network's time scaled by calibrated / observed
    reference time of that pair: a slowdown of the node that both share cancels out.

    ``deadline`` (a ``clock`` time) is a hard stop, unlike ``max_seconds``: a measurement
    still short of an interval when it passes raises :class:`MeasurementOutOfTime`.

    ``timer`` and ``clock`` are parameters so that the rule can be checked against a
    synthetic workload of known noise; every real measurement passes a :func:`block_timer`.
    """
    warm = warm_up(timer, protocol, clock, deadline)
    warmup_seconds = warm.seconds
    if reference is not None:
        started = clock()
        reference_seconds = min(REFERENCE_WARMUP_SECONDS, protocol.min_warmup_seconds)  # never longer than the network's
        reference_warm = warm_up(reference.timer, replace(protocol, min_warmup_seconds=reference_seconds,
                                                          max_warmup_seconds=2 * reference_seconds), clock, deadline)
        warmup_seconds += clock() - started
    sampling_from = clock()

    def elapsed() -> float:  # since the end of the first call
        return warmup_seconds + clock() - sampling_from

    needed = max(protocol.min_samples, MIN_SAMPLES_FOR_CI)
    seconds, raw, observed = [], [], []
    while True:
        raw.append(timer(warm.calls_per_block) / warm.calls_per_block)
        if reference is None:
            seconds.append(raw[-1])
        else:
            observed.append(reference.timer(reference_warm.calls_per_block) / reference_warm.calls_per_block)
            seconds.append(raw[-1] * reference.seconds_per_call / observed[-1])
        if len(seconds) >= needed and relative_ci_width([1 / s for s in seconds]) <= protocol.target_ci:
            capped = False
            break
        # The cap holds once an interval exists at all: on a loaded node ``min_samples`` blocks
        # (pairs, with a reference) can take far longer than the cap, and the budget is charged
        # what a measurement really took.
        if len(seconds) >= MIN_SAMPLES_FOR_CI and elapsed() >= protocol.max_seconds:
            capped = True
            break
        _check_deadline(deadline, clock)
    return Timing(tuple(seconds), warm.calls_per_block, warm.first_call_seconds, warmup_seconds, warm.converged, capped,
                  elapsed(), tuple(raw), tuple(observed))


# ---------------------------------------------------------------------------- device clocks
THREAD_CPU, WALL, CUDA_EVENTS = "thread-cpu", "wall", "cuda-events"
CONTENDED_CPU_SHARE = 0.9  # below this share of the wall time on its CPU clock, a measuring thread waited for a core


def cpu_clock_is_fine() -> bool:
    """Whether this platform's thread CPU clock resolves a block (Linux: 1 ns; Windows: 15.6 ms)."""
    return time.get_clock_info("thread_time").resolution <= 1e-4


class CpuTimer:
    """Blocks timed by :class:`timeit.Timer` (the loop under ``torch.utils.benchmark``): the
    garbage collector is off while a block runs. Every block is read on two clocks, the
    wall clock and a CPU clock, and :attr:`clock` decides which one the protocol gets:

    * **one thread** (``:t1``, the default CPU target): the measuring thread's CPU clock
      (``time.thread_time``). Time the thread spent waiting for a core is not on it: two
      busy neighbours on a two-core node cost the wall-clock figure a third to two thirds,
      the CPU-clock figure 2-15 % (shared caches and memory: the reference takes that out;
      README). On an idle node the two agree (``cpu_share`` 1.00).
    * **several threads** (``:tN``): the wall clock. The intra-op threads spin at OpenMP
      barriers while a peer waits for its core, so their CPU clocks fill with waiting too
      (with two busy neighbours a ``:t2`` forward took 100x longer on both clocks): no CPU
      clock separates work from contention there. The CPU clock of the process over
      ``threads`` x wall (:attr:`cpu_share`) shows how much of its cores the measurement
      got, and a figure with less than :data:`CONTENDED_CPU_SHARE` is flagged ``contended``.

    It also counts the process's minor page faults per call in the last block (outside the
    timed loop): in a steady state it is about 0; thousands mean the allocator hands the
    kernel memory back every call (see :func:`pin_allocator`).
    """

    def __init__(self, fn: Callable[[], object], threads: int = 1, wall: bool = False) -> None:
        self._timer = timeit.Timer(fn)
        self.threads = threads
        self.clock = THREAD_CPU if threads == 1 and cpu_clock_is_fine() and not wall else WALL
        self._cpu_now = time.thread_time if threads == 1 else time.process_time
        self.blocks: list[tuple[float, float]] = []  # (wall, CPU) seconds per call of every block, warm-up included
        self.page_faults_per_call: float | None = None

    def __call__(self, calls: int) -> float:
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource is not None else None
        cpu_before = self._cpu_now()
        wall = self._timer.timeit(calls)
        cpu = (self._cpu_now() - cpu_before) / self.threads
        self.blocks.append((wall / calls, cpu / calls))
        if faults is not None:
            self.page_faults_per_call = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / calls
        return cpu if self.clock == THREAD_CPU else wall


class CudaEventTimer:
    """Blocks timed by CUDA events on the device's current stream: the device is synchronised
    first (no earlier work leaks in), the end event is waited for, and the events measure
    the GPU's time from the first launch to the last kernel, launch gaps included."""

    def __init__(self, fn: Callable[[], object], device: torch.device) -> None:
        self.fn, self.device = fn, device

    def __call__(self, calls: int) -> float:
        stream = torch.cuda.current_stream(self.device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(self.device)
        start.record(stream)
        for _ in range(calls):
            self.fn()
        end.record(stream)
        end.synchronize()
        return start.elapsed_time(end) / 1e3


def block_timer(fn: Callable[[], object], device: torch.device, threads: int | None = None,
                runtime: str = "eager") -> BlockTimer:
    """The block timer of ``device``: CUDA events for PyTorch on a GPU, timeit's loop on the
    CPU (on the thread's CPU clock for one thread, the wall clock for more; ``threads``:
    torch's count now). onnxruntime on a GPU runs on streams of its own and its ``run``
    returns when the work is done: the wall clock times it."""
    if device.type == "cuda" and runtime not in ONNX_RUNTIMES:
        return CudaEventTimer(fn, device)
    return CpuTimer(fn, torch.get_num_threads() if threads is None else threads, wall=device.type == "cuda")


# ---------------------------------------------------------------------------- the process
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters
PINNED_ALLOCATOR = "glibc: no mmap, no trim"
_allocator_policy = "default"


def pin_allocator() -> str:
    """Make glibc's malloc keep what it frees (no ``mmap`` per large tensor, no trimming of
    the heap) for the rest of this process; returns the allocator policy now in effect.

    By default every activation above glibc's (adaptive) mmap threshold is mapped fresh and
    page-faulted in, and the top of the heap is trimmed: 2,400 minor faults per batch-1
    forward of a tiny-space network, 13,000 for LITv2-S, a third of the forward's CPU time,
    and how many depends on what the process ran before. Pinned, a warm forward faults no
    page. The process keeps its peak heap: meant for measuring processes. Stays
    ``"default"`` where this is not glibc.
    """
    global _allocator_policy
    if _allocator_policy == "default" and platform.libc_ver()[0] == "glibc":
        with contextlib.suppress(OSError, AttributeError):
            mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
            if mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1:
                _allocator_policy = PINNED_ALLOCATOR
    return _allocator_policy


def allocator_policy() -> str:
    """The host allocator's policy in this process: ``"default"`` or :data:`PINNED_ALLOCATOR`."""
    return _allocator_policy


# ---------------------------------------------------------------------------- what is recorded
def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model string (``/proc/cpuinfo``, else ``platform``)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown cpu"


PROTOCOL_VERSION = "3"  # bump when a change here moves the figures: caches key on it (3: CPU clock + reference)


def library_versions(device: torch.device, runtime: str = "eager") -> dict[str, str]:
    """What decides which kernels run and how they are timed: torch and torchvision (DTM's
    deformable conv on CUDA), on GPUs the CUDA runtime and cuDNN, the runtime's own library
    (onnxruntime), and this protocol's version."""
    versions = {"torch": torch.__version__, **runtime_versions(runtime)}
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        versions["torchvision"] = importlib.metadata.version("torchvision")
    if device.type == "cuda":
        versions.update(cuda=str(torch.version.cuda), cudnn=str(torch.backends.cudnn.version()))
    versions["measure_protocol"] = PROTOCOL_VERSION
    return versions


def fingerprint_of(record: Mapping[str, Any]) -> dict[str, str]:
    """The fingerprint of a :meth:`Throughput.to_dict` record: its device name and versions."""
    return {"device_name": record["device_name"], **record["versions"]}


def device_fingerprint(device: str | torch.device | None = None, runtime: str = "eager") -> dict[str, str]:
    """The fingerprint a measurement on ``device`` in ``runtime`` in this process would carry:
    a figure measured under another one may differ (another GPU model, other kernels), so
    caches key on it."""
    device = resolve_device(device)
    return fingerprint_of({"device_name": device_name(device), "versions": library_versions(device, runtime)})


@contextlib.contextmanager
def torch_threads(count: int | None = None) -> Iterator[None]:
    """Run the block with ``count`` torch CPU threads (the current count when None) and give
    the caller its own count back afterwards, even on an exception: the count is process-wide,
    and code inside (a measurement, a training) may set it to suit itself."""
    previous = torch.get_num_threads()
    try:
        if count is not None:
            torch.set_num_threads(count)
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def backend_settings(device: torch.device, threads: int | None, cudnn_benchmark: bool, tf32: bool) -> Iterator[None]:
    """Set the CPU thread count and (on CUDA) cuDNN autotuning and TF32 for the measurement,
    and restore the caller's settings afterwards."""
    saved = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    with torch_threads(threads):
        try:
            if device.type == "cuda":
                torch.backends.cudnn.benchmark = cudnn_benchmark
                torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
            yield
        finally:
            torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _proc_status_kib(field: str) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[Callable[[], float | None]]:
    """Yields a function giving the MiB the block added at its peak: on CUDA the allocator's
    peak minus what was allocated on entry; on a Linux CPU the peak resident set (reset on
    entry through ``/proc/self/clear_refs``) minus the resident set on entry; else None."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        held = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield lambda: (torch.cuda.max_memory_allocated(device) - held) / 2**20
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak resident set
        held = _proc_status_kib("VmRSS")
    except OSError:
        held = None

    def grown() -> float | None:
        peak = _proc_status_kib("VmHWM")
        return None if held is None or peak is None else max(0, peak - held) / 1024

    yield grown


@dataclass(frozen=True)
class Throughput:
    """One measured figure with everything needed to trust, compare or reproduce it.

    ``samples`` are img/s of each timed block; ``median`` and its 95% interval
    (``ci_low``, ``ci_high``) come from them. ``capped`` is True when the interval was still
    wider than the protocol's target at its time cap. ``cudnn_benchmark`` and ``tf32`` are
    None on the CPU, where they do not apply. ``peak_memory_mb`` is what the measurement
    added (see :func:`peak_memory`): on CUDA the weights moved there, inputs and activations;
    on the CPU, where the weights were resident before, inputs and activations.
    ``allocator`` is the host allocator's policy (see :func:`pin_allocator`) and
    ``page_faults_per_call`` the minor page faults per call in the last block (CPU only).

    How it was timed: ``clock`` decided (``thread-cpu``, ``wall`` or ``cuda-events``, see
    :class:`CpuTimer`); ``raw_median`` is the network's figure on that clock before the
    reference's correction; ``wall_median`` and ``cpu_median`` are the same blocks on each
    clock (CPU targets); ``cpu_share`` is CPU over wall time, the share of its cores the
    measurement got (1.00 on an idle node), and ``contended`` flags a share below
    :data:`CONTENDED_CPU_SHARE`. ``reference`` (CPU targets measured against the reference)
    holds its name, its calibrated img/s on this node, the img/s it ran at between the
    network's blocks, their ratio ``drift`` (below 1: the node ran slower than when it was
    calibrated), and ``calibration_seconds``: what calibrating cost this measurement (0 when
    the node's calibration was there already).
    """

    median: float
    ci_low: float
    ci_high: float
    samples: tuple[float, ...]
    calls_per_block: int
    batch_size: int
    img_size: int
    precision: str
    device: str
    device_name: str
    threads: int
    versions: dict[str, str]
    cudnn_benchmark: bool | None
    tf32: bool | None
    channels_last: bool
    runtime: str  # eager, compile, ort or trt (litv2.runtimes)
    provider: str | None  # onnxruntime's execution provider that ran it (ort, trt)
    prepare_seconds: float  # the runtime's start before the first call: ONNX export and session (compile: lazy, in the first call)
    allocator: str
    page_faults_per_call: float | None
    capped: bool
    warmup_converged: bool
    warmup_seconds: float
    first_call_seconds: float
    wall_seconds: float
    peak_memory_mb: float | None
    clock: str = WALL
    raw_median: float | None = None
    wall_median: float | None = None
    cpu_median: float | None = None
    cpu_share: float | None = None
    contended: bool = False
    reference: dict | None = None

    @property
    def n_samples(self) -> int:
        return len(self.samples)

    @property
    def relative_ci(self) -> float:
        """Width of the 95% interval of the median over the median."""
        return (self.ci_high - self.ci_low) / self.median

    @property
    def spread(self) -> float:
        """Half the interval's width: the +- printed beside the median."""
        return (self.ci_high - self.ci_low) / 2

    def to_dict(self) -> dict:
        """Plain JSON types, for trial attributes, MLflow and the throughput cache."""
        out = asdict(self)
        out.update(samples=list(self.samples), n_samples=self.n_samples, relative_ci=self.relative_ci)
        return out


def _median_rate(batch_size: int, seconds: list[float] | tuple[float, ...]) -> float | None:
    return batch_size / statistics.median(seconds) if seconds else None


def calibrate_reference(batch_size: int, img_size: int, precision: str, channels_last: bool,
                        protocol: MeasureProtocol = MeasureProtocol(), store: CalibrationStore | None = None,
                        again: bool = False) -> tuple[Reference, dict[str, Any]]:
    """The reference network (:data:`litv2.reference.REFERENCE_CONFIG`) built for this CPU
    setting, ready to time, and its calibration on this node: read from ``store``, or
    measured now (alone, by ``protocol`` with twice its samples and time) and stored. Call
    inside :func:`backend_settings` and the measurement's autocast, as the network runs.

    ``again`` measures and replaces a stored calibration (``litv2.bench calibrate --again``).
    """
    store = store if store is not None else CalibrationStore()
    threads = torch.get_num_threads()
    key = calibration_key(device_fingerprint("cpu"), dict(batch_size=batch_size, img_size=img_size,
                                                           precision=precision, threads=threads,
                                                           channels_last=channels_last))
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    with torch.random.fork_rng(devices=[]):  # the caller's random stream stays as it was
        torch.manual_seed(0)
        network = build_model(REFERENCE_CONFIG, num_classes=1000, img_size=img_size)
        inputs = torch.randn(batch_size, 3, img_size, img_size)
    network = network.eval().to(memory_format=memory_format)
    inputs = inputs.contiguous(memory_format=memory_format)
    timer = CpuTimer(functools.partial(network, inputs), threads)
    record = None if again else store.get(key)
    if record is None:
        started = time.perf_counter()
        timing = run_protocol(timer, replace(protocol, min_samples=2 * protocol.min_samples,
                                             max_seconds=2 * protocol.max_seconds))
        seconds = statistics.median(timing.seconds_per_call)
        rates = [batch_size / s for s in timing.seconds_per_call]
        low, high = median_ci(rates)
        record = store.put(key, dict(
            reference=REFERENCE_NAME, img_s=batch_size / seconds, seconds_per_call=seconds, ci_low=low, ci_high=high,
            n_samples=len(rates), capped=timing.capped, clock=timer.clock,
            calibrated_at=time.time(), calibration_seconds=time.perf_counter() - started), replace=again)
    return Reference(timer, record["seconds_per_call"]), record


def measure_throughput(
    model: nn.Module,
    batch_size: int = 1,
    img_size: int = 224,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    *,
    threads: int | None = None,
    channels_last: bool | None = None,
    runtime: str = "eager",
    cudnn_benchmark: bool = True,
    tf32: bool = False,
    steady_allocator: bool = True,
    protocol: MeasureProtocol = MeasureProtocol(),
    in_chans: int = 3,
    reference: bool = False,
    calibrations: CalibrationStore | None = None,
    deadline: float | None = None,
) -> Throughput:
    """Measure ``model``'s inference throughput (img/s) on ``device`` by :func:`run_protocol`.

    ``threads`` fixes the CPU's intra-op threads for the measurement (None: keep the
    current count; either way it is recorded). ``channels_last`` defaults to True on CUDA,
    where the patch embedding, DTM and ConvFFN convolutions run faster in that layout.
    ``cudnn_benchmark`` (default on, as the official protocol: input shapes are fixed) and
    ``tf32`` (default off: an fp32 target means IEEE fp32) are set on CUDA and ignored on the
    CPU. ``steady_allocator`` applies :func:`pin_allocator` to this process (host memory
    matters on GPUs too: inputs, Python objects). The model is moved to ``device`` in place.

    ``reference`` (CPU only; :func:`measure_target` turns it on) times the reference network
    between the network's blocks and scales the figure to its calibration in
    ``calibrations`` (default: :class:`~litv2.reference.CalibrationStore` in the node's
    cache folder), calibrating first if this node and setting have none. CUDA events time the
    GPU alone, so a CUDA figure needs no reference.

    ``deadline`` (a ``time.perf_counter`` time) ends the timing with
    :class:`MeasurementOutOfTime` if it passes before the figure has its interval (the
    node's one-off calibration is not held to it).
    """
    began, began_epoch = time.perf_counter(), time.time()
    if steady_allocator:
        pin_allocator()
    device = resolve_device(device)
    dtype = autocast_dtype(precision)
    on_cuda = device.type == "cuda"
    channels_last = on_cuda if channels_last is None else channels_last
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    calibration = None
    with contextlib.ExitStack() as stack, backend_settings(device, threads, cudnn_benchmark, tf32), \
            peak_memory(device) as added_mib:
        model = model.to(device).eval().to(memory_format=memory_format)
        inputs = torch.randn(batch_size, in_chans, img_size, img_size, device=device)
        inputs = inputs.contiguous(memory_format=memory_format)
        used_threads = torch.get_num_threads()
        workdir = (stack.enter_context(tempfile.TemporaryDirectory(prefix="litv2-runtime-"))  # the ONNX file
                   if runtime in ONNX_RUNTIMES else None)
        preparing = time.perf_counter()
        call, provider = prepare(model, inputs, Target(device.type, batch_size, img_size, precision, used_threads,
                                                       runtime), workdir)
        prepare_seconds = time.perf_counter() - preparing
        timer = block_timer(call, device, used_threads, runtime)
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            against = None
            if reference and not on_cuda:
                against, calibration = calibrate_reference(batch_size, img_size, precision, channels_last, protocol,
                                                           calibrations)
            timing = run_protocol(timer, protocol, reference=against, deadline=deadline)
        peak = added_mib()
    rates = tuple(batch_size / s for s in timing.seconds_per_call)
    low, high = median_ci(rates)
    clocks: dict[str, Any] = dict(clock=timer.clock if isinstance(timer, CpuTimer) else CUDA_EVENTS,
                                  raw_median=_median_rate(batch_size, timing.raw_seconds_per_call))
    if isinstance(timer, CpuTimer) and not on_cuda:  # (onnxruntime on a GPU: the wall clock, no CPU share to judge)
        sampled = timer.blocks[-len(timing.seconds_per_call):]
        share = statistics.median(cpu / wall for wall, cpu in sampled)
        clocks.update(wall_median=_median_rate(batch_size, [wall for wall, _ in sampled]),
                      cpu_median=_median_rate(batch_size, [cpu for _, cpu in sampled]), cpu_share=share,
                      contended=share < CONTENDED_CPU_SHARE)
    if calibration is not None:
        observed = _median_rate(batch_size, timing.reference_seconds_per_call)
        made_now = calibration["calibrated_at"] >= began_epoch
        clocks["reference"] = dict(name=calibration["reference"], calibrated_img_s=calibration["img_s"],
                                   observed_img_s=observed, drift=observed / calibration["img_s"],
                                   calibrated_at=calibration["calibrated_at"],
                                   calibration_seconds=calibration["calibration_seconds"] if made_now else 0.0)
    return Throughput(
        median=statistics.median(rates), ci_low=low, ci_high=high, samples=rates,
        calls_per_block=timing.calls_per_block, batch_size=batch_size, img_size=img_size, precision=precision,
        device=str(device), device_name=device_name(device), threads=used_threads, versions=library_versions(device, runtime),
        cudnn_benchmark=cudnn_benchmark if on_cuda else None, tf32=tf32 if on_cuda else None,
        channels_last=channels_last, runtime=runtime, provider=provider, prepare_seconds=prepare_seconds,
        allocator=allocator_policy(),
        page_faults_per_call=timer.page_faults_per_call if isinstance(timer, CpuTimer) else None,
        capped=timing.capped, warmup_converged=timing.warmup_converged, warmup_seconds=timing.warmup_seconds,
        first_call_seconds=timing.first_call_seconds, wall_seconds=time.perf_counter() - began, peak_memory_mb=peak,
        **clocks,
    )


def measure_target(model: nn.Module, target: Target, **options) -> Throughput:
    """:func:`measure_throughput` at a deployment target's device, batch, resolution,
    precision and (CPU) thread count, against the calibrated reference on CPU targets;
    ``options`` are its keyword-only options."""
    options.setdefault("reference", True)
    return measure_throughput(model, target.batch_size, target.img_size, target.device, target.precision,
                              threads=target.threads, runtime=target.runtime, **options)


def measure_config(config: LITConfig, target: Target, **options) -> Throughput:
    """Build the full-size network of ``config`` (1000 classes, the target's resolution) and
    measure it, as the search's measurement task does (``search.engine.measuring``, which also counts
    the parameters of the network it builds): ``litv2.bench measure`` and ``repeatability``."""
    return measure_target(build_model(config, num_classes=1000, img_size=target.img_size), target, **options)


OFFICIAL_WARMUP_CALLS, OFFICIAL_TIMED_CALLS = 50, 30


def official_throughput(model: nn.Module, batch_size: int = 64, img_size: int = 224,
                        device: str | torch.device | None = None, precision: str = "fp32",
                        warmup_calls: int = OFFICIAL_WARMUP_CALLS, timed_calls: int = OFFICIAL_TIMED_CALLS,
                        tf32: bool = True, threads: int | None = None) -> dict[str, float]:
    """Throughput and peak memory by the protocol of the official LITv2 (and Swin) code, to put
    the paper's figures beside ours: one random batch, 50 forwards to warm up, then 30 timed on
    the wall clock between two synchronizes; peak memory is ``max_memory_allocated``.

    It has no interval and no clock choice, hence :func:`measure_throughput` for everything
    the search ranks; this one answers "how does our figure compare with the paper's". The
    official code ran in fp32 with PyTorch's defaults of its day (TF32 on for Ampere matmuls
    and convolutions, cudnn.benchmark on), hence ``tf32`` on by default here. The model's
    layout is left as it is (the official code never switched to channels_last). ``threads``
    (CPU) as in :func:`measure_throughput`.
    """
    device = resolve_device(device)
    dtype = autocast_dtype(precision)
    with backend_settings(device, threads, cudnn_benchmark=True, tf32=tf32), peak_memory(device) as added_mib:
        model = model.to(device).eval()
        images = torch.randn(batch_size, 3, img_size, img_size, device=device)
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            for _ in range(warmup_calls):
                model(images)
            _synchronize(device)
            start = time.perf_counter()
            for _ in range(timed_calls):
                model(images)
            _synchronize(device)
            seconds = time.perf_counter() - start
        peak = added_mib()
    return dict(img_s=timed_calls * batch_size / seconds, seconds=seconds, peak_memory_mb=peak,
                warmup_calls=warmup_calls, timed_calls=timed_calls, precision=precision, tf32=tf32)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
