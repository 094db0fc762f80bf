"""Whole models: config validation, timm registry and conventions, official checkpoints, params and FLOPs."""
import copy
import json
from pathlib import Path

import pytest
import timm
import torch
from timm.layers import get_channel_dim, get_spatial_dim

import litv2
from litv2 import LITConfig, build_model, build_zeroed_model, count_flops, count_params
from litv2.benchmarks import TokenLayer
from official_hilo import OfficialHiLo

pytestmark = pytest.mark.usefixtures("one_thread")

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "official_litv2_state_dicts.json"
TINY = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8))


@pytest.fixture(scope="module")
def official_shapes():
    if not REFERENCE.exists():
        pytest.skip(f"{REFERENCE} is not present")
    return json.loads(REFERENCE.read_text())


NAMES = ("litv2_s", "litv2_m", "litv2_b", "lit_s", "lit_m", "lit_b")


@pytest.fixture(scope="module")
def registered():
    """``registered(name)``: a copy of a registered model with random weights, each built once per module."""
    built: dict[str, torch.nn.Module] = {}

    def get(name: str) -> torch.nn.Module:
        if name not in built:
            torch.manual_seed(0)
            built[name] = timm.create_model(name).eval()
        return copy.deepcopy(built[name])

    return get


def on_meta(name: str, **kwargs) -> torch.nn.Module:
    """A registered model on the meta device: shapes only, so counts, state-dict keys and output
    shapes at full size cost no weight initialisation and no arithmetic."""
    with torch.device("meta"):
        return timm.create_model(name, **kwargs)


# What the official code builds: LITv2 from its README, LITv1 from its code (the LITv1 zoo
# prints 27M / 48M / 86M for these).
@pytest.mark.parametrize("name,params", [
    ("litv2_s", 27_844_000), ("litv2_m", 48_830_368), ("litv2_b", 86_520_704),
    ("lit_s", 27_973_720), ("lit_m", 49_372_264), ("lit_b", 87_292_384),
])
def test_official_parameter_counts(name, params):
    assert count_params(on_meta(name)) == params


@pytest.mark.parametrize("name,embed_dim,depths,heads", [
    ("lit_s", 96, (2, 2, 6, 2), (3, 6, 12, 24)), ("lit_m", 96, (2, 2, 18, 2), (3, 6, 12, 24)),
    ("lit_b", 128, (2, 2, 18, 2), (4, 8, 16, 32)),
])
def test_lit_models_match_litv1_structure(name, embed_dim, depths, heads):
    config = litv2.get_config(name)
    assert (config.embed_dim, config.depths, config.num_heads) == (embed_dim, depths, heads)
    model = on_meta(name)
    assert [len(stage.blocks) for stage in model.layers] == list(depths)
    attn = model.layers[2].blocks[-1].attn
    assert isinstance(attn, litv2.Attention) and attn.num_heads == heads[2] and attn.rel_pos is not None
    assert attn.rel_pos.max_size == (14, 14)  # full-resolution bias table at 224, as the official code
    assert not hasattr(model.layers[0].blocks[0], "attn")
    assert not hasattr(model.layers[0].blocks[0].mlp, "dwconv")
    assert isinstance(model.layers[0].downsample, litv2.layers.DeformableTokenMerging)


@pytest.mark.parametrize("name,gflops", [("litv2_s", 3.734), ("litv2_m", 7.479), ("litv2_b", 13.194), ("lit_s", 4.1)])
def test_flops_match_official_counts(name, gflops):
    assert count_flops(build_zeroed_model(litv2.get_config(name))) / 1e9 == pytest.approx(gflops, rel=0.03)


@pytest.mark.parametrize("alpha,gflops", [(0.0, 3.97), (0.2, 3.88), (0.4, 3.82), (0.5, 3.77), (0.7, 3.74), (0.9, 3.73)])
def test_alpha_sweep_flops(alpha, gflops):
    model = build_zeroed_model(litv2.LITV2_S.replace(alpha=(alpha,) * 4))
    assert abs(count_flops(model) / 1e9 - gflops) <= 0.03


