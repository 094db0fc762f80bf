"""Proxy trainers for the fault tests: real training on a slice of the data, with faults.

The Ray workers of ``tests/test_search_faults.py`` import this module (the test puts this
folder on their PYTHONPATH), as a search's ``trainer`` setting names it.
"""
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from search.training.proxy import train_proxy

TRAIN_IMAGES = 384  # a slice of digits: an epoch in a second or two on one core
STALL_SECONDS = 120


def _slice(data):
    images, labels = data.train.tensors
    return replace(data, train=TensorDataset(images[:TRAIN_IMAGES], labels[:TRAIN_IMAGES]))


def small_train(config, data, **options):
    return train_proxy(config, _slice(data), **options)


def faulty_train(config, data, **options):
    """HiLo at alpha 0.9 with token merging diverges for real (learning rate 1e12); alpha 0
    with patch merging meets an out-of-memory error as CUDA raises it (injected: no GPU here);
    the other architectures train."""
    if config.merge == "dtm" and config.alpha[2] == 0.9:
        return train_proxy(config, _slice(data), lr=1e12, **options)
    if config.merge == "patch" and config.alpha[2] == 0.0:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")
    return small_train(config, data, **options)


def logged_train(config, data, *, checkpoint, start_epoch=0, stop_epoch=None, **options):
    """Notes each rung it starts (``FROM-TO`` in CHECKPOINT.rungs) before training it; the first
    attempt at a second rung then waits to be killed with its node (a rung of 384 images can
    end before the node is gone), the retry trains."""
    log = Path(f"{checkpoint}.rungs")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as handle:
        handle.write(f"{start_epoch}-{stop_epoch}\n")
    if start_epoch > 0 and log.read_text().split().count(f"{start_epoch}-{stop_epoch}") == 1:
        time.sleep(STALL_SECONDS)
        raise RuntimeError(f"the node was not killed within {STALL_SECONDS} s")
    return small_train(config, data, checkpoint=checkpoint, start_epoch=start_epoch, stop_epoch=stop_epoch, **options)
