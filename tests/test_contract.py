"""The model contract, for every registered model: a model added to the registry is covered here the
moment it registers (nothing to add), and a renamed or broken one fails instead of skipping.

Each model is built once at its registered architecture and checked on a small input: forward and
backward, finite, a gradient for every parameter, ``num_classes=0`` and ``reset_classifier``,
``features_only``, and accelerated equal to plain (``zoo.accel``).
"""
from __future__ import annotations

import copy

import pytest
import torch
from registry_sets import per_model, representatives

import zoo
from zoo.models.features import features_only

MODELS = zoo.list_models()


def _small_side(name: str) -> int:
    # Small but meaningful: 2x2 final maps for CNNs (32x down), 2x2 patch grids for ViT/16 (4x4 for
    # /32 would not fit), Swin's last stage 2x2 (the window shrinks to it).
    return 64


def _params_m(name: str) -> float:
    with torch.device("meta"):  # counting needs no weights
        return sum(p.numel() for p in zoo.create(name).parameters()) / 1e6


# One model per group of names that differ only in numbers by default, the rest under -m slow
# (tests/registry_sets.py). Full-size builds over 25M parameters (ResNet-50 and up, ViT-B/L, Swin) are slow
# too: they cost most of the time for what they check.
BIG_M = 25.0
REPRESENTATIVES = representatives(MODELS)
PER_MODEL = per_model(MODELS)
SIZED = per_model(MODELS, slow_if=lambda n: _params_m(n) > BIG_M)


def _build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return zoo.create(name, num_classes=5)


def _input(name: str, batch: int = 2) -> torch.Tensor:
    side = _small_side(name)
    torch.manual_seed(1)
    return torch.randn(batch, 3, side, side + 16)  # not square


def test_the_registry_is_not_empty():
    assert len(MODELS) >= 50  # 36 ResNets, 5 ViTs, 6 Swins today: a lost family fails here


@pytest.mark.parametrize("name", SIZED)
def test_forward_backward_gradients_and_fast_equals_plain(name):
    """One build per model (kept no longer than this test): train-mode forward and backward, finite,
    a gradient for every parameter; then eval-mode accelerated output equal to the plain model's."""
    model = _build(name).train()
    x = _input(name)
    out = model(x)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{name}: no gradient for {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    model.zero_grad(set_to_none=True)

    fast = model.eval()
    assert zoo.accel.techniques_applied(fast), f"{name}: zoo.create applied no accel technique"
    plain = zoo.accel.undo(copy.deepcopy(fast))
    assert not any(type(m).__module__.startswith("zoo.accel") for m in plain.modules())
    with torch.no_grad():
        want = plain(x)
        got = fast(x)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()


@pytest.mark.parametrize("name", PER_MODEL)
def test_pooled_features_and_reset_classifier(name):
    with torch.device("meta"):  # shapes only: no weights to initialise
        pooled = zoo.create(name, num_classes=0)
        x = torch.empty(2, 3, 64, 80)
        assert pooled(x).shape == (2, pooled.num_features)
        pooled.reset_classifier(7)
        assert pooled(x).shape == (2, 7) and pooled.get_classifier().out_features == 7
        pooled.reset_classifier(0)
        assert pooled(x).shape == (2, pooled.num_features)


@pytest.mark.parametrize("name", PER_MODEL)
def test_features_only_gives_the_declared_maps(name):
    with torch.device("meta"):
        model = zoo.create(name)
        net = features_only(model)
        x = torch.empty(2, 3, 128, 160)
        maps = net(x)
    info = net.feature_info
    assert len(maps) == len(info.channels()) >= 1
    for m, c, r in zip(maps, info.channels(), info.reduction()):
        assert m.shape[:2] == (2, c), (name, m.shape, c)
        assert m.shape[2] == -(-128 // r) or m.shape[2] == 128 // r, (name, m.shape, r)
    with pytest.raises(ValueError, match="out of range"):
        with torch.device("meta"):
            features_only(zoo.create(name), out_indices=(len(model.feature_info) + 3,))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(n for n in REPRESENTATIVES if _params_m(n) <= 40.0))
def test_traces_to_one_graph(name):
    """Inference under bf16 autocast and a training step each trace into one torch.compile graph
    (tests/test_compile.py checks one member of each family in the default run). One model per group:
    the deeper copies share its code and cost minutes to trace."""
    model = _build(name)
    x = _input(name)
    for train in (False, True):
        torch._dynamo.reset()
        model.train(train)
        grad = torch.enable_grad() if train else torch.inference_mode()
        with grad, torch.autocast("cpu", dtype=torch.bfloat16):
            model(x)
            explained = torch._dynamo.explain(model)(x)
        assert explained.graph_break_count == 0, (name, train, [str(b.reason) for b in explained.break_reasons])
