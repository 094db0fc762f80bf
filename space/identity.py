"""Architecture identity: one canonical form, a short stable id and a one-line summary.

Many :class:`~litv2.LITConfig` values describe the same network: fields of MLP-only stages,
HiLo's ``alpha`` where the window is 1 (every head is Lo-Fi), any ``alpha`` that yields the
same ``int(num_heads * alpha)`` Lo-Fi heads, ``sr_ratio`` of attentions that have none,
a relative position bias where no attention can carry one, and so on. :func:`canonical`
maps each class to one representative, so :func:`arch_id` - a hash of the canonical form -
is the same for the same network and differs for different ones. The search uses the id to
never train a network twice and as the key of the throughput cache.

Snapped values are the shortest decimal that still builds the same network (the one nearest
the middle of the equivalent range when several are equally short): with 12 heads, alpha
0.85 and 0.91 are both 10 Lo-Fi heads and both become 0.9, as the paper writes LITv2-S, and
the paper's sweep values 0.1 ... 0.9 stay themselves.

``drop_path_rate`` is kept by :func:`canonical` (a proxy is trained with it) but is not part
of the id: it is a training hyperparameter, not a property of the network that is deployed.
Fields added to :class:`~litv2.LITConfig` after ids were first stored enter the hash only
when they differ from their default, so every id already in a study or a throughput cache
still names the same network.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from fractions import Fraction

from litv2 import LITConfig, lofi_heads
from litv2.config import WINDOWED_KINDS

ID_LENGTH = 12
_DEFAULTS = LITConfig()
# LITConfig fields newer than the first stored ids: hashed only away from their default.
LATER_FIELDS = ("lofi_valid_average",)


def canonical(config: LITConfig) -> LITConfig:
    """The representative of every config that builds the same network as ``config``."""
    heads, kinds, windows, alphas, ratios = zip(*(_canonical_stage(config, i) for i in range(config.num_stages)))
    shifted = any(config.attention[i] and config.attn_kind[i] == "wmsa" and config.depths[i] > 1
                  for i in range(config.num_stages))
    return config.replace(
        num_heads=heads, attn_kind=kinds, window_size=windows, alpha=alphas, sr_ratio=ratios,
        shift=config.shift if shifted else _DEFAULTS.shift,
        rel_pos_bias=config.rel_pos_bias and any(_carries_rpe(config, i) for i in range(config.num_stages)),
        merge=config.merge if config.num_stages > 1 else _DEFAULTS.merge,
        qkv_bias=config.qkv_bias if any(config.attention) else _DEFAULTS.qkv_bias,
        mlp_ratio=_snap_mlp_ratio(config),
        lofi_valid_average=config.lofi_valid_average and any(_pools_lofi(config, i) for i in range(config.num_stages)),
    )


def _canonical_stage(config: LITConfig, i: int) -> tuple[int, str, int, float, int]:
    """``(num_heads, attn_kind, window_size, alpha, sr_ratio)`` of stage ``i``, unused ones reset."""
    if not config.attention[i]:
        return 1, "hilo", 0, 0.0, 1
    kind, heads, window = config.attn_kind[i], config.num_heads[i], config.window_size[i]
    alpha = _snap_alpha(heads, config.alpha[i], window) if kind == "hilo" else 0.0
    # T-MSA's sub-sampled global attention sits on odd blocks only.
    has_sr = kind == "sra" or (kind == "tmsa" and config.depths[i] > 1)
    return heads, kind, window if kind in WINDOWED_KINDS else 0, alpha, config.sr_ratio[i] if has_sr else 1


def arch_id(config: LITConfig) -> str:
    """12 hex digits of the sha256 of the canonical form, ``drop_path_rate`` left out."""
    fields = canonical(config).to_dict()
    del fields["drop_path_rate"]
    for name in LATER_FIELDS:
        if fields[name] == getattr(_DEFAULTS, name):
            del fields[name]
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:ID_LENGTH]


def summary(config: LITConfig) -> str:
    """One line such as ``a0.9 lofi[-,-,10/12,24/24] ws[-,-,2,1] d[2,2,6,2] convffn dtm`` (LITv2-S).

    Parts: HiLo's alpha where it matters (one value, or per stage) as ``config`` has it, and
    beside it the head split it makes, Lo-Fi heads / heads of each HiLo stage (``-`` for
    MLP-only and other attention stages; a window of 1 makes every head Lo-Fi); the
    attention layout per stage (``-`` = MLP-only; HiLo / W-MSA windows, T-MSA
    ``window/sr``, SRA ``sr``, MSA ``g``; prefixed by the kind unless it is HiLo); depths;
    FFN, ``+rpe`` with a relative position bias; merging; then embed dim ``e``/MLP ratio
    ``r`` where they differ from LITv2-S, and ``lofi-valid`` for HiLo's valid-token Lo-Fi
    average.

    The alpha is ``config``'s own, not the canonical one: every alpha of one head split is
    one network, so :func:`canonical` snaps 0.5 of 8 heads to 0.6 (4 Lo-Fi heads either
    way). Given the config as sampled, the summary shows the alpha Optuna recorded, and the
    split beside it shows which network that is; everything else is summarised canonical.
    """
    c = canonical(config)
    stages = range(c.num_stages)
    alphas = [f"{config.alpha[i]:g}" if _alpha_matters(c, i) else "-" for i in stages]
    distinct = sorted({a for a in alphas if a != "-"})
    parts = []
    if len(distinct) == 1:
        parts.append(f"a{distinct[0]}")
    elif distinct:
        parts.append(f"a[{','.join(alphas)}]")
    if any(_is_hilo(c, i) for i in stages):
        parts.append(f"lofi[{','.join(_head_split(c, i) for i in stages)}]")
    used = sorted({c.attn_kind[i] for i in stages if c.attention[i]})
    mixed = len(used) > 1
    prefix = "attn" if mixed else "ws" if used in ([], ["hilo"]) else used[0]
    parts.append(f"{prefix}[{','.join(_stage_token(c, i, mixed) for i in stages)}]")
    parts.append(f"d[{','.join(str(d) for d in c.depths)}]")
    parts.append(c.ffn + ("+rpe" if c.rel_pos_bias else ""))
    parts.append(c.merge)
    if c.embed_dim != _DEFAULTS.embed_dim:
        parts.append(f"e{c.embed_dim}")
    if c.mlp_ratio != _DEFAULTS.mlp_ratio:
        parts.append(f"r{c.mlp_ratio:g}")
    if c.lofi_valid_average:
        parts.append("lofi-valid")
    return " ".join(parts)


def _head_split(c: LITConfig, i: int) -> str:
    """``lofi/heads`` of a HiLo stage, as :class:`litv2.layers.hilo.HiLo` splits them; else ``-``."""
    if not _is_hilo(c, i):
        return "-"
    return f"{lofi_heads(c.num_heads[i], c.alpha[i], c.window_size[i])}/{c.num_heads[i]}"


def _stage_token(c: LITConfig, i: int, with_kind: bool) -> str:
    if not c.attention[i]:
        return "-"
    kind = c.attn_kind[i]
    detail = {"hilo": f"{c.window_size[i]}", "wmsa": f"{c.window_size[i]}",
              "tmsa": f"{c.window_size[i]}/{c.sr_ratio[i]}", "sra": f"{c.sr_ratio[i]}", "msa": ""}[kind]
    if with_kind:
        return kind + detail
    return detail or "g"


def _hifi_heads(config: LITConfig, i: int) -> int:
    return config.num_heads[i] - lofi_heads(config.num_heads[i], config.alpha[i], config.window_size[i])


def _is_hilo(config: LITConfig, i: int) -> bool:
    return config.attention[i] and config.attn_kind[i] == "hilo"


def _alpha_matters(config: LITConfig, i: int) -> bool:
    return _is_hilo(config, i) and config.window_size[i] > 1


def _pools_lofi(config: LITConfig, i: int) -> bool:
    """Whether stage ``i`` has average-pooled Lo-Fi heads (the only place partial windows are averaged)."""
    return (_alpha_matters(config, i)
            and lofi_heads(config.num_heads[i], config.alpha[i], config.window_size[i]) > 0)


def _carries_rpe(config: LITConfig, i: int) -> bool:
    """Whether stage ``i`` has parameters for a relative position bias (HiLo: in Hi-Fi heads only)."""
    if not config.attention[i]:
        return False
    kind = config.attn_kind[i]
    return kind in ("msa", "wmsa") or (kind == "hilo" and _hifi_heads(config, i) > 0)


def _snap_alpha(num_heads: int, alpha: float, window_size: int) -> float:
    """The representative alpha of the head split ``lofi_heads(num_heads, alpha, window_size)``."""
    if window_size == 1:
        return 1.0  # every head is Lo-Fi whatever alpha says
    lofi = lofi_heads(num_heads, alpha, window_size)
    if lofi == num_heads:
        return 1.0
    return _shortest_decimal(
        Fraction(lofi, num_heads), Fraction(lofi + 1, num_heads),
        lambda value: lofi_heads(num_heads, value, window_size) == lofi,
    )


def _snap_mlp_ratio(config: LITConfig) -> float:
    """The representative ratio giving every stage the same ``int(width * mlp_ratio)`` hidden width."""
    dims = config.stage_dims
    hidden = [int(dim * config.mlp_ratio) for dim in dims]
    low = max(Fraction(h, d) for h, d in zip(hidden, dims))
    high = min(Fraction(h + 1, d) for h, d in zip(hidden, dims))
    return _shortest_decimal(low, high, lambda value: value > 0 and [int(d * value) for d in dims] == hidden)


def _shortest_decimal(low: Fraction, high: Fraction, same: Callable[[float], bool]) -> float:
    """The shortest decimal in ``[low, high)`` for which ``same`` holds, the most central on ties.

    ``same`` re-checks each candidate in float arithmetic, the arithmetic the model builder
    uses, so a candidate on a float rounding edge is skipped. The first precision with any
    candidate has at most ten of them (the previous one had none), so the loop is short.
    """
    middle = (low + high) / 2
    for digits in range(18):
        scale = 10**digits
        first, stop = -(-low * scale // 1), -(-high * scale // 1)  # ceilings
        for numerator in sorted(range(first, stop), key=lambda n: (abs(Fraction(n, scale) - middle), n)):
            if same(numerator / scale):
                return numerator / scale
    raise AssertionError(f"no decimal in [{low}, {high})")  # unreachable: the interval is never empty
