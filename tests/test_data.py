"""Data-set specs and loading: errors users see, splits, normalisation, determinism, caching."""
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from search.training.data import (
    PATHFINDER_LEVELS, ClutterRecipe, DataBundle, DatasetSpec, PathfinderRecipe, load_dataset, parse_dataset_spec,
    render_cluttered, render_pathfinder, train_size,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("spec", ["digits", "cluttered-digits", "pathfinder", "pathfinder-hard", "cifar10", "cifar100"])
def test_known_specs_parse(spec):
    assert parse_dataset_spec(spec) == DatasetSpec(spec)


def test_unknown_spec_names_value_and_choices():
    with pytest.raises(ValueError) as error:
        parse_dataset_spec("mnist")
    message = str(error.value)
    assert "'mnist'" in message and "cluttered-digits" in message and "imagefolder:PATH" in message
    assert "pathfinder" in message
    assert "\n" not in message


def test_imagefolder_spec_checks_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match="nope"):
        parse_dataset_spec(f"imagefolder:{missing}")
    assert parse_dataset_spec(f"imagefolder:{tmp_path}") == DatasetSpec("imagefolder", str(tmp_path))


def _stats(bundle: DataBundle) -> tuple[torch.Tensor, torch.Tensor]:
    return bundle.train.tensors[0], bundle.val.tensors[0]


def test_digits_bundle_is_a_normalised_stratified_split():
    bundle = load_dataset("digits")
    train_x, val_x = _stats(bundle)
    assert isinstance(bundle.train, TensorDataset)
    assert (bundle.num_classes, bundle.img_size, bundle.in_chans, bundle.name) == (10, 32, 1, "digits")
    assert train_x.shape == (1437, 1, 32, 32) and val_x.shape == (360, 1, 32, 32)
    assert train_x.dtype == torch.float32 and bundle.train.tensors[1].dtype == torch.long
    assert abs(train_x.mean().item()) < 1e-4 and abs(train_x.std().item() - 1) < 1e-3
    assert torch.bincount(bundle.val.tensors[1]).tolist() == pytest.approx([36] * 10, abs=1)


def test_embedded_sets_are_cached_and_seeded():
    assert load_dataset("digits") is load_dataset("digits", seed=0)
    other = load_dataset("digits", seed=1)
    assert not torch.equal(other.val.tensors[0], load_dataset("digits").val.tensors[0])
    assert load_dataset("digits", img_size=16).train.tensors[0].shape[-1] == 16


def test_cluttered_digits_default_bundle():
    bundle = load_dataset("cluttered-digits")
    train_x, val_x = _stats(bundle)
    recipe = ClutterRecipe()
    assert (bundle.img_size, bundle.in_chans, bundle.num_classes) == (64, 1, 10)
    assert train_x.shape == (1437 * recipe.train_per_digit, 1, 64, 64)
    assert val_x.shape == (360 * recipe.val_per_digit, 1, 64, 64)
    assert torch.bincount(bundle.train.tensors[1]).min() >= 135 * recipe.train_per_digit  # every class is there
    assert load_dataset(DatasetSpec("cluttered-digits")) is bundle


def test_clutter_comes_only_from_other_digits():
    """With one lit digit among blank ones, canvases of blank digits show it only as fragments."""
    digits = np.zeros((4, 8, 8), dtype=np.float32)
    digits[0] = 1.0
    recipe = ClutterRecipe(fragments=2, noise=0.0)
    images, labels = render_cluttered(digits, np.arange(4), 32, seed=0, per_digit=3, recipe=recipe)
    assert images.shape == (12, 1, 32, 32) and labels.tolist() == [0, 1, 2, 3] * 3
    lit = images.flatten(1).gt(0.5).sum(1)
    full = lit[labels == 0]
    assert full.min() > lit[labels != 0].max()  # a whole digit outshines any 4x4-pixel crop of it


