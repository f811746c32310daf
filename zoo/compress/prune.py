"""Are Sixteen Heads Really Better than One? (Michel, Levy and Neubig, NeurIPS 2019, arXiv 1905.10650).

Attention-head pruning for ViT, DeiT (plain and distilled) and Swin v1/v2. A head's importance is
the expected ``|dL/d xi_h|`` of a gate ``xi_h = 1`` multiplied into its output (here: a forward
pre-hook on the output projection, so model code is untouched), normalised per layer by its L2
norm, and the least important heads are removed globally (the paper's one-shot variant: scores are
measured once on the full model). Removal is structural: the head's rows
of ``qkv`` (Swin v2: of ``q_bias`` / ``v_bias``), its columns of ``proj``, and its slice of Swin's
relative position bias table (v1) or cpb MLP output and ``logit_scale`` (v2) are cut out and
``num_heads`` lowered, so the model is smaller and faster and still a plain module.

A pruned model's ``state_dict`` loads back through ``zoo.create(name, pretrained=path)``: the
loader calls :func:`match_heads`, which reads each block's head count from the checkpoint's
``proj.weight`` and shrinks the fresh model to it first.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..accel.cache import clear
from ..models.swin import WindowAttention
from ..models.vit import Attention

__all__ = ["prune_heads", "head_importance", "head_modules", "match_heads", "slice_heads"]

PRUNABLE = (Attention, WindowAttention)  # WindowAttentionV2 and the accel twins are subclasses


def head_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Block name (``"blocks.3"``, ``"layers.2.blocks.1"``) -> its prunable attention module.

    A block repeated by ``share_layers`` appears once, under its first name.
    """
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, PRUNABLE):
            out[name[: -len(".attn")] if name.endswith(".attn") else name] = m
    return out


def _check_prunable(model: nn.Module) -> dict[str, nn.Module]:
    mods = head_modules(model)
    if not mods:
        raise ValueError(f"{type(model).__name__} has no attention heads to prune: prune_heads supports the "
                         f"softmax attention of ViT / DeiT (attn='softmax') and Swin v1 / v2 windows.")
    return mods


