"""Attention, FFN, merging and block layers: shapes, gradients, fast == reference, bad args."""
import pytest
import torch

from litv2.benchmarks import NaiveHiLo, NaiveMSA
from litv2.layers import (AttentionBlock, ConvFFN, DeformableTokenMerging, FFNBlock, HiLo, Mlp, PatchMerging,
                          build_attention, lofi_heads, sampled_deform_conv2d)
from litv2.layers.attention import Attention
from official_hilo import official_hilo

pytestmark = pytest.mark.usefixtures("one_thread")

KINDS = [
    dict(kind="hilo", window_size=2, alpha=0.9),
    dict(kind="hilo", window_size=2, alpha=0.0),
    dict(kind="hilo", window_size=2, alpha=1.0),
    dict(kind="hilo", window_size=1, alpha=0.5),
    dict(kind="hilo", window_size=3, alpha=0.5, rel_pos_bias=True),
    dict(kind="msa"),
    dict(kind="msa", rel_pos_bias=True),
    dict(kind="sra", sr_ratio=2),
    dict(kind="wmsa", window_size=3),
    dict(kind="wmsa", window_size=3, block_index=1, rel_pos_bias=True),
    dict(kind="tmsa", window_size=3, sr_ratio=2, block_index=0),
    dict(kind="tmsa", window_size=3, sr_ratio=2, block_index=1),
]


@pytest.mark.parametrize("spec", KINDS, ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()))
@pytest.mark.parametrize("size", [(8, 8), (6, 10), (7, 5)], ids=["square", "rect", "non-divisible"])
def test_attention_forward_backward(spec, size):
    spec = dict(spec)
    height, width = size
    attn = build_attention(spec.pop("kind"), 32, 4, max_size=(8, 10), **spec)
    x = torch.randn(2, height * width, 32, requires_grad=True)
    out = attn(x, height, width)
    assert out.shape == x.shape
    out.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in attn.parameters())


@pytest.mark.parametrize("alpha,window", [(0.9, 2), (0.5, 2), (0.0, 2), (1.0, 2), (0.5, 1), (0.7, 3)])
@pytest.mark.parametrize("size", [(8, 8), (6, 10), (7, 5)])
@pytest.mark.parametrize("grad", [True, False], ids=["autograd", "inference"])
@pytest.mark.parametrize("valid", [False, True], ids=["padded", "valid-average"])
def test_hilo_fast_path_equals_matmul_softmax(alpha, window, size, grad, valid):
    """Inference writes both projections into one buffer instead of concatenating: check it too."""
    torch.manual_seed(0)
    fast = HiLo(48, 6, window_size=window, alpha=alpha, lofi_valid_average=valid)
    naive = NaiveHiLo(48, 6, window_size=window, alpha=alpha, lofi_valid_average=valid)
    naive.load_state_dict(fast.state_dict())
    height, width = size
    x = torch.randn(3, height * width, 48)
    with torch.set_grad_enabled(grad):
        assert (fast(x, height, width) - naive(x, height, width)).abs().max() <= 1e-5


# Windows 2-4 at several head splits (6 heads: alpha 0.2 -> 1 Lo-Fi head, 0.5 -> 3, 0.9 -> 5),
# all Hi-Fi (alpha 0), all Lo-Fi (alpha 1), and window 1 (plain global attention).
OFFICIAL_CASES = [(ws, alpha) for ws in (2, 3, 4) for alpha in (0.0, 0.2, 0.5, 0.9, 1.0)] + [(1, 0.5)]


@pytest.mark.parametrize("window,alpha", OFFICIAL_CASES)
@pytest.mark.parametrize("size", [(13, 17), (7, 9), (15, 15), (12, 12)])
@pytest.mark.parametrize("grad", [True, False], ids=["autograd", "inference"])
def test_hilo_equals_official_padding_semantics(window, alpha, size, grad):
    """The default on non-divisible maps is the official one: pad first, both paths on the padded map, crop."""
    torch.manual_seed(0)
    hilo = HiLo(48, 6, window_size=window, alpha=alpha)
    height, width = size
    x = torch.randn(2, height * width, 48)
    with torch.set_grad_enabled(grad):
        ours = hilo(x, height, width)
    with torch.no_grad():
        reference = official_hilo(hilo, x, height, width)
    assert (ours - reference).abs().max() <= 1e-5


