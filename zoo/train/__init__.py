"""Training: the one LightningModule, its callbacks, and helpers for train.py / eval.py."""
from . import schedules
from .callbacks import RunSummary, plot_curves
from .module import ClassificationModule, build_model, param_groups
from .utils import bf16_fast, model_family, read_zoo_checkpoint, register_model_configs, resolve_precision

__all__ = [
    "ClassificationModule",
    "RunSummary",
    "bf16_fast",
    "build_model",
    "model_family",
    "param_groups",
    "plot_curves",
    "read_zoo_checkpoint",
    "register_model_configs",
    "resolve_precision",
    "schedules",
]
