"""Attention capture for the channel-gate blocks of issue #12: eSE, CECA, FCA, SRM, GCT, GE, SimAM.

Each installer reads the gate the block multiplies its input by (never changing the forward):

* eSE, CECA, FCA, SRM: ``channel`` ``[B, C]``, the output of the block's ``gate_act``.
* GCT: ``channel`` ``[B, C]``, ``1 + tanh(...)`` in (0, 2), recomputed from the block's input by
  its own ``gate`` method (GCT has no gate module to hook).
* GE and SimAM gate every channel at every position, a ``[B, C, H, W]`` gate (GE with
  ``extent > 0``; GE with ``extent=0`` is a plain ``channel`` gate). Two views of it are kept:
  ``channel`` ``[B, C]`` (its mean over positions) under the block's name and ``spatial``
  ``[B, H, W]`` (its mean over channels) under ``<name>.spatial``; both stay in the gate's range.
"""
from __future__ import annotations

import torch

from ..blocks.ceca import CircularEfficientChannelAttn
from ..blocks.ese import EffectiveSqueezeExcite
from ..blocks.fca import FrequencyChannelAttn
from ..blocks.gather_excite import GatherExcite
from ..blocks.gct import GatedChannelTransform
from ..blocks.simam import SimAM
from ..blocks.srm import StyleRecalibration


def _install_channel(name, m, maps, opts):
    def hook(_mod, _inp, out):  # B, C, 1, 1 (FCA: B, C)
        maps.put(name, "channel", out.flatten(1))

    return [m.gate_act.register_forward_hook(hook)]


def _install_gate_3d(name, m, maps, opts):
    def hook(_mod, _inp, out):  # B, C, H, W; or B, C, 1, 1 for a global GE
        maps.put(name, "channel", out.mean((2, 3)))
        if out.shape[-2:] != (1, 1):
            maps.put(f"{name}.spatial", "spatial", out.mean(1))

    return [m.gate_act.register_forward_hook(hook)]


def _install_gct(name, m: GatedChannelTransform, maps, opts):
    def hook(_mod, args):
        with torch.no_grad():
            maps.put(name, "channel", m.gate(args[0]).flatten(1))

    return [m.register_forward_pre_hook(hook)]


def installers() -> list[tuple[type, object]]:
    return [
        (CircularEfficientChannelAttn, _install_channel),
        (EffectiveSqueezeExcite, _install_channel),
        (FrequencyChannelAttn, _install_channel),
        (StyleRecalibration, _install_channel),
        (GatedChannelTransform, _install_gct),
        (GatherExcite, _install_gate_3d),
        (SimAM, _install_gate_3d),
    ]
