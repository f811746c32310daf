"""FcaNet: Frequency Channel Attention Networks. Qin, Zhang, Wu, Li, 2021. arXiv:2012.11879.

The multi-spectral channel attention (FCA) block: SE whose squeeze is not the average (the DCT's
lowest frequency alone) but several 2-D DCT frequencies, one per group of channels.

Where the paper puts it: where SE goes, on the residual branch of every ResNet block after the last
BN and before the addition (the authors' ``FcaBottleneck``/``FcaBasicBlock``). ``zoo``'s ResNets put
it in the same place.

Map size. The authors' code builds each block's DCT filters at a fixed size, the stage's map size at
224 px (56, 28, 14, 7), and adaptive-average-pools any other map to it. This block does the same:
the filters are built at ``dct_size`` and every input is ``adaptive_avg_pool2d``-ed to ``dct_size``
first (a no-op when it already is that size), so any H x W works. The frequency indices are given
on a 7 x 7 grid and scaled by ``dct_size // 7`` as the authors do, so ``(2, 2)`` at 14 x 14 is
``(1, 1)`` at 7 x 7. The default ``dct_size=7`` is that 7 x 7 grid: the parameters do not depend on
it (the filters are a fixed buffer), only how finely the map is pooled before the DCT.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import check_int, reduced_channels
from ..registry import register_block

__all__ = ["FrequencyChannelAttn", "dct_filters", "FREQ_INDICES"]

# The authors' 32 (u, v) frequency choices on the 7 x 7 grid, best first ("top": ranked by their
# single-frequency ImageNet accuracy), lowest first ("low") and worst first ("bot").
FREQ_INDICES = {
    "top": ([0, 0, 6, 0, 0, 1, 1, 4, 5, 1, 3, 0, 0, 0, 3, 2, 4, 6, 3, 5, 5, 2, 6, 5, 5, 3, 3, 4, 2, 2, 6, 1],
            [0, 1, 0, 5, 2, 0, 2, 0, 0, 6, 0, 4, 6, 3, 5, 2, 6, 3, 3, 3, 5, 1, 1, 2, 4, 2, 1, 1, 3, 0, 5, 3]),
    "low": ([0, 0, 1, 1, 0, 2, 2, 1, 2, 0, 3, 4, 0, 1, 3, 0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 6, 1, 2, 3, 4],
            [0, 1, 0, 1, 2, 0, 1, 2, 2, 3, 0, 0, 4, 3, 1, 5, 4, 3, 2, 1, 0, 6, 5, 4, 3, 2, 1, 0, 6, 5, 4, 3]),
    "bot": ([6, 1, 3, 3, 2, 4, 1, 2, 4, 4, 5, 1, 4, 6, 2, 5, 6, 1, 6, 2, 2, 4, 3, 3, 5, 5, 6, 2, 5, 5, 3, 6],
            [6, 4, 4, 6, 6, 3, 1, 4, 4, 5, 6, 5, 2, 2, 5, 1, 4, 3, 5, 0, 3, 1, 1, 2, 4, 2, 1, 1, 5, 3, 3, 3]),
}
_FREQ_COUNTS = (1, 2, 4, 8, 16, 32)


def _dct_1d(freq: int, size: int) -> torch.Tensor:
    """Orthonormal DCT-II basis vector ``[size]``: ``c_k cos(pi * freq * (i + 1/2) / size)``."""
    i = torch.arange(size, dtype=torch.float64)
    scale = math.sqrt(1.0 / size) if freq == 0 else math.sqrt(2.0 / size)
    return scale * torch.cos(math.pi * freq * (i + 0.5) / size)


def dct_filters(height: int, width: int, freqs: list[tuple[int, int]], channels: int) -> torch.Tensor:
    """The 2-D DCT filter of each channel: ``[channels, height, width]``, float32.

    Channels are split into ``len(freqs)`` equal consecutive groups; group ``g`` gets the separable
    basis ``dct(u_g, height) x dct(v_g, width)``. Each filter has unit L2 norm and two different
    frequencies are orthogonal (the orthonormal DCT-II, the authors' normalisation).
    """
    part = channels // len(freqs)
    out = torch.empty(channels, height, width, dtype=torch.float64)
    for g, (u, v) in enumerate(freqs):
        out[g * part:(g + 1) * part] = torch.outer(_dct_1d(u, height), _dct_1d(v, width))
    return out.float()


@register_block("fca")
class FrequencyChannelAttn(nn.Module):
    """Adaptive-pool to ``dct_size``, one DCT coefficient per channel, SE MLP, sigmoid gate.

    Names (buffer ``dct_layer.weight``, MLP ``fc.0``/``fc.2``, bias-free) are the authors', so their
    checkpoints load as-is (for a matching ``dct_size``).

    Args:
        channels: input and output channels C; a multiple of the number of frequencies.
        dct_size: the ``(h, w)`` (or one int) the DCT filters are built at and every map is
            average-pooled to; at least 7 (the frequency grid).
        freq_sel_method: ``"top16"`` (paper), or ``top|low|bot`` + one of 1, 2, 4, 8, 16, 32.
        rd_ratio: MLP hidden width ratio (paper reduction 16).
        rd_channels: MLP hidden width; overrides ``rd_ratio``.
        rd_divisor: hidden width rounding (1: ``C * rd_ratio``, as the authors' ``C // 16``).
        act_layer: activation after the first linear layer.
        gate_layer: the gating non-linearity.

    Shapes: ``[B, C, H, W]`` in, same out.
    """

    def __init__(
        self,
        channels: int,
        *,
        dct_size: int | tuple[int, int] = 7,
        freq_sel_method: str = "top16",
        rd_ratio: float = 1.0 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        act_layer: Callable[..., nn.Module] = nn.ReLU,
        gate_layer: Callable[..., nn.Module] = nn.Sigmoid,
    ):
        super().__init__()
        rd_channels = reduced_channels("FrequencyChannelAttn", channels, rd_ratio, rd_channels, rd_divisor)
        check_int("FrequencyChannelAttn", "dct_size", dct_size, minimum=7)
        if not isinstance(dct_size, int) and len(tuple(dct_size)) != 2:
            raise ValueError(f"FrequencyChannelAttn: dct_size must be an int or (h, w); got {dct_size!r}.")
        dh, dw = (dct_size, dct_size) if isinstance(dct_size, int) else tuple(dct_size)
        kind, count = str(freq_sel_method)[:3], str(freq_sel_method)[3:]
        if kind not in FREQ_INDICES or not count.isdigit() or int(count) not in _FREQ_COUNTS:
            raise ValueError(
                f"FrequencyChannelAttn: freq_sel_method must be top|low|bot followed by one of {_FREQ_COUNTS} "
                f"(e.g. 'top16'); got {freq_sel_method!r}."
            )
        n = int(count)
        if channels % n:
            raise ValueError(
                f"FrequencyChannelAttn: channels must be divisible by the number of frequencies ({n}, "
                f"from freq_sel_method={freq_sel_method!r}); got channels={channels}."
            )
        us, vs = FREQ_INDICES[kind]
        freqs = [(u * (dh // 7), v * (dw // 7)) for u, v in zip(us[:n], vs[:n])]
        self.dct_size = (dh, dw)
        self.freqs = freqs
        self.dct_layer = nn.Module()  # holds the buffer under the authors' key "dct_layer.weight"
        self.dct_layer.register_buffer("weight", dct_filters(dh, dw, freqs, channels))
        self.fc = nn.Sequential(
            nn.Linear(channels, rd_channels, bias=False), act_layer(), nn.Linear(rd_channels, channels, bias=False)
        )
        self.gate_act = gate_layer()

    def spectrum(self, x: torch.Tensor) -> torch.Tensor:
        """The per-channel DCT coefficient. ``x``: ``[B, C, H, W]`` -> ``[B, C]``."""
        if tuple(x.shape[-2:]) != self.dct_size:
            x = F.adaptive_avg_pool2d(x, self.dct_size)  # B, C, dh, dw
        return torch.einsum("bchw,chw->bc", x, self.dct_layer.weight)  # a dot product per channel

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """Per-channel gate. ``x``: ``[B, C, H, W]`` -> ``[B, C, 1, 1]``."""
        b, c = x.shape[:2]
        return self.gate_act(self.fc(self.spectrum(x))).view(b, c, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)

    def extra_repr(self) -> str:
        return f"dct_size={self.dct_size}, num_freq={len(self.freqs)}"
