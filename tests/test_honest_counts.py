"""Every reader counts a trial by what happened to it, and names an architecture as sampled.

A trial the budget leaves untrained is PRUNED with its reason, never FAIL: ``status``, the
closing line and its MLflow child run count it as left untrained for budget, apart from the
trials the scheduler stopped and from failures; a study stored before (untrained as FAIL)
reads the same. A summary shows the alpha Optuna recorded beside the head split it makes,
where the canonical config has snapped it to another alpha of the same split.
"""
import contextlib
import io
import types

import optuna
import pytest

from search.cli.views import status_text
from search.core.faults import RetryPolicy
from search.core.record import TrialRecord
from search.engine.duplicates import Duplicates
from search.bench.replay import ProgressRecorder
from test_search_policy import FakeJobs, run_in_process

TrialState = optuna.trial.TrialState


class ChildRunRecorder(ProgressRecorder):
    """The in-process search's tracker, keeping each trial's MLflow child-run tags."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: dict[int, dict[str, str]] = {}

    def log_trial(self, number, params, metrics, tags, history=None) -> None:
        self.tags[number] = tags


@pytest.fixture(scope="module")
def short_budget(tmp_path_factory):
    """A tiny-space MO-ASHA search whose 3000 cpu-s run out mid-search (epochs of 100 s): some
    trials are left untrained, one after its first rungs; its study, output, child-run tags
    and storage."""
    workdir = tmp_path_factory.mktemp("short-budget")
    tracker, out = ChildRunRecorder(), io.StringIO()
    with contextlib.redirect_stdout(out):
        study = run_in_process(workdir, FakeJobs(epoch_seconds=100.0), scheduler="mo-asha", budget="3000cpu-s",
                               tracker=tracker)
    return study, out.getvalue(), tracker.tags, f"sqlite:///{workdir / 'optuna.db'}"


def test_trials_left_untrained_are_pruned_with_their_reason_and_counted_alike_everywhere(short_budget):
    study, out, tags, storage = short_budget
    records = {t.number: TrialRecord.of(t) for t in study.trials}
    untrained = [t for t in study.trials if records[t.number].not_trained is not None]
    assert any(records[t.number].epochs_done for t in untrained)  # cut after a rung
    assert any(not records[t.number].epochs_done for t in untrained)  # never trained
    assert all(t.state == TrialState.PRUNED and records[t.number].status == "untrained" for t in untrained)
    assert not [t for t in study.trials if t.state == TrialState.FAIL]
    for trial in untrained:  # the MLflow child run says the same, and why
        assert tags[trial.number]["status"] == "untrained"
        assert tags[trial.number]["not_trained"] == records[trial.number].not_trained
    stopped = sum(r.status == "stopped" and r.duplicate_of is None for r in records.values())
    status = status_text("s", storage)
    assert f"{stopped} stopped early, 0 infeasible, 0 failed, {len(untrained)} left untrained for budget, " in status
    closing = next(line for line in out.splitlines() if line.startswith("done ("))
    assert f"{stopped} stopped early, 0 failed;" in closing
    assert f"{len(untrained)} left untrained for budget" in closing


def test_a_study_stored_with_untrained_trials_as_fail_reads_the_same(short_budget, tmp_path):
    """Before, a trial left untrained without a rung was FAIL (its status empty): ``status``
    counts it as untrained, not failed, and a later sample of its architecture still trains."""
    study, _, _, storage = short_budget
    copy = f"sqlite:///{tmp_path / 'old.db'}"
    optuna.copy_study(from_study_name="s", from_storage=storage, to_storage=copy)
    old = optuna.load_study(study_name="s", storage=copy)
    old.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, user_attrs=dict(
        arch_id="0123456789ab", not_trained="its next rung would cost ~1437 cpu-s, 292 left", status="")))
    untrained = [t for t in study.trials if "not_trained" in t.user_attrs]
    assert f" 0 failed, {len(untrained) + 1} left untrained for budget, " in status_text("s", copy)
    duplicates = Duplicates(types.SimpleNamespace(retry=RetryPolicy()), arch_id=None)
    stored_as_fail, = [t for t in old.trials if t.state == TrialState.FAIL]
    never_trained = [t for t in untrained if not t.user_attrs.get("epochs_done")]
    after_a_rung = [t for t in untrained if t.user_attrs.get("epochs_done")]
    assert not duplicates.evaluated(stored_as_fail) and not any(map(duplicates.evaluated, never_trained))
    assert all(map(duplicates.evaluated, after_a_rung))  # its rung result is a verdict, as when it was PRUNED


def test_summary_shows_the_sampled_alpha_beside_its_head_split():
    from litv2 import LITV2_S
    from space import arch_id, canonical, get_space, summary

    # 8 heads in stage 3 (window 2), 16 in stage 4 (window 1: every head Lo-Fi).
    drawn = LITV2_S.replace(embed_dim=32, num_heads=(2, 4, 8, 16), alpha=(0.5,) * 4)
    assert canonical(drawn).alpha[2] == 0.6 and arch_id(canonical(drawn)) == arch_id(drawn)  # 4 of 8 heads either way
    assert summary(drawn) == "a0.5 lofi[-,-,4/8,16/16] ws[-,-,2,1] d[2,2,6,2] convffn dtm e32"
    assert summary(canonical(drawn)) == "a0.6 lofi[-,-,4/8,16/16] ws[-,-,2,1] d[2,2,6,2] convffn dtm e32"
    # A space samples canonical configs and draws them as sampled: the search summarises the draw.
    tiny = get_space("tiny")
    params = next(p for p in tiny.grid_params() if p.get("alpha") == 0.5 and p.get("ws_s3") == 1)
    drawn = tiny.draw(optuna.trial.FixedTrial(params))
    assert tiny.sample(optuna.trial.FixedTrial(params)) == canonical(drawn) and canonical(drawn).alpha[2] == 0.6
    assert drawn.alpha[2] == 0.5 and summary(drawn).startswith("a0.5 lofi[-,-,4/8,16/16] ")


def test_the_search_stores_each_trials_summary_with_its_sampled_alpha(short_budget):
    study, _, _, _ = short_budget
    with_alpha = [t for t in study.trials if "alpha" in t.params and "lofi[" in t.user_attrs["summary"]]
    assert any(t.params["alpha"] == 0.5 for t in with_alpha)
    assert all(t.user_attrs["summary"].startswith(f"a{t.params['alpha']:g} lofi[") for t in with_alpha)
