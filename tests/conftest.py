"""Shared test settings: quiet, offline, deterministic."""
import collections
import os
import tempfile

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Reference calibrations (litv2.reference) go to a folder of this test run, not the user's cache:
# shared by the xdist workers of one run (the store's first writer wins), inherited by the Ray
# workers and subprocesses the tests start.
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID")
os.environ.setdefault("LITV2_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"litv2-cache-{_RUN}") if _RUN
                      else tempfile.mkdtemp(prefix="litv2-cache-"))


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
    module's tests together (its module fixtures, a Ray instance or a shared search, are set up
    once per xdist worker that runs them). xdist hands each worker a run of consecutive tests and
    ``--dist=worksteal`` lets an idle worker take queued ones from a busy one: the workers start
    on the long searches and end on quick unit tests, instead of one finishing alone."""
    slow = collections.Counter(item.module.__name__ for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.module.__name__])  # stable: a module's own order is kept
