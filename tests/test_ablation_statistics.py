"""What an ablation table claims: intervals over seeds, when a change is separated, the paper's
figures beside ours and whether our changes go the paper's way."""
import math
from pathlib import Path

import pytest
from scipy import stats

from experiments.intervals import BOOTSTRAP_FROM, difference_interval, mean_interval, separated, too_few_seeds_note
from experiments.paper import paper_verdicts, verdict_lines
from experiments.recipes import load_recipe
from experiments.table import Column, Dots, exact, fixed, markdown, plot_dots

PAPER_FACTS = Path(__file__).resolve().parents[2] / "shared" / "reference" / "paper_facts.md"


# ---------------------------------------------------------------------- intervals and the separation rule
def test_two_seeds_give_a_t_interval_but_no_verdict():
    interval = mean_interval([40.0, 42.0])
    half = stats.t.ppf(0.975, 1) * math.sqrt(2) / math.sqrt(2)  # t(1) x std / sqrt(n): 12.7 points
    assert interval.method == "t" and interval.mean == 41.0
    assert (interval.low, interval.high) == pytest.approx((41.0 - half, 41.0 + half))
    far = difference_interval([80.0, 80.1], [10.0, 10.1])
    assert far.excludes_zero()  # a 70-point gap excludes 0 even at n = 2 ...
    assert separated(far, 2, 2) is None  # ... but two seeds are not called either way
    assert "no change can be called separated" in too_few_seeds_note(2)


def test_three_seeds_use_welch_and_are_called_either_way():
    better, worse = [80.0, 81.0, 82.0], [70.0, 71.5, 72.0]
    change = difference_interval(better, worse)
    welch = stats.ttest_ind(better, worse, equal_var=False).confidence_interval(0.95)
    assert change.method == "welch" and change.mean == pytest.approx(81.0 - 71.1666667)
    assert (change.low, change.high) == pytest.approx((welch.low, welch.high))
    assert separated(change, 3, 3) is True
    close = difference_interval([1.0, 2.0, 3.0], [1.5, 2.5, 3.5])
    assert close.low < 0 < close.high and separated(close, 3, 3) is False
    assert too_few_seeds_note(3) is None
    assert mean_interval([1.0, 2.0, 3.0]).half_width == pytest.approx(stats.t.ppf(0.975, 2) / math.sqrt(3))


def test_from_five_seeds_a_seeded_studentized_bootstrap():
    values = [74.1, 75.3, 73.8, 76.0, 74.9, 75.5, 74.4, 75.1, 73.9, 75.8]
    assert len(values) >= BOOTSTRAP_FROM
    interval = mean_interval(values)
    t_half = stats.t.ppf(0.975, 9) * stats.tstd(values) / math.sqrt(10)
    assert interval.method == "bootstrap" and interval.low < interval.mean < interval.high
    assert interval.half_width == pytest.approx(t_half, rel=0.3)  # studentized: close to t's width at n = 10
    five = values[:BOOTSTRAP_FROM]  # ... and never the third-narrower percentile interval at n = 5
    assert mean_interval(five).half_width >= stats.t.ppf(0.975, 4) * stats.tstd(five) / math.sqrt(5)
    assert mean_interval(values) == interval  # seeded: a show prints what the run printed
    shifted = [v - 1.5 for v in values]
    change = difference_interval(values, shifted)
    assert change.method == "bootstrap" and change.mean == pytest.approx(1.5)
    assert separated(change, 10, 10) is True
    assert separated(difference_interval(values, values[::-1]), 10, 10) is False


# ---------------------------------------------------------------------- the paper's side
# From shared/reference/paper_facts.md (LITv2 paper, official README, LITv1 zoo): the figures the
# shipped recipes must carry.
TABLE5 = {"LITv1-S": {"params": 27e6, "flops": 4.1e9, "top1": 81.5},
          "+ HiLo (LITv2-S)": {"params": 28e6, "flops": 3.7e9, "throughput": 1471, "top1": 82.0,
                               "test_memory_gb": 1.2, "retinanet_ap": 44.0, "maskrcnn_ap_box": 44.9,
                               "maskrcnn_ap_mask": 40.8}}
ALPHA = {0.0: (3.97, 81.16), 0.2: (3.88, 81.89), 0.4: (3.82, 81.81), 0.5: (3.77, 81.88), 0.7: (3.74, 81.94),
         0.9: (3.73, 82.03), 1.0: (3.70, 81.89)}


