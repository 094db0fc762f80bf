"""A model as files someone can ship: timm's local-dir folder, an ONNX graph, written atomically.

The folder is timm's own layout (``config.json`` + ``model.safetensors``, from
``timm.models.save_for_hf``) with the :class:`~litv2.LITConfig` inside the model arguments
of the generic ``lit_custom`` entry point, so ``timm.create_model("local-dir:DIR",
pretrained=True)`` rebuilds the model, weights included, with nothing but timm and
``import litv2``. ``config.json`` also carries a ``litv2_search`` section (study, trial,
target, figures) that timm ignores and ``search train`` reads. The ONNX graph is exported by
torch's ``torch.export``-based exporter with a dynamic batch dimension and checked against
PyTorch in onnxruntime before it is kept.

Everything is written into a temporary sibling folder that is renamed into place at the end,
so a failed or interrupted export leaves no half-written folder behind.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from litv2 import NAMED_CONFIGS, LITConfig
from litv2.files import check_writable_folder
from litv2.runtimes import INPUT_SIDES_KEY, ONNX_INPUT, ONNX_OUTPUT, InputSides, export_onnx

from ..core.versions import installed_versions

CUSTOM_ARCHITECTURE = "lit_custom"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ONNX_FILE = "model.onnx"
CARD_FILE = "MODEL_CARD.md"
PROVENANCE_KEY = "litv2_search"
ONNX_TOLERANCE = 1e-4  # largest |onnxruntime - PyTorch| an export may keep, per unit of its largest output (at least 1)
EXPORT_EXTRA = "pip install 'litv2-search[export]'"
# timm 1.0 has no plugin mechanism (no entry points): it builds only architectures registered
# in the running process, so a LIT export needs our package imported first. Every card and
# config.json says so in these words.
LOADING = ("pip install litv2-search (this project), then `import litv2` before "
           "`timm.create_model(\"local-dir:DIR\", pretrained=True)`: timm has no plugin mechanism through which an "
           "installed package registers its architectures, so without the import timm says "
           f"`Unknown model ({CUSTOM_ARCHITECTURE})`")
UNTRAINED = "untrained: a seeded initialisation of the picked architecture; train it with `python -m search train --model DIR`"


def require_export_extra() -> None:
    """The ONNX exporter and runtime are an optional extra: a one-line ValueError without them."""
    for module in ("onnx", "onnxruntime", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            raise ValueError(f"exporting needs the {module!r} package; install the export extra: {EXPORT_EXTRA}") from None


def check_new_folder(folder: str | Path, flag: str) -> Path:
    """A folder that does not exist yet, in a folder that exists and takes files (one-line
    ValueError otherwise, naming which: a missing parent, a file, a place that refuses writes)."""
    path = Path(folder)
    if path.exists():
        raise ValueError(f"{flag} {str(folder)!r} already exists: expected a new folder (nothing is overwritten)")
    check_writable_folder(path.parent, f"{flag} {str(folder)!r}")
    return path


def write_atomically(folder: Path, fill: Callable[[Path], None]) -> Path:
    """Call ``fill(tmp)`` on a temporary sibling of ``folder``, then rename it to ``folder``.

    On any failure (Ctrl-C included) the temporary folder is removed and ``folder`` never exists.
    """
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        fill(tmp)
        _readable(tmp)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _readable(folder: Path) -> None:
    """The permissions of an ordinary new folder and its files (``mkdtemp`` makes them private)."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def create_lit_model(config: LITConfig, num_classes: int, img_size: int, **kwargs: Any) -> nn.Module:
    """``config`` as a timm model (``lit_custom``), so that timm records what rebuilds it."""
    import timm

    return timm.create_model(CUSTOM_ARCHITECTURE, lit_config=config.to_dict(), num_classes=num_classes,
                             img_size=img_size, **kwargs)


def save_timm_folder(model: nn.Module, config: LITConfig, folder: Path, img_size: int,
                     provenance: dict[str, Any] | None = None) -> None:
    """timm's ``config.json`` + ``model.safetensors`` for ``model`` (built by :func:`create_lit_model`)."""
    from timm.models import save_for_hf

    save_for_hf(model, str(folder), model_args={"lit_config": config.to_dict()}, safe_serialization=True,
                data_config={"input_size": (3, img_size, img_size)},
                model_config={PROVENANCE_KEY: provenance} if provenance else None)


def onnx_agreement(model: nn.Module, path: Path, height: int, width: int | None = None, batch_size: int = 3,
                   seed: int = 0, provider: str = "CPUExecutionProvider") -> tuple[float, float]:
    """(largest |onnxruntime - PyTorch (on the CPU)|, largest |PyTorch output|) over one random
    batch of ``height`` x ``width`` (default square) images, the ONNX run on onnxruntime's
    ``provider``.

    The batch size differs from the one the graph was traced with, so a batch dimension
    that was frozen instead of kept dynamic fails here.
    """
    import onnxruntime

    images = torch.randn(batch_size, 3, height, width or height, generator=torch.Generator().manual_seed(seed))
    session = onnxruntime.InferenceSession(str(path), providers=[provider])
    (ours,) = session.run([ONNX_OUTPUT], {ONNX_INPUT: images.numpy()})
    with torch.no_grad():
        reference = model.eval()(images)
    return float((torch.from_numpy(ours) - reference).abs().max()), float(reference.abs().max())


