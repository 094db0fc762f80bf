"""`SearchSpace`: named dimensions over LITv2's design axes, sampled define-by-run.

:meth:`SearchSpace.sample` draws an architecture through an ``optuna.Trial`` in this order,
under these parameter names (stable, so Optuna's samplers learn across trials); fixed
dimensions and dimensions that do not apply are never suggested:

=====================  =========================================================
``embed_dim``          channels of stage 1 (heads scale along, keeping head dims)
``mlp_ratio``          FFN expansion
``merge``              ``dtm`` or ``patch``
``depth_s{i}``         blocks of stage ``i``
``mlp_only_s{i}``      stage ``i`` drops attention (LIT's early stages)
``attn_kind``          the attention of all attention stages, if any
``pos_enc``            ``rpe`` / ``convffn`` / ``both`` / ``none``; drawn as
                       ``pos_enc_no_rpe`` (RPE options removed) when the attention
                       kind cannot carry a relative position bias
``ws_s{i}``            window of attention stage ``i`` (HiLo, W-MSA, T-MSA)
``alpha``/``alpha_s{i}``  HiLo's Lo-Fi fraction, shared or per stage, only where the
                       window is > 1 (a window of 1 makes every head Lo-Fi)
``point``              the label, in a points space (an ablation table)
=====================  =========================================================

Validity is built in rather than checked after the fact: window choices that do not fit a
stage's feature map at both the proxy and the deployment resolution are dropped when the
space is built, head counts that would not divide a width make the space itself invalid,
and every sample is returned in :func:`~space.canonical` form, so equivalent draws (alpha
0.85 and 0.9 with 12 heads) are one architecture with one :func:`~space.arch_id`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import TYPE_CHECKING, Any, NamedTuple

import yaml
from litv2 import LITConfig
from litv2.config import RPE_ATTENTION_KINDS, WINDOWED_KINDS

from .dims import Choice, Dimension
from .errors import SpaceError
from .grid import Continuous, Draw, walk
from .identity import arch_id, canonical
from .proxy import ProxySettings, proxy_of, stage_map_sizes, window_fits
from .spec import MAX_FIXED_POINTS, POS_ENCODINGS, Point, dump_space, parse_space

if TYPE_CHECKING:
    import optuna



@dataclass(frozen=True)
class SearchSpace:
    """A set of LITv2 architectures: dimensions over a base config, or a list of fixed points.

    Build one with :meth:`from_dict` or :func:`space.get_space`; the constructor takes the
    already-parsed parts and checks that they fit together.

    Attributes:
        name: the space's name (a named space's, or the file's stem).
        base_name: the ``litv2`` named config the space starts from.
        base: that config with the space's ``fixed`` overrides; unsearched fields come from it.
        axes: flat dimensions by axis name (``alpha``, ``pos_enc``, ...).
        stage_axes: per-stage dimensions by axis name (``None`` = the base's value).
        points: the architectures of a points space, in table order.
        deploy_img_size: input side at which the full-size model is deployed and measured.
        proxy: how the trained proxy is derived (:func:`space.proxy_of`).
        fixed_points: an ablation: every point is evaluated exactly once (see :meth:`grid_params`).
        description: one line for humans.
    """

    name: str
    base_name: str
    base: LITConfig
    axes: Mapping[str, Dimension] = field(default_factory=dict)
    stage_axes: Mapping[str, tuple[Dimension | None, ...]] = field(default_factory=dict)
    points: tuple[Point, ...] = ()
    deploy_img_size: int = 224
    proxy: ProxySettings = ProxySettings()
    fixed_points: bool = False
    description: str = ""

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], default_name: str = "custom") -> "SearchSpace":
        """A space from the mapping of a space file (see :mod:`space.spec`)."""
        return cls(**parse_space(data, default_name))

    def __post_init__(self) -> None:
        for img, field_name in ((self.deploy_img_size, "deploy_img_size"), (self.proxy.img_size, "proxy.img_size")):
            if min(stage_map_sizes(self.base, img)) < 1:
                raise SpaceError(field_name, f"{img} px leaves the last stage without a feature map")
        if self.points:
            self._check_points()
        else:
            resolved = self._resolved  # drops windows that do not fit, checks position encodings
            self._check_heads(resolved.stage_kinds)
            for kind in self.axes["attn_kind"].grid() if "attn_kind" in self.axes else [None]:
                self._check_stage_defaults(resolved, kind)
        if self.fixed_points and self.size() == math.inf:
            raise SpaceError("fixed_points", "a fixed-point space must be finite; a dimension is continuous")
        if self.fixed_points and self.size() > MAX_FIXED_POINTS:
            raise SpaceError("fixed_points", f"{self.size()} points: an ablation table trains every point, and "
                                             f"expects at most {MAX_FIXED_POINTS} (a searched space draws from "
                                             "any number: set fixed_points: false)")

    def _map_sides(self, config: LITConfig, i: int) -> tuple[int, int]:
        """Stage ``i``'s feature-map side at the proxy and at the deployment resolution."""
        return (stage_map_sizes(config, self.proxy.img_size)[i], stage_map_sizes(config, self.deploy_img_size)[i])

    @cached_property
    def _resolved(self) -> "_Resolved":
        """What a dimensions space can draw per stage, with windows that do not fit dropped."""
        base, n = self.base, self.base.num_stages
        kind_options = self.axes["attn_kind"].grid() if "attn_kind" in self.axes else None
        stage_kinds = tuple(
            frozenset(kind_options or [base.attn_kind[i]])
            if False in self._stage_axis("mlp_only", i, not base.attention[i]).grid() else frozenset()
            for i in range(n)
        )
        windows = tuple(self._fitting_windows(i) if kinds & set(WINDOWED_KINDS) else None
                        for i, kinds in enumerate(stage_kinds))
        pos_enc = self._axis("pos_enc", _pos_enc_of(base))
        no_rpe = Choice(tuple(v for v in pos_enc.grid() if not POS_ENCODINGS[v][0]))
        rpe_free = any(kinds - set(RPE_ATTENTION_KINDS) for kinds in stage_kinds)
        if rpe_free and not no_rpe.values:
            raise SpaceError("dimensions.pos_enc", "an attention kind without relative position bias is possible, "
                             "so 'convffn' or 'none' must be a choice")
        return _Resolved(stage_kinds, windows, pos_enc, no_rpe if rpe_free else None)

    def _fitting_windows(self, i: int) -> Choice:
        values = self._stage_axis("window_size", i, self.base.window_size[i]).grid()
        sides = self._map_sides(self.base, i)
        fitting = tuple(w for w in values if window_fits(w, *sides))
        if not fitting:
            where = f"dimensions.window_size[{i}]" if "window_size" in self.stage_axes else "fixed.window_size"
            raise SpaceError(where, f"no window in {list(values)} fits stage {i}'s maps ({sides[0]}x{sides[0]} at the "
                             f"{self.proxy.img_size} px proxy, {sides[1]}x{sides[1]} at {self.deploy_img_size} px)")
        return Choice(fitting)

    def _check_heads(self, stage_kinds: Sequence[frozenset[str]]) -> None:
        """Heads keep the base's head dim as ``embed_dim`` varies; each count must divide its width."""
        base = self.base
        for embed in self._axis("embed_dim", base.embed_dim).grid():
            for i in (i for i, kinds in enumerate(stage_kinds) if kinds):
                heads, width = base.num_heads[i] * embed / base.embed_dim, embed * 2**i
                if heads != int(heads) or heads < 1 or width % heads:
                    where = "dimensions.embed_dim" if embed != base.embed_dim else "fixed.num_heads"
                    raise SpaceError(where, f"stage {i} would have {heads:g} heads for width {width} (embed_dim "
                                     f"{embed}); heads must divide the width")

    def _check_stage_defaults(self, resolved: "_Resolved", kind: str | None) -> None:
        """Unsearched fields (alpha, sr_ratio, ...) of stages that may gain attention must suit it."""
        n = self.base.num_stages
        try:
            self.base.replace(
                attention=tuple(bool(kinds) for kinds in resolved.stage_kinds),
                attn_kind=self.base.attn_kind if kind is None else (kind,) * n,
                window_size=tuple(w.values[0] if w else 0 for w in resolved.windows),
                rel_pos_bias=False,
            )
        except ValueError as err:
            raise SpaceError("fixed", f"{err} (the base's value, for a stage that may have attention)") from None

    def _check_points(self) -> None:
        """Points must fit both resolutions and be distinct networks."""
        seen: dict[str, int] = {}
        for j, point in enumerate(self.points):
            config = point.config
            for i in range(config.num_stages):
                sides = self._map_sides(config, i)
                if min(sides) < 1:
                    raise SpaceError(f"points[{j}]", f"stage {i} has no feature map at {min(sides)} px")
                windowed = config.attention[i] and config.attn_kind[i] in WINDOWED_KINDS
                if windowed and not window_fits(config.window_size[i], *sides):
                    raise SpaceError(f"points[{j}]", f"window_size[{i}]={config.window_size[i]} does not fit stage "
                                     f"{i}'s maps ({sides[0]} px side at the proxy, {sides[1]} deployed)")
            first = seen.setdefault(arch_id(config), j)
            if first != j:
                raise SpaceError(f"points[{j}]", f"same network as points[{first}] ({self.points[first].label!r})")

    # ------------------------------------------------------------------ sampling
    def sample(self, trial: "optuna.Trial") -> LITConfig:
        """Draw one architecture through ``trial`` (define-by-run); always valid and canonical."""
        return canonical(self.draw(trial))

    def draw(self, trial: "optuna.Trial") -> LITConfig:
        """The architecture exactly as ``trial`` draws it: valid, its alphas as sampled.
        :func:`canonical` snaps each alpha to one representative of its head split (the
        network and its id); :func:`summary` of this config shows the sampled alpha beside it."""
        return self._build(lambda name, dim: dim.suggest(trial, name))

    def _build(self, draw: Draw) -> LITConfig:
        def pick(name: str, dim: Dimension) -> Any:
            return dim.grid()[0] if dim.is_fixed else draw(name, dim)

        if self.points:
            labels = Choice(tuple(p.label for p in self.points))
            label = pick("point", labels)
            return next(p.config for p in self.points if p.label == label)
        base, n = self.base, self.base.num_stages
        embed = pick("embed_dim", self._axis("embed_dim", base.embed_dim))
        mlp_ratio = pick("mlp_ratio", self._axis("mlp_ratio", base.mlp_ratio))
        merge = pick("merge", self._axis("merge", base.merge))
        depths = tuple(pick(f"depth_s{i}", self._stage_axis("depth", i, base.depths[i])) for i in range(n))
        attention = tuple(
            not pick(f"mlp_only_s{i}", self._stage_axis("mlp_only", i, not base.attention[i])) for i in range(n)
        )
        kinds = base.attn_kind
        if "attn_kind" in self.axes and any(attention):
            kinds = (pick("attn_kind", self.axes["attn_kind"]),) * n
        resolved = self._resolved
        if all(kinds[i] in RPE_ATTENTION_KINDS for i in range(n) if attention[i]):
            pos_enc = pick("pos_enc", resolved.pos_enc)
        else:
            pos_enc = pick("pos_enc_no_rpe", resolved.pos_enc_no_rpe)
        windows = tuple(
            pick(f"ws_s{i}", resolved.windows[i]) if attention[i] and kinds[i] in WINDOWED_KINDS else 0
            for i in range(n)
        )
        alphas = list(base.alpha)
        local_hilo = [i for i in range(n) if attention[i] and kinds[i] == "hilo" and windows[i] > 1]
        shared = pick("alpha", self.axes["alpha"]) if "alpha" in self.axes and local_hilo else None
        for i in local_hilo:
            alphas[i] = shared if shared is not None else pick(
                f"alpha_s{i}", self._stage_axis("alpha_per_stage", i, base.alpha[i]))
        rel_pos_bias, ffn = POS_ENCODINGS[pos_enc]
        return base.replace(
            embed_dim=embed, depths=depths, attention=attention, attn_kind=kinds, window_size=windows,
            alpha=tuple(alphas), num_heads=tuple(h * embed // base.embed_dim for h in base.num_heads),
            mlp_ratio=mlp_ratio, merge=merge, ffn=ffn, rel_pos_bias=rel_pos_bias,
        )

    def _axis(self, key: str, default: Any) -> Dimension:
        return self.axes.get(key) or Choice((default,))

    def _stage_axis(self, key: str, i: int, default: Any) -> Dimension:
        dims = self.stage_axes.get(key)
        return (dims and dims[i]) or Choice((default,))

    # ------------------------------------------------------------------ finite spaces
    @cached_property
    def _distinct(self) -> tuple[tuple[dict[str, Any], LITConfig], ...] | None:
        """``(params, config)`` of every distinct network (first draw wins); ``None`` when infinite."""
        found: dict[str, tuple[dict[str, Any], LITConfig]] = {}
        try:
            for params, config in walk(self._build):
                found.setdefault(arch_id(config), (params, canonical(config)))
        except Continuous:
            return None
        return tuple(found.values())

    def enumerate(self) -> list[LITConfig]:
        """Every distinct architecture, in grid order.

        Raises:
            ValueError: a dimension the space can draw is continuous.
        """
        if self._distinct is None:
            raise ValueError(f"space {self.name!r} has a continuous dimension and cannot be enumerated")
        return [config for _, config in self._distinct]

    def grid_params(self) -> list[dict[str, Any]]:
        """Trial parameters of each :meth:`enumerate` architecture, in the same order.

        ``study.enqueue_trial(params)`` for each makes :meth:`sample` produce every point
        exactly once: the fixed-point studies of the ablation spaces.
        """
        self.enumerate()
        return [dict(params) for params, _ in self._distinct]

    def size(self) -> int | float:
        """Number of distinct architectures; ``math.inf`` when a dimension is continuous."""
        return math.inf if self._distinct is None else len(self._distinct)

    # ------------------------------------------------------------------ proxies and description
    def proxy_of(self, config: LITConfig) -> LITConfig:
        """The proxy that is trained for ``config``, with this space's proxy settings."""
        return proxy_of(config, width_mult=self.proxy.width_mult, img_size=self.proxy.img_size)

    def dimensions(self) -> list[tuple[str, Dimension, str]]:
        """``(parameter name, dimension, when it is drawn)`` of every searched axis, in draw order."""
        if self.points:
            return [("point", Choice(tuple(p.label for p in self.points)), "")]
        base, n, resolved = self.base, self.base.num_stages, self._resolved
        found = [
            ("embed_dim", self._axis("embed_dim", base.embed_dim), ""),
            ("mlp_ratio", self._axis("mlp_ratio", base.mlp_ratio), ""),
            ("merge", self._axis("merge", base.merge), ""),
            *((f"depth_s{i}", self._stage_axis("depth", i, base.depths[i]), "") for i in range(n)),
            *((f"mlp_only_s{i}", self._stage_axis("mlp_only", i, not base.attention[i]), "") for i in range(n)),
            ("attn_kind", self._axis("attn_kind", None), "a stage has attention"),
            ("pos_enc", resolved.pos_enc, "every attention kind can carry RPE" if resolved.pos_enc_no_rpe else ""),
        ]
        if resolved.pos_enc_no_rpe:
            found.append(("pos_enc_no_rpe", resolved.pos_enc_no_rpe, "an attention kind cannot carry RPE"))
        found += [(f"ws_s{i}", w, f"stage {i} has windowed attention") for i, w in enumerate(resolved.windows) if w]
        local_hilo = [i for i, w in enumerate(resolved.windows) if w and "hilo" in resolved.stage_kinds[i]
                      and max(w.values) > 1]
        if "alpha" in self.axes:
            found.append(("alpha", self.axes["alpha"], "a HiLo stage has a window > 1"))
        else:
            found += [(f"alpha_s{i}", self._stage_axis("alpha_per_stage", i, base.alpha[i]),
                       f"stage {i} is HiLo with a window > 1") for i in local_hilo]
        return [entry for entry in found if not entry[1].is_fixed]

    def to_dict(self) -> dict[str, Any]:
        """The space-file mapping of this space (``from_dict(to_dict())`` gives it back)."""
        return dump_space({part.name: getattr(self, part.name) for part in fields(self)})

    def to_yaml(self) -> str:
        """:meth:`to_dict` as a YAML document, keys in file order."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=100)


class _Resolved(NamedTuple):
    """Per-stage facts of a dimensions space, derived once from its axes and base."""

    stage_kinds: tuple[frozenset[str], ...]  # attention kinds a stage may get (empty: always MLP-only)
    windows: tuple[Choice | None, ...]  # windows that fit, where a windowed kind is possible
    pos_enc: Dimension
    pos_enc_no_rpe: Choice | None  # only where an attention kind without RPE is possible


def _pos_enc_of(config: LITConfig) -> str:
    return next(name for name, value in POS_ENCODINGS.items() if value == (config.rel_pos_bias, config.ffn))
