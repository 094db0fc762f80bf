"""The one place where the ablations time a forward pass themselves, and size its memory.

Trained tables get their throughput from the search's measurement task; two kinds of figure
are measured here, in the ``experiments`` process: single attention layers against the
token-map side (``attention-resolution``) and whole models at extra input sizes such as a
detector's 1280x800 (``window``). Both go through :func:`measure_forward`, the project's one
protocol (:func:`litv2.measure.measure_throughput`) applied to a fixed input.

:func:`predicted_peak_bytes` runs a forward on fake tensors (no memory is allocated) and
tracks the bytes of the tensors alive at each step, so a layer that would not fit the
memory limit is reported instead of being run.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from search.core.target import Target


class _Fed(nn.Module):
    """``module`` applied to a fixed ``example`` held as a buffer, so that it moves, changes
    layout and is autocast with the module; the timer's own input is ignored. This lets an
    image-shaped timing protocol time token inputs and non-square images."""

    def __init__(self, module: nn.Module, example: torch.Tensor) -> None:
        super().__init__()
        self.module = module
        self.register_buffer("example", example, persistent=False)

    def forward(self, ignored: torch.Tensor) -> torch.Tensor:
        return self.module(self.example)


def measure_forward(module: nn.Module, example: torch.Tensor, target: Target) -> dict[str, Any]:
    """Throughput of ``module(example)`` on ``target``'s device, precision and threads.

    Returns ``throughput`` (inputs per second: ``example``'s first dimension is the batch),
    ``throughput_spread`` and ``peak_memory_mb`` (``None`` where the protocol has no figure).
    """
    from litv2.measure import measure_throughput

    measured = measure_throughput(_Fed(module, example), batch_size=example.shape[0], img_size=1, in_chans=1,
                                  device=target.device, precision=target.precision,
                                  threads=target.threads if target.device == "cpu" else None)
    return dict(throughput=measured.median, throughput_spread=measured.spread, peak_memory_mb=measured.peak_memory_mb,
                measurement=measured.to_dict())


def is_out_of_memory(error: BaseException) -> bool:
    """An allocation that failed (CUDA's OutOfMemoryError, or the CPU allocator's error)."""
    text = str(error)
    return isinstance(error, torch.OutOfMemoryError) or "can't allocate memory" in text or "out of memory" in text


def predicted_peak_bytes(build: Callable[[], nn.Module], input_shape: tuple[int, ...]) -> int:
    """Most bytes alive at once in an fp32 inference forward of ``build()`` on an input of
    ``input_shape``: parameters, input and every intermediate tensor while it lives.

    Runs on fake tensors (:class:`torch._subclasses.fake_tensor.FakeTensorMode`), so nothing is
    allocated whatever the size. Buffers a fused kernel allocates internally are not seen
    (SDPA's flash kernels keep them small); fp16/bf16 targets need less than this.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        module = build().eval()
        example = torch.empty(input_shape)
        resident = sum(p.numel() * p.element_size() for p in module.parameters()) + example.numel() * 4
        tracker = _LiveBytes()
        with torch.inference_mode(), tracker:
            module(example)
    return resident + tracker.peak


class _LiveBytes(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the storage bytes of op outputs while they are alive (views share storage)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[Any, int] = {}
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.multiprocessing.reductions import StorageWeakRef

        out = func(*args, **(kwargs or {}))
        self.live = {ref: size for ref, size in self.live.items() if not ref.expired()}
        for tensor in torch.utils._pytree.tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                self.live.setdefault(StorageWeakRef(storage), storage.nbytes())
        self.peak = max(self.peak, sum(self.live.values()))
        return out
