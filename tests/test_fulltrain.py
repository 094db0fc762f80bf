"""``search train``: the paper's recipe through timm, exact resume, DDP under torchrun, bad input.

Tiny networks on the embedded digits at 32 px, one CPU thread per process.
"""
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from litv2 import LITConfig
from search.cli.main import main
from search.deploy.export import create_lit_model, save_timm_folder
from search.training.fulldata import load_training_data
from search.deploy.fulltrain import CHECKPOINT_FILE, Distributed, Recipe, Trainer, TrainPlan, param_groups

REPO = Path(__file__).resolve().parents[1]
TINY = LITConfig(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), window_size=(0, 0, 2, 1),
                 drop_path_rate=0.1)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on a busy two-core machine mostly wait on each other
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    """A folder as ``search pick --export`` leaves it (the timm part)."""
    folder = tmp_path_factory.mktemp("export") / "tiny"
    folder.mkdir()
    save_timm_folder(create_lit_model(TINY, 1000, 32), TINY, folder, 32, {"arch_id": "tiny", "study": "s"})
    return folder


def train(tmp_path, *options):
    return main(["train", "--workers", "0", "--workdir", str(tmp_path), *options])


def common(export_dir):
    """Options of a tiny training; its export's measurement is the pick-and-train test's to check."""
    return ["--model", str(export_dir), "--dataset", "digits", "--epochs", "2", "--batch-size", "64",
            "--img-size", "32", "--seed", "3", "--target", "none"]


def test_one_epoch_then_resume_equals_two_straight(export_dir, tmp_path, capsys):
    assert train(tmp_path, *common(export_dir), "--output", str(tmp_path / "straight")) == 0
    assert train(tmp_path, *common(export_dir), "--output", str(tmp_path / "split"), "--stop-after-epoch", "1") == 0
    assert not (tmp_path / "split" / "model").exists()  # the schedule is not over
    assert train(tmp_path, "--resume", str(tmp_path / "split" / CHECKPOINT_FILE)) == 0
    out = capsys.readouterr().out
    assert "stopped after epoch 1 of 2" in out and out.count("done: tiny trained for 2 epochs") == 2
    straight = torch.load(tmp_path / "straight" / CHECKPOINT_FILE, weights_only=False)
    split = torch.load(tmp_path / "split" / CHECKPOINT_FILE, weights_only=False)
    # Tolerance: none. On the CPU a resumed run is bit-identical to an uninterrupted one.
    for key, value in straight["model"].items():
        assert torch.equal(value, split["model"][key]), key
    for key in ("train_loss", "val_top1", "lr"):
        assert [r[key] for r in straight["history"]] == [r[key] for r in split["history"]]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(split["mlflow_run_id"])  # the resumed training continued its own run
    assert run.info.status == "FINISHED" and run.data.tags["kind"] == "train"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_top1")] == [1, 2]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"model"}
    trained = timm.create_model(f"local-dir:{tmp_path / 'split' / 'model'}", pretrained=True).eval()
    for key, value in trained.state_dict().items():
        assert torch.equal(value, split["model"][key])
    assert trained.num_classes == 10


def test_a_finished_training_whose_export_failed_is_exported_by_resume(export_dir, tmp_path, monkeypatch, capsys):
    import search.deploy.fulltrain as fulltrain

    real = fulltrain.Trainer.export
    monkeypatch.setattr(fulltrain.Trainer, "export", lambda *args, **kwargs: (_ for _ in ()).throw(OSError("disk full")))
    options = [*common(export_dir)[:4], "--epochs", "1", "--batch-size", "64", "--img-size", "32", "--target",
               "none", "--output", str(tmp_path / "run")]
    with pytest.raises(OSError, match="disk full"):
        train(tmp_path, *options)
    assert (tmp_path / "run" / CHECKPOINT_FILE).exists() and not (tmp_path / "run" / "model").exists()
    monkeypatch.setattr(fulltrain.Trainer, "export", real)
    assert train(tmp_path, "--resume", str(tmp_path / "run" / CHECKPOINT_FILE)) == 0
    out = capsys.readouterr().out
    assert "all 1 epochs done, the export is missing: exporting" in out and "done: tiny trained for 1 epochs" in out
    assert (tmp_path / "run" / "model" / "model.onnx").exists()
    assert train(tmp_path, "--resume", str(tmp_path / "run" / CHECKPOINT_FILE)) == 2  # nothing left to do
    assert "its export" in capsys.readouterr().err


def test_the_recipe_is_the_papers_through_timm(export_dir, tmp_path):
    from timm.loss import SoftTargetCrossEntropy

    recipe = Recipe(epochs=300, batch_size=64, img_size=32)
    plan = TrainPlan(model=str(export_dir), name="tiny", config_json=TINY.to_json(), dataset="digits", data_root=None,
                     recipe=recipe, output=str(tmp_path / "o"), tracking_uri="", artifact_root="")
    trainer = Trainer(plan, load_training_data("digits"), Distributed(), None, workers=0)
    augment = str(trainer.train_loader.dataset.transform)
    assert "RandAugment" in augment and "m=9" in augment and "RandomErasing(p=0.25, mode=pixel" in augment
    assert (trainer.mixup.mixup_alpha, trainer.mixup.cutmix_alpha, trainer.mixup.label_smoothing) == (0.8, 1.0, 0.1)
    assert isinstance(trainer.criterion, SoftTargetCrossEntropy)
    assert trainer.lr == pytest.approx(5e-4 * 64 / 512) and recipe.warmup == 20
    assert trainer.scheduler.t_initial == 300 * trainer.steps and trainer.scheduler.warmup_t == 20 * trainer.steps
    assert type(trainer.optimizer).__name__ == "AdamW"
    trainer.scheduler.step_update(num_updates=25 * trainer.steps)  # past the warm-up
    rates = {id(p): g["lr"] for g in trainer.optimizer.param_groups for p in g["params"]}
    named = dict(trainer.model.named_parameters())
    offset = named["layers.0.downsample.dconv.conv_offset.weight"]
    weight = named["layers.0.downsample.dconv.weight"]
    assert rates[id(offset)] == pytest.approx(0.01 * rates[id(weight)])


