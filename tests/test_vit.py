"""Vision Transformer: parity with timm and torchvision, any-size inputs, checkpoint conversion, API."""
from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from parity import assert_logits_close as _assert_logits_close
from parity import perturb as _randomize
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer as TimmViT
from timm.models.vision_transformer import checkpoint_filter_fn as timm_filter_fn
from torchvision.models.vision_transformer import VisionTransformer as TvViT

import zoo
from zoo.models.vit import VisionTransformer

VIT_NAMES = zoo.list_models("vit_*")
TINY = dict(img_size=64, embed_dim=32, depth=2, num_heads=2)  # for vit_t_16 via kwargs: fast tests
TIMM_NAMES = {
    "vit_t_16": "vit_tiny_patch16_224",
    "vit_s_16": "vit_small_patch16_224",
    "vit_b_16": "vit_base_patch16_224",
    "vit_b_32": "vit_base_patch32_224",
    "vit_l_16": "vit_large_patch16_224",
}


def _save(sd: dict, tmp_path, name: str = "ref.pth") -> str:
    path = tmp_path / name
    torch.save(sd, path)
    return str(path)


def _tiny(**kw) -> VisionTransformer:
    return zoo.create("vit_t_16", **{**TINY, "num_classes": 10, **kw})


# ---- registry, sizes ---------------------------------------------------------------------------
def test_registered_names():
    assert VIT_NAMES == ["vit_b_16", "vit_b_32", "vit_l_16", "vit_s_16", "vit_t_16"]


@pytest.mark.parametrize("name", VIT_NAMES)
def test_param_count_matches_timm(name):
    with torch.device("meta"):
        ours = zoo.create(name)
        ref = timm.create_model(TIMM_NAMES[name])
    n_ours = sum(p.numel() for p in ours.parameters())
    assert n_ours == sum(p.numel() for p in ref.parameters())
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    expected = {"vit_b_16": 86_567_656, "vit_s_16": 22_050_664}
    if name in expected:
        assert n_ours == expected[name]


def test_unknown_kwarg_and_bad_pool_raise():
    with pytest.raises(TypeError):
        zoo.create("vit_t_16", embed_dims=32)
    with pytest.raises(ValueError, match="global_pool"):
        _tiny(global_pool="max")


# ---- parity with the references ----------------------------------------------------------------
def _parity(ref: torch.nn.Module, name: str, tmp_path, size: int = 224, **kw) -> None:
    _randomize(ref)
    model = zoo.create(name, pretrained=_save(ref.state_dict(), tmp_path), **kw).eval()
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _assert_logits_close(ref(x), model(x))


@pytest.mark.parametrize("name", ["vit_t_16", "vit_s_16"])
def test_parity_timm_small(name, tmp_path):
    _parity(timm.create_model(TIMM_NAMES[name]), name, tmp_path)


def test_parity_torchvision_layout_tiny(tmp_path):
    ref = TvViT(image_size=64, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=128, num_classes=10)
    _parity(ref, "vit_t_16", tmp_path, size=64, **TINY, num_classes=10)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vit_b_16", "vit_b_32", "vit_l_16"])
