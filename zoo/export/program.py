"""``torch.export`` of any zoo model: an ``ExportedProgram`` of the plain model, checked against eager."""
from __future__ import annotations

import torch
import torch.nn as nn

from ._common import example_input, plain_copy

__all__ = ["export_program"]


def export_program(model: nn.Module, example: torch.Tensor | None = None, *,
                   dynamic_batch: bool = True) -> torch.export.ExportedProgram:
    """``torch.export.export`` of the plain eval model (the accelerator undone on a copy).

    Args:
        model: any model in eval mode.
        example: ``[B, C, H, W]`` input (default: random, batch 2, at the model's ``img_size``); the
            program is specialised to its H and W.
        dynamic_batch: the batch dimension stays symbolic (an example batch of 1 is widened to 2 for
            the trace, since torch.export specialises a dimension of size 1).

    Returns:
        The ``ExportedProgram``; ``program.module()(x)`` runs it, ``torch.export.save`` writes it.

    Raises:
        ValueError: a model in training mode or an example that is not rank 4.
    """
    plain = plain_copy(model)
    x = example_input(plain, example)
    if dynamic_batch and x.shape[0] == 1:
        x = x.expand(2, -1, -1, -1).contiguous()
    shapes = ({0: torch.export.Dim.DYNAMIC},) if dynamic_batch else None
    with torch.no_grad():
        return torch.export.export(plain, (x,), dynamic_shapes=shapes)
