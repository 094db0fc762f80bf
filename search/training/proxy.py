"""Proxy training: a short, seeded training run that scores one architecture.

The recipe is DeiT/LITv2's in miniature (AdamW, per-step cosine schedule with linear
warm-up, label smoothing, gradient clipping) so that proxy rankings transfer to the full
recipe as far as a few epochs can. The same call on CPU gives the same accuracy, which
lets the search compare architectures rather than seeds. On CUDA it trains with autocast
(bf16, or fp16 with loss scaling), channels-last and pinned, non-blocking copies.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from litv2 import LITConfig, build_model, count_params
from litv2.files import atomic_write
from litv2.measure import autocast_dtype, resolve_device, torch_threads

from .common import LossScaler, autocast, rng_state, seed_everything, set_rng_state, training_step
from .data import DataBundle
from ..core.faults import NonFiniteLoss

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
    checkpoint_seconds: float = 0.0


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 on CUDA GPUs that support it, fp16 on older ones, fp32 on CPU."""
    if precision != "auto":
        autocast_dtype(precision)  # validates the name
        return precision
    if device.type != "cuda":
        return "fp32"
    # Native bf16 needs compute capability 8.0 (Ampere); V100 and T4 report bf16 "support"
    # through emulation, without tensor cores: fp16 with loss scaling is the fast choice there.
    return "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp16"


