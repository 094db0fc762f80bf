"""The CPU inference peak of a fresh process: a real figure, and a child that fails says why."""
import json
import multiprocessing
import os
import signal
import threading
import time
from types import SimpleNamespace

import pytest

from litv2 import LITConfig, memory
from litv2.memory import inference_peak_mb

TINY = LITConfig(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8))

linux_only = pytest.mark.skipif(not memory.STATUS.is_file(), reason="no /proc/self/status: no resident-set peak")


@linux_only
def test_the_peak_holds_the_weights_and_inputs_and_grows_with_the_batch(capfd):
    one, sixteen = inference_peak_mb(TINY, 1, 64), inference_peak_mb(TINY, 16, 64)
    for peak in (one, sixteen):
        assert peak.weights_mb > 1 and peak.threads == 1 and peak.calls == 3
        assert peak.peak_mb >= peak.weights_mb + peak.inputs_mb  # what has to be resident at once, at least
        assert peak.baseline_mb > 100  # the interpreter and torch: resident before, not in the figure
        assert json.loads(json.dumps(peak.to_dict())) == peak.to_dict()
    assert one.weights_mb == sixteen.weights_mb and sixteen.inputs_mb == 16 * one.inputs_mb
    assert sixteen.peak_mb > one.peak_mb + 15 * one.inputs_mb  # the activations grow with the batch too
    assert capfd.readouterr() == ("", "")


@linux_only
def test_a_failing_child_raises_in_one_line_and_prints_nothing(capfd):
    unknown_field = SimpleNamespace(to_json=lambda: '{"depth": 12}')  # fails in the child, before torch
    with pytest.raises(RuntimeError) as raised:
        inference_peak_mb(unknown_field, 1, 64)
    assert "\n" not in str(raised.value) and "ValueError: unknown LITConfig field 'depth'" in str(raised.value)
    assert capfd.readouterr() == ("", "")  # no traceback from the child


@linux_only
def test_a_killed_child_says_it_was_killed():
    outcome = {}

    def measure() -> None:
        try:
            inference_peak_mb(TINY, 1, 64)
        except RuntimeError as error:
            outcome["error"] = str(error)

    caller = threading.Thread(target=measure)
    caller.start()
    deadline = time.monotonic() + 30
    while not (children := [c for c in multiprocessing.active_children() if c.name == "litv2-inference-peak"]):
        assert time.monotonic() < deadline, "no child started"
        time.sleep(0.01)
    os.kill(children[0].pid, signal.SIGKILL)  # as the kernel's out-of-memory killer would
    caller.join(30)
    assert outcome["error"].endswith("was killed by SIGKILL (out of memory?) before its result")


def test_no_figure_where_the_system_has_no_peak(monkeypatch, tmp_path):
    monkeypatch.setattr(memory, "STATUS", tmp_path / "no-proc-status")
    assert inference_peak_mb(TINY, 1, 64) is None


def test_one_forward_is_too_few():
    with pytest.raises(ValueError, match="2 or more"):
        inference_peak_mb(TINY, 1, 64, calls=1)
