"""Validation top-1 of a full-size model: the one definition that ``search train`` reports after
every epoch and that ``search evaluate`` recomputes from an exported folder.

Both build the validation loader here, with timm's eval transforms (resize, centre crop at the
model's ``crop_pct``, the model's normalisation), so an export loaded with
``timm.create_model("local-dir:DIR", pretrained=True)`` and evaluated on the same split gives
the figure its card states.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .export import read_export
from ..training.common import autocast


def default_workers() -> int:
    """Loader processes per training process: up to 4, never more than the cores this process
    may use shared by the node's training processes (more only queue; PyTorch warns of them)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(4, cores // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))


def data_config(model: nn.Module, img_size: int) -> dict[str, Any]:
    """timm's data settings (interpolation, mean, std, crop_pct) for ``model`` at ``img_size``."""
    from timm.data import resolve_data_config

    return resolve_data_config({"input_size": (3, img_size, img_size)}, model=model)


def loader_options(config: dict[str, Any], workers: int, device: torch.device, distributed: bool) -> dict[str, Any]:
    """The options the training and the validation loaders share."""
    cuda = device.type == "cuda"
    return dict(input_size=config["input_size"], interpolation=config["interpolation"], mean=config["mean"],
                std=config["std"], num_workers=workers, distributed=distributed, pin_memory=cuda, device=device,
                use_prefetcher=cuda, persistent_workers=False)


def validation_loader(dataset: Any, config: dict[str, Any], batch_size: int, workers: int, device: torch.device,
                      distributed: bool = False) -> Any:
    """The validation split in timm's eval transforms."""
    from timm.data import create_loader

    return create_loader(dataset, batch_size=batch_size, is_training=False, crop_pct=config["crop_pct"],
                         **loader_options(config, workers, device, distributed))


@torch.no_grad()
def top1(model: nn.Module, loader: Any, device: torch.device, precision: str, distributed: bool = False) -> float:
    """Top-1 % of ``model`` over ``loader`` (summed over processes under DDP; a few samples may
    count twice there, as timm's ordered distributed sampler pads the last shard)."""
    model.eval()
    counts = torch.zeros(2, device=device)
    for images, targets in loader:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            logits = model(images)
        counts[0] += (logits.argmax(dim=1) == targets).sum()
        counts[1] += targets.numel()
    if distributed:
        dist.all_reduce(counts)
    return float(100.0 * counts[0] / counts[1].clamp(min=1))


@dataclass(frozen=True)
class Evaluation:
    """A validation top-1 and what it was computed on."""

    top1: float
    dataset: str
    images: int
    img_size: int
    seed: int


def evaluate_export(folder: str | Path, dataset: str, data_root: str | None = None, batch_size: int = 128,
                    workers: int | None = None) -> Evaluation:
    """Load ``folder`` as a user would (``timm.create_model("local-dir:...", pretrained=True)``)
    and compute its top-1 on the validation split its training used (the split is drawn from
    the training's seed, which the export records). One-line ValueErrors for bad input."""
    import timm

    import litv2  # noqa: F401 - registers the LIT architectures with timm

    from ..core.datasets import parse_dataset_spec
    from ..training.fulldata import load_training_data
    from ..training.proxy import resolve_precision

    if batch_size < 1:
        raise ValueError(f"--batch-size {batch_size} is invalid: expected a positive integer")
    if workers is not None and workers < 0:
        raise ValueError(f"--workers {workers} is invalid: expected 0 or more")
    export = read_export(folder)
    provenance = export.provenance
    seed = int(provenance.get("seed") or 0)  # a trained export's: its training's, which drew the split
    trained_on = provenance.get("trained_on")
    name = parse_dataset_spec(dataset).name
    if trained_on is not None and trained_on != name:
        raise ValueError(f"--dataset {dataset!r} is not what {str(folder)!r} was trained on ({trained_on!r}): its "
                         "validation split is that data set's")
    data = load_training_data(name, data_root, seed=seed)
    model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    if model.num_classes != data.num_classes:
        raise ValueError(f"--model {str(folder)!r} has {model.num_classes} classes and {name} has {data.num_classes}: "
                         "evaluate a model trained on it (search train's OUTPUT/model)")
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    loader = validation_loader(data.val, data_config(model, export.img_size), batch_size,
                               default_workers() if workers is None else workers, device)
    accuracy = top1(model.to(device), loader, device, resolve_precision("auto", device))
    return Evaluation(accuracy, name, len(data.val), export.img_size, seed)
