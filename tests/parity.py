"""Scaffolding the parity tests share (imported as ``from parity import ...``; tests/ is on sys.path).

Seeded block inputs, weight randomisers (so no comparison passes by zero-init luck), the fidelity
check ``max|out - ref| <= 1e-4 * max|ref|``, and a timm reference paired with the zoo model that
strictly loads its state dict. Every helper keeps the seeds and the order of random draws of the
copies it replaced, so the tests see the same tensors as before.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

import zoo


# ---- blocks -------------------------------------------------------------------------------------
def block_input(c: int = 32, h: int = 13, w: int = 17, seed: int = 0, b: int = 2) -> torch.Tensor:
    """A seeded ``[b, c, h, w]`` standard-normal input (odd default sizes catch square-only code)."""
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed))


def randomize(module: nn.Module, seed: int = 0, small: int = 0) -> None:
    """Overwrite every floating parameter and buffer (BN stats, zero-init gammas and norms included).

    1-D tensors, and any with fewer than ``small`` elements, get U[0.25, 0.75) (positive, as scales and
    variances must be); the rest N(0, 0.3^2). Tensors are visited in sorted state-dict order.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, t in sorted(module.state_dict().items()):
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.25 if t.ndim == 1 or t.numel() < small
                        else torch.randn(t.shape, generator=g) * 0.3)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ---- models -------------------------------------------------------------------------------------
def perturb(model: nn.Module, seed: int = 0) -> nn.Module:
    """Add N(0, 0.05^2) to every parameter (default inits zero biases, heads and norm shifts, where a
    parity check would prove little); returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def randomise_bn(model: nn.Module) -> None:
    """Non-trivial BatchNorm2d statistics and affines, drawn from torch's global generator."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1.0, 0.2)
                m.bias.normal_(0, 0.2)


def close(ref: torch.Tensor, out: torch.Tensor, tol: float = 1e-4) -> None:
    """``max|out - ref| <= tol * max|ref|``."""
    assert (ref - out).abs().max() <= tol * ref.abs().max(), (ref - out).abs().max()


def assert_logits_close(ref: torch.Tensor, out: torch.Tensor) -> None:
    """:func:`close` at 1e-4, after checking the shapes agree and ``ref`` is not trivially small."""
    scale = ref.abs().max().item()
    assert scale > 1e-2, "reference logits are trivial; the comparison would prove nothing"
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() <= 1e-4 * scale


def timm_pair(name: str, timm_name: str | None = None, prepare: Callable[[nn.Module], None] | None = None,
              **kw) -> tuple[nn.Module, nn.Module]:
    """``(ref, ours)`` in eval mode: timm's ``timm_name`` (default ``name``) built under seed 0 with
    ``kw``, ``prepare(ref)`` run on it, and zoo's plain (``fast=False``) ``name`` with the same ``kw``
    loading its state dict strictly (same names)."""
    import timm

    torch.manual_seed(0)
    ref = timm.create_model(timm_name or name, pretrained=False, **kw).eval()
    if prepare is not None:
        prepare(ref)
    ours = zoo.create(name, fast=False, **kw).eval()
    ours.load_state_dict(ref.state_dict())  # same names: strict load
    return ref, ours


def assert_logits_match(ref: nn.Module, ours: nn.Module, sizes) -> None:
    """Same logits (:func:`close`) on a ``[1, 3, h, w]`` normal input for each ``(h, w)`` in ``sizes``."""
    for hw in sizes:
        x = torch.randn(1, 3, *hw)
        with torch.no_grad():
            close(ref(x), ours(x))


def assert_fast_equals_plain(name: str, shape: tuple[int, ...], **kw) -> None:
    """``zoo.create(name)`` applies accel techniques and matches the plain model (:func:`close`)."""
    torch.manual_seed(0)
    fast = zoo.create(name, **kw).eval()
    assert zoo.accel.techniques_applied(fast)
    plain = zoo.create(name, fast=False, **kw).eval()
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(*shape)
    with torch.no_grad():
        close(plain(x), fast(x))


def features_like_timm(name: str, ours: nn.Module, timm_name: str | None = None,
                       keep: Callable[[str], bool] = lambda k: not k.startswith("head")) -> nn.Module:
    """zoo's plain ``features_only`` ``name`` holding ``ours``' weights (the keys ``keep`` accepts),
    after checking its channels and reductions equal timm's ``features_only`` ``timm_name``."""
    import timm

    net = zoo.create(name, features_only=True, fast=False).eval()
    net.model.load_state_dict({k: v for k, v in ours.state_dict().items() if keep(k)})
    tinfo = timm.create_model(timm_name or name, features_only=True).feature_info
    assert net.feature_info.channels() == tinfo.channels()
    assert net.feature_info.reduction() == tinfo.reduction()
    return net


def capture_unchanged(model: nn.Module, x: torch.Tensor):
    """``zoo.capture_attention``'s maps of one no-grad forward of ``model`` on ``x``, after checking that
    capturing leaves the output bit-identical to a plain forward."""
    with torch.no_grad():
        plain = model(x)
        with zoo.capture_attention(model) as maps:
            out = model(x)
    assert torch.equal(out, plain)  # capture leaves the forward alone
    return maps
