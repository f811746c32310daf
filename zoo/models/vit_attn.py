"""Linear-cost attention for ViT and DeiT blocks: ``zoo.create("vit_s_16", attn="linformer")``.

Linformer: Self-Attention with Linear Complexity, Wang et al., 2020 (arXiv 2006.04768).
Efficient Attention: Attention with Linear Complexities, Shen et al., 2018 (arXiv 1812.01243).

Both keep the softmax ``Attention``'s ``qkv`` and ``proj`` names, so a softmax ViT checkpoint loads
into them (Linformer's sequence projections then start from their own init). Shapes: ``[B, N, C]``
in, ``[B, N, C]`` out, N = prefix tokens + patches.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import check_int, check_rate

__all__ = ["LinformerAttention", "EfficientAttention"]


def _heads(owner: str, dim: int, num_heads: int) -> int:
    if dim % num_heads:
        raise ValueError(f"{owner}: embed_dim {dim} must be divisible by num_heads {num_heads}.")
    return dim // num_heads


class LinformerAttention(nn.Module):
    """Softmax attention over keys and values projected along the token axis to length ``k``.

    ``K' = E K`` and ``V' = F V`` with learned ``E, F`` of shape ``[k, N0]`` (``proj_e``, ``proj_f``,
    shared by the heads: the paper's headwise sharing), so the attention matrix is ``[N, k]`` and the
    cost grows linearly with N. ``N0`` is the token count the model was built for. At another count
    N the projections are linearly interpolated along the token axis to ``[k, N]`` and scaled by
    ``N0 / N``: each projected key stays a weighted sum of the tokens with the same total weight,
    so a projection that learned to average a region keeps averaging when the image grows.

    Args:
        dim: token width C.
        num_heads: heads; ``dim`` must divide by it.
        num_tokens: N0, the token count at the model's ``img_size`` (prefix tokens included).
        k: projected length, at most the token count; None: ``min(64, num_tokens)``.
        attn_drop: dropout on the ``[N, k]`` attention weights (training only).
        proj_drop: dropout after the output projection (training only).

    Raises:
        ValueError: ``k`` larger than ``num_tokens`` (here) or than the token count of an input
            (in ``forward``), naming both.
    """

    needs_num_tokens = True  # the VisionTransformer passes num_tokens to attention classes that say so
    # A softmax ViT/DeiT checkpoint has no projections: loading it keeps these at their init (listed in
    # model.load_report.new), so Linformer fine-tunes from published softmax weights.
    new_when_missing = ("proj_e", "proj_f")

    def __init__(self, dim: int, num_heads: int, *, num_tokens: int, k: int | None = None, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        check_int("LinformerAttention", "num_tokens", num_tokens, 1)
        # 64: the smallest k of the paper's tables, well under ViT-S/16's 197 tokens at 224 px; a small
        # model (32 px: 5 tokens) gets k = N rather than an error it did not ask for.
        k = min(64, num_tokens) if k is None else k
        check_int("LinformerAttention", "k", k, 1)
        check_rate("LinformerAttention", "attn_drop", attn_drop)
        if k > num_tokens:
            raise ValueError(f"Linformer k={k} is larger than the token count N={num_tokens} the model is built "
                             f"for; choose k <= {num_tokens} (attn_kwargs={{'k': ...}}) or a larger img_size.")
        self.num_heads = num_heads
        self.head_dim = _heads("LinformerAttention", dim, num_heads)
        self.k = k
        self.num_tokens = num_tokens
        self.attn_drop = float(attn_drop)
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()
        self.proj_e = nn.Parameter(torch.empty(k, num_tokens))
        self.proj_f = nn.Parameter(torch.empty(k, num_tokens))
        # std 1/sqrt(N0): a random projection that keeps a projected key at the scale of one key.
        for p in (self.proj_e, self.proj_f):
            nn.init.normal_(p, std=num_tokens**-0.5)

    def seq_projections(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(E, F)`` for ``n`` tokens, each ``[k, n]`` (the parameters themselves when ``n == N0``)."""
        if n < self.k:
            raise ValueError(f"Linformer k={self.k} is larger than the token count N={n} of this input; "
                             f"use an input with at least {self.k} tokens or a smaller k.")
        if n == self.num_tokens:
            return self.proj_e, self.proj_f
        ef = torch.stack([self.proj_e, self.proj_f])  # 2, k, N0
        ef = F.interpolate(ef, size=n, mode="linear", align_corners=False) * (self.num_tokens / n)  # 2, k, n
        return ef[0], ef[1]

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, N, C = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3, B, heads, N, hd
        q, k, v = qkv.unbind(0)
        e, f = self.seq_projections(N)
        # [k, N] @ [B, heads, N, hd] -> B, heads, k, hd
        return q, torch.matmul(e.to(k.dtype), k), torch.matmul(f.to(v.dtype), v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self._qkv(x)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(B, N, C)  # B, N, heads * hd
        return self.proj_drop(self.proj(x))

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The attention the forward computes: ``[B, N, C]`` -> ``[B, heads, N, k]``, each row a
        softmax over the k projected keys (what ``zoo.capture_attention`` records)."""
        q, k, _ = self._qkv(x)
        return (q @ k.transpose(-2, -1) * self.head_dim**-0.5).softmax(-1)


class EfficientAttention(nn.Module):
    """Shen et al.'s factorised attention: ``softmax_features(Q) (softmax_positions(K)^T V)``.

    Each query is normalised over its features, each key feature over the positions, and the keys
    and values are first summarised into a ``[head_dim, head_dim]`` context per head, so nothing of
    size N x N is formed. There is no ``1 / sqrt(d)`` temperature: the paper has none, both
    normalisations being softmaxes already.

    The same output is ``A V`` with ``A = softmax_features(Q) softmax_positions(K)^T``, ``[N, N]``,
    whose rows are non-negative and sum to 1: :meth:`attention_weights` returns that ``A``, the
    equivalent per-query weights, so capture, the class-token map and rollout read it as softmax
    attention.

    Args:
        dim: token width C.
        num_heads: heads; ``dim`` must divide by it.
        attn_drop: dropout on the ``[head_dim, head_dim]`` context (training only).
        proj_drop: dropout after the output projection (training only).
    """

    def __init__(self, dim: int, num_heads: int, *, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        check_rate("EfficientAttention", "attn_drop", attn_drop)
        self.num_heads = num_heads
        self.head_dim = _heads("EfficientAttention", dim, num_heads)
        self.attn_drop = float(attn_drop)
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, N, C = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3, B, heads, N, hd
        q, k, v = qkv.unbind(0)
        return q.softmax(-1), k.softmax(-2), v  # q over features, k over positions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self._qkv(x)
        context = k.transpose(-2, -1) @ v  # B, heads, hd, hd
        if self.attn_drop > 0 and self.training:
            context = F.dropout(context, self.attn_drop, True)
        x = (q @ context).transpose(1, 2).reshape(B, N, C)  # B, N, heads * hd
        return self.proj_drop(self.proj(x))

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Equivalent per-query weights ``[B, heads, N, N]`` (rows sum to 1): ``out = A @ V``."""
        q, k, _ = self._qkv(x)
        return q @ k.transpose(-2, -1)
