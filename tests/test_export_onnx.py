"""zoo.export.onnx: onnxruntime (CPU) against eager float32 at the export batch, another batch and,
with dynamic_size, two other input sizes; the refusals; the CLI."""
from __future__ import annotations

import copy

import pytest
import torch

import zoo

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from zoo.export.__main__ import main  # noqa: E402
from zoo.export.onnx import TOLERANCE, check_onnx  # noqa: E402
from zoo.export.swin_graph import graph_geometry  # noqa: E402

SWIN_TINY = dict(embed_dim=24, depths=(2, 2), num_heads=(2, 4), window_size=4, drop_path_rate=0.0)
VIT_TINY = dict(img_size=32, patch_size=8, depth=2)


def _model(name, **kw):
    torch.manual_seed(0)
    return zoo.create(name, num_classes=10, **kw).eval()


def _assert_matches(model, path, shapes):
    inputs = [torch.randn(s) for s in shapes]
    errors = check_onnx(model, path, inputs)
    assert all(e <= TOLERANCE for e in errors), (shapes, errors)


@pytest.mark.parametrize("name, kw, size, dynamic_size", [
    ("cbam_resnet18", {}, 64, True),  # global pooling: any size works
    ("vit_t_16", VIT_TINY, 48, True),  # positions resampled inside the graph
    ("swin_t", SWIN_TINY, 64, True),  # windows, shifts and masks computed in the graph (swin_graph.py)
])
def test_onnx_matches_eager(tmp_path, name, kw, size, dynamic_size):
    model = _model(name, **kw)  # accelerated (fast=True): the export undoes it on a copy
    assert zoo.accel.is_fast(model)
    path = zoo.export.onnx(model, tmp_path / "m.onnx", torch.randn(2, 3, size, size), dynamic_size=dynamic_size)
    assert zoo.accel.is_fast(model)  # the caller's model is untouched
    shapes = [(2, 3, size, size), (5, 3, size, size)]
    if dynamic_size:
        shapes += [(1, 3, size + 16, size + 16), (3, 3, size - 8, size + 24)]  # sizes the export never checked
        if name.startswith("swin"):  # maps smaller than the window: eager shrinks it and drops the shift
            shapes += [(2, 3, 12, 20), (1, 3, 4, 36)]
    _assert_matches(model, path, shapes)


@pytest.mark.slow
@pytest.mark.parametrize("name, size, dynamic_size", [
    ("resnet18", 64, True), ("se_resnet18", 64, True), ("eca_resnet18", 64, True), ("gc_resnet18", 64, True),
    ("nl_resnet18", 64, True), ("vit_t_16", 96, True), ("swin_t", 112, False), ("swin_v2_t", 112, False),
])
def test_onnx_full_models(tmp_path, name, size, dynamic_size):
    model = _model(name)
    path = zoo.export.onnx(model, tmp_path / "m.onnx", torch.randn(2, 3, size, size), dynamic_size=dynamic_size)
    _assert_matches(model, path, [(2, 3, size, size), (3, 3, size, size)])


@pytest.mark.parametrize("name, kw", [
    ("swin_t", dict(mask_padding=True)), ("swin_v2_t", {}), ("swin_v2_t", dict(pretrained_window_size=3)),
])
def test_swin_graph_geometry_matches_eager(name, kw):
    # The export-only Swin twins (tensor geometry, full window, gathered roll) give eager's numbers at
    # sizes that pad, shrink the window on one axis or both, and drop the shift (the rule is per axis).
    model = _model(name, fast=False, **SWIN_TINY, **kw)
    for norm in (m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)):  # v2's zero post-norms
        torch.nn.init.normal_(norm.weight)
    graph = graph_geometry(copy.deepcopy(model))
    assert isinstance(graph.layers[0].blocks[1], type(model.layers[0].blocks[1]))  # a subclass swap
    assert graph.state_dict().keys() == model.state_dict().keys()
    for shape in [(2, 3, 64, 64), (2, 3, 36, 52), (1, 3, 20, 12), (1, 3, 8, 8), (1, 3, 4, 28), (1, 3, 60, 28)]:
        x = torch.randn(shape)
        with torch.no_grad():
            ref, out = model(x), graph(x)
        assert (out - ref).abs().max() <= TOLERANCE * ref.abs().max(), shape


@pytest.mark.slow
@pytest.mark.parametrize("name", ["swin_v2_t", "swin_t_full"])
def test_swin_dynamic_size(tmp_path, name):
    # swin_t at 224 (last stage 7x7 = its window), run at 256 (8x8: padded to 14, shifted) and 192
    # (6x6: the window shrinks to 6); the tiny v2 at sizes that shrink, pad and shift.
    if name == "swin_t_full":
        model, size, shapes = _model("swin_t"), 224, [(1, 3, 256, 256), (1, 3, 192, 192)]
    else:
        model, size, shapes = _model(name, **SWIN_TINY), 64, [(1, 3, 12, 20), (2, 3, 36, 52), (1, 3, 96, 96)]
    path = zoo.export.onnx(model, tmp_path / "m.onnx", torch.randn(2, 3, size, size), dynamic_size=True)
    _assert_matches(model, path, shapes)


def test_refusals(tmp_path):
    model = _model("resnet18")
    with pytest.raises(ValueError, match=r"training mode: call model.eval\(\)"):
        zoo.export.onnx(model.train(), tmp_path / "m.onnx")
    model.eval()
    with pytest.raises(ValueError, match="rank 4"):
        zoo.export.onnx(model, tmp_path / "m.onnx", torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="'sa' \\(BoTNet\\)"):  # refused before exporting anything
        zoo.export.onnx(_model("sa_resnet18", img_size=64), tmp_path / "m.onnx", torch.randn(2, 3, 64, 64),
                        dynamic_size=True)
    assert not (tmp_path / "m.onnx").exists()


def test_cli(tmp_path, capsys):
    out = tmp_path / "r.onnx"
    assert main(["resnet18", "--img-size", "64", "--num-classes", "7", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    y = sess.run(None, {sess.get_inputs()[0].name: torch.randn(3, 3, 64, 64).numpy()})[0]
    assert y.shape == (3, 7)
