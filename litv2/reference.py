"""The reference workload that CPU throughput figures are timed against, and where its
calibration is kept.

Measured on the project's 2-core VM (README, "Throughput that neighbours cannot move"), the
speed of one process's forwards drifts by 7-15 % over tens of seconds with the host's load,
on the thread's CPU clock too: what moves is the core's speed (shared caches, memory, clock
frequency), not the share of it the thread gets. A small LIT-family network timed in the
block right after each block of the measured network drifts with it (their ratio moved 2-3 %
where either figure moved 15 %); a matrix product or a single convolution tracked it far
less (6-12 %), since the network's speed at batch 1 is as much operator dispatch and memory
traffic as arithmetic. So a CPU figure is ``calibrated reference speed x median(network /
reference, block by block)``, and the reference's own speed is measured once per node and
setting (:class:`CalibrationStore`) so that every later figure on that node shares it.

Plain data and files here (no torch): :mod:`litv2.measure` times the reference.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Any, Mapping

from .config import LITConfig

REFERENCE_NAME = "lit-reference-32"
REFERENCE_CONFIG = LITConfig(
    embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 1, 8, 1), attention=(False, False, True, False),
    window_size=(0, 0, 2, 0), alpha=(0.0, 0.0, 0.6, 0.0), sr_ratio=(1, 1, 1, 1), merge="patch", drop_path_rate=0.0,
)
"""A tiny-space architecture (id af8acf5b9204): HiLo, ConvFFN and patch merging, about 8 ms a
batch-1 forward on one core, so a block of it is many calls long."""

CACHE_ENV = "LITV2_CACHE_DIR"


def cache_dir() -> Path:
    """``$LITV2_CACHE_DIR``, else ``$XDG_CACHE_HOME/litv2``, else ``~/.cache/litv2``: on the
    measuring node, since a calibration belongs to the machine it was made on."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "litv2"


def calibration_key(fingerprint: Mapping[str, str], setting: Mapping[str, Any]) -> dict[str, Any]:
    """What a calibration depends on: the node, its device and libraries, and every setting
    that changes the reference's kernels (batch, resolution, precision, threads, layout)."""
    return dict(host=socket.gethostname(), reference=REFERENCE_NAME, reference_config=REFERENCE_CONFIG.to_dict(),
                fingerprint=dict(fingerprint), **setting)


class CalibrationStore:
    """One JSON file per calibration key in a folder; the first writer wins.

    Two processes that calibrate at once both measure, but only the first file is kept
    (written under a temporary name, then hard-linked into place, which fails if the name
    exists): the loser reads and uses the winner's figure, so every figure on the node shares
    one calibration.
    """

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else cache_dir()

    def _path(self, key: Mapping[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(dict(key), sort_keys=True).encode()).hexdigest()[:20]
        return self.folder / f"reference-{digest}.json"

    def get(self, key: Mapping[str, Any]) -> dict[str, Any] | None:
        """The stored calibration of ``key``, or None (none yet, or a file that is not one)."""
        try:
            record = json.loads(self._path(key).read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and record.get("key") == dict(key) else None

    def put(self, key: Mapping[str, Any], record: Mapping[str, Any], replace: bool = False) -> dict[str, Any]:
        """Store ``record`` under ``key`` unless one is there already (``replace``: overwrite);
        returns the calibration now in force."""
        path = self._path(key)
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        stored = {**record, "key": dict(key)}
        partial.write_text(json.dumps(stored, indent=2))
        try:
            if replace:
                os.replace(partial, path)
                return stored
            try:
                os.link(partial, path)
            except FileExistsError:
                return self.get(key) or stored
            return stored
        finally:
            partial.unlink(missing_ok=True)

    def remove(self, key: Mapping[str, Any]) -> bool:
        """Forget the calibration of ``key`` (``litv2.bench calibrate --again``)."""
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            return False
        return True
