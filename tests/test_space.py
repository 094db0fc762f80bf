"""The search space: identity (canonical form, id, summary), proxies, sampling, named spaces.

"Same network" is judged independently of ``space.canonical``: by what ``litv2`` actually
builds (module types, their scalar settings and parameter shapes), at a tiny width.
"""
from __future__ import annotations

import math
import random

import optuna
import pytest
import timm
import torch
from optuna.trial import FixedTrial

import litv2
import space
from litv2 import LIT_S, LITV2_S, lofi_heads
from space.registry import SPACES_DIR

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.usefixtures("one_thread")


def fingerprint(config: litv2.LITConfig) -> tuple:
    """What the model builder makes of ``config``: every module's type, scalar settings and parameter shapes.

    Built at the smallest width that keeps the head counts (the structure is width-independent
    for these configs) and without stochastic depth, which the id deliberately ignores.
    """
    small = space.proxy_of(config.replace(drop_path_rate=0.0), width_mult=1e-3, img_size=64)
    model = litv2.build_model(small, num_classes=0, img_size=64)
    modules = tuple(
        (name, type(module).__name__, tuple(sorted(
            (key, value) for key, value in vars(module).items()
            if not key.startswith("_") and key != "training" and isinstance(value, (bool, int, float, str, tuple))
        )))
        for name, module in model.named_modules()
    )
    return modules, tuple((name, tuple(p.shape)) for name, p in model.named_parameters())


