"""The latency table of LIT parts (litv2.latency) and its commands (python -m space lut)."""
import json
import subprocess
import sys

import pytest

from litv2 import LITV2_S, LITConfig
from litv2.latency import (
    LatencyTable, OutdatedTable, Part, build_part, build_table, load_table, parts_of, predict, resume_table, save_table,
)
from litv2.measure import MeasureProtocol, device_fingerprint
from litv2.target import parse_target

TINY = LITConfig(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), window_size=(0, 0, 2, 1),
                 attention=(False, False, True, True), alpha=(0.9, 0.9, 0.5, 0.9))


def test_a_network_is_its_stem_block_halves_merges_and_head_in_forward_order():
    parts = parts_of(TINY, 64)
    assert [p.kind for p in parts] == ["stem", "ffn", "merge", "ffn", "merge", "attention", "ffn", "attention", "ffn",
                                       "merge", "attention", "ffn", "head"]  # MLP-only stages have no attention half
    sizes = [dict(p.spec)["size"] for p in parts if p.kind == "ffn"]
    assert sizes == [[16, 16], [8, 8], [4, 4], [4, 4], [2, 2]]  # 64 px / patch 4, halved by each merge
    assert sum(p.kind == "ffn" for p in parts_of(LITV2_S, 224)) == sum(LITV2_S.depths)
    # An FFN half is one part whatever attention comes before it.
    assert len({p.key for p in parts if p.kind == "ffn" and dict(p.spec)["size"] == [4, 4]}) == 1


def test_two_architectures_that_build_the_same_part_share_its_entry():
    # Stage 4's attention is MSA-like here (window 1): its alpha changes nothing that is built...
    other_alpha = TINY.replace(alpha=(0.1, 0.1, 0.5, 0.3))
    assert [p.key for p in parts_of(TINY, 64)] == [p.key for p in parts_of(other_alpha, 64)]
    # ...while stage 3's alpha sets how many heads are Lo-Fi: a different part there, the rest shared.
    mine, theirs = parts_of(TINY, 64), parts_of(TINY.replace(alpha=(0.9, 0.9, 0.75, 0.9)), 64)
    differ = [i for i, (a, b) in enumerate(zip(mine, theirs)) if a.key != b.key]
    assert [dict(mine[i].spec)["lofi"] for i in differ] == [2, 2] and [dict(theirs[i].spec)["lofi"] for i in differ] == [3, 3]
    assert {mine[i].kind for i in differ} == {"attention"}
    assert Part.from_key(mine[0].key) == mine[0]


def test_every_part_builds_and_runs_on_its_input():
    import torch

    for part in {p.key: p for p in parts_of(TINY, 64)}.values():
        timed = build_part(part).eval()
        with torch.inference_mode():
            out = timed(torch.empty(0))
        if part.kind == "head":
            assert out.shape == (1, 1000)


def test_a_prediction_is_the_sum_of_its_parts_times_the_overhead_factor():
    target = parse_target("cpu:bs2:64")
    parts = parts_of(TINY, 64, batch_size=2)
    table = LatencyTable(target.key, {"device_name": "x"},
                         {p.key: dict(seconds=0.001 * (i + 1), low=0.0, high=1.0) for i, p in enumerate(parts)},
                         overhead_factor=1.1)
    expected = sum(table.parts[p.key]["seconds"] for p in parts) * 1.1  # a part met twice counts twice
    got = predict(TINY, target, table)
    assert got.seconds == pytest.approx(expected) and got.img_s == pytest.approx(2 / expected)
    assert got.latency_ms == pytest.approx(1000 * expected)
    with pytest.raises(KeyError, match="not in the latency table, nor between two of its parts"):
        predict(TINY.replace(embed_dim=32), target, table)


def _part(kind: str, **spec) -> Part:
    return Part.of(kind, dim=64, size=[8, 8], batch=1, **spec)