def test_no_weight_decay_on_norms_biases_and_position_tables():
    model = create_lit_model(TINY.replace(rel_pos_bias=True, attn_kind=("msa",) * 4, window_size=(0,) * 4), 10, 32)
    groups = param_groups(model, 0.05, 0.01)
    decay = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, param in model.named_parameters():
        expected = not (param.ndim <= 1 or name.endswith(".bias") or "relative_position_bias_table" in name)
        assert (id(param) in decay) == expected, name
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_an_unreadable_image_is_reported_and_skipped(export_dir, tmp_path, caplog):
    folder = tmp_path / "images"
    for label in range(2):
        (folder / f"class{label}").mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (20, 20), (120 * label, 60, 30 + 10 * i)).save(folder / f"class{label}" / f"{i}.png")
    (folder / "class1" / "broken.png").write_bytes(b"not a png at all")
    with caplog.at_level(logging.WARNING):
        code = train(tmp_path, "--model", str(export_dir), "--dataset", f"imagefolder:{folder}", "--epochs", "1",
                     "--batch-size", "4", "--img-size", "32", "--target", "none", "--output", str(tmp_path / "out"))
    assert code == 0 and (tmp_path / "out" / "model" / "model.safetensors").is_file()
    assert any("Skipped sample" in r.getMessage() and "broken.png" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("options,message", [
    (["--model", "{empty}", "--dataset", "digits"], "is not a model export"),
    (["--model", "{other}", "--dataset", "digits"], "is not a LIT-family export (architecture 'resnet18')"),
    (["--model", "litv9_z", "--dataset", "digits"], "--model 'litv9_z' is neither an export folder"),
    (["--model", "{export}", "--dataset", "imagefolder:/no/such/folder"], "imagefolder path '/no/such/folder' is not"),
    (["--model", "{export}", "--dataset", "mnist"], "dataset 'mnist' is unknown"),
    (["--model", "{export}", "--dataset", "digits", "--batch-size", "7"], "--batch-size 7 is invalid"),
    (["--model", "{export}", "--dataset", "digits", "--epochs", "0"], "--epochs 0 is invalid"),
    (["--model", "{export}", "--dataset", "digits", "--img-size", "7"], "--img-size 7 is invalid: expected 32 to 4096"),
    (["--model", "{export}", "--dataset", "digits", "--epochs", "2", "--stop-after-epoch", "3"],
     "--stop-after-epoch 3 is invalid"),
    (["--resume", "{tmp}/nothing.pt"], "is not a file"),
    (["--resume", "{empty}/config.json"], "cannot be read as a checkpoint"),
])
def test_bad_train_input_is_one_line_exit_2_and_writes_nothing(export_dir, tmp_path, capsys, options, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{")
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text('{"architecture": "resnet18", "num_classes": 10}')
    names = dict(empty=empty, other=other, export=export_dir, tmp=tmp_path)
    output = tmp_path / "out"
    code = train(tmp_path, *[o.format(**names) for o in options], "--output", str(output))
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not output.exists()


def test_resume_keeps_its_settings_and_an_output_is_never_reused(export_dir, tmp_path, capsys):
    options = [*common(export_dir), "--epochs", "2", "--output", str(tmp_path / "run")]
    assert train(tmp_path, *options, "--stop-after-epoch", "1") == 0
    assert train(tmp_path, *options) == 2
    assert "already exists: continue its training with --resume" in capsys.readouterr().err
    assert train(tmp_path, "--resume", str(tmp_path / "run" / CHECKPOINT_FILE), "--epochs", "3") == 2
    assert "--epochs 3 disagrees with the checkpoint's 2" in capsys.readouterr().err


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_under_torchrun(export_dir, tmp_path):
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               MLFLOW_DISABLE_TELEMETRY="true")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
               "-m", "search", "train", "--model", str(export_dir), "--dataset", "digits", "--epochs", "1",
               "--batch-size", "32", "--img-size", "32", "--workers", "1", "--output", str(tmp_path / "ddp"),
               "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    state = torch.load(tmp_path / "ddp" / CHECKPOINT_FILE, weights_only=False)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert state["steps_per_epoch"] == 1437 // (32 * 2)  # DistributedSampler: each process half the images
    assert state["rng"][0]["torch"].ne(state["rng"][1]["torch"]).any()  # own augmentation stream per process
    assert done.stdout.count("epoch 1/1: train loss") == 1  # one process reports
    model = timm.create_model(f"local-dir:{tmp_path / 'ddp' / 'model'}", pretrained=True)
    assert all(torch.isfinite(p).all() for p in model.parameters())
