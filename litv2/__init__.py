"""LITv2 (HiLo attention) and the LIT family as configurable, timm-registered models."""
from .config import ATTENTION_KINDS, FFN_KINDS, MERGE_KINDS, LITConfig
from .flops import count_flops, count_params
from .layers import HiLo, lofi_heads
from .layers.attention import Attention, SpatialReductionAttention, WindowAttention, build_attention
from .model import LITv2, build_model, build_zeroed_model
from .registry import LIT_B, LIT_M, LIT_S, LITV2_B, LITV2_M, LITV2_S, NAMED_CONFIGS, get_config

__all__ = [
    "ATTENTION_KINDS", "Attention", "FFN_KINDS", "HiLo", "LITConfig", "LITV2_B", "LITV2_M", "LITV2_S", "LIT_B",
    "LIT_M", "LIT_S", "LITv2", "MERGE_KINDS", "NAMED_CONFIGS", "SpatialReductionAttention", "WindowAttention", "build_attention",
    "build_model", "build_zeroed_model", "count_flops", "count_params", "get_config", "lofi_heads",
]