def test_a_part_between_two_measured_ones_on_its_axis_is_interpolated_and_nothing_else_is():
    table = LatencyTable("t", {}, {_part("ffn", hidden=128, ffn="convffn").key: dict(seconds=0.002),
                                   _part("ffn", hidden=256, ffn="convffn").key: dict(seconds=0.004)})
    assert table.seconds(_part("ffn", hidden=160, ffn="convffn")) == pytest.approx(0.0025)
    assert table.seconds(_part("ffn", hidden=256, ffn="convffn")) == 0.004  # measured: as measured
    for outside in (_part("ffn", hidden=512, ffn="convffn"),  # beyond the measured ends: not extrapolated
                    _part("ffn", hidden=160, ffn="mlp")):  # another family
        with pytest.raises(KeyError):
            table.seconds(outside)


def test_lofi_heads_are_interpolated_only_strictly_between_their_ends():
    def hilo(lofi: int) -> Part:
        return _part("attention", attn_kind="hilo", heads=8, lofi=lofi, window=2, qkv_bias=True, rel_pos_bias=False,
                     lofi_valid_average=False)

    measured = {0: 0.010, 1: 0.012, 7: 0.018, 8: 0.009}  # 0 and 8 lack a whole branch: not on the line
    table = LatencyTable("t", {}, {hilo(v).key: dict(seconds=s) for v, s in measured.items()})
    assert table.seconds(hilo(4)) == pytest.approx(0.015)  # between 1 and 7, not between 0 and 8
    only_ends = LatencyTable("t", {}, {hilo(v).key: dict(seconds=measured[v]) for v in (0, 8)})
    with pytest.raises(KeyError):
        only_ends.seconds(hilo(4))
    # Asked for 2-6 Lo-Fi heads, a build measures the segment's own ends (1 and heads - 1) and the value
    # nearest its middle (the first of two as near).
    assert [p.key for p in only_ends.missing([hilo(v) for v in (0, 2, 3, 5, 6, 8)])] == [hilo(v).key for v in (1, 3, 7)]


def test_a_build_measures_the_ends_and_middle_of_each_axis_and_every_part_when_asked():
    parts = [_part("ffn", hidden=h, ffn="mlp") for h in (128, 160, 192, 224, 256)] + [_part("stem", patch=4)]
    ends_and_middle = LatencyTable("t", {}).missing(parts)
    assert [dict(p.spec).get("hidden") for p in ends_and_middle] == [None, 128, 192, 256]
    assert len(LatencyTable("t", {}).missing(parts, interpolate=False)) == 6
    # A table that already spans a value needs nothing for it; one beyond its ends needs that value.
    spanned = LatencyTable("t", {}, {p.key: dict(seconds=0.001) for p in ends_and_middle})
    assert spanned.missing(parts) == [] and spanned.missing([_part("ffn", hidden=320, ffn="mlp")]) == [
        _part("ffn", hidden=320, ffn="mlp")]


def test_the_interpolation_error_is_how_far_a_measured_middle_lies_off_its_neighbours_line():
    table = LatencyTable("t", {}, {_part("ffn", hidden=h, ffn="mlp").key: dict(seconds=s)
                                   for h, s in ((128, 0.002), (192, 0.0025), (256, 0.004))})
    assert table.interpolation_errors() == [pytest.approx(0.003 / 0.0025 - 1)]


def test_a_table_is_built_once_per_part_saved_as_it_goes_and_resumed(tmp_path, monkeypatch):
    import litv2.latency as latency

    measured = []
    monkeypatch.setattr(latency, "measure_part", lambda part, target: measured.append(part.key) or
                        dict(seconds=0.001, low=0.0009, high=0.0011))
    target, path = parse_target("cpu:bs1:64"), tmp_path / "lut.json"
    saved = []
    table = build_table([TINY, TINY.replace(alpha=(0.1, 0.1, 0.5, 0.3))], target,
                        save=lambda t: (save_table(t, path), saved.append(len(t.parts))), interpolate=False)
    assert len(measured) == len(set(measured)) == len({p.key for p in parts_of(TINY, 64)})  # shared parts once
    assert saved == list(range(1, len(measured) + 1))  # after every part
    again = build_table([TINY, TINY.replace(depths=(1, 1, 3, 1))], target, load_table(path))
    assert len(measured) == len(table.parts) and again.parts.keys() == table.parts.keys()  # nothing new to measure


