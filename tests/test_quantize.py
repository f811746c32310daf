"""int8 quantisation (zoo.compress.quantize): logits agree with the float model for every family;
a quantised model saves and reloads from tensors only; bad input is refused by name."""
import importlib
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import zoo

pytest.importorskip("torchao")
Q = importlib.import_module("zoo.compress.quantize")  # the module (zoo.compress.quantize is also the function)

# Small random models, one per family (cut in depth so the whole file stays well under a minute).
SMALL = {
    "resnet18": dict(layers=(1, 1, 1, 1)),
    "cbam_resnet18": dict(layers=(1, 1, 1, 1)),
    "vit_t_16": dict(depth=2),
    "deit_t_16_distilled": dict(depth=2),
    "swin_t": dict(depths=(1, 1, 1, 1)),
    "pvt_v2_b0": dict(depths=(1, 1, 1, 1)),
    "efficientvit_b0": dict(),
    "xcit_t12_16": dict(depth=2),
}
STATIC = ("resnet18", "cbam_resnet18", "vit_t_16", "swin_t")  # export + calibrate costs seconds each


def _model(name: str, fast: bool = True) -> nn.Module:
    torch.manual_seed(0)
    return zoo.create(name, num_classes=10, fast=fast, **SMALL[name]).eval()


def _images(n: int = 16, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 64, 64, generator=g)


# Random-weight logits lie close together, so a near-tie may flip under int8 noise: top-1 agreement
# 80 % over 16 images (a trained model agrees more, see the README table); the cosine is the tight check.
TOP1, COS = 0.8, 0.99


def _agreement(out, ref) -> tuple[float, float]:
    return (out.argmax(1) == ref.argmax(1)).float().mean().item(), F.cosine_similarity(out, ref).min().item()


def _quantize(model, method, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the Linear-only warning on CNNs is tested on its own
        return Q.quantize(model, method, **kw)


@pytest.mark.parametrize("method", ["int8-dynamic", "int8-weight"])
@pytest.mark.parametrize("name", list(SMALL))
def test_linear_methods_agree_with_float_and_quantise(name, method):
    model, x = _model(name), _images()
    with torch.no_grad():
        ref = model(x)
        q = _quantize(model, method)
        out = q(x)
    top1, cos = _agreement(out, ref)
    assert top1 >= TOP1 and cos > COS, (top1, cos)
    assert not torch.equal(out, ref)  # something was quantised
    assert all(type(m.weight).__module__.startswith("torchao") for m in q.modules() if isinstance(m, nn.Linear))
    assert zoo.accel.is_fast(model)  # the float model is left as it was
    assert q.quantization == method


@pytest.mark.parametrize("name", STATIC)
def test_static_quantises_convs_and_linears_and_agrees(name):
    model, x = _model(name), _images()
    q = Q.quantize(model, "int8-static", calib=[x[:8], x[8:]])
    with torch.no_grad():
        ref, out = model(x), q(x)
        small = q(x[:3])  # any batch size
    top1, cos = _agreement(out, ref)
    assert top1 >= TOP1 and cos > COS, (top1, cos)
    convs = [n for n in q.graph.nodes if n.target is torch.ops.aten.conv2d.default]
    # every conv / linear reads a dequantised int8 weight
    weights = [n.args[1] for n in q.graph.nodes if n.target in (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default)]
    assert convs and all("dequantize_per_channel" in str(w.target) for w in weights)
    assert torch.allclose(small, out[:3], atol=1e-4)


@pytest.mark.parametrize(("name", "method"), [("vit_t_16", m) for m in Q.METHODS] + [("cbam_resnet18", "int8-static")])
def test_save_and_reload_gives_the_same_outputs(name, method, tmp_path, monkeypatch):
    model, x = _model(name), _images(4)
    q = _quantize(model, method, calib=[x])
    path = tmp_path / "q.pt"
    Q.save(q, path)
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(k.get("weights_only")) or real_load(*a, **k))
    back = Q.load(path, _model(name, fast=False))  # another float copy: its weights do not matter
    assert loads == [True]  # nothing in the file is unpickled as code
    with torch.no_grad():
        assert torch.allclose(back(x), q(x), atol=1e-5)
    assert back.quantization == method
    if name == "vit_t_16" or method == "int8-static":  # int8 weights: about a quarter of float32
        assert path.stat().st_size < 0.4 * Q.saved_bytes(model)


def test_reload_into_another_architecture_is_refused(tmp_path):
    q = Q.quantize(_model("vit_t_16"), "int8-static", calib=[_images(2)])
    Q.save(q, tmp_path / "q.pt")
    with pytest.raises(ValueError, match="another"):
        Q.load(tmp_path / "q.pt", zoo.create("vit_t_16", num_classes=10, depth=3))
    torch.save({"x": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a quantised model"):
        Q.load(tmp_path / "other.pt", _model("vit_t_16"))


def test_bad_method_lists_the_choices():
    with pytest.raises(ValueError, match="choose from.*int8-dynamic.*int8-weight.*int8-static"):
        Q.quantize(_model("vit_t_16"), "int4")
    with pytest.raises(ValueError, match="calibration"):
        Q.quantize(_model("vit_t_16"), "int8-static")
    with pytest.raises(ValueError, match="one image size"):
        Q.quantize(_model("vit_t_16"), "int8-static", calib=[torch.randn(2, 3, 64, 64), torch.randn(2, 3, 32, 32)])
    with pytest.raises(ValueError, match="quantize\\(\\) returned"):
        Q.save(_model("vit_t_16"), "unused.pt")


def test_unsupported_models_get_a_specific_error():
    # A CNN without its classifier has no Linear: the Linear-only methods say so and name int8-static.
    trunk = _model("resnet18")
    trunk.reset_classifier(0)
    with pytest.raises(ValueError, match="no nn.Linear.*int8-static"):
        Q.quantize(trunk, "int8-dynamic")
    assert Q.quantize(trunk, "int8-static", calib=[_images(2)]) is not None  # its convs are quantised
    with pytest.raises(ValueError, match="no nn.Linear or nn.Conv2d"):
        Q.quantize(nn.ReLU(), "int8-static", calib=[_images(2)])

    class DataDependent(nn.Module):  # torch.export cannot capture a branch on a tensor's value
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 4)

        def forward(self, x):
            return self.fc(x.mean((1, 2))) if x.sum() > 0 else -self.fc(x.mean((1, 2)))

    with pytest.raises(ValueError, match="torch.export.*int8-dynamic"):
        Q.quantize(DataDependent(), "int8-static", calib=[_images(2)])
    assert Q.quantize(DataDependent(), "int8-dynamic")(_images(2)).shape == (2, 4)


def test_linear_only_methods_warn_on_convolutional_models():
    with pytest.warns(UserWarning, match="Linear only.*int8-static"):
        Q.quantize(_model("resnet18"), "int8-weight")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        Q.quantize(_model("vit_t_16"), "int8-weight")  # a transformer is mostly Linear: no warning
