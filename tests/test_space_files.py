"""Space files (YAML/JSON round trip, bad input) and the ``python -m space`` command line."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import space
from space.__main__ import examples, main

ROOT = Path(__file__).resolve().parents[1]
ROUND_TRIP = {
    "name": "mine",
    "description": "every kind of dimension",
    "base": "litv2_s",
    "fixed": {"drop_path_rate": 0.1},
    "proxy": {"img_size": 64, "width_mult": 0.5},
    "dimensions": {
        "embed_dim": [64, 96],
        "mlp_ratio": {"low": 3.0, "high": 4.0, "step": 0.5},
        "attn_kind": ["hilo", "wmsa"],
        "alpha_per_stage": [None, None, {"low": 0.0, "high": 1.0}, None],
        "depth": [2, 2, {"low": 2, "high": 8, "step": 2}, 2],
        "mlp_only": [[True, False], True, False, False],
        "window_size": [[1, 2], None, [2, 4], 1],
    },
}


def write(tmp_path: Path, data, suffix: str = ".yaml") -> Path:
    path = tmp_path / f"space{suffix}"
    path.write_text(json.dumps(data) if suffix == ".json" else yaml.safe_dump(data))
    return path


# ---------------------------------------------------------------------- round trips
@pytest.mark.parametrize("name", ["default", "table5", "table4", "alpha", "window", "tiny"])
def test_named_spaces_round_trip_through_yaml(name):
    named = space.get_space(name)
    assert space.SearchSpace.from_dict(yaml.safe_load(named.to_yaml())) == named


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_user_space_round_trips_through_files(tmp_path, suffix):
    mine = space.SearchSpace.from_dict(ROUND_TRIP)
    assert mine.to_dict()["dimensions"] == ROUND_TRIP["dimensions"]
    loaded = space.get_space(str(write(tmp_path, mine.to_dict(), suffix)))
    assert loaded == mine
    assert loaded.base.drop_path_rate == 0.1 and loaded.proxy.width_mult == 0.5


def test_a_file_extends_a_named_space_key_by_key(tmp_path):
    named = space.get_space("alpha")
    mine = space.get_space(str(write(tmp_path, {"extends": "alpha", "dimensions": {"alpha": [0.0, 1.0]},
                                                "experiment": {"seeds": 3}})))
    assert mine.base == named.base and mine.proxy == named.proxy and mine.description == named.description
    assert [c.alpha[2] for c in mine.enumerate()] == [0.0, 1.0]
    assert len(named.enumerate()) == 7


def test_extending_an_unknown_space_names_it(tmp_path):
    path = write(tmp_path, {"extends": "table9"})
    with pytest.raises(space.SpaceError, match=f"^{path}: field 'extends': 'table9' is not a named space; "
                                               "expected one of default"):
        space.get_space(str(path))


def test_file_name_is_the_default_space_name(tmp_path):
    assert space.get_space(str(write(tmp_path, {"dimensions": {"alpha": [0.5, 0.9]}}))).name == "space"


# ---------------------------------------------------------------------- bad input
BAD = [
    # unknown keys: named, with the allowed ones listed
    ({"dimension": {}}, "field 'dimension': unknown key; allowed: name, description, base, fixed"),
    ({"dimensions": {"alfa": 0.5}}, "field 'dimensions.alfa': unknown key; allowed: embed_dim, mlp_ratio"),
    ({"dimensions": {"alpha": {"low": 0, "hi": 1}}},
     "field 'dimensions.alpha.hi': unknown key; allowed: low, high, step"),
    ({"proxy": {"size": 32}, "dimensions": {}}, "field 'proxy.size': unknown key; allowed: img_size, width_mult"),
    ({"fixed": {"heads": 3}, "dimensions": {}},
     "field 'fixed.heads': unknown key; allowed: embed_dim, depths, num_heads"),
    ({"points": [{"label": "a", "extra": 1}]}, "field 'points[0].extra': unknown key; allowed: label, base, fixed"),
    # empty choice lists
    ({"dimensions": {"pos_enc": []}}, "field 'dimensions.pos_enc': empty choice list"),
    ({"dimensions": {"window_size": [None, None, [], 1]}}, "field 'dimensions.window_size[2]': empty choice list"),
    # alpha outside [0, 1]
    ({"dimensions": {"alpha": 1.5}}, "field 'dimensions.alpha': 1.5 is outside [0, 1]"),
    ({"dimensions": {"alpha": {"low": 0.0, "high": 2}}}, "field 'dimensions.alpha': 2.0 is outside [0, 1]"),
    ({"dimensions": {"alpha_per_stage": [None, None, [0.5, -0.1], None]}},
     "field 'dimensions.alpha_per_stage[2]': -0.1 is outside [0, 1]"),
    # window size < 1, non-positive depth
    ({"dimensions": {"window_size": [None, None, 0, 1]}},
     "field 'dimensions.window_size[2]': 0 is not a positive integer"),
    ({"dimensions": {"depth": [2, 0, 6, 2]}}, "field 'dimensions.depth[1]': 0 is outside 1..64"),
    ({"dimensions": {"depth": [2, 65, 6, 2]}}, "field 'dimensions.depth[1]': 65 is outside 1..64"),
    ({"deploy_img_size": 16, "dimensions": {}}, "field 'deploy_img_size': 16 is outside 32..4096"),
    ({"fixed": {"depths": [2, -1, 6, 2]}, "dimensions": {}}, "field 'fixed': LITConfig.depths[1]=-1 is invalid"),
    # heads that do not divide a width
    ({"fixed": {"embed_dim": 64}, "dimensions": {}}, "field 'fixed': LITConfig.num_heads[2]=12 is invalid"),
    ({"dimensions": {"embed_dim": [96, 100]}}, "field 'dimensions.embed_dim': stage 2 would have 12.5 heads for width"),
    ({"fixed": {"num_heads": [5, 6, 12, 24]}, "dimensions": {"mlp_only": [[True, False], True, False, False],
                                                           "window_size": [2, None, None, None]}},
     "field 'fixed.num_heads': stage 0 would have 5 heads for width 96"),
    # other contradictions
    ({"dimensions": {"alpha": "high"}}, "field 'dimensions.alpha': 'high' is not a float"),
    ({"dimensions": {"merge": {"low": 1, "high": 2}}}, "field 'dimensions.merge': a range needs a numeric axis"),
    ({"dimensions": {"depth": [2, 2, {"low": 6, "high": 2}, 2]}}, "field 'dimensions.depth[2]': low 6 is above high 2"),
    ({"dimensions": {"depth": [2, 2, 6]}}, "field 'dimensions.depth': expected a list with one entry per stage (4)"),
    ({"dimensions": {"window_size": [None, None, None, [4, 7]]}},
     "field 'dimensions.window_size[3]': no window in [4, 7] fits stage 3's maps (2x2 at the 64 px proxy"),
    ({"fixed_points": True, "dimensions": {"alpha": {"low": 0.0, "high": 1.0}}},
     "field 'fixed_points': a fixed-point space must be finite"),
    ({"dimensions": {"attn_kind": ["hilo", "sra"], "pos_enc": ["rpe"]}},
     "field 'dimensions.pos_enc': an attention kind"),
    ({"base": "litv9", "dimensions": {}}, "field 'base': unknown config 'litv9'; expected one of litv2_s"),
    ({"dimensions": {}, "points": []}, "a space needs exactly one of 'dimensions' and 'points'"),
    ({"points": [{"label": "a"}, {"label": "b", "fixed": {"alpha": [0.1, 0.2, 0.91, 0.5]}}]},
     "field 'points[1]': same network as points[0] ('a')"),
    ({"points": [{"label": "a", "fixed": {"window_size": [0, 0, 7, 1]}}]},
     "field 'points[0]': window_size[2]=7 does not fit stage 2's maps"),
]


@pytest.mark.parametrize("data, message", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_input_names_the_file_and_the_field(tmp_path, data, message):
    path = write(tmp_path, data)
    with pytest.raises(space.SpaceError) as caught:
        space.get_space(str(path))
    assert str(caught.value).startswith(f"{path}: {message}")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("text, suffix, message", [
    ("dimensions: [\n", ".yaml", "does not parse: expected the node content, but found '<stream end>' at line 2"),
    ('{"dimensions": }', ".json", "does not parse: Expecting value at line 1, column 16"),
    ("- 1\n", ".yaml", "expected a mapping, got list"),
])
def test_unparsable_file(tmp_path, text, suffix, message):
    path = tmp_path / f"broken{suffix}"
    path.write_text(text)
    with pytest.raises(space.SpaceError, match="^" + str(path).replace(".", r"\.") + ": " + message[:20]):
        space.get_space(str(path))


def test_unknown_space_name():
    with pytest.raises(space.SpaceError, match="unknown space 'nope'; expected one of default, table5"):
        space.get_space("nope")


# ---------------------------------------------------------------------- command line
def test_validate_reports_one_line_and_exits_2(tmp_path, capsys):
    path = write(tmp_path, {"dimensions": {"alpha": 1.5}})
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"space: error: {path}: field 'dimensions.alpha': 1.5 is outside [0, 1]\n"
    assert main(["validate", str(write(tmp_path, {"dimensions": {"alpha": [0.5, 0.9]}}))]) == 0
    assert "ok (space 'space', size 2)" in capsys.readouterr().out


def test_show_fixed_points_space(capsys):
    assert main(["show", "table5", "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert "size: 4" in out and "point" in out
    assert "c41198751ccd    27.97M    4.09  msa[-,-,g,g] d[2,2,6,2] mlp+rpe dtm" in out


def test_show_default_ids_match_across_processes():
    done = subprocess.run([sys.executable, "-m", "space", "show", "default"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONHASHSEED": "123"}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "size: infinite" in done.stdout and "alpha" in done.stdout
    printed = re.findall(r"^  ([0-9a-f]{12}) ", done.stdout, flags=re.MULTILINE)
    assert printed == [space.arch_id(config) for config in examples(space.get_space("default"), 3, seed=0)]


def test_show_counts_on_shapes_only_and_draws_no_random_weights(monkeypatch, capsys):
    # What kept `space show` quick: tens of millions of random draws for networks only counted
    # (seconds of CPU each) were dropped. Its speed is a benchmark matter; this is the behaviour.
    import torch
    from timm.layers import weight_init
    from litv2 import model as litv2_model

    def no_draws(*args, **kwargs):
        raise AssertionError("space show drew random weights")

    monkeypatch.setattr(litv2_model, "trunc_normal_", no_draws)
    monkeypatch.setattr(weight_init, "trunc_normal_", no_draws)
    monkeypatch.setattr(torch.nn.init, "trunc_normal_", no_draws)
    rng = torch.random.get_rng_state()
    assert main(["show", "default", "-n", "2"]) == 0
    assert torch.equal(rng, torch.random.get_rng_state())
    assert len(re.findall(r"^  [0-9a-f]{12} ", capsys.readouterr().out, flags=re.MULTILINE)) == 2


def test_import_space_is_cheap():
    code = "import sys, space; assert 'torch' not in sys.modules and 'litv2' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
