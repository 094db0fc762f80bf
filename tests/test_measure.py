"""The measurement protocol: its stopping rule, what it records, and the device paths."""
import json
import platform
import random
import resource
import sqlite3
import statistics
import time
from contextlib import closing

import pytest
import torch
from torch import nn

from litv2 import LITConfig, build_model
from litv2.measure import (
    MIN_SAMPLES_FOR_CI, PINNED_ALLOCATOR, THREAD_CPU, WALL, CpuTimer, CudaEventTimer, MeasurementOutOfTime,
    MeasureProtocol, Reference,
    allocator_policy, backend_settings, block_timer, device_fingerprint, fingerprint_of, measure_throughput, median_ci,
    pin_allocator, relative_ci_width, run_protocol,
)
from litv2.reference import CalibrationStore

# Small enough for a test, long enough for several blocks.
FAST = MeasureProtocol(min_warmup_seconds=0.02, max_warmup_seconds=0.1, block_seconds=0.005, max_seconds=0.4)
TINY = LITConfig(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8))


class SyntheticWorkload:
    """A workload on a simulated clock: a block of ``calls`` takes ``calls * seconds`` times
    ``1 + noise * N(0, 1)``, plus a slowdown that starts at ``cold`` and fades over ``cold_seconds``."""

    def __init__(self, seconds: float, noise: float, cold: float = 0.0, cold_seconds: float = 1.0, seed: int = 0):
        self.seconds, self.noise, self.cold, self.cold_seconds = seconds, noise, cold, cold_seconds
        self.rng, self.now, self.calls = random.Random(seed), 0.0, 0

    def clock(self) -> float:
        return self.now

    def timer(self, calls: int) -> float:
        slowdown = 1 + self.cold * max(0.0, 1 - self.now / self.cold_seconds)
        taken = calls * self.seconds * slowdown * max(0.05, 1 + self.noise * self.rng.gauss(0, 1))
        self.now += taken
        self.calls += calls
        return taken


def test_stops_as_soon_as_the_interval_is_narrow_enough():
    work = SyntheticWorkload(seconds=0.01, noise=0.003)
    protocol = MeasureProtocol(min_samples=8, target_ci=0.02, max_seconds=30.0)
    timing = run_protocol(work.timer, protocol, work.clock)
    rates = [1 / s for s in timing.seconds_per_call]
    assert not timing.capped and timing.warmup_converged
    assert len(rates) == 8  # the first moment the rule may stop, it does
    assert relative_ci_width(rates) <= 0.02
    assert timing.seconds < 5.0 and timing.calls_per_block * 0.01 >= protocol.block_seconds


def test_stops_at_the_cap_when_the_noise_never_allows_the_interval():
    work = SyntheticWorkload(seconds=0.01, noise=0.15)
    protocol = MeasureProtocol(target_ci=0.02, max_seconds=6.0)
    timing = run_protocol(work.timer, protocol, work.clock)
    rates = [1 / s for s in timing.seconds_per_call]
    assert timing.capped
    assert relative_ci_width(rates) > 0.02
    assert 6.0 <= timing.seconds < 6.0 + 2 * protocol.block_seconds  # stopped by the first block past the cap
    assert len(rates) > 8


