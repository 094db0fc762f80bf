"""LITv2 (HiLo attention) and the LIT family as configurable, timm-registered models.

Names resolve lazily (PEP 562), so ``import litv2`` and ``litv2.config`` / ``litv2.target``
stay free of torch: the command lines parse and validate their arguments before the ~4 s
import of the deep-learning stack. The timm models (``litv2_s``, ``lit_custom``, ...) are
registered as soon as a name that needs torch is used (a layer, a model builder), or here at
once when timm was imported first (``import timm, litv2``).
"""
from __future__ import annotations

import importlib
import sys
from typing import Any

_MODULE_OF = {
    **dict.fromkeys(("ATTENTION_KINDS", "FFN_KINDS", "MERGE_KINDS", "LITConfig", "lofi_heads"), "config"),
    **dict.fromkeys(("count_flops", "count_params"), "flops"),
    "HiLo": "layers",
    **dict.fromkeys(("Attention", "SpatialReductionAttention", "WindowAttention", "build_attention"),
                    "layers.attention"),
    **dict.fromkeys(("LITv2", "build_model", "build_zeroed_model"), "model"),
    **dict.fromkeys(("LIT_B", "LIT_M", "LIT_S", "LITV2_B", "LITV2_M", "LITV2_S", "NAMED_CONFIGS", "get_config"),
                    "named"),
}
__all__ = sorted(_MODULE_OF)
_LIGHT_MODULES = ("config", "named")  # no torch: everything else imports it, and then timm is registered too


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'litv2' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    if module not in _LIGHT_MODULES:
        importlib.import_module(".registry", __name__)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


if "timm" in sys.modules:  # timm already paid for: register litv2_s & co. now, as ``import timm, litv2`` expects
    importlib.import_module(".registry", __name__)
