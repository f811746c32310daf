"""Cross-layer weight sharing (ALBERT, arXiv 1909.11942) in ViT / DeiT: ``zoo.create(name, share_layers=k)``."""
from __future__ import annotations

import pytest
import torch

import zoo
from zoo.flops import count_macs
from zoo.weights.loading import CheckpointMismatchError

KW = dict(img_size=32, patch_size=8, depth=4, embed_dim=48, num_heads=4, num_classes=5)


def _make(name: str = "vit_t_16", seed: int = 0, **kw):
    torch.manual_seed(seed)
    return zoo.create(name, **{**KW, **kw}).eval()


def _n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["vit_t_16", "deit_t_16_distilled"])
def test_groups_are_one_module_fewer_parameters_same_macs(name):
    plain, shared = _make(name), _make(name, share_layers=2)
    b = shared.blocks
    assert b[0] is b[1] and b[2] is b[3] and b[1] is not b[2]
    assert b[0].attn.qkv.weight is b[1].attn.qkv.weight
    per_block = sum(p.numel() for p in plain.blocks[0].parameters())
    assert _n_params(shared) == _n_params(plain) - 2 * per_block
    assert count_macs(shared, (1, 3, 32, 32)) == count_macs(plain, (1, 3, 32, 32))
    odd = _make(name, share_layers=3)  # 4 blocks: a run of 3 and a run of 1
    assert odd.blocks[0] is odd.blocks[2] and odd.blocks[3] is not odd.blocks[0]
    assert len({id(m) for m in _make(name, share_layers=4).blocks}) == 1


def test_training_step_keeps_the_tie():
    model = _make(share_layers=2).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.blocks[1].mlp.fc1.weight.detach().clone()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    assert not torch.equal(model.blocks[1].mlp.fc1.weight, before)
    sd = model.state_dict()
    assert torch.equal(sd["blocks.0.mlp.fc1.weight"], sd["blocks.1.mlp.fc1.weight"])


def test_state_dict_roundtrip_and_untied_checkpoint_refused(tmp_path):
    shared = _make(share_layers=2)
    sd = shared.state_dict()
    assert set(sd) == set(_make().state_dict())  # every block keeps its keys
    path = tmp_path / "shared.pth"
    torch.save(sd, path)
    again = zoo.create("vit_t_16", pretrained=str(path), share_layers=2, **KW).eval()
    assert again.blocks[0] is again.blocks[1]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again(x), shared(x), rtol=0, atol=0)
    again.load_state_dict(torch.load(path), strict=True)  # torch's own strict load works too
    untied = zoo.create("vit_t_16", pretrained=str(path), **KW).eval()  # a shared file unties into a plain model
    with torch.no_grad():
        torch.testing.assert_close(untied(x), shared(x), rtol=0, atol=0)
    plain = tmp_path / "plain.pth"
    torch.save(_make(seed=3).state_dict(), plain)
    with pytest.raises(CheckpointMismatchError, match=r"ties blocks\.1\..* \(shared layers\)"):
        zoo.create("vit_t_16", pretrained=str(plain), share_layers=2, **KW)


@pytest.mark.parametrize("bad", [0, 5, 1.5])
def test_bad_share_layers(bad):
    with pytest.raises(ValueError, match="share_layers"):
        zoo.create("vit_t_16", share_layers=bad, **KW)