@pytest.mark.parametrize("window,alpha", [(2, 0.5), (3, 0.9), (4, 1.0), (4, 0.2)])
@pytest.mark.parametrize("size", [(13, 17), (7, 9), (15, 15)])
def test_hilo_valid_average_option_equals_its_reference(window, alpha, size):
    torch.manual_seed(0)
    hilo = HiLo(48, 6, window_size=window, alpha=alpha, lofi_valid_average=True)
    height, width = size
    x = torch.randn(2, height * width, 48)
    with torch.no_grad():
        ours = hilo(x, height, width)
        assert (ours - official_hilo(hilo, x, height, width, valid_average=True)).abs().max() <= 1e-5
        # The two averages differ where a window is partial, by far more than the tolerance.
        gap = (ours - official_hilo(hilo, x, height, width)).abs().max()
        assert gap > 1e-3 if (height % window or width % window) else gap <= 1e-5


def test_hilo_paddings_agree_on_divisible_maps_and_the_option_only_exists_where_lofi_pools():
    torch.manual_seed(0)
    padded = HiLo(48, 6, window_size=2, alpha=0.5)
    valid = HiLo(48, 6, window_size=2, alpha=0.5, lofi_valid_average=True)
    valid.load_state_dict(padded.state_dict())
    x = torch.randn(2, 12 * 8, 48)
    with torch.no_grad():
        assert torch.equal(padded(x, 12, 8), valid(x, 12, 8))
    assert valid.lofi_valid_average and "lofi_valid_average=True" in repr(valid)
    for window, alpha in ((1, 0.5), (2, 0.0)):  # no pooled Lo-Fi heads: the option builds the same layer
        assert not HiLo(48, 6, window_size=window, alpha=alpha, lofi_valid_average=True).lofi_valid_average


def test_hilo_inference_join_follows_autocast():
    """Under autocast the projections must run in the autocast dtype, as with autograd."""
    hilo = HiLo(48, 6, window_size=2, alpha=0.5).eval()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = hilo(torch.randn(2, 16, 48), 4, 4)
    assert out.dtype == torch.bfloat16


def test_msa_with_rpe_equals_matmul_softmax():
    torch.manual_seed(0)
    fast = Attention(32, 4, rel_pos_max=(6, 6))
    naive = NaiveMSA(32, 4, rel_pos_max=(6, 6))
    naive.load_state_dict(fast.state_dict())
    x = torch.randn(2, 20, 32)
    assert (fast(x, 4, 5) - naive(x, 4, 5)).abs().max() <= 1e-5


def test_hilo_head_split_follows_official_rule():
    hilo = HiLo(384, 12, window_size=2, alpha=0.9)
    assert (hilo.l_heads, hilo.h_heads) == (10, 2)
    assert lofi_heads(12, 0.84, 2) == lofi_heads(12, 0.91, 2) == 10 and lofi_heads(12, 0.95, 2) == 11
    global_only = HiLo(768, 24, window_size=1, alpha=0.9)
    assert global_only.h_heads == 0 and not hasattr(global_only, "h_qkv")
    names = {name.split(".")[0] for name, _ in HiLo(64, 4, alpha=0.0).named_parameters()}
    assert names == {"h_qkv", "h_proj"}


