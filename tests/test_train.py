"""Proxy training on the embedded digits with tiny models: learning, determinism, early stop, eval."""
import functools

import pytest
import torch
from torch import nn
from torch.utils.data import Subset

from litv2 import LITConfig, build_model
from search.training.data import load_dataset
from search.training.proxy import TrainResult, evaluate, resolve_precision, train_proxy

TINY = LITConfig(
    embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), window_size=(0, 0, 2, 1),
    merge="patch", drop_path_rate=0.1,
)
# One thread: on a small shared CPU, two threads mostly wait on each other.
train = functools.partial(train_proxy, TINY, num_threads=1)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_proxy_learns_and_reports(digits):
    calls = []
    result = train(digits, epochs=2, batch_size=64, lr=2e-3, warmup_epochs=0.5, seed=0,
                   on_epoch=lambda epoch, acc: calls.append((epoch, acc)))
    assert isinstance(result, TrainResult)
    assert result.accuracy > 50  # percent; chance is 10
    assert [epoch for epoch, _ in calls] == [1, 2]
    assert result.epoch_accuracies == tuple(acc for _, acc in calls) and result.accuracy == calls[-1][1]
    assert (result.epochs_run, result.stopped_early, result.device) == (2, False, "cpu")
    model = build_model(TINY, num_classes=10, img_size=digits.img_size, in_chans=digits.in_chans)
    assert result.params == sum(p.numel() for p in model.parameters())
    assert result.train_seconds > 0


def test_same_call_same_accuracy_other_seed_differs(digits):
    first, again, other = (train(digits, epochs=1, seed=seed) for seed in (3, 3, 4))
    assert first.epoch_accuracies == again.epoch_accuracies
    assert other.accuracy != first.accuracy


def test_on_epoch_true_stops_early(digits):
    result = train(digits, epochs=5, on_epoch=lambda epoch, acc: epoch >= 1)
    assert (result.epochs_run, result.stopped_early, len(result.epoch_accuracies)) == (1, True, 1)
    last = train(digits, epochs=1, on_epoch=lambda epoch, acc: True)
    assert not last.stopped_early  # nothing was cut short


def test_threads_are_restored_and_bad_arguments_rejected(digits):
    before = torch.get_num_threads()
    train(digits, epochs=1)
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="epochs"):
        train(digits, epochs=0)
    with pytest.raises(ValueError, match="precision"):
        train(digits, epochs=1, precision="fp8")


def test_precision_auto_is_fp32_on_cpu():
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"


class _AlwaysClass(nn.Module):
    def __init__(self, label: int) -> None:
        super().__init__()
        self.label = label

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(torch.full((len(x),), self.label), 10).float()


def test_evaluate_is_top1_percent_for_tensor_and_loader_datasets(digits):
    labels = digits.val.tensors[1]
    expected = 100.0 * (labels == 3).float().mean().item()
    assert evaluate(_AlwaysClass(3), digits.val, batch_size=100, device="cpu") == pytest.approx(expected)
    subset = Subset(digits.val, range(50))  # not a TensorDataset: goes through a DataLoader
    expected = 100.0 * (labels[:50] == 3).float().mean().item()
    assert evaluate(_AlwaysClass(3), subset, batch_size=16) == pytest.approx(expected)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_path_trains_with_amp(digits):
    result = train_proxy(TINY, digits, epochs=2, device="cuda")
    assert result.device.startswith("cuda") and result.accuracy > 50
    fp16 = train_proxy(TINY, digits, epochs=1, device="cuda", precision="fp16")  # GradScaler path
    assert 0 <= fp16.accuracy <= 100


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def test_rungs_from_checkpoints_train_the_same_model_as_one_run(digits, tmp_path):
    """0 -> 1 -> 2 through a checkpoint equals 0 -> 2 in one call, on a 3-epoch schedule (the
    learning rate, the data order, drop path's RNG and the optimiser all carry over)."""
    straight = train(digits, epochs=3, stop_epoch=2, checkpoint=tmp_path / "straight.pt", seed=3)
    first = train(digits, epochs=3, stop_epoch=1, checkpoint=tmp_path / "rungs.pt", seed=3)
    second = train(digits, epochs=3, start_epoch=1, stop_epoch=2, checkpoint=tmp_path / "rungs.pt", seed=3)
    assert second.epoch_accuracies == straight.epoch_accuracies and first.epoch_accuracies == straight.epoch_accuracies[:1]
    a, b = _state(tmp_path / "straight.pt"), _state(tmp_path / "rungs.pt")
    assert a["epoch"] == b["epoch"] == 2
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=0, atol=1e-6)
    for key, slot in a["optimizer"]["state"].items():
        assert float(b["optimizer"]["state"][key]["step"]) == float(slot["step"])
        torch.testing.assert_close(b["optimizer"]["state"][key]["exp_avg"], slot["exp_avg"], rtol=0, atol=1e-6)
    final_a = train(digits, epochs=3, start_epoch=2, checkpoint=tmp_path / "straight.pt", seed=3)
    final_b = train(digits, epochs=3, start_epoch=2, checkpoint=tmp_path / "rungs.pt", seed=3)
    assert final_a.epoch_accuracies == final_b.epoch_accuracies and len(final_a.epoch_accuracies) == 3
    assert first.checkpoint_seconds > 0 and second.checkpoint_seconds > 0


def test_a_rung_needs_a_checkpoint_and_a_span_of_the_schedule(digits, tmp_path):
    with pytest.raises(ValueError, match="checkpoint"):
        train(digits, epochs=3, stop_epoch=1)
    with pytest.raises(ValueError, match="2->2"):
        train(digits, epochs=3, start_epoch=2, stop_epoch=2, checkpoint=tmp_path / "c.pt")
    with pytest.raises(FileNotFoundError, match="no rung checkpoint"):
        train(digits, epochs=3, start_epoch=1, checkpoint=tmp_path / "missing.pt")


@pytest.mark.parametrize("damage", ["truncated", "zeroed", "another-file"])
def test_a_damaged_rung_checkpoint_is_named_with_what_to_do(digits, tmp_path, damage):
    path = tmp_path / "rung.pt"
    train(digits, epochs=3, stop_epoch=1, checkpoint=path, seed=3)
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[:len(data) // 2])
    elif damage == "zeroed":
        path.write_bytes(bytes(len(data)))
    else:
        torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match=f"rung checkpoint {path} is damaged .*delete it to train this trial from epoch 0"):
        train(digits, epochs=3, start_epoch=1, stop_epoch=2, checkpoint=path, seed=3)


def test_uint8_sets_are_resized_and_normalised_per_batch_on_the_device():
    from torch.utils.data import TensorDataset

    from search.training.data import ToFloatResized
    from search.training.proxy import _Batches

    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    transform = ToFloatResized(64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    batches = _Batches(TensorDataset(images, torch.arange(10)), 4, torch.device("cpu"), transform=transform)
    x, y = next(batches())
    assert x.dtype == torch.float32 and x.shape == (4, 3, 64, 64) and y.tolist() == [0, 1, 2, 3]
    expected = (torch.nn.functional.interpolate(images[:4].float() / 255, size=(64, 64), mode="bilinear",
                                                align_corners=False, antialias=True) - 0.5) / 0.25
    torch.testing.assert_close(x, expected)
