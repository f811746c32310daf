"""What both exporters do first: a plain eval copy of the model and a checked example input."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .. import accel


def plain_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with the accelerator undone; the caller's model is not touched.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: ``model`` is in training mode (dropout and batch statistics would be exported).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"export takes an nn.Module, got {type(model).__name__}.")
    if model.training:
        raise ValueError(f"{type(model).__name__} is in training mode: call model.eval() before exporting "
                         f"(dropout and batch-norm statistics would be baked into the graph).")
    return accel.undo(copy.deepcopy(model)).eval()


def example_input(model: nn.Module, example: torch.Tensor | None, batch: int = 2) -> torch.Tensor:
    """The export example: ``example`` checked to be ``[B, C, H, W]``, or a random one at the model's
    ``img_size`` (224 when it has none). The default batch is 2: torch.export specialises a batch of 1."""
    if example is None:
        size = getattr(model, "img_size", 224)
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return torch.randn(batch, getattr(model, "in_chans", 3), h, w)
    if not isinstance(example, torch.Tensor):
        raise TypeError(f"example must be a torch.Tensor [B, C, H, W], got {type(example).__name__}.")
    if example.ndim != 4:
        raise ValueError(f"example must be an image batch [B, C, H, W] (rank 4), got rank {example.ndim} "
                         f"with shape {list(example.shape)}.")
    return example.float()
