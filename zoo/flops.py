"""Multiply-add counting on top of ``torch.utils.flop_counter.FlopCounterMode``.

``FlopCounterMode`` counts matmuls, convolutions and the CUDA flash / efficient / cuDNN attention
kernels, but on CPU ``scaled_dot_product_attention`` dispatches to
``aten._scaled_dot_product_flash_attention_for_cpu``, which it counts as zero. This module adds
that kernel (and its backward) with the formula the CUDA kernels use, so the count is the same
on every device, and the fused ``nn.MultiheadAttention`` inference fast path
(``aten._native_multi_head_attention``, used by torchvision's ViT under ``no_grad``). On the ``meta`` device SDPA decomposes into two ``bmm``s and gives the same number.

Counts are multiply-adds (MACs): 1 MAC = 2 FLOPs. They match torchvision's ``_ops`` metadata
(e.g. ``Swin_T_Weights.IMAGENET1K_V1.meta["_ops"] == 4.491``, which is in GMACs).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_macs", "count_flops", "sdpa_macs"]

aten = torch.ops.aten


def sdpa_macs(query_shape, key_shape, value_shape) -> int:
    """MACs of ``softmax(q @ k^T) @ v``: ``B*H*Lq*Lk*(Dqk + Dv)``.

    Args:
        query_shape: ``[..., Lq, Dqk]`` (leading dims are batch and heads).
        key_shape: ``[..., Lk, Dqk]``.
        value_shape: ``[..., Lk, Dv]``.
    """
    batch_heads = math.prod(query_shape[:-2])
    lq, dqk = query_shape[-2:]
    lk, dv = key_shape[-2], value_shape[-1]
    return batch_heads * lq * lk * (dqk + dv)


def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    # q @ k^T and attn @ v: 2 FLOPs per MAC, as torch's CUDA sdpa formula counts.
    return 2 * sdpa_macs(query_shape, key_shape, value_shape)


def _sdpa_cpu_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                            **kwargs) -> int:
    # Recompute q @ k^T, then grad_attn, grad_v, grad_q, grad_k: five matmuls, as torch counts
    # for the CUDA backward kernels. Written as the forward count of the (q,k) and (attn,v) pairs.
    batch_heads = math.prod(query_shape[:-2])
    lq, dqk = query_shape[-2:]
    lk, dv = key_shape[-2], value_shape[-1]
    macs = batch_heads * lq * lk * (3 * dqk + 2 * dv)
    return 2 * macs


def _native_mha_flop(query_shape, key_shape, value_shape, embed_dim, num_head, *args, out_shape=None,
                     **kwargs) -> int:
    # nn.MultiheadAttention's inference fast path (torchvision ViT in eval + no_grad) is one fused
    # op: q/k/v projections, attention, output projection. Shapes [B, L, E].
    *batch, lq, e = query_shape
    lk = key_shape[-2]
    b = math.prod(batch)
    proj = b * (lq + 2 * lk) * e * e + b * lq * e * e
    attn = b * lq * lk * 2 * e
    return 2 * (proj + attn)


def _onednn_linear_flop(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    # zoo.accel's fused oneDNN linear (+ bias, + GELU) in CPU inference: x [..., in], w [out, in].
    return 2 * math.prod(x_shape[:-1]) * w_shape[0] * w_shape[1]


def _onednn_conv_flop(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    # zoo.accel's fused oneDNN conv (+ bias, + GELU) in CPU inference: w [out, in / groups, kh, kw],
    # one MAC per weight element per output position.
    return 2 * x_shape[0] * math.prod(out_shape[2:]) * math.prod(w_shape)


def _custom_mapping() -> dict:
    mapping = {aten._native_multi_head_attention: _native_mha_flop}
    linear = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
    if linear is not None:
        mapping[linear] = _onednn_linear_flop
    conv = getattr(getattr(torch.ops, "mkldnn", None), "_convolution_pointwise", None)
    if conv is not None:
        mapping[conv] = _onednn_conv_flop
    fwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is not None:
        mapping[fwd] = _sdpa_cpu_flop
    if bwd is not None:
        mapping[bwd] = _sdpa_cpu_backward_flop
    return mapping


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def count_flops(
    model: nn.Module,
    inputs: torch.Tensor | tuple[int, ...] = (1, 3, 224, 224),
    *,
    backward: bool = False,
) -> int:
    """FLOPs (2 per multiply-add) of one forward (and, with ``backward``, one backward) pass.

    Args:
        model: any module; run in eval mode for the count, its mode restored afterwards.
        inputs: a tensor, or a shape for a zero tensor made on the model's device (``meta``
            models give a free count: nothing is computed).
        backward: also count the backward pass of ``output.sum()``.

    Returns:
        Total FLOPs as an int (matmuls, convolutions and attention; elementwise ops are free).
    """
    x = inputs if isinstance(inputs, torch.Tensor) else torch.zeros(inputs, device=_model_device(model))
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False, custom_mapping=_custom_mapping())
        with counter, torch.set_grad_enabled(backward):
            out = model(x)
            if backward:
                out = out if isinstance(out, torch.Tensor) else out[0]
                out.float().sum().backward()
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def count_macs(model: nn.Module, inputs: torch.Tensor | tuple[int, ...] = (1, 3, 224, 224)) -> int:
    """Multiply-adds of one forward pass of ``model`` on ``inputs`` (a tensor or a shape).

    Example:
        >>> count_macs(nn.Linear(8, 4), (2, 8))
        64
    """
    return count_flops(model, inputs) // 2
