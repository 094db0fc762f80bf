"""The small helpers several layers share: atomic file writes, the thread-count guard, package
versions, and training's RNG states and mixed-precision step."""
import random

import numpy as np
import pytest
import torch
from torch import nn

from litv2.measure import torch_threads
from litv2.files import atomic_write, atomic_write_text
from search.core.versions import installed_versions
from search.training.common import LossScaler, rng_state, seed_everything, set_rng_state, training_step


def test_an_atomic_write_replaces_the_whole_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "new" / "table.md"
    assert atomic_write_text(path, "first\n") == path  # the folder is made
    atomic_write_text(path, "second\n")
    assert path.read_text() == "second\n"
    assert [p.name for p in path.parent.iterdir()] == ["table.md"]


def test_a_write_that_fails_midway_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "state.pt"
    path.write_text("old")

    def half_then_fail(partial):
        partial.write_text("half a fi")
        raise KeyboardInterrupt  # Ctrl-C too

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_the_temporary_name_keeps_the_suffix_for_writers_that_choose_the_format_by_it(tmp_path):
    seen = []
    atomic_write(tmp_path / "plot.png", lambda partial: (seen.append(partial.name), partial.write_bytes(b"png")))
    assert seen[0].endswith(".png") and seen[0].startswith(".")
    assert (tmp_path / "plot.png").read_bytes() == b"png"


def test_torch_threads_sets_the_count_and_restores_it_even_on_an_exception():
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    with torch_threads(other):
        assert torch.get_num_threads() == other
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads():
        torch.set_num_threads(other)  # code inside changes it ...
        raise RuntimeError("measurement failed")
    assert torch.get_num_threads() == before  # ... and the caller gets its own back


def test_installed_versions_names_missing_packages_not_installed():
    versions = installed_versions(["torch", "no-such-package-litv2-search-test"])
    assert list(versions) == ["torch", "no-such-package-litv2-search-test"]
    assert versions["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert versions["no-such-package-litv2-search-test"] == "not installed"


def _draws():
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_a_restored_rng_state_replays_every_stream():
    seed_everything(3)
    first = _draws()
    seed_everything(3)
    assert _draws() == first
    state = rng_state(torch.device("cpu"))
    expected = _draws()
    seed_everything(99)
    set_rng_state(state, torch.device("cpu"))
    assert _draws() == expected
    seed_everything(2**32 + 3)  # numpy takes the seed modulo 2**32 rather than refusing it
    wide = float(np.random.rand())
    np.random.seed(3)
    assert wide == float(np.random.rand())


def test_the_cpu_training_step_has_no_loss_scaling_and_clips_the_gradients():
    torch.manual_seed(0)
    net = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
    scaler = LossScaler(torch.device("cpu"), "fp32")
    assert scaler.state_dict() == {}  # what checkpoints of fp32 and bf16 runs have always stored
    scaler.load_state_dict({})
    images, targets = torch.randn(8, 4) * 100, torch.randint(0, 3, (8,))
    before = [p.detach().clone() for p in net.parameters()]
    loss = training_step(net, nn.CrossEntropyLoss(), images, targets, optimizer, scaler, "fp32", clip_grad=0.5)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    step = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, net.parameters())])
    assert step.norm() == pytest.approx(0.5, rel=1e-4)  # lr 1: the step is the clipped gradient
    bf16 = training_step(net, nn.CrossEntropyLoss(), images, targets, optimizer, LossScaler(torch.device("cpu"), "bf16"),
                         "bf16", clip_grad=5.0)
    assert torch.isfinite(bf16)


def test_fp16_scales_the_loss_and_keeps_its_scale_in_the_state():
    scaler = LossScaler(torch.device("cpu"), "fp16")
    assert scaler.state_dict()["scale"] == 2.0**16
