"""What proxy training and full-size training (:mod:`search.deploy.fulltrain`) share: seeding,
the RNG states a checkpoint carries, and the mixed-precision optimiser step.

Both resume bit for bit on the CPU only if they save and restore exactly the same streams and
step exactly the same way, so there is one definition of each here rather than two that could
drift apart.
"""
from __future__ import annotations

import contextlib
import random
from typing import Any

import numpy as np
import torch
from timm.utils import NativeScaler
from torch import nn

from litv2.measure import autocast_dtype


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators (numpy takes the seed modulo 2**32,
    the most it accepts)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """The global RNG states (python, numpy, torch CPU) and CUDA's: ``device``'s alone when
    given (one process per GPU), every GPU's when None (one process that may use any)."""
    state: dict[str, Any] = dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state())
    if device is None:
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
    elif device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore what :func:`rng_state` returned (called with the same ``device``). A CUDA state
    is skipped where there is no GPU to restore it to, so a GPU checkpoint resumes on a CPU."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" not in state:
        return
    if device is None:
        if torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
    elif device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """torch's autocast for a resolved ``precision`` (``fp32``: off)."""
    dtype = autocast_dtype(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


class LossScaler(NativeScaler):
    """timm's :class:`~timm.utils.NativeScaler` (scaled backward, clipping of the unscaled
    gradients, optimiser step, scale update), scaling the loss only for fp16.

    NativeScaler's own GradScaler is always enabled. Under bf16 or fp32 that would scale and
    inspect every gradient for nothing, and its state would not load from the checkpoints of a
    disabled one (their scaler state is empty), so ``__init__`` builds the scaler itself: a
    disabled GradScaler passes loss and step straight through.
    """

    def __init__(self, device: torch.device, precision: str) -> None:
        # Not super().__init__(): it would build the always-enabled scaler this one replaces.
        self._scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def training_step(net: nn.Module, criterion: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                  optimizer: torch.optim.Optimizer, scaler: LossScaler, precision: str,
                  clip_grad: float) -> torch.Tensor:
    """One optimiser step: ``criterion(net(images), targets)`` under autocast, then the scaled
    backward with the gradients' norm clipped to ``clip_grad``. Returns the loss (unscaled,
    still on the device: reading it waits for the device, so the caller decides when)."""
    with autocast(images.device, precision):
        loss = criterion(net(images), targets)
    optimizer.zero_grad(set_to_none=True)
    scaler(loss, optimizer, clip_grad=clip_grad, clip_mode="norm", parameters=net.parameters())
    return loss
