"""DeiT: parity with timm (plain and distilled, 224 and another size), the distillation head's train
and eval outputs, features and attention capture with two prefix tokens, and one training step."""
from __future__ import annotations

import lightning as L
import pytest
import timm
import torch
from parity import assert_logits_close as _close
from parity import perturb as _randomize
from timm.models.vision_transformer import checkpoint_filter_fn as timm_filter_fn

import zoo
from zoo.models.deit import DistilledVisionTransformer

TIMM = {
    "deit_t_16": "deit_tiny_patch16_224", "deit_s_16": "deit_small_patch16_224", "deit_b_16": "deit_base_patch16_224",
    "deit_t_16_distilled": "deit_tiny_distilled_patch16_224",
    "deit_s_16_distilled": "deit_small_distilled_patch16_224",
    "deit_b_16_distilled": "deit_base_distilled_patch16_224",
}
TINY = dict(img_size=64, embed_dim=32, depth=2, num_heads=2)


def _x(size, seed: int = 1) -> torch.Tensor:
    h, w = (size, size) if isinstance(size, int) else size
    return torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_registered_names_and_shapes_match_timm():
    assert zoo.list_models("deit*") == sorted(TIMM)
    for name, timm_name in TIMM.items():
        with torch.device("meta"):
            ours, ref = zoo.create(name), timm.create_model(timm_name)
        assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}, name
        assert isinstance(ours, DistilledVisionTransformer) == ("distilled" in name)


def _parity(name: str, tmp_path) -> None:
    """The timm state dict, loaded through the catalog's path (zoo.create(pretrained=file) and the
    registered filter), gives timm's logits: at 224, at 160 with the model built for 160 (positions
    resampled on load), and at 160 x 208 through the 224 model (positions resampled per forward)."""
    ref = _randomize(timm.create_model(TIMM[name]))
    path = tmp_path / "ref.pth"
    torch.save(ref.state_dict(), path)
    model = zoo.create(name, pretrained=str(path)).eval()
    with torch.no_grad():
        _close(ref(_x(224)), model(_x(224)))
    ref160 = timm.create_model(TIMM[name], img_size=160).eval()
    ref160.load_state_dict(timm_filter_fn(ref.state_dict(), ref160))
    model160 = zoo.create(name, pretrained=str(path), img_size=160).eval()
    with torch.no_grad():
        _close(ref160(_x(160)), model160(_x(160)))
    dyn = timm.create_model(TIMM[name], dynamic_img_size=True).eval()
    dyn.load_state_dict(ref.state_dict())
    with torch.no_grad():
        _close(dyn(_x((160, 208))), model(_x((160, 208))))


@pytest.mark.parametrize("name", ["deit_t_16", "deit_t_16_distilled"])
def test_parity_timm(name, tmp_path):
    _parity(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["deit_s_16", "deit_b_16", "deit_s_16_distilled", "deit_b_16_distilled"])
def test_parity_timm_large(name, tmp_path):
    _parity(name, tmp_path)


def test_distilled_heads_train_and_eval_outputs():
    model = _randomize(zoo.create("deit_t_16_distilled", **TINY, num_classes=7, fast=False))
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        tokens = model.forward_features(x)  # B, 2 + 4 * 5, C
        assert tokens.shape == (2, 22, 32)
        cls, dist = model.head(tokens[:, 0]), model.head_dist(tokens[:, 1])
        torch.testing.assert_close(model(x), (cls + dist) / 2)  # eval: the mean
        torch.testing.assert_close(model.forward_head(tokens, pre_logits=True), (tokens[:, 0] + tokens[:, 1]) / 2)
        model.train()
        assert torch.is_tensor(model(x))  # timm's default: distilled training off
        model.set_distilled_training(True)
        out = model(x)
        assert isinstance(out, tuple) and len(out) == 2
        torch.testing.assert_close(out[0], cls)
        torch.testing.assert_close(out[1], dist)
        model.eval()
        assert torch.is_tensor(model(x))  # eval mode is the mean even with distilled training on


def test_distilled_api_pooled_reset_and_bad_pool(tmp_path):
    model = zoo.create("deit_t_16_distilled", **TINY, num_classes=0).eval()
    x = torch.randn(1, 3, 64, 64)
    assert model(x).shape == (1, 32)
    model.reset_classifier(5)
    assert model(x).shape == (1, 5) and model.head_dist.out_features == 5
    assert "dist_token" in model.no_weight_decay() and "cls_token" in model.no_weight_decay()
    with pytest.raises(ValueError, match="global_pool must be 'token'"):
        zoo.create("deit_t_16_distilled", **TINY, global_pool="avg")
    with pytest.raises(ValueError, match="global_pool must be 'token'"):
        model.reset_classifier(5, global_pool="avg")
    # A 1000-class file into a 10-class model: both heads start fresh, the rest loads.
    src = zoo.create("deit_t_16_distilled", **TINY)
    torch.save(src.state_dict(), tmp_path / "w.pth")
    with pytest.warns(UserWarning, match="classifier does not match"):
        ten = zoo.create("deit_t_16_distilled", **TINY, num_classes=10, pretrained=str(tmp_path / "w.pth"))
    assert ten.head_dist.out_features == 10
    torch.testing.assert_close(ten.dist_token, src.dist_token)