def test_zeroed_model_has_the_shapes_of_the_built_one_and_runs():
    config = LITConfig(**TINY)
    zeroed, built = build_zeroed_model(config, num_classes=10, img_size=32), build_model(config, num_classes=10, img_size=32)
    assert {k: v.shape for k, v in zeroed.state_dict().items()} == {k: v.shape for k, v in built.state_dict().items()}
    assert all(v.device.type == "cpu" and not v.any() for v in zeroed.state_dict().values())
    assert count_flops(zeroed, (3, 32, 32)) == count_flops(built, (3, 32, 32))


def test_flop_counter_counts_sdpa_and_deform_conv():
    hilo = TokenLayer(litv2.HiLo(768, 12, 2, 0.9), 14)
    assert round(count_flops(hilo, input_size=(196, 768)) / 1e6, 2) == 298.30  # published; 286M without SDPA
    model = build_model(LITConfig(**TINY), num_classes=10, img_size=32)
    with_dtm = count_flops(model, (3, 32, 32))
    with_patch = count_flops(build_model(LITConfig(**TINY, merge="patch"), num_classes=10, img_size=32), (3, 32, 32))
    assert with_dtm != with_patch and with_dtm > 0


def test_state_dict_has_exactly_the_official_keys(official_shapes):
    for name, entry in official_shapes.items():
        ours = {k: list(v.shape) for k, v in on_meta(name).state_dict().items()}
        assert ours == entry["state_dict"], name


@pytest.fixture(scope="module")
def official_checkpoint(official_shapes, tmp_path_factory):
    """A LITv2-S file in the official release's layout, with random trained-like values.

    Weights of the size a trained network has (std 0.02 around 0, norm scales around 1): with
    unit-variance weights every softmax and GELU saturates and the comparisons below would
    no longer see how border windows are averaged.
    """
    torch.manual_seed(0)
    state = {}
    for key, shape in official_shapes["litv2_s"]["state_dict"].items():
        if not shape:
            state[key] = torch.tensor(7)  # num_batches_tracked
        elif key.endswith("running_var"):
            state[key] = 1 + 0.1 * torch.randn(shape).abs()
        elif len(shape) == 1 and key.endswith(".weight"):
            state[key] = 1 + 0.1 * torch.randn(shape)
        else:
            state[key] = 0.02 * torch.randn(shape)
    path = tmp_path_factory.mktemp("official") / "litv2_s.pth"
    torch.save({"model": state, "epoch": 299}, path)
    return path, state


@pytest.fixture(scope="module")
def official_litv2_s(official_checkpoint):
    """LITv2-S loaded strictly from the official-layout file through timm (built once, never modified)."""
    path, _ = official_checkpoint
    return timm.create_model("litv2_s", checkpoint_path=str(path)).eval()


def test_official_checkpoint_loads_strictly(official_checkpoint, official_litv2_s, tmp_path):
    _, state = official_checkpoint
    model = official_litv2_s
    assert all(torch.equal(model.state_dict()[key], value) for key, value in state.items())
    x = torch.randn(1, 3, 64, 64)
    before = model(x)
    torch.save(model.state_dict(), tmp_path / "again.pth")
    again = build_zeroed_model(litv2.LITV2_S)
    again.load_state_dict(torch.load(tmp_path / "again.pth"), strict=True)
    assert torch.equal(again.eval()(x), before)


