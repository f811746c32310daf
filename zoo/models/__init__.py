"""Backbones, one family per file. Each entry point registers itself with ``@register_model``."""
from . import deit, efficientvit, pvt_v2, resnet, swin, vit, xcit  # noqa: F401  (importing them fills the registry)
