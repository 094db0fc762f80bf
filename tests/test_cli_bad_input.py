"""Bad input through the real command lines: one line on stderr naming the value, exit
status 2, and not one file created in the working directory.

Every case runs ``python -m search|space|experiments|litv2.bench`` as a subprocess in its own
empty working directory, four at a time. The commands check their arguments before importing
the deep-learning stack: ``-X importtime`` must show none of it imported (a load-independent
check; each answers in about a second on an idle machine, which is not asserted). Unreachable
endpoints (ports nothing listens on) are refused by a check with its own 3 s timeout.
"""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

# (command, arguments, text the error line must contain). {data} is a folder of prepared bad data
# outside the working directory.
CASES = [
    # search run: arguments
    ("search", ["run", "--epoch", "3"], "--epoch"),
    ("search", ["run", "--budget", "-1gpu-h"], "'-1gpu-h'"),
    ("search", ["run", "--budget", "64"], "'64'"),
    ("search", ["run", "--budget"], "--budget"),
    ("search", ["run", "--study", ""], "--study ''"),
    ("search", ["run", "--study", ".."], "'..'"),
    ("search", ["run", "--study", "a/b"], "'a/b'"),
    ("search", ["run", "--seed", "-1"], "--seed -1"),
    ("search", ["run", "--seed", "x"], "'x'"),
    ("search", ["run", "--epochs", "0"], "--epochs 0"),
    ("search", ["run", "--eta", "1"], "eta"),
    ("search", ["run", "--sampler", "grid"], "'grid'"),
    ("search", ["run", "--scheduler", "hyperband"], "'hyperband'"),
    ("search", ["run", "--throughput", "guessed"], "'guessed'"),
    ("search", ["run", "--throughput", "predicted"], "--latency-table FILE"),
    ("search", ["run", "--target", "gpu:bs1:224"], "'gpu:bs1:224'"),
    ("search", ["run", "--max-params", "3X"], "'3X'"),
    ("search", ["run", "--cpus-per-trial", "999"], "--cpus-per-trial 999"),
    ("search", ["run", "--target", "cpu:bs1:64:t999"], "uses 999 threads"),
    ("search", ["run", "--space", "nope"], "'nope'"),
    ("search", ["run", "--space", "{data}/huge.yaml"], "huge.yaml"),
    ("search", ["run", "--epochs", "2", "--min-epochs", "5"], "--min-epochs 5"),
    ("search", ["run", "--target", "cpu:bs1:64", "--target", "cpu:bs1:64"], "given twice"),
    ("search", ["run", "--target", "cpu:bs1:64", "--target", "cpu:bs1:96:ort"], "share a resolution"),
    ("search", ["run", "--target", "cpu:bs1:64", "--target", "cuda:bs8:64:fp16"], "one device kind"),
    ("search", ["run", "--checkpoint-dir", "{data}/huge.yaml"], "is a file"),
    ("search", ["run", "--checkpoint-dir", "{data}/huge.yaml/checkpoints"], "is under the file"),
    # search run: endpoints and folders
    ("search", ["run", "--tracking-uri", "http://127.0.0.1:1"], "'http://127.0.0.1:1'"),
    ("search", ["run", "--tracking-uri", "mlflow.db"], "'mlflow.db'"),
    ("search", ["run", "--address", "127.0.0.1:1"], "'127.0.0.1:1'"),
    ("search", ["run", "--address", "localhost"], "'localhost'"),
    ("search", ["run", "--storage", "postgresql://user@127.0.0.1:1/optuna"], "127.0.0.1:1"),
    ("search", ["run", "--storage", "mysql://user@127.0.0.1:1/optuna"], "127.0.0.1:1"),
    ("search", ["run", "--storage", "redis://localhost"], "'redis://localhost'"),
    ("search", ["run", "--storage", "journal:/proc/journal.log"], "journal:/proc/journal.log"),
    ("search", ["run", "--workdir", "/proc"], "'/proc'"),
    ("search", ["run", "--workdir", "missing"], "'missing'"),
    # search run: data
    ("search", ["run", "--dataset", "mnist"], "'mnist'"),
    ("search", ["run", "--dataset", "cifar10", "--data-root", "{data}/no-cifar"], "no-cifar/cifar-10-batches-py"),
    ("search", ["run", "--dataset", "imagefolder:{data}/empty"], "empty"),
    ("search", ["run", "--dataset", "imagefolder:{data}/one-class"], "one-class"),
    ("search", ["run", "--dataset", "imagefolder:{data}/small-class"], "small-class/dog"),
    ("search", ["run", "--dataset", "imagefolder:{data}/loop"], "holds a link loop"),
    ("search", ["train", "--model", "litv2_s", "--dataset", "imagefolder:{data}/loop"], "holds a link loop"),
    # search: read-only commands
    ("search", ["status"], "--study"),
    ("search", ["status", "--study", "absent"], "'absent'"),
    ("search", ["status", "--study", "bad name"], "'bad name'"),
    ("search", ["front", "--study", "absent", "--plot", "x.txt", "--csv", "f.csv"], "'x.txt'"),
    ("search", ["front", "--study", "absent", "--csv", "missing/f.csv"], "'missing/f.csv'"),
    ("search", ["front", "--study", "absent", "--target", "cpu:bs1"], "'cpu:bs1'"),
    ("search", ["front", "--study", "absent", "--csv", "/proc/front.csv"], "is not writable"),
    ("search", ["front", "--study", "absent", "--plot", "{data}/huge.yaml/front.png"], "is a file, not a folder"),
    ("search", ["resume", "--study", "absent"], "'absent'"),
    ("search", ["resume", "--study", "absent", "--budget", "-1cpu-h"], "'-1cpu-h'"),
    ("search", ["pick", "--study", "absent", "--top", "0"], "--top 0"),
    ("search", ["pick", "--study", "absent", "--target", "cpu:bs0:224"], "'cpu:bs0:224'"),
    ("search", ["train", "--model", "litv2_s", "--dataset", "cifar100", "--data-root", "{data}/no-cifar"],
     "no-cifar/cifar-100-python"),
    ("search", ["train", "--workdir", "/proc"], "'/proc'"),
    # space
    ("space", ["show", "tiny", "--seed", "-1"], "--seed -1"),
    ("space", ["show", "tiny", "-n", "-1"], "-n -1"),
    ("space", ["show", "{data}/huge.yaml"], "huge.yaml"),
    ("space", ["validate", "missing.yaml"], "missing.yaml"),
    ("space", ["show", "nope"], "'nope'"),
    ("space", ["show", "--sample", "3", "tiny"], "--sample"),
    # litv2.bench
    ("litv2.bench", ["--repeats", "0"], "--repeats 0"),
    ("litv2.bench", ["--threads", "-1"], "--threads -1"),
    ("litv2.bench", ["--json", "missing/rows.json"], "'missing/rows.json'"),
    ("litv2.bench", ["--json", "/proc/rows.json"], "is not writable"),
    ("litv2.bench", ["measure", "--config", "litv2_s", "--json", "{data}"], "is a folder"),
    ("litv2.bench", ["--precision", "fp8"], "'fp8'"),
    ("litv2.bench", ["measure", "--config", "nope"], "'nope'"),
    ("litv2.bench", ["repeatability", "--runs", "1"], "--runs 1"),
    ("litv2.bench", ["repeatability", "--load", "-1"], "--load -1"),
    ("litv2.bench", ["calibrate", "--target", "cuda:bs1:224"], "'cuda:bs1:224' is invalid for calibrate"),
    # experiments
    ("experiments", ["run", "nope"], "'nope'"),
    ("experiments", ["run", "table5", "--seeds", "0"], "--seeds 0"),
    ("experiments", ["run", "table5", "--budget", "-1cpu-h"], "'-1cpu-h'"),
    ("experiments", ["run", "table5", "--out", "missing/table"], "'missing/table'"),
    ("experiments", ["run", "table5", "--tracking-uri", "http://127.0.0.1:1"], "'http://127.0.0.1:1'"),
    ("experiments", ["run", "table5", "--study", ""], "--study ''"),
    ("experiments", ["run", "table5", "--max-memory", "abc"], "--max-memory 'abc'"),
    ("experiments", ["run", "attention-resolution", "--max-memory", "-8G"], "--max-memory '-8G'"),
    ("experiments", ["show", "--study", ".."], "'..'"),
    ("experiments", ["show", "--study", "absent"], "'absent'"),
]
# Storages that are not what they claim, through every command that opens one: refused before Optuna
# touches them, and what can help named.
DAMAGED_SQLITE = {"truncated": "is damaged", "zeroed": "is damaged", "overwritten": "is damaged",
                  "text": "is damaged", "folder": "is a folder", "fifo": "not a regular file",
                  "foreign": "not an Optuna storage"}
