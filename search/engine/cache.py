"""Caches shared by every study in a work dir: throughput by (architecture id, target,
measuring fingerprint), params/FLOPs by (architecture id, resolution), and finished proxy
trainings by (architecture id, data set, epochs, seed).

A measurement depends on the device model and on the library versions that pick the
kernels (torch, torchvision; CUDA and cuDNN on GPUs): these form the fingerprint
(:func:`litv2.measure.device_fingerprint`, asked of a measuring node:
:func:`search.engine.measuring.measuring_fingerprint`), which is part of the key, so a later run on
another GPU model or another torch measures again instead of reusing a wrong figure. Rows of
the older (arch_id, target) table carry no fingerprint and are left unread.

A full-size network's speed on a target and its size do not depend on the study that
asked, and a seeded proxy training is a function of its architecture, data, epochs and seed,
so each is computed once and reused - an ablation table run again, or a row shared by two
tables, trains nothing (sqlite: safe for several driver processes). Every call opens and
closes its own connection.
"""
from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any, Iterator, Mapping


def _measured_key(target: str, fingerprint: Mapping[str, str]) -> str:
    return f"{target}|{json.dumps(dict(fingerprint), sort_keys=True)}"


CACHE_FILE = "throughput_cache.db"  # its name in a work directory


class ThroughputCache:
    def __init__(self, path: Path) -> None:
        self.path = path
        with self._db() as db:
            db.execute("CREATE TABLE IF NOT EXISTS measurements (arch_id TEXT, target TEXT, result TEXT, "
                       "PRIMARY KEY (arch_id, target))")
            db.execute("CREATE TABLE IF NOT EXISTS figures (arch_id TEXT, img_size INTEGER, result TEXT, "
                       "PRIMARY KEY (arch_id, img_size))")
            db.execute("CREATE TABLE IF NOT EXISTS trainings (arch_id TEXT, recipe TEXT, result TEXT, "
                       "PRIMARY KEY (arch_id, recipe))")
            db.execute("CREATE TABLE IF NOT EXISTS memory (arch_id TEXT, target TEXT, result TEXT, "
                       "PRIMARY KEY (arch_id, target))")

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """A connection that commits on success and is always closed (``with sqlite3.connect``
        alone commits but leaves the connection open)."""
        with contextlib.closing(sqlite3.connect(self.path, timeout=30)) as db, db:
            yield db

    def _get(self, table: str, column: str, arch_id: str, key: object) -> dict[str, Any] | None:
        with self._db() as db:
            row = db.execute(f"SELECT result FROM {table} WHERE arch_id = ? AND {column} = ?", (arch_id, key)).fetchone()
        return json.loads(row[0]) if row else None

    def _put(self, table: str, arch_id: str, key: object, result: dict[str, Any]) -> None:
        with self._db() as db:
            db.execute(f"INSERT OR REPLACE INTO {table} VALUES (?, ?, ?)", (arch_id, key, json.dumps(result)))

    def get(self, arch_id: str, target: str, fingerprint: Mapping[str, str]) -> dict[str, Any] | None:
        """The measurement of ``arch_id`` on ``target`` under ``fingerprint``, if one was made."""
        return self._get("measurements", "target", arch_id, _measured_key(target, fingerprint))

    def put(self, arch_id: str, target: str, result: dict[str, Any]) -> None:
        """Store a :func:`search.engine.measuring.measure_architecture` result under the fingerprint
        its ``measurement`` record carries (where it really ran)."""
        from litv2.measure import fingerprint_of

        self._put("measurements", arch_id, _measured_key(target, fingerprint_of(result["measurement"])), result)

    def get_figures(self, arch_id: str, img_size: int) -> dict[str, Any] | None:
        """Params and FLOPs of ``arch_id`` at ``img_size``, if they were counted."""
        return self._get("figures", "img_size", arch_id, img_size)

    def put_figures(self, arch_id: str, img_size: int, figures: dict[str, Any]) -> None:
        self._put("figures", arch_id, img_size, figures)

    def get_memory(self, arch_id: str, target: str) -> dict[str, Any] | None:
        """The peak memory an inference of ``arch_id`` needs on ``target``, if it was measured."""
        return self._get("memory", "target", arch_id, target)

    def put_memory(self, arch_id: str, target: str, figures: dict[str, Any]) -> None:
        self._put("memory", arch_id, target, figures)

    def get_training(self, arch_id: str, recipe: str) -> dict[str, Any] | None:
        """A finished full-fidelity training of ``arch_id`` under ``recipe`` (data set, epochs, seed)."""
        return self._get("trainings", "recipe", arch_id, recipe)

    def put_training(self, arch_id: str, recipe: str, result: dict[str, Any]) -> None:
        self._put("trainings", arch_id, recipe, result)
