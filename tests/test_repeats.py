"""Which throughput figures are measured again, and which of several is kept (search.core.repeats),
and how their intervals reach the front, the tables and the model card."""
import csv
import io

import pytest

from experiments.table import Column, csv_text, fixed, markdown, separations
from search.study.front import FRONT_COLUMNS, Point, front_csv, front_table
from search.core.repeats import WIDE_RELATIVE_CI, best_supported, disagree, interval, is_wide, overlap


def figure(median: float, low: float, high: float, **measurement) -> dict:
    return dict(throughput=median, throughput_spread=(high - low) / 2,
                measurement=dict(median=median, ci_low=low, ci_high=high, **measurement))


def test_a_figure_is_wide_when_its_interval_exceeds_the_limit_or_it_did_not_get_its_cores():
    assert WIDE_RELATIVE_CI == 0.10
    assert not is_wide(figure(100.0, 96.0, 105.9))  # 9.9 %
    assert is_wide(figure(100.0, 95.0, 105.1))  # 10.1 %
    assert is_wide(figure(100.0, 99.5, 100.5, contended=True))


def test_intervals_come_from_the_measurement_or_else_the_spread():
    assert interval(figure(100.0, 95.0, 104.0)) == (95.0, 104.0)
    assert interval(dict(throughput=50.0, throughput_spread=2.0)) == (48.0, 52.0)
    assert interval(dict(throughput=50.0)) == (50.0, 50.0)


def test_figures_disagree_only_when_their_intervals_are_apart():
    a, b, c = figure(100.0, 96.0, 104.0), figure(106.0, 104.0, 108.0), figure(110.0, 108.5, 111.0)
    assert overlap(a, b) and not disagree(a, b)  # they touch at 104
    assert disagree(a, c) and disagree(c, a)


def test_the_kept_figure_is_the_one_the_others_support_then_the_narrowest():
    wide, narrow, outlier = figure(100.0, 90.0, 110.0), figure(101.0, 99.0, 103.0), figure(140.0, 138.0, 142.0)
    assert best_supported([wide, narrow]) is narrow
    assert best_supported([outlier, wide, narrow]) is narrow  # the outlier is the narrowest but agrees with none
    assert best_supported([figure(120.0, 118.0, 122.0), outlier]) is not None
    with pytest.raises(ValueError):
        best_supported([])


def point(trial: int, throughput: float, low: float, high: float, measured_times: int = 1) -> Point:
    return Point(trial, f"arch{trial}", 50.0 + trial, throughput, low, high, measured_times, 1_000_000, 2_000_000,
                 f"summary {trial}")


def test_the_front_csv_and_table_carry_each_figures_interval():
    front = [point(3, 120.0, 115.5, 124.25, measured_times=2), point(7, 80.0, 79.0, 81.0)]
    rows = list(csv.DictReader(io.StringIO(front_csv(front))))
    assert tuple(rows[0]) == FRONT_COLUMNS
    assert [(r["trial"], r["throughput"], r["throughput_low"], r["throughput_high"], r["measured_times"])
            for r in rows] == [("3", "120.0", "115.5", "124.25", "2"), ("7", "80.0", "79.0", "81.0", "1")]
    table = front_table(front)
    assert "| 3 | arch3 | 53.00 | 120.0 [115.5, 124.2] |" in table and "80.0 [79.0, 81.0]" in table


THROUGHPUT = Column("throughput", "img/s", fixed(1), spread="throughput_spread", interval=("throughput_low",
                                                                                         "throughput_high"))


def test_a_throughput_change_whose_intervals_overlap_is_marked_not_separated():
    rows = [dict(row="base", throughput=100.0, throughput_spread=2.0, throughput_low=98.0, throughput_high=102.0),
            dict(row="noise", throughput=103.0, throughput_spread=2.0, throughput_low=101.0, throughput_high=105.0),
            dict(row="faster", throughput=137.0, throughput_spread=2.0, throughput_low=135.0, throughput_high=139.0),
            dict(row="unknown", throughput=90.0, throughput_spread=None)]
    assert [s["throughput"] for s in separations(rows, [THROUGHPUT])] == [None, False, True, None]
    text = markdown(rows, [THROUGHPUT])
    assert "| noise | 103.0 ± 2.0 (+3.0%, not separated) |" in text
    assert "| faster | 137.0 ± 2.0 (+37.0%) |" in text
    assert "| unknown | 90.0 (-10.0%) |" in text
    table = list(csv.DictReader(io.StringIO(csv_text(rows, [THROUGHPUT]))))
    assert [r["throughput_separated"] for r in table] == ["", "False", "True", ""]
    assert table[1]["throughput_low"] == "101.0"


def test_groups_compare_with_their_own_first_row():
    rows = [dict(row="a14", group=14, throughput=10.0, throughput_low=9.0, throughput_high=11.0),
            dict(row="a28", group=28, throughput=5.0, throughput_low=4.9, throughput_high=5.1),
            dict(row="b14", group=14, throughput=10.5, throughput_low=10.4, throughput_high=10.6),
            dict(row="b28", group=28, throughput=6.0, throughput_low=5.9, throughput_high=6.1)]
    assert [s["throughput"] for s in separations(rows, [THROUGHPUT])] == [None, None, False, True]


def test_status_says_how_wide_the_studys_figures_are_and_how_many_were_measured_twice():
    import optuna

    from search.cli.views import measurement_line

    def trial(throughput, low, high, times):
        return optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, values=[50.0, throughput], user_attrs=dict(
            throughput=throughput, throughput_low=low, throughput_high=high, measured_times=times))

    trials = [trial(100.0, 98.0, 102.0, 1), trial(50.0, 49.5, 50.5, 2), trial(10.0, 9.0, 10.6, 1)]
    assert measurement_line(trials) == ("throughput figures: 3 trials, 95% intervals 2.0% to 16.0% of the median "
                                        "(median 4.0%), 1 measured twice for a wide interval")
    assert measurement_line([]) == "throughput figures: none with an interval yet"
    predicted = [optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, values=[50.0, 100.0], user_attrs=dict(
        throughput=100.0, throughput_low=98.0, throughput_high=102.0, predicted_throughput=guess))
        for guess in (104.0, 97.0, 110.0)]
    ruled_out = optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, user_attrs=dict(
        predicted_throughput=20.0, infeasible_predicted=True))
    assert measurement_line(predicted + [ruled_out]).endswith(
        "\npredicted throughput: median error 4.0% over 3 measured; 1 ruled out by prediction (not measured)")
