"""Every vocabulary is defined once and used everywhere: names of spaces, samplers, embedded data
sets, windowed attention kinds, work-directory files, target keys, the exit status of bad input;
and the project's one hypervolume, checked against Optuna's private implementation."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("litv2", "space", "search", "experiments")


def _sources() -> dict[Path, str]:
    return {path: path.read_text() for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
            if "__pycache__" not in path.parts}


# ---------------------------------------------------------------------- hypervolume
def _optuna_hypervolume(points) -> float:
    from optuna._hypervolume import compute_hypervolume  # private: an independent reference only

    if not len(points):
        return 0.0
    return float(compute_hypervolume(-np.asarray(points, dtype=float), np.zeros(2)))


@pytest.mark.parametrize("seed", range(20))
def test_hypervolume_matches_optunas_on_random_sets(seed):
    from search.core.hypervolume import hypervolume

    rng = np.random.default_rng(seed)
    points = [(float(a), float(t)) for a, t in zip(rng.uniform(0, 100, 12), rng.uniform(0, 5000, 12))]
    points += points[:2]  # duplicates
    points += [(round(a), round(t, -3)) for a, t in points[:4]]  # ties on either objective
    assert hypervolume(points) == pytest.approx(_optuna_hypervolume(points), rel=1e-12)


def test_hypervolume_edges():
    from search.core.hypervolume import hypervolume

    assert hypervolume([]) == 0.0
    assert hypervolume([(0.0, 10.0), (5.0, 0.0)]) == 0.0 == _optuna_hypervolume([(0.0, 10.0), (5.0, 0.0)])
    assert hypervolume([(2.0, 3.0), (1.0, 1.0)]) == 6.0  # a dominated point adds nothing
    with pytest.raises(ValueError, match="reference point"):
        hypervolume([(-1.0, 2.0)])


@pytest.mark.parametrize("seed", range(10))
def test_contributions_are_what_each_point_alone_adds(seed):
    from search.core.hypervolume import hypervolume, hypervolume_contributions

    rng = np.random.default_rng(seed)
    xs = np.sort(rng.uniform(1, 100, 8))
    front = list(zip(xs.tolist(), np.sort(rng.uniform(1, 5000, 8))[::-1].tolist()))  # mutually non-dominated
    total = _optuna_hypervolume(front)
    for i, share in enumerate(hypervolume_contributions(front)):
        assert share == pytest.approx(total - _optuna_hypervolume(front[:i] + front[i + 1:]), rel=1e-9, abs=1e-9)
    assert hypervolume(front) == pytest.approx(total)


def test_one_hypervolume_and_no_private_optuna_in_the_packages():
    sources = _sources()
    assert not [p for p, text in sources.items() if "optuna._hypervolume" in text]
    defined = [p.relative_to(ROOT).as_posix() for p, text in sources.items()
               if re.search(r"^def hypervolume_contributions\(", text, re.M)]
    assert defined == ["search/core/hypervolume.py"]


def test_front_hypervolume_is_the_core_one():
    from search.study.front import Point, hypervolume

    front = [Point(0, "a", 80.0, 100.0, 90.0, 110.0, 1, 1, 1, ""), Point(1, "b", 60.0, 300.0, 290.0, 310.0, 1, 1, 1, "")]
    assert hypervolume(front) == pytest.approx(_optuna_hypervolume([(80.0, 100.0), (60.0, 300.0)])) == 80 * 100 + 60 * 200
    assert hypervolume([]) == 0.0


# ---------------------------------------------------------------------- names
def test_run_help_lists_every_space_and_sampler(capsys):
    from search.cli.main import build_parser
    from search.core.samplers import SAMPLERS
    from space.registry import SPACE_NAMES

    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    listed = re.search(r"--space SPACE named space \(([^)]*)\)", text)
    assert listed and listed.group(1).split(", ") == list(SPACE_NAMES)
    assert re.search(r"--sampler SAMPLER " + re.escape(", ".join(SAMPLERS[:-1]) + " or " + SAMPLERS[-1]), text)


def test_every_sampler_name_makes_its_sampler():
    import optuna

    from search.core.samplers import SAMPLERS, make_sampler

    kinds = {name: type(make_sampler(name, 0)) for name in SAMPLERS}
    assert kinds == {"tpe": optuna.samplers.TPESampler, "nsga2": optuna.samplers.NSGAIISampler,
                     "gp": optuna.samplers.GPSampler, "random": optuna.samplers.RandomSampler}


def test_sampler_names_load_no_optuna():
    code = "import sys, search.core.samplers, search.cli.main; sys.exit('optuna' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_defined_once():
    """Each vocabulary has one definition in the four packages (help texts and checks import it)."""
    sources = _sources()
    patterns = {
        r"^SAMPLERS = ": "search/core/samplers.py",
        r"^def make_sampler\(": "search/core/samplers.py",
        r"^SPACE_NAMES = ": "space/registry.py",
        r"^EMBEDDED_NAMES = ": "search/core/datasets.py",
        r"^WINDOWED_KINDS = ": "litv2/config.py",
        r"^EXIT_USAGE = ": None,  # litv2.bench has its own (litv2 sits below search); search's is in core.errors
        r"^def usage_error\(": "search/core/errors.py",
        r"^def separated_pairs\(": "experiments/table.py",
        r"^class Deployment\b": "search/deploy/deployment.py",
        r"\"throughput_cache\.db\"": "search/engine/cache.py",
        r"\"mlartifacts\"": "search/engine/tracking.py",
    }
    wrong = {}
    for pattern, home in patterns.items():
        found = sorted(p.relative_to(ROOT).as_posix() for p, text in sources.items() if re.search(pattern, text, re.M))
        if found != (["litv2/bench.py", "search/core/errors.py"] if home is None else [home]):
            wrong[pattern] = found
    assert not wrong


def test_no_hand_built_target_keys():
    """Target keys come from litv2.target.Target (``key``, ``key_at``), never from an f-string."""
    sources = _sources()
    assert [p.relative_to(ROOT).as_posix() for p, text in sources.items() if ":bs{" in text] == ["litv2/target.py"]


def test_key_at_is_the_key_on_another_resolution():
    from search.core.target import parse_target

    for text in ("cpu:bs1:224", "cpu:bs8:224:bf16:t4", "cuda:bs64:224:fp16"):
        target = parse_target(text)
        assert target.key_at(224, 224) == target.key.replace(":224:", ":224x224:")
        assert target.key_at(800, 1280) == target.key.replace(":224:", ":800x1280:")
    assert parse_target("cpu:bs1:224").key_at(800, 1280) == "cpu:bs1:800x1280:fp32:t1"


def test_windowed_kinds_are_attention_kinds_and_need_a_window():
    from litv2 import ATTENTION_KINDS, LITConfig
    from litv2.config import WINDOWED_KINDS

    assert set(WINDOWED_KINDS) <= set(ATTENTION_KINDS)
    for kind in ATTENTION_KINDS:
        config = dict(attn_kind=(kind,) * 4, window_size=(0,) * 4, rel_pos_bias=False)
        if kind in WINDOWED_KINDS:
            with pytest.raises(ValueError, match="window_size"):
                LITConfig(**config)
        else:
            LITConfig(**config)


# ---------------------------------------------------------------------- exit status of bad input
def test_usage_errors_are_one_rule():
    from search.core.errors import usage_error
    from search.engine.lease import LeaseHeld

    assert usage_error(ValueError("x")) and usage_error(LeaseHeld("held"))
    assert not usage_error(RuntimeError("x"))
    assert isinstance(LeaseHeld("held"), RuntimeError)  # still caught where RuntimeErrors are


def test_experiments_guard_exits_2_on_a_held_study(capsys):
    from experiments.cli import guarded
    from search.engine.lease import LeaseHeld

    def held() -> int:
        raise LeaseHeld("study 's' is being run by another driver")

    assert guarded(held) == 2
    assert capsys.readouterr().err == "experiments: error: study 's' is being run by another driver\n"


def test_separability_command_reuses_the_tables_pairs():
    from experiments import separability, table

    assert separability.separated_pairs is table.separated_pairs
