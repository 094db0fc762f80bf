"""Named search spaces shipped with the package, and user space files.

The named spaces are YAML files in ``space/spaces/`` - the same format users write - so
each one documents itself and ``python -m space show NAME`` prints what the search sees.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from .errors import SpaceError
from .search_space import SearchSpace

SPACES_DIR = Path(__file__).with_name("spaces")
SPACE_NAMES = ("default", "table5", "table4", "alpha", "window", "tiny", "bench")
FILE_SUFFIXES = (".yaml", ".yml", ".json")
# A space is a few dozen lines; a file far larger is the wrong file, and is refused unread.
MAX_FILE_BYTES = 1_000_000


def get_space(name_or_path: str) -> SearchSpace:
    """A named space (:data:`SPACE_NAMES`) or a ``.yaml``/``.yml``/``.json`` space file.

    Raises:
        SpaceError: an unknown name, a missing or unparsable file, or an invalid space;
            the message names the file and the field.
    """
    if name_or_path in SPACE_NAMES:
        return load_space(SPACES_DIR / f"{name_or_path}.yaml")
    if Path(name_or_path).suffix.lower() in FILE_SUFFIXES:
        return load_space(Path(name_or_path))
    raise SpaceError(None, f"unknown space {name_or_path!r}; expected one of {', '.join(SPACE_NAMES)} "
                           f"or a {'/'.join(FILE_SUFFIXES)} file")


def load_space(path: str | Path) -> SearchSpace:
    """The space a YAML or JSON file defines; its name defaults to the file's stem.

    A file may say ``extends: NAME`` (a named space): it then holds only what it adds to or
    changes in that space, top-level key by key, so one definition of the paper's rows
    serves both ``search run --space table5`` and the ``table5`` ablation recipe.
    """
    path = Path(path)
    try:
        return SearchSpace.from_dict(_resolve_extends(_read(path)), default_name=path.stem)
    except SpaceError as err:
        raise err.located(str(path)) from None


def _resolve_extends(data: Any) -> Any:
    if not isinstance(data, dict) or "extends" not in data:
        return data
    name = data["extends"]
    if name not in SPACE_NAMES:
        raise SpaceError("extends", f"{name!r} is not a named space; expected one of {', '.join(SPACE_NAMES)}")
    base = _read(SPACES_DIR / f"{name}.yaml")
    return {**base, **{key: value for key, value in data.items() if key != "extends"}}


def _read(path: Path) -> Any:
    """The file's data; what is not a regular file of UTF-8 text (a FIFO would block the read
    for good) is refused before it is read."""
    try:
        if path.exists() and not path.is_file() and not path.is_dir():
            raise SpaceError(None, "is not a regular file (a FIFO, socket or device): expected a .yaml/.json file")
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise SpaceError(None, f"is {size / 1e6:.1f} MB: a space file is at most {MAX_FILE_BYTES / 1e6:g} MB")
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        raise SpaceError(None, f"cannot read: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise SpaceError(None, f"is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start})") from None
    try:
        return json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as err:
        raise SpaceError(None, f"does not parse: {err.msg} at line {err.lineno}, column {err.colno}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SpaceError(None, f"does not parse: {problem}{where}") from None
