"""Throughput cache keyed by (architecture id, target), shared by every study in a work dir.

A full-size network's speed on a target does not depend on the study that asked, so a
measurement is made once and reused (sqlite: safe for several driver processes).
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any


class ThroughputCache:
    def __init__(self, path: Path) -> None:
        self.path = path
        with self._connect() as db:
            db.execute("CREATE TABLE IF NOT EXISTS throughput (arch_id TEXT, target TEXT, result TEXT, "
                       "PRIMARY KEY (arch_id, target))")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def get(self, arch_id: str, target: str) -> dict[str, Any] | None:
        with self._connect() as db:
            row = db.execute("SELECT result FROM throughput WHERE arch_id = ? AND target = ?", (arch_id, target)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, arch_id: str, target: str, result: dict[str, Any]) -> None:
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO throughput VALUES (?, ?, ?)", (arch_id, target, json.dumps(result)))