def test_warm_up_waits_for_the_steady_state():
    work = SyntheticWorkload(seconds=0.01, noise=0.002, cold=1.0, cold_seconds=2.0)  # twice as slow at first
    protocol = MeasureProtocol(min_warmup_seconds=0.5, max_warmup_seconds=5.0, max_seconds=30.0)
    timing = run_protocol(work.timer, protocol, work.clock)
    assert timing.warmup_converged and timing.warmup_seconds > 1.5  # until the slowdown has faded below 2%
    median = sorted(timing.seconds_per_call)[len(timing.seconds_per_call) // 2]
    assert median == pytest.approx(0.01, rel=0.01)


def test_warm_up_gives_up_at_its_cap_and_says_so():
    work = SyntheticWorkload(seconds=0.01, noise=0.2)
    protocol = MeasureProtocol(max_warmup_seconds=1.0, warmup_agreement=0.0, max_seconds=3.0)
    timing = run_protocol(work.timer, protocol, work.clock)
    assert not timing.warmup_converged and 1.0 <= timing.warmup_seconds < 1.0 + 2 * protocol.block_seconds


def test_a_deadline_stops_a_measurement_that_has_no_figure_yet():
    """The cap yields to the interval's six samples; the deadline (what the budget granted) does not."""
    slow = SyntheticWorkload(seconds=0.01, noise=0.15)  # warm-up until 1 s, then 0.2-s blocks
    with pytest.raises(MeasurementOutOfTime):
        run_protocol(slow.timer, MeasureProtocol(max_seconds=1.0), slow.clock, deadline=1.5)
    assert 1.5 <= slow.now < 1.5 + 2 * MeasureProtocol().block_seconds  # at the first block past it
    cold = SyntheticWorkload(seconds=0.01, noise=0.2)
    with pytest.raises(MeasurementOutOfTime):  # in the warm-up too
        run_protocol(cold.timer, MeasureProtocol(), cold.clock, deadline=0.5)
    assert cold.now < 1.0
    roomy, free = SyntheticWorkload(seconds=0.01, noise=0.003), SyntheticWorkload(seconds=0.01, noise=0.003)
    assert (run_protocol(roomy.timer, MeasureProtocol(), roomy.clock, deadline=100.0)
            == run_protocol(free.timer, MeasureProtocol(), free.clock))  # a deadline not reached changes nothing


def test_median_interval_is_the_binomial_order_statistics():
    with pytest.raises(ValueError, match="too few"):
        median_ci([1, 2, 3, 4, 5])
    assert MIN_SAMPLES_FOR_CI == 6 and median_ci([6, 1, 5, 2, 4, 3]) == (1, 6)  # P(all on one side) = 1/32 < 5%
    assert median_ci(list(range(10, 0, -1))) == (2, 9)  # n = 10: ranks 2 and 9 (coverage 97.9%)
    assert median_ci(list(range(1, 101))) == (40, 61)  # n = 100: ranks 40 and 61
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert relative_ci_width(values) == float("inf")


class Recorder(nn.Module):
    """A small conv net that notes whether each forward ran under autocast and inference mode."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.seen: set[tuple[bool, bool]] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.add((torch.is_autocast_enabled("cpu"), torch.is_inference_mode_enabled()))
        return self.body(x)


def test_a_measurement_records_every_field_and_restores_the_threads():
    threads_before = torch.get_num_threads()
    model = Recorder()
    measured = measure_throughput(model, batch_size=2, img_size=16, device="cpu", threads=1, protocol=FAST)
    record = measured.to_dict()
    expected = {"median", "ci_low", "ci_high", "samples", "n_samples", "relative_ci", "calls_per_block", "batch_size",
                "img_size", "precision", "device", "device_name", "threads", "versions", "cudnn_benchmark", "tf32",
                "channels_last", "runtime", "provider", "prepare_seconds", "allocator", "page_faults_per_call", "capped", "warmup_converged", "warmup_seconds",
                "first_call_seconds", "wall_seconds", "peak_memory_mb", "clock", "raw_median", "wall_median", "cpu_median",
                "cpu_share", "contended", "reference"}
    assert set(record) == expected
    assert json.loads(json.dumps(record)) == record  # plain JSON: trial attributes, MLflow, the cache
    assert record["ci_low"] <= record["median"] <= record["ci_high"] and record["n_samples"] >= MIN_SAMPLES_FOR_CI
    assert (record["batch_size"], record["img_size"], record["precision"], record["threads"]) == (2, 16, "fp32", 1)
    assert record["device"] == "cpu" and record["device_name"] and record["versions"]["torch"] == torch.__version__
    assert record["cudnn_benchmark"] is None and record["tf32"] is None  # CUDA-only flags
    assert record["channels_last"] is False and record["runtime"] == "eager" and record["provider"] is None
    assert record["peak_memory_mb"] is None or record["peak_memory_mb"] >= 0
    assert record["allocator"] == PINNED_ALLOCATOR and record["page_faults_per_call"] == pytest.approx(0, abs=1)
    assert fingerprint_of(record) == device_fingerprint("cpu")  # what the cache stores is what the driver asks for
    assert model.seen == {(False, True)}  # fp32: no autocast; always inference mode
    assert torch.get_num_threads() == threads_before


def test_autocast_is_entered_once_around_all_timed_calls(monkeypatch):
    entered = []
    real_autocast = torch.autocast

    def counting_autocast(*args, **kwargs):
        entered.append(kwargs.get("dtype"))
        return real_autocast(*args, **kwargs)

    monkeypatch.setattr(torch, "autocast", counting_autocast)
    model = Recorder()
    measured = measure_throughput(model, batch_size=1, img_size=16, device="cpu", precision="bf16", protocol=FAST)
    assert entered == [torch.bfloat16]
    assert model.seen == {(True, True)}
    assert measured.n_samples * measured.calls_per_block > 10


def test_the_device_picks_the_timer_and_the_backend_flags():
    call = lambda: None  # noqa: E731
    assert isinstance(block_timer(call, torch.device("cuda")), CudaEventTimer)
    assert isinstance(block_timer(call, torch.device("cpu")), CpuTimer)
    saved = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    with backend_settings(torch.device("cuda"), None, cudnn_benchmark=not saved[0], tf32=not saved[1]):
        assert torch.backends.cudnn.benchmark is (not saved[0])
        assert torch.backends.cuda.matmul.allow_tf32 is (not saved[1])
        assert torch.backends.cudnn.allow_tf32 is (not saved[1])
    with backend_settings(torch.device("cpu"), None, cudnn_benchmark=not saved[0], tf32=not saved[1]):
        assert (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32) == saved[:2]  # CPU: untouched
    now = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    assert now == saved


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_measurement_records_the_gpu_flags_and_memory():
    measured = measure_throughput(Recorder(), batch_size=4, img_size=32, device="cuda", precision="fp16", protocol=FAST)
    assert measured.device_name == torch.cuda.get_device_name() and measured.channels_last
    assert measured.cudnn_benchmark is True and measured.tf32 is False
    assert {"cuda", "cudnn"} <= set(measured.versions) and measured.peak_memory_mb > 0


def tiny_by_hand() -> dict[str, int]:
    """TINY's parameters and FLOPs at 32x32 with 1000 classes, counted by hand from its layer
    shapes (not by the model code, not by fvcore): 444,256 parameters and 1,009,920 FLOPs.

    TINY is LITConfig's defaults with embed 16 and one block a stage: a 4x4 stride-4 patch conv
    and LayerNorm; stages of 16/32/64/128 channels on 8x8/4x4/2x2/1x1 tokens; each block a
    LayerNorm and a ConvFFN (fc1 to 4x, 3x3 depthwise conv, fc2), stages 3-4 also a LayerNorm and
    HiLo (head dim 16, alpha 0.9); between stages a DTM (2x2 stride-2 deformable conv to 2x the
    channels, its 2x2 stride-2 offset conv with 2 * 2 * 2 = 8 outputs, BatchNorm); a final
    LayerNorm and the head. FLOPs are multiply-adds in the papers' (and fvcore's) convention:
    LayerNorm 5 and inference BatchNorm 2 per element, attention q @ k^T + attn @ v, a
    deformable conv like an ordinary conv, GELU / pooling / bilinear sampling not counted.
    """
    total = {"params": 0, "flops": 0}

    def layer(params: int, flops: int) -> None:
        total["params"] += params
        total["flops"] += flops

    def linear(n_in: int, n_out: int, tokens: int) -> None:
        layer(n_in * n_out + n_out, tokens * n_in * n_out)

    def layer_norm(dim: int, tokens: int) -> None:
        layer(2 * dim, 5 * dim * tokens)

    dims, sides = (16, 32, 64, 128), (8, 4, 2, 1)
    # HiLo by stage: (Lo-Fi dims, Hi-Fi dims, Lo-Fi keys after window pooling, tokens of a Hi-Fi window).
    # Stage 3: 4 heads, int(0.9 * 4) = 3 Lo-Fi (48 dims), 1 Hi-Fi (16), window 2 pools 2x2 tokens to 1.
    # Stage 4: window 1, so all 8 heads are Lo-Fi (128 dims), on its single token.
    hilo = {2: (48, 16, 1, 4), 3: (128, 0, 1, 1)}
    layer(3 * 4 * 4 * 16 + 16, 8 * 8 * 16 * 3 * 4 * 4)  # patch conv: 64 positions x 16 out x 3*4*4 in
    layer_norm(16, 64)
    for stage, (dim, side) in enumerate(zip(dims, sides)):
        tokens, hidden = side * side, 4 * dim
        if stage in hilo:
            lofi, hifi, pooled, window = hilo[stage]
            layer_norm(dim, tokens)
            linear(dim, lofi, tokens)                       # l_q
            linear(dim, 2 * lofi, pooled)                   # l_kv on the pooled tokens
            layer(0, tokens * pooled * 2 * lofi)            # Lo-Fi attention
            linear(lofi, lofi, tokens)                      # l_proj
            if hifi:
                linear(dim, 3 * hifi, tokens)               # h_qkv
                layer(0, tokens * window * 2 * hifi)        # Hi-Fi attention inside windows
                linear(hifi, hifi, tokens)                  # h_proj
        layer_norm(dim, tokens)
        linear(dim, hidden, tokens)                         # fc1
        layer(hidden * 9 + hidden, tokens * hidden * 9)     # 3x3 depthwise conv
        linear(hidden, dim, tokens)                         # fc2
        if stage < 3:                                       # DTM to the next stage
            merged = (side // 2) ** 2
            layer(2 * dim * dim * 4 + 2 * dim, merged * 2 * dim * dim * 4)
            layer(8 * dim * 4 + 8, merged * 8 * dim * 4)
            layer(2 * 2 * dim, 2 * 2 * dim * merged)
    layer_norm(128, 1)
    linear(128, 1000, 1)                                    # head
    return total


def test_measure_architecture_returns_the_search_record_without_flops():
    from search.engine.measuring import count_architecture, measure_architecture

    config_json = TINY.to_json()
    result = measure_architecture(config_json, "cpu:bs1:32", min_warmup_seconds=0.02, max_warmup_seconds=0.1,
                                  block_seconds=0.005, max_seconds=0.4)
    assert {"throughput", "throughput_spread", "samples", "peak_memory_mb", "params", "wall_seconds", "node",
            "interval", "measurement", "calibration_seconds"} <= set(result) and "flops" not in result
    assert 0 <= result["calibration_seconds"] < result["wall_seconds"]
    assert result["throughput"] == result["measurement"]["median"] > 0
    assert result["measurement"]["threads"] == 1 and result["measurement"]["img_size"] == 32
    assert result["peak_memory_mb"] is None  # a warm worker's resident-set growth is no peak
    counts = count_architecture(config_json, 32)
    assert counts == tiny_by_hand() == dict(params=444_256, flops=1_009_920)
    assert counts["params"] == result["params"]
    assert count_architecture(config_json, 32) is counts  # cached: the driver counts each architecture once


def test_the_cache_keys_on_the_measuring_fingerprint(tmp_path):
    from search.engine.cache import ThroughputCache

    path = tmp_path / "cache.db"
    with closing(sqlite3.connect(path)) as db, db:  # a cache written before fingerprints existed
        db.execute("CREATE TABLE throughput (arch_id TEXT, target TEXT, result TEXT, PRIMARY KEY (arch_id, target))")
        db.execute("INSERT INTO throughput VALUES ('a1', 'cpu:bs1:224:fp32:t1', '{\"throughput\": 1.0}')")
    cache = ThroughputCache(path)
    here = device_fingerprint("cpu")
    assert cache.get("a1", "cpu:bs1:224:fp32:t1", here) is None  # no fingerprint: not reused
    result = {"throughput": 50.0, "measurement": {"device_name": here["device_name"],
                                                  "versions": {k: v for k, v in here.items() if k != "device_name"}}}
    cache.put("a1", "cpu:bs1:224:fp32:t1", result)
    assert cache.get("a1", "cpu:bs1:224:fp32:t1", here) == result
    assert cache.get("a1", "cpu:bs1:224:fp32:t1", {**here, "torch": "0.0"}) is None  # other kernels: measure again
    assert cache.get("a1", "cpu:bs1:224:fp32:t1", {**here, "device_name": "other"}) is None
    assert cache.get("a1", "cpu:bs8:224:fp32:t1", here) is None


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="pins glibc's malloc")
def test_a_pinned_allocator_reaches_a_steady_state_without_page_faults():
    assert pin_allocator() == PINNED_ALLOCATOR == allocator_policy()

    def forward() -> None:  # activations that grow and shrink as a network's do, up to 48 MB
        x = torch.ones(2**20)
        for megabytes in (8, 24, 48, 24, 8):
            x = torch.empty(megabytes * 2**18).fill_(float(x[0]))

    for _ in range(10):
        forward()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        forward()
    # glibc's default maps the 48 MB tensor afresh every time: ~24,500 faults per forward here
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults < 1000


def test_the_measure_job_passes_its_time_cap_to_the_protocol(monkeypatch):
    """--measure-seconds reaches litv2.measure's max_seconds; without it the protocol's default holds."""
    import search.engine.measuring
    from search.engine.jobs import MeasureJob, measure

    seen = []
    monkeypatch.setattr(search.engine.measuring, "measure_architecture",
                        lambda config_json, target_key, **protocol: seen.append(protocol) or {"throughput": 1.0})
    measure(MeasureJob(0, TINY.to_json(), "cpu:bs1:32", max_seconds=1.5))
    measure(MeasureJob(1, TINY.to_json(), "cpu:bs1:32"))
    measure(MeasureJob(2, TINY.to_json(), "cpu:bs1:32", allowed_seconds=4.0))
    assert seen == [{"max_seconds": 1.5}, {}, {"allowed_seconds": 4.0}]


def test_a_measurement_past_its_allowed_seconds_returns_out_of_time():
    from search.engine.measuring import measure_architecture

    result = measure_architecture(TINY.to_json(), "cpu:bs1:32", allowed_seconds=0.0)
    assert result["out_of_time"] and "throughput" not in result and result["wall_seconds"] > 0


# ---------------------------------------------------------------------- clocks and the reference
def test_the_clock_is_the_threads_cpu_clock_for_one_thread_and_the_wall_clock_for_more():
    call = lambda: None  # noqa: E731
    assert CpuTimer(call, threads=1).clock == THREAD_CPU
    assert CpuTimer(call, threads=2).clock == WALL  # spinning OpenMP threads fill their CPU clocks with waiting
    assert block_timer(call, torch.device("cpu"), threads=1).clock == THREAD_CPU
    assert not hasattr(block_timer(call, torch.device("cuda")), "clock")  # CUDA events: the GPU's own clock
    record = measure_throughput(Recorder(), batch_size=1, img_size=16, device="cpu", threads=1, protocol=FAST)
    assert record.clock == THREAD_CPU and record.reference is None  # no reference unless asked for
    # On an idle node both clocks agree; under the suite's own load the CPU clock is the faster one.
    assert record.cpu_median >= record.wall_median * 0.97 and 0 < record.cpu_share <= 1.05


class SleepsBesideItsWork(nn.Module):
    """A forward of fixed CPU work (a few ms of matrix products) that also waits ``wait``
    seconds off the CPU - the wall clock of a thread whose core is taken by a neighbour, the
    CPU clock of one that has it."""

    def __init__(self, wait: float) -> None:
        super().__init__()
        self.wait = wait
        self.weight = nn.Parameter(torch.randn(192, 192) / 14)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.reshape(64, 192)
        for _ in range(20):
            y = torch.tanh(y @ self.weight)
        time.sleep(self.wait)
        return y


def test_time_waiting_off_the_cpu_does_not_move_a_one_thread_figure():
    """Waiting inflates the wall clock threefold or more; the figure follows the CPU clock."""
    protocol = MeasureProtocol(min_warmup_seconds=0.05, max_warmup_seconds=0.3, block_seconds=0.03, max_seconds=1.5)
    model = SleepsBesideItsWork(wait=0.0)
    options = dict(batch_size=1, img_size=64, device="cpu", threads=1, protocol=protocol)  # 3 x 64 x 64 = 64 x 192
    alone = measure_throughput(model, **options)
    model.wait = 4 * (1 / alone.median)  # four forwards' worth of waiting per forward
    waiting = measure_throughput(model, **options)
    assert waiting.wall_median < 0.35 * alone.median  # what a wall clock would report
    assert waiting.cpu_share < 0.35 and waiting.contended
    assert waiting.median > 2.5 * waiting.wall_median  # the figure follows the CPU clock, not the wall
    # ... and stays near the uncontended figure (under the suite's load, waking from each sleep
    # to cold caches costs some CPU time too: 0.6x was seen beside a heavy replay)
    assert waiting.median == pytest.approx(alone.median, rel=0.5)


class DriftingNode:
    """A network and a reference on one simulated clock whose node slows down 1.6x halfway
    through, as when neighbours arrive: both workloads slow by the same factor."""

    def __init__(self, network_seconds: float, reference_seconds: float, noise: float = 0.002) -> None:
        self.network, self.reference = SyntheticWorkload(network_seconds, noise, seed=1), None
        self.reference = SyntheticWorkload(reference_seconds, noise, seed=2)
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def _run(self, work: SyntheticWorkload, calls: int) -> float:
        factor = 1.6 if self.now > 2.0 else 1.0
        taken = work.timer(calls) * factor
        self.now += taken
        return taken

    def network_timer(self, calls: int) -> float:
        return self._run(self.network, calls)

    def reference_timer(self, calls: int) -> float:
        return self._run(self.reference, calls)


def test_a_reference_timed_between_the_blocks_cancels_the_nodes_drift():
    protocol = MeasureProtocol(min_samples=12, target_ci=0.0, max_seconds=8.0)
    drifting = DriftingNode(network_seconds=0.02, reference_seconds=0.008)
    plain = run_protocol(drifting.network_timer, protocol, drifting.clock)
    assert max(plain.seconds_per_call) / min(plain.seconds_per_call) > 1.5  # the drift is in the raw blocks
    drifting = DriftingNode(network_seconds=0.02, reference_seconds=0.008)
    calibrated = Reference(drifting.reference_timer, seconds_per_call=0.008)  # measured when the node was quiet
    timing = run_protocol(drifting.network_timer, protocol, drifting.clock, reference=calibrated)
    assert max(timing.raw_seconds_per_call) / min(timing.raw_seconds_per_call) > 1.5
    assert len(timing.reference_seconds_per_call) == len(timing.seconds_per_call)
    off = [s for s in timing.seconds_per_call if s != pytest.approx(0.02, rel=0.02)]
    assert len(off) <= 1  # only a pair that straddles the moment the node slowed
    assert statistics.median(timing.seconds_per_call) == pytest.approx(0.02, rel=0.01)  # the quiet node's figure


def test_the_reference_is_calibrated_once_per_setting_and_scales_every_figure(tmp_path):
    from litv2.reference import REFERENCE_CONFIG

    store = CalibrationStore(tmp_path)
    options = dict(batch_size=1, img_size=32, device="cpu", threads=1, protocol=FAST, reference=True,
                   calibrations=store)
    first = measure_throughput(build_model(TINY, num_classes=10, img_size=32), **options)
    files = list(tmp_path.glob("reference-*.json"))
    assert len(files) == 1
    calibration = json.loads(files[0].read_text())
    assert calibration["key"]["img_size"] == 32 and calibration["key"]["threads"] == 1
    assert calibration["key"]["reference_config"] == REFERENCE_CONFIG.to_dict()
    assert first.reference["calibrated_img_s"] == calibration["img_s"]
    assert first.reference["drift"] == pytest.approx(first.reference["observed_img_s"] / calibration["img_s"])
    second = measure_throughput(build_model(TINY, num_classes=10, img_size=32), **options)
    assert list(tmp_path.glob("reference-*.json")) == files  # reused, not made again
    assert second.reference["calibrated_img_s"] == calibration["img_s"]
    # each sample is the network's block scaled by calibrated / observed reference speed
    assert first.median != first.raw_median or first.reference["drift"] == pytest.approx(1.0, abs=1e-3)
    other = measure_throughput(build_model(TINY, num_classes=10, img_size=64), **{**options, "img_size": 64})
    assert len(list(tmp_path.glob("reference-*.json"))) == 2 and other.reference["calibrated_img_s"] != first.reference[
        "calibrated_img_s"]


def test_the_reference_is_a_tiny_space_architecture():
    from litv2.reference import REFERENCE_CONFIG
    from space import arch_id, get_space

    assert any(arch_id(c) == arch_id(REFERENCE_CONFIG) == "af8acf5b9204" for c in get_space("tiny").enumerate())


def test_the_first_calibration_stored_wins_and_a_bad_file_is_none(tmp_path):
    store = CalibrationStore(tmp_path)
    key = {"host": "h", "img_size": 224}
    assert store.get(key) is None
    kept = store.put(key, {"img_s": 100.0})
    assert kept["img_s"] == 100.0
    assert store.put(key, {"img_s": 90.0})["img_s"] == 100.0  # another process calibrated first: use its figure
    assert store.get(key)["img_s"] == 100.0
    assert store.put(key, {"img_s": 90.0}, replace=True)["img_s"] == 90.0  # litv2.bench calibrate --again
    assert not list(tmp_path.glob(".*partial"))
    path = next(tmp_path.glob("reference-*.json"))
    path.write_text("{not json")
    assert store.get(key) is None
    path.write_text(json.dumps({"img_s": 1.0, "key": {"host": "other"}}))  # a hash collision is no match
    assert store.get(key) is None
    assert store.remove(key) and not store.remove(key)


@pytest.mark.slow
def test_repeatability_runs_fresh_processes_beside_its_own_load_and_stops_it(tmp_path):
    """The command behind the README's repeatability table: calibrate, N fresh measurements
    with --load busy processes beside them, the spread on every clock; the load is gone after."""
    import os
    import subprocess
    import sys

    config = tmp_path / "tiny.json"
    config.write_text(TINY.to_json())
    out = tmp_path / "repeatability.json"
    env = {**os.environ, "LITV2_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "litv2.bench", "repeatability", "--config", str(config), "--target",
                           "cpu:bs1:32", "--runs", "2", "--load", "1", "--max-seconds", "0.5", "--json", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("lit-reference-32 at cpu:bs1:32:fp32:t1") and "thread-cpu clock" in lines[0]
    assert "2 fresh processes" in lines[1] and "1 busy processes beside" in lines[1]
    assert sum(line.startswith("| 1 |") or line.startswith("| 2 |") for line in lines) == 2
    assert "figure " in lines[-1] and "unscaled " in lines[-1] and "wall clock " in lines[-1]
    record = json.loads(out.read_text())
    assert record["load"] == 1 and len(record["runs"]) == 2 and set(record["spreads"]) == {"figure", "unscaled",
                                                                                             "wall clock"}
    calibrated = {run["reference"]["calibrated_img_s"] for run in record["runs"]}
    assert len(calibrated) == 1  # both processes scaled to the one calibration made before the load
    assert len(list((tmp_path / "cache").glob("reference-*.json"))) == 1
    busy = subprocess.run(["pgrep", "-f", "while True: pass"], capture_output=True, text=True)
    assert busy.stdout.strip() == ""  # the load was stopped
