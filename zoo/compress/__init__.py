"""zoo.compress: make any zoo model smaller or faster with one call, and measure what it cost.

``quantize`` (int8, torchao; ``save_quantized`` / ``load_quantized``), ``distill`` (knowledge distillation in ``train.py``).
"""
from .distill import DistillLoss, check_distill_config, load_teacher  # noqa: F401
from .quantize import METHODS as QUANT_METHODS, quantize  # noqa: F401
from .prune import head_importance, prune_heads  # noqa: F401
from .quantize import load as load_quantized, save as save_quantized, saved_bytes  # noqa: F401
