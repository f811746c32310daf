"""Attention written out on the CPU where the CPU SDPA kernels are slow for the shape.

Both cases were found with ``torch.profiler`` and measured when this was written (2 cores, SDPA /
written-out time, or throughput for whole models):

- **XCiT's cross-covariance attention** attends across channels: per head a ``d x d`` map over
  ``N`` "features" (the tokens), so SDPA sees a short sequence (``d``, 48 for xcit_t12) with a long
  head dimension (``N``, 196 at 224 px) and takes its math fallback. Written out, ``[8, 4, 48, 196]``:
  inference 1.3x (float32) and 1.7x (bfloat16), forward + backward 1.03x and 2.6x. Taken on the CPU
  in training and inference.
- **PVT v2's spatial-reduction attention** has 49 keys at 224 px in every stage. In low-precision
  training (autocast) the flash kernel's backward is slow for so few keys: forward + backward of
  ``[8, 5, 196, 64]`` queries on 49 keys in bfloat16 is 3.9x faster written out, and a whole
  pvt_v2_b2 bf16 train step 1.12x (pvt_v2_b0 1.21x). In float32 training and in inference SDPA is as
  fast or faster (pvt_v2_b2 fp32 train step 0.99x written out), so it stays there.
- **ViT / DeiT attention** in low-precision CPU training, for the same reason: forward + backward of
  ``[8, 6, 197, 64]`` in bfloat16 is 1.9x faster written out (float32: SDPA is 1.4x faster, kept).

:class:`FastXCA`, :class:`FastSpatialReductionAttention` and :class:`FastAttention` are the fast twins; on other devices and
under ``torch.compile`` they are the plain modules.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.pvt_v2 import SpatialReductionAttention
from ..models.vit import Attention
from ..models.xcit import XCA
from .swap import fast_twin

__all__ = ["FastAttention", "FastXCA", "FastSpatialReductionAttention"]


def _eager_cpu(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and not torch.compiler.is_compiling()


def _low_precision_training(x: torch.Tensor) -> bool:
    """CPU, eager, autograd on, and the attention inputs in bfloat16 / float16 (autocast or a cast model)."""
    if not (_eager_cpu(x) and torch.is_grad_enabled()):
        return False
    if torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu") in (torch.bfloat16, torch.float16)
    return x.dtype in (torch.bfloat16, torch.float16)


# Written out, training keeps the [B, heads, N, N_k] probabilities for backward (float32 under
# autocast), where flash attention keeps none: above this many scores per head (e.g. ViT beyond
# ~512 tokens) the memory costs more than the speed is worth, and SDPA runs.
MAX_SCORES = 1 << 18


def _sdpa_or_written_out(q, k, v, scale: float, p: float, training: bool) -> torch.Tensor:
    if q.shape[-2] * k.shape[-2] > MAX_SCORES:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=p if training else 0.0, scale=scale)
    return _attend((q @ k.transpose(-2, -1)) * scale, v, p, training)


def _attend(attn: torch.Tensor, v: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    attn = attn.softmax(-1).to(v.dtype)  # autocast's softmax is float32; the product runs in v's dtype
    if training and p > 0:
        attn = F.dropout(attn, p)
    return attn @ v


@fast_twin(XCA, "cpu_attn")
class FastXCA(XCA):
    """``zoo.models.xcit.XCA`` with its attention written out on the CPU (same parameters and keys)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _eager_cpu(x):
            return super().forward(x)
        B, N, C = x.shape
        q, k, v = self.qkv_heads(x)  # B, heads, d, N (the temperature is in q)
        x = _attend(q @ k.transpose(-2, -1), v, self.attn_drop, self.training)  # B, heads, d, N
        return self.proj_drop(self.proj(x.permute(0, 3, 1, 2).reshape(B, N, C)))


@fast_twin(SpatialReductionAttention, "cpu_attn")
class FastSpatialReductionAttention(SpatialReductionAttention):
    """``zoo.models.pvt_v2.SpatialReductionAttention`` written out in low-precision CPU training."""

    def forward(self, x: torch.Tensor, feat_size: tuple[int, int]) -> torch.Tensor:
        if not _low_precision_training(x):
            return super().forward(x, feat_size)
        B, N, C = x.shape
        q, k, v = self.qkv_heads(x, feat_size)  # B, heads, N (N_r), head_dim
        x = _sdpa_or_written_out(q, k, v, self.head_dim**-0.5, self.attn_drop, self.training)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, C)))


@fast_twin(Attention, "cpu_attn")
class FastAttention(Attention):
    """``zoo.models.vit.Attention`` (ViT, DeiT) written out in low-precision CPU training."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _low_precision_training(x):
            return super().forward(x)
        B, N, C = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3, B, heads, N, hd
        q, k, v = qkv.unbind(0)
        x = _sdpa_or_written_out(q, k, v, self.head_dim**-0.5, self.attn_drop, self.training)
        x = x.transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim)  # B, N, heads * hd
        return self.proj_drop(self.proj(x))
