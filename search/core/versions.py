"""Which versions of the libraries a figure, a model or a table was made with.

Records (model cards, benchmark tables, MLflow runs) name the package versions so that a
figure can be traced to its software; a package that is absent is named too, as
``not installed``, because its absence is part of that record.
"""
from __future__ import annotations

import importlib.metadata as metadata
from typing import Iterable

NOT_INSTALLED = "not installed"


def installed_versions(packages: Iterable[str]) -> dict[str, str]:
    """``{package: version}`` for each distribution name in ``packages``, in order;
    ``"not installed"`` for one this environment lacks."""
    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = NOT_INSTALLED
    return versions
