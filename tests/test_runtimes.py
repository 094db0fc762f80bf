"""Runtimes in the target (litv2.runtimes): ONNX Runtime and torch.compile measured with the
one protocol, TensorRT refused where it cannot run, and how runtimes order architectures
(litv2.runtime_order)."""
import subprocess
import sys

import pytest
import torch

from litv2 import LITConfig, build_model
from litv2.measure import THREAD_CPU, MeasureProtocol, device_fingerprint, measure_target
from litv2.runtime_order import RuntimeComparison
from litv2.runtimes import check_runtime, export_onnx, prepare
from litv2.target import parse_target

FAST = MeasureProtocol(min_warmup_seconds=0.02, max_warmup_seconds=0.1, block_seconds=0.005, max_seconds=0.4)
TINY = LITConfig(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8))


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(TINY, num_classes=10, img_size=32).eval()


def test_an_ort_target_runs_the_exported_graph_on_the_measuring_threads_cpu_clock():
    figure = measure_target(_tiny_model(), parse_target("cpu:bs1:32:ort"), protocol=FAST)
    assert figure.runtime == "ort" and figure.provider == "CPUExecutionProvider" and figure.median > 0
    assert figure.versions["onnxruntime"] and figure.prepare_seconds > 0  # the export and the session, apart
    # onnxruntime with one intra-op thread computes on the calling thread: its CPU clock sees the work.
    assert figure.clock == THREAD_CPU and figure.cpu_share > 0.5


def test_a_compile_target_compiles_every_network_it_measures_and_keeps_the_compilation_apart():
    import torch._dynamo

    torch._dynamo.config.recompile_limit, limit = 1, torch._dynamo.config.recompile_limit
    try:  # two LIT networks share their forward's code: the first fills the cache, and the second would run
        # eagerly but for the reset
        for embed_dim in (8, 16):
            model = build_model(TINY.replace(embed_dim=embed_dim), num_classes=10, img_size=32).eval()
            figure = measure_target(model, parse_target("cpu:bs1:32:compile"), protocol=FAST)
            assert figure.runtime == "compile" and figure.provider is None and figure.median > 0
            assert figure.first_call_seconds > 10 * (1 / figure.median)  # the first call compiled; the blocks did not
    finally:
        torch._dynamo.config.recompile_limit = limit


def test_the_onnx_an_ort_target_measures_is_the_graph_pick_exports(tmp_path):
    import onnx

    model = _tiny_model()
    (tmp_path / "measured").mkdir()
    prepare(model, torch.randn(1, 3, 32, 32), parse_target("cpu:bs1:32:ort"), tmp_path / "measured")
    export_onnx(model, tmp_path / "exported.onnx", 32)  # what search.deploy.package writes
    measured, exported = onnx.load(tmp_path / "measured" / "model.onnx"), onnx.load(tmp_path / "exported.onnx")
    assert measured.opset_import == exported.opset_import and measured.graph == exported.graph


def test_the_runtime_and_its_library_are_part_of_the_fingerprint_the_cache_keys_on():
    from search.engine.measuring import measuring_fingerprint

    eager, ort = measuring_fingerprint("cpu:bs1:224"), measuring_fingerprint("cpu:bs1:224:ort")
    assert "onnxruntime" not in eager and ort == {**eager, "onnxruntime": ort["onnxruntime"]}
    assert ort == device_fingerprint("cpu", "ort")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("argv", [
    [sys.executable, "-m", "litv2.bench", "measure", "--target", "cuda:bs8:224:fp16:trt"],
    [sys.executable, "-m", "space", "runtimes", "--space", "tiny", "--targets", "cpu:bs1:224,cuda:bs8:224:trt"],
])
def test_tensorrt_without_a_gpu_is_refused_in_one_line(argv):
    with pytest.raises(ValueError, match="needs a CUDA GPU, and this node has none"):
        check_runtime(parse_target("cuda:bs8:224:trt"))
    run = subprocess.run(argv, capture_output=True, text=True)
    assert run.returncode == 2 and run.stdout == "" and run.stderr.count("\n") == 1
    assert "needs a CUDA GPU, and this node has none" in run.stderr


def test_kendall_tau_and_the_pairs_whose_order_flips():
    eager, ort = parse_target("cpu:bs1:224"), parse_target("cpu:bs1:224:ort")
    comparison = RuntimeComparison([eager, ort], {
        "a": {eager.key: 10.0, ort.key: 13.0}, "b": {eager.key: 11.0, ort.key: 12.0},
        "c": {eager.key: 20.0, ort.key: 25.0}}, {n: {eager.key: 0.0, ort.key: 1.5} for n in "abc"})
    assert comparison.flips(eager, ort) == [("b", "a")]  # eager: b faster than a; ort: a faster than b
    assert comparison.kendall_tau(eager, ort) == pytest.approx(1 / 3)  # 2 concordant, 1 discordant of 3
    report = comparison.report()
    assert "| a | 10.0 | 13.0 | 1.30x |" in report and "ort / eager: 1.09x to 1.30x" in report
    assert "Kendall tau eager vs ort: 0.333; 1 of 3 pairs flip (eager order: b > a)" in report


def test_the_runtimes_command_measures_each_network_in_each_runtime(tmp_path):
    configs = [tmp_path / "tiny16.json", tmp_path / "tiny24.json"]
    configs[0].write_text(TINY.to_json())
    configs[1].write_text(TINY.replace(embed_dim=24).to_json())
    out = tmp_path / "runtimes.md"
    run = subprocess.run([sys.executable, "-m", "litv2.bench", "runtimes", "--config", str(configs[0]), "--config",
                          str(configs[1]), "--targets", "cpu:bs1:32,cpu:bs1:32:ort", "--out", str(out),
                          "--max-seconds", "0.5", "--block-seconds", "0.01"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("| arch | cpu:bs1:32:fp32:t1 | cpu:bs1:32:fp32:t1:ort | ort / eager |")
    assert all(f"| {config} |" in run.stdout for config in configs) and "Kendall tau eager vs ort: " in run.stdout
    assert out.read_text() == run.stdout
