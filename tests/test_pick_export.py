"""``search pick`` and ``--export`` on studies built directly with Optuna, so the right pick is known.

Measurements are a deterministic stand-in (a figure per architecture, and a second one for
re-measurements) except in the end-to-end export test, which measures the tiny networks for real.
"""
from pathlib import Path

import numpy as np
import onnxruntime
import optuna
import pytest
import timm
import torch
from mlflow.tracking import MlflowClient

from litv2 import LITConfig
from search.engine.cache import ThroughputCache
from search.cli.main import main
from search.core.constraints import Constraints
from search.deploy.export import CARD_FILE, ONNX_FILE, read_export
from search.engine.measuring import measuring_fingerprint
from search.core.objectives import create_objective_study
from search.engine.driver import RUN_ID_ATTR, SETTINGS_ATTR
from search.deploy.pick import NoFeasibleModel, pick_model
from flat_settings import flat_settings
from search.study.storage import open_storage
from search.core.target import parse_target
from search.engine.tracking import StudyTracker
from search.deploy.evaluation import evaluate_export
from search.deploy.registry import log_and_register
from search.deploy.trained import CURVE_FILE
from servers import free_port, mlflow_server, stop_server

TrialState = optuna.trial.TrialState
TARGET = "cpu:bs1:32"
ORT_TARGET = "cpu:bs1:32:ort"


def tiny(embed_dim: int, merge: str = "patch") -> LITConfig:
    return LITConfig(embed_dim=embed_dim, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), window_size=(0, 0, 2, 1),
                     merge=merge)


# name: (config, proxy top-1 %, img/s the search measured, params, FLOPs, state)
FRONT = {
    "a": (tiny(16, "dtm"), 90.0, 100.0, 4e6, 4e9, TrialState.COMPLETE),
    "b": (tiny(16), 85.0, 200.0, 3e6, 3e9, TrialState.COMPLETE),
    "c": (tiny(8, "dtm"), 80.0, 300.0, 1e6, 2e9, TrialState.COMPLETE),
    "d": (tiny(8), 70.0, 400.0, 1.5e6, 1e9, TrialState.COMPLETE),
    "dominated": (tiny(24), 60.0, 150.0, 1e6, 1e9, TrialState.COMPLETE),
    "stopped": (tiny(32), 95.0, 500.0, 1e6, 1e9, TrialState.PRUNED),  # MO-ASHA stopped it: never a candidate
}


def measured(throughput: float, target: str = TARGET, device_name: str | None = None, spread: float = 2.0) -> dict:
    """A measurement result as search.engine.measuring returns it, made on this machine (its fingerprint),
    with a 95 % interval of +- ``spread``."""
    fingerprint = measuring_fingerprint(target)
    record = dict(device_name=device_name or fingerprint["device_name"],
                  versions={k: v for k, v in fingerprint.items() if k != "device_name"},
                  ci_low=throughput - spread, ci_high=throughput + spread, runtime=parse_target(target).runtime)
    if record["runtime"] == "ort":  # the provider a real onnxruntime measurement names (the card shows it)
        record["provider"] = "CPUExecutionProvider"
    return dict(throughput=throughput, throughput_spread=spread, samples=[throughput] * 3, measurement=record)


def build_study(workdir: Path, name: str = "s", tracked: bool = False, cached: bool = False) -> optuna.Study:
    settings = flat_settings(study=name, space="tiny", budget="0.05cpu-h", dataset="digits", target=TARGET,
                              storage=None, tracking_uri=None, workdir=str(workdir), sampler="random", epochs=2,
                              seed=0, address=None, data_root=None, trials_per_device=1, cpus_per_trial=1)
    study = create_objective_study(name, open_storage(settings.run.storage), optuna.samplers.RandomSampler(seed=0))
    study.set_user_attr(SETTINGS_ATTR, settings.to_json())
    if tracked:  # the MLflow parent run a search leaves
        tracker = StudyTracker(settings.run.tracking_uri, workdir / "mlartifacts")
        study.set_user_attr(RUN_ID_ATTR, tracker.start(name, {"space": "tiny"}))
        tracker.finish()
    for arch, (config, accuracy, throughput, params, flops, state) in FRONT.items():
        attrs = dict(arch_id=arch, config=config.to_json(), summary=f"tiny {arch}", params=params, flops=flops,
                     throughput=throughput, throughput_spread=1.0, epoch_accuracies=[accuracy / 2, accuracy],
                     epochs_done=2 if state == TrialState.COMPLETE else 1, seed=0,
                     status="complete" if state == TrialState.COMPLETE else "stopped")
        study.add_trial(optuna.trial.create_trial(
            state=state, values=[accuracy, throughput] if state == TrialState.COMPLETE else None,
            user_attrs=attrs, system_attrs={"constraints": [-1.0]}))
        if cached:  # the search's measurement, left in the work directory's cache
            ThroughputCache(workdir / "throughput_cache.db").put(arch, parse_target(TARGET).key, measured(throughput))
    return study