def _cluttered_digest() -> str:
    code = (
        "import hashlib; from search.training.data import load_dataset; b = load_dataset('cluttered-digits', img_size=32);"
        "print(hashlib.sha256(b.train.tensors[0].numpy().tobytes() + b.val.tensors[0].numpy().tobytes()).hexdigest())"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def test_cluttered_digits_identical_across_processes():
    bundle = load_dataset("cluttered-digits", img_size=32)
    here = hashlib.sha256(bundle.train.tensors[0].numpy().tobytes() + bundle.val.tensors[0].numpy().tobytes())
    assert _cluttered_digest() == here.hexdigest()


def test_pathfinder_bundle_is_balanced_and_binary():
    bundle = load_dataset("pathfinder", img_size=32)
    recipe = PATHFINDER_LEVELS["pathfinder"]
    assert (bundle.num_classes, bundle.img_size, bundle.in_chans, bundle.name) == (2, 32, 1, "pathfinder")
    assert bundle.train.tensors[0].shape == (recipe.train_images, 1, 32, 32) == (train_size("pathfinder"), 1, 32, 32)
    assert torch.bincount(bundle.train.tensors[1]).tolist() == [recipe.train_images // 2] * 2
    assert torch.bincount(bundle.val.tensors[1]).tolist() == [recipe.val_images // 2] * 2
    other = load_dataset("pathfinder", seed=1, img_size=32)
    assert not torch.equal(bundle.train.tensors[0][:100], other.train.tensors[0][:100])


def test_pathfinder_draws_dashed_curves_and_two_discs():
    """Two discs per image; harder levels draw more ink (longer curves, more distractors); both
    classes draw the same ink (the same number of curves of the same length)."""
    rng = np.random.default_rng(0)
    images, labels = render_pathfinder(400, 64, rng)
    assert images.shape == (400, 1, 64, 64) and 0 <= images.min() and images.max() <= 1
    no_curves = PathfinderRecipe(segments=1, dash=0.0, distractors=0)
    discs, _ = render_pathfinder(20, 64, np.random.default_rng(0), no_curves)
    lit = discs.flatten(1).gt(0.5).sum(1).float()
    assert lit.min() > 2 * 16  # two discs of radius ~2.9 px: about 26 pixels each
    hard, _ = render_pathfinder(400, 64, np.random.default_rng(0), PATHFINDER_LEVELS["pathfinder-hard"])
    easy, _ = render_pathfinder(400, 64, np.random.default_rng(0), PATHFINDER_LEVELS["pathfinder-easy"])
    assert hard.mean() > images.mean() > easy.mean()
    ink = images.flatten(1).mean(1)
    assert abs(ink[labels == 1].mean() - ink[labels == 0].mean()) < 0.1 * ink.mean()


def _pathfinder_digest() -> str:
    code = ("import hashlib; from search.training.data import load_dataset; b = load_dataset('pathfinder', img_size=32);"
            "print(hashlib.sha256(b.train.tensors[0].numpy().tobytes() + b.val.tensors[1].numpy().tobytes())"
            ".hexdigest())")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def test_pathfinder_identical_across_processes():
    bundle = load_dataset("pathfinder", img_size=32)
    here = hashlib.sha256(bundle.train.tensors[0].numpy().tobytes() + bundle.val.tensors[1].numpy().tobytes())
    assert _pathfinder_digest() == here.hexdigest()


def test_cifar_without_data_says_where_it_looked(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=str(tmp_path / "given")):
        load_dataset("cifar10", root=str(tmp_path / "given"))
    monkeypatch.setenv("LITV2_DATA", str(tmp_path / "from-env"))
    with pytest.raises(ValueError, match="from-env"):
        load_dataset("cifar100")


def _write_images(folder: Path, per_class: int) -> None:
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (folder / label).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / label / f"{i}.png")


def test_imagefolder_holds_out_a_stratified_split(tmp_path):
    _write_images(tmp_path, per_class=5)
    bundle = load_dataset(f"imagefolder:{tmp_path}", img_size=16)
    assert (len(bundle.train), len(bundle.val), bundle.num_classes, bundle.in_chans) == (8, 2, 2, 3)
    image, label = bundle.val[0]
    assert image.shape == (3, 16, 16) and label in (0, 1)
    assert sorted(bundle.val[i][1] for i in range(2)) == [0, 1]


def test_imagefolder_uses_train_and_val_folders(tmp_path):
    _write_images(tmp_path / "train", per_class=3)
    _write_images(tmp_path / "val", per_class=1)
    bundle = load_dataset(f"imagefolder:{tmp_path}")
    assert (len(bundle.train), len(bundle.val), bundle.img_size) == (6, 2, 64)
    assert bundle.train[0][0].shape == (3, 64, 64)

