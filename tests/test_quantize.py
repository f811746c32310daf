"""int8 quantisation (zoo.compress.quantize): logits agree with the float model; saves and reloads."""
import pytest
import torch
import torch.nn.functional as F

import zoo
import importlib
Q = importlib.import_module("zoo.compress.quantize")  # the module (zoo.compress.quantize is also the function)

pytest.importorskip("torchao")


def _cos(a, b):
    return F.cosine_similarity(a.flatten(1), b.flatten(1)).min().item()


@pytest.mark.parametrize("method", ["int8-dynamic", "int8-weight"])
def test_dynamic_and_weight_only_agree_and_round_trip(method, tmp_path):
    torch.manual_seed(0)
    model = zoo.create("vit_t_16", img_size=32, patch_size=8, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        q = Q.quantize(model, method)
        out = q(x)
    assert _cos(out, ref) > 0.98
    assert zoo.accel.is_fast(model)  # the float model is left as it was
    Q.save(q, tmp_path / "q.pt")
    back = Q.load(tmp_path / "q.pt", method, zoo.create("vit_t_16", img_size=32, patch_size=8, num_classes=10, fast=False))
    with torch.no_grad():
        assert torch.allclose(back(x), out, atol=1e-5)
    assert (tmp_path / "q.pt").stat().st_size < 0.5 * sum(p.numel() * 4 for p in model.parameters())


def test_static_quantises_convs_and_round_trips(tmp_path):
    torch.manual_seed(0)
    # A conv stem + ViT: Conv2d and Linear both quantised. (ResNet's conv-bn-add-relu fusion pattern
    # trips torchao 0.18's X86InductorQuantizer: "Input partition has more than one output node".)
    model = zoo.create("vit_t_16", img_size=32, patch_size=8, num_classes=10).eval()
    calib = [torch.randn(2, 3, 32, 32) for _ in range(2)]
    q = Q.quantize(model, "int8-static", calib=calib)
    x = calib[0]
    with torch.no_grad():
        ref, out = model(x), q(x)
    assert _cos(out, ref) > 0.95
    targets = {str(n.target) for n in q.graph.nodes}
    assert any("quantize_per_tensor" in t for t in targets)
    Q.save(q, tmp_path / "q.pt2", example=x)
    back = Q.load(tmp_path / "q.pt2", "int8-static")
    with torch.no_grad():
        assert torch.allclose(back(x), out, atol=1e-4)


def test_bad_input():
    model = zoo.create("vit_t_16", img_size=32, patch_size=8, num_classes=10)
    with pytest.raises(ValueError, match="choose from"):
        Q.quantize(model, "int4")
    with pytest.raises(ValueError, match="calibration"):
        Q.quantize(model, "int8-static")
    with pytest.raises(ValueError, match="no nn.Linear"):
        Q.quantize(torch.nn.ReLU(), "int8-dynamic")
