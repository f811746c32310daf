"""zoo.export.program: torch.export round trip (save, load) equals eager, batch kept dynamic."""
from __future__ import annotations

import pytest
import torch

import zoo

SWIN_TINY = dict(embed_dim=24, depths=(2, 2), num_heads=(2, 4), window_size=4, drop_path_rate=0.0)
VIT_TINY = dict(img_size=32, patch_size=8, depth=2)


@pytest.mark.parametrize("name, kw, size", [
    ("resnet18", {}, 64),
    ("cbam_resnet18", {}, 64),
    ("vit_t_16", VIT_TINY, 48),  # resampled positions
    ("swin_t", SWIN_TINY, 36),  # padded, shifted windows
])
def test_program_round_trip(tmp_path, name, kw, size):
    torch.manual_seed(0)
    model = zoo.create(name, num_classes=10, **kw).eval()
    prog = zoo.export.program(model, torch.randn(2, 3, size, size))
    assert isinstance(prog, torch.export.ExportedProgram)
    torch.export.save(prog, tmp_path / "m.pt2")
    loaded = torch.export.load(tmp_path / "m.pt2").module()
    for b in (2, 3):  # the export batch and another one
        x = torch.randn(b, 3, size, size)
        with torch.no_grad():
            ref = model(x)
            out = loaded(x)
        assert (out - ref).abs().max() <= 1e-5 * ref.abs().max(), name


@pytest.mark.slow
@pytest.mark.parametrize("name, size", [("vit_t_16", 96), ("swin_t", 112), ("se_resnet18", 64), ("nl_resnet18", 64)])
def test_program_full_models(name, size):
    model = zoo.create(name, num_classes=10).eval()
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        ref, out = model(x), zoo.export.program(model, torch.randn(2, 3, size, size)).module()(x)
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_program_refusals():
    model = zoo.create("resnet18", num_classes=10)
    with pytest.raises(ValueError, match="training mode"):
        zoo.export.program(model.train(), torch.randn(2, 3, 64, 64))
    with pytest.raises(ValueError, match="rank 4"):
        zoo.export.program(model.eval(), torch.randn(2, 3, 64))
