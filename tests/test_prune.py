"""zoo.compress.prune_heads: structural head pruning of ViT, DeiT and Swin v1/v2 (Michel et al. 2019)."""
from __future__ import annotations

import pytest
import torch

import zoo
import zoo.compress as zc
from zoo.compress.prune import head_importance, head_modules

VIT = dict(img_size=32, patch_size=8, depth=2, embed_dim=48, num_heads=4, num_classes=5)
SWIN = dict(embed_dim=24, depths=(1, 2), num_heads=(2, 4), window_size=4, num_classes=5, drop_path_rate=0.0)
MODELS = {"vit_t_16": VIT, "deit_t_16_distilled": VIT, "swin_t": SWIN, "swin_v2_t": SWIN}


def _make(name: str, fast: bool = True, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    model = zoo.create(name, fast=fast, **{**MODELS[name], **kw}).eval()
    with torch.no_grad():  # Swin v2's zero-init post-norms would silence every branch; its scales start equal
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.normal_(1.0, 0.2)
                m.bias.normal_(0.0, 0.2)
            if hasattr(m, "logit_scale"):
                m.logit_scale.uniform_(1.0, 3.0)
    return model


def _x(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _per_head_params(name: str, attn) -> int:
    """What one head costs: qkv rows and proj columns, plus the family's per-head extras."""
    C, hd = attn.proj.out_features, attn.head_dim
    n = 3 * hd * C + C * hd
    if name == "swin_v2_t":
        return n + 2 * hd + 1 + 512  # q_bias + v_bias, logit_scale, cpb MLP output row
    n += 3 * hd  # qkv bias
    if name == "swin_t":
        n += attn.relative_position_bias_table.shape[0]
    return n


@pytest.mark.parametrize("name", list(MODELS))
def test_shapes_and_parameter_count(name):
    model = _make(name)
    mods = head_modules(model)
    block = list(mods)[-1]
    attn = mods[block]
    H, hd, C = attn.num_heads, attn.head_dim, attn.proj.out_features
    before, cost = _n_params(model), _per_head_params(name, attn)
    zc.prune_heads(model, heads={block: [0, H - 1]})
    assert attn.num_heads == H - 2 and attn.head_dim == hd
    assert attn.qkv.weight.shape == (3 * (H - 2) * hd, C) and attn.proj.weight.shape == (C, (H - 2) * hd)
    if name == "swin_t":
        assert attn.relative_position_bias_table.shape[1] == H - 2
    if name == "swin_v2_t":
        assert attn.logit_scale.shape == (H - 2, 1, 1) and attn.cpb_mlp[-1].weight.shape == (H - 2, 512)
        assert attn.q_bias.shape == attn.v_bias.shape == ((H - 2) * hd,)
    assert _n_params(model) == before - 2 * cost
    assert model.pruned_heads == {block: 2}
    with torch.no_grad():
        assert model(_x()).shape == (2, 5)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("name", list(MODELS))
def test_pruning_a_silent_head_keeps_the_logits(name, fast):
    model = _make(name, fast=fast)
    mods = head_modules(model)
    heads = {}
    for i, (block, attn) in enumerate(mods.items()):
        if attn.num_heads > 1:
            h = i % attn.num_heads
            with torch.no_grad():  # the head's slice of the output projection: it adds nothing
                attn.proj.weight[:, h * attn.head_dim:(h + 1) * attn.head_dim] = 0
            heads[block] = [h]
    x = _x()
    with torch.no_grad():
        ref = model(x)  # also fills zoo.accel's caches, which pruning must drop
    zc.prune_heads(model, heads=heads)
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("name", list(MODELS))
def test_plain_state_dict_roundtrip_through_create(name, tmp_path):
    model = _make(name)
    mods = head_modules(model)
    zc.prune_heads(model, heads={b: list(range(i % m.num_heads)) for i, (b, m) in enumerate(mods.items())
                                 if i % m.num_heads})
    counts = {b: m.num_heads for b, m in head_modules(model).items()}
    path = tmp_path / "pruned.pth"
    torch.save(model.state_dict(), path)
    torch.manual_seed(1)  # the reloaded values must come from the file, not from the same init
    again = zoo.create(name, pretrained=str(path), **MODELS[name]).eval()
    assert {b: m.num_heads for b, m in head_modules(again).items()} == counts
    assert _n_params(again) == _n_params(model)
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)


def test_importance_is_zero_for_a_silent_head_and_ratio_prunes_it_first():
    model = _make("vit_t_16")
    attn = model.blocks[1].attn
    with torch.no_grad():
        attn.proj.weight[:, 2 * attn.head_dim:3 * attn.head_dim] = 0
    g = torch.Generator().manual_seed(2)
    data = [(torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 5, (4,), generator=g)) for _ in range(2)]
    scores = head_importance(model, data)
    assert set(scores) == {"blocks.0", "blocks.1"} and scores["blocks.1"].shape == (4,)
    assert scores["blocks.1"][2] == 0 and (scores["blocks.0"] > 0).all()
    torch.testing.assert_close(scores["blocks.0"].norm(), torch.tensor(1.0))  # normalised per layer
    assert all(p.grad is None for p in model.parameters())  # only the gates' gradients were taken
    zc.prune_heads(model, ratio=1 / 8, data=data)  # one head of eight: the silent one
    assert model.pruned_heads == {"blocks.1": 1} and attn.num_heads == 3


