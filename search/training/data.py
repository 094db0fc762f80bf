"""Data sets for proxy training, named by a short spec string.

Three sets are embedded (built in memory, so the search runs with no download and no files),
all grey, i.e. one input channel; :data:`EMBEDDED` is their one list:

* ``digits``: scikit-learn's bundled 1,797 8x8 digits upscaled to 32x32. Fast, for tests; too
  easy to rank architectures (tiny proxies of very different designs all reach 97-99%).
* ``cluttered-digits`` (the default): 64x64 canvases, each with one enlarged digit among
  fragments of other digits, in the spirit of Cluttered MNIST (Jaderberg et al., 2015).
  Fragments are crops of real digits at the digit's scale, so locally they look like its
  strokes; telling them apart needs the layout of strokes over the whole digit.
* ``pathfinder`` (and ``pathfinder-easy`` / ``pathfinder-hard``): the Long Range Arena's
  Pathfinder task (Linsley et al., 2018; Tay et al., 2021), drawn procedurally: two endpoint
  discs and several dashed curves; the label says whether one curve joins the two discs.
  Every disc sits at the end of a curve in both classes, so only following the dashes across
  the image answers it: pixels far apart decide. Difficulty grows with the path length and
  the number of distractor curves (:class:`PathfinderRecipe`).

``cifar10``, ``cifar100`` and ``imagefolder:PATH`` read data already on disk through
torchvision (three channels).

Every set is returned as a :class:`DataBundle` of normalised float tensors, ``(C, H, W)``
per sample. Embedded sets are built once per process per ``(spec, seed, img_size)`` and
cached, because the search loads data once per worker and then trains many proxies on it.
"""
from __future__ import annotations

import functools
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

from ..core.datasets import CIFAR, DEFAULT_DATASET, EMBEDDED_NAMES, IMAGE_SUFFIXES, VAL_FRACTION, DatasetSpec, \
    data_root, parse_dataset_spec, readable_image, require_cifar

_DEFAULT_SIZE = {"cifar10": 32, "cifar100": 32, "imagefolder": 64}  # embedded sets: EMBEDDED[name].default_size
# Per-channel statistics for the on-disk sets (the usual published values).
_CIFAR_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
_IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


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