def onnx_max_difference(model: nn.Module, path: Path, height: int, width: int | None = None, batch_size: int = 3,
                        seed: int = 0, provider: str = "CPUExecutionProvider") -> float:
    """The largest |onnxruntime - PyTorch| of :func:`onnx_agreement`."""
    return onnx_agreement(model, path, height, width, batch_size, seed, provider)[0]


@dataclass(frozen=True)
class OnnxCheck:
    """What the shipped ONNX graph accepts and how closely it computes what PyTorch does."""

    sides: InputSides
    difference: float  # largest absolute difference over the checked batches

    def input_text(self, num_classes: int) -> str:
        """The card's line on ``model.onnx``."""
        shape = (f"(N, 3, {self.sides.minimum}, {self.sides.minimum})" if self.sides.fixed else "(N, 3, H, W)")
        return (f"input `{ONNX_INPUT}` float32 {shape}, output `{ONNX_OUTPUT}` (N, {num_classes}), dynamic N; it "
                f"accepts {self.sides} (recorded in its metadata `{INPUT_SIDES_KEY}`); onnxruntime matches PyTorch to "
                f"{self.difference:.1e} (largest absolute difference on batches of 3"
                + ("" if self.sides.fixed else ", square and not") + ")")


def write_model_files(folder: Path, model: nn.Module, config: LITConfig, img_size: int,
                      provenance: dict[str, Any]) -> OnnxCheck:
    """timm's files and ``model.onnx`` for the CPU, eval-mode ``model`` in ``folder``; raises
    when the graph differs from PyTorch by more than ``ONNX_TOLERANCE`` (a graph that computes
    something else must not ship). A graph with dynamic sides is checked on a second,
    non-square input too."""
    save_timm_folder(model, config, folder, img_size, provenance)
    sides = export_onnx(model, folder / ONNX_FILE, img_size)
    checks = [onnx_agreement(model, folder / ONNX_FILE, img_size)]
    if not sides.fixed:
        checks.append(onnx_agreement(model, folder / ONNX_FILE, img_size, img_size + sides.multiple))
    difference, scale = max(d for d, _ in checks), max(s for _, s in checks)
    allowed = ONNX_TOLERANCE * max(1.0, scale)  # trained logits of 10-20 carry fp32 rounding of their size
    if not difference <= allowed:
        raise RuntimeError(f"the ONNX graph differs from PyTorch by {difference:.2e} (more than {allowed:.2g}, "
                           f"{ONNX_TOLERANCE:g} of the largest output); nothing was exported")
    return OnnxCheck(sides, difference)


@dataclass(frozen=True)
class Export:
    """What an export folder holds: the architecture, its input side and where it came from."""

    config: LITConfig
    img_size: int
    provenance: dict[str, Any]


def read_export(folder: str | Path, flag: str = "--model") -> Export:
    """The architecture and provenance of an export folder, or a one-line ValueError saying why it is not one."""
    path = Path(folder)
    expected = (f"expected a folder written by 'python -m search pick --export' or 'search train' "
                f"({CONFIG_FILE} with architecture {CUSTOM_ARCHITECTURE!r} and {WEIGHTS_FILE})")
    if not path.is_dir():
        raise ValueError(f"{flag} {str(folder)!r} is not a folder; {expected}")
    try:
        data = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{flag} {str(folder)!r} is not a model export ({CONFIG_FILE}: {error}); {expected}") from None
    architecture = data.get("architecture") if isinstance(data, dict) else None
    if architecture == CUSTOM_ARCHITECTURE:
        try:
            config = LITConfig.from_dict(data["model_args"]["lit_config"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{flag} {str(folder)!r} holds no valid LITConfig in its model arguments "
                             f"({error}); {expected}") from None
    elif architecture in NAMED_CONFIGS:
        config = NAMED_CONFIGS[architecture]
    else:
        raise ValueError(f"{flag} {str(folder)!r} is not a LIT-family export (architecture {architecture!r}); {expected}")
    if not (path / WEIGHTS_FILE).is_file():
        raise ValueError(f"{flag} {str(folder)!r} has no {WEIGHTS_FILE}; {expected}")
    input_size = (data.get("pretrained_cfg") or {}).get("input_size") or (3, 224, 224)
    return Export(config, int(input_size[-1]), dict(data.get(PROVENANCE_KEY) or {}))


def library_versions() -> dict[str, str]:
    """Versions of the libraries a deployed model depends on (for model cards and runs)."""
    import platform

    return {"python": platform.python_version(),
            **installed_versions(("torch", "timm", "onnx", "onnxruntime", "onnxscript", "litv2-search"))}
