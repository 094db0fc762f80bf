"""`LITConfig`: one frozen, JSON-serialisable description of a LIT-family architecture.

Every axis that the search space explores is a field here, so an architecture can be
stored in an Optuna trial, an MLflow run or a YAML file and rebuilt bit-for-bit later.
Per-stage fields are tuples with one entry per stage.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

ATTENTION_KINDS = ("hilo", "msa", "sra", "wmsa", "tmsa")
FFN_KINDS = ("mlp", "convffn")
MERGE_KINDS = ("dtm", "patch")
# Attention kinds that can carry a Swin-style relative position bias.
RPE_ATTENTION_KINDS = ("hilo", "msa", "wmsa")
# Attention kinds with a window (``window_size`` applies; 0 elsewhere).
WINDOWED_KINDS = ("hilo", "wmsa", "tmsa")
_SWITCHES = ("shift", "rel_pos_bias", "qkv_bias", "lofi_valid_average")
_PER_STAGE = ("depths", "num_heads", "attention", "attn_kind", "window_size", "alpha", "sr_ratio")


@dataclass(frozen=True)
class LITConfig:
    """Architecture of a LIT-family model (LITv1, LITv2 and everything in between).

    Attributes:
        embed_dim: channels of stage 1; stage i has ``embed_dim * 2**i``.
        depths: blocks per stage.
        num_heads: attention heads per stage (also used by MLP-only stages' defaults).
        attention: per stage, whether blocks have attention (False = MLP-only stage).
        attn_kind: per stage, one of ``ATTENTION_KINDS``.
        window_size: per stage, HiLo / W-MSA / T-MSA window; 0 where it does not apply.
            For HiLo, 1 means plain global MSA with every head on the Lo-Fi path.
        alpha: per stage, HiLo's fraction of Lo-Fi heads.
        sr_ratio: per stage, spatial reduction of SRA and of T-MSA's global blocks.
        shift: W-MSA alternates shifted windows (Swin) when True.
        ffn: ``"mlp"`` (LITv1) or ``"convffn"`` (3x3 depthwise conv inside the FFN, LITv2).
        rel_pos_bias: Swin-style relative position bias in attention (LITv1's RPE).
        merge: ``"dtm"`` (deformable token merging) or ``"patch"`` (Swin patch merging).
        mlp_ratio: FFN hidden width / block width.
        drop_path_rate: stochastic depth at the last block (linear ramp from 0).
        patch_size: stride of the patch embedding.
        qkv_bias: bias in query/key/value projections.
        lofi_valid_average: on maps whose sides are not multiples of a HiLo window, average
            partial Lo-Fi windows over their valid tokens only. Off by default: the official
            code zero-pads the map and averages over whole windows, zeros included, and its
            checkpoints expect that; the option is for models trained from scratch at such sizes.
    """

    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    attention: tuple[bool, ...] = (False, False, True, True)
    attn_kind: tuple[str, ...] = ("hilo", "hilo", "hilo", "hilo")
    window_size: tuple[int, ...] = (0, 0, 2, 1)
    alpha: tuple[float, ...] = (0.9, 0.9, 0.9, 0.9)
    sr_ratio: tuple[int, ...] = (8, 4, 2, 1)
    shift: bool = True
    ffn: str = "convffn"
    rel_pos_bias: bool = False
    merge: str = "dtm"
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.2
    patch_size: int = 4
    qkv_bias: bool = True
    lofi_valid_average: bool = False

    def __post_init__(self) -> None:
        for name in _PER_STAGE:
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise ValueError(f"LITConfig.{name} must be a sequence with one entry per stage, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        self._validate()

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        n = len(self.depths)
        if n < 1:
            raise ValueError("LITConfig.depths must name at least one stage, got ()")
        for name in _PER_STAGE:
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"LITConfig.{name} has {len(getattr(self, name))} entries, expected {n} (one per stage)"
                )
        _check(self.embed_dim >= 1, "embed_dim", self.embed_dim, "a positive integer")
        _check(self.patch_size >= 1, "patch_size", self.patch_size, "a positive integer")
        _check(self.mlp_ratio > 0, "mlp_ratio", self.mlp_ratio, "a positive number")
        _check(0.0 <= self.drop_path_rate < 1.0, "drop_path_rate", self.drop_path_rate, "in [0, 1)")
        _check(self.ffn in FFN_KINDS, "ffn", self.ffn, f"one of {FFN_KINDS}")
        _check(self.merge in MERGE_KINDS, "merge", self.merge, f"one of {MERGE_KINDS}")
        for name in _SWITCHES:
            _check(isinstance(getattr(self, name), bool), name, getattr(self, name), "True or False")
        for i in range(n):
            dim = self.stage_dims[i]
            _check(self.depths[i] >= 1, f"depths[{i}]", self.depths[i], "a positive integer")
            if not self.attention[i]:
                continue
            heads = self.num_heads[i]
            _check(heads >= 1 and dim % heads == 0, f"num_heads[{i}]", heads,
                   f"a positive divisor of the stage width {dim}")
            kind = self.attn_kind[i]
            _check(kind in ATTENTION_KINDS, f"attn_kind[{i}]", kind, f"one of {ATTENTION_KINDS}")
            if kind in WINDOWED_KINDS:
                _check(self.window_size[i] >= 1, f"window_size[{i}]", self.window_size[i],
                       f"an integer >= 1 for attention kind {kind!r}")
            if kind == "hilo":
                _check(0.0 <= self.alpha[i] <= 1.0, f"alpha[{i}]", self.alpha[i], "in [0, 1]")
            if kind in ("sra", "tmsa"):
                _check(self.sr_ratio[i] >= 1, f"sr_ratio[{i}]", self.sr_ratio[i], "an integer >= 1")
            if self.rel_pos_bias:
                _check(kind in RPE_ATTENTION_KINDS, f"attn_kind[{i}]", kind,
                       f"one of {RPE_ATTENTION_KINDS} when rel_pos_bias is on")

    # ------------------------------------------------------------------ derived
    @property
    def num_stages(self) -> int:
        return len(self.depths)

    @property
    def stage_dims(self) -> tuple[int, ...]:
        return tuple(self.embed_dim * 2**i for i in range(len(self.depths)))

    @property
    def num_features(self) -> int:
        return self.stage_dims[-1]

    @property
    def reduction(self) -> int:
        """Total stride of the last stage relative to the input image."""
        return self.patch_size * 2 ** (len(self.depths) - 1)

    def replace(self, **changes: Any) -> "LITConfig":
        """A copy with some fields changed (validated like a fresh config)."""
        return replace(self, **changes)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for name in _PER_STAGE:
            out[name] = list(out[name])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LITConfig":
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ValueError(f"unknown LITConfig field {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "LITConfig":
        return cls.from_dict(json.loads(text))


def _check(ok: bool, field: str, value: Any, expected: str) -> None:
    if not ok:
        raise ValueError(f"LITConfig.{field}={value!r} is invalid: expected {expected}")


def lofi_heads(num_heads: int, alpha: float, window_size: int) -> int:
    """Number of Lo-Fi heads, exactly as the official code splits them.

    ``int(num_heads * alpha)``; a window of 1 makes Hi-Fi attention meaningless, so every
    head goes to the (then un-pooled, i.e. plain global) Lo-Fi path.
    """
    if window_size == 1:
        return num_heads
    return int(num_heads * alpha)
