"""Linear attention in ViT/DeiT (zoo.models.vit_attn): the maths against explicit formulas, any input
size, bad input, capture, accel, features and a training step through train.py."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import zoo
from zoo.models.vit import Attention
from zoo.models.vit_attn import EfficientAttention, LinformerAttention

TINY = dict(img_size=64, embed_dim=32, depth=2, num_heads=2, num_classes=5)  # 1 + 16 tokens


def _tiny(attn: str, **kw):
    torch.manual_seed(0)
    return zoo.create("vit_t_16", attn=attn, **{**TINY, **kw})


def _qkv(m, x):
    B, N, C = x.shape
    q, k, v = m.qkv(x).view(B, N, 3, m.num_heads, m.head_dim).permute(2, 0, 3, 1, 4)
    return q, k, v  # B, heads, N, hd each


def _merge(out, m):
    B, _, N, _ = out.shape
    return m.proj(out.transpose(1, 2).reshape(B, N, -1))


def test_choices_and_default_unchanged():
    soft = zoo.create("vit_t_16", **TINY)
    assert all(zoo.accel.PLAIN.get(type(b.attn), type(b.attn)) is Attention for b in soft.blocks) and soft.attn == "softmax"
    lin = _tiny("linformer", attn_kwargs={"k": 8})
    assert all(isinstance(b.attn, LinformerAttention) for b in lin.blocks)
    assert lin.blocks[0].attn.proj_e.shape == (8, 17)
    # Same names as softmax attention plus the two projections, so a softmax checkpoint maps across.
    assert set(lin.state_dict()) - set(soft.state_dict()) == {f"blocks.{i}.attn.proj_{p}" for i in range(2) for p in "ef"}
    assert set(_tiny("efficient").state_dict()) == set(soft.state_dict())
    assert zoo.create("vit_s_16", attn="linformer", attn_kwargs={"k": 64}).blocks[0].attn.proj_f.shape == (64, 197)
    assert _tiny("linformer").blocks[0].attn.k == 17  # default min(64, N)
    assert zoo.create("deit_t_16_distilled", attn="linformer", img_size=64).blocks[0].attn.proj_e.shape == (18, 18)


def test_bad_input_names_the_constraint():
    with pytest.raises(ValueError, match=r"k=300 is larger than the token count N=197"):
        zoo.create("vit_s_16", attn="linformer", attn_kwargs={"k": 300})
    with pytest.raises(ValueError, match=r"'efficient', 'linformer', 'softmax'"):
        zoo.create("vit_t_16", attn="performer")
    with pytest.raises(TypeError):
        _tiny("linformer", attn_kwargs={"kk": 4})
    with pytest.raises(TypeError):
        _tiny("softmax", attn_kwargs={"k": 4})
    model = _tiny("linformer", attn_kwargs={"k": 12}).eval()
    with pytest.raises(ValueError, match=r"k=12 is larger than the token count N=5"):
        model(torch.randn(1, 3, 32, 32))


def test_linformer_matches_explicit_formula_at_native_and_other_lengths():
    torch.manual_seed(0)
    m = LinformerAttention(32, 4, num_tokens=17, k=6).eval()
    for n in (17, 29):
        x = torch.randn(2, n, 32)
        q, k, v = _qkv(m, x)
        e, f = m.seq_projections(n)
        assert e.shape == f.shape == (6, n)
        if n == 17:
            assert e is m.proj_e and f is m.proj_f
        else:  # linear along the token axis, scaled by N0 / N
            want = F.interpolate(m.proj_e[None], size=n, mode="linear", align_corners=False)[0] * 17 / n
            torch.testing.assert_close(e, want)
        kp, vp = torch.einsum("kn,bhnd->bhkd", e, k), torch.einsum("kn,bhnd->bhkd", f, v)
        attn = (q @ kp.transpose(-2, -1) / 8**0.5).softmax(-1)  # B, heads, N, k
        with torch.no_grad():
            torch.testing.assert_close(m(x), _merge(attn @ vp, m))
            torch.testing.assert_close(m.attention_weights(x), attn)


def test_linformer_resampling_keeps_row_mass():
    m = LinformerAttention(8, 2, num_tokens=10, k=3)
    with torch.no_grad():
        m.proj_e.fill_(0.5)
    e, _ = m.seq_projections(40)
    torch.testing.assert_close(e.sum(-1), torch.full((3,), 5.0))  # 10 * 0.5, whatever N


def test_efficient_attention_matches_explicit_formula_and_weights_are_stochastic():
    torch.manual_seed(0)
    m = EfficientAttention(32, 4).eval()
    x = torch.randn(2, 23, 32)
    q, k, v = _qkv(m, x)
    a = q.softmax(-1) @ k.softmax(-2).transpose(-2, -1)  # B, heads, N, N
    with torch.no_grad():
        torch.testing.assert_close(m(x), _merge(a @ v, m))
        w = m.attention_weights(x)
    torch.testing.assert_close(w, a)
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 23))


@pytest.mark.parametrize("attn", ["linformer", "efficient"])
def test_vit_s_runs_at_224_and_640(attn):
    torch.manual_seed(0)
    model = zoo.create("vit_s_16", attn=attn, depth=1, num_classes=3).eval()  # full width, one block: cheap
    with torch.no_grad():
        for side in (224, 640):
            out = model(torch.randn(1, 3, side, side))
            assert out.shape == (1, 3) and torch.isfinite(out).all()


@pytest.mark.parametrize("attn", ["linformer", "efficient"])
def test_gradients_at_another_size_and_bf16(attn):
    model = _tiny(attn).train()
    x = torch.randn(2, 3, 48, 96)  # 1 + 18 tokens: Linformer resamples
    model(x).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    model.eval()
    with torch.no_grad():
        want = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(x).float()
    assert (got - want).abs().max() <= 0.05 * want.abs().max()


@pytest.mark.parametrize("attn", ["linformer", "efficient"])
def test_accel_equals_plain_and_features(attn):
    fast = _tiny(attn).eval()
    plain = zoo.accel.undo(copy.deepcopy(fast))
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        want, got = plain(x), fast(x)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()
    net = zoo.create("vit_t_16", attn=attn, **TINY, features_only=True, out_indices=(0, 1))
    assert [m.shape for m in net(x)] == [(1, 32, 4, 6)] * 2


def test_capture_linformer_gives_the_k_length_map():
    model = _tiny("linformer", attn_kwargs={"k": 8}).eval()
    x = torch.randn(2, 3, 64, 80)  # 1 + 20 tokens
    with torch.no_grad(), zoo.capture_attention(model, keep_full=True) as maps:
        out = model(x)
    with torch.no_grad():
        torch.testing.assert_close(model(x), out)
    m = maps["blocks.0.attn"]
    assert maps.kinds["blocks.0.attn"] == "projected" and m.shape == (2, 2, 21, 8)
    torch.testing.assert_close(m.sum(-1), torch.ones(2, 2, 21))
    assert "rollout" not in maps  # no token-to-token map to multiply
    square = _tiny("linformer", attn_kwargs={"k": 17}).eval()  # k == N: still the projected map
    with torch.no_grad(), zoo.capture_attention(square) as maps:
        square(torch.randn(1, 3, 64, 64))
    assert maps.kinds["blocks.0.attn"] == "projected" and "rollout" not in maps


def test_capture_efficient_gives_equivalent_weights_and_rollout():
    model = _tiny("efficient").eval()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad(), zoo.capture_attention(model, keep_full=True) as maps:
        model(x)
    assert maps.kinds["blocks.1.attn"] == "cls" and maps["blocks.1.attn"].shape == (2, 2, 4, 5)
    full = maps.full["blocks.1.attn"]
    torch.testing.assert_close(full.sum(-1), torch.ones(2, 2, 21))
    torch.testing.assert_close(maps["blocks.1.attn"], full[:, :, 0, 1:].reshape(2, 2, 4, 5))
    assert maps["rollout"].shape == (2, 4, 5)


@pytest.mark.parametrize("attn", ["linformer", "efficient"])
def test_one_training_step_through_train_py(train_cfg, attn):
    import train

    cfg = train_cfg("model=vit_s_16", f"+model.kwargs.attn={attn}", "+model.kwargs.depth=2", "+trainer.fast_dev_run=1",
                    "logger=[]", "module.ema=null")
    assert train.train(cfg)["global_step"] == 1


def test_linformer_fine_tunes_from_a_softmax_checkpoint(tmp_path):
    """A softmax ViT checkpoint loads into the Linformer model: every shared tensor is loaded, the
    projections (which the checkpoint cannot have) keep their init and are reported as new."""
    soft = zoo.create("vit_t_16", img_size=32, num_classes=10)
    path = tmp_path / "soft.pth"
    torch.save(soft.state_dict(), path)
    with pytest.warns(UserWarning, match="proj_e"):
        lin = zoo.create("vit_t_16", img_size=32, num_classes=10, attn="linformer", attn_kwargs={"k": 4},
                         pretrained=str(path))
    new = set(lin.load_report.new)
    assert new == {f"blocks.{i}.attn.{p}" for i in range(len(lin.blocks)) for p in ("proj_e", "proj_f")}
    for k, v in soft.state_dict().items():
        assert torch.equal(lin.state_dict()[k], v), k
    # A Linformer checkpoint loads strictly: nothing new, nothing warned.
    torch.save(lin.state_dict(), path)
    again = zoo.create("vit_t_16", img_size=32, num_classes=10, attn="linformer", attn_kwargs={"k": 4},
                       pretrained=str(path))
    assert not again.load_report.new
    assert torch.equal(again.blocks[0].attn.proj_e, lin.blocks[0].attn.proj_e)
