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

An exported graph accepts other resolutions than the measured one where the network allows it
(:func:`dynamic_input_sides`); the file says which in its metadata (:class:`InputSides`).
"""
from __future__ import annotations

import functools
import importlib.metadata
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from .config import LITConfig
from .target import Target

ONNX_INPUT, ONNX_OUTPUT = "images", "logits"
ONNX_RUNTIMES = ("ort", "trt")
PROVIDERS = {("ort", "cpu"): ("CPUExecutionProvider",), ("ort", "cuda"): ("CUDAExecutionProvider",),
             ("trt", "cuda"): ("TensorrtExecutionProvider", "CUDAExecutionProvider")}
"""onnxruntime's execution providers for each runtime and device, first choice first."""
ORT_INSTALL = "pip install 'litv2-search[export]'"


INPUT_SIDES_KEY = "litv2.input_sides"
"""The ONNX metadata entry (``metadata_props``) that records, as JSON, the sides the graph accepts."""


@dataclass(frozen=True)
class InputSides:
    """The image heights and widths an exported graph accepts, each side on its own: the multiples
    of ``multiple`` from ``minimum`` up to ``maximum`` (None: unbounded).

    onnxruntime refuses a side that a frozen graph was not traced at ("Expected: 224") and, in
    every dynamic graph tried, a side off the multiples (one of the graph's Reshapes fails). A
    single multiple, below the minimum, ran correctly in those graphs but is not a side
    torch.export vouches for (see :func:`dynamic_input_sides`)."""

    multiple: int
    minimum: int
    maximum: int | None = None

    @classmethod
    def only(cls, side: int) -> "InputSides":
        """One resolution, ``side`` x ``side``: what a graph traced without dynamic sides accepts."""
        return cls(multiple=side, minimum=side, maximum=side)

    @property
    def fixed(self) -> bool:
        return self.minimum == self.maximum

    def accepts(self, side: int) -> bool:
        return side >= self.minimum and side % self.multiple == 0 and (self.maximum is None or side <= self.maximum)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> "InputSides | None":
        """The sides recorded in an ONNX file's metadata - onnxruntime's
        ``session.get_modelmeta().custom_metadata_map`` or onnx's ``metadata_props`` as a dict -
        so a loader can name them before it feeds an image; None for a file exported before
        :func:`export_onnx` recorded them."""
        return cls(**json.loads(metadata[INPUT_SIDES_KEY])) if INPUT_SIDES_KEY in metadata else None

    def __str__(self) -> str:
        if self.fixed:
            return f"{self.minimum}x{self.minimum} images only"
        return (f"images whose height and width are each a multiple of {self.multiple}, from {self.minimum}"
                + ("" if self.maximum is None else f" to {self.maximum}"))


def _stage_divisor(config: LITConfig, stage: int) -> int:
    """What stage ``stage``'s map sides must be multiples of for its attention to pad nothing:
    HiLo's windows (Hi-Fi windows and Lo-Fi pooling alike), W-MSA's windows, SRA's reduction
    ratio, T-MSA's windows and - from its second block on - its reduction ratio."""
    if not config.attention[stage]:
        return 1
    kind, window, ratio = config.attn_kind[stage], config.window_size[stage], config.sr_ratio[stage]
    if kind in ("hilo", "wmsa"):
        return window
    if kind == "sra":
        return ratio
    if kind == "tmsa":
        return math.lcm(window, ratio) if config.depths[stage] > 1 else window
    return 1  # global MSA


def dynamic_input_sides(config: LITConfig) -> InputSides | None:
    """The sides a graph of ``config`` exported with dynamic height and width accepts, or None
    where a layer keeps height and width from being dynamic.

    The multiple is the side that every stage divides exactly: the total stride
    (``config.reduction``: the patch embedding, then each merge halves the map) and, at each
    stage's stride, that stage's :func:`_stage_divisor`. On such sides no window or reduction
    pads the map and no merge crops it, so the traced graph holds no branch on the size and
    torch.export keeps each side symbolic as ``multiple * k``. Any other side makes the tracer
    decide the padding for the example's size (torch.export refuses a plain dynamic side:
    "Constraints violated"). The minimum is two multiples, as torch.export proves its graph for
    ``k >= 2`` only: it treats a size of 0 or 1 as a constant.

    None for shifted windows (W-MSA with ``shift``, a window of 2 or more and a second block)
    and for global MSA's relative position bias: both build a constant in Python per map size
    (the shift mask, the bias index), cached under the size, which a symbolic size cannot key.
    """
    for stage in range(config.num_stages):
        kind = config.attn_kind[stage] if config.attention[stage] else None
        shifted = (kind == "wmsa" and config.shift and config.window_size[stage] > 1 and config.depths[stage] > 1)
        if shifted or (kind == "msa" and config.rel_pos_bias):
            return None
    multiple = math.lcm(config.reduction, *(config.patch_size * 2**stage * _stage_divisor(config, stage)
                                             for stage in range(config.num_stages)))
    return InputSides(multiple=multiple, minimum=2 * multiple)


def export_onnx(model: nn.Module, path: str | Path, img_size: int) -> InputSides:
    """The eval-mode model as one ONNX file (input ``images``, output ``logits``) by torch's
    ``torch.export``-based exporter, with a dynamic batch and the sides it accepts in its
    metadata (:data:`INPUT_SIDES_KEY`); returns those sides.

    Height and width are dynamic too where the network allows it (:func:`dynamic_input_sides`)
    and ``img_size`` is one of those sides; otherwise the graph is frozen at ``img_size``,
    and onnxruntime refuses any other resolution that PyTorch would accept.
    """
    model = model.eval()
    config = getattr(model, "config", None)
    rule = dynamic_input_sides(config) if isinstance(config, LITConfig) else None
    sides = rule if rule is not None and rule.accepts(img_size) else InputSides.only(img_size)
    example = torch.randn(2, 3, img_size, img_size, device=next(model.parameters()).device)
    shapes = {0: torch.export.Dim("batch", min=1)}
    if not sides.fixed:
        least = sides.minimum // sides.multiple
        shapes[2] = sides.multiple * torch.export.Dim(f"height_div_{sides.multiple}", min=least)
        shapes[3] = sides.multiple * torch.export.Dim(f"width_div_{sides.multiple}", min=least)
    with torch.no_grad():
        program = torch.onnx.export(model, (example,), input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
                                    dynamo=True, dynamic_shapes=(shapes,), external_data=False, verbose=False)
    program.model.metadata_props[INPUT_SIDES_KEY] = json.dumps(asdict(sides))
    program.save(str(path), external_data=False)
    return sides


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
