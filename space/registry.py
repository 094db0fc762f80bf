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
    """The space a YAML or JSON file defines; its name defaults to the file's stem."""
    path = Path(path)
    try:
        return SearchSpace.from_dict(_read(path), default_name=path.stem)
    except SpaceError as err:
        raise err.located(str(path)) from None


def _read(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as err:
        raise SpaceError(None, f"cannot read: {err.strerror}") from None
    try:
        return json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as err:
        raise SpaceError(None, f"does not parse: {err.msg} at line {err.lineno}, column {err.colno}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SpaceError(None, f"does not parse: {problem}{where}") from None
