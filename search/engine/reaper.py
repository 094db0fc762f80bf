"""The local Ray a driver starts dies with the driver, however the driver dies.

``ray.init()`` without an address starts a one-machine cluster as children of the driver
(GCS, raylet, dashboard, log monitor) and the raylet's own children (workers, the dashboard
and runtime-env agents). Ray ties the first ones to the driver's life, but after a SIGKILL
of the driver the agents outlive it, orphaned, for good (they hang trying to report the
raylet's death to the dead GCS). So the driver starts a watchdog, ``python -m
search.engine.reaper``, in its own session: it holds the read end of a pipe whose write end only
the driver has, and every couple of seconds it notes the processes descending from the
ones ``ray.init`` started (with their start times, so a reused pid is never mistaken for
one of them). When the pipe closes - the driver exited or was killed, the kernel closes it
either way - it kills what is left of them and exits.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

SNAPSHOT_SECONDS = 2.0
_HELD_OPEN: list[int] = []  # the pipe's write end, open for the driver's life


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process, None if it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else (int(fields[1]), int(fields[19]))


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot); None if it is gone, a zombie, or
    there is no /proc to ask. With the pid it names one process for the life of a boot."""
    info = _stat(pid)
    return None if info is None else info[1]


def processes() -> dict[int, tuple[int, int]]:
    """Every live process: pid -> (parent pid, start time)."""
    out: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if entry.isdigit() and (info := _stat(int(entry))) is not None:
            out[int(entry)] = info
    return out


def descendants(roots: list[int], table: dict[int, tuple[int, int]] | None = None) -> dict[int, int]:
    """``roots`` and every process below them: pid -> start time."""
    table = processes() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, todo = {}, [r for r in roots if r in table]
    while todo:
        pid = todo.pop()
        found[pid] = table[pid][1]
        todo.extend(children.get(pid, []))
    return found


def still_running(snapshot: dict[int, int]) -> list[int]:
    """The processes of ``snapshot`` that are alive and are still the same processes."""
    return [pid for pid, started in snapshot.items() if (info := _stat(pid)) is not None and info[1] == started]


def children_of(pid: int) -> set[int]:
    return {child for child, (parent, _) in processes().items() if parent == pid}


def guard(started_by_ray: set[int]) -> subprocess.Popen | None:
    """Start the watchdog over ``started_by_ray`` (the driver's children that ``ray.init``
    made); it lives as long as this process. None where /proc is not there to watch."""
    if not started_by_ray or not Path("/proc/self/stat").exists():
        return None
    read_end, write_end = os.pipe()
    watchdog = subprocess.Popen(
        [sys.executable, "-m", "search.engine.reaper", *map(str, sorted(started_by_ray))], stdin=read_end,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True,
    )
    os.close(read_end)
    os.set_inheritable(write_end, False)  # only this process holds it: it closes when this process ends
    _HELD_OPEN.append(write_end)
    return watchdog


def watch(roots: list[int], pipe: int = 0) -> None:
    """Snapshot the processes below ``roots`` until ``pipe`` closes, then kill what is left."""
    snapshot = descendants(roots)
    while True:
        readable, _, _ = select.select([pipe], [], [], SNAPSHOT_SECONDS)
        if readable and not os.read(pipe, 1024):
            break
        snapshot.update(descendants(still_running(snapshot)))
    for pid in still_running(snapshot):
        if pid != os.getpid():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


if __name__ == "__main__":
    watch([int(pid) for pid in sys.argv[1:]])
