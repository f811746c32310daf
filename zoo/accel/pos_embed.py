"""ViT's position table resampled once per patch grid in inference.

At an input size other than the one a ViT was built for, its position table is bicubically
resampled on every forward (a small tensor, but an interpolate and two copies per call). In
inference the resampled table is cached per grid while ``pos_embed`` is unchanged.
"""
from __future__ import annotations

import torch

from ..models.vit import VisionTransformer
from .cache import CacheOwner, cached
from .swap import fast_twin

__all__ = ["FastVisionTransformer"]


@fast_twin(VisionTransformer, "pos_embed")
class FastVisionTransformer(CacheOwner, VisionTransformer):
    """``VisionTransformer`` whose resampled position tables are cached in inference."""

    def pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor:
        if grid == self.grid_size:
            return self.pos_embed
        build = super().pos_embed_for
        return cached(self, ("pos_embed", grid), (self.pos_embed,), lambda: build(grid))
