"""Proxy training: a short, seeded training run that scores one architecture.

The recipe is DeiT/LITv2's in miniature (AdamW, per-step cosine schedule with linear
warm-up, label smoothing, gradient clipping) so that proxy rankings transfer to the full
recipe as far as a few epochs can. The same call on CPU gives the same accuracy, which
lets the search compare architectures rather than seeds. On CUDA it trains with autocast
(bf16, or fp16 with loss scaling), channels-last and pinned, non-blocking copies.
"""
from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from litv2 import LITConfig, build_model, count_params
from litv2.measure import autocast_dtype, resolve_device

from .data import DataBundle

GRAD_CLIP = 5.0


@dataclass(frozen=True)
class TrainResult:
    """Outcome of one proxy run.

    ``accuracy`` and ``epoch_accuracies`` are validation top-1 in percent (0-100); the last
    entry of ``epoch_accuracies`` equals ``accuracy``.
    """

    accuracy: float
    epoch_accuracies: tuple[float, ...]
    train_seconds: float
    epochs_run: int
    stopped_early: bool
    device: str
    params: int


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 on CUDA GPUs that support it, fp16 on older ones, fp32 on CPU."""
    if precision != "auto":
        autocast_dtype(precision)  # validates the name
        return precision
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; returns a generator for shuffling the data."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


class _Batches:
    """Mini-batches ``(images, labels)`` already on the device.

    Small in-memory ``TensorDataset``s (the embedded sets) are moved to the device once and
    sliced with index batches, which is far cheaper than a DataLoader per step; any other
    data set goes through a DataLoader (pinned memory and non-blocking copies on CUDA).
    """

    def __init__(self, dataset: Dataset, batch_size: int, device: torch.device, num_workers: int = 0) -> None:
        self.device = device
        self.batch_size = batch_size
        self.channels_last = device.type == "cuda"
        self.tensors = tuple(t.to(device) for t in dataset.tensors) if isinstance(dataset, TensorDataset) else None
        self.dataset = dataset
        self.num_workers = num_workers

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def __call__(self, generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass; shuffled with ``generator`` when given, in order otherwise."""
        if self.tensors is not None:
            count = len(self.tensors[0])
            order = torch.randperm(count, generator=generator) if generator is not None else torch.arange(count)
            for index in order.to(self.device).split(self.batch_size):
                yield self._layout(self.tensors[0][index]), self.tensors[1][index]
            return
        loader = DataLoader(
            self.dataset, batch_size=self.batch_size, shuffle=generator is not None, generator=generator,
            num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
        )
        for images, labels in loader:
            yield self._layout(images.to(self.device, non_blocking=True)), labels.to(self.device, non_blocking=True)

    def _layout(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    dtype = autocast_dtype(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


@torch.inference_mode()
def _accuracy(model: nn.Module, batches: _Batches, precision: str) -> float:
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=batches.device)  # summed on the device: one sync
    total = 0
    for images, labels in batches():
        with _autocast(batches.device, precision):
            logits = model(images)
        correct += (logits.argmax(dim=1) == labels).sum()
        total += labels.numel()
    model.train(was_training)
    return 100.0 * correct.item() / max(total, 1)


def evaluate(
    model: nn.Module, dataset: Dataset, batch_size: int = 256, device: str | None = None, precision: str = "auto"
) -> float:
    """Top-1 accuracy of ``model`` on ``dataset`` in percent (0-100)."""
    target = resolve_device(device)
    model.to(target)
    return _accuracy(model, _Batches(dataset, batch_size, target), resolve_precision(precision, target))


def train_proxy(
    config: LITConfig,
    data: DataBundle,
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    warmup_epochs: float = 1,
    label_smoothing: float = 0.1,
    seed: int = 0,
    device: str | None = None,
    precision: str = "auto",
    on_epoch: Callable[[int, float], bool | None] | None = None,
    num_threads: int | None = None,
    num_workers: int = 0,
) -> TrainResult:
    """Train a fresh ``config`` model on ``data.train`` and score it on ``data.val``.

    Args:
        epochs: passes over the training set (the proxy budget).
        warmup_epochs: linear warm-up length; may be fractional (the schedule is per step).
        seed: seeds weights, shuffling and stochastic depth: equal calls give equal results on CPU.
        device: ``"cuda"``, ``"cpu"`` or None for the best available.
        precision: ``auto`` (bf16/fp16 autocast on CUDA, fp32 on CPU), ``fp32``, ``bf16`` or ``fp16``.
        on_epoch: called as ``on_epoch(epoch, val_accuracy)`` after each epoch (epoch counts
            from 1, accuracy in percent); returning True stops training there. This is the
            hook for successive halving and pruners.
        num_threads: torch CPU threads for this run (restored afterwards); None leaves them.
        num_workers: DataLoader workers for on-disk data sets (the embedded ones need none).
    """
    if epochs < 1:
        raise ValueError(f"epochs={epochs} must be >= 1")
    target = resolve_device(device)
    precision = resolve_precision(precision, target)
    with _cpu_threads(num_threads):
        start = time.perf_counter()
        generator = seed_everything(seed)
        model = build_model(config, num_classes=data.num_classes, img_size=data.img_size, in_chans=data.in_chans)
        params = count_params(model)
        model.to(target)
        if target.type == "cuda":
            model.to(memory_format=torch.channels_last)
        train_batches = _Batches(data.train, batch_size, target, num_workers)
        val_batches = _Batches(data.val, batch_size * 2, target, num_workers)
        steps = len(train_batches)
        optimizer = create_optimizer_v2(model, "adamw", lr=lr, weight_decay=weight_decay)
        scheduler = CosineLRScheduler(
            optimizer, t_initial=epochs * steps, warmup_t=round(warmup_epochs * steps),
            warmup_lr_init=lr * 1e-2, lr_min=lr * 1e-2, t_in_epochs=False,
        )
        scaler = torch.amp.GradScaler(target.type, enabled=precision == "fp16")
        criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        accuracies: list[float] = []
        stopped = False
        model.train()
        for epoch in range(1, epochs + 1):
            for step, (images, labels) in enumerate(train_batches(generator), start=(epoch - 1) * steps + 1):
                with _autocast(target, precision):
                    loss = criterion(model(images), labels)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step_update(step)
            accuracies.append(_accuracy(model, val_batches, precision))
            if on_epoch is not None and on_epoch(epoch, accuracies[-1]):
                stopped = epoch < epochs  # a stop request after the last epoch cuts nothing short
                break
        return TrainResult(
            accuracy=accuracies[-1], epoch_accuracies=tuple(accuracies), train_seconds=time.perf_counter() - start,
            epochs_run=len(accuracies), stopped_early=stopped, device=str(target), params=params,
        )


@contextlib.contextmanager
def _cpu_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` torch CPU threads (unchanged when None), then restore."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