DAMAGED_JOURNAL = {"garbage": "line 1 of", "bad-line": "line 2 of"}
STORAGE_COMMANDS = (["status", "--study", "s"], ["front", "--study", "s"], ["resume", "--study", "s"],
                    ["pick", "--study", "s"], ["run", "--study", "s"])
CASES += [("search", [*command, "--storage", f"sqlite:///{{data}}/{kind}.db"], needle)
          for kind, needle in DAMAGED_SQLITE.items() for command in STORAGE_COMMANDS]
CASES += [("search", [*command, "--storage", f"journal:{{data}}/{kind}.log"], needle)
          for kind, needle in DAMAGED_JOURNAL.items() for command in STORAGE_COMMANDS]
# Space files that are not what they claim or ask for more than a search can give, through every
# command that reads one (the tiny space with one field changed, or not a text file at all).
HOSTILE_SPACES = {"not-utf8.yaml": "is not UTF-8 text", "fifo.yaml": "not a regular file", "empty.yaml": "expected a mapping",
                  "folder.yaml": "Is a directory", "broken.json": "does not parse", "deep.yaml": "at most 64 blocks",
                  "huge-image.yaml": "outside 32..4096", "wide.yaml": "at most 2048", "bad-name.yaml": "field 'name'",
                  "tiny-proxy.yaml": "proxy.img_size", "grid.yaml": "expects at most 1000"}