def test_a_table_of_another_target_or_node_is_refused_in_one_line(tmp_path):
    target = parse_target("cpu:bs1:64")
    here = device_fingerprint("cpu")
    table = LatencyTable(target.key, {**here, "torch": "0.0"})
    with pytest.raises(ValueError, match="was measured on .*this node is .*build one here"):
        table.check(target, here)
    with pytest.raises(ValueError, match="is for target 'cpu:bs1:64:fp32:t1', not 'cpu:bs1:224:fp32:t1'"):
        LatencyTable(target.key, here).check(parse_target("cpu:bs1:224"), here)
    path = tmp_path / "lut.json"
    save_table(table, path)
    run = subprocess.run([sys.executable, "-m", "space", "lut", "check", "--space", "tiny", "--target", "cpu:bs1:64",
                          "--lut", str(path), "-n", "2"], capture_output=True, text=True)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.startswith("space: error: latency table was measured on") and run.stderr.count("\n") == 1
    path.write_text(json.dumps({"version": 1}))  # whole blocks, no axes: a build starts it anew
    with pytest.raises(OutdatedTable, match="version 1 is not 2, whose parts this predictor reads: build the table "
                                            "again"):
        load_table(path)
    assert resume_table(path) is None
    path.write_text(json.dumps({"version": 99}))
    with pytest.raises(ValueError, match="version 99 is not 2, whose parts this predictor reads: build the table "
                                         "again"):
        load_table(path)


def test_predicting_a_network_whose_parts_the_table_lacks_is_one_line_and_exit_2(tmp_path):
    target = parse_target("cpu:bs1:64")
    path = tmp_path / "lut.json"
    save_table(LatencyTable(target.key, device_fingerprint("cpu")), path)
    run = subprocess.run([sys.executable, "-m", "litv2.bench", "predict", "--config", "litv2_s", "--target",
                          "cpu:bs1:64", "--lut", str(path)], capture_output=True, text=True)
    assert run.returncode == 2 and run.stdout == "" and run.stderr.count("\n") == 1
    assert run.stderr.startswith("litv2.bench: error: --config 'litv2_s': ") and "add them with --build" in run.stderr


@pytest.mark.parametrize("argv, message", [
    (["build", "--space", "nope"], "unknown space 'nope'"),
    (["build", "--space", "tiny", "--target", "gpu:bs1"], "target 'gpu:bs1'"),
    (["build", "--space", "tiny", "--samples", "0"], "--samples 0 is invalid"),
    (["check", "--space", "tiny", "-n", "0"], "-n 0 is invalid"),
    (["check", "--space", "tiny", "--plot", "/no/such/folder/p.png"], "--plot '/no/such/folder/p.png' is invalid"),
    (["check", "--space", "tiny", "--lut", "/no/such/folder/l.json"], "--lut '/no/such/folder/l.json' is invalid"),
])
def test_bad_lut_input_is_one_line_and_exit_2(argv, message):
    run = subprocess.run([sys.executable, "-m", "space", "lut", *argv], capture_output=True, text=True)
    assert run.returncode == 2, run.stderr
    assert message in run.stderr and run.stderr.count("\n") == 1 and run.stdout == ""


def test_a_real_part_is_measured_with_the_protocol():
    """One real measurement: seconds per call with its interval, on the node's reference clock."""
    from litv2.latency import measure_part

    part = parts_of(TINY, 64)[-1]  # the head: quick
    figure = measure_part(part, parse_target("cpu:bs1:64"),
                          MeasureProtocol(min_warmup_seconds=0.05, max_warmup_seconds=0.2, block_seconds=0.01,
                                          max_seconds=0.3))
    assert 0 < figure["low"] <= figure["seconds"] <= figure["high"] < 1.0