def test_parity_torchvision(name, tmp_path):
    _parity(getattr(torchvision.models, name)(), name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vit_b_16", "vit_b_32", "vit_l_16"])
def test_parity_timm_large(name, tmp_path):
    _parity(timm.create_model(TIMM_NAMES[name]), name, tmp_path)


def test_own_layout_round_trip(tmp_path):
    a = _randomize(_tiny())
    b = zoo.create("vit_t_16", pretrained=_save(a.state_dict(), tmp_path), **TINY, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


# ---- resolution: checkpoint resampling and any input size -------------------------------------
def test_checkpoint_pos_embed_resampled_like_timm(tmp_path):
    ref = _randomize(timm.create_model("vit_tiny_patch16_224"))
    sd = ref.state_dict()
    model = zoo.create("vit_t_16", pretrained=_save(sd, tmp_path), img_size=160).eval()
    expected = resample_abs_pos_embed(sd["pos_embed"], (10, 10), num_prefix_tokens=1)
    assert model.pos_embed.shape == (1, 101, 192)
    torch.testing.assert_close(model.pos_embed.detach(), expected, rtol=0, atol=1e-6)
    # And the whole network agrees with timm's own model built for 160 from the same file.
    ref160 = timm.create_model("vit_tiny_patch16_224", img_size=160)
    ref160.load_state_dict(timm_filter_fn(sd, ref160))
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        _assert_logits_close(ref160.eval()(x), model(x))


def test_checkpoint_into_larger_grid(tmp_path):
    src = _randomize(_tiny())
    model = zoo.create("vit_t_16", pretrained=_save(src.state_dict(), tmp_path), **{**TINY, "img_size": 96}, num_classes=10)
    assert model.pos_embed.shape == (1, 1 + 6 * 6, 32)
    torch.testing.assert_close(model.pos_embed[:, :1], src.pos_embed[:, :1])  # class position kept


@pytest.mark.parametrize("hw", [(48, 80), (35, 51), (64, 64), (16, 16), (100, 37)])
def test_any_input_size_matches_timm_dynamic(hw):
    """Non-square, native and odd sizes agree with timm's dynamic_img_size; odd sizes are
    floor-cropped to whole patches (timm refuses them, so it gets the cropped image)."""
    ref = _randomize(TimmViT(img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2, num_classes=10,
                             dynamic_img_size=True))
    model = _tiny()
    model.load_state_dict(ref.state_dict())
    model.eval()
    x = torch.randn(1, 3, *hw)
    with torch.no_grad():
        out = model(x)
        _assert_logits_close(ref(x[..., : hw[0] // 16 * 16, : hw[1] // 16 * 16]), out)
        tokens = model.forward_features(x)
    assert tokens.shape == (1, 1 + (hw[0] // 16) * (hw[1] // 16), 32)


def test_resampled_pos_cache_follows_parameter():
    model = _randomize(_tiny())
    pos_before = model.pos_embed.detach().clone()
    x = torch.randn(1, 3, 48, 80)
    with torch.no_grad():
        a, b = model(x), model(x)
        assert torch.equal(a, b)
        assert torch.equal(model.pos_embed, pos_before)  # never mutated
        sd = model.state_dict()
        sd["pos_embed"] = sd["pos_embed"] * 2
        model.load_state_dict(sd)
        c = model(x)
    assert not torch.allclose(a, c)
    with torch.no_grad():
        fresh = _tiny()
        fresh.load_state_dict(sd)
        assert torch.equal(c, fresh.eval()(x))


def test_resampled_pos_gets_gradient_in_training():
    model = _tiny()
    model(torch.randn(2, 3, 48, 80)).sum().backward()
    assert model.pos_embed.grad is not None and model.pos_embed.grad.abs().sum() > 0


@pytest.mark.parametrize("shape, match", [((1, 1, 64, 64), r"\[B, 3, H, W\]"), ((1, 3, 15, 64), "H >= 16"),
                                          ((1, 3, 64, 8), "W >= 16")])
def test_bad_input_raises(shape, match):
    with pytest.raises(ValueError, match=match):
        _tiny()(torch.randn(*shape))


# ---- training behaviour ------------------------------------------------------------------------
def test_forward_backward_all_params_get_grads():
    model = _tiny()
    model(torch.randn(2, 3, 64, 64)).logsumexp(1).sum().backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        assert p.grad.abs().sum() > 0, n


def test_dropouts_only_in_training():
    model = _randomize(_tiny(drop_rate=0.3, attn_drop_rate=0.3, drop_path_rate=0.3))
    plain = _tiny()
    plain.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x), model(x)
        assert torch.equal(a, b)
        assert torch.equal(a, plain.eval()(x))
        model.train()
        assert not torch.allclose(model(x), a)


@pytest.mark.parametrize("kw", [dict(attn_drop_rate=0.5), dict(drop_path_rate=0.5), dict(drop_rate=0.5)])
def test_each_dropout_is_honoured(kw):
    model = _randomize(_tiny(**kw)).train()
    torch.manual_seed(0)  # two draws of drop-path over few blocks and 2 samples can coincide: seed, draw 4
    x = torch.randn(2, 3, 64, 64)
    a = model(x)
    assert not all(torch.allclose(a, model(x)) for _ in range(3))


def test_grad_checkpointing_same_grads():
    model = _randomize(_tiny()).train()
    x = torch.randn(2, 3, 64, 64)
    model(x).square().sum().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).square().sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], rtol=1e-5, atol=1e-6, msg=n)


def test_bf16_autocast_agrees_with_fp32():
    model = _randomize(_tiny(embed_dim=64, num_heads=4))
    with torch.no_grad():
        model.head.weight.mul_(20)  # spread the logits so argmax is meaningful
    x = torch.randn(16, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    assert torch.isfinite(out).all()
    assert (out.float().argmax(1) == ref.argmax(1)).float().mean() >= 0.75


# ---- API ---------------------------------------------------------------------------------------
def test_features_head_and_pooling():
    model = _randomize(_tiny())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = model.forward_features(x)
        assert tokens.shape == (2, 17, 32) and model.num_features == 32
        pooled = model.forward_head(tokens, pre_logits=True)
        torch.testing.assert_close(pooled, tokens[:, 0])
        torch.testing.assert_close(model(x), model.head(pooled))
        assert model.get_classifier() is model.head
        model.reset_classifier(0, global_pool="avg")
        torch.testing.assert_close(model(x), tokens[:, 1:].mean(1))
        model.reset_classifier(5)
        assert model(x).shape == (2, 5) and model.global_pool == "avg"
    feats = zoo.create("vit_t_16", **TINY, num_classes=0).eval()
    with torch.no_grad():
        assert feats(x).shape == (2, 32)


def test_no_weight_decay_names():
    model = _tiny()
    names = model.no_weight_decay()
    params = dict(model.named_parameters())
    assert names <= set(params)
    assert {"pos_embed", "cls_token", "norm.weight", "norm.bias", "blocks.0.norm1.weight",
            "blocks.1.attn.qkv.bias", "patch_embed.proj.bias", "head.bias"} <= names
    assert not names & {"blocks.0.attn.qkv.weight", "blocks.0.mlp.fc1.weight", "head.weight",
                        "patch_embed.proj.weight"}


def test_vit_b_16_macs():
    from zoo.flops import count_macs

    with torch.device("meta"):  # shapes only: counting needs no real weights
        model = zoo.create("vit_b_16")
    assert count_macs(model, (1, 3, 224, 224)) == pytest.approx(17.56e9, rel=0.02)
