"""Proxy scaling: the small model that is trained in place of the deployed one.

A search cannot train every candidate at full size on ImageNet, so each candidate is
trained as a *proxy*: the same network at a fraction of the channels on small images (e.g.
64x64), while the full-size config is what is measured for throughput on the deployment
target. :func:`proxy_of` derives the proxy by one rule:

* **Only the width shrinks.** ``embed_dim`` is multiplied by ``width_mult`` and rounded to
  the nearest multiple that keeps every attention stage's *head count*; all other fields -
  depths, MLP-only stages, attention kinds, windows, alpha, sr ratios, FFN, position
  encoding, merging, MLP ratio - are copied unchanged.
* **Head counts are kept, head dims shrink.** HiLo splits heads, not channels
  (``int(num_heads * alpha)`` Lo-Fi heads), so keeping the head count keeps the Hi-Fi/Lo-Fi
  split exactly; shrinking heads instead would move the split of a given alpha.
* **Windows must fit the proxy map.** A window wider than the proxy's feature map would
  turn local attention into global attention over padding - a different network from the
  deployed one. The search space only offers windows that fit both maps
  (:func:`window_fits`); :func:`proxy_of` refuses the others.

Every searched axis therefore has the same value in the proxy and in the deployed model:
the ablation compares the same structural choices at both scales, and only the capacity
and the input resolution differ. Scaling by a multiplier rather than to a fixed width keeps
a searched ``embed_dim`` ordered in the proxies too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from litv2 import LITConfig
from litv2.config import WINDOWED_KINDS


@dataclass(frozen=True)
class ProxySettings:
    """How a search space's proxies are made: input side and channel multiplier for :func:`proxy_of`."""

    img_size: int = 64
    width_mult: float = 0.25


def stage_map_sizes(config: LITConfig, img_size: int) -> tuple[int, ...]:
    """Feature-map side of each stage for a square ``img_size`` input (224 -> 56, 28, 14, 7)."""
    return tuple(img_size // (config.patch_size * 2**i) for i in range(config.num_stages))


def window_fits(window_size: int, *map_sides: int) -> bool:
    """A window fits when it is no wider than every given feature map (non-divisible maps are padded)."""
    return all(1 <= window_size <= side for side in map_sides)


def _head_multiple(config: LITConfig) -> int:
    """Smallest ``m`` such that every ``embed_dim`` multiple of ``m`` keeps the head counts valid."""
    multiple = 1
    for i in range(config.num_stages):
        if config.attention[i]:
            heads = config.num_heads[i]
            multiple = math.lcm(multiple, heads // math.gcd(heads, 2**i))
    return multiple


def proxy_of(config: LITConfig, width_mult: float = 0.25, img_size: int = 64) -> LITConfig:
    """The proxy of ``config``: ``embed_dim * width_mult`` (rounded to keep head counts), all else equal.

    Raises:
        ValueError: a window of ``config`` does not fit the proxy's feature maps at ``img_size``.
    """
    if width_mult <= 0:
        raise ValueError(f"width_mult={width_mult!r} must be > 0")
    sides = stage_map_sizes(config, img_size)
    for i, side in enumerate(sides):
        if side < 1:
            raise ValueError(f"img_size={img_size} leaves stage {i} without a feature map")
        window = config.window_size[i]
        if config.attention[i] and config.attn_kind[i] in WINDOWED_KINDS and not window_fits(window, side):
            raise ValueError(
                f"window_size[{i}]={window} does not fit stage {i}'s {side}x{side} map at {img_size}x{img_size}"
            )
    multiple = _head_multiple(config)
    width = max(1, math.floor(config.embed_dim * width_mult / multiple + 0.5)) * multiple
    return config.replace(embed_dim=width)