def test_hilo_window_larger_than_map_still_works():
    hilo = HiLo(32, 4, window_size=4, alpha=0.5)
    assert hilo(torch.randn(1, 6, 32), 2, 3).shape == (1, 6, 32)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(dim=30, num_heads=4), "num_heads=4"),
    (dict(dim=32, num_heads=0), "num_heads=0"),
    (dict(dim=32, num_heads=4, alpha=1.5), "alpha=1.5"),
    (dict(dim=32, num_heads=4, alpha=-0.1), "alpha=-0.1"),
    (dict(dim=32, num_heads=4, window_size=0), "window_size=0"),
])
def test_hilo_rejects_bad_arguments(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        HiLo(**kwargs)


def test_hilo_rejects_wrong_token_count():
    with pytest.raises(ValueError, match="tokens"):
        HiLo(32, 4)(torch.randn(1, 10, 32), 3, 3)


def test_unknown_attention_kind():
    with pytest.raises(ValueError, match="'flash'"):
        build_attention("flash", 32, 4)


def test_shifted_windows_differ_from_plain_windows():
    torch.manual_seed(0)
    plain = build_attention("wmsa", 16, 2, window_size=2, block_index=0)
    shifted = build_attention("wmsa", 16, 2, window_size=2, block_index=1)
    shifted.load_state_dict(plain.state_dict())
    x = torch.randn(1, 16, 16)
    assert not torch.allclose(plain(x, 4, 4), shifted(x, 4, 4))


@pytest.mark.parametrize("ffn", [Mlp, ConvFFN])
def test_ffn_blocks_forward_backward(ffn):
    x = torch.randn(2, 12, 16, requires_grad=True)
    block = FFNBlock(16, ffn(16, 64), drop_path=0.1)
    block(x, 3, 4).sum().backward()
    assert x.grad is not None
    attn_block = AttentionBlock(16, HiLo(16, 2), ffn(16, 64), drop_path=0.1)
    assert attn_block(x, 3, 4).shape == x.shape


def test_convffn_uses_zero_padded_depthwise_conv():
    conv = ConvFFN(8, 32).dwconv.dwconv
    assert conv.groups == 32 and conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.padding_mode == "zeros"


@pytest.mark.parametrize("merge", [DeformableTokenMerging, PatchMerging])
@pytest.mark.parametrize("size,expected", [((8, 8), (4, 4)), ((6, 10), (3, 5)), ((7, 5), (3, 2))])
def test_token_merging_halves_the_map(merge, size, expected):
    x = torch.randn(2, size[0] * size[1], 16, requires_grad=True)
    out, height, width = merge(16, 32)(x, *size)
    assert (height, width) == expected and out.shape == (2, height * width, 32)
    out.sum().backward()
    assert x.grad is not None


def test_dtm_starts_as_a_strided_conv():
    torch.manual_seed(0)
    dtm = DeformableTokenMerging(8, 16).eval()
    grid = torch.randn(1, 8, 6, 6)
    plain = torch.nn.functional.conv2d(grid, dtm.dconv.weight, dtm.dconv.bias, stride=2)
    assert torch.allclose(dtm.dconv(grid), plain, atol=1e-5)
    assert not dtm.dconv.conv_offset.weight.any()


@pytest.mark.parametrize("shape", [(2, 3, 7, 5), (3, 4, 9, 9), (1, 2, 3, 6), (2, 4, 8, 8)])
def test_cpu_deform_conv_equals_torchvision(shape):
    """Random offsets reach outside the map: zero padding must agree corner by corner, gradients too."""
    from torchvision.ops import deform_conv2d

    torch.manual_seed(0)
    batch, channels, height, width = shape
    out_h, out_w = (height - 2) // 2 + 1, (width - 2) // 2 + 1
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    offset = (3 * torch.randn(batch, 8, out_h, out_w, dtype=torch.float64)).requires_grad_()
    weight = torch.randn(2 * channels, channels, 2, 2, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(2 * channels, dtype=torch.float64, requires_grad=True)
    reference = deform_conv2d(x, offset, weight, bias, stride=2)
    ours = sampled_deform_conv2d(x, offset, weight, bias, stride=2)
    assert ours.shape == reference.shape
    torch.testing.assert_close(ours, reference, atol=1e-10, rtol=0)
    upstream = torch.randn_like(reference)
    for mine, theirs in zip(torch.autograd.grad(ours, (x, offset, weight, bias), upstream),
                            torch.autograd.grad(reference, (x, offset, weight, bias), upstream)):
        torch.testing.assert_close(mine, theirs, atol=1e-10, rtol=0)


def test_cpu_deform_conv_samples_in_float32_under_bf16():
    """Low-precision inputs keep exact sampling positions: only the values are rounded."""
    torch.manual_seed(0)
    x = torch.randn(1, 4, 64, 64)
    offset = torch.full((1, 8, 32, 32), 0.3)
    weight, bias = torch.randn(8, 4, 2, 2), torch.randn(8)
    exact = sampled_deform_conv2d(x, offset, weight, bias, stride=2)
    rounded = sampled_deform_conv2d(x.bfloat16(), offset.bfloat16(), weight.bfloat16(), bias.bfloat16(), stride=2)
    assert rounded.dtype == torch.bfloat16
    assert (rounded.float() - exact).abs().max() <= 0.02 * exact.abs().max()
