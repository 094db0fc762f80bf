"""Joining a running Ray cluster (``--address``), and saying in one line why it failed.

Ray 2.60 clusters started with ``RAY_AUTH_MODE=token`` (every ``ray start --head`` that
generated a token) answer only drivers that send the cluster's token. A driver without it
retries for about 20 s, prints a ``gcs_client.cc ... InvalidAuthToken`` line per attempt
from Ray's C++ core, and raises ``ConnectionError: Failed to connect to Ray cluster``, which
names no cause. :func:`join_cluster` keeps those lines in the work directory's log and turns
the failure into one line naming what to set.
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Iterator

TOKEN_HELP = ("export RAY_AUTH_MODE=token and the cluster's token on the driver (RAY_AUTH_TOKEN, or the file "
              "~/.ray/auth_token; 'ray get-auth-token' on the head prints it)")


def join_cluster(address: str, log: Path) -> None:
    """``ray.init(address=...)`` with Ray's own stderr lines kept in ``log``; a cluster that
    cannot be joined is a one-line ValueError (the token it wants, or what Ray said last)."""
    import ray

    with _stderr_to(log) as start:
        try:
            ray.init(address=address, log_to_driver=False)
        except ConnectionError as error:
            said = _read_from(log, start)
            if "InvalidAuthToken" in said or "Unauthenticated" in said:
                mode = os.environ.get("RAY_AUTH_MODE", "disabled")
                raise ValueError(f"the Ray cluster at {address} refused this driver's token (RAY_AUTH_MODE is "
                                 f"{mode!r} here): {TOKEN_HELP}") from None
            raise ValueError(f"cannot join the Ray cluster at {address}: {error} (Ray's lines are in {log})") from None


@contextlib.contextmanager
def _stderr_to(log: Path) -> Iterator[int]:
    """File descriptor 2 (where Ray's C++ core writes) appended to ``log`` for the block;
    yields the log's size before it, where this block's lines begin."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(log, "ab") as file:
        start = file.tell()
        os.dup2(file.fileno(), 2)
        try:
            yield start
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _read_from(log: Path, start: int) -> str:
    with open(log, "rb") as file:
        file.seek(start)
        return file.read().decode("utf-8", "replace")
