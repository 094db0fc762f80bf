"""Building blocks of the LIT family (attention, FFN, token merging, blocks)."""
from .attention import Attention, SpatialReductionAttention, WindowAttention, build_attention
from .blocks import AttentionBlock, FFNBlock
from .ffn import ConvFFN, DepthwiseConv, Mlp, build_ffn
from .hilo import HiLo, lofi_heads
from .deform import DeformConv2d, sampled_deform_conv2d
from .merge import DeformableTokenMerging, PatchEmbed, PatchMerging, build_merge
from .rel_pos import RelativePositionBias

__all__ = [
    "Attention", "AttentionBlock", "ConvFFN", "DeformConv2d", "DeformableTokenMerging", "DepthwiseConv",
    "FFNBlock", "HiLo", "Mlp", "PatchEmbed", "PatchMerging", "RelativePositionBias",
    "SpatialReductionAttention", "WindowAttention", "build_attention", "build_ffn", "build_merge", "lofi_heads",
    "sampled_deform_conv2d",
]
