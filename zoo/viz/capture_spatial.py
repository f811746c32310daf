"""Attention capture for the spatial attention blocks: A^2-Nets (arXiv:1810.11579), external attention
(2105.02358), CCNet (1811.11721), DANet (1809.02983), EPSANet (2105.14447) and attention-augmented
convolution (1904.09925).

Each installer recomputes, from the module's own input and weights, the maps the module uses, next to
its forward (which it never changes):

* ``a2``: ``gather`` (``[B, n, H, W]``, each descriptor's softmax over the positions) and
  ``distribute`` (``[B, n, H, W]``, at each position a softmax over the n descriptors).
* ``ea``: ``memory``, ``[B, S, H, W]`` double-normalised weights of each position over the S units.
* ``cc``: ``query``/``received`` maps of each recurrent pass from its ``[B, HW, HW]`` criss-cross
  matrix (zero off the query's row and column): pass 0 under the module name, pass r under
  ``<name>.pass<r>``; each pass is run on the previous pass's output, as the forward does.
* ``danet``: ``query``/``received`` of the position attention, ``channel_attn`` ``[B, C, C]``.
* ``psa``: ``scale``, ``[B, S, C / S]`` softmax weights across the S kernel scales.
* ``aa``: ``query``/``received`` of the multi-head attention over the (pooled, if stride 2) map.
"""
from __future__ import annotations

import torch

from ..blocks.attn_augmented import AttentionAugmentedConv
from ..blocks.criss_cross import CrissCrossAttention
from ..blocks.double_attn import DoubleAttention
from ..blocks.dual_attn import DualAttention
from ..blocks.external_attn import ExternalAttention
from ..blocks.pyramid_split import PyramidSplitAttention


def _install_a2(name, m, maps, opts):
    def hook(_mod, args):
        x = args[0]
        b, _, h, w = x.shape
        with torch.no_grad():
            gather, distribute = m.attention_weights(x)  # B, n, HW each
        maps.put(name, "gather", gather.view(b, -1, h, w))
        maps.put(f"{name}.distribute", "distribute", distribute.view(b, -1, h, w))

    return [m.register_forward_pre_hook(hook)]


def _install_ea(name, m, maps, opts):
    def hook(_mod, args):
        x = args[0]
        b, _, h, w = x.shape
        with torch.no_grad():
            maps.put(name, "memory", m.attention_weights(x).view(b, -1, h, w))

    return [m.register_forward_pre_hook(hook)]


def _install_cc(name, m, maps, opts):
    from .capture import _put_query_maps

    def hook(_mod, args):
        x = args[0]
        with torch.no_grad():
            for r in range(m.recurrence):
                dense = m.dense_attention(x).unsqueeze(1)  # B, 1, HW, HW
                _put_query_maps(maps, name if r == 0 else f"{name}.pass{r}", dense, x, opts)
                x = x + m.gamma(m.attend(x))

    return [m.register_forward_pre_hook(hook)]


def _install_danet(name, m, maps, opts):
    from .capture import _put_query_maps

    def hook(_mod, args):
        x = args[0]
        with torch.no_grad():
            pos, chan = m.attention_weights(x)  # B, HW, HW and B, C, C
        _put_query_maps(maps, name, pos.unsqueeze(1), x, opts)
        maps.put(f"{name}.channel", "channel_attn", chan)

    return [m.register_forward_pre_hook(hook)]


def _install_psa(name, m, maps, opts):
    def hook(_mod, _inp, out):  # the shared SE's output of every scale: B*S, C/S, 1, 1
        z = out.detach().flatten(1)
        maps.put(name, "scale", z.view(-1, m.num_scales, z.shape[1]).softmax(1))

    return [m.se.register_forward_hook(hook)]


def _install_aa(name, m, maps, opts):
    from .capture import _put_query_maps

    def hook(_mod, args):
        x = args[0]
        with torch.no_grad():
            attn = m.attention_weights(x)  # B, heads, hw, hw
            _put_query_maps(maps, name, attn, m.pool(x), opts)

    return [m.register_forward_pre_hook(hook)]


def installers() -> list[tuple[type, object]]:
    return [
        (DoubleAttention, _install_a2),
        (ExternalAttention, _install_ea),
        (CrissCrossAttention, _install_cc),
        (DualAttention, _install_danet),
        (PyramidSplitAttention, _install_psa),
        (AttentionAugmentedConv, _install_aa),
    ]
