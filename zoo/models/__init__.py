"""Backbones, one family per file. Each entry point registers itself with ``@register_model``."""
from . import byob_attn, resnet, swin, timm_attn, vit  # noqa: F401  (importing them fills the registry)
