"""Ablation recipes and tables: every shipped recipe builds its rows, a recipe runs end to end
on the engine with seeds, trainings are reused, bad recipes get one line and exit 2."""
import re
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from experiments import cli, separability
from experiments.attention import StageAttention, attention_rows, speedup_lines
from experiments.recipes import load_recipe, recipe_names
from experiments.separability import separated_pairs
from experiments.runner import RunOptions, run_recipe
from experiments.table import Column, changes, fixed, markdown
from litv2 import LITV2_S, build_model, count_params
from search.engine.executor import InProcessExecutor, Node
from search.engine.driver import RUN_ID_ATTR
from search.core.target import parse_target
from space import arch_id

TINY = "embed_dim: 16, depths: [1, 1, 1, 1], num_heads: [1, 2, 4, 8], drop_path_rate: 0.0"
PAIR = f"""name: pair
description: Two tiny rows.
base: litv2_s
fixed: {{{TINY}}}
deploy_img_size: 32
proxy: {{img_size: 32, width_mult: 1.0}}
fixed_points: true
points:
  - label: HiLo
  - label: MSA
    fixed: {{attn_kind: [msa, msa, msa, msa]}}
experiment:
  dataset: digits
  epochs: 1
  seeds: 2
"""


def _pair(tmp_path: Path) -> Path:
    path = tmp_path / "pair.yaml"
    path.write_text(PAIR)
    return path


def _in_process(runners=None):
    return lambda search: InProcessExecutor([Node("local", 2, bench=True)], runners)


# ---------------------------------------------------------------------- recipes
@pytest.mark.parametrize("name", ["table5", "table4", "alpha", "window", "attention-resolution", "separability"])
def test_every_shipped_recipe_parses_and_builds_its_rows(name):
    recipe = load_recipe(name)
    assert name in recipe_names()
    labels, configs = recipe.labels, recipe.space.enumerate()
    assert len(labels) == len(set(labels)) == len(configs) >= 2
    assert len({arch_id(c) for c in configs}) == len(configs)
    for config in configs:
        if recipe.attention:
            layer = StageAttention(config, recipe.attention.stage, recipe.attention.sides[0])
            assert len(layer.layers) == config.depths[recipe.attention.stage]
        else:
            proxy = recipe.space.proxy_of(config)
            assert count_params(build_model(proxy, num_classes=10, img_size=recipe.space.proxy.img_size)) > 0


def test_shipped_recipes_hold_the_papers_rows():
    table5 = load_recipe("table5")
    first, *_, last = table5.space.enumerate()
    assert count_params(build_model(first)) == 27_973_720  # LITv1-S as the official code builds it
    assert count_params(build_model(last)) == 27_844_000 and arch_id(last) == arch_id(LITV2_S)
    assert load_recipe("alpha").labels == [f"alpha={a}" for a in (0.0, 0.2, 0.4, 0.5, 0.7, 0.9, 1.0)]
    window = load_recipe("window")
    assert [c.window_size[2] for c in window.space.enumerate()] == [1, 2, 4] and window.resolutions == ((800, 1280),)
    kinds = [c.attn_kind[2] for c in load_recipe("table4").space.enumerate()]
    assert kinds == ["msa", "sra", "wmsa", "tmsa", "hilo"]
    attention = load_recipe("attention-resolution")
    assert attention.attention.sides == (14, 28, 56, 112) and attention.attention.tokens == 64 * 14 * 14
    assert [attention.attention.batch(side, 1) for side in (14, 28, 56, 112)] == [64, 16, 4, 1]
    assert {c.stage_dims[2] for c in attention.space.enumerate()} == {768}


EXPERIMENT = "experiment:\n  dataset: digits\n  epochs: 1\n  seeds: 2\n"


