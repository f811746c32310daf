"""Training data-efficient image transformers & distillation through attention (arXiv 2012.12877).

DeiT: the ViT of :mod:`zoo.models.vit` (the plain DeiT-Ti/S/B are that network, trained with
DeiT's recipe) and :class:`DistilledVisionTransformer`, which adds the distillation token and its
second head. Parameter names are timm's (``dist_token``, ``head_dist``), so timm's
``deit_*_patch16_224`` and ``deit_*_distilled_patch16_224`` checkpoints load unchanged.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import register_model
from .vit import VisionTransformer, checkpoint_filter_fn

__all__ = ["DistilledVisionTransformer", "deit_checkpoint_filter_fn"]


class DistilledVisionTransformer(VisionTransformer):
    """ViT with a distillation token after the class token, each read by its own head.

    Takes :class:`~zoo.models.vit.VisionTransformer`'s arguments (``global_pool`` must be
    ``"token"``: the heads read the two prefix tokens). ``forward`` returns the mean of the two
    heads' logits ``[B, num_classes]``; with :meth:`set_distilled_training` on, a training-mode
    forward returns both, ``(class_logits, dist_logits)``, for a loss per head (DeiT's recipe, and
    what ``zoo.train.ClassificationModule`` does). Off by default, as in timm, so that a training
    forward is a tensor like every other model's.
    """

    num_prefix_tokens = 2  # class token, distillation token

    def __init__(self, **kwargs):
        if kwargs.get("global_pool", "token") != "token":
            raise ValueError(f"DistilledVisionTransformer reads its class and distillation tokens: global_pool "
                             f"must be 'token', got {kwargs['global_pool']!r}.")
        super().__init__(**kwargs)
        self.dist_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
        nn.init.trunc_normal_(self.dist_token, std=0.02)
        self.head_dist = self._new_head(self.num_classes)
        self.distilled_training = False

    def _new_head(self, num_classes: int) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        head = nn.Linear(self.num_features, num_classes)
        nn.init.trunc_normal_(head.weight, std=0.02)
        nn.init.zeros_(head.bias)
        return head

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"dist_token"}

    def set_distilled_training(self, enable: bool = True) -> None:
        """Training-mode forwards return ``(class_logits, dist_logits)`` when enabled."""
        self.distilled_training = enable

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Fresh heads (both) for ``num_classes`` (0: identities); only ``"token"`` pooling."""
        if global_pool not in (None, "token"):
            raise ValueError(f"DistilledVisionTransformer pools by its tokens: global_pool must be 'token', "
                             f"got {global_pool!r}.")
        super().reset_classifier(num_classes)
        self.head_dist = self._new_head(num_classes)

    def prefix_tokens(self) -> tuple[torch.Tensor, ...]:
        return (self.cls_token, self.dist_token)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False):
        """Tokens ``[B, 2 + N, C]`` -> the two heads' mean ``[B, num_classes]`` (``[B, C]`` mean of the
        two tokens with ``pre_logits``), or the pair of logits in distilled training."""
        x, x_dist = x[:, 0], x[:, 1]
        if self.drop_rate > 0 and self.training:
            x, x_dist = F.dropout(x, self.drop_rate, True), F.dropout(x_dist, self.drop_rate, True)
        if pre_logits:
            return (x + x_dist) / 2
        x, x_dist = self.head(x), self.head_dist(x_dist)
        if self.distilled_training and self.training:
            return x, x_dist
        return (x + x_dist) / 2


def deit_checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """ViT's filter (layouts, position table resampled keeping both prefix tokens); a distillation
    head of another class count is replaced by the model's fresh one, as the loader re-initialises
    the main head (it knows one classifier per model)."""
    out = checkpoint_filter_fn(state_dict, model)
    own = model.state_dict()
    for key in ("head_dist.weight", "head_dist.bias"):
        if key in out and (key not in own or own[key].shape != out[key].shape):
            if key in own:
                out[key] = own[key].detach().clone()
            else:  # num_classes=0: no head to load
                out.pop(key)
    return out


def _deit(distilled: bool, **kwargs) -> VisionTransformer:
    return (DistilledVisionTransformer if distilled else VisionTransformer)(**kwargs)


_TINY = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3)
_SMALL = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)
_BASE = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)


@register_model(filter_fn=deit_checkpoint_filter_fn)
def deit_t_16(**kwargs) -> VisionTransformer:
    """DeiT-Ti/16: 192 wide, 12 deep, 3 heads, 5.7M parameters."""
    return _deit(False, **{**_TINY, **kwargs})


@register_model(filter_fn=deit_checkpoint_filter_fn)
def deit_s_16(**kwargs) -> VisionTransformer:
    """DeiT-S/16: 384 wide, 12 deep, 6 heads, 22.1M parameters."""
    return _deit(False, **{**_SMALL, **kwargs})


@register_model(filter_fn=deit_checkpoint_filter_fn)
def deit_b_16(**kwargs) -> VisionTransformer:
    """DeiT-B/16: 768 wide, 12 deep, 12 heads, 86.6M parameters."""
    return _deit(False, **{**_BASE, **kwargs})


@register_model(filter_fn=deit_checkpoint_filter_fn)
def deit_t_16_distilled(**kwargs) -> DistilledVisionTransformer:
    """DeiT-Ti/16 with distillation token: 5.9M parameters."""
    return _deit(True, **{**_TINY, **kwargs})


@register_model(filter_fn=deit_checkpoint_filter_fn)
def deit_s_16_distilled(**kwargs) -> DistilledVisionTransformer:
    """DeiT-S/16 with distillation token: 22.4M parameters."""
    return _deit(True, **{**_SMALL, **kwargs})


@register_model(filter_fn=deit_checkpoint_filter_fn)
def deit_b_16_distilled(**kwargs) -> DistilledVisionTransformer:
    """DeiT-B/16 with distillation token: 87.3M parameters."""
    return _deit(True, **{**_BASE, **kwargs})
