"""Data-set specs parsed, and on-disk data sets checked, in the driver before a study or an
MLflow run exists.

A folder with one class, a class too small for its validation share, CIFAR files that are not
where they are looked for: each is a one-line ValueError here, instead of a failure inside
every worker after the search started (or a search where every trial scores 100 %). Image
files whose header cannot be read are reported by path and left out, here and in the workers
(:func:`readable_image` is the filter both use), so the rest of the folder still trains.

Only the standard library and Pillow are imported: this runs before the deep-learning stack.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

# The data sets built in memory, the one list of their names: search.training.data builds one per name.
EMBEDDED_NAMES = ("digits", "cluttered-digits", "pathfinder-easy", "pathfinder", "pathfinder-hard")
CIFAR = ("cifar10", "cifar100")
DEFAULT_DATASET = "cluttered-digits"
DATA_ENV = "LITV2_DATA"
VAL_FRACTION = 0.2
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
# A class of a folder without train/ and val/ is split 80/20 by stratification: it needs this many
# images for one of them to land in the validation share.
MIN_IMAGES_PER_CLASS = math.ceil(1 / VAL_FRACTION)
# torchvision's layout of the CIFAR archives once unpacked: folder -> files every split needs.
CIFAR_FILES = {
    "cifar10": ("cifar-10-batches-py", ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                                        "data_batch_5", "test_batch", "batches.meta")),
    "cifar100": ("cifar-100-python", ("train", "test", "meta")),
}
CIFAR_ARCHIVES = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}
CIFAR_PAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed data-set spec: its ``kind`` and, for ``imagefolder``, the folder."""

    kind: str
    path: str | None = None

    @property
    def name(self) -> str:
        return f"imagefolder:{self.path}" if self.kind == "imagefolder" else self.kind


def parse_dataset_spec(spec: str) -> DatasetSpec:
    """Validate a spec string early, so a typo fails before any worker starts."""
    if not isinstance(spec, str):
        raise ValueError(f"dataset {spec!r} is not a string; expected {dataset_choices()}")
    if spec in EMBEDDED_NAMES or spec in CIFAR:
        return DatasetSpec(spec)
    if spec.startswith("imagefolder:"):
        path = spec[len("imagefolder:"):]
        if not path or not Path(path).is_dir():
            raise ValueError(f"imagefolder path {path!r} is not a directory")
        return DatasetSpec("imagefolder", path)
    raise ValueError(f"dataset {spec!r} is unknown; expected {dataset_choices()}")


def dataset_choices() -> str:
    """Every data set spec, as the command lines' help and errors list them."""
    return ", ".join([*EMBEDDED_NAMES, *CIFAR]) + " or imagefolder:PATH"


def data_root(root: str | None) -> Path:
    """Where CIFAR lives: the given root, else ``$LITV2_DATA``, else ``./data``."""
    return Path(root or os.environ.get(DATA_ENV) or "data")


def require_cifar(kind: str, root: str | None) -> Path:
    """The folder holding ``kind``'s files, or a ValueError saying where it looked and how to place them."""
    where = data_root(root)
    folder, names = CIFAR_FILES[kind]
    missing = [name for name in names if not (where / folder / name).is_file()]
    if missing:
        raise ValueError(
            f"{kind} not found: {str(where / folder / missing[0])!r} is missing (the data root is --data-root, else "
            f"${DATA_ENV}, else ./data); download {CIFAR_ARCHIVES[kind]} from {CIFAR_PAGE} and unpack it into "
            f"{str(where)!r} (tar xzf {CIFAR_ARCHIVES[kind]} -C {where})")
    return where


def readable_image(path: str | os.PathLike) -> bool:
    """Whether ``path`` has an image suffix and a header Pillow can identify (the decoding itself
    happens in the loaders, which name the file if it fails)."""
    if Path(path).suffix.lower() not in IMAGE_SUFFIXES:
        return False
    return _unreadable_reason(Path(path)) is None


def _unreadable_reason(path: Path) -> str | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path):
            return None
    except Image.DecompressionBombError as error:  # a header claiming billions of pixels: never decoded
        return f"too large to decode safely: {error}".split(", could be")[0]
    except (UnidentifiedImageError, OSError, ValueError) as error:
        return str(error).replace(str(path), "").strip(" '\":") or type(error).__name__