CASES += [(module, [*command, f"{{data}}/{name}"], needle) for name, needle in HOSTILE_SPACES.items()
          for module, command in (("space", ["validate"]), ("space", ["show"]), ("search", ["run", "--space"]))]


def _damaged_storages(folder: Path) -> None:
    """A real study's sqlite file damaged in the ways files get damaged, a folder and a FIFO in
    its place, another program's database, and journals with a garbage or a broken line."""
    import sqlite3

    import optuna

    good = folder / "good.db"
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{good}", directions=["maximize"] * 2)
    study.enqueue_trial({})
    study.tell(study.ask(), [1.0, 2.0])
    data = good.read_bytes()
    (folder / "truncated.db").write_bytes(data[:len(data) // 3])
    (folder / "zeroed.db").write_bytes(bytes(len(data)))
    (folder / "overwritten.db").write_bytes(data[:100] + bytes(range(256)) * 16 + data[100 + 4096:])
    (folder / "text.db").write_text("not a database\n" * 100)
    (folder / "folder.db").mkdir()
    os.mkfifo(folder / "fifo.db")
    with sqlite3.connect(folder / "foreign.db") as db:
        db.execute("CREATE TABLE notes (text TEXT)")
    (folder / "garbage.log").write_bytes(bytes(range(128, 256)) * 10 + b"\n")
    journal = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(folder / "bad-line.log")))
    optuna.create_study(study_name="s", storage=journal)
    lines = (folder / "bad-line.log").read_bytes().splitlines(keepends=True)
    (folder / "bad-line.log").write_bytes(lines[0] + b"{not json\n" + b"".join(lines[1:]))


def _hostile_spaces(folder: Path) -> None:
    tiny = (ROOT / "space" / "spaces" / "tiny.yaml").read_text()
    changed = {"deep.yaml": ("depths: [1, 1, 2, 1]", "depths: [1, 1, 100000, 1]"),
               "huge-image.yaml": ("deploy_img_size: 224", "deploy_img_size: 99999999"),
               "wide.yaml": ("embed_dim: 32", "embed_dim: 100000"),
               "bad-name.yaml": ("name: tiny", 'name: "../\\x01tiny"'),
               "tiny-proxy.yaml": ("img_size: 64", "img_size: 7"),
               "grid.yaml": ("fixed_points: false\ndimensions:\n", "fixed_points: true\ndimensions:\n  embed_dim: [16, 24, "
                             "32, 40, 48, 56, 64, 72, 80, 96]\n  mlp_ratio: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n")}
    for name, (old, new) in changed.items():
        assert old in tiny
        (folder / name).write_text(tiny.replace(old, new))
    (folder / "not-utf8.yaml").write_bytes(b"name: x\n\xff\xfe: [1\n")
    os.mkfifo(folder / "fifo.yaml")
    (folder / "empty.yaml").write_text("")
    (folder / "folder.yaml").mkdir()
    (folder / "broken.json").write_text("[1, 2")


