"""Attention retrofit: load a plain backbone checkpoint into an attention variant, starting as the backbone.

ReZero (Bachlechner et al., arXiv:2003.04887) style gating makes new sigmoid-gated blocks an exact
identity at the start: ``out = x + gamma * (attn(x) - x)`` with ``gamma = 0``. This file holds that
wrapper and the policy saying, per registered block, how it is brought in:

* ``gate`` (se, cbam, eca): a sigmoid gate cannot output exactly 1, so wrap it in :class:`ResidualGate`.
* ``identity`` (gc, nl): the block already returns ``x`` at init (zero-initialised last layer/norm).
* absent (sa): the block replaces a convolution, so no initialisation reproduces the backbone.
"""
from __future__ import annotations

import re

import torch
import torch.nn as nn

from ..registry import get_block, list_blocks

__all__ = ["ResidualGate", "RetrofitError", "POLICY", "attention_modules", "wrap_gates", "gated_prefixes", "plan_retrofit"]

# How each registered block enters a pretrained backbone; blocks not listed are refused.
POLICY = {"se": "gate", "cbam": "gate", "eca": "gate", "gc": "identity", "nl": "identity"}
POLICY.update({"a2": "identity", "ea": "identity", "cc": "identity", "danet": "identity"})  # zero-init residual
_REFUSED = {
    "sa": "'sa' replaces the 3x3 convolutions of the last stage with self-attention, so those backbone "
    "weights have nowhere to go and no initialisation reproduces the backbone's function. Train the sa "
    "model from scratch, or load an sa checkpoint.",
    "psa": "'psa' replaces every 3x3 convolution by multi-scale grouped convolutions: the backbone's 3x3 "
    "weights have nowhere to go. Train the psa model from scratch, or load a psa checkpoint.",
    "aa": "'aa' replaces the 3x3 convolutions of layer2-layer4 by narrower convolutions next to self-attention: "
    "the backbone's 3x3 weights do not fit. Train the aa model from scratch, or load an aa checkpoint.",
}


class RetrofitError(ValueError):
    """The attention block cannot be retrofitted into a plain backbone checkpoint."""


# Gates that multiply the map (sigmoid, tanh or energy): wrapped in ResidualGate to start as the identity.
# Coordinate Attention multiplies by two sigmoid gates (coord_mobilenet_v2 from torchvision's weights).
POLICY.update(dict.fromkeys(("coord", "ese", "ge", "ceca", "fca", "srm", "simam", "triplet", "bam", "sge",
                             "shuffle", "scse", "lka", "bat"), "gate"))
POLICY["gct"] = "identity"  # 1 + tanh(gamma * x + beta) with gamma = beta = 0 at init: already the identity
for _name in ("sk", "splat", "lambda", "halo"):
    _REFUSED[_name] = (f"'{_name}' replaces 3x3 convolutions of the bottleneck, so the backbone's 3x3 weights "
                       f"have nowhere to go. Train the {_name} model from scratch, or load a {_name} checkpoint.")


class ResidualGate(nn.Module):
    """``out = x + gamma * (block(x) - x)``: a gated block that is the identity while ``gamma == 0``.

    Args:
        block: attention block, ``[B, C, H, W]`` in and out.

    Attributes:
        gamma: learnable scalar, initialised to 0 so the wrapped network starts as the backbone.
    """

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gamma * (self.block(x) - x)


def _block_names() -> dict[type, str]:
    return {get_block(n): n for n in list_blocks()}


def attention_modules(model: nn.Module) -> dict[str, str]:
    """``{module name: block name}`` for every registered attention block in ``model``.

    A block inside a :class:`ResidualGate` is reported under the wrapper's name.
    """
    kinds = _block_names()
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, ResidualGate):
            out[name] = kinds.get(type(m.block), type(m.block).__name__)
        elif type(m) in kinds and not any(name.startswith(p + ".") for p in out):
            out[name] = kinds[type(m)]
    return out


def wrap_gates(model: nn.Module, names) -> list[str]:
    """Replace each module ``name`` of ``model`` by ``ResidualGate(module)``; already wrapped ones are kept."""
    done = []
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        mod = getattr(parent, attr)
        if not isinstance(mod, ResidualGate):
            setattr(parent, attr, ResidualGate(mod))
        done.append(name)
    return done


def gated_prefixes(state_dict: dict[str, torch.Tensor], model: nn.Module | None = None) -> list[str]:
    """Module names saved from a retrofitted model: ``X.gamma`` next to ``X.block.*`` keys.

    A parameter-free block (simam) leaves no ``X.block.*`` key, only ``X.gamma``: with ``model`` given,
    ``X.gamma`` also counts when ``X`` is one of its attention blocks that has no ``gamma`` of its own.
    """
    blocks = {m.group(1) for k in state_dict if (m := re.match(r"(.+)\.block\.", k))}
    if model is not None:
        own = model.state_dict().keys()
        blocks |= {name for name in attention_modules(model) if f"{name}.gamma" not in own}
    return sorted(k[: -len(".gamma")] for k in state_dict if k.endswith(".gamma") and k[: -len(".gamma")] in blocks)


def plan_retrofit(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> dict[str, str]:
    """Prepare ``model`` for a checkpoint that has none of its attention blocks.

    Wraps sigmoid-gated blocks in :class:`ResidualGate` (in place). Does nothing when the checkpoint
    holds any attention weights (then it is loaded as is, strictly).

    Returns:
        ``{module name: block name}`` of the blocks that start new (empty: no retrofit).

    Raises:
        RetrofitError: a block cannot start as the identity (``sa``), or is of an unknown kind.
    """
    attn = attention_modules(model)
    if not attn:
        return {}
    keys = model.state_dict().keys()
    attn_keys = [k for k in keys if any(k.startswith(p + ".") for p in attn)]
    if any(k in state_dict for k in attn_keys):
        return {}
    for name, kind in attn.items():
        if kind in _REFUSED:
            raise RetrofitError(f"{source} is a checkpoint without attention blocks: cannot retrofit. {_REFUSED[kind]}")
        if kind not in POLICY:
            raise RetrofitError(
                f"{source}: no retrofit policy for attention block {kind!r} (at {name}); "
                f"known: {sorted(POLICY)}. Add it to zoo.weights.retrofit.POLICY."
            )
    wrap_gates(model, [n for n, k in attn.items() if POLICY[k] == "gate"])
    return attn
