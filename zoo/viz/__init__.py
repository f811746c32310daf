"""Seeing the attention: capture maps from any zoo model, class-activation maps, pictures.

``capture_attention`` needs only torch; ``zoo.viz.cam`` needs ``grad-cam`` and ``zoo.viz.plot``
matplotlib, so they are imported on use.
"""
from .capture import (
    KINDS,
    AttentionMaps,
    attention_rollout,
    capture_attention,
    window_partition_map,
    window_stitch_map,
)

__all__ = [
    "KINDS",
    "AttentionMaps",
    "attention_rollout",
    "capture_attention",
    "window_partition_map",
    "window_stitch_map",
]
