"""Benchmarks of the engine itself: the tabular benchmark and its replays (how far a budget
goes with each sampler and scheduler), and the orchestration overhead."""
from pathlib import Path

SHIPPED_TABLE = Path(__file__).with_name("bench-cpu.json.gz")
"""The tabular benchmark recorded on the project's CPU machine (``search bench-table``)."""
