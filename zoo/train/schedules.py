"""Learning-rate schedules that count optimizer steps, for ``module.scheduler`` configs.

Each is a plain function ``fn(optimizer, *, steps_per_epoch, [total_steps,] ...) -> LambdaLR``, used in
a config as a partial::

    scheduler:
      _target_: zoo.train.schedules.warmup_cosine
      _partial_: true
      warmup_epochs: 1

:class:`zoo.train.ClassificationModule` fills ``total_steps`` and ``steps_per_epoch`` from the trainer
(only for callables that take them), so any ``torch.optim.lr_scheduler`` class or timm scheduler is
configured the same way with its own arguments.
"""
from __future__ import annotations

import math

import torch

__all__ = ["warmup_cosine", "warmup_step", "warmup_cosine_factor"]


def warmup_cosine_factor(step: int, *, total: int, warmup: int, warmup_factor: float, min_factor: float) -> float:
    """LR multiplier at optimizer step ``step``: linear from ``warmup_factor`` to 1 over ``warmup``
    steps, then half a cosine from 1 down to ``min_factor`` at step ``total``."""
    if step < warmup:
        return warmup_factor + (1.0 - warmup_factor) * step / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0.0,
    warmup_lr_factor: float = 1e-3,
    min_lr_factor: float = 1e-2,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step linear warm-up, then cosine decay to ``min_lr_factor`` x lr at the last step.

    ``min_lr_factor=1.0`` gives a constant lr after the warm-up.

    Args:
        optimizer: the optimizer whose groups' lr is scaled.
        total_steps: optimizer steps of the whole run (the trainer's ``estimated_stepping_batches``).
        steps_per_epoch: optimizer steps per epoch, to convert ``warmup_epochs``.
        warmup_epochs: length of the warm-up in epochs (fractions allowed).
        warmup_lr_factor: lr multiplier at step 0.
        min_lr_factor: lr multiplier at ``total_steps``.
    """
    warmup = int(warmup_epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine_factor(
        step, total=total_steps, warmup=warmup, warmup_factor=warmup_lr_factor, min_factor=min_lr_factor))


def warmup_step(
    optimizer: torch.optim.Optimizer,
    *,
    steps_per_epoch: int,
    step_epochs: float = 30,
    gamma: float = 0.1,
    warmup_epochs: float = 0.0,
    warmup_lr_factor: float = 1e-3,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step linear warm-up, then the lr times ``gamma`` every ``step_epochs`` epochs after it (the
    ResNet recipe: divided by 10 every 30 epochs)."""
    warmup, every = int(warmup_epochs * steps_per_epoch), max(1, int(step_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        if step < warmup:
            return warmup_lr_factor + (1.0 - warmup_lr_factor) * step / warmup
        return gamma ** ((step - warmup) // every)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
