"""Data checked in the driver before a search starts (search.core.datasets): CIFAR files, image
folders that cannot serve a classification, unreadable images reported and skipped."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from search.training.data import load_dataset


def _write_images(folder: Path, counts: dict[str, int]) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for label, count in counts.items():
        (folder / label).mkdir()
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / label / f"{i}.png")


def test_embedded_sets_are_the_names_the_light_parser_accepts():
    from search.training.data import EMBEDDED, PATHFINDER_LEVELS
    from search.core.datasets import EMBEDDED_NAMES

    assert tuple(EMBEDDED) == EMBEDDED_NAMES  # built from the one list of names
    assert set(PATHFINDER_LEVELS) <= set(EMBEDDED_NAMES)  # no level that no name reaches


def test_cifar_check_says_where_it_looked_and_how_to_place_the_files(tmp_path):
    from search.core.datasets import check_dataset

    with pytest.raises(ValueError) as error:
        check_dataset("cifar10", str(tmp_path))
    message = str(error.value)
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in message
    assert "cifar-10-python.tar.gz" in message and f"-C {tmp_path}" in message
    assert "download=True" not in message and "\n" not in message


@pytest.mark.parametrize("layout,error", [
    ({"cat": 6}, "has 1 class folder: a classification needs at least 2"),
    ({}, "holds no readable images"),
    ({"cat": 6, "dog": 0}, "dog' has 0 readable images"),
    ({"cat": 6, "dog": 3}, "validation split needs at least 5 per class"),
])
def test_image_folders_that_cannot_serve_a_search_are_refused(tmp_path, layout, error):
    from search.core.datasets import scan_image_folder

    _write_images(tmp_path, layout)
    with pytest.raises(ValueError, match=error):
        scan_image_folder(tmp_path)


def test_train_and_val_folders_must_hold_the_same_classes(tmp_path):
    from search.core.datasets import scan_image_folder

    _write_images(tmp_path / "train", {"cat": 2, "dog": 2})
    _write_images(tmp_path / "val", {"cat": 1, "dog": 1})
    (tmp_path / "val" / "dog").rename(tmp_path / "val" / "bird")
    with pytest.raises(ValueError, match="'bird' is in only one of them"):
        scan_image_folder(tmp_path)


def test_an_unreadable_image_is_reported_by_path_skipped_and_the_rest_trains(tmp_path):
    from litv2 import LITConfig
    from search.core.datasets import scan_image_folder
    from search.training.proxy import train_proxy

    _write_images(tmp_path, {"cat": 5, "dog": 5})
    broken = tmp_path / "cat" / "broken.png"
    broken.write_bytes(b"not an image at all")
    warnings = scan_image_folder(tmp_path).warnings()
    assert len(warnings) == 1 and repr(str(broken)) in warnings[0]
    bundle = load_dataset(f"imagefolder:{tmp_path}", img_size=32)
    assert len(bundle.train) + len(bundle.val) == 10  # the 10 good images, not the broken one
    tiny = LITConfig(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), window_size=(0, 0, 2, 1),
                     merge="patch")
    result = train_proxy(tiny, bundle, epochs=1, batch_size=4, num_threads=1)
    assert result.epochs_run == 1 and 0 <= result.accuracy <= 100


def test_a_file_that_fails_to_decode_is_named_in_the_error(tmp_path):
    from search.training.data import _decode_rgb

    truncated = tmp_path / "cut.png"
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(OSError, match=repr(str(truncated)).replace(".", r"\.")):
        _decode_rgb(str(truncated))


def _bomb(path: Path, side: int = 60000) -> None:
    """A PNG whose header claims side x side pixels (a few hundred bytes on disk)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(100)))
                     + chunk(b"IEND", b""))


def test_an_image_claiming_billions_of_pixels_is_skipped_never_decoded(tmp_path):
    from search.core.datasets import scan_image_folder
    from search.training.data import _decode_rgb

    _write_images(tmp_path, {"cat": 5, "dog": 5})
    bomb = tmp_path / "cat" / "bomb.png"
    _bomb(bomb)
    [warning] = scan_image_folder(tmp_path).warnings()
    assert repr(str(bomb)) in warning and "too large to decode safely" in warning
    bundle = load_dataset(f"imagefolder:{tmp_path}", img_size=32)
    assert len(bundle.train) + len(bundle.val) == 10
    with pytest.raises(OSError, match="cannot decode image"):
        _decode_rgb(str(bomb))


def test_a_link_loop_in_an_image_folder_is_refused(tmp_path):
    """torchvision's ImageFolder follows links to folders: `cat/up -> ..` read 6 images 732 times
    over, and a search trained and scored on the copies."""
    from search.core.datasets import scan_image_folder

    _write_images(tmp_path, {"cat": 6, "dog": 6})
    (tmp_path / "cat" / "up").symlink_to("..")
    with pytest.raises(ValueError, match="holds a link loop"):
        scan_image_folder(tmp_path)