def _param(old: nn.Parameter, value: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(value.detach().clone(), requires_grad=old.requires_grad)


def slice_heads(attn: nn.Module, keep: Sequence[int]) -> None:
    """Keep only heads ``keep`` (indices into the current heads) of one attention module, in place.

    ``qkv`` rows are laid out ``[3, heads, head_dim]`` and ``proj`` columns ``[heads, head_dim]``
    (the order the forward's ``view`` reads them in).
    """
    H, hd = attn.num_heads, attn.head_dim
    idx = torch.as_tensor(sorted(keep), dtype=torch.long, device=attn.proj.weight.device)
    k = len(idx)

    def rows(t: torch.Tensor, groups: int) -> torch.Tensor:  # [groups * H * hd, ...] -> [groups * k * hd, ...]
        return t.reshape(groups, H, hd, *t.shape[1:])[:, idx].reshape(groups * k * hd, *t.shape[1:])

    qkv, proj = attn.qkv, attn.proj
    qkv.weight = _param(qkv.weight, rows(qkv.weight, 3))
    if qkv.bias is not None:
        qkv.bias = _param(qkv.bias, rows(qkv.bias, 3))
    qkv.out_features = 3 * k * hd
    proj.weight = _param(proj.weight, proj.weight.reshape(proj.out_features, H, hd)[:, idx].flatten(1))
    proj.in_features = k * hd
    if getattr(attn, "relative_position_bias_table", None) is not None:  # v1: [T, heads]
        attn.relative_position_bias_table = _param(attn.relative_position_bias_table,
                                                   attn.relative_position_bias_table[:, idx])
    if hasattr(attn, "logit_scale"):  # v2: per-head scale [heads, 1, 1], cpb MLP out [heads, 512]
        attn.logit_scale = _param(attn.logit_scale, attn.logit_scale[idx])
        last = attn.cpb_mlp[-1]
        last.weight = _param(last.weight, last.weight[idx])
        if last.bias is not None:
            last.bias = _param(last.bias, last.bias[idx])
        last.out_features = k
        for name in ("q_bias", "v_bias"):
            if getattr(attn, name, None) is not None:
                setattr(attn, name, _param(getattr(attn, name), rows(getattr(attn, name), 1)))
    attn.num_heads = k
    clear(attn)  # zoo.accel's cached masks / low-precision weights belong to the old shapes
    for m in attn.modules():
        clear(m)


def _gate_hook(head_dim: int, gates: list):
    """Multiply a fresh gate of ones ``[rows, heads]`` into the proj input ``[rows, ..., heads * hd]``.

    One gate row per leading row (an image for ViT, a window for Swin) makes the gate's gradient
    per example, so its absolute value can be taken before averaging over the data, as the paper's
    ``E_x |dL(x) / d xi_h|``. A fresh gate per call covers blocks called twice (``share_layers``).
    """
    def hook(module, args):
        x = args[0]
        H = x.shape[-1] // head_dim
        gate = torch.ones(x.shape[0], H, device=x.device, requires_grad=True)
        gates.append(gate)
        g = gate.to(x.dtype).view(x.shape[0], *(1,) * (x.ndim - 2), H, 1)  # rows, 1.., heads, 1
        return ((x.unflatten(-1, (H, head_dim)) * g).flatten(-2),) + tuple(args[1:])
    return hook


def head_importance(model: nn.Module, data: Iterable, *, loss_fn: Callable | None = None,
                    normalize: bool = True) -> dict[str, torch.Tensor]:
    """Michel et al.'s head importance: ``sum over examples of |dL(x) / d gate_h|``.

    The model runs in eval mode (no dropout, DeiT distilled returns one logit tensor) with gates of
    ones multiplied into each output projection's input (a forward pre-hook: model code is not
    touched); only the gates' gradients are computed (the parameters' ``.grad`` are left alone).

    Args:
        model: a ViT / DeiT / Swin (plain or ``zoo.accel``-ed).
        data: iterable of ``(x, y)`` batches, ``x`` ``[B, 3, H, W]``, ``y`` ``[B]`` class indices.
        loss_fn: ``loss_fn(logits, y)``, a sum or mean over the batch; default cross-entropy.
        normalize: divide each block's scores by their L2 norm (the paper's layer normalisation).

    Returns:
        block name -> ``[heads]`` float32 scores on the CPU (higher: more important).
    """
    mods = _check_prunable(model)
    loss_fn = loss_fn or F.cross_entropy
    device = next(model.parameters()).device
    gates = {n: [] for n in mods}
    hooks = [m.proj.register_forward_pre_hook(_gate_hook(m.head_dim, gates[n])) for n, m in mods.items()]
    scores = {n: torch.zeros(m.num_heads, device=device) for n, m in mods.items()}
    was_training, batches = model.training, 0
    model.eval()
    try:
        with torch.enable_grad():
            for x, y in data:
                for g in gates.values():
                    g.clear()
                out = model(x.to(device))
                out = out[0] if isinstance(out, (tuple, list)) else out
                flat = [g for n in mods for g in gates[n]]
                grads = dict(zip(map(id, flat), torch.autograd.grad(loss_fn(out.float(), y.to(device)), flat)))
                B = x.shape[0]
                for n in mods:
                    per_example = 0
                    for gate in gates[n]:  # rows are B images, or B * nW windows batch-major (Swin)
                        d = grads[id(gate)]
                        per_example = per_example + (d.view(B, -1, d.shape[-1]).sum(1) if d.shape[0] % B == 0
                                                     else d.sum(0, keepdim=True))
                    scores[n] += per_example.abs().sum(0)
                batches += 1
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if not batches:
        raise ValueError("head_importance: data gave no (x, y) batch.")
    if normalize:
        scores = {n: s / s.norm().clamp_min(1e-12) for n, s in scores.items()}
    return {n: s.cpu() for n, s in scores.items()}


def _plan_ratio(mods: Mapping[str, nn.Module], importance: Mapping[str, torch.Tensor],
                ratio: float) -> dict[str, list[int]]:
    """Heads to drop: the globally lowest scores, ``round(ratio * total)`` of them, keeping one per block."""
    missing = sorted(set(mods) - set(importance))
    if missing:
        raise ValueError(f"importance has no scores for blocks {missing[:4]}.")
    ranked = []
    for n, m in mods.items():
        s = torch.as_tensor(importance[n], dtype=torch.float32).flatten()
        if s.numel() != m.num_heads:
            raise ValueError(f"importance[{n!r}] has {s.numel()} scores for {m.num_heads} heads.")
        ranked += [(float(v), n, h) for h, v in enumerate(s)]
    ranked.sort()
    total = len(ranked)
    target = min(int(round(ratio * total)), total - len(mods))
    left = {n: m.num_heads for n, m in mods.items()}
    drop: dict[str, list[int]] = {}
    for _, n, h in ranked:
        if target <= 0:
            break
        if left[n] > 1:
            drop.setdefault(n, []).append(h)
            left[n] -= 1
            target -= 1
    return drop


def _check_heads(mods: Mapping[str, nn.Module], heads: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
    out = {}
    for n, idx in heads.items():
        key = n[: -len(".attn")] if n.endswith(".attn") else n
        if key not in mods:
            raise ValueError(f"heads: no prunable block {n!r}; blocks are {list(mods)[:6]}"
                             f"{' ...' if len(mods) > 6 else ''} (see zoo.compress.prune.head_modules).")
        H = mods[key].num_heads
        idx = sorted({int(i) for i in idx})
        bad = [i for i in idx if not 0 <= i < H]
        if bad:
            raise ValueError(f"heads[{n!r}]: head indices {bad} out of range: the block has {H} heads (0..{H - 1}).")
        if len(idx) >= H:
            raise ValueError(f"heads[{n!r}] prunes all {H} heads: keep at least one head per block.")
        out[key] = idx
    return out


def prune_heads(model: nn.Module, heads: Mapping[str, Sequence[int]] | None = None, *, ratio: float | None = None,
                data: Iterable | None = None, importance: Mapping[str, torch.Tensor] | None = None,
                loss_fn: Callable | None = None) -> nn.Module:
    """Remove attention heads from a ViT / DeiT / Swin in place and return it.

    Either name the heads, or give a ``ratio`` of all heads to remove with ``data`` (importance
    measured by :func:`head_importance`) or precomputed ``importance`` scores (e.g. random ones,
    for a baseline). Indices count the block's current heads, from 0.

    Args:
        model: the model; its ``state_dict`` afterwards has the smaller shapes.
        heads: ``{block name: [head indices to remove]}``, e.g. ``{"blocks.0": [1, 2]}``.
        ratio: in (0, 1): the fraction of all heads to remove, globally least important first; every
            block keeps at least one head (so fewer are removed when the ratio would empty a block).
        data: iterable of ``(x, y)`` batches for the importance.
        importance: ``{block name: [heads] scores}`` instead of ``data``.
        loss_fn: the importance loss, ``loss_fn(logits, y)`` (default cross-entropy).

    Returns:
        ``model``, with ``model.pruned_heads``: ``{block name: number of heads removed}`` (cumulative).

    Raises:
        ValueError: a model without prunable attention (a CNN), ``ratio`` outside (0, 1), neither or
            both of ``heads`` / ``ratio``, an unknown block, a head index out of range, a block left
            with no head, or ``ratio`` without ``data`` / ``importance``.
    """
    mods = _check_prunable(model)
    if (heads is None) == (ratio is None):
        raise ValueError("prune_heads: pass either heads={block: [indices]} or ratio=<fraction> (with data=), not "
                         f"{'both' if heads is not None else 'neither'}.")
    if ratio is not None:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
            raise ValueError(f"prune_heads: ratio must be a fraction in (0, 1) of the heads to remove, got {ratio!r}.")
        if (data is None) == (importance is None):
            raise ValueError("prune_heads: ratio= needs exactly one of data= (batches of (x, y) to measure head "
                             "importance on) or importance= (scores per block).")
        if importance is None:
            importance = head_importance(model, data, loss_fn=loss_fn)
        drop = _plan_ratio(mods, importance, float(ratio))
    else:
        drop = _check_heads(mods, heads)
    record = dict(getattr(model, "pruned_heads", {}))
    for n, idx in drop.items():
        m = mods[n]
        slice_heads(m, [h for h in range(m.num_heads) if h not in set(idx)])
        record[n] = record.get(n, 0) + len(idx)
    model.pruned_heads = record
    return model


def match_heads(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Shrink the model's attention blocks to the head counts of a pruned checkpoint, in place.

    Each block's count is read from ``<block>.attn.proj.weight`` (``[C, heads * head_dim]``); a block
    the checkpoint has more heads for, or no key for, is left as is (the strict load then names it).
    The kept heads are the first ones: their values are about to be overwritten by the checkpoint.

    Returns:
        The names of the blocks that were shrunk.
    """
    done = []
    for name, m in model.named_modules():
        w = state_dict.get(f"{name}.proj.weight") if isinstance(m, PRUNABLE) else None
        if w is None or w.ndim != 2 or w.shape[1] % m.head_dim:
            continue
        k = w.shape[1] // m.head_dim
        if 0 < k < m.num_heads:
            slice_heads(m, range(k))
            done.append(name[: -len(".attn")] if name.endswith(".attn") else name)
    return done
