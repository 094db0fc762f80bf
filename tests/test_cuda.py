"""The CUDA paths the CPU suite cannot take: HiLo against the official formulation on the GPU
(fp32 and under autocast), the deformable merge on torchvision's CUDA kernel, whole models on
the GPU in channels_last against the CPU, and AMP training steps. Skipped without a GPU;
``python -m search.bench.gpu_acceptance`` runs them (``-m cuda``) where there is one."""
import pytest
import torch

from litv2.benchmarks import NaiveHiLo, NaiveMSA
from litv2.layers import HiLo, sampled_deform_conv2d
from litv2.layers.attention import Attention
from litv2.model import build_model
from litv2.named import NAMED_CONFIGS
from official_hilo import official_hilo

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

LOW_PRECISION = {"fp16": torch.float16, "bf16": torch.bfloat16}


@pytest.fixture(autouse=True)
def ieee_fp32():
    """fp32 on the GPU means IEEE fp32 here (TF32 matmuls would round to 10 bits)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("window,alpha", [(2, 0.9), (2, 0.0), (2, 1.0), (3, 0.5), (4, 0.2)])
@pytest.mark.parametrize("size", [(14, 14), (13, 17)])
def test_hilo_on_the_gpu_equals_the_official_formulation(window, alpha, size):
    torch.manual_seed(0)
    hilo = HiLo(96, 6, window_size=window, alpha=alpha).cuda().eval()
    height, width = size
    x = torch.randn(4, height * width, 96, device="cuda")
    with torch.inference_mode():
        ours = hilo(x, height, width)
        reference = official_hilo(hilo, x, height, width)
    assert (ours - reference).abs().max() <= 1e-4


@pytest.mark.parametrize("precision", sorted(LOW_PRECISION))
def test_hilo_and_msa_under_autocast_stay_close_to_their_fp32_references(precision):
    """SDPA's fused kernels under autocast against the matmul-softmax formulation in fp32."""
    torch.manual_seed(0)
    x = torch.randn(8, 14 * 14, 768, device="cuda")
    pairs = [(HiLo(768, 12, window_size=2, alpha=0.9), NaiveHiLo(768, 12, window_size=2, alpha=0.9)),
             (Attention(768, 12), NaiveMSA(768, 12))]
    for ours, naive in pairs:
        naive.load_state_dict(ours.state_dict())  # the same weights, the official formulation
        ours, naive = ours.cuda().eval(), naive.cuda().eval()
        with torch.inference_mode():
            exact = naive(x, 14, 14)
            with torch.autocast("cuda", dtype=LOW_PRECISION[precision]):
                rounded = ours(x, 14, 14)
        assert rounded.dtype == LOW_PRECISION[precision]
        assert (rounded.float() - exact).abs().max() <= 0.05 * exact.abs().max()


def test_the_merge_on_torchvisions_cuda_kernel_equals_our_cpu_sampling():
    from torchvision.ops import deform_conv2d

    torch.manual_seed(0)
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    offset = 3 * torch.randn(2, 8, 4, 4, dtype=torch.float64)
    weight, bias = torch.randn(8, 4, 2, 2, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    on_gpu = deform_conv2d(x.cuda(), offset.cuda(), weight.cuda(), bias.cuda(), stride=2).cpu()
    torch.testing.assert_close(on_gpu, sampled_deform_conv2d(x, offset, weight, bias, stride=2), atol=1e-10, rtol=0)


def test_litv2_s_on_the_gpu_in_channels_last_equals_the_cpu():
    torch.manual_seed(0)
    model = build_model(NAMED_CONFIGS["litv2_s"], num_classes=1000).eval()
    images = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        on_cpu = model(images)
        gpu = model.cuda().to(memory_format=torch.channels_last)
        on_gpu = gpu(images.cuda().contiguous(memory_format=torch.channels_last)).cpu()
    assert (on_gpu - on_cpu).abs().max() <= 1e-3 * on_cpu.abs().max()


@pytest.mark.parametrize("precision", sorted(LOW_PRECISION))
def test_an_amp_training_step_of_litv2_s_has_finite_gradients_everywhere(precision):
    torch.manual_seed(0)
    model = build_model(NAMED_CONFIGS["litv2_s"], num_classes=10).cuda().to(memory_format=torch.channels_last)
    images = torch.randn(4, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=LOW_PRECISION[precision]):
        loss = torch.nn.functional.cross_entropy(model(images), torch.arange(4, device="cuda"))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
