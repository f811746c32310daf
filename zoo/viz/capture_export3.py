"""Attention capture for ViTs under token merging (ToMe, arXiv:2210.09461; ``zoo.accel.token_merge``).

A merging block computes its attention itself (proportional attention: ``log s`` of every key's
token size added to the logits), so the plain ViT attention hook never sees it. The installer here
is a forward pre-hook on each :class:`~zoo.accel.token_merge.MergingBlock`: it recomputes, from the
block's input and token sizes, the softmax attention the block uses, ``[B, heads, N_i, N_i]`` with
``N_i`` the tokens the block receives (shrinking block by block), kind ``merged``. Merged tokens
sit on no grid, so there are no ``cls`` grids and no rollout for a merged model.
"""
from __future__ import annotations

import torch

from ..accel.token_merge import MergingBlock, MergingBlocks


def _merged_probs(blk: MergingBlock, x: torch.Tensor, size: torch.Tensor | None) -> torch.Tensor:
    attn = blk.attn
    B, N, _ = x.shape
    qkv = attn.qkv(blk.norm1(x)).view(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = qkv[0].float(), qkv[1].float()  # B, heads, N, head_dim
    logits = (q * attn.head_dim ** -0.5) @ k.transpose(-2, -1)  # B, heads, N, N
    if size is not None:
        logits = logits + size.float().log().transpose(1, 2)[:, None]  # B, 1, 1, N: log s per key
    return logits.softmax(-1)


def _install_merging_block(name, m: MergingBlock, maps, opts):
    def hook(_mod, args):
        if len(args) < 3 or args[2] is None:  # the plain forward(x): the ViT attention hook sees it
            return
        x, size = args[0], args[1]
        with torch.no_grad():
            probs = _merged_probs(m, x, size)
        sizes = torch.ones(x.shape[0], x.shape[1], device=x.device) if size is None else size[..., 0]
        maps.put(name, "merged", probs, tokens=x.shape[1], sizes=sizes.detach(), prefix=args[2])
        if opts["keep_full"]:
            maps.full[name] = probs

    return [m.register_forward_pre_hook(hook)]


def _install_merging_blocks(name, m: MergingBlocks, maps, opts):
    def done(_mod, _inp, _out):  # blocks with r=0 before the first merge fed the plain ViT hook:
        opts["_vit_probs"].clear()  # a rollout over some blocks only would mislead, so none is drawn

    return [m.register_forward_hook(done)]


def installers() -> list[tuple[type, object]]:
    return [(MergingBlock, _install_merging_block), (MergingBlocks, _install_merging_blocks)]
