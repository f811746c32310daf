"""ViT's position table resampled once per patch grid in inference.

At an input size other than the one a ViT was built for, its position table is bicubically
resampled on every forward (a small tensor, but an interpolate and two copies per call). In
inference the resampled table is cached per grid while ``pos_embed`` is unchanged. DeiT's distilled
ViT (two prefix tokens) gets the same twin.
"""
from __future__ import annotations

import torch

from ..models.deit import DistilledVisionTransformer
from ..models.vit import VisionTransformer
from .cache import CacheOwner, cached
from .swap import fast_twin

__all__ = ["FastVisionTransformer", "FastDistilledVisionTransformer"]


class _CachedPosEmbed(CacheOwner):
    def pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor:
        if grid == self.grid_size:
            return self.pos_embed
        build = super().pos_embed_for
        return cached(self, ("pos_embed", grid), (self.pos_embed,), lambda: build(grid))


@fast_twin(VisionTransformer, "pos_embed")
class FastVisionTransformer(_CachedPosEmbed, VisionTransformer):
    """``VisionTransformer`` whose resampled position tables are cached in inference."""


@fast_twin(DistilledVisionTransformer, "pos_embed")
class FastDistilledVisionTransformer(_CachedPosEmbed, DistilledVisionTransformer):
    """``DistilledVisionTransformer`` whose resampled position tables are cached in inference."""
