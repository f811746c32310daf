"""Backbones, one family per file. Each entry point registers itself with ``@register_model``."""
from . import (  # noqa: F401  (importing them fills the registry)
    byob_attn, deit, efficientvit, pvt_v2, resnet, sk_resnest, swin, timm_attn, vit, xcit,
)
from . import mobilenet_v2  # noqa: F401