def test_the_paper_columns_hold_paper_facts():
    assert load_recipe("table5").paper.figures == TABLE5
    assert load_recipe("table4").paper.figures == {"HiLo (LITv2-S)": {k: v for k, v in TABLE5["+ HiLo (LITv2-S)"].items()
                                                                     if k in ("params", "flops", "throughput", "top1",
                                                                              "test_memory_gb")}}
    alpha = load_recipe("alpha").paper.figures
    assert alpha == {f"alpha={a}": {"flops": pytest.approx(g * 1e9), "top1": top1} for a, (g, top1) in ALPHA.items()}
    window = load_recipe("window").paper.figures
    assert window["ws_s2=2"]["retinanet_ap"] == 44.0 and window["ws_s2=4"]["retinanet_ap"] == 43.7


@pytest.mark.skipif(not PAPER_FACTS.is_file(), reason="the shared reference is beside the checkout only")
def test_the_alpha_figures_are_those_of_the_reference_file():
    lines = PAPER_FACTS.read_text().split("## Effect of alpha")[1].split("\n## ")[0].splitlines()
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines if line.startswith("| 0.")
            or line.startswith("| 1.")]
    assert {float(r[0]): (float(r[3].rstrip("G")), float(r[4])) for r in rows} == ALPHA


def test_directions_come_from_figures_or_from_the_reported_changes():
    paper = load_recipe("table5").paper
    assert paper.direction("+ ConvFFN", "LITv1-S", "top1") == "up"  # reported without a figure
    assert paper.direction("+ remove RPE", "+ ConvFFN", "throughput") == "up"
    assert paper.direction("+ HiLo (LITv2-S)", "LITv1-S", "top1") == "up"  # 82.0 against 81.5
    assert paper.direction("+ HiLo (LITv2-S)", "LITv1-S", "flops") == "down"  # 3.7G against 4.1G
    assert paper.direction("+ ConvFFN", "LITv1-S", "flops") is None  # the paper says nothing
    assert paper.text("+ HiLo (LITv2-S)").startswith("28M, 3.7G, 1,471 img/s, 82.0 %")


def test_our_changes_are_judged_against_the_papers():
    paper = load_recipe("table5").paper
    columns = [Column("flops", "FLOPs", exact), Column("top1", "top-1", fixed(2), change="points")]
    rows = [dict(row="LITv1-S", flops=4.0e9, top1=70.0),
            dict(row="+ ConvFFN", versus="LITv1-S", flops=4.1e9, top1=71.0, top1_change=1.0, top1_change_low=0.2,
                 top1_change_high=1.8, top1_separated=True),
            dict(row="+ remove RPE", versus="+ ConvFFN", flops=4.1e9, top1=71.5, top1_change=0.5,
                 top1_change_low=-0.4, top1_change_high=1.4, top1_separated=False),
            dict(row="+ HiLo (LITv2-S)", versus="+ remove RPE", flops=3.6e9, top1=70.0, top1_change=-1.5,
                 top1_change_low=-9.0, top1_change_high=6.0, top1_separated=None)]
    verdicts = {(v.row, v.metric): v for v in paper_verdicts(rows, columns, paper)}
    assert verdicts["+ ConvFFN", "top1"].agrees is True and verdicts["+ ConvFFN", "top1"].separated is True
    assert verdicts["+ remove RPE", "top1"].agrees is False  # the paper: a slight drop
    assert verdicts["+ remove RPE", "throughput"].ours is None  # no throughput figure in these rows
    assert verdicts["+ HiLo (LITv2-S)", "flops"].agrees is True and verdicts["+ HiLo (LITv2-S)", "flops"].separated
    assert verdicts["+ HiLo (LITv2-S)", "top1"].text() == "top-1: paper up, ours down (disagrees, no verdict)"
    assert rows[0]["paper"] == "27M, 4.1G, 81.5 %" and rows[1]["paper"] == "-"
    assert rows[1]["paper_verdict"] == "top-1: paper up, ours up (agrees)"
    summary = verdict_lines(list(verdicts.values()), paper)
    assert summary[0].startswith("paper: LITv2 paper") and "2 of 4 agree in sign (2 of them separated), 2 disagree (0 of them separated)" in summary[1]
    table = markdown(rows, columns)
    assert "| + ConvFFN | 4,100,000,000 (+2.5%) | 71.00 (+1.00 [+0.20, +1.80]) |" in table
    assert "| + remove RPE | 4,100,000,000 (+0.0%) | 71.50 (+0.50 [-0.40, +1.40], not separated) |" in table


def test_the_dot_plot_is_written(tmp_path):
    path = tmp_path / "rows.png"
    plot_dots(path, "t", ["a", "b"], [Dots("top-1", [70.0, None], [69.0, None], [71.0, None], each=[[69.5, 70.5], []],
                                           paper=[81.5, 82.0]),
                                      Dots("img/s", [10.0, 11.0], [9.0, None], [11.0, None])])
    assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 10_000