def train_size(spec: str, root: str | None = None) -> int:
    """Training images of a data set, found without loading it (the budget's cost model)."""
    parsed = parse_dataset_spec(spec)
    if parsed.kind in EMBEDDED:
        return EMBEDDED[parsed.kind].train_images
    if parsed.kind in CIFAR:
        return _CIFAR_TRAIN
    folder = Path(parsed.path)
    if (folder / "train").is_dir():
        return sum(1 for p in (folder / "train").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    total = sum(1 for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return round(total * (1 - VAL_FRACTION))


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
        seed: fixes the train/val split and, for the generated sets, every image.
        img_size: side of the square images; default 32 for ``digits`` and CIFAR, 64 for
            ``cluttered-digits``, ``pathfinder`` and ``imagefolder``.
        download: let torchvision download CIFAR into ``root``; never done implicitly.

    Validation sets: held out (stratified, 20%) from the source data for the embedded sets and
    for an ``imagefolder`` without ``train/`` and ``val/`` sub-folders; CIFAR uses its official
    test split and an ``imagefolder`` with ``train/`` and ``val/`` uses those.
    """
    parsed = spec if isinstance(spec, DatasetSpec) else parse_dataset_spec(spec)
    if parsed.kind in EMBEDDED:
        embedded = EMBEDDED[parsed.kind]
        return embedded.build(seed, img_size or embedded.default_size)
    size = img_size or _DEFAULT_SIZE[parsed.kind]
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
    train_x: torch.Tensor, train_y: np.ndarray, val_x: torch.Tensor, val_y: np.ndarray, name: str,
    num_classes: int = 10,
) -> DataBundle:
    """Standardise with the training statistics and wrap as TensorDatasets.

    The statistics are summed by numpy in float64: torch's parallel reductions round
    differently with the thread count, which would make a seeded set differ by process."""
    pixels = train_x.numpy()
    mean, std = float(pixels.mean(dtype=np.float64)), float(pixels.std(dtype=np.float64, ddof=1))
    train = TensorDataset((train_x - mean) / std, torch.as_tensor(train_y, dtype=torch.long))
    val = TensorDataset((val_x - mean) / std, torch.as_tensor(val_y, dtype=torch.long))
    return DataBundle(train, val, num_classes=num_classes, img_size=train_x.shape[-1], in_chans=train_x.shape[1],
                      name=name)


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


@dataclass(frozen=True)
class PathfinderRecipe:
    """How ``pathfinder`` images are drawn. Lengths are fractions of the image side, so 32 and
    64 px images pose the same task at two resolutions.

    Attributes:
        train_images, val_images: images per split (half of them connected).
        segments: dashes per curve: the path length, the main difficulty knob (the Long Range
            Arena's Pathfinder uses contours of 6, 9 and 14 dashes).
        distractors: curves besides the one or two that carry the endpoint discs.
        segment_length: one dash plus its gap.
        dash: the drawn fraction of a segment.
        max_turn: the most a curve turns between two dashes, in radians (smooth contours).
        line_width, disc_radius: stroke width of the dashes and radius of the endpoint discs.
        margin: curves keep this far from the border.

    The two discs of a negative image sit at ends of two different curves, chosen so that
    their distance matches the end-to-end distance of a curve: how far apart the discs are
    does not give the answer away.
    """

    train_images: int = 4000
    val_images: int = 2000
    segments: int = 9
    distractors: int = 2
    segment_length: float = 0.09
    dash: float = 0.6
    max_turn: float = 0.5
    line_width: float = 0.025
    disc_radius: float = 0.045
    margin: float = 0.06


# Difficulty levels, by path length and distractor curves; each is a data set of its own name.
PATHFINDER_LEVELS = {
    "pathfinder-easy": PathfinderRecipe(segments=6, distractors=1),
    "pathfinder": PathfinderRecipe(),
    "pathfinder-hard": PathfinderRecipe(segments=14, distractors=3),
}


def render_pathfinder(count: int, size: int, rng: np.random.Generator,
                      recipe: PathfinderRecipe = PathfinderRecipe()) -> tuple[torch.Tensor, np.ndarray]:
    """Draw ``count`` pathfinder images, half of them connected, in an order ``rng`` shuffles.

    Returns ``(count, 1, size, size)`` images in [0, 1] and labels (1: one curve joins the
    two discs). Only numpy draws and integer-indexed maxima are used, so a seed gives the
    same bytes in every process and on every machine.
    """
    labels = rng.permutation(np.arange(count) % 2)
    paths = _curves(rng, count * (2 + recipe.distractors), recipe).reshape(count, 2 + recipe.distractors, -1, 2)
    first, second = paths[:, 0], paths[:, 1]
    # Positive: both ends of curve 0. Negative: one end of curve 0 and one of curve 1, the pair
    # whose distance is closest to curve 0's own end-to-end distance.
    span = np.linalg.norm(first[:, -1] - first[:, 0], axis=-1)
    ends = np.stack([first[:, [0, 0, -1, -1]], second[:, [0, -1, 0, -1]]], axis=2)  # (count, 4, 2, 2)
    pick = np.abs(np.linalg.norm(ends[:, :, 0] - ends[:, :, 1], axis=-1) - span[:, None]).argmin(axis=1)
    discs = np.where(labels[:, None, None] == 1, np.stack([first[:, 0], first[:, -1]], axis=1),
                     ends[np.arange(count), pick])
    canvas = np.zeros((count, size * size), dtype=np.float32)
    start, step = paths[:, :, :-1], paths[:, :, 1:] - paths[:, :, :-1]
    samples = max(2, int(np.ceil(recipe.dash * recipe.segment_length * size / 0.35)) + 1)
    along = np.linspace(0.0, recipe.dash, samples, dtype=np.float64)
    dashes = start[..., None, :] + along[:, None] * step[..., None, :]  # (count, curves, segments, samples, 2)
    _stamp(canvas, dashes.reshape(count, -1, 2) * size, recipe.line_width * size / 2, size)
    _stamp(canvas, discs * size, recipe.disc_radius * size, size)
    return torch.from_numpy(canvas.reshape(count, 1, size, size)), labels


def _curves(rng: np.random.Generator, count: int, recipe: PathfinderRecipe) -> np.ndarray:
    """``count`` smooth random walks of ``segments`` steps in the unit square, ``(count, segments + 1, 2)``.

    A step that would leave the margin turns towards the centre instead, so curves stay whole."""
    low, high = recipe.margin, 1 - recipe.margin
    points = [rng.uniform(low, high, (count, 2))]
    angle = rng.uniform(0, 2 * np.pi, count)
    for _ in range(recipe.segments):
        turn = rng.uniform(-recipe.max_turn, recipe.max_turn, (2, count))
        angle = angle + turn[0]
        step = recipe.segment_length * np.stack([np.cos(angle), np.sin(angle)], axis=-1)
        outside = ((points[-1] + step < low) | (points[-1] + step > high)).any(axis=-1)
        inward = np.arctan2(0.5 - points[-1][:, 1], 0.5 - points[-1][:, 0]) + turn[1]
        angle = np.where(outside, inward, angle)
        points.append(points[-1] + recipe.segment_length * np.stack([np.cos(angle), np.sin(angle)], axis=-1))
    return np.stack(points, axis=1)


def _stamp(canvas: np.ndarray, centres: np.ndarray, radius: float, size: int) -> None:
    """Draw anti-aliased discs of ``radius`` pixels at ``centres`` (pixel units, ``(count, n, 2)``)
    into the flat ``canvas`` ``(count, size * size)``, keeping the brighter value; in chunks of
    images, to bound the memory of the per-pixel arrays."""
    chunk = 256
    if len(centres) > chunk:
        for begin in range(0, len(centres), chunk):
            _stamp(canvas[begin:begin + chunk], centres[begin:begin + chunk], radius, size)
        return
    reach = int(np.ceil(radius + 0.5))
    offsets = np.arange(-reach, reach + 1)
    count, n, _ = centres.shape
    base = np.floor(centres).astype(np.int64)
    cols = base[..., 0, None, None] + offsets[None, :]  # (count, n, 1, k)
    rows = base[..., 1, None, None] + offsets[:, None]  # (count, n, k, 1)
    distance = np.hypot(cols + 0.5 - centres[..., 0, None, None], rows + 0.5 - centres[..., 1, None, None])
    value = np.clip(radius + 0.5 - distance, 0.0, 1.0).astype(np.float32)
    inside = (cols >= 0) & (cols < size) & (rows >= 0) & (rows < size) & (value > 0)
    image = np.broadcast_to(np.arange(count)[:, None, None, None], inside.shape)
    index = image * size * size + np.clip(rows, 0, size - 1) * size + np.clip(cols, 0, size - 1)
    np.maximum.at(canvas.reshape(-1), index[inside], value[inside])


def _pathfinder(name: str) -> Callable[[int, int], DataBundle]:
    @functools.lru_cache(maxsize=8)
    def build(seed: int, size: int) -> DataBundle:
        recipe = PATHFINDER_LEVELS[name]
        train_x, train_y = render_pathfinder(recipe.train_images, size, np.random.default_rng([seed, 0]), recipe)
        val_x, val_y = render_pathfinder(recipe.val_images, size, np.random.default_rng([seed, 1]), recipe)
        return _bundle(train_x, train_y, val_x, val_y, name, num_classes=2)

    return build


@dataclass(frozen=True)
class Embedded:
    """An embedded data set: its builder (``(seed, img_size) -> DataBundle``, cached per
    process), its default side and its training-set size (known without building it)."""

    build: Callable[[int, int], DataBundle]
    default_size: int
    train_images: int


def _embedded(name: str) -> Embedded:
    """How the embedded set ``name`` is built; a name without a builder fails on import."""
    if name == "digits":
        return Embedded(_digits, 32, _DIGITS_TRAIN)
    if name == "cluttered-digits":
        return Embedded(_cluttered_digits, 64, _DIGITS_TRAIN * ClutterRecipe.train_per_digit)
    return Embedded(_pathfinder(name), 64, PATHFINDER_LEVELS[name].train_images)


# The embedded data sets, in the order of their one list of names (search.core.datasets, which
# parsing, help texts and error messages read without importing torch).
EMBEDDED: dict[str, Embedded] = {name: _embedded(name) for name in EMBEDDED_NAMES}


# ---------------------------------------------------------------------- on-disk sets
def _transform(size: int, native: int | None, stats: tuple[tuple[float, ...], tuple[float, ...]]) -> transforms.Compose:
    """To a normalised tensor, resized to ``size`` unless the images are ``native`` wide already."""
    steps = [] if size == native else [transforms.Resize((size, size), antialias=True)]
    return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(*stats)])


def _cifar(kind: str, root: str | None, size: int, download: bool) -> DataBundle:
    """CIFAR through torchvision, decoded once into uint8 tensors (150 MB for the training set)
    that stay on the training device; the official test split serves as validation."""
    cls = datasets.CIFAR10 if kind == "cifar10" else datasets.CIFAR100
    where = data_root(root) if download else require_cifar(kind, root)
    train = cls(str(where), train=True, download=download)
    val = cls(str(where), train=False, download=download)

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
        train, val = (_folder_images(folder / split, transform) for split in ("train", "val"))
        return DataBundle(train, val, num_classes=len(train.classes), img_size=size, in_chans=3, name=name)
    full = _folder_images(folder, transform)
    train_idx, val_idx = train_test_split(
        np.arange(len(full)), test_size=VAL_FRACTION, stratify=full.targets, random_state=seed
    )
    return DataBundle(Subset(full, train_idx.tolist()), Subset(full, val_idx.tolist()),
                      num_classes=len(full.classes), img_size=size, in_chans=3, name=name)


def _folder_images(folder: Path, transform: Callable) -> datasets.ImageFolder:
    """An ImageFolder without the files whose header Pillow cannot read (the driver reported
    them by path before the search started), decoding each image with its path in any error."""
    return datasets.ImageFolder(str(folder), transform=transform, loader=_decode_rgb, is_valid_file=readable_image)


def _decode_rgb(path: str):
    from PIL import Image

    try:
        with open(path, "rb") as handle:
            return Image.open(handle).convert("RGB")
    except (OSError, Image.DecompressionBombError) as error:
        raise OSError(f"cannot decode image {path!r}: {error}") from None
