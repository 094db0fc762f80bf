"""Deployment targets: where and how throughput is measured, e.g. ``cuda:bs64:224:fp16``.

Form: ``DEVICE:bsBATCH:RESOLUTION[:PRECISION][:tTHREADS][:RUNTIME]`` with DEVICE ``cpu`` or
``cuda``, PRECISION ``fp32`` (default), ``fp16`` or ``bf16``, THREADS (CPU targets only) the
intra-op threads one inference stream uses, and RUNTIME what runs the network
(:mod:`litv2.runtimes`): ``eager`` PyTorch (default), ``compile`` (``torch.compile``), ``ort``
(the exported ONNX file in onnxruntime) or ``trt`` (TensorRT, through onnxruntime's provider;
cuda only). CPU targets default to one thread: batch-1 CPU serving scales by running one
single-threaded stream per core, and a single-threaded measurement on an otherwise idle node
is also the one that repeats (two-thread runs of small models on a two-core node vary by
+-20% from OpenMP barrier stalls whenever anything else wakes up).
The canonical string is part of the throughput cache key, so ``cuda:bs64:224`` and
``cuda:bs64:224:fp32`` share measurements, and so do ``cpu:bs1:224`` and
``cpu:bs1:224:fp32:t1`` (an eager target's key names no runtime: keys made before runtimes
existed still hold).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

PRECISIONS = ("fp32", "fp16", "bf16")
MIN_RESOLUTION = 32
"""The smallest input side a LIT network runs at: its 4-px patch embedding and three token
merges leave a 2x2 map for the last merge's 2x2 kernel (28 px leaves 1x1, and every network
of the named configs and spaces fails there)."""
RUNTIMES = ("eager", "compile", "ort", "trt")
RUNTIME_PRECISIONS = {"ort": ("fp32",), "trt": ("fp32", "fp16")}
"""What each ONNX runtime runs here (PyTorch runtimes run every precision): an fp32 graph,
which TensorRT may run in half precision (``trt_fp16_enable``, as ``trtexec --fp16``)."""
_PATTERN = re.compile(
    rf"^(?P<device>cpu|cuda):bs(?P<batch>\d+):(?P<res>\d+)(?::(?P<precision>{'|'.join(PRECISIONS)}))?"
    r"(?::t(?P<threads>\d+))?(?::(?P<runtime>[a-z]+))?$"
)


@dataclass(frozen=True)
class Target:
    device: str
    batch_size: int
    img_size: int
    precision: str = "fp32"
    threads: int | None = None  # CPU intra-op threads (default 1); always None on cuda
    runtime: str = "eager"

    def __post_init__(self) -> None:
        # One canonical form, so that a Target built in code and its parsed key share cache entries.
        object.__setattr__(self, "threads", (self.threads or 1) if self.device == "cpu" else None)

    @property
    def key(self) -> str:
        return self._key(str(self.img_size))

    def key_at(self, height: int, width: int) -> str:
        """The key of this target measured on ``height x width`` inputs instead of its square
        ``img_size`` (dense-prediction resolutions), e.g. ``cpu:bs1:800x1280:fp32:t1``."""
        return self._key(f"{height}x{width}")

    def _key(self, resolution: str) -> str:
        threads = f":t{self.threads}" if self.threads is not None else ""
        runtime = f":{self.runtime}" if self.runtime != "eager" else ""
        return f"{self.device}:bs{self.batch_size}:{resolution}:{self.precision}{threads}{runtime}"

    def __str__(self) -> str:
        return self.key


def parse_target(text: str) -> Target:
    """``"cpu:bs1:224"`` -> ``Target("cpu", 1, 224, "fp32", threads=1)``; bad strings raise a one-line ValueError."""
    match = _PATTERN.match(text.strip()) if isinstance(text, str) else None
    expected = ("expected DEVICE:bsBATCH:RESOLUTION[:PRECISION][:tTHREADS][:RUNTIME] such as cpu:bs1:224, "
                "cpu:bs8:224:t4, cpu:bs1:224:ort or cuda:bs64:224:fp16")
    if not match:
        raise ValueError(f"target {text!r} is invalid: {expected}")
    batch, res = int(match["batch"]), int(match["res"])
    threads = int(match["threads"]) if match["threads"] is not None else None
    if batch < 1 or res < 1 or threads == 0:
        raise ValueError(f"target {text!r} is invalid: batch, resolution and threads must be positive; {expected}")
    if res < MIN_RESOLUTION:
        raise ValueError(f"target {text!r} is invalid: resolution {res} is below {MIN_RESOLUTION}, the smallest input "
                         "a LIT network runs at")
    precision, runtime = match["precision"] or "fp32", match["runtime"] or "eager"
    if runtime not in RUNTIMES:
        raise ValueError(f"target {text!r} is invalid: runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
    if match["device"] == "cpu" and precision == "fp16":
        raise ValueError(f"target {text!r} is invalid: fp16 inference is for cuda targets; use fp32 or bf16 on cpu")
    if match["device"] == "cuda" and threads is not None:
        raise ValueError(f"target {text!r} is invalid: a thread count applies to cpu targets only")
    if runtime == "trt" and match["device"] != "cuda":
        raise ValueError(f"target {text!r} is invalid: TensorRT (trt) runs on cuda targets only")
    if precision not in RUNTIME_PRECISIONS.get(runtime, PRECISIONS):
        raise ValueError(f"target {text!r} is invalid: {runtime} runs {' or '.join(RUNTIME_PRECISIONS[runtime])} "
                         f"here, not {precision}")
    return Target(match["device"], batch, res, precision, threads, runtime)
