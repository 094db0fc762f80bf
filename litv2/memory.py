"""The CPU memory a full-size network's inference needs, read where the figure is real.

On the CPU the only peak there is to read is the process's resident set (Linux's
``VmHWM``). In a long-lived process it says nothing about the network in hand: the heap that
earlier work grew is reused (and :func:`litv2.measure.pin_allocator` keeps all of it), so a
measuring worker's growth reads 0-1 MB whatever it runs (``search.engine.measuring``).
:func:`inference_peak_mb` therefore runs the inference in a process of its own, started by
multiprocessing's ``spawn`` (never ``fork``: a forked child shares, and may reuse, the parent's
heap), whose heap holds nothing but the interpreter and its libraries when the figure starts.

CUDA figures need none of this: the allocator counts them (``torch.cuda.max_memory_allocated``,
:func:`litv2.measure.peak_memory`).
"""
from __future__ import annotations

import multiprocessing
import os
import signal
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from .config import LITConfig

STATUS = Path("/proc/self/status")  # Linux's figures of this process: none elsewhere


@dataclass(frozen=True)
class InferencePeak:
    """What one CPU inference needed, in MiB, and the setting it ran in.

    ``peak_mb`` is the peak of the anonymous memory the inference added to its process:
    weights, inputs, activations and the allocator's slack. Not in it: the interpreter and
    libraries resident before (``baseline_mb``, the resident set once torch was imported), and
    the library code the forwards paged in on first use (``library_mb``, file-backed pages:
    21 MB for LITv2-S and for a tiny network alike, seven times the tiny one's ``peak_mb``).
    ``weights_mb`` (parameters and buffers) and ``inputs_mb`` are the bytes of those tensors,
    the floor of ``peak_mb``. ``threads`` is torch's intra-op thread count in the forwards."""

    peak_mb: float
    weights_mb: float
    inputs_mb: float
    baseline_mb: float
    library_mb: float
    batch_size: int
    img_size: int
    precision: str
    threads: int
    calls: int

    def to_dict(self) -> dict:
        """Plain JSON types, for a table row or a trial attribute."""
        return asdict(self)


def inference_peak_mb(config: LITConfig, batch_size: int, img_size: int, precision: str = "fp32",
                      threads: int | None = 1, calls: int = 3) -> InferencePeak | None:
    """The peak memory of ``calls`` CPU forwards of ``config``'s full-size network (1000
    classes, ``img_size``) on a random batch, measured in a fresh process.

    The child sets ``threads`` (None: torch's default), reads its resident set once torch is
    imported (the baseline), resets the peak resident set (``/proc/self/clear_refs``), builds
    the network, runs the forwards under ``torch.inference_mode`` (and autocast for
    ``bf16``/``fp16``, as :mod:`litv2.measure` does; the cast weights it caches are then part
    of the figure), and reads the peak (``VmHWM``) less the file-backed pages the forwards
    added. Those pages (library code) only grow (unless the kernel reclaims them under memory
    pressure), so from the second forward on, which pages in no new code, the peak less them
    is the anonymous peak: hence ``calls`` >= 2.
    glibc's malloc keeps its defaults there (large tensors mapped and unmapped one by one,
    not :func:`~litv2.measure.pin_allocator`), so the figure is what the forward holds at
    once, not a pinned heap's high-water mark (for LITv2-S at batch 1 the two differ by 2%).
    One child per call: 4-10 s, mostly importing torch.

    Returns None where the system gives no such peak (no ``/proc/self/status``, as on macOS
    and Windows, or a ``clear_refs`` that cannot reset it): a missing figure, as
    :class:`~litv2.measure.Throughput` records one. Raises RuntimeError, in one line, when the
    child fails (an exception there, or killed, as by the kernel out of memory). The child
    writes nothing to the terminal. ``spawn`` runs the caller's ``__main__`` again in the
    child (as ``__mp_main__``): a script that calls this must guard its top-level code with
    ``if __name__ == "__main__":``.
    """
    if calls < 2:
        raise ValueError(f"calls={calls}: the peak needs a forward after the first (see the docstring), so 2 or more")
    if not STATUS.is_file():
        return None
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_measure_in_child, name="litv2-inference-peak",
                            args=(sender, config.to_json(), batch_size, img_size, precision, threads, calls))
    child.start()
    sender.close()  # the child's end now: its exit without a result ends the parent's recv
    try:
        try:
            outcome, payload = receiver.recv()
        except EOFError:
            outcome, payload = "failed", None
        child.join()
    finally:
        if child.is_alive():  # the caller was interrupted
            child.kill()
            child.join()
        receiver.close()
    if outcome == "measured":
        return None if payload is None else InferencePeak(**payload)
    if outcome == "raised":
        raise RuntimeError(f"the inference-peak child for batch {batch_size} at {img_size} px failed: {payload}")
    raise RuntimeError(f"the inference-peak child for batch {batch_size} at {img_size} px {_exit_reason(child.exitcode)}")


def _exit_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        likely = " (out of memory?)" if -exitcode == signal.SIGKILL else ""
        return f"was killed by {name}{likely} before its result"
    return f"exited with code {exitcode} before its result"


def _measure_in_child(sender: Connection, config_json: str, batch_size: int, img_size: int, precision: str,
                      threads: int | None, calls: int) -> None:
    """The child's body: silenced, it sends ``("measured", fields or None)`` or ``("raised",
    the exception in one line)``."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # the file descriptors, so that C++ and OpenMP stay quiet too
    os.dup2(devnull, 2)
    try:
        sender.send(("measured", _measure(config_json, batch_size, img_size, precision, threads, calls)))
    except Exception as error:  # noqa: BLE001 - every failure goes back to the parent, in one line
        first_line = (str(error).strip().splitlines() or [""])[0]
        sender.send(("raised", f"{type(error).__name__}: {first_line}"))
    finally:
        sender.close()


def _measure(config_json: str, batch_size: int, img_size: int, precision: str, threads: int | None,
             calls: int) -> dict | None:
    config = LITConfig.from_json(config_json)  # before the seconds of importing torch
    import torch

    from .measure import _proc_status_kib, autocast_dtype, peak_memory
    from .model import build_model

    dtype = autocast_dtype(precision)
    if threads is not None:
        torch.set_num_threads(threads)
    baseline_kib, files_before = _proc_status_kib("VmRSS"), _proc_status_kib("RssFile")
    with peak_memory(torch.device("cpu")) as added_mib:
        network = build_model(config, num_classes=1000, img_size=img_size).eval()
        inputs = torch.randn(batch_size, 3, img_size, img_size)
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            for _ in range(calls):
                network(inputs)
        peak, files_after = added_mib(), _proc_status_kib("RssFile")
    if None in (peak, baseline_kib, files_before, files_after):
        return None
    library_mb = (files_after - files_before) / 1024
    weights = sum(t.numel() * t.element_size() for t in (*network.parameters(), *network.buffers()))
    return dict(peak_mb=peak - library_mb, weights_mb=weights / 2**20,
                inputs_mb=inputs.numel() * inputs.element_size() / 2**20, baseline_mb=baseline_kib / 1024,
                library_mb=library_mb, batch_size=batch_size, img_size=img_size, precision=precision,
                threads=torch.get_num_threads(), calls=calls)