def test_features_and_intermediates_match_timm_with_two_prefix_tokens():
    ref = _randomize(timm.create_model(TIMM["deit_t_16_distilled"], img_size=64, depth=3, dynamic_img_size=True))
    model = zoo.create("deit_t_16_distilled", img_size=64, depth=3).eval()
    model.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        want = ref.forward_intermediates(x, indices=[0, 2], intermediates_only=True)
        got = model.forward_intermediates(x, indices=[0, 2], intermediates_only=True)
        for w, g in zip(want, got):
            assert g.shape == (2, 192, 4, 6)
            _close(w, g)
        net = zoo.create("deit_t_16_distilled", img_size=64, depth=3, features_only=True, out_indices=(1, 2))
        assert [m.shape for m in net(x)] == [(2, 192, 4, 6)] * 2


def test_capture_attention_reads_past_both_prefix_tokens():
    model = _randomize(zoo.create("deit_t_16_distilled", **TINY))
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad(), zoo.capture_attention(model) as maps:
        out = model(x)
    with torch.no_grad():
        torch.testing.assert_close(model(x), out)  # capture changes nothing
    cls = maps["blocks.1.attn"]
    assert cls.shape == (2, 2, 4, 5) and maps.kinds["blocks.1.attn"] == "cls"
    # The class token's row over the patches: its mass to the two prefix tokens is left out.
    assert (cls.sum((-2, -1)) < 1).all() and (cls > 0).all()
    assert maps["rollout"].shape == (2, 4, 5)


def test_accel_equals_plain_at_another_size():
    fast = _randomize(zoo.create("deit_t_16_distilled", **TINY))
    assert "pos_embed" in zoo.accel.techniques_applied(fast)
    plain = zoo.accel.undo(_randomize(zoo.create("deit_t_16_distilled", **TINY, fast=False)))
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(1, 3, 96, 48)
    with torch.no_grad():
        _close(plain(x), fast(x))
        _close(plain(x), fast(x))  # second call reads the cached table


class _HeadGrads(L.Callback):
    """After the first backward: did the model give two logits, and did both heads get gradients?"""

    def __init__(self):
        self.seen = {}

    def on_after_backward(self, trainer, pl_module):
        m = pl_module.model
        self.seen = {"distilled": m.distilled_training,
                     "head": m.head.weight.grad is not None and m.head.weight.grad.abs().sum() > 0,
                     "head_dist": m.head_dist.weight.grad is not None and m.head_dist.weight.grad.abs().sum() > 0}


def test_one_training_step_trains_both_heads(train_cfg):
    import train

    rec = _HeadGrads()
    cfg = train_cfg("model=deit_t_16_distilled", "+model.kwargs.depth=2", "+trainer.fast_dev_run=1", "logger=[]",
                    "module.ema=null")
    summary = train.train(cfg, callbacks=[rec])
    assert summary["global_step"] == 1
    assert rec.seen == {"distilled": True, "head": True, "head_dist": True}


def test_loss_is_the_mean_of_the_two_heads_losses():
    from zoo.train import ClassificationModule

    module = ClassificationModule({"_target_": "zoo.train.build_model", "name": "deit_t_16_distilled",
                                   "kwargs": dict(TINY)}, num_classes=4, label_smoothing=0.0,
                                  optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1})
    losses = {}
    module.log = lambda name, value, **_: losses.__setitem__(name, value)
    module._count = lambda *a: None
    torch.manual_seed(0)
    batch = {"image": torch.randn(3, 3, 64, 64), "target": torch.tensor([0, 1, 3])}
    module.train()

    class _Opt:
        param_groups = [{"lr": 0.1}]

    with torch.no_grad():
        a, b = module.model(batch["image"])
    module._trainer = type("T", (), {"optimizers": [_Opt()]})()  # a stand-in: only the lr log line reads it
    loss = module.training_step(batch, 0)
    ce = torch.nn.functional.cross_entropy
    torch.testing.assert_close(loss, (ce(a, batch["target"]) + ce(b, batch["target"])) / 2)