def random_trials(search_space: space.SearchSpace, count: int, seed: int = 0) -> list[tuple[dict, litv2.LITConfig]]:
    """``(params, config)`` of ``count`` trials of Optuna's RandomSampler."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(count):
        trial = study.ask()
        config = search_space.sample(trial)
        study.tell(trial, 0.0)
        out.append((trial.params, config))
    return out


def custom(**dimensions) -> space.SearchSpace:
    return space.SearchSpace.from_dict({"dimensions": dimensions})


# ---------------------------------------------------------------------- canonical form and id
@pytest.mark.parametrize("config", [LITV2_S, LIT_S], ids=["litv2_s", "lit_s"])
def test_canonical_is_idempotent_and_builds_the_same_network(config):
    once = space.canonical(config)
    assert space.canonical(once) == once
    assert space.arch_id(once) == space.arch_id(config)
    assert fingerprint(once) == fingerprint(config)


def test_alpha_is_snapped_to_the_head_split():
    # 12 heads: 0.85 and 0.91 are both int(12 * a) = 10 Lo-Fi heads; 0.95 is 11.
    same = [LITV2_S.replace(alpha=(0.9, 0.9, a, 0.9)) for a in (0.85, 0.9, 0.91)]
    assert len({space.arch_id(c) for c in same}) == 1
    assert space.canonical(same[0]).alpha[2] == 0.9
    assert space.arch_id(LITV2_S.replace(alpha=(0.9, 0.9, 0.95, 0.9))) != space.arch_id(LITV2_S)
    # 6 heads: 0.91 and 0.95 are both 5 Lo-Fi heads.
    six = LITV2_S.replace(num_heads=(3, 6, 6, 24))
    assert len({space.arch_id(six.replace(alpha=(0.9, 0.9, a, 0.9))) for a in (0.91, 0.95)}) == 1


def test_snapped_alpha_keeps_the_lofi_head_count_under_float_rounding():
    rng = random.Random(0)
    for _ in range(3000):
        heads, alpha = rng.randint(1, 64), rng.random()
        config = LITV2_S.replace(embed_dim=heads, num_heads=(1, 1, heads, heads), alpha=(0.9, 0.9, alpha, 0.9))
        snapped = space.canonical(config).alpha[2]
        assert lofi_heads(heads, snapped, 2) == lofi_heads(heads, alpha, 2)
    # The paper's sweep values on 12 heads are their own representatives.
    sweep = [round(0.1 * k, 1) for k in range(11)]
    assert [space.canonical(LITV2_S.replace(alpha=(0.9, 0.9, a, 0.9))).alpha[2] for a in sweep] == sweep


@pytest.mark.parametrize("change", [
    dict(alpha=(0.1, 0.3, 0.9, 0.2)),                 # MLP-only stages; window 1 in stage 4
    dict(window_size=(5, 7, 2, 1), sr_ratio=(1, 2, 3, 4), num_heads=(1, 2, 12, 24)),  # unused fields
    dict(attn_kind=("msa", "sra", "hilo", "hilo")),     # kinds of MLP-only stages
    dict(shift=False),                                 # no W-MSA stage
    dict(drop_path_rate=0.05),                         # training hyperparameter, not in the id
    dict(mlp_ratio=4.0001),                            # same hidden widths
], ids=["alpha", "unused", "mlp-only-kind", "shift", "drop-path", "mlp-ratio"])
def test_fields_that_do_not_change_the_network_do_not_change_the_id(change):
    other = LITV2_S.replace(**change)
    assert space.arch_id(other) == space.arch_id(LITV2_S)
    assert fingerprint(other) == fingerprint(LITV2_S)


def test_relative_position_bias_only_counts_where_a_stage_can_carry_it():
    all_lofi = LITV2_S.replace(alpha=(0.9, 0.9, 1.0, 1.0))  # no Hi-Fi heads: nowhere to put a bias
    assert space.arch_id(all_lofi.replace(rel_pos_bias=True)) == space.arch_id(all_lofi)
    assert fingerprint(all_lofi.replace(rel_pos_bias=True)) == fingerprint(all_lofi)
    assert space.arch_id(LITV2_S.replace(rel_pos_bias=True)) != space.arch_id(LITV2_S)


@pytest.mark.parametrize("change", [
    dict(alpha=(0.9, 0.9, 0.5, 0.9)), dict(window_size=(0, 0, 4, 1)), dict(depths=(2, 2, 4, 2)),
    dict(attention=(False, True, True, True), window_size=(0, 2, 2, 1)), dict(ffn="mlp"), dict(merge="patch"),
    dict(rel_pos_bias=True), dict(attn_kind=("hilo", "hilo", "msa", "msa")), dict(mlp_ratio=3.0), dict(embed_dim=64,
    num_heads=(2, 4, 8, 16)),
], ids=["alpha", "window", "depth", "attention", "ffn", "merge", "rpe", "kind", "mlp-ratio", "width"])
def test_different_networks_get_different_ids(change):
    assert space.arch_id(LITV2_S.replace(**change)) != space.arch_id(LITV2_S)


def test_wmsa_shift_and_tmsa_sr_count_only_where_they_act():
    wmsa = LITV2_S.replace(attn_kind=("wmsa",) * 4, window_size=(0, 0, 2, 2))
    assert space.arch_id(wmsa.replace(shift=False)) != space.arch_id(wmsa)
    single = wmsa.replace(depths=(2, 2, 1, 1))  # one block per stage: nothing is ever shifted
    assert space.arch_id(single.replace(shift=False)) == space.arch_id(single)
    assert fingerprint(single.replace(shift=False)) == fingerprint(single)
    tmsa = single.replace(attn_kind=("tmsa",) * 4)  # only the local (even) block exists
    assert space.arch_id(tmsa.replace(sr_ratio=(8, 4, 7, 7))) == space.arch_id(tmsa)


def test_id_is_short_hex_and_pinned():
    ids = [space.arch_id(config) for config in litv2.NAMED_CONFIGS.values()]
    assert all(len(i) == 12 and int(i, 16) >= 0 for i in ids) and len(set(ids)) == len(ids)
    # Pinned: a change here invalidates every throughput cache. (Cross-process: test_space_files.)
    assert space.arch_id(LITV2_S) == "c500a0a1ae55"


def test_lofi_valid_average_is_a_different_network_only_where_lofi_pools():
    valid = LITV2_S.replace(lofi_valid_average=True)
    assert space.arch_id(valid) != space.arch_id(LITV2_S) and fingerprint(valid) != fingerprint(LITV2_S)
    assert space.summary(valid) == "a0.9 lofi[-,-,10/12,24/24] ws[-,-,2,1] d[2,2,6,2] convffn dtm lofi-valid"
    no_pooled_lofi = LITV2_S.replace(alpha=(0.0,) * 4)  # stage 3 all Hi-Fi, stage 4 window 1
    same = no_pooled_lofi.replace(lofi_valid_average=True)
    assert space.canonical(same) == space.canonical(no_pooled_lofi)
    assert space.arch_id(same) == space.arch_id(no_pooled_lofi) and fingerprint(same) == fingerprint(no_pooled_lofi)


def test_summary():
    assert space.summary(LITV2_S) == "a0.9 lofi[-,-,10/12,24/24] ws[-,-,2,1] d[2,2,6,2] convffn dtm"
    assert space.summary(LIT_S) == "msa[-,-,g,g] d[2,2,6,2] mlp+rpe dtm"
    mixed = LITV2_S.replace(attn_kind=("hilo", "hilo", "hilo", "sra"), alpha=(0.9, 0.9, 0.5, 0.9), embed_dim=48,
                            num_heads=(3, 6, 12, 24))
    assert space.summary(mixed) == "a0.5 lofi[-,-,6/12,-] attn[-,-,hilo2,sra1] d[2,2,6,2] convffn dtm e48"
    no_attention = LITV2_S.replace(attention=(False,) * 4, mlp_ratio=3.0)
    assert space.summary(no_attention) == "ws[-,-,-,-] d[2,2,6,2] convffn dtm r3"


# ---------------------------------------------------------------------- proxies
def test_proxy_keeps_every_searched_axis_and_the_head_split():
    proxy = space.proxy_of(LITV2_S, width_mult=0.25, img_size=64)
    assert proxy.embed_dim == 24
    assert proxy.replace(embed_dim=96) == LITV2_S
    built = litv2.build_model(proxy, num_classes=10, img_size=64)
    hilo = built.layers[2].blocks[0].attn
    assert (hilo.l_heads, hilo.h_heads) == (10, 2)  # as in LITv2-S at full width
    assert built(torch.zeros(1, 3, 64, 64)).shape == (1, 10)


def test_proxy_width_is_rounded_to_keep_head_counts_and_keeps_width_order():
    widths = [space.proxy_of(LITV2_S.replace(embed_dim=e, num_heads=tuple(h * e // 96 for h in (3, 6, 12, 24))),
                             width_mult=0.25).embed_dim for e in (64, 96, 128)]
    assert widths == [16, 24, 32]
    assert space.proxy_of(LITV2_S, width_mult=0.3).embed_dim == 30  # 28.8 -> nearest multiple of 3
    assert space.proxy_of(LITV2_S, width_mult=1e-3).embed_dim == 3


def test_proxy_refuses_windows_that_do_not_fit_the_proxy_map():
    with pytest.raises(ValueError, match="window_size\\[2\\]=4"):
        space.proxy_of(LITV2_S.replace(window_size=(0, 0, 4, 1)), img_size=32)
    assert space.window_fits(2, 4, 14) and not space.window_fits(4, 2, 14)


# ---------------------------------------------------------------------- default space
def test_default_samples_are_valid_fit_both_resolutions_and_build():
    default = space.get_space("default")
    trials = random_trials(default, 300)
    for params, config in trials:
        assert space.canonical(config) == config
        for i in range(config.num_stages):
            if config.attention[i]:
                proxy_side = space.stage_map_sizes(config, default.proxy.img_size)[i]
                deploy_side = space.stage_map_sizes(config, default.deploy_img_size)[i]
                assert space.window_fits(config.window_size[i], proxy_side, deploy_side)
                assert config.stage_dims[i] % config.num_heads[i] == 0
    for _, config in trials[:6]:
        proxy = default.proxy_of(config)
        model = litv2.build_model(proxy, num_classes=10, img_size=default.proxy.img_size)
        assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 10)
    full = litv2.build_model(trials[0][1])
    assert full(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)


def test_1000_random_draws_from_default_build_and_never_give_one_network_two_ids():
    configs = {}
    for _, config in random_trials(space.get_space("default"), 1000):
        configs.setdefault(space.arch_id(config), config)
    assert len(configs) > 500
    # Building is the slow part: build and fingerprint a deterministic quarter of the distinct networks.
    ids = sorted(configs)[::4]
    owners: dict[tuple, str] = {}
    for arch in ids:
        owner = owners.setdefault(fingerprint(configs[arch]), arch)
        assert owner == arch, f"{space.summary(configs[owner])} and {space.summary(configs[arch])} are one network"


def test_conditional_dimensions_are_drawn_only_where_they_apply():
    always = {"mlp_ratio", "merge", "pos_enc", "mlp_only_s0", "mlp_only_s1", *(f"depth_s{i}" for i in range(4))}
    allowed = always | {"alpha", *(f"ws_s{i}" for i in range(4))}
    for params, config in random_trials(space.get_space("default"), 300, seed=1):
        assert always <= set(params) <= allowed
        for i in range(4):
            assert (f"ws_s{i}" in params) == config.attention[i]
        assert ("alpha" in params) == any(config.window_size[i] > 1 for i in range(4) if config.attention[i])


def test_default_searches_stage_depths_around_litv2_s_and_the_mlp_ratio():
    default = space.get_space("default")
    dims = {name: dim for name, dim, _ in default.dimensions()}
    depths = [tuple(dims[f"depth_s{i}"].grid()) for i in range(4)]
    assert all(depth in values for depth, values in zip(LITV2_S.depths, depths))
    assert (min(depths[2]), max(depths[2])) == (2, 10) and len(depths[2]) > max(len(d) for d in depths[:2] + depths[3:])
    assert LITV2_S.mlp_ratio in dims["mlp_ratio"].grid() and len(dims["mlp_ratio"].grid()) > 1
    drawn = [config for _, config in random_trials(default, 200, seed=2)]
    assert {config.depths[2] for config in drawn} == set(depths[2])
    assert {config.mlp_ratio for config in drawn} == set(dims["mlp_ratio"].grid())
    # Deeper is costlier: what the budget of a search has to see.
    params = dict(mlp_ratio=4.0, depth_s0=2, depth_s1=2, depth_s3=2, mlp_only_s0=True, mlp_only_s1=True,
                  pos_enc="convffn", merge="dtm", ws_s2=2, ws_s3=1, alpha=0.9)
    sizes = []
    for depth in (2, 10):
        with torch.device("meta"):
            sizes.append(litv2.count_params(litv2.build_model(default.sample(FixedTrial({**params, "depth_s2": depth})))))
    assert sizes[1] > 1.5 * sizes[0]


def test_default_windows_are_filtered_per_stage():
    dims = {name: dim for name, dim, _ in space.get_space("default").dimensions()}
    assert [dims[f"ws_s{i}"].values for i in range(4)] == [(1, 2, 4, 7), (1, 2, 4, 7), (1, 2, 4), (1, 2)]
    small_proxy = space.SearchSpace.from_dict({"proxy": {"img_size": 32}, "dimensions": {
        "window_size": [None, None, [1, 2, 4], [1, 2]]}})
    assert [dim.values for name, dim, _ in small_proxy.dimensions()] == [(1, 2)]  # stage 4 keeps only 1: fixed


def test_equivalent_draws_are_one_architecture():
    default = space.get_space("default")
    params = dict(mlp_ratio=4.0, depth_s0=2, depth_s1=2, depth_s2=6, depth_s3=2, mlp_only_s0=True, mlp_only_s1=True,
                  pos_enc="convffn", merge="dtm", ws_s2=2, ws_s3=1)
    configs = [default.sample(FixedTrial({**params, "alpha": a})) for a in (0.84, 0.9, 0.91)]
    assert configs[0] == configs[1] == configs[2]
    assert space.arch_id(configs[0]) == space.arch_id(LITV2_S)
    assert configs[0] == space.canonical(LITV2_S)


def test_infinite_space_has_no_enumeration():
    default = space.get_space("default")
    assert default.size() == math.inf
    with pytest.raises(ValueError, match="continuous"):
        default.enumerate()


# ---------------------------------------------------------------------- validity rules in custom spaces
def test_embed_dim_scales_heads_with_the_base_head_dim():
    widths = custom(embed_dim=[64, 96, 128], mlp_only=[[True, False], True, False, False],
                    window_size=[2, None, None, None])
    for config in widths.enumerate():
        assert [d // h for d, h, a in zip(config.stage_dims, config.num_heads, config.attention) if a] == \
            [32] * sum(config.attention)
    assert widths.size() == 6


def test_rpe_is_never_paired_with_an_attention_that_cannot_carry_it():
    kinds = custom(attn_kind=["hilo", "sra"], pos_enc=["rpe", "convffn", "none"])
    for params, config in zip(kinds.grid_params(), kinds.enumerate()):
        if config.attn_kind[2] == "sra":
            assert "pos_enc" not in params and params["pos_enc_no_rpe"] in ("convffn", "none")
            assert not config.rel_pos_bias
    assert kinds.size() == 3 + 2


def test_per_stage_alpha_and_ranges():
    per_stage = custom(alpha_per_stage=[None, None, {"low": 0.0, "high": 1.0, "step": 0.25}, [0.5, 1.0]],
                       window_size=[None, None, 2, [1, 2]], depth=[1, 1, {"low": 2, "high": 6, "step": 2}, 1])
    assert [name for name, _, _ in per_stage.dimensions()] == ["depth_s2", "ws_s3", "alpha_s2", "alpha_s3"]
    # 12 heads: 0, .25, .5, .75, 1 are 0, 3, 6, 9, 12 Lo-Fi heads; stage 4: window 1, or 2 at two alphas.
    assert per_stage.size() == 3 * 5 * 3
    for params in per_stage.grid_params():
        assert ("alpha_s3" in params) == (params["ws_s3"] == 2)


def test_fixed_points_study_runs_every_point_exactly_once():
    alpha = space.get_space("alpha")
    study = optuna.create_study()
    for params in alpha.grid_params():
        study.enqueue_trial(params)
    ids = []
    for _ in range(alpha.size()):
        trial = study.ask()
        ids.append(space.arch_id(alpha.sample(trial)))
        study.tell(trial, 0.0)
    assert ids == [space.arch_id(c) for c in alpha.enumerate()]
    assert len(set(ids)) == 7  # the paper's alpha sweep: 0, 0.2, 0.4, 0.5, 0.7, 0.9, 1


# ---------------------------------------------------------------------- named spaces
def test_named_spaces_load_and_replay_their_grid():
    assert set(space.SPACE_NAMES) == {p.stem for p in SPACES_DIR.glob("*.yaml")}
    for name in space.SPACE_NAMES:
        named = space.get_space(name)
        assert named.name == name and named.description
        if named.size() == math.inf:
            continue
        for params, config in zip(named.grid_params(), named.enumerate()):
            assert named.sample(FixedTrial(params)) == config


def test_table5_reproduces_the_papers_endpoints():
    table5 = space.get_space("table5")
    assert table5.fixed_points and table5.size() == 4
    lit_s, convffn, no_rpe, litv2_s = table5.enumerate()
    assert space.arch_id(lit_s) == space.arch_id(LIT_S)
    assert (convffn.ffn, convffn.rel_pos_bias, no_rpe.ffn, no_rpe.rel_pos_bias) == ("convffn", True, "convffn", False)
    flops = litv2.count_flops(litv2.build_model(lit_s))
    assert abs(flops / 4.1e9 - 1) < 0.03
    reference = timm.create_model("litv2_s")
    assert space.arch_id(litv2_s) == space.arch_id(reference.config)
    assert litv2.count_params(litv2.build_model(litv2_s)) == litv2.count_params(reference) == 27_844_000


def test_table4_swaps_the_attention_of_litv2_s():
    table4 = space.get_space("table4")
    configs = table4.enumerate()
    assert [c.attn_kind[2] for c in configs] == ["msa", "sra", "wmsa", "tmsa", "hilo"]
    assert space.arch_id(configs[-1]) == space.arch_id(LITV2_S)
    for config in configs:
        model = litv2.build_model(table4.proxy_of(config), num_classes=10, img_size=table4.proxy.img_size)
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 10)


def test_alpha_and_window_sweeps():
    heads = [lofi_heads(12, c.alpha[2], c.window_size[2]) for c in space.get_space("alpha").enumerate()]
    assert heads == [0, 2, 4, 6, 8, 10, 12]  # alpha 0, 0.2, 0.4, 0.5, 0.7, 0.9, 1 (the paper's sweep)
    windows = [c.window_size[2:] for c in space.get_space("window").enumerate()]
    assert windows == [(1, 1), (2, 1), (4, 1)]  # stage 3's window; stage 4 keeps LITv2's 1


def test_tiny_holds_the_three_contrasting_architectures_and_trains_on_cpu():
    tiny = space.get_space("tiny")
    base = tiny.base
    wanted = {
        "hilo-0.9": base.replace(window_size=(0, 0, 2, 2), alpha=(0.9,) * 4),
        "hilo-0.0": base.replace(window_size=(0, 0, 2, 2), alpha=(0.0,) * 4),
        "mlp-only": base.replace(attention=(False,) * 4),
    }
    ids = {space.arch_id(c) for c in tiny.enumerate()}
    assert {space.arch_id(c) for c in wanted.values()} <= ids
    hilo = space.canonical(wanted["hilo-0.9"])
    assert [lofi_heads(h, a, w) for h, a, w in zip(hilo.num_heads[2:], hilo.alpha[2:], hilo.window_size[2:])] == [7, 14]
    for config in tiny.enumerate():
        proxy = tiny.proxy_of(config)
        assert proxy.embed_dim == 32 and sum(proxy.depths) == 5
        model = litv2.build_model(proxy, num_classes=10, img_size=tiny.proxy.img_size)
        model(torch.zeros(2, 3, 64, 64)).sum().backward()
