"""zoo: vision attention blocks, attention backbones, ViT and Swin v1/v2 behind one registry.

>>> import zoo
>>> model = zoo.create("cbam_resnet50")            # same as zoo.create("resnet50", attn="cbam")
>>> zoo.list_models("swin*")
"""
from . import accel, blocks, models  # noqa: F401  (importing blocks and models fills the registries)
from . import export  # noqa: F401  (zoo.export.onnx / .program; onnx itself is imported lazily)
from .attach import attach, detach
from .builder import create, resolve_pretrained_cfg
from .registry import (
    create_block,
    get_block,
    list_blocks,
    list_models,
    register_block,
    register_model,
)
from .viz.capture import capture_attention
from .weights.catalog import list_pretrained, pretrained_cfg

__version__ = "0.1.0"

__all__ = [
    "attach",
    "capture_attention",
    "create",
    "create_block",
    "detach",
    "get_block",
    "list_blocks",
    "list_models",
    "list_pretrained",
    "pretrained_cfg",
    "register_block",
    "register_model",
    "resolve_pretrained_cfg",
]
