"""Files replaced whole: written under a temporary name beside the target, then renamed.

A rename within one folder is atomic, so a reader (another process, a resumed run, a crash
after the write) sees the old file or the new one, never half of either.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(partial)`` on a hidden sibling of ``path``, then rename it to ``path``.

    ``write`` gets a path rather than bytes so that writers that insist on a file name
    (``torch.save``, ``savefig``) can use it too; the temporary name keeps ``path``'s suffix
    because some of them pick the format from it. If ``write`` fails (Ctrl-C included) the
    temporary file is removed and ``path`` keeps its old contents. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial{path.suffix}")
    try:
        write(partial)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` of ``text`` (UTF-8)."""
    return atomic_write(path, lambda partial: partial.write_text(text, encoding="utf-8"))


def json_lines(path: Path, skip_blank: bool = False) -> Iterator[tuple[int, bool, Any, str | None]]:
    """Each line of a JSON-lines file as ``(number, complete, value, why)``: ``why`` says what
    the line is instead of JSON (not UTF-8, not JSON; a blank line too, unless ``skip_blank``),
    ``complete`` whether it ends in a newline (a last line cut short by a crash does not).
    Read as bytes, so an undecodable line is named by its number rather than ending the read."""
    import json

    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if skip_blank and not line.strip():
                continue
            try:
                value, why = json.loads(line.decode("utf-8")), None
            except ValueError as error:  # UnicodeDecodeError and JSONDecodeError alike
                value, why = None, f"{type(error).__name__}: {str(error)[:200]}"
            yield number, line.endswith(b"\n"), value, why


def check_writable_folder(folder: Path, what: str) -> None:
    """``folder`` exists and a file can be made in it (tried with a temporary file, removed at
    once): a place that refuses writes is said in one line before the work starts, not after."""
    import tempfile

    if not folder.is_dir():
        if folder.exists():
            raise ValueError(f"{what}: {str(folder)!r} is a file, not a folder")
        raise ValueError(f"{what}: the folder {str(folder)!r} does not exist")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ValueError(f"{what}: the folder {str(folder)!r} is not writable ({error.strerror})") from None