class FakeMeasure:
    """img/s per architecture (by embed dim and merge), another figure for re-measurements."""

    def __init__(self, first: dict[str, float], again: dict[str, float] | None = None) -> None:
        self.first, self.again = first, again or first
        self.calls: list[str] = []

    def __call__(self, config_json: str, target_key: str) -> dict:
        arch = next(a for a, row in FRONT.items() if row[0].to_json() == config_json)
        figures = self.again if arch in self.calls else self.first
        self.calls.append(arch)
        return measured(figures[arch], target_key)


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    build_study(folder, cached=True)
    return folder


@pytest.fixture
def study(study_dir):
    return optuna.load_study(study_name="s", storage=f"sqlite:///{study_dir / 'optuna.db'}")


def run_pick(study, workdir, target=TARGET, constraints=Constraints(), top=3, measure=None):
    from search.study.settings import SearchSettings

    settings = SearchSettings.from_json(study.user_attrs[SETTINGS_ATTR])
    return pick_model(study, settings, parse_target(target), constraints, top,
                      ThroughputCache(workdir / "throughput_cache.db"), measure=measure or FakeMeasure(
                          {a: row[2] for a, row in FRONT.items()}), say=lambda line: None)


@pytest.mark.parametrize("constraints,expected", [
    (Constraints(), "a"),
    (Constraints(min_throughput=150), "b"),
    (Constraints(min_throughput=250), "c"),
    (Constraints(max_latency_ms=4.0), "c"),  # batch 1: 1000 / 300 = 3.3 ms, b takes 5 ms
    (Constraints(max_params=2.5e6), "c"),
    (Constraints(max_flops=1.5e9), "d"),
    (Constraints(min_throughput=150, max_params=1.2e6), "c"),
])
def test_pick_chooses_the_most_accurate_feasible_front_model(study, tmp_path, constraints, expected):
    pick = run_pick(study, tmp_path, constraints=constraints)
    assert pick.chosen.arch_id == expected
    assert {c.arch_id for c in pick.candidates} == {"a", "b", "c", "d"}  # the front only: never stopped or dominated
    assert pick.chosen.remeasured is not None


def test_re_measuring_decides_not_one_noisy_cached_figure(study, tmp_path):
    # The search measured a at 100 img/s; here a measures 1200 once (noise) but 900 again.
    measure = FakeMeasure({"a": 1200.0, "b": 1100.0, "c": 1300.0, "d": 1400.0},
                          again={"a": 900.0, "b": 1050.0, "c": 1250.0, "d": 1350.0})
    pick = run_pick(study, tmp_path, target="cpu:bs1:32:t2", constraints=Constraints(min_throughput=1000),
                    top=1, measure=measure)
    assert pick.chosen.arch_id == "b"
    a = next(c for c in pick.candidates if c.arch_id == "a")
    assert (a.cached["throughput"], a.remeasured["throughput"], a.measured_times) == (1200.0, 900.0, 2)
    # All measured once; then a and b again, and - each second figure's interval being apart
    # from the first - a third time: the figure two measurements agree on is kept.
    assert measure.calls == ["a", "b", "c", "d", "a", "a", "b", "b"]


