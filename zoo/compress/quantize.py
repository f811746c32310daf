"""int8 post-training quantisation of any zoo model: ``quantize(model, method, calib=batches)``.

Backend: **torchao** (0.18, installs and runs with torch 2.14; the ``compress`` extra). PyTorch's own
``torch.ao.quantization`` eager API is deprecated and its PT2E entry points moved to torchao
(``torch.ao.quantization.quantize_pt2e`` no longer exists in torch 2.14), so torchao is both the
maintained route and the only one left:

=================  ==========================================================================
``int8-dynamic``   torchao ``Int8DynamicActivationInt8WeightConfig`` on every ``nn.Linear``: int8
                   weights, activations quantised per token at run time (no calibration)
``int8-weight``    torchao ``Int8WeightOnlyConfig``: int8 weights, float activations
``int8-static``    torchao PT2E: ``torch.export`` -> ``prepare_pt2e`` with ``X86InductorQuantizer``
                   (Linear *and* Conv2d, W8A8 with observers) -> calibrate on ``calib`` ->
                   ``convert_pt2e``. Returns a ``GraphModule`` for one input shape; it runs eagerly
                   as quantise/dequantise around float ops (reference numerics, not faster);
                   ``torch.compile`` lowers it to int8 oneDNN kernels. Known limit: torchao 0.18's
                   X86 quantizer refuses ResNet's conv-bn-add-relu pattern ("Input partition has
                   more than one output node"); ViT / Swin / DeiT export and quantise.
=================  ==========================================================================

The accelerator's fast twins are undone first (``zoo.accel.undo``): quantisers expect plain
``nn.Linear`` / ``nn.Conv2d``. Quantisation works on a copy; the float model is left as it was.

Saving: :func:`save` / :func:`load`. Dynamic and weight-only models save their ``state_dict``
(torchao tensor subclasses; read back with ``weights_only=True``) into a float model quantised the
same way; a static model is saved as a ``torch.export`` program (``.pt2``).
"""
from __future__ import annotations

import copy
import os
from collections.abc import Iterable

import torch
import torch.nn as nn

from .. import accel

__all__ = ["METHODS", "quantize", "save", "load"]

METHODS = ("int8-dynamic", "int8-weight", "int8-static")


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"Unknown quantisation method {method!r}; choose from {list(METHODS)}.")


def _config(method: str):
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig

    return Int8DynamicActivationInt8WeightConfig() if method == "int8-dynamic" else Int8WeightOnlyConfig()


def _first(batch) -> torch.Tensor:
    """The input images of a batch: a tensor, or the first item of ``(images, targets)``."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def quantize(model: nn.Module, method: str = "int8-dynamic", *, calib: Iterable | None = None,
             inplace: bool = False) -> nn.Module:
    """int8-quantise ``model`` for CPU inference.

    Args:
        model: any zoo model (accelerated or plain); its float weights are not touched unless
            ``inplace``.
        method: one of :data:`METHODS`.
        calib: batches (``[B, C, H, W]`` tensors or ``(images, targets)``) to calibrate the
            activation ranges; required for ``int8-static``, ignored otherwise. Its first batch
            fixes the static model's input shape.
        inplace: quantise ``model`` itself instead of a copy (dynamic / weight-only only).

    Returns:
        The quantised model in eval mode: an ``nn.Module`` with torchao int8 weights, or (static)
        an exported ``torch.fx.GraphModule``. ``model.quantization`` names the method.

    Raises:
        ValueError: unknown method; ``int8-static`` without calibration batches; no Linear /
            Conv2d layer to quantise.
    """
    _check_method(method)
    if not any(isinstance(m, (nn.Linear, nn.Conv2d)) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} has no nn.Linear or nn.Conv2d to quantise.")
    q = model if inplace and method != "int8-static" else copy.deepcopy(model)
    accel.undo(q)
    q.eval()
    if method == "int8-static":
        batches = [_first(b) for b in (calib or [])]
        if not batches:
            raise ValueError("int8-static needs calibration batches: quantize(model, 'int8-static', calib=[x, ...]).")
        q = _static(q, batches)
    else:
        from torchao.quantization import quantize_

        quantize_(q, _config(method))
    q.__dict__["quantization"] = method
    return q


def _static(model: nn.Module, batches: list[torch.Tensor]) -> nn.Module:
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer, get_default_x86_inductor_quantization_config)

    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    with torch.no_grad():
        graph = torch.export.export(model, (batches[0],)).module()
        prepared = prepare_pt2e(graph, quantizer)
        for x in batches:  # observers record the activation ranges
            prepared(x)
        return convert_pt2e(prepared)


def save(model: nn.Module, path: str | os.PathLike, example: torch.Tensor | None = None) -> None:
    """Save a quantised model: its ``state_dict`` (dynamic / weight-only) or, for ``int8-static``,
    the ``torch.export`` program (``example``: an input of the calibrated shape)."""
    method = model.__dict__.get("quantization")
    _check_method(method)
    if method == "int8-static":
        if example is None:
            raise ValueError("Saving an int8-static model exports it: pass example=<input batch>.")
        torch.export.save(torch.export.export(model, (example,)), os.fspath(path))
    else:
        torch.save(model.state_dict(), os.fspath(path))


def load(path: str | os.PathLike, method: str, float_model: nn.Module | None = None) -> nn.Module:
    """Read what :func:`save` wrote. Dynamic / weight-only need ``float_model``, the architecture
    (e.g. ``zoo.create(name, fast=False)``, any weights): it is quantised the same way and the
    saved int8 tensors are assigned into it (read with ``weights_only=True``)."""
    _check_method(method)
    if method == "int8-static":
        m = torch.export.load(os.fspath(path)).module()
    else:
        if float_model is None:
            raise ValueError(f"Loading an {method} state_dict needs float_model=<the architecture>.")
        m = quantize(float_model, method)
        m.load_state_dict(torch.load(os.fspath(path), map_location="cpu", weights_only=True), assign=True)
    m.__dict__["quantization"] = method
    return m