@pytest.mark.parametrize("name", ["vit_t_16", "swin_t"])
def test_importance_takes_the_absolute_value_per_example(name):
    """E_x |dL(x)/d gate|: a batch of two scores as its two images apart (a batch-level |sum| would not)."""
    model = _make(name)
    x, y = _x(2), torch.tensor([1, 3])
    summed = lambda out, t: torch.nn.functional.cross_entropy(out, t, reduction="sum")  # noqa: E731
    both = head_importance(model, [(x, y)], loss_fn=summed, normalize=False)
    apart = head_importance(model, [(x[:1], y[:1]), (x[1:], y[1:])], loss_fn=summed, normalize=False)
    for n in both:
        torch.testing.assert_close(both[n], apart[n], rtol=1e-4, atol=1e-7)


def test_importance_of_a_shared_block_sums_its_calls():
    model = _make("vit_t_16", depth=4, share_layers=2)
    data = [(_x(2), torch.tensor([0, 1]))]
    scores = head_importance(model, data)
    assert list(scores) == ["blocks.0", "blocks.2"]  # one score vector per distinct block
    zc.prune_heads(model, ratio=0.25, importance=scores)
    assert model.blocks[0].attn.num_heads + model.blocks[2].attn.num_heads == 6
    assert model.blocks[1] is model.blocks[0]


@pytest.mark.parametrize("name", ["deit_t_16_distilled", "swin_v2_t"])
def test_ratio_keeps_one_head_per_block(name):
    model = _make(name).train()
    total = sum(m.num_heads for m in head_modules(model).values())
    g = torch.Generator().manual_seed(3)
    data = [(torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 5, (4,), generator=g))]
    zc.prune_heads(model, ratio=0.5, data=data)
    assert model.training  # the mode is given back
    left = [m.num_heads for m in head_modules(model).values()]
    assert sum(left) == total - round(0.5 * total) and min(left) >= 1
    zc.prune_heads(model, ratio=0.99, importance={b: torch.rand(m.num_heads) for b, m in head_modules(model).items()})
    assert all(m.num_heads == 1 for m in head_modules(model).values())  # capped: one head left per block
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(_x())).all()


def test_bad_input():
    model = _make("vit_t_16")
    data = [(_x(), torch.zeros(2, dtype=torch.long))]
    for ratio in (0, 1, 1.5, -0.2):
        with pytest.raises(ValueError, match=r"ratio must be a fraction in \(0, 1\)"):
            zc.prune_heads(model, ratio=ratio, data=data)
    with pytest.raises(ValueError, match="out of range.*4 heads"):
        zc.prune_heads(model, heads={"blocks.0": [4]})
    with pytest.raises(ValueError, match="at least one head"):
        zc.prune_heads(model, heads={"blocks.0": [0, 1, 2, 3]})
    with pytest.raises(ValueError, match="no prunable block 'blocks.7'"):
        zc.prune_heads(model, heads={"blocks.7": [0]})
    with pytest.raises(ValueError, match="needs exactly one of data="):
        zc.prune_heads(model, ratio=0.5)
    with pytest.raises(ValueError, match="either heads="):
        zc.prune_heads(model)
    with pytest.raises(ValueError, match="no attention heads to prune"):
        zc.prune_heads(zoo.create("resnet18", num_classes=5), ratio=0.5, data=data)
    assert model.blocks[0].attn.num_heads == 4  # nothing was cut by the failed calls


def test_pruned_checkpoint_fine_tunes_through_train_py(train_cfg, tmp_path):
    import train
    from zoo.checkpoint import load_checkpoint

    kw = dict(img_size=32, patch_size=8, depth=2, num_classes=10)
    model = zoo.create("vit_t_16", **kw)
    zc.prune_heads(model, heads={"blocks.0": [0], "blocks.1": [1, 2]})
    path = tmp_path / "pruned.pth"
    torch.save(model.state_dict(), path)
    cfg = train_cfg("model=vit_t_16", "+model.kwargs.patch_size=8", "+model.kwargs.depth=2", f"pretrained={path}",
                    "logger=[]", "module.ema=null")
    summary = train.train(cfg)
    assert summary["global_step"] == 2
    tuned, _ = load_checkpoint(summary["checkpoints"]["last"])  # eval.py's reader rebuilds the pruned blocks
    assert [b.attn.num_heads for b in tuned.blocks] == [2, 1]