@dataclass
class FolderScan:
    """What an image folder holds: images per class, per split, and the files left out."""

    splits: dict[str, dict[str, int]]  # split ("all", or "train" and "val") -> class -> readable images
    unreadable: list[tuple[Path, str]] = field(default_factory=list)

    def warnings(self, limit: int = 10) -> list[str]:
        lines = [f"data: skipped unreadable image {str(path)!r} ({reason})" for path, reason in self.unreadable[:limit]]
        if len(self.unreadable) > limit:
            lines.append(f"data: skipped {len(self.unreadable) - limit} more unreadable images")
        return lines


def scan_image_folder(path: str | os.PathLike) -> FolderScan:
    """Count the readable images of every class (``PATH/train`` + ``PATH/val``, else ``PATH``)
    and list the unreadable ones; a ValueError for a folder that cannot serve a classification."""
    folder = Path(path)
    layout = ("train", "val") if (folder / "train").is_dir() and (folder / "val").is_dir() else ("all",)
    scan = FolderScan({})
    for split in layout:
        root = folder if split == "all" else folder / split
        classes = sorted(p for p in root.iterdir() if p.is_dir())
        counts = {}
        for class_dir in classes:
            images = [p for p in _files_under(class_dir) if p.suffix.lower() in IMAGE_SUFFIXES]
            bad = [(p, reason) for p in images if (reason := _unreadable_reason(p)) is not None]
            scan.unreadable += bad
            counts[class_dir.name] = len(images) - len(bad)
        scan.splits[split] = counts
    _check_classes(folder, scan)
    return scan


def _files_under(folder: Path) -> list[Path]:
    """Every file under ``folder`` as torchvision's ImageFolder finds them (it follows links to
    folders); a link back into a folder already walked is a loop, through which ImageFolder
    would read the same images again and again (a loop `a/up -> ..` made 6 images 732)."""
    seen: set[str] = set()
    files = []
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            raise ValueError(f"imagefolder {str(folder)!r} holds a link loop: {root!r} is {real!r} again; expected "
                             "folders that lead nowhere twice")
        seen.add(real)
        dirs.sort()
        files += [Path(root) / name for name in sorted(names) if (Path(root) / name).is_file()]
    return files


def _check_classes(folder: Path, scan: FolderScan) -> None:
    for split, counts in scan.splits.items():
        where = folder if split == "all" else folder / split
        if sum(counts.values()) == 0:
            raise ValueError(f"imagefolder {str(where)!r} holds no readable images: expected one sub-folder of "
                             f"images ({', '.join(IMAGE_SUFFIXES)}) per class")
        if len(counts) < 2:
            raise ValueError(f"imagefolder {str(where)!r} has {len(counts)} class folder"
                             f"{'' if len(counts) == 1 else 's'}: a classification needs at least 2")
        need = MIN_IMAGES_PER_CLASS if split == "all" else 1
        small = {name: n for name, n in counts.items() if n < need}
        if small:
            name, n = next(iter(small.items()))
            why = (f"the {VAL_FRACTION:.0%} validation split needs at least {need} per class" if split == "all"
                   else "every class needs images in both train/ and val/")
            raise ValueError(f"imagefolder class {str(where / name)!r} has {n} readable image{'' if n == 1 else 's'}: "
                             f"{why}")
    if "val" in scan.splits and set(scan.splits["val"]) != set(scan.splits["train"]):
        odd = sorted(set(scan.splits["val"]) ^ set(scan.splits["train"]))
        raise ValueError(f"imagefolder {str(folder)!r}: train/ and val/ must hold the same class folders; "
                         f"{odd[0]!r} is in only one of them")


def check_dataset(spec: str, root: str | None) -> list[str]:
    """Check the data set a run or a training names; returns warning lines (skipped images)."""
    parsed = parse_dataset_spec(spec)
    if parsed.kind in CIFAR:
        require_cifar(parsed.kind, root)
        return []
    if parsed.kind == "imagefolder":
        return scan_image_folder(parsed.path).warnings()
    return []
