"""Backbones, one family per file. Each entry point registers itself with ``@register_model``."""
from . import deit, resnet, swin, vit  # noqa: F401  (importing them fills the registry)
