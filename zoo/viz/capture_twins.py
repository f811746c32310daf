"""Attention capture for the conv-replacing blocks: SK, ResNeSt split attention, lambda, halo, BAT.

Each installer reads, from the module's own input or an intermediate output and its own weights,
the weights the module actually applies, next to its forward (which it never changes):

* SK (arXiv 1903.06586) ``branch``: the softmax over branches of the select MLP, ``[B, paths, C]``,
  read from the output of ``SelectiveKernel.attn`` (paths: 3x3, then dilated 3x3 / 5x5).
* ResNeSt (arXiv 2004.08955) ``split``: the r-softmax over the radix splits, ``[B, radix, C]``
  (sigmoid gate when radix is 1), recomputed by ``SplitAttn.split_weights`` from its conv output.
* Lambda (arXiv 2102.08602) ``keys``: the keys of the content lambda, softmax-normalised over
  positions, ``[B, K, H, W]``: where each of the K key channels summarises the context from.
* Halo (arXiv 2103.12731) ``halo``: blocked local attention, ``[B, heads, blocks, queries, win*win]``,
  rows sum to 1 (``HaloAttn.attention_weights``); ``meta`` gives block, halo and window sizes.
* BAT (Chi et al., CVPR 2020) ``bilinear``: the row and column transforms ``[B, groups, 2, bs, bs]``
  (``p`` and ``q`` transposed, rows sum to 1; ``BatNonLocal.transform_weights``).
"""
from __future__ import annotations

import torch

from ..blocks.bat import BatNonLocal
from ..blocks.halo import HaloAttn
from ..blocks.lambda_layer import LambdaLayer
from ..blocks.selective_kernel import SelectiveKernel
from ..blocks.split_attn import SplitAttn


def _install_sk(name, m: SelectiveKernel, maps, opts):
    def hook(_mod, _inp, out):  # B, paths, C, 1, 1
        maps.put(name, "branch", out.flatten(2))

    return [m.attn.register_forward_hook(hook)]


def _install_splat(name, m: SplitAttn, maps, opts):
    def hook(_mod, _inp, y):  # B, radix * C, H, W: the conv's output after its norm and act
        b, rc, h, w = y.shape
        with torch.no_grad():
            maps.put(name, "split", m.split_weights(y.view(b, m.radix, rc // m.radix, h, w)))

    return [m.act0.register_forward_hook(hook)]


def _pre_hook(kind: str, method: str, **meta_of):
    def install(name, m, maps, opts):
        def hook(_mod, args):
            with torch.no_grad():
                value = getattr(m, method)(args[0])
            maps.put(name, kind, value, **{k: getattr(m, a) for k, a in meta_of.items()})

        return [m.register_forward_pre_hook(hook)]

    return install


def installers() -> list[tuple[type, object]]:
    return [
        (SelectiveKernel, _install_sk),
        (SplitAttn, _install_splat),
        (LambdaLayer, _pre_hook("keys", "key_weights")),
        (HaloAttn, _pre_hook("halo", "attention_weights", block="block_size", halo="halo_size", window="win")),
        (BatNonLocal, _pre_hook("bilinear", "transform_weights", block="block_size")),
    ]
