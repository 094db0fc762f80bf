"""Data sets for full-size training (``search train``), as PIL images for timm's transforms.

Full training augments every image with timm's pipeline (random resized crop, RandAugment,
random erasing; ``timm.data.create_loader``), which works on PIL images, so every source is
served as RGB PIL images with a ``transform`` attribute for timm to set:

* ``digits``, ``cluttered-digits``, ``cifar10``, ``cifar100``: :func:`search.training.data.load_dataset`'s
  tensors (the same splits the search uses), mapped back to 8-bit RGB images.
* ``imagefolder:PATH``: ``timm.data.ImageDataset`` over ``PATH/train`` + ``PATH/val``, or a
  stratified 80/20 split of ``PATH`` (the search's split). An image that cannot be decoded is
  reported (a warning naming the file, from timm) and skipped: the next image takes its place.

:func:`allow_zero_bit_posterize` keeps timm's RandAugment working on Pillow 13 (see there).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, TensorDataset

from .data import VAL_FRACTION, load_dataset, parse_dataset_spec


@dataclass
class TrainingData:
    train: Dataset
    val: Dataset
    num_classes: int
    name: str


class TensorImages(Dataset):
    """A tensor data set of (C, H, W) images as RGB PIL images.

    Values map linearly from ``[low, high]`` to 0-255: the range of the training images, so
    the standardised embedded sets come back to their pixel scale, and CIFAR's uint8 stays as it is.
    """

    def __init__(self, dataset: TensorDataset, low: float, high: float) -> None:
        self.images, self.labels = dataset.tensors
        self.low, self.scale = low, 255.0 / max(high - low, 1e-12)
        self.transform: Callable[[Image.Image], Any] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        pixels = ((self.images[index].float() - self.low) * self.scale).round().clamp(0, 255).to(torch.uint8)
        array = pixels.permute(1, 2, 0).numpy()
        image = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).convert("RGB")
        return (self.transform(image) if self.transform else image), int(self.labels[index])


class FolderPart(Dataset):
    """Some samples of an ``ImageDataset``; its ``transform`` is the underlying set's (timm sets it)."""

    def __init__(self, dataset: Dataset, indices: list[int]) -> None:
        self.dataset, self.indices = dataset, indices

    @property
    def transform(self) -> Callable | None:
        return self.dataset.transform

    @transform.setter
    def transform(self, value: Callable | None) -> None:
        self.dataset.transform = value

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[self.indices[index]]


def load_training_data(spec: str, root: str | None = None, seed: int = 0) -> TrainingData:
    """Train and validation sets of ``spec``; a one-line ValueError for a missing or empty source."""
    parsed = parse_dataset_spec(spec)
    if parsed.kind != "imagefolder":  # embedded and CIFAR sets: tensors
        bundle = load_dataset(parsed, root=root, seed=seed)
        images = bundle.train.tensors[0]
        low, high = (0.0, 255.0) if images.dtype == torch.uint8 else (float(images.min()), float(images.max()))
        return TrainingData(TensorImages(bundle.train, low, high), TensorImages(bundle.val, low, high),
                            bundle.num_classes, bundle.name)
    return _image_folder(Path(parsed.path), seed, parsed.name)


def _folder(path: Path, class_map: dict[str, int] | None = None) -> Dataset:
    from timm.data import ImageDataset

    try:
        dataset = ImageDataset(str(path), class_map=class_map)
    except (RuntimeError, OSError) as error:  # timm: "Found 0 images in subfolders of ..."
        raise ValueError(f"imagefolder {str(path)!r} holds no usable images: {error}") from None
    if len(dataset) == 0:
        raise ValueError(f"imagefolder {str(path)!r} holds no images: expected one sub-folder of images per class")
    return dataset


def _image_folder(path: Path, seed: int, name: str) -> TrainingData:
    from sklearn.model_selection import train_test_split

    if (path / "train").is_dir() and (path / "val").is_dir():
        train = _folder(path / "train")
        classes = train.reader.class_to_idx
        return TrainingData(train, _folder(path / "val", classes), len(classes), name)
    train_set, val_set = _folder(path), _folder(path)  # two copies: each gets its own transform
    targets = np.array([target for _, target in train_set.reader.samples])
    train_idx, val_idx = train_test_split(np.arange(len(targets)), test_size=VAL_FRACTION, stratify=targets,
                                          random_state=seed)
    return TrainingData(FolderPart(train_set, train_idx.tolist()), FolderPart(val_set, val_idx.tolist()),
                        len(train_set.reader.class_to_idx), name)


def allow_zero_bit_posterize() -> None:
    """Let timm's RandAugment posterize to 0 bits again.

    With ``inc1`` (the recipe's ``rand-m9-mstd0.5-inc1``) a magnitude drawn at the top of its
    range asks ``PIL.ImageOps.posterize`` for 0 bits. Pillow before 13 returned a black image;
    Pillow 13 raises "bits must be between or equal to 1 and 8", which ends the training. Where
    Pillow raises, timm's posterize operations get the old result back; elsewhere nothing changes.
    """
    from PIL import ImageOps
    from timm.data import auto_augment

    try:
        ImageOps.posterize(Image.new("L", (1, 1)), 0)
        return
    except ValueError:
        pass
    original = auto_augment.posterize

    def posterize(img: Image.Image, bits_to_keep: int, **kwargs: Any) -> Image.Image:
        if bits_to_keep <= 0:
            return Image.new(img.mode, img.size)  # every bit cleared: black
        return original(img, bits_to_keep, **kwargs)

    for name, op in list(auto_augment.NAME_TO_OP.items()):
        if op is original:
            auto_augment.NAME_TO_OP[name] = posterize
