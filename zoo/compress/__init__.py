"""Compression of any model ``zoo.create`` returns: distillation in the training loop (``distill``)."""
from .distill import DistillLoss, check_distill_config, load_teacher  # noqa: F401
