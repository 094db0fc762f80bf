"""The named architectures: the official LITv2 configs and their LITv1 counterparts.

Plain configs, kept apart from their timm registrations (:mod:`litv2.registry`) so that space
files and command lines can name them without importing torch or timm.
"""
from __future__ import annotations

from pathlib import Path

from .config import LITConfig

LITV2_S = LITConfig()
LITV2_M = LITConfig(depths=(2, 2, 18, 2), drop_path_rate=0.3)
LITV2_B = LITConfig(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.5)
# LITv1 is LITv2 with global MSA + relative position bias for HiLo and a plain MLP for ConvFFN.
_LITV1 = dict(attn_kind=("msa",) * 4, window_size=(0, 0, 0, 0), ffn="mlp", rel_pos_bias=True)
LIT_S = LITV2_S.replace(**_LITV1)
LIT_M = LITV2_M.replace(**_LITV1)
LIT_B = LITV2_B.replace(**_LITV1)

NAMED_CONFIGS: dict[str, LITConfig] = {
    "litv2_s": LITV2_S, "litv2_m": LITV2_M, "litv2_b": LITV2_B, "lit_s": LIT_S, "lit_m": LIT_M, "lit_b": LIT_B,
}


def get_config(name: str) -> LITConfig:
    """The :class:`LITConfig` of a registered model name."""
    if name not in NAMED_CONFIGS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(NAMED_CONFIGS)}")
    return NAMED_CONFIGS[name]


def config_from(text: str, flag: str = "--config") -> LITConfig:
    """A registered model name, or a JSON file holding a :class:`LITConfig` (a trial's ``config``)."""
    if text in NAMED_CONFIGS:
        return NAMED_CONFIGS[text]
    path = Path(text)
    if not path.is_file():
        raise ValueError(f"{flag} {text!r} is neither a model name ({', '.join(NAMED_CONFIGS)}) nor a JSON file")
    return LITConfig.from_json(path.read_text())
