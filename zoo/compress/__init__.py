"""zoo.compress: make any zoo model smaller or faster with one call, and measure what it cost.

``quantize`` (int8, torchao), ``prune_heads`` (attention-head pruning, Michel et al. 2019),
``share_layers`` (ALBERT cross-layer sharing), ``distill`` (knowledge distillation losses for
``train.py``).
"""
from .quantize import METHODS as QUANT_METHODS, quantize  # noqa: F401
