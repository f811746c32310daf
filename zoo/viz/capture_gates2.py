"""Attention capture for the channel-and-spatial gates: triplet, coord, BAM, SGE, shuffle, scSE, LKA.

Each installer reads the gate the block actually applies, from the output of its gating module
(forward hooks, so the block's forward is untouched), except shuffle attention, whose two gates
are recomputed from the block's input by its own ``gates`` (stateless: no BN running stats move).
What each block gives (``name`` is the block's module name):

* triplet (arXiv:2010.03045): ``name`` ``spatial`` ``[B, H, W]`` (the H-W branch), ``name.cw``
  and ``name.hc`` ``cross`` ``[B, C, W]`` / ``[B, C, H]`` (the rotated branches' gates).
* coord (arXiv:2103.02907): ``name`` ``spatial`` ``[B, H, W]``, the channel mean of ``a_h * a_w``.
* BAM (arXiv:1807.06514): ``name.channel`` ``channel`` ``[B, C]`` = ``sigmoid(Mc)`` and
  ``name.spatial`` ``spatial`` ``[B, H, W]`` = ``sigmoid(Ms)``, each branch on its own (the block
  applies ``1 + sigmoid(Mc + Ms)``).
* SGE (arXiv:1905.09646): ``name`` ``spatial`` ``[B, H, W]`` (mean over groups) and ``name.groups``
  ``group`` ``[B, G, H, W]``.
* shuffle (arXiv:2102.00240): ``name.channel`` ``channel`` ``[B, C / 2]`` (the channel halves of
  the groups, group by group) and ``name.spatial`` ``spatial`` ``[B, H, W]`` (mean of the spatial
  halves' gates).
* scSE (arXiv:1803.02579): ``name.cse`` ``channel`` (the zoo SE installer) and ``name.sse``
  ``spatial``.
* LKA (arXiv:2202.09741): ``name`` ``modulation`` ``[B, H, W]``, the channel mean of ``attn``.
"""
from __future__ import annotations

import torch

from ..blocks.bam import Bam
from ..blocks.coord import CoordAttention
from ..blocks.lka import LargeKernelAttention
from ..blocks.scse import SpatialSqueezeExcite
from ..blocks.sge import SpatialGroupEnhance
from ..blocks.shuffle import ShuffleAttention
from ..blocks.triplet import TripletAttention


def _install_triplet(name, m: TripletAttention, maps, opts):
    def cw(_mod, _inp, out):  # B, 1, C, W
        maps.put(f"{name}.cw", "cross", out[:, 0])

    def hc(_mod, _inp, out):  # B, 1, H, C
        maps.put(f"{name}.hc", "cross", out[:, 0].transpose(1, 2))  # B, C, H

    def hw(_mod, _inp, out):  # B, 1, H, W
        maps.put(name, "spatial", out[:, 0])

    handles = [m.cw.gate_act.register_forward_hook(cw), m.hc.gate_act.register_forward_hook(hc)]
    if m.hw is not None:
        handles.append(m.hw.gate_act.register_forward_hook(hw))
    return handles


def _install_coord(name, m: CoordAttention, maps, opts):
    size = {}

    def pre(_mod, args):
        size["hw"] = tuple(args[0].shape[-2:])

    def gate(_mod, _inp, out):  # B, C, H+W, 1: the row gates, then the column gates
        h, w = size["hw"]
        a_h, a_w = out[..., 0].split([h, w], dim=2)  # B, C, H and B, C, W
        maps.put(name, "spatial", (a_h[..., :, None] * a_w[..., None, :]).mean(1))

    return [m.register_forward_pre_hook(pre), m.gate_act.register_forward_hook(gate)]


def _install_bam(name, m: Bam, maps, opts):
    def channel(_mod, _inp, out):  # B, C, 1, 1 logits
        with torch.no_grad():
            maps.put(f"{name}.channel", "channel", m.gate_act(out).flatten(1))

    def spatial(_mod, _inp, out):  # B, 1, H, W logits
        with torch.no_grad():
            maps.put(f"{name}.spatial", "spatial", m.gate_act(out)[:, 0])

    return [m.channel.register_forward_hook(channel), m.spatial.register_forward_hook(spatial)]


def _install_sge(name, m: SpatialGroupEnhance, maps, opts):
    def hook(_mod, _inp, out):  # B, G, H, W
        maps.put(name, "spatial", out.mean(1))
        maps.put(f"{name}.groups", "group", out)

    return [m.gate_act.register_forward_hook(hook)]


def _install_shuffle(name, m: ShuffleAttention, maps, opts):
    def pre(_mod, args):
        b = args[0].shape[0]
        with torch.no_grad():
            g_c, g_s = m.gates(args[0])  # B*G, C/2G, 1, 1 and B*G, C/2G, H, W
        maps.put(f"{name}.channel", "channel", g_c.reshape(b, -1))  # B, C/2
        maps.put(f"{name}.spatial", "spatial", g_s.reshape(b, -1, *g_s.shape[-2:]).mean(1))  # B, H, W

    return [m.register_forward_pre_hook(pre)]


def _install_sse(name, m: SpatialSqueezeExcite, maps, opts):
    def hook(_mod, _inp, out):  # B, 1, H, W
        maps.put(name, "spatial", out[:, 0])

    return [m.gate_act.register_forward_hook(hook)]


def _install_lka(name, m: LargeKernelAttention, maps, opts):
    def hook(_mod, _inp, out):  # B, C, H, W: the attention map itself
        maps.put(name, "modulation", out.mean(1))

    return [m.conv1.register_forward_hook(hook)]


def installers() -> list[tuple[type, object]]:
    return [
        (TripletAttention, _install_triplet),
        (CoordAttention, _install_coord),
        (Bam, _install_bam),
        (SpatialGroupEnhance, _install_sge),
        (ShuffleAttention, _install_shuffle),
        (SpatialSqueezeExcite, _install_sse),
        (LargeKernelAttention, _install_lka),
    ]
