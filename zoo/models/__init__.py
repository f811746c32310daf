"""Backbones, one family per file. Each entry point registers itself with ``@register_model``."""