def test_a_figure_whose_interval_reaches_the_limit_is_measured_again_not_dropped(study, study_dir):
    # a's cached 100 +- 2 (the study folder's cache) is under --min-throughput 101, but its interval reaches 101.
    measure = FakeMeasure({"a": 104.0, "b": 200.0, "c": 300.0, "d": 400.0})
    pick = run_pick(study, study_dir, constraints=Constraints(min_throughput=101), top=1, measure=measure)
    assert pick.chosen.arch_id == "a" and pick.chosen.remeasured["throughput"] == 104.0
    assert measure.calls == ["a"]  # intervals [98, 102] and [102, 106] touch: no third measurement
    measure = FakeMeasure({"a": 97.0, "b": 200.0, "c": 300.0, "d": 400.0})
    pick = run_pick(study, study_dir, constraints=Constraints(min_throughput=101), top=1, measure=measure)
    assert pick.chosen.arch_id == "b" and measure.calls == ["a", "b"]  # measured, then it dropped out
    measure = FakeMeasure({a: row[2] for a, row in FRONT.items()})
    pick = run_pick(study, study_dir, constraints=Constraints(min_throughput=103), top=1, measure=measure)
    assert pick.chosen.arch_id == "b" and measure.calls == ["b"]  # [98, 102] cannot reach 103: not measured


def test_a_failed_pick_still_shows_every_candidates_figures(study, study_dir):
    with pytest.raises(NoFeasibleModel) as failure:
        run_pick(study, study_dir, constraints=Constraints(min_throughput=1000))
    rows = [line for line in failure.value.table.splitlines() if line.startswith("| ") and "arch id" not in line]
    assert [row.split(" | ")[1] for row in rows] == ["a", "b", "c", "d"]
    assert "| 400.0 [398.0, 402.0] (cache) | - |" in failure.value.table
    assert all("no: min_throughput" in row for row in rows)


def test_a_new_target_is_measured_once_and_cached(study, tmp_path):
    cache = ThroughputCache(tmp_path / "throughput_cache.db")
    cache.put("c", "cpu:bs4:32:fp32:t1", measured(999.0, "cpu:bs4:32", device_name="another CPU"))
    first = FakeMeasure({a: 50.0 + i for i, a in enumerate(FRONT)})
    run_pick(study, tmp_path, target="cpu:bs4:32", top=1, measure=first)
    # The four candidates (c's figure from another machine does not count), then the pick again.
    assert sorted(first.calls) == ["a", "a", "b", "c", "d"]
    assert cache.get("b", "cpu:bs4:32:fp32:t1", measuring_fingerprint("cpu:bs4:32"))["throughput"] == 51.0
    second = FakeMeasure({a: 51.0 + i for i, a in enumerate(FRONT)})  # agrees with the cached figures
    pick = run_pick(study, tmp_path, target="cpu:bs4:32", top=1, measure=second)
    assert second.calls == ["a"]  # only the re-measurement: the rest came from the cache
    assert {c.source for c in pick.candidates} == {"cache"}


def test_an_unreachable_constraint_names_the_closest_figure(study, tmp_path):
    with pytest.raises(NoFeasibleModel, match=r"fastest candidate: trial 3, 400\.0 \[398\.0, 402\.0\] img/s on "
                                              r"cpu:bs1:32:fp32:t1; --min-throughput 1000 cannot be met"):
        run_pick(study, tmp_path, constraints=Constraints(min_throughput=1000))
    with pytest.raises(NoFeasibleModel, match=r"smallest candidate: trial 2, 1\.00M params; --max-params 0\.5M cannot be met"):
        run_pick(study, tmp_path, constraints=Constraints(max_params=5e5))
    with pytest.raises(NoFeasibleModel, match=r"together; closest: trial"):
        run_pick(study, tmp_path, constraints=Constraints(min_throughput=350, max_params=1.2e6))