class _Batches:
    """Mini-batches ``(images, labels)`` already on the device.

    Small in-memory ``TensorDataset``s (the embedded sets) are moved to the device once and
    sliced with index batches, which is far cheaper than a DataLoader per step; any other
    data set goes through a DataLoader (pinned memory and non-blocking copies on CUDA).
    """

    def __init__(self, dataset: Dataset, batch_size: int, device: torch.device, num_workers: int = 0,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.device = device
        self.batch_size = batch_size
        self.channels_last = device.type == "cuda"
        self.tensors = tuple(t.to(device) for t in dataset.tensors) if isinstance(dataset, TensorDataset) else None
        self.transform = transform
        self.dataset = dataset
        self.num_workers = num_workers
        self._loaders: dict[bool, DataLoader] = {}

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def __call__(self, generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass; shuffled with ``generator`` when given, in order otherwise."""
        if self.tensors is not None:
            count = len(self.tensors[0])
            order = torch.randperm(count, generator=generator) if generator is not None else torch.arange(count)
            for index in order.to(self.device).split(self.batch_size):
                images = self.tensors[0][index]
                yield self._layout(self.transform(images) if self.transform else images), self.tensors[1][index]
            return
        for images, labels in self._loader(generator):
            yield self._layout(images.to(self.device, non_blocking=True)), labels.to(self.device, non_blocking=True)

    def _loader(self, generator: torch.Generator | None) -> DataLoader:
        """One DataLoader per order kind, built once: its decoding workers persist across epochs
        (rebuilding it every epoch restarts them). The shuffling generator is the caller's, so
        a restored generator state replays the same order."""
        shuffle = generator is not None
        if shuffle not in self._loaders:
            self._loaders[shuffle] = DataLoader(
                self.dataset, batch_size=self.batch_size, shuffle=shuffle, generator=generator,
                num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
                persistent_workers=self.num_workers > 0,
            )
        return self._loaders[shuffle]

    def _layout(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images


@torch.inference_mode()
def _accuracy(model: nn.Module, batches: _Batches, precision: str) -> float:
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=batches.device)  # summed on the device: one sync
    total = 0
    for images, labels in batches():
        with autocast(batches.device, precision):
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
    start_epoch: int = 0,
    stop_epoch: int | None = None,
    checkpoint: str | Path | None = None,
) -> TrainResult:
    """Train a fresh ``config`` model on ``data.train`` and score it on ``data.val``.

    Args:
        epochs: passes over the training set (the proxy budget).
        warmup_epochs: linear warm-up length; may be fractional (the schedule is per step).
        seed: seeds weights, shuffling and stochastic depth: equal calls give equal results on CPU.
            On CUDA they agree only to run-to-run noise: the backward kernels of attention,
            deformable convolution and relative-position bias accumulate with atomics.
        device: ``"cuda"``, ``"cpu"`` or None for the best available.
        precision: ``auto`` (bf16/fp16 autocast on CUDA, fp32 on CPU), ``fp32``, ``bf16`` or ``fp16``.
        on_epoch: called as ``on_epoch(epoch, val_accuracy)`` after each epoch (epoch counts
            from 1, accuracy in percent); returning True stops training there. This is the
            hook for successive halving and pruners.
        num_threads: torch CPU threads for this run (restored afterwards); None leaves them.
        num_workers: DataLoader workers for on-disk data sets (the embedded ones need none).
        start_epoch, stop_epoch: train only epochs ``start_epoch+1 .. stop_epoch`` of the
            ``epochs``-long schedule (successive halving's rungs). ``start_epoch > 0`` resumes
            from ``checkpoint``; a run that stops before ``epochs`` writes ``checkpoint``.
            The learning-rate schedule always spans ``epochs``, and the checkpoint holds the
            weights, optimiser, scheduler, loss scaler, every RNG and the data order, so 0->3
            then 3->9 trains the same model as 0->9.
        checkpoint: file for the rung state (written to a temporary name, then renamed).

    Raises :class:`search.core.faults.NonFiniteLoss` after an epoch whose loss was NaN or infinite.
    """
    stop_epoch = epochs if stop_epoch is None else stop_epoch
    if epochs < 1:
        raise ValueError(f"epochs={epochs} must be >= 1")
    if not 0 <= start_epoch < stop_epoch <= epochs:
        raise ValueError(f"epochs {start_epoch}->{stop_epoch} are not a span of the {epochs}-epoch schedule")
    if checkpoint is None and (start_epoch > 0 or stop_epoch < epochs):
        raise ValueError("training part of the schedule needs a checkpoint file")
    target = resolve_device(device)
    precision = resolve_precision(precision, target)
    with torch_threads(num_threads):
        start = time.perf_counter()
        seed_everything(seed)
        generator = torch.Generator().manual_seed(seed)  # the data order, saved with the rung
        model = build_model(config, num_classes=data.num_classes, img_size=data.img_size, in_chans=data.in_chans)
        params = count_params(model)
        model.to(target)
        if target.type == "cuda":
            model.to(memory_format=torch.channels_last)
        train_batches = _Batches(data.train, batch_size, target, num_workers, data.batch_transform)
        val_batches = _Batches(data.val, batch_size * 2, target, num_workers, data.batch_transform)
        steps = len(train_batches)
        optimizer = create_optimizer_v2(model, "adamw", lr=lr, weight_decay=weight_decay)
        scheduler = CosineLRScheduler(
            optimizer, t_initial=epochs * steps, warmup_t=round(warmup_epochs * steps),
            warmup_lr_init=lr * 1e-2, lr_min=lr * 1e-2, t_in_epochs=False,
        )
        scaler = LossScaler(target, precision)
        criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        accuracies: list[float] = []
        checkpoint_seconds = 0.0
        if start_epoch > 0:
            tic = time.perf_counter()
            accuracies = _load_state(Path(checkpoint), start_epoch, model, optimizer, scheduler, scaler, generator)
            checkpoint_seconds += time.perf_counter() - tic
        stopped = False
        model.train()
        for epoch in range(start_epoch + 1, stop_epoch + 1):
            # Checked once per epoch, on the device: a check per step would synchronise every step.
            finite = torch.ones((), dtype=torch.bool, device=target)
            for step, (images, labels) in enumerate(train_batches(generator), start=(epoch - 1) * steps + 1):
                loss = training_step(model, criterion, images, labels, optimizer, scaler, precision, GRAD_CLIP)
                finite &= torch.isfinite(loss.detach())
                scheduler.step_update(step)
            if not finite.item():
                raise NonFiniteLoss(f"non-finite loss in epoch {epoch} of {epochs}: the training diverged")
            accuracies.append(_accuracy(model, val_batches, precision))
            if on_epoch is not None and on_epoch(epoch, accuracies[-1]):
                stopped = epoch < stop_epoch  # a stop request after the last epoch cuts nothing short
                break
        if stop_epoch < epochs and not stopped:
            tic = time.perf_counter()
            _save_state(Path(checkpoint), stop_epoch, accuracies, model, optimizer, scheduler, scaler, generator)
            checkpoint_seconds += time.perf_counter() - tic
        return TrainResult(
            accuracy=accuracies[-1], epoch_accuracies=tuple(accuracies), train_seconds=time.perf_counter() - start,
            epochs_run=len(accuracies), stopped_early=stopped, device=str(target), params=params,
            checkpoint_seconds=checkpoint_seconds,
        )


def _save_state(path: Path, epoch: int, accuracies: list[float], model: nn.Module, optimizer, scheduler, scaler,
                generator: torch.Generator) -> None:
    """Everything the next rung needs to continue as if never stopped, written atomically.
    Every GPU's RNG state is kept: the process may train on any of them."""
    state = dict(epoch=epoch, accuracies=list(accuracies), model=model.state_dict(), optimizer=optimizer.state_dict(),
                 scheduler=scheduler.state_dict(), scaler=scaler.state_dict(),
                 rng=dict(rng_state(), data_order=generator.get_state()))
    atomic_write(path, lambda partial: torch.save(state, partial))


RUNG_STATE_KEYS = {"epoch", "accuracies", "model", "optimizer", "scheduler", "scaler", "rng"}


def _load_state(path: Path, epoch: int, model: nn.Module, optimizer, scheduler, scaler,
                generator: torch.Generator) -> list[float]:
    if not path.is_file():
        raise FileNotFoundError(f"no rung checkpoint at {path} to resume epoch {epoch} from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        why = None if isinstance(state, dict) and RUNG_STATE_KEYS <= state.keys() else "not a rung checkpoint"
    except Exception as error:  # noqa: BLE001 - torch.load raises whatever its unpickler meets
        why = f"{type(error).__name__}: {str(error)[:200]}"
    if why is not None:
        raise ValueError(f"rung checkpoint {path} is damaged ({why}); delete it to train this trial from epoch 0")
    if state["epoch"] != epoch:
        raise ValueError(f"checkpoint {path} is at epoch {state['epoch']}, not {epoch}")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    generator.set_state(state["rng"]["data_order"])
    return list(state["accuracies"])
