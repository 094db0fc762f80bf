"""Shared test settings: quiet, offline, deterministic."""
import collections
import os

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="module")
def one_thread():
    """Small models and tiny ops: on a shared machine a second OpenMP thread only waits for its core."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    """Modules with slow (multi-process) tests first, the one with the most of them first, each
    module's tests together (its Ray is set up once per xdist worker that runs them). Note that
    xdist's default ``load`` scheduling hands each worker a run of consecutive tests, so on two
    workers this puts nearly every slow test on one of them (measured: 1,094 s against 303 s);
    issue 14's branch ``ci`` moves to ``--dist=worksteal``."""
    slow = collections.Counter(item.module.__name__ for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.module.__name__])  # stable: a module's own order is kept