def with_official_hilo(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose HiLo layers compute the official formulation with the same weights."""
    reference = copy.deepcopy(model)
    swapped = 0
    for stage in reference.layers:
        for block in stage.blocks:
            if isinstance(getattr(block, "attn", None), litv2.HiLo):
                block.attn = OfficialHiLo(block.attn)
                swapped += 1
    assert swapped == sum(d for d, a in zip(model.config.depths, model.config.attention) if a)
    return reference


# 224: the ImageNet setting. 208x272: stage 3 is 13x17, not a multiple of its window of 2, as
# the maps of detection inputs (800x1333 gives 50x83).
@pytest.mark.parametrize("size", [(224, 224), (208, 272)], ids=["224", "stage3-13x17"])
def test_official_checkpoint_computes_the_official_formulation(official_litv2_s, size):
    model = official_litv2_s
    reference = with_official_hilo(model)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        expected = reference(x)
        assert (model(x) - expected).abs().max() <= 1e-4
        if size == (208, 272):  # the valid-token average is a different network here, visibly
            valid = build_zeroed_model(litv2.LITV2_S.replace(lofi_valid_average=True)).eval()
            valid.load_state_dict(model.state_dict(), strict=True)  # every value replaced
            assert (valid(x) - expected).abs().max() > 1e-2


def test_timm_registry():
    assert on_meta("litv2_s", num_classes=10).head.out_features == 10
    assert set(NAMES) <= set(timm.list_models("lit*"))


# The next tests follow timm's own tests/test_models.py (test_model_default_cfgs,
# test_model_forward_features, test_model_forward_intermediates, test_model_backward), which
# read the spatial and channel axes of NHWC models such as Swin from ``output_fmt``.
@pytest.mark.parametrize("name", NAMES)
def test_timm_default_cfg_conventions(name):
    """pretrained_cfg, forward_features, forward_head(pre_logits), reset_classifier: shapes at the cfg's input size."""
    model = on_meta(name).eval()
    cfg = model.pretrained_cfg
    assert model.output_fmt == "NHWC"
    spatial, channel = get_spatial_dim(model.output_fmt), get_channel_dim(model.output_fmt)
    pool = tuple(cfg["pool_size"])
    assert pool == tuple(side // model.feature_info[-1]["reduction"] for side in cfg["input_size"][1:])
    x = torch.randn(1, *cfg["input_size"], device="meta")
    features = model.forward_features(x)
    pre_logits = model.forward_head(features, pre_logits=True)
    assert (features.shape[spatial[0]], features.shape[spatial[1]]) == pool
    assert features.shape[channel] == model.num_features
    assert pre_logits.shape == (1, model.head_hidden_size)
    state = model.state_dict()
    # forward() is forward_head(forward_features()): the head alone is run again, as meta
    # forwards of the deep models are not free.
    model.reset_classifier(0)
    assert model.num_classes == 0 and model.forward_head(features).shape == pre_logits.shape
    model.reset_classifier(0, "")  # no pooling either: the unpooled map
    unpooled = model.forward_head(features)
    assert unpooled.ndim == 4 and (unpooled.shape[spatial[0]], unpooled.shape[spatial[1]]) == pool
    assert on_meta(name, num_classes=0, global_pool="").forward_head(features).shape == unpooled.shape
    assert state[cfg["classifier"] + ".weight"].shape == (cfg["num_classes"], model.num_features)
    assert state[cfg["first_conv"] + ".weight"].shape[1] == cfg["input_size"][0]
    data = timm.data.resolve_model_data_config(model)
    assert (data["mean"], data["std"]) == (timm.data.IMAGENET_DEFAULT_MEAN, timm.data.IMAGENET_DEFAULT_STD)
    assert (data["input_size"], data["interpolation"], data["crop_pct"]) == ((3, 224, 224), "bicubic", 0.9)


@pytest.mark.parametrize("name", NAMES)
def test_features_only_maps_match_feature_info(name):
    """features_only: NCHW maps (declared by the wrapper) with feature_info's channels and strides."""
    features = on_meta(name, features_only=True)
    assert features.output_fmt == "NCHW"
    spatial, channel = get_spatial_dim(features.output_fmt), get_channel_dim(features.output_fmt)
    side = 96  # timm's feature-test input size
    maps = features(torch.randn(1, 3, side, side, device="meta"))
    info = features.feature_info
    assert info.reduction() == [4, 8, 16, 32] and len(maps) == 4
    assert info.channels() == [litv2.get_config(name).embed_dim * 2**i for i in range(4)]
    for chans, stride, out in zip(info.channels(), info.reduction(), maps):
        assert out.shape[channel] == chans
        assert (out.shape[spatial[0]], out.shape[spatial[1]]) == (side // stride, side // stride)


@pytest.mark.parametrize("name", ["litv2_s", "lit_s"])
def test_forward_intermediates_and_grad_checkpointing_keep_the_output(name, registered):
    """With real weights (the S models; M and B differ only in depth and width)."""
    model = registered(name)
    info = timm.models.FeatureInfo(model.feature_info, len(model.feature_info))
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x, output_fmt="NCHW")
        assert [tuple(t.shape) for t in intermediates] == [
            (1, chans, 96 // stride, 96 // stride) for chans, stride in zip(info.channels(), info.reduction())]
        assert torch.allclose(final, model.forward_features(x))
        nhwc = model.forward_intermediates(x, indices=2, output_fmt="NHWC", intermediates_only=True)
        assert [torch.equal(a.permute(0, 2, 3, 1), b) for a, b in zip(intermediates[2:], nhwc)] == [True, True]
    model.set_grad_checkpointing()
    checkpointed, _ = model.forward_intermediates(x, output_fmt="NCHW")  # with autograd: checkpoints run
    assert torch.allclose(final, checkpointed, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["litv2_s", "lit_s"])
def test_backward_reaches_every_parameter(name, registered):
    model = registered(name)
    model.reset_classifier(42)
    model.train()
    out = model(torch.randn(2, 3, 128, 128))
    assert out.shape == (2, 42)
    out.mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_grad_checkpointing_recomputes_blocks_and_keeps_loss_and_gradients():
    config = LITConfig(**TINY, drop_path_rate=0.2)
    torch.manual_seed(0)
    model = build_model(config, num_classes=10, img_size=32).train()
    calls = []
    for stage in model.layers:
        for block in stage.blocks:
            block.register_forward_pre_hook(lambda *_: calls.append(1))  # pre: recomputation may stop early
    x = torch.randn(2, 3, 32, 32)

    def step() -> tuple[torch.Tensor, list[torch.Tensor], int]:
        model.zero_grad()
        calls.clear()
        torch.manual_seed(1)  # the same drop-path draws in both runs
        loss = model(x).square().mean()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()], len(calls)

    loss, grads, forwards = step()
    model.set_grad_checkpointing()
    loss_ckpt, grads_ckpt, forwards_ckpt = step()
    blocks = sum(config.depths)
    assert (forwards, forwards_ckpt) == (blocks, 2 * blocks)  # each block runs again in the backward pass
    torch.testing.assert_close(loss_ckpt, loss)
    for ours, reference in zip(grads_ckpt, grads):
        torch.testing.assert_close(ours, reference)
    with torch.no_grad():  # nothing to recompute without autograd
        calls.clear()
        model.eval()(x)
    assert len(calls) == blocks
    model.set_grad_checkpointing(False)
    assert not any(stage.grad_checkpointing for stage in model.layers)


def test_features_only_and_intermediates():
    features = timm.create_model("litv2_s", features_only=True, out_indices=(1, 3))
    maps = features(torch.randn(1, 3, 64, 64))
    assert [m.shape for m in maps] == [(1, 192, 8, 8), (1, 768, 2, 2)]
    assert features.feature_info.channels() == [192, 768]
    model = build_model(LITConfig(**TINY), num_classes=10, img_size=32)
    final, inter = model.forward_intermediates(torch.randn(2, 3, 32, 32))
    assert [t.shape[1:] for t in inter] == [(16, 8, 8), (32, 4, 4), (64, 2, 2), (128, 1, 1)]
    assert final.shape == (2, 1, 1, 128)
    assert model.forward_head(final).shape == (2, 10)
    assert model.forward_head(final, pre_logits=True).shape == (2, 128)
    x = torch.randn(2, 3, 32, 32)
    early, (stage1,) = model.forward_intermediates(x, indices=[-3], stop_early=True)
    assert early.shape == (2, 4, 4, 32) and torch.equal(early.permute(0, 3, 1, 2), stage1)  # no final norm
    assert model.prune_intermediate_layers([0, 1]) == [0, 1]
    assert len(model.layers) == 2 and model.num_features == 32 and isinstance(model.norm, torch.nn.Identity)
    assert model(x).shape == (2, 4, 4, 32)  # no head, no pooling: the unpooled stage-2 map


@pytest.mark.parametrize("size", [(32, 32), (64, 48), (40, 40)])
def test_any_input_size_the_stages_divide(size):
    model = build_model(litv2.LITV2_S.replace(embed_dim=24, num_heads=(1, 2, 4, 8)), num_classes=5, img_size=64)
    x = torch.randn(2, 3, *size, requires_grad=True)
    model(x).sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("changes,field", [
    (dict(depths=(2, 0, 6, 2)), "depths[1]"),
    (dict(num_heads=(3, 6, 7, 24)), "num_heads[2]"),
    (dict(alpha=(0.9, 0.9, 1.2, 0.9)), "alpha[2]"),
    (dict(window_size=(0, 0, 0, 1)), "window_size[2]"),
    (dict(attn_kind=("hilo", "hilo", "flash", "hilo")), "attn_kind[2]"),
    (dict(ffn="kan"), "ffn"),
    (dict(merge="pool"), "merge"),
    (dict(attn_kind=("sra",) * 4, rel_pos_bias=True), "attn_kind[2]"),
    (dict(depths=(2, 2, 6)), "num_heads"),
    (dict(drop_path_rate=1.0), "drop_path_rate"),
    (dict(lofi_valid_average="yes"), "lofi_valid_average"),
])
def test_invalid_config_names_the_field(changes, field):
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        litv2.LITV2_S.replace(**changes)


def test_lofi_valid_average_is_carried_from_the_config_to_hilo():
    assert not litv2.LITV2_S.lofi_valid_average  # the official padding is the default
    config = litv2.LITV2_S.replace(lofi_valid_average=True)
    assert LITConfig.from_json(config.to_json()) == config
    with torch.device("meta"):
        model = build_model(config)
    flags = [block.attn.lofi_valid_average for stage in model.layers[2:] for block in stage.blocks]
    assert flags == [True] * 6 + [False] * 2  # stage 4's window of 1 pools nothing


def test_config_json_round_trip_and_unknown_field():
    config = litv2.LIT_S
    assert LITConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="'heads'"):
        LITConfig.from_dict({"heads": 3})
    with pytest.raises(ValueError, match="config must be a litv2.LITConfig"):
        build_model({"embed_dim": 96})


def test_bench_times_layers_round_robin_and_pairs_their_speedups():
    from litv2.benchmarks import _paired_speedup, _round_robin
    from litv2.measure import MeasureProtocol

    layers = {"small": torch.nn.Linear(8, 8), "large": torch.nn.Sequential(*[torch.nn.Linear(8, 8)] * 200)}
    protocol = MeasureProtocol(min_warmup_seconds=0.01, max_warmup_seconds=0.05, block_seconds=0.005)
    rows = _round_robin(layers, torch.randn(4, 8), torch.device("cpu"), rounds=6, protocol=protocol)
    for row in rows.values():
        assert len(row["seconds"]) == 6 and row["ci"][0] <= row["img_s"] <= row["ci"][1]
    assert _paired_speedup(rows, "small", "large") > 1.0


def test_bench_rejects_bad_input_in_one_line(capsys):
    from litv2.bench import main

    assert main(["measure", "--config", "no_such_model"]) == 2
    assert main(["repeatability", "--target", "gpu:bs1:224"]) == 2
    assert main(["--repeats", "3"]) == 2  # the table, the default command
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("litv2.bench: error: ") for line in lines)
    assert "'no_such_model'" in lines[0] and "'gpu:bs1:224'" in lines[1] and "--repeats 3" in lines[2]


def test_repeatability_measures_in_fresh_processes(tmp_path, capsys):
    from litv2.bench import main

    config = tmp_path / "tiny.json"
    config.write_text(LITConfig(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8)).to_json())
    out = tmp_path / "runs.json"
    assert main(["repeatability", "--config", str(config), "--target", "cpu:bs1:32", "--runs", "2",
                 "--max-seconds", "0.3", "--block-seconds", "0.005", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    pids = {run["pid"] for run in report["runs"]}
    assert len(report["runs"]) == 2 and len(pids) == 2
    medians = [run["median"] for run in report["runs"]]
    assert report["spread"] == pytest.approx(max(medians) / min(medians) - 1)
    assert "spread of the medians" in capsys.readouterr().out
