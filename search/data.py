"""Data sets for proxy training, named by a short spec string.

Two sets are embedded (built from scikit-learn's bundled ``load_digits``, so the search runs
with no download and no files), both grey, i.e. one input channel:

* ``digits``: the 1,797 8x8 digits upscaled to 32x32. Fast, for tests; too easy to rank
  architectures (tiny proxies of very different designs all reach 97-99%, within seed noise).
* ``cluttered-digits`` (the default): 64x64 canvases, each with one enlarged digit among
  fragments of other digits, in the spirit of Cluttered MNIST (Jaderberg et al., 2015).
  Fragments are crops of real digits at the digit's scale, so locally they look like its
  strokes; telling them apart needs the layout of strokes over the whole digit.

``cifar10``, ``cifar100`` and ``imagefolder:PATH`` read data already on disk through
torchvision (three channels).

Every set is returned as a :class:`DataBundle` of normalised float tensors, ``(C, H, W)``
per sample. Embedded sets are built once per process per ``(spec, seed, img_size)`` and
cached, because the search loads data once per worker and then trains many proxies on it.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset, Subset, TensorDataset
from torchvision import datasets, transforms

EMBEDDED = ("digits", "cluttered-digits")
CIFAR = ("cifar10", "cifar100")
DEFAULT_DATASET = "cluttered-digits"
DATA_ENV = "LITV2_DATA"
VAL_FRACTION = 0.2
_EXPECTED = "digits, cluttered-digits, cifar10, cifar100 or imagefolder:PATH"
_DEFAULT_SIZE = {"digits": 32, "cluttered-digits": 64, "cifar10": 32, "cifar100": 32, "imagefolder": 64}
# Per-channel statistics for the on-disk sets (the usual published values).
_CIFAR_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
_IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed data-set spec: its ``kind`` and, for ``imagefolder``, the folder."""

    kind: str
    path: str | None = None

    @property
    def name(self) -> str:
        return f"imagefolder:{self.path}" if self.kind == "imagefolder" else self.kind


@dataclass(frozen=True)
class DataBundle:
    """Train and validation sets plus what a model needs to be built for them."""

    train: Dataset
    val: Dataset
    num_classes: int
    img_size: int
    in_chans: int
    name: str
    # Applied to each batch of a TensorDataset on the training device: sets kept compactly
    # in memory (CIFAR as uint8 at 32x32) are resized and normalised there, not up front.
    batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None