def test_the_overhead_factor_is_the_median_of_measured_over_parts(monkeypatch):
    from types import SimpleNamespace

    import litv2.latency as latency

    monkeypatch.setattr(latency, "measure_part", lambda part, target: dict(seconds=0.001, low=0.001, high=0.001))
    ratios = iter([1.2, 1.1, 1.5])  # what each whole network takes over the sum of its parts

    def whole(config, target):
        parts = len(parts_of(config, target.img_size, target.batch_size)) * 0.001
        return SimpleNamespace(median=target.batch_size / (parts * next(ratios)))

    monkeypatch.setattr(latency, "measure_config", whole)
    configs = [TINY, TINY.replace(embed_dim=24), TINY.replace(embed_dim=32)]  # no part in common
    table = build_table(configs[:1], parse_target("cpu:bs1:64"), overhead_configs=configs)  # their parts measured too
    assert table.overhead_factor == pytest.approx(1.2) and len(table.overhead_from) == 3


def test_the_overhead_is_fitted_on_networks_spread_over_the_sizes_of_the_architectures(monkeypatch):
    """Not five random draws, which can all land at one end of the space's sizes: the networks
    at the 10th, 30th, ... 90th percentile of their sums of parts."""
    from litv2.latency import spread_by_size

    target = parse_target("cpu:bs1:64")
    configs = [TINY.replace(depths=(1, 1, depth, 1)) for depth in range(1, 11)]  # sums of parts grow with depth
    parts = {p.key: dict(seconds=0.001) for c in configs for p in parts_of(c, 64)}
    table = LatencyTable(target.key, {}, parts)
    chosen = spread_by_size(list(reversed(configs)), target, table, 5)
    assert [c.depths[2] for c in chosen] == [1 + int((i + 0.5) * 10 / 5) for i in range(5)]  # 2, 4, 6, 8, 10

    import litv2.latency as latency

    measured = []
    monkeypatch.setattr(latency, "measure_part", lambda part, target: dict(seconds=0.001, low=0.001, high=0.001))
    monkeypatch.setattr(latency, "measure_config", lambda config, target: measured.append(config) or
                        type("Figure", (), {"median": predict(config, target, table).img_s})())
    build_table(configs, target, overhead_spread=5)
    assert measured == chosen


def test_lut_check_scores_several_tables_on_the_same_measurements_and_refuses_before_measuring(monkeypatch, capsys):
    from types import SimpleNamespace

    import litv2.measure
    from space import get_space
    from space.lut import check

    target = parse_target("cpu:bs1:64")
    configs = [TINY, TINY.replace(embed_dim=24)]
    parts = {p.key: dict(seconds=0.001) for c in configs for p in parts_of(c, 64)}
    exact, slow = LatencyTable(target.key, {}, parts), LatencyTable(target.key, {}, parts, overhead_factor=1.25)
    measured = []

    def measure(config, target):
        measured.append(config)
        return SimpleNamespace(median=predict(config, target, exact).img_s)  # what the first table predicts

    monkeypatch.setattr(litv2.measure, "measure_config", measure)
    rows = check(get_space("tiny"), target, {"exact": exact, "slow": slow}, configs, None)
    assert len(measured) == 2  # once per architecture, whatever the number of tables
    assert [r["error"]["exact"] for r in rows] == [pytest.approx(0.0)] * 2
    assert [r["error"]["slow"] for r in rows] == [pytest.approx(1 / 1.25 - 1)] * 2
    out = capsys.readouterr().out
    assert "tables: exact, slow" in out and "exact: 2 architectures, median absolute error 0.0 %, 2/2 within" in out
    assert "slow: 2 architectures, median absolute error 20.0 %, 0/2 within +-10 %; the median error is -20.0 %, " \
           "and around it 0.0 % (2/2 within)" in out
    with pytest.raises(ValueError,
                       match=r"architecture \w+: \d+ parts are not in the latency table.*lut build --samples"):
        check(get_space("tiny"), target, {"exact": exact}, [TINY.replace(embed_dim=32)], None)
    assert len(measured) == 2  # refused before anything was measured
