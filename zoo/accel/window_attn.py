"""Swin window attention: the bias + shift mask cached in inference, attention written out for CPU training.

- **Inference**: the relative-position bias (v2: a 2 x 512 x heads MLP over the coordinate table)
  plus the shift / padding mask is the same for every call at one map geometry; it is built once
  per geometry and dtype and reused while the bias parameters are unchanged (``zoo.accel.cache``).
  The region masks depend on the geometry alone and are cached in training too.
- **CPU training** with a trainable bias: a mask that requires grad keeps CPU SDPA off its flash
  kernel (no mask gradient there). Its math fallback then (a) upcasts bfloat16 q, k, v and the mask
  to float32 matmuls, about 4x slower than bfloat16 ones, and (b) in any dtype needs the mask
  repeated over the batch and runs a "safe" softmax (isneginf / all / where passes for fully
  masked rows, which windows never have): measured 0.68x (bf16) and 0.93x (fp32) timm for a Swin-T
  train step before this path existed. Written out, the matmuls stay in q's dtype, the mask
  broadcasts over the batch, and the softmax runs in float32 as SDPA's does
  (``WindowAttention.attention_probs``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.swin import WindowAttention, WindowAttentionV2
from .cache import CacheOwner, cached
from .cast import cast_params
from .swap import fast_twin

__all__ = ["FastWindowAttention", "FastWindowAttentionV2", "explicit_attention"]


def _bias_needs_grad(m: WindowAttention) -> bool:
    return torch.is_grad_enabled() and any(p.requires_grad for p in m.bias_params())


def explicit_attention(m: WindowAttention, q: torch.Tensor) -> bool:
    """Whether to bypass SDPA: on the CPU while the bias needs a gradient."""
    return q.device.type == "cpu" and _bias_needs_grad(m)


class _Fast(CacheOwner):
    """What both Swin versions' fast twins add to their plain attention."""

    def region_mask(self, geometry, device):
        build = super().region_mask  # geometry alone decides it: cached in training too
        return cached(self, ("region", geometry, device), (), lambda: build(geometry, device), inference_only=False)

    def attn_mask(self, geometry, dtype, device):
        build = super().attn_mask
        return cached(self, ("mask", geometry, dtype, device), self.bias_params(),
                      lambda: build(geometry, dtype, device))

    def attend(self, q, k, v, scale, geometry):
        if not explicit_attention(self, q):
            return super().attend(q, k, v, scale, geometry)
        attn = self.attention_probs(q, k, scale, geometry).to(v.dtype)  # B*nW, heads, N, N
        if self.training and self.attn_drop > 0:
            attn = F.dropout(attn, self.attn_drop)
        return attn @ v  # B*nW, heads, N, head_dim


@fast_twin(WindowAttention, "window_attn")
class FastWindowAttention(_Fast, WindowAttention):
    """Swin v1 window attention with the mask cache and the explicit CPU training path."""


@fast_twin(WindowAttentionV2, "window_attn")
class FastWindowAttentionV2(_Fast, WindowAttentionV2):
    """Swin v2 window attention with the mask cache, the explicit CPU training path, and its qkv
    projection reading the cached low-precision weight (v2 builds the q/v bias itself, so the
    projection is ``F.linear`` on the weight, not a call of the ``qkv`` module)."""

    def _project_qkv(self, x: torch.Tensor) -> torch.Tensor:
        w, _ = cast_params(self.qkv)
        if w is self.qkv.weight:
            return super()._project_qkv(x)
        bias = self.qkv_bias()
        return F.linear(x.to(w.dtype), w, None if bias is None else bias.to(w.dtype))
