"""The image sides an exported ONNX graph accepts (litv2.runtimes.dynamic_input_sides,
export_onnx): dynamic height and width where every stage divides the side exactly, the
graph agreeing with PyTorch at each such side and refusing others, and one fixed resolution
where a layer keeps the sides from being dynamic; the file names its sides in its metadata."""
import pytest
import torch

from litv2 import LITV2_S, LIT_S, LITConfig, build_model
from litv2.runtimes import ONNX_INPUT, ONNX_OUTPUT, InputSides, dynamic_input_sides, export_onnx

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

TOLERANCE = 1e-4
# LITv2's layout in small: MLP-only stages, then HiLo (window 2, relative position bias in its
# Hi-Fi windows) and HiLo with a window of 1 (global), DTM between stages.
HILO = LITConfig(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), rel_pos_bias=True)
# Patch merging, windows in stage 1, and T-MSA in stage 2: local windows, then a global block
# reduced 4x, which asks stage 2's map for multiples of 4 - more than the total stride of 8.
WINDOWS_AND_REDUCTION = LITConfig(embed_dim=8, depths=(1, 2), num_heads=(1, 2), attention=(True, True),
                                  attn_kind=("wmsa", "tmsa"), window_size=(2, 2), alpha=(0.9, 0.9),
                                  sr_ratio=(1, 4), merge="patch")
SHIFTED = LITConfig(embed_dim=8, depths=(2,), num_heads=(1,), attention=(True,), attn_kind=("wmsa",),
                    window_size=(2,), alpha=(0.9,), sr_ratio=(1,))


def _exported(config: LITConfig, img_size: int, tmp_path) -> tuple[torch.nn.Module, InputSides, object]:
    torch.manual_seed(0)
    model = build_model(config, num_classes=10, img_size=img_size).eval()
    sides = export_onnx(model, tmp_path / "model.onnx", img_size)
    return model, sides, ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])


def _difference(model: torch.nn.Module, session, height: int, width: int, batch: int = 2) -> float:
    images = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(height * width))
    (ours,) = session.run([ONNX_OUTPUT], {ONNX_INPUT: images.numpy()})
    with torch.no_grad():
        return float((torch.from_numpy(ours) - model(images)).abs().max())


def test_the_rule_is_the_least_side_every_stage_divides_and_none_where_a_layer_forbids_it():
    assert dynamic_input_sides(LITV2_S) == InputSides(multiple=32, minimum=64)  # stride 32; HiLo windows 2 at 16
    assert dynamic_input_sides(HILO) == InputSides(multiple=32, minimum=64)
    assert dynamic_input_sides(WINDOWS_AND_REDUCTION) == InputSides(multiple=32, minimum=64)  # 8 * lcm(2, 4)
    # T-MSA's reduced block is its second: with one block, only its windows count.
    assert dynamic_input_sides(WINDOWS_AND_REDUCTION.replace(depths=(1, 1))) == InputSides(16, 32)
    swin_like = LITConfig(attention=(True,) * 4, attn_kind=("wmsa",) * 4, window_size=(7,) * 4, shift=False)
    assert dynamic_input_sides(swin_like) == InputSides(multiple=224, minimum=448)  # 32 * 7
    assert dynamic_input_sides(swin_like.replace(shift=True)) is None  # shift masks cached per map size
    assert dynamic_input_sides(LIT_S) is None  # global MSA's relative position bias: indexed per map size
    assert dynamic_input_sides(SHIFTED) is None and dynamic_input_sides(SHIFTED.replace(depths=(1,))) is not None
    assert [side for side in range(0, 260, 16) if InputSides(32, 64).accepts(side)] == [64, 96, 128, 160, 192, 224, 256]
    assert [side for side in (32, 48, 64) if InputSides.only(32).accepts(side)] == [32]


def test_a_dynamic_graph_agrees_with_pytorch_at_every_allowed_side_and_records_them(tmp_path):
    model, sides, session = _exported(HILO, 64, tmp_path)
    assert sides == InputSides(multiple=32, minimum=64)
    assert InputSides.from_metadata(session.get_modelmeta().custom_metadata_map) == sides
    assert str(sides) == "images whose height and width are each a multiple of 32, from 64"
    for height, width in ((64, 64), (96, 160), (128, 64)):
        assert _difference(model, session, height, width) <= TOLERANCE, (height, width)
    assert _difference(model, session, 96, 96, batch=1) <= TOLERANCE
    with pytest.raises(Exception, match="Reshape"):  # a side off the multiples: the graph's reshapes refuse it
        _difference(model, session, 80, 80)


def test_a_rule_beyond_the_total_stride_holds_in_the_graph(tmp_path):
    model, sides, session = _exported(WINDOWS_AND_REDUCTION, 64, tmp_path)
    assert sides == InputSides(multiple=32, minimum=64)
    for height, width in ((64, 64), (96, 64), (128, 160)):
        assert _difference(model, session, height, width) <= TOLERANCE, (height, width)
    with pytest.raises(Exception, match="Reshape"):  # a multiple of the stride (8) PyTorch pads, but not of 32
        _difference(model, session, 72, 72)


def test_a_network_that_forbids_dynamic_sides_is_exported_at_its_one_resolution_and_says_so(tmp_path):
    model, sides, session = _exported(SHIFTED, 32, tmp_path)
    assert sides == InputSides.only(32) and sides.fixed and str(sides) == "32x32 images only"
    assert InputSides.from_metadata(session.get_modelmeta().custom_metadata_map) == sides
    assert _difference(model, session, 32, 32) <= TOLERANCE
    with pytest.raises(Exception, match="Expected: 32"):
        _difference(model, session, 64, 64)
