"""The search space of LITv2 architectures: dimensions, validity rules, sampling, identity.

The search and the ablations see architectures only through this package::

    import optuna, space
    study_space = space.get_space("default")
    config = study_space.sample(trial)        # a valid, canonical litv2.LITConfig
    space.arch_id(config), space.summary(config), study_space.proxy_of(config)

Attributes resolve lazily so ``import space`` stays cheap (``litv2`` pulls in torch).
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SearchSpace": "search_space", "get_space": "registry", "load_space": "registry", "SPACE_NAMES": "registry",
    "arch_id": "identity", "canonical": "identity", "summary": "identity",
    "proxy_of": "proxy", "ProxySettings": "proxy", "window_fits": "proxy", "stage_map_sizes": "proxy",
    "Choice": "dims", "IntRange": "dims", "FloatRange": "dims", "Dimension": "dims",
    "SpaceError": "errors", "Point": "spec", "POS_ENCODINGS": "spec", "row_label": "grid",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'space' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
