"""One driver per study: a lease stored on the study, kept alive by a heartbeat.

Two drivers on one study would tell each other's trials and train architectures twice, so
a driver takes the lease before it touches anything and refuses if another live driver
holds it. A driver that died stops beating: once its heartbeat is older than ``ttl``, the
lease is free and ``search resume`` takes it over. A driver on this machine (same host name
and boot) is known alive or dead from its process (pid and start time, so a reused pid is
not mistaken for it): a resume after a crash here does not wait out the ``ttl``, and a
driver that is alive here but stalled (stopped with Ctrl-Z) is never taken over. The last heartbeat also tells resume
until when the dead driver's jobs were running (their cost is charged to the budget).
"""
from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import optuna

from ..core.errors import UsageError
from .reaper import process_start

LEASE_ATTR = "driver_lease"
HEARTBEAT_SECONDS = 5.0
TTL_SECONDS = 30.0


class LeaseHeld(RuntimeError, UsageError):
    """Another live driver holds the study (the user's to resolve: exit 2)."""


class Lease:
    def __init__(self, study: optuna.Study, heartbeat: float = HEARTBEAT_SECONDS, ttl: float = TTL_SECONDS) -> None:
        self.study = study
        self.heartbeat = heartbeat
        self.ttl = ttl
        self.id = uuid.uuid4().hex
        self.previous: dict[str, Any] | None = None  # the lease this one took over, if any
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> dict[str, Any]:
        return dict(id=self.id, host=socket.gethostname(), boot=_boot_id(), pid=os.getpid(),
                    started=process_start(os.getpid()), heartbeat=time.time())

    def acquire(self) -> None:
        held = self.study.user_attrs.get(LEASE_ATTR)
        if held and held.get("id") != self.id:
            age = time.time() - held["heartbeat"]
            alive = _alive_here(held)
            if alive or (alive is None and age < self.ttl):
                raise LeaseHeld(
                    f"study {self.study.study_name!r} is being run by another driver (pid {held['pid']} on "
                    f"{held['host']}, heartbeat {age:.0f} s ago); stop it first, or wait {self.ttl:.0f} s after it died"
                )
            self.previous = held
        self.study.set_user_attr(LEASE_ATTR, self._record())
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                self.study.set_user_attr(LEASE_ATTR, self._record())
            except Exception:  # noqa: BLE001 - a storage hiccup must not kill the driver; the next beat retries
                continue

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.study.set_user_attr(LEASE_ATTR, None)

    def __enter__(self) -> "Lease":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _boot_id() -> str | None:
    """This boot of this machine (Linux), so a pid is only compared within the boot that made it."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _alive_here(held: dict[str, Any]) -> bool | None:
    """Whether the lease's driver process lives, if it ran on this machine in this boot; None
    if that cannot be known here (another machine: only its heartbeat tells)."""
    here = held.get("host") == socket.gethostname() and held.get("boot") is not None and held["boot"] == _boot_id()
    if not here or held.get("started") is None:
        return None
    return process_start(held["pid"]) == held["started"]