@pytest.mark.parametrize("old,new,needle", [
    ("dataset: digits", "dataset: mnist", "field 'experiment.dataset': dataset 'mnist' is unknown"),
    ("seeds: 2", "seeds: 0", "field 'experiment.seeds': 0 is not a positive integer"),
    ("seeds: 2", "seeds: 2\n  sweep: alpha", "field 'experiment.sweep': 'alpha' is not a swept parameter"),
    ("seeds: 2", "seeds: 2\n  colour: red", "field 'experiment.colour': unknown key"),
    ("seeds: 2", "seeds: 2\n  budget: 5 hours", "field 'experiment.budget'"),
    ("seeds: 2", "seeds: 2\n  compare: last", "field 'experiment.compare': 'last' is not one of first, previous"),
    ("seeds: 2", "seeds: 2\n  paper: {source: x, figures: {GELU: {top1: 1}}}",
     "field 'experiment.paper.figures.GELU': is not a row of this recipe; expected one of HiLo, MSA"),
    ("seeds: 2", "seeds: 2\n  paper: {source: x, changes: {MSA: {top1: sideways}}}",
     "field 'experiment.paper.changes.MSA.top1': expected one of up, down, got 'sideways'"),
    ("seeds: 2", "seeds: 2\n  paper: {source: x, figures: {MSA: {top1: high}}}",
     "field 'experiment.paper.figures.MSA.top1': expected a number, got 'high'"),
    (EXPERIMENT, "experiment: {measure: attention, stage: 2, sides: [14], epochs: 3}\n", "field 'experiment.epochs'"),
    (EXPERIMENT, "experiment: [1, 2]\n", "field 'experiment': expected a mapping"),
    ("fixed_points: true", "fixed_points: false", "field 'fixed_points'"),
    ("  - label: HiLo\n", "  - label: HiLo\n    fixed: {alpha: [0.9, 0.9, 2.0, 0.9]}\n", "alpha[2]=2.0"),
    ("points:", "points: [", "does not parse"),
])
def test_a_bad_recipe_file_gets_one_line_and_exit_2(tmp_path, capsys, old, new, needle):
    assert old in PAIR
    path = tmp_path / "bad.yaml"
    path.write_text(PAIR.replace(old, new))
    workdir = tmp_path / "work"
    workdir.mkdir()
    assert cli.main(["run", str(path), "--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"experiments: error: {path}") and needle in err and err.count("\n") == 1, err
    assert list(workdir.iterdir()) == []  # no study, no MLflow store


def test_an_unknown_recipe_name_lists_the_shipped_ones(capsys):
    assert cli.main(["run", "table6"]) == 2
    err = capsys.readouterr().err
    assert "unknown recipe 'table6'" in err and "table5" in err and err.count("\n") == 1


# ---------------------------------------------------------------------- tables
def test_changes_are_against_the_first_row_of_each_group():
    columns = [Column("throughput", "img/s", fixed(1)), Column("top1", "top-1", fixed(1), change="points")]
    rows = [dict(row="a", group=1, throughput=10.0, top1=50.0), dict(row="b", group=1, throughput=25.0, top1=48.0),
            dict(row="a", group=2, throughput=4.0, top1=None), dict(row="b", group=2, throughput=2.0, top1=40.0)]
    deltas = changes(rows, columns)
    assert deltas[0] == {"throughput": None, "top1": None}
    assert deltas[1] == {"throughput": pytest.approx(150.0), "top1": pytest.approx(-2.0)}
    assert deltas[3] == {"throughput": pytest.approx(-50.0), "top1": None}  # no top-1 in the group's first row
    assert "| b | 25.0 (+150.0%) | 48.0 (-2.0) |" in markdown(rows, columns)


# ---------------------------------------------------------------------- running on the engine
def test_a_sweep_is_plotted_with_error_bars_and_logged(tmp_path):
    """A sweep recipe's table comes with its PNG (top-1, img/s and FLOPs against the swept value)."""
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(PAIR.replace("name: pair", "name: sweep").split("\npoints:")[0]
                     + "\ndimensions:\n  alpha: [0.0, 0.9]\nexperiment:\n  dataset: digits\n  epochs: 1\n"
                       "  seeds: 1\n  sweep: alpha\n")
    outcome = run_recipe(load_recipe(str(sweep)), RunOptions(
        budget="3000cpu-s", target="cpu:bs1:32", workdir=str(tmp_path), study="sweep", measure_seconds=1.0),
        executor=_in_process())
    assert outcome.code == 0 and [row["x"] for row in outcome.rows] == [0.0, 0.9]
    plot = tmp_path / "results" / "sweep" / "sweep.png"
    assert plot in outcome.files and plot.read_bytes().startswith(b"\x89PNG")
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{tmp_path}/optuna.db")
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert "sweep.png" in {a.path for a in client.list_artifacts(study.user_attrs[RUN_ID_ATTR])}


def test_a_two_row_recipe_runs_end_to_end_with_two_seeds(tmp_path, capsys):
    """Real counts, measurements and trainings, in process (the executor is the engine's seam)."""
    outcome = run_recipe(load_recipe(str(_pair(tmp_path))), RunOptions(
        budget="3000cpu-s", target="cpu:bs1:32", workdir=str(tmp_path), study="pair", measure_seconds=1.0),
        executor=_in_process())
    assert outcome.code == 0
    rows = {row["row"]: row for row in outcome.rows}
    assert list(rows) == ["HiLo", "MSA"]
    for row in rows.values():
        assert row["seeds"] == 2 and 0 < row["top1"] <= 100 and row["top1_std"] >= 0
        assert row["params"] > 0 and row["flops"] > 0 and row["throughput"] > 0
    study = optuna.load_study(study_name="pair", storage=f"sqlite:///{tmp_path}/optuna.db")
    accuracies = [t.values[0] for t in study.trials if t.params["point"] == "HiLo"]
    assert rows["HiLo"]["top1"] == pytest.approx(sum(accuracies) / 2)
    printed = capsys.readouterr().out
    # mean [95 % interval] (n=2) (change [its interval]); two seeds: no verdict, and the table says so
    assert re.search(r"\| MSA \| [\d,]+ \(\+[\d.]+%\) \|.*\| [\d.]+ \[[\d.-]+, [\d.]+\] \(n=2\) "
                     r"\([+-][\d.]+ \[[+-][\d.]+, [+-][\d.]+\], no verdict\) \|", printed)
    assert "with n = 2 seeds per row no change can be called separated" in printed
    assert re.search(r"\| HiLo \|.*\| \d+ \|", printed)  # the fresh process's peak MB (RSS), not "-"
    names = sorted(path.name for path in outcome.files)
    assert names == ["pair-seeds.csv", "pair.csv", "pair.md", "pair.png", "pair.tex"]
    assert all(p.parent == tmp_path / "results" / "pair" for p in outcome.files)
    header = (tmp_path / "results" / "pair" / "pair.csv").read_text().splitlines()[0].split(",")
    assert {"top1_values", "top1_low", "top1_high", "top1_change_low", "train_device_s", "peak_memory_mb"} <= set(header)
    seeds = (tmp_path / "results" / "pair" / "pair-seeds.csv").read_text().splitlines()
    assert seeds[0] == "row,arch_id,seed,trial,top1" and len(seeds) == 5  # one line per (row, seed)
    assert sorted(float(line.split(",")[-1]) for line in seeds[1:] if line.startswith("HiLo,")) == sorted(accuracies)
    for row in rows.values():
        assert row["peak_memory_mb"] > 0 and row["train_device_s"] > 0 and row["measure_device_s"] > 0
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    parent = study.user_attrs[RUN_ID_ATTR]
    assert {a.path for a in client.list_artifacts(parent)} >= {"pair.md", "pair.csv", "pair.tex", "pair.png",
                                                               "pair-seeds.csv"}
    experiment = client.get_experiment_by_name("litv2-search").experiment_id
    assert len(client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent}'")) == 4  # (row, seed)
    assert cli.main(["show", "--study", "pair", "--workdir", str(tmp_path)]) == 0
    assert printed.split("\n| row |")[1].split("\n\n")[0] in capsys.readouterr().out


def _record(target_key):
    """A measurement record of this machine, as the real measurement task returns one."""
    from search.engine.measuring import measuring_fingerprint

    here = measuring_fingerprint(target_key)
    return dict(device_name=here["device_name"], versions={k: v for k, v in here.items() if k != "device_name"})


class CountingJobs:
    """Fake count / measure / train jobs that record what trained."""

    def __init__(self) -> None:
        self.trained: list[tuple[str, int]] = []

    def runners(self):
        return {"count": lambda job: dict(params=1e6, flops=1e8, wall_seconds=0.1),
                "measure": lambda job: dict(throughput=100.0, throughput_spread=1.0, wall_seconds=1.0,
                                            measurement=_record(job.target_key)),
                "train": self.train}

    def train(self, job):
        self.trained.append((job.proxy_json, job.seed))
        accuracy = 50.0 + job.seed + len(job.proxy_json) % 7
        return dict(accuracy=accuracy, epoch_accuracies=[accuracy], train_seconds=1.0, wall_seconds=10.0)


def test_a_second_run_trains_nothing(tmp_path, capsys):
    jobs = CountingJobs()
    recipe = load_recipe(str(_pair(tmp_path)))
    first = run_recipe(recipe, RunOptions(budget="3000cpu-s", workdir=str(tmp_path), study="one"),
                       executor=_in_process(jobs.runners()))
    assert len(jobs.trained) == 4
    capsys.readouterr()
    again = run_recipe(recipe, RunOptions(budget="3000cpu-s", workdir=str(tmp_path), study="two"),
                       executor=_in_process(jobs.runners()))
    assert len(jobs.trained) == 4  # every (row, seed) reused from study "one"
    assert "4 trainings reused from earlier studies" in capsys.readouterr().out
    assert [(r["top1"], r["top1_std"], r["seeds"]) for r in again.rows] == \
           [(r["top1"], r["top1_std"], r["seeds"]) for r in first.rows]


# ---------------------------------------------------------------------- attention-resolution
ATTENTION = """name: small-attention
base: litv2_s
fixed: {embed_dim: 16, depths: [1, 1, 2, 1], num_heads: [1, 2, 4, 8]}
deploy_img_size: 64
proxy: {img_size: 64, width_mult: 1.0}
fixed_points: true
points:
  - label: MSA
    fixed: {attn_kind: [msa, msa, msa, msa]}
  - label: HiLo
experiment: {measure: attention, stage: 2, sides: [4, 8, 16]}
"""


def test_attention_rows_report_running_out_of_memory_instead_of_crashing(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text(ATTENTION)
    recipe = load_recipe(str(path))
    measured = []

    def measure(layer, example, target):
        measured.append(example.shape[1])
        # a CPU measurement's resident-set growth (0.02 MB: the heap earlier layers left) is no peak of this layer
        return dict(throughput=1e6 / example.shape[1], throughput_spread=1.0, peak_memory_mb=0.02)

    full = attention_rows(recipe, parse_target("cpu:bs1:64"), 2**40, say=lambda line: None, measure=measure)
    assert [(r["label"], r["side"]) for r in full] == [("MSA", 4), ("HiLo", 4), ("MSA", 8), ("HiLo", 8),
                                                       ("MSA", 16), ("HiLo", 16)]
    assert all(r["peak_memory_mb"] == r["predicted_memory_mb"] > 0 for r in full)
    msa_16, hilo_16 = full[4]["predicted_memory_mb"], full[5]["predicted_memory_mb"]
    assert full[2]["predicted_memory_mb"] < msa_16  # memory grows with the map
    limit = int(min(msa_16, hilo_16) * 2**20) - 1  # neither fits at 16x16
    measured.clear()
    rows = attention_rows(recipe, parse_target("cpu:bs1:64"), limit, say=lambda line: None, measure=measure)
    assert measured == [16, 16, 64, 64]  # nothing ran at 16x16
    for row in rows[4:]:
        assert "throughput" not in row and row["note"].startswith("out of memory: needs ~")
    assert "out of memory at 16x16" in speedup_lines(rows)[0] and "1.00x at 4x4" in speedup_lines(rows)[0]


# ---------------------------------------------------------------------- separability, on real Ray
def test_separated_pairs_need_an_interval_that_excludes_zero_and_three_seeds():
    row = lambda name, *values: dict(row=name, top1_values=list(values))  # noqa: E731
    a, b, c = row("a", 81, 82, 83), row("b", 70, 71, 72), row("c", 80, 82.5, 84)
    assert [(x["row"], y["row"]) for x, y in separated_pairs([a, b, c])] == [("a", "b"), ("c", "b")]
    assert separated_pairs([row("d", 81, 82), row("e", 10, 11)]) == []  # two seeds: no verdict, however far


@pytest.mark.slow
def test_separability_runs_on_the_engine_and_a_second_run_trains_nothing(tmp_path, capsys):
    import ray

    # One seed: two seeds' means and stds are test_a_two_row_recipe_runs_end_to_end_with_two_seeds's job.
    common = ["--dataset", "digits", "--seeds", "1", "--epochs", "1", "--budget", "1cpu-h", "--target", "cpu:bs1:64",
              "--workdir", str(tmp_path),
              "--measure-seconds", "1"]
    try:
        code = separability.main([*common, "--study", "first"])
        first, errors = capsys.readouterr()
        # One seed gives no row a std, so no pair can separate: a complete run exits 1 ("none
        # separates"). A failed run exits 1 as well, so the run must also have said no error and
        # not been interrupted (those print "experiments: error: ..." / "was interrupted").
        assert code == 1 and "experiments: error" not in errors and "the experiment was interrupted" not in first
        assert first.count(" training ") == 4  # 4 rows x 1 seed
        assert "| MLP-only |" in first and "(n=1)" in first
        assert "with n = 1 seed per row no change can be called separated" in first
        code = separability.main([*common, "--study", "second"])
        second, errors = capsys.readouterr()
        assert code == 1 and "experiments: error" not in errors and "the experiment was interrupted" not in second
    finally:
        ray.shutdown()
    assert " training " not in second and "4 trainings reused from earlier studies" in second
    def table(text):  # {row: {column: cell}}
        header, _, *lines = ("| row |" + text.split("\n| row |")[1].split("\n\n")[0]).splitlines()
        names = [cell.strip() for cell in header.strip("|").split("|")]
        return {cells[0]: dict(zip(names, cells)) for cells in
                ([cell.strip() for cell in line.strip("|").split("|")] for line in lines)}

    before, after = table(first), table(second)
    paid = ("train dev-s", "measure dev-s", "note")
    assert {row: {k: v for k, v in cells.items() if k not in paid} for row, cells in after.items()} == \
           {row: {k: v for k, v in cells.items() if k not in paid} for row, cells in before.items()}
    for row in after:  # the second study paid nothing, and says where its trainings come from
        assert after[row]["train dev-s"] == after[row]["measure dev-s"] == "0" != before[row]["train dev-s"]
        assert after[row]["note"] == "seeds reused from first: 1"