@pytest.mark.parametrize("argv,message", [
    (["--study", "nope"], "study 'nope' does not exist"),
    (["--study", "s", "--max-params", "lots"], "--max-params 'lots' is invalid"),
    (["--study", "s", "--min-throughput", "-3"], "--min-throughput '-3' is invalid"),
    (["--study", "s", "--target", "tpu:bs1:32"], "target 'tpu:bs1:32' is invalid"),
    (["--study", "s", "--min-throughput", "1e9"], "--min-throughput 1e+09 cannot be met"),
    (["--study", "s", "--top", "0"], "--top 0 is invalid"),
])
def test_bad_pick_input_is_one_line_and_exit_2(study_dir, tmp_path, capsys, argv, message):
    export = tmp_path / "export"
    code = main(["pick", "--workdir", str(study_dir), *argv, "--export", str(export)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not export.exists() and not any(p.name.startswith(".export") for p in tmp_path.iterdir())


def test_pick_prints_the_candidates_table_when_it_fails(study_dir, capsys):
    code = main(["pick", "--workdir", str(study_dir), "--study", "s", "--min-throughput", "1000"])
    captured = capsys.readouterr()
    assert code == 2 and captured.err.strip() == ("search: error: fastest candidate: trial 3, 400.0 [398.0, 402.0] img/s "
                                                  "on cpu:bs1:32:fp32:t1; --min-throughput 1000 cannot be met")
    assert "| trial | arch id |" in captured.out and "300.0 [298.0, 302.0] (cache)" in captured.out


@pytest.mark.parametrize("export,message", [
    ("/proc/deploy", "is not writable"),
    ("{study}/optuna.db/deploy", "is a file, not a folder"),
    ("{study}/missing/deploy", "does not exist"),
])
def test_an_export_folder_that_cannot_be_made_is_refused_before_measuring(study_dir, capsys, export, message):
    code = main(["pick", "--workdir", str(study_dir), "--study", "s", "--export", export.format(study=study_dir)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err


def test_an_existing_export_folder_is_refused_before_measuring(study_dir, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    code = main(["pick", "--workdir", str(study_dir), "--study", "s", "--target", "cpu:bs2:32",
                 "--export", str(tmp_path / "taken")])
    assert code == 2 and "already exists" in capsys.readouterr().err
    assert ThroughputCache(study_dir / "throughput_cache.db").get(
        "a", parse_target("cpu:bs2:32").key, measuring_fingerprint("cpu:bs2:32")) is None


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One real end-to-end pick with --export for the study's target served by onnxruntime
    (real measurements of the tiny networks' exported graphs)."""
    workdir = tmp_path_factory.mktemp("pick")
    build_study(workdir, tracked=True, cached=True)
    for arch, row in FRONT.items():  # as a search measuring in onnxruntime would have left them
        ThroughputCache(workdir / "throughput_cache.db").put(arch, parse_target(ORT_TARGET).key,
                                                             measured(row[2], ORT_TARGET))
    folder = workdir / "deploy"
    code = main(["pick", "--workdir", str(workdir), "--study", "s", "--max-params", "3.5M", "--top", "2",
                 "--target", ORT_TARGET, "--export", str(folder)])
    return code, workdir, folder


def test_export_is_a_timm_folder_an_onnx_model_and_a_card(exported, capsys):
    code, workdir, folder = exported
    assert code == 0
    assert sorted(p.name for p in folder.iterdir()) == sorted(["config.json", "model.safetensors", ONNX_FILE, CARD_FILE])
    export = read_export(folder)
    assert export.config == FRONT["b"][0] and export.img_size == 32
    assert export.provenance["arch_id"] == "b" and export.provenance["study"] == "s"
    torch.manual_seed(0)
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    images = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        reference = model(images)
    again = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()  # rebuilt: identical outputs
    with torch.no_grad():
        assert torch.equal(again(images), reference)
    session = onnxruntime.InferenceSession(str(folder / ONNX_FILE), providers=["CPUExecutionProvider"])
    for batch in (1, 5):  # a dynamic batch dimension
        (logits,) = session.run(None, {"images": images[:batch].numpy()})
        assert logits.shape == (batch, 1000)
        assert np.abs(logits - reference[:batch].numpy()).max() <= 1e-4
    card = (folder / CARD_FILE).read_text()
    for needle in ("# b: a LIT-family model for `cpu:bs1:32:fp32:t1:ort`", "re-measured by this pick",
                   "in onnxruntime, running the `model.onnx` of this folder (the same exporter) "
                   "(CPUExecutionProvider, onnxruntime ", "runtime ort, provider CPUExecutionProvider",
                   "Proxy top-1 85.00 %", "max_params=3.5e+06", "MLflow parent run", "command: `python -m search pick",
                   "onnxruntime", "torch "):
        assert needle in card
    assert not [p for p in workdir.iterdir() if ".partial" in p.name]


def test_export_is_logged_to_the_parent_run_and_as_an_mlflow_model(exported):
    import mlflow.pyfunc

    code, workdir, folder = exported
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{workdir / 'optuna.db'}")
    run_id = study.user_attrs[RUN_ID_ATTR]
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    logged = {a.path for a in client.list_artifacts(run_id, "deploy/b")}
    assert {f"deploy/b/{name}" for name in ("config.json", "model.safetensors", ONNX_FILE, CARD_FILE)} <= logged
    assert client.get_run(run_id).data.tags["deployed_arch_id"] == "b"
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    models = mlflow.search_logged_models(experiment_ids=[client.get_run(run_id).info.experiment_id], output_format="list")
    assert [m.name for m in models] == ["deploy-b"] and models[0].source_run_id == run_id
    served = mlflow.pyfunc.load_model(f"models:/{models[0].model_id}")
    images = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(folder / ONNX_FILE), providers=["CPUExecutionProvider"])
    assert np.allclose(np.asarray(served.predict(images)["logits"]), session.run(None, {"images": images})[0], atol=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine could measure a cuda target")
def test_a_cuda_target_without_a_gpu_is_refused(study_dir, capsys):
    assert main(["pick", "--workdir", str(study_dir), "--study", "s", "--target", "cuda:bs8:32"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_lit_custom_takes_a_config_its_dict_or_its_json():
    config = tiny(16)
    models = [timm.create_model("lit_custom", lit_config=form, num_classes=10, img_size=32)
              for form in (config, config.to_dict(), config.to_json())]
    assert all(m.config == config and m.num_classes == 10 for m in models)
    with pytest.raises(ValueError, match="lit_custom needs lit_config"):
        timm.create_model("lit_custom")


def test_a_folder_without_weights_is_not_an_export(exported, tmp_path):
    _, _, folder = exported
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(ValueError, match="has no model.safetensors"):
        read_export(partial)


def _predictions_agree(model_uri: str, tracking_uri: str, onnx_file: Path) -> None:
    """``mlflow.pyfunc.load_model(model_uri)`` serves what the ONNX file computes."""
    import mlflow
    import mlflow.pyfunc

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    served = mlflow.pyfunc.load_model(model_uri)
    images = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert np.abs(np.asarray(served.predict(images)["logits"]) - session.run(None, {"images": images})[0]).max() <= 1e-5


def test_a_picked_export_says_it_is_untrained_and_is_registered_as_a_candidate(exported):
    code, workdir, folder = exported
    card = (folder / CARD_FILE).read_text().splitlines()
    assert card[2].startswith("> **Untrained weights.**") and "import litv2" in card[4]
    provenance = read_export(folder).provenance
    assert provenance["weights"].startswith("untrained") and "import litv2" in provenance["loading"]
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    version = MlflowClient(uri, registry_uri=uri).get_model_version_by_alias("s", "candidate")
    assert str(version.version) == "1"
    assert {k: version.tags[k] for k in ("study", "trial", "arch_id", "target", "weights")} == dict(
        study="s", trial=str(list(FRONT).index("b")), arch_id="b", target=parse_target(ORT_TARGET).key, weights="untrained")
    _predictions_agree("models:/s@candidate", uri, folder / ONNX_FILE)


@pytest.fixture(scope="module")
def trained(exported, tmp_path_factory):
    """``search train`` on the picked export, as a user continues after ``pick --export``."""
    _, workdir, folder = exported
    output = tmp_path_factory.mktemp("trained") / "run"
    code = main(["train", "--model", str(folder), "--dataset", "digits", "--epochs", "2", "--batch-size", "64",
                 "--workers", "0", "--workdir", str(workdir), "--output", str(output), "--export-every", "1"])
    return code, workdir, output


@pytest.mark.slow
def test_a_trained_model_is_an_export_that_loads_evaluates_and_serves_as_its_card_says(trained):
    code, workdir, output = trained
    assert code == 0
    model_dir = output / "model"
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(
        ["config.json", "model.safetensors", ONNX_FILE, CARD_FILE, CURVE_FILE])
    history = torch.load(output / "last.pt", weights_only=False)["history"]
    final, best = history[-1]["val_top1"], max(r["val_top1"] for r in history)
    # the figure the run reported, recomputed from the folder as a user loads it
    assert evaluate_export(model_dir, "digits", workers=0).top1 == pytest.approx(final, abs=1e-9)
    with pytest.raises(ValueError, match="is not what .* was trained on \\('digits'\\)"):
        evaluate_export(model_dir, "cluttered-digits", workers=0)
    export = read_export(model_dir)
    assert export.provenance["val_top1"] == final and export.provenance["weights"].startswith("trained: digits")
    assert export.provenance["trial"] == list(FRONT).index("b") and export.provenance["study"] == "s"
    card = (model_dir / CARD_FILE).read_text()
    assert f"validation top-1 **{final:.2f} %** (best {best:.2f} %" in card
    for record in history:
        assert f"| {record['epoch']} | {record['train_loss']:.4f} | {record['val_top1']:.2f} |" in card
    assert "## Measured on `cpu:bs1:32:fp32:t1:ort`" in card and "| throughput, img/s |" in card
    model = timm.create_model(f"local-dir:{model_dir}", pretrained=True).eval()
    assert model.num_classes == 10
    images = torch.randn(3, 3, 32, 32)
    session = onnxruntime.InferenceSession(str(model_dir / ONNX_FILE), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        assert np.abs(session.run(None, {"images": images.numpy()})[0] - model(images).numpy()).max() <= 1e-4
    # --export-every 1: the first epoch's export beside the last
    assert "epoch 1 of 2" in (output / "model-epoch1" / CARD_FILE).read_text()
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    version = client.get_model_version_by_alias("s", "trained")
    assert version.tags["val_top1"] == f"{final:.2f}" and version.tags["weights"] == "trained"
    assert client.get_model_version_by_alias("s", "candidate").version != version.version
    _predictions_agree("models:/s@trained", uri, model_dir / ONNX_FILE)


@pytest.mark.slow
def test_an_export_registers_on_a_tracking_server_and_loads_from_it(exported, tmp_path):
    _, _, folder = exported
    port = free_port()
    server = mlflow_server(tmp_path, port)
    try:
        uri = f"http://127.0.0.1:{port}"
        client = MlflowClient(uri)
        run = client.create_run(client.create_experiment("shipping")).info.run_id
        registration = log_and_register(uri, run, folder, artifact_path="model", model_name="shipped",
                                        name="served", alias="trained", num_classes=1000, tags={"weights": "trained"})
        assert registration.uri == "models:/served@trained" and registration.version == "1"
        _predictions_agree(registration.uri, uri, folder / ONNX_FILE)
    finally:
        stop_server(server)


@pytest.fixture(scope="module")
def plain_export(tmp_path_factory):
    """An untrained export folder as pick writes its timm part (no measuring: for bad-input tests)."""
    from search.deploy.export import create_lit_model, save_timm_folder

    folder = tmp_path_factory.mktemp("plain") / "export"
    folder.mkdir()
    config = FRONT["b"][0]
    save_timm_folder(create_lit_model(config, 1000, 32), config, folder, 32, {"arch_id": "b", "study": "s"})
    return folder


@pytest.mark.parametrize("argv,message", [
    (["--register", "a/b"], "--register 'a/b' is invalid"),
    (["--export-every", "0"], "--export-every 0 is invalid"),
    (["--target", "tpu:bs1:32"], "target 'tpu:bs1:32' is invalid"),
])
def test_bad_train_shipping_options_are_one_line_and_exit_2(plain_export, tmp_path, capsys, argv, message):
    folder = plain_export
    code = main(["train", "--model", str(folder), "--dataset", "digits", "--workdir", str(tmp_path),
                 "--output", str(tmp_path / "out"), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_an_unreachable_tracking_server_is_refused_before_training(plain_export, tmp_path, capsys):
    folder = plain_export
    code = main(["train", "--model", str(folder), "--dataset", "digits", "--workdir", str(tmp_path),
                 "--output", str(tmp_path / "out"), "--tracking-uri", f"http://127.0.0.1:{free_port()}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "does not answer" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_pick_registers_under_a_valid_name_only_and_with_an_export(study_dir, tmp_path, capsys):
    assert main(["pick", "--workdir", str(study_dir), "--study", "s", "--export", str(tmp_path / "x"),
                 "--register", "no@alias"]) == 2
    assert "--register 'no@alias' is invalid" in capsys.readouterr().err
    assert main(["pick", "--workdir", str(study_dir), "--study", "s", "--register", "fine"]) == 2
    assert "--register 'fine' needs --export" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_an_untrained_export_is_not_evaluated_on_a_data_set_of_other_classes(plain_export, capsys):
    assert main(["evaluate", "--model", str(plain_export), "--dataset", "digits", "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "has 1000 classes and digits has 10" in err and len(err.splitlines()) == 1
