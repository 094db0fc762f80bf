"""The measurement protocol: its stopping rule, what it records, and the device paths."""
import json
import platform
import random
import resource
import sqlite3
from contextlib import closing

import pytest
import torch
from torch import nn

from litv2 import LITConfig, build_model, count_flops, count_params
from litv2.measure import (
    MIN_SAMPLES_FOR_CI, PINNED_ALLOCATOR, CpuTimer, CudaEventTimer, MeasureProtocol, allocator_policy,
    backend_settings, block_timer, device_fingerprint, fingerprint_of, measure_throughput, median_ci, pin_allocator,
    relative_ci_width, run_protocol,
)

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
                "channels_last", "compiled", "allocator", "page_faults_per_call", "capped", "warmup_converged", "warmup_seconds",
                "first_call_seconds", "wall_seconds", "peak_memory_mb"}
    assert set(record) == expected
    assert json.loads(json.dumps(record)) == record  # plain JSON: trial attributes, MLflow, the cache
    assert record["ci_low"] <= record["median"] <= record["ci_high"] and record["n_samples"] >= MIN_SAMPLES_FOR_CI
    assert (record["batch_size"], record["img_size"], record["precision"], record["threads"]) == (2, 16, "fp32", 1)
    assert record["device"] == "cpu" and record["device_name"] and record["versions"]["torch"] == torch.__version__
    assert record["cudnn_benchmark"] is None and record["tf32"] is None  # CUDA-only flags
    assert record["channels_last"] is False and record["compiled"] is False
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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_measurement_records_the_gpu_flags_and_memory():
    measured = measure_throughput(Recorder(), batch_size=4, img_size=32, device="cuda", precision="fp16", protocol=FAST)
    assert measured.device_name == torch.cuda.get_device_name() and measured.channels_last
    assert measured.cudnn_benchmark is True and measured.tf32 is False
    assert {"cuda", "cudnn"} <= set(measured.versions) and measured.peak_memory_mb > 0


def test_measure_architecture_returns_the_search_record_without_flops():
    from search.measuring import count_architecture, measure_architecture

    config_json = TINY.to_json()
    result = measure_architecture(config_json, "cpu:bs1:32", min_warmup_seconds=0.02, max_warmup_seconds=0.1,
                                  block_seconds=0.005, max_seconds=0.4)
    assert {"throughput", "throughput_spread", "samples", "peak_memory_mb", "params", "wall_seconds", "node",
            "interval", "measurement"} <= set(result) and "flops" not in result
    assert result["throughput"] == result["measurement"]["median"] > 0
    assert result["measurement"]["threads"] == 1 and result["measurement"]["img_size"] == 32
    assert result["peak_memory_mb"] is None  # a warm worker's resident-set growth is no peak
    model = build_model(TINY, num_classes=1000, img_size=32)
    counts = count_architecture(config_json, 32)
    assert counts == dict(params=count_params(model), flops=count_flops(model, (3, 32, 32)))
    assert counts["params"] == result["params"]
    assert count_architecture(config_json, 32) is counts  # cached: the driver counts each architecture once


def test_the_cache_keys_on_the_measuring_fingerprint(tmp_path):
    from search.cache import ThroughputCache

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
    import search.measuring
    from search.jobs import MeasureJob, measure

    seen = []
    monkeypatch.setattr(search.measuring, "measure_architecture",
                        lambda config_json, target_key, **protocol: seen.append(protocol) or {"throughput": 1.0})
    measure(MeasureJob(0, TINY.to_json(), "cpu:bs1:32", max_seconds=1.5))
    measure(MeasureJob(1, TINY.to_json(), "cpu:bs1:32"))
    assert seen == [{"max_seconds": 1.5}, {}]
