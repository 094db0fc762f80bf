"""Whole models: config validation, timm registry, official checkpoints, params and FLOPs."""
import json
from pathlib import Path

import pytest
import timm
import torch

import litv2
from litv2 import LITConfig, build_model, count_flops, count_params
from litv2.bench import TokenLayer

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "official_litv2_state_dicts.json"
TINY = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8))


@pytest.fixture(scope="module")
def official_shapes():
    if not REFERENCE.exists():
        pytest.skip(f"{REFERENCE} is not present")
    return json.loads(REFERENCE.read_text())


@pytest.mark.parametrize("name,params", [("litv2_s", 27_844_000), ("litv2_m", 48_830_368), ("litv2_b", 86_520_704)])
def test_official_parameter_counts(name, params):
    assert count_params(timm.create_model(name)) == params


def test_lit_s_matches_litv1_structure():
    model = timm.create_model("lit_s")
    assert 27.0e6 <= count_params(model) <= 28.0e6
    assert isinstance(model.layers[2].blocks[0].attn, litv2.Attention)
    assert model.layers[2].blocks[0].attn.rel_pos is not None
    assert not hasattr(model.layers[0].blocks[0], "attn")
    assert not hasattr(model.layers[0].blocks[0].mlp, "dwconv")


@pytest.mark.parametrize("name,gflops", [("litv2_s", 3.734), ("litv2_m", 7.479), ("litv2_b", 13.194), ("lit_s", 4.1)])
def test_flops_match_official_counts(name, gflops):
    assert count_flops(timm.create_model(name)) / 1e9 == pytest.approx(gflops, rel=0.03)


@pytest.mark.parametrize("alpha,gflops", [(0.0, 3.97), (0.2, 3.88), (0.4, 3.82), (0.5, 3.77), (0.7, 3.74), (0.9, 3.73)])
def test_alpha_sweep_flops(alpha, gflops):
    model = build_model(litv2.LITV2_S.replace(alpha=(alpha,) * 4))
    assert abs(count_flops(model) / 1e9 - gflops) <= 0.03


def test_flop_counter_counts_sdpa_and_deform_conv():
    hilo = TokenLayer(litv2.HiLo(768, 12, 2, 0.9), 14)
    assert round(count_flops(hilo, input_size=(196, 768)) / 1e6, 2) == 298.30  # published; 286M without SDPA
    model = build_model(LITConfig(**TINY), num_classes=10, img_size=32)
    with_dtm = count_flops(model, (3, 32, 32))
    with_patch = count_flops(build_model(LITConfig(**TINY, merge="patch"), num_classes=10, img_size=32), (3, 32, 32))
    assert with_dtm != with_patch and with_dtm > 0


def test_state_dict_has_exactly_the_official_keys(official_shapes):
    for name, entry in official_shapes.items():
        ours = {k: list(v.shape) for k, v in timm.create_model(name).state_dict().items()}
        assert ours == entry["state_dict"], name


def test_official_checkpoint_loads_strictly(official_shapes, tmp_path):
    torch.manual_seed(0)
    shapes = official_shapes["litv2_s"]["state_dict"]
    state = {k: torch.randn(v) if v else torch.tensor(7) for k, v in shapes.items()}
    for key in state:
        if key.endswith("running_var"):
            state[key] = state[key].abs() + 0.5
    path = tmp_path / "litv2_s.pth"
    torch.save({"model": state, "epoch": 299}, path)
    model = timm.create_model("litv2_s", checkpoint_path=str(path)).eval()
    assert torch.equal(model.state_dict()["head.weight"], state["head.weight"])
    x = torch.randn(1, 3, 64, 64)
    before = model(x)
    torch.save(model.state_dict(), tmp_path / "again.pth")
    again = timm.create_model("litv2_s")
    again.load_state_dict(torch.load(tmp_path / "again.pth"), strict=True)
    assert torch.equal(again.eval()(x), before)


def test_timm_registry_and_pretrained_cfg():
    model = timm.create_model("litv2_s", num_classes=10)
    assert model.head.out_features == 10
    assert model.pretrained_cfg["input_size"] == (3, 224, 224)
    assert model.pretrained_cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN
    assert {"litv2_s", "litv2_m", "litv2_b", "lit_s"} <= set(timm.list_models("lit*"))


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
])
def test_invalid_config_names_the_field(changes, field):
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        litv2.LITV2_S.replace(**changes)


def test_config_json_round_trip_and_unknown_field():
    config = litv2.LIT_S
    assert LITConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="'heads'"):
        LITConfig.from_dict({"heads": 3})
    with pytest.raises(ValueError, match="config must be a litv2.LITConfig"):
        build_model({"embed_dim": 96})


def test_bench_times_layers_round_robin_and_pairs_their_speedups():
    from litv2.bench import _paired_speedup, _round_robin
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
