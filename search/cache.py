"""Throughput cache keyed by (architecture id, target, measuring fingerprint), shared by every
study in a work dir.

A full-size network's speed on a target does not depend on the study that asked, so a
measurement is made once and reused. It does depend on the device model and on the library
versions that pick the kernels (torch, torchvision; CUDA and cuDNN on GPUs) and on the
protocol: these form the fingerprint (:func:`litv2.measure.device_fingerprint`), which is part
of the key, so a later run on another GPU model or another torch measures again instead of
reusing a wrong figure.

The driver does not necessarily run on the measuring device, so it passes the fingerprint
to :meth:`ThroughputCache.get` (ask the measuring process for it:
:func:`search.measuring.measuring_fingerprint`), while :meth:`ThroughputCache.put` reads it
from the result, which carries it. sqlite (safe for several driver processes); every call
opens, commits and closes its own connection.
"""
from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any, Mapping

from litv2.measure import fingerprint_of


def _key(fingerprint: Mapping[str, str]) -> str:
    return json.dumps(dict(fingerprint), sort_keys=True)


class ThroughputCache:
    def __init__(self, path: Path) -> None:
        self.path = path
        with closing(self._connect()) as db, db:
            # A new table: rows of the older (arch_id, target) cache carry no fingerprint, so
            # nothing says where they were measured; they are left unread.
            db.execute("CREATE TABLE IF NOT EXISTS measurements (arch_id TEXT, target TEXT, fingerprint TEXT, "
                       "result TEXT, PRIMARY KEY (arch_id, target, fingerprint))")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def get(self, arch_id: str, target: str, fingerprint: Mapping[str, str]) -> dict[str, Any] | None:
        """The result measured for ``arch_id`` on ``target`` under ``fingerprint``, if any."""
        with closing(self._connect()) as db:
            row = db.execute("SELECT result FROM measurements WHERE arch_id = ? AND target = ? AND fingerprint = ?",
                             (arch_id, target, _key(fingerprint))).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, arch_id: str, target: str, result: dict[str, Any]) -> None:
        """Store a :func:`search.measuring.measure_architecture` result under the fingerprint
        its ``measurement`` record carries."""
        fingerprint = fingerprint_of(result["measurement"])
        with closing(self._connect()) as db, db:
            db.execute("INSERT OR REPLACE INTO measurements VALUES (?, ?, ?, ?)",
                       (arch_id, target, _key(fingerprint), json.dumps(result)))
