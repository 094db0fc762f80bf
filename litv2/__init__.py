"""LITv2 (HiLo attention) and the LIT family as configurable, timm-registered models.

Names resolve lazily (PEP 562), so ``import litv2`` and ``litv2.config`` / ``litv2.target``
stay free of torch: the command lines parse and validate their arguments before the ~4 s
import of the deep-learning stack. The timm models (``litv2_s``, ``lit_custom``, ...) are
registered as soon as timm is imported (before or after litv2; the model code imports it too).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
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


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'litv2' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


class _RegisterOnTimmImport(importlib.abc.MetaPathFinder):
    """Registers the models right after timm is first imported, so ``import litv2`` followed by
    ``timm.create_model("litv2_s")`` (or an exported ``local-dir:``) works as it always did,
    while ``import litv2`` alone stays free of torch."""

    def find_spec(self, name, path=None, target=None):
        if name != "timm":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("timm")
        if spec is not None and spec.loader is not None:
            run_module = spec.loader.exec_module

            def exec_then_register(module) -> None:
                run_module(module)
                importlib.import_module(".registry", __name__)

            spec.loader.exec_module = exec_then_register
        return spec


if "timm" in sys.modules:  # timm already paid for: register litv2_s & co. now
    importlib.import_module(".registry", __name__)
else:
    sys.meta_path.insert(0, _RegisterOnTimmImport())