@dataclass(frozen=True)
class ToFloatResized:
    """uint8 images -> normalised float images of side ``size`` (a picklable batch transform)."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255)
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std


_DIGITS_TRAIN = 1437  # load_digits' 1,797 minus the 20 % validation split
_CIFAR_TRAIN = 50000
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def train_size(spec: str, root: str | None = None) -> int:
    """Training images of a data set, found without loading it (the budget's cost model)."""
    parsed = parse_dataset_spec(spec)
    if parsed.kind == "digits":
        return _DIGITS_TRAIN
    if parsed.kind == "cluttered-digits":
        return _DIGITS_TRAIN * ClutterRecipe.train_per_digit
    if parsed.kind in CIFAR:
        return _CIFAR_TRAIN
    folder = Path(parsed.path)
    if (folder / "train").is_dir():
        return sum(1 for p in (folder / "train").rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
    total = sum(1 for p in folder.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
    return round(total * (1 - VAL_FRACTION))


def parse_dataset_spec(spec: str) -> DatasetSpec:
    """Validate a spec string early, so a typo fails before any worker starts."""
    if not isinstance(spec, str):
        raise ValueError(f"dataset {spec!r} is not a string; expected {_EXPECTED}")
    if spec in EMBEDDED or spec in CIFAR:
        return DatasetSpec(spec)
    if spec.startswith("imagefolder:"):
        path = spec[len("imagefolder:"):]
        if not path or not Path(path).is_dir():
            raise ValueError(f"imagefolder path {path!r} is not a directory")
        return DatasetSpec("imagefolder", path)
    raise ValueError(f"dataset {spec!r} is unknown; expected {_EXPECTED}")


def load_dataset(
    spec: str | DatasetSpec = DEFAULT_DATASET,
    root: str | None = None,
    seed: int = 0,
    img_size: int | None = None,
    download: bool = False,
) -> DataBundle:
    """Load the data set named by ``spec``.

    Args:
        spec: a spec string (see :func:`parse_dataset_spec`) or a parsed spec.
        root: where ``cifar10``/``cifar100`` live; default ``$LITV2_DATA``, else ``./data``.
        seed: fixes the train/val split and, for ``cluttered-digits``, every generated image.
        img_size: side of the square images; default 32 for ``digits`` and CIFAR, 64 for
            ``cluttered-digits`` and ``imagefolder``.
        download: let torchvision download CIFAR into ``root``; never done implicitly.

    Validation sets: held out (stratified, 20%) from the source data for the embedded sets and
    for an ``imagefolder`` without ``train/`` and ``val/`` sub-folders; CIFAR uses its official
    test split and an ``imagefolder`` with ``train/`` and ``val/`` uses those.
    """
    parsed = spec if isinstance(spec, DatasetSpec) else parse_dataset_spec(spec)
    size = img_size or _DEFAULT_SIZE[parsed.kind]
    if parsed.kind == "digits":
        return _digits(seed, size)
    if parsed.kind == "cluttered-digits":
        return _cluttered_digits(seed, size)
    if parsed.kind in CIFAR:
        return _cifar(parsed.kind, root, size, download)
    return _image_folder(parsed.path, seed, size)


# ---------------------------------------------------------------------- embedded sets
def _source_split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The real 8x8 digits in [0, 1], split train/val before any augmentation."""
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    return train_test_split(images, digits.target, test_size=VAL_FRACTION, stratify=digits.target, random_state=seed)


def _bundle(
    train_x: torch.Tensor, train_y: np.ndarray, val_x: torch.Tensor, val_y: np.ndarray, name: str
) -> DataBundle:
    """Standardise with the training statistics and wrap as TensorDatasets."""
    mean, std = train_x.mean(), train_x.std()
    train = TensorDataset((train_x - mean) / std, torch.as_tensor(train_y, dtype=torch.long))
    val = TensorDataset((val_x - mean) / std, torch.as_tensor(val_y, dtype=torch.long))
    return DataBundle(train, val, num_classes=10, img_size=train_x.shape[-1], in_chans=train_x.shape[1], name=name)


@functools.lru_cache(maxsize=8)
def _digits(seed: int, size: int) -> DataBundle:
    """The 8x8 digits upscaled (bilinear) to ``size``; one channel, since the source is grey."""
    x_train, x_val, y_train, y_val = _source_split(seed)

    def upscale(images: np.ndarray) -> torch.Tensor:
        return F.interpolate(torch.from_numpy(images)[:, None], size=(size, size), mode="bilinear", align_corners=False)

    return _bundle(upscale(x_train), y_train, upscale(x_val), y_val, "digits")


@dataclass(frozen=True)
class ClutterRecipe:
    """How ``cluttered-digits`` images are drawn.

    Attributes:
        train_per_digit, val_per_digit: canvases per source digit (1,437 train and 360 val
            digits); more val canvases shrink the sampling noise of the val accuracy.
        digit_size, fragment_size: side of the drawn 8x8 digit, as a range of fractions of
            the canvas side.
        fragments: crops of other digits per canvas.
        crop: range of the crop side, in source pixels (of 8).
        noise: std of the added Gaussian noise (pixels are in [0, 1]).

    The defaults were tuned with ``experiments/separability.py``: fewer or smaller
    fragments let every tiny proxy saturate alike; many more keep them near chance within
    a CPU budget. With these, proxies plateau around 65-70% after ~20 epochs, with a seed
    std near 1 point, and attention variants separate from MLP-only ones.
    """

    train_per_digit: int = 2
    val_per_digit: int = 4
    digit_size: tuple[float, float] = (0.55, 0.8)
    fragments: int = 4
    fragment_size: tuple[float, float] = (0.55, 0.8)
    crop: tuple[int, int] = (2, 4)
    noise: float = 0.05


def render_cluttered(
    digits: np.ndarray,
    labels: np.ndarray,
    size: int,
    seed: int,
    per_digit: int,
    recipe: ClutterRecipe = ClutterRecipe(),
) -> tuple[torch.Tensor, np.ndarray]:
    """Draw ``per_digit`` cluttered canvases per source digit.

    Each canvas holds the (enlarged) digit at a random position and scale, and ``fragments``
    random crops of *other* digits from the same pool at a similar scale, so clutter is
    locally indistinguishable from the digit's strokes; pixels combine by maximum, then
    Gaussian noise is added. Everything is rendered in batches with ``grid_sample``.

    Returns ``(N, 1, size, size)`` images in [0, 1] and their labels.
    """
    rng = np.random.default_rng(seed)
    source = torch.from_numpy(digits)[:, None]
    index = np.tile(np.arange(len(digits)), per_digit)
    count = len(index)
    canvas = _paste(source[index], size, rng.uniform(*recipe.digit_size, count), rng, inside=True)
    for _ in range(recipe.fragments):
        others = (index + rng.integers(1, len(digits), count)) % len(digits)  # never the digit itself
        pieces = source[others] * _crop_masks(count, recipe.crop, rng)
        fragment = _paste(pieces, size, rng.uniform(*recipe.fragment_size, count), rng, inside=False)
        canvas = torch.maximum(canvas, fragment)
    noise = torch.from_numpy(rng.standard_normal(canvas.shape).astype(np.float32)) * recipe.noise
    return (canvas + noise).clamp_(0, 1), labels[index]


def _paste(images: torch.Tensor, size: int, scale: np.ndarray, rng: np.random.Generator, inside: bool) -> torch.Tensor:
    """Draw each 8x8 image, ``scale * size`` wide, at a random spot of its own blank canvas.

    ``inside`` keeps the whole image on the canvas (the digit); otherwise the image's centre
    may lie anywhere on it (fragments, which may be cut by the border).
    """
    count = len(images)
    centre_range = 1 - scale if inside else np.ones_like(scale)
    centre = rng.uniform(-1, 1, (count, 2)) * centre_range[:, None]
    # affine_grid maps canvas coordinates in [-1, 1] to image coordinates: (u - centre) / scale.
    theta = np.zeros((count, 2, 3), dtype=np.float32)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale
    theta[:, :, 2] = -centre / scale[:, None]
    grid = F.affine_grid(torch.from_numpy(theta), [count, 1, size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _crop_masks(count: int, side: tuple[int, int], rng: np.random.Generator) -> torch.Tensor:
    """Random rectangles with sides in ``side`` (8x8 source pixels) as ``(count, 1, 8, 8)`` masks."""
    height, width = (rng.integers(side[0], side[1] + 1, count) for _ in range(2))
    top, left = rng.integers(0, 9 - height), rng.integers(0, 9 - width)
    pos = np.arange(8)
    rows = (pos >= top[:, None]) & (pos < (top + height)[:, None])
    cols = (pos >= left[:, None]) & (pos < (left + width)[:, None])
    return torch.from_numpy((rows[:, :, None] & cols[:, None, :]).astype(np.float32))[:, None]


@functools.lru_cache(maxsize=8)
def _cluttered_digits(seed: int, size: int) -> DataBundle:
    """Cluttered canvases; the val canvases are drawn only from held-out source digits."""
    x_train, x_val, y_train, y_val = _source_split(seed)
    recipe = ClutterRecipe()
    train_x, train_y = render_cluttered(x_train, y_train, size, seed, recipe.train_per_digit, recipe)
    val_x, val_y = render_cluttered(x_val, y_val, size, seed + 1, recipe.val_per_digit, recipe)
    return _bundle(train_x, train_y, val_x, val_y, "cluttered-digits")


# ---------------------------------------------------------------------- on-disk sets
def _data_root(root: str | None) -> Path:
    return Path(root or os.environ.get(DATA_ENV) or "data")


def _transform(size: int, native: int | None, stats: tuple[tuple[float, ...], tuple[float, ...]]) -> transforms.Compose:
    """To a normalised tensor, resized to ``size`` unless the images are ``native`` wide already."""
    steps = [] if size == native else [transforms.Resize((size, size), antialias=True)]
    return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(*stats)])


def _cifar(kind: str, root: str | None, size: int, download: bool) -> DataBundle:
    """CIFAR through torchvision, decoded once into uint8 tensors (150 MB for the training set)
    that stay on the training device; the official test split serves as validation."""
    cls = datasets.CIFAR10 if kind == "cifar10" else datasets.CIFAR100
    where = _data_root(root)
    try:
        train = cls(str(where), train=True, download=download)
        val = cls(str(where), train=False, download=download)
    except RuntimeError as error:  # torchvision's "Dataset not found or corrupted"
        raise ValueError(
            f"{kind} not found under {str(where)!r} (from the root argument, ${DATA_ENV} or ./data); "
            "put the torchvision copy there or pass download=True"
        ) from error

    def tensors(split) -> TensorDataset:
        images = torch.from_numpy(split.data).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32) uint8
        return TensorDataset(images, torch.as_tensor(split.targets, dtype=torch.long))

    return DataBundle(tensors(train), tensors(val), num_classes=len(train.classes), img_size=size, in_chans=3,
                      name=kind, batch_transform=ToFloatResized(size, *_CIFAR_STATS))


def _image_folder(path: str, seed: int, size: int) -> DataBundle:
    """``PATH/train`` + ``PATH/val`` if both exist, else a stratified 80/20 split of ``PATH``."""
    transform = _transform(size, None, _IMAGENET_STATS)
    folder = Path(path)
    name = f"imagefolder:{path}"
    if (folder / "train").is_dir() and (folder / "val").is_dir():
        train = datasets.ImageFolder(str(folder / "train"), transform=transform)
        val = datasets.ImageFolder(str(folder / "val"), transform=transform)
        return DataBundle(train, val, num_classes=len(train.classes), img_size=size, in_chans=3, name=name)
    full = datasets.ImageFolder(str(folder), transform=transform)
    train_idx, val_idx = train_test_split(
        np.arange(len(full)), test_size=VAL_FRACTION, stratify=full.targets, random_state=seed
    )
    return DataBundle(Subset(full, train_idx.tolist()), Subset(full, val_idx.tolist()),
                      num_classes=len(full.classes), img_size=size, in_chans=3, name=name)
