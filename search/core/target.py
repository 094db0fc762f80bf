"""The search's deployment target: :class:`litv2.target.Target` plus the default for a budget.

The vocabulary (``DEVICE:bsBATCH:RESOLUTION[:PRECISION][:tTHREADS]``) lives in litv2 beside
the measurement protocol that reads it, so ``python -m litv2.bench`` and the search parse
one grammar.
"""
from __future__ import annotations

from litv2.target import Target, parse_target

__all__ = ["Target", "default_target", "parse_target"]


def default_target(budget_kind: str) -> Target:
    """The local device of the budget's kind: a batch-64 fp16 GPU, or batch-1 CPU inference."""
    return Target("cuda", 64, 224, "fp16") if budget_kind == "gpu" else Target("cpu", 1, 224, "fp32")
