"""The runtime a measured network runs in, as a deployment serves it: eager PyTorch,
``torch.compile``, ONNX Runtime (``ort``) or TensorRT (``trt``, through onnxruntime's
TensorRT execution provider).

Backends reorder models (a compiled or ONNX graph fuses what eager PyTorch runs op by op, and
how much that gains depends on the architecture), so a target names its runtime
(:class:`~litv2.target.Target`) and :func:`prepare` turns a network into the call that
:func:`litv2.measure.measure_throughput` times with its one protocol and clock. ``ort`` and
``trt`` run the very ONNX file that ``search pick --export`` ships: :func:`export_onnx` is
the one exporter of the project.

On a one-thread CPU target onnxruntime runs the graph on the calling thread (a pool of one
thread is no pool), so the thread's CPU clock times it as it times PyTorch.
"""
from __future__ import annotations

import functools
import importlib.metadata
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .target import Target

ONNX_INPUT, ONNX_OUTPUT = "images", "logits"
ONNX_RUNTIMES = ("ort", "trt")
PROVIDERS = {("ort", "cpu"): ("CPUExecutionProvider",), ("ort", "cuda"): ("CUDAExecutionProvider",),
             ("trt", "cuda"): ("TensorrtExecutionProvider", "CUDAExecutionProvider")}
"""onnxruntime's execution providers for each runtime and device, first choice first."""
ORT_INSTALL = "pip install 'litv2-search[export]'"


def export_onnx(model: nn.Module, path: str | Path, img_size: int) -> None:
    """The eval-mode model as one ONNX file with a dynamic batch dimension (input ``images``,
    output ``logits``), by torch's ``torch.export``-based exporter."""
    model = model.eval()
    example = torch.randn(2, 3, img_size, img_size, device=next(model.parameters()).device)
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.onnx.export(model, (example,), input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
                                    dynamo=True, dynamic_shapes=({0: batch},), external_data=False, verbose=False)
    program.save(str(path), external_data=False)


def providers_for(target: Target) -> list[str | tuple[str, dict[str, object]]]:
    """The onnxruntime providers that serve ``target`` (with TensorRT's options: ``fp16``
    turns on its half-precision kernels, as ``trtexec --fp16``), or a one-line ValueError
    where this node cannot: onnxruntime missing, or its build lacking the provider (TensorRT
    needs a GPU and a TensorRT-enabled onnxruntime)."""
    wanted = PROVIDERS[(target.runtime, target.device)]
    try:
        import onnxruntime
    except ImportError:
        raise ValueError(f"target {target.key!r} runs in onnxruntime, which is not installed: {ORT_INSTALL}") from None
    available = onnxruntime.get_available_providers()
    if wanted[0] not in available:
        raise ValueError(f"target {target.key!r} needs onnxruntime's {wanted[0]}, which this node's onnxruntime "
                         f"{onnxruntime.__version__} lacks (it has {', '.join(available)})")
    options = {"TensorrtExecutionProvider": {"trt_fp16_enable": target.precision == "fp16"}}
    return [(p, options[p]) if p in options else p for p in wanted if p in available]


def check_runtime(target: Target) -> None:
    """A one-line ValueError unless this node can measure ``target`` in its runtime (called
    before anything is built or measured)."""
    if target.device == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"target {target.key!r} needs a CUDA GPU, and this node has none")
    if target.runtime in ONNX_RUNTIMES:
        providers_for(target)


def runtime_versions(runtime: str) -> dict[str, str]:
    """What, beside torch, decides the kernels of ``runtime``: onnxruntime's version for
    ``ort`` and ``trt`` (part of every figure's fingerprint, so of the throughput cache's key)."""
    if runtime not in ONNX_RUNTIMES:
        return {}
    try:
        return {"onnxruntime": importlib.metadata.version("onnxruntime")}
    except importlib.metadata.PackageNotFoundError:  # a driver without it: no cached figure matches; the node measures
        return {"onnxruntime": "not installed"}


def ort_session(path: str | Path, target: Target):
    """An onnxruntime session of the file at ``path`` for ``target``: its providers, its
    intra-op threads (onnxruntime's default on a GPU), one inter-op thread, every graph
    optimisation."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if target.threads:
        options.intra_op_num_threads = target.threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no busy-waiting threads beside the clock
    return onnxruntime.InferenceSession(str(path), options, providers=providers_for(target))


def prepare(model: nn.Module, inputs: torch.Tensor, target: Target,
            workdir: str | Path | None) -> tuple[Callable[[], object], str | None]:
    """The call to time - ``model`` on ``inputs`` in ``target``'s runtime - and the
    onnxruntime provider that runs it (None for PyTorch). ``ort``/``trt`` export the model
    into ``workdir`` first (:func:`export_onnx`) and feed the session a host copy of ``inputs``."""
    if target.runtime == "eager":
        return functools.partial(model, inputs), None
    if target.runtime == "compile":
        # Dynamo's caches are keyed by the forward's code, which every LIT network shares: past
        # its recompile limit (8) a process silently runs later networks eagerly. Each
        # measurement compiles its own network from a clean cache.
        torch._dynamo.reset()
        return functools.partial(torch.compile(model), inputs), None
    path = Path(workdir) / "model.onnx"
    export_onnx(model, path, target.img_size)
    session = ort_session(path, target)
    feed = {ONNX_INPUT: inputs.float().cpu().contiguous().numpy()}
    return functools.partial(session.run, [ONNX_OUTPUT], feed), session.get_providers()[0]
