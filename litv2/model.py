"""The LIT-family backbone built from a :class:`~litv2.config.LITConfig`.

Module and parameter names follow the official LITv2 release (``patch_embed``,
``layers.{i}.blocks.{j}``, ``layers.{i}.downsample``, ``norm``, ``head``) so official
checkpoints load with ``strict=True``. Feature access follows timm's conventions for NHWC
models such as Swin: ``forward_features`` returns ``(B, H, W, C)`` and the model declares
``output_fmt = "NHWC"`` so timm's tooling reads the axes right, while ``forward_intermediates``
and ``features_only`` give NCHW maps by default, as dense-prediction necks expect.
"""
from __future__ import annotations

import itertools

import torch
from timm.layers import trunc_normal_
from timm.models._features import feature_take_indices
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import LITConfig
from .layers import AttentionBlock, FFNBlock, PatchEmbed, build_attention, build_ffn, build_merge


class LITStage(nn.Module):
    """The blocks of one stage, then (except in the last stage) the token merging."""

    def __init__(self, config: LITConfig, index: int, drop_path: list[float], map_size: tuple[int, int]) -> None:
        super().__init__()
        dim = config.stage_dims[index]
        hidden = int(dim * config.mlp_ratio)
        blocks: list[nn.Module] = []
        for j, rate in enumerate(drop_path):
            mlp = build_ffn(config.ffn, dim, hidden)
            if config.attention[index]:
                attn = build_attention(
                    config.attn_kind[index], dim, config.num_heads[index],
                    window_size=config.window_size[index], alpha=config.alpha[index],
                    sr_ratio=config.sr_ratio[index], rel_pos_bias=config.rel_pos_bias, shift=config.shift,
                    block_index=j, max_size=map_size, qkv_bias=config.qkv_bias,
                    lofi_valid_average=config.lofi_valid_average,
                )
                blocks.append(AttentionBlock(dim, attn, mlp, rate))
            else:
                blocks.append(FFNBlock(dim, mlp, rate))
        self.blocks = nn.ModuleList(blocks)
        last = index == config.num_stages - 1
        self.downsample = None if last else build_merge(config.merge, dim, config.stage_dims[index + 1])
        self.grad_checkpointing = False

    def forward_blocks(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
                # Recompute the block in the backward pass instead of storing its activations.
                x = checkpoint(block, x, H, W, use_reentrant=False)
            else:
                x = block(x, H, W)
        return x

    def merge(self, x: torch.Tensor, H: int, W: int) -> tuple[torch.Tensor, int, int]:
        if self.downsample is None:
            return x, H, W
        return self.downsample(x, H, W)


class LITv2(nn.Module):
    """LIT-family classifier / backbone.

    Args:
        config: the architecture.
        num_classes: classifier outputs; 0 for a backbone with an identity head.
        img_size: nominal input side; sizes relative position bias tables only. Any input
            whose sides survive the patch embedding and merges works.
        in_chans: input channels.
        drop_rate: dropout before the head.
        global_pool: ``"avg"`` or ``""`` (no pooling in :meth:`forward_head`).
    """

    def __init__(
        self,
        config: LITConfig,
        num_classes: int = 1000,
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        if num_classes < 0:
            raise ValueError(f"num_classes={num_classes} must be >= 0")
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool={global_pool!r} must be 'avg' or ''")
        self.config = config
        self.output_fmt = "NHWC"
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = config.num_features
        img = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.patch_embed = PatchEmbed(in_chans, config.embed_dim, config.patch_size)
        total = sum(config.depths)
        rates = [config.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        self.layers = nn.ModuleList()
        self.feature_info = []
        start = 0
        for i, depth in enumerate(config.depths):
            stride = config.patch_size * 2**i
            map_size = (max(img[0] // stride, 1), max(img[1] // stride, 1))
            self.layers.append(LITStage(config, i, rates[start : start + depth], map_size))
            self.feature_info.append(dict(num_chs=config.stage_dims[i], reduction=stride, module=f"layers.{i}"))
            start += depth
        self.norm = nn.LayerNorm(config.num_features)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(config.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if any(p.is_meta for p in module.parameters(recurse=False)):
            return  # shapes only (build_zeroed_model): random draws on the meta device cost seconds for nothing
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------ timm API
    @torch.jit.ignore
    def no_weight_decay_keywords(self) -> set[str]:
        return {"relative_position_bias_table"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^patch_embed", blocks=r"^layers\.(\d+)" if coarse else r"^layers\.(\d+)\.blocks\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block during the backward pass: activation memory for compute."""
        for stage in self.layers:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _stages(self, x: torch.Tensor, stop: int | None = None):
        """Yield ``(stage index, tokens before merging, H, W)`` for each stage."""
        x, H, W = self.patch_embed(x)
        last = len(self.layers) - 1 if stop is None else stop
        for i, stage in enumerate(self.layers[: last + 1]):
            x = stage.forward_blocks(x, H, W)
            yield i, x, H, W
            if i < last:
                x, H, W = stage.merge(x, H, W)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised last-stage map, ``(B, H, W, C)`` (timm's NHWC convention, as Swin)."""
        for _, tokens, H, W in self._stages(x):
            pass
        return self.norm(tokens).reshape(tokens.shape[0], H, W, -1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(1, 2))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Per-stage maps (before merging), timm style.

        ``indices``: stage indices, or an int n for the last n stages; ``norm`` applies the
        final norm to the last stage's map; ``output_fmt`` is ``"NCHW"`` or ``"NHWC"`` for the
        intermediates (the final map is NHWC, as :meth:`forward_features`).
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt={output_fmt!r} must be 'NCHW' or 'NHWC'")
        num = len(self.layers)
        wanted, max_index = feature_take_indices(num, indices)
        stop = max_index if (stop_early or intermediates_only) else None
        intermediates = []
        for i, tokens, H, W in self._stages(x, stop):
            if i in wanted:
                out = self.norm(tokens) if (norm and i == num - 1) else tokens
                out = out.reshape(out.shape[0], H, W, -1)
                intermediates.append(out.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else out)
        if intermediates_only:
            return intermediates
        if i == num - 1:
            tokens = self.norm(tokens)  # the final norm is sized for (and only applied to) the last stage
        return tokens.reshape(tokens.shape[0], H, W, -1), intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True) -> list[int]:
        """Drop the stages after the last wanted one (and the norm and head), timm style.

        The final norm and the head are sized for the last stage, so they go whenever stages
        are dropped; ``num_features`` then describes the new last stage.
        """
        wanted, max_index = feature_take_indices(len(self.layers), indices)
        prune_end = max_index < len(self.layers) - 1
        self.layers = self.layers[: max_index + 1]
        self.layers[-1].downsample = None
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return wanted


def build_model(config: LITConfig, num_classes: int = 1000, img_size: int | tuple[int, int] = 224, in_chans: int = 3, **kwargs) -> LITv2:
    """Build the network described by ``config`` (see :class:`LITv2` for the arguments)."""
    if not isinstance(config, LITConfig):
        raise ValueError(f"config must be a litv2.LITConfig, got {type(config).__name__}")
    return LITv2(config, num_classes=num_classes, img_size=img_size, in_chans=in_chans, **kwargs)


def build_zeroed_model(config: LITConfig, num_classes: int = 1000, img_size: int | tuple[int, int] = 224,
                       in_chans: int = 3, **kwargs) -> LITv2:
    """:func:`build_model` with every parameter and buffer zero, for what depends on shapes only.

    Parameter and FLOP counts need no weights, while drawing tens of millions of random ones
    costs seconds of CPU: the network is built on the meta device and zero-filled instead.
    """
    with torch.device("meta"):
        model = build_model(config, num_classes=num_classes, img_size=img_size, in_chans=in_chans, **kwargs)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            tensor.zero_()
    return model