def _bad_data(folder: Path) -> None:
    """A space file far over the size limit (sparse: nothing is written), an empty image folder,
    one with a single class, one whose second class is too small for a validation split, and
    damaged storages."""
    _damaged_storages(folder)
    _hostile_spaces(folder)
    with open(folder / "huge.yaml", "wb") as handle:
        handle.truncate(2 * 1024**3)
    (folder / "empty" / "cat").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, counts in (("one-class", {"cat": 6}), ("small-class", {"cat": 6, "dog": 2}), ("loop", {"a": 6, "b": 6})):
        for label, count in counts.items():
            (folder / name / label).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / name / label / f"{i}.png")
    (folder / "loop" / "a" / "up").symlink_to("..")  # torchvision's ImageFolder follows it round and round


def _snapshot(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def answers(tmp_path_factory):
    """Every case's (exit status, stderr without ``-X importtime``'s lines, the modules of
    HEAVY_MODULES it imported, files left in its working directory)."""
    data = tmp_path_factory.mktemp("bad-data")
    _bad_data(data)
    before = _snapshot(data)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "LITV2_DATA": str(data / "no-cifar")}

    def run(case: tuple[str, list[str], str]) -> tuple[int, str, set[str], list[str]]:
        module, args, _ = case
        cwd = tmp_path_factory.mktemp("cwd")
        # timeout: a guard against a hang, far above any load; the answer's speed is not asserted
        done = subprocess.run([sys.executable, "-X", "importtime", "-m", module, *[a.format(data=data) for a in args]],
                              cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
        timing = [line for line in done.stderr.splitlines() if line.startswith("import time:")]
        stderr = "".join(line for line in done.stderr.splitlines(keepends=True) if not line.startswith("import time:"))
        imported = {line.rsplit("|", 1)[-1].strip() for line in timing}
        assert "argparse" in imported, done.stderr[-2000:]  # -X importtime did report the imports
        return done.returncode, stderr, imported & set(HEAVY_MODULES), sorted(p.name for p in cwd.iterdir())

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(zip(range(len(CASES)), pool.map(run, CASES)))
    assert _snapshot(data) == before  # the checks read the bad data, never write beside it
    return results


def test_there_are_at_least_a_hundred_and_fifty_distinct_bad_inputs():
    assert len({(module, tuple(args)) for module, args, _ in CASES}) == len(CASES) >= 150


@pytest.mark.parametrize("index", range(len(CASES)),
                         ids=[f"{module} {' '.join(args)}"[:60] for module, args, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_creates_nothing(answers, index):
    module, args, named = CASES[index]
    code, stderr, heavy, left = answers[index]
    lines = stderr.strip().splitlines()
    assert code == 2, stderr
    assert len(lines) == 1, stderr
    assert named in lines[0] and "error" in lines[0]
    assert left == []
    assert heavy == set(), f"refused only after importing {sorted(heavy)}"  # checked before the stack loads


HEAVY_MODULES = ("torch", "timm", "ray", "mlflow")


def test_status_and_front_read_the_storage_without_the_deep_learning_stack(tmp_path):
    """``status`` and ``front`` answer from the Optuna storage alone: `-X importtime` shows no
    torch, timm, Ray or MLflow (together ~8 s of imports here)."""
    import optuna

    from search.core.objectives import create_objective_study
    from flat_settings import flat_settings
    from search.study.storage import open_storage
    from search.study.studies import SETTINGS_ATTR

    settings = flat_settings(study="small", space="tiny", budget="1cpu-h", dataset="digits", target="cpu:bs1:224",
                              storage=None, tracking_uri=None, workdir=str(tmp_path), sampler="random", epochs=1,
                              seed=0, address=None, data_root=None, trials_per_device=1, cpus_per_trial=1)
    study = create_objective_study("small", open_storage(settings.run.storage), optuna.samplers.RandomSampler())
    study.set_user_attr(SETTINGS_ATTR, settings.to_json())
    trial = study.ask()
    trial.set_user_attr("arch_id", "abc")
    study.tell(trial, [50.0, 10.0])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    for args in (["status"], ["front", "--csv", "front.csv"]):
        done = subprocess.run([sys.executable, "-X", "importtime", "-m", "search", *args, "--study", "small"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
        assert not imported & set(HEAVY_MODULES), sorted(imported & set(HEAVY_MODULES))
    assert "trial" in done.stdout and (tmp_path / "front.csv").read_text().startswith("trial,arch_id")
