"""int8 post-training quantisation of any zoo model: ``quantize(model, method, calib=batches)``.

Backends, with torch 2.14 and torchao 0.18 (the ``compress`` extra):

=================  ==========================================================================
``int8-dynamic``   torchao ``quantize_`` with ``Int8DynamicActivationInt8WeightConfig``: every
                   ``nn.Linear`` gets int8 per-channel weights, its input is quantised per token
                   at run time (no calibration). Linear layers only (torchao has no conv config).
``int8-weight``    torchao ``Int8WeightOnlyConfig``: int8 weights, float activations; Linear only.
``int8-static``    PT2E: ``torch.export`` -> torchao's ``prepare_pt2e`` with ``X86InductorQuantizer``
                   (Linear *and* Conv2d, conv-bn folded, W8A8 with activation observers) ->
                   calibrate on ``calib`` -> ``convert_pt2e``. A ``torch.fx.GraphModule`` for one
                   image size (any batch size). Eagerly it runs quantise/dequantise around float ops
                   (reference numerics, not faster); ``torch.compile`` lowers it to int8 oneDNN
                   kernels.
=================  ==========================================================================

Why these: torchao's ``quantize_`` is the maintained eager route and works with torch 2.14 for
``nn.Linear``; it has no int8 convolution, so convolutions go through PT2E (graph-mode, whose
quantiser knows conv-bn-add-relu). ``torch.ao.quantization``'s eager API (``prepare`` /
``convert``, ``quantize_dynamic``) is deprecated, and its PT2E entry points moved to torchao
(``torch.ao.quantization.quantize_pt2e`` is gone in torch 2.14), so every path runs on torchao.

ResNets: non-strict ``torch.export`` (the torch 2.14 default) names a module called twice in one
forward (ResNet blocks apply ``self.act`` after ``bn1`` and after the residual add) by the same
module path, so the quantiser saw one ReLU "partition" with two outputs and refused ("Input
partition has more than one output node"). :func:`_one_partition_per_call` gives each call its own
name (export already keys the second call ``act@1``) before ``prepare_pt2e``.

The accelerator's fast twins are undone first (``zoo.accel.undo``): quantisers expect plain
``nn.Linear`` / ``nn.Conv2d``. Quantisation works on a copy; the float model is left as it was.

Saving (:func:`save` / :func:`load`) never pickles code: the file is a dict of tensors and numbers
read back with ``torch.load(weights_only=True)`` into the float architecture quantised again the
same way. Dynamic / weight-only: the ``state_dict`` (torchao int8 tensor subclasses, which torchao
allow-lists for ``weights_only``). Static: the converted graph's constants (int8 weights,
per-channel scales) and the activation scales / zero points of its quantise nodes.
(``torch.export.save`` would also work, but ``torch.export.load`` unpickles.)
"""
from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Iterable

import torch
import torch.nn as nn

from .. import accel

__all__ = ["METHODS", "quantize", "save", "load", "saved_bytes"]

METHODS = ("int8-dynamic", "int8-weight", "int8-static")
_FORMAT = "zoo.compress.quantize/1"


def _check_method(method) -> None:
    if method not in METHODS:
        raise ValueError(f"Unknown quantisation method {method!r}; choose from {list(METHODS)}.")


def _config(method: str):
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig

    return Int8DynamicActivationInt8WeightConfig() if method == "int8-dynamic" else Int8WeightOnlyConfig()


def _first(batch) -> torch.Tensor:
    """The input images of a batch: a tensor, ``(images, targets)``, or a dict with ``image``."""
    if isinstance(batch, dict):
        return batch["image"]
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def quantize(model: nn.Module, method: str = "int8-dynamic", *, calib: Iterable | None = None,
             inplace: bool = False) -> nn.Module:
    """int8-quantise ``model`` for CPU inference.

    Args:
        model: any zoo model (accelerated or plain); its float weights are not touched unless
            ``inplace``.
        method: one of :data:`METHODS`.
        calib: batches (``[B, C, H, W]`` tensors, ``(images, targets)`` or ``{"image": ...}``) to
            calibrate the activation ranges; required for ``int8-static``, ignored otherwise. All
            batches must share ``C, H, W``: the static model runs at that size only.
        inplace: quantise ``model`` itself instead of a copy (dynamic / weight-only only).

    Returns:
        The quantised model in eval mode, ``[B, C, H, W] -> [B, num_classes]`` like the float one:
        an ``nn.Module`` with torchao int8 Linear weights, or (static) a ``torch.fx.GraphModule``.
        ``model.quantization`` names the method.

    Raises:
        ValueError: unknown method; no layer the method quantises (dynamic / weight-only need an
            ``nn.Linear``); ``int8-static`` without calibration batches, with batches of different
            image sizes, or on a model ``torch.export`` cannot capture.
    """
    _check_method(method)
    if not isinstance(model, nn.Module):
        raise TypeError(f"quantize() takes an nn.Module, got {type(model).__name__}.")
    kinds = (nn.Linear, nn.Conv2d) if method == "int8-static" else (nn.Linear,)
    layers = [m for m in model.modules() if isinstance(m, kinds)]
    if not layers:
        what = "nn.Linear or nn.Conv2d" if method == "int8-static" else "nn.Linear"
        hint = "" if method == "int8-static" else " (torchao quantises Linear layers only; int8-static also does Conv2d)"
        raise ValueError(f"{type(model).__name__} has no {what} for {method} to quantise{hint}.")
    q = model if inplace and method != "int8-static" else copy.deepcopy(model)
    accel.undo(q)
    q.eval()
    if method == "int8-static":
        q = _static(q, _calibration(calib), name=type(model).__name__)
    else:
        from torchao.quantization import quantize_

        _warn_if_mostly_conv(model, method)
        quantize_(q, _config(method))
    q.__dict__["quantization"] = method
    return q


def _warn_if_mostly_conv(model: nn.Module, method: str) -> None:
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    total = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
    if linear < 0.5 * total:
        warnings.warn(f"{method} quantises nn.Linear only: {linear / total:.0%} of {type(model).__name__}'s "
                      "layer weights; use int8-static to quantise its convolutions too.", stacklevel=3)


def _calibration(calib) -> list[torch.Tensor]:
    batches = [_first(b) for b in (calib or [])]
    if not batches:
        raise ValueError("int8-static needs calibration batches: quantize(model, 'int8-static', calib=[x, ...]).")
    sizes = {tuple(b.shape[1:]) for b in batches}
    if len(sizes) > 1 or batches[0].ndim != 4:
        raise ValueError(f"int8-static calibration batches must be [B, C, H, W] of one image size (the static "
                         f"model runs at that size); got sizes {sorted(sizes)}.")
    return batches


def _one_partition_per_call(graph: torch.fx.GraphModule) -> None:
    """Name each call of a module reused within one forward by its own path (``act@1``), so the PT2E
    quantiser groups its nodes per call, not per module (see the module docstring)."""
    for node in graph.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if stack:
            node.meta["nn_module_stack"] = {
                key: ((f"{path}@{key.rpartition('@')[2]}" if "@" in key.rpartition(".")[2] else path), cls)
                for key, (path, cls) in stack.items()}


def _static(model: nn.Module, batches: list[torch.Tensor], name: str) -> torch.fx.GraphModule:
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer, get_default_x86_inductor_quantization_config)

    example = batches[0] if len(batches[0]) > 1 else batches[0].expand(2, -1, -1, -1)  # batch 1 would specialise
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    try:
        graph = torch.export.export(model, (example,), dynamic_shapes=({0: batch},)).module()
    except Exception as e:  # data-dependent control flow, untraceable ops ...
        raise ValueError(f"int8-static could not capture {name} with torch.export (PT2E quantises exported "
                         f"graphs): {type(e).__name__}: {str(e).splitlines()[0][:300]}. int8-dynamic and "
                         "int8-weight need no export.") from e
    _one_partition_per_call(graph)
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    with torch.no_grad():
        prepared = prepare_pt2e(graph, quantizer)
        for x in batches:  # observers record the activation ranges
            prepared(x)
        q = convert_pt2e(prepared)
    q.__dict__["quant_input_shape"] = tuple(example.shape[1:])
    return q


# ------------------------------------------------------------------------------------ save / load
def _qnodes(gm: torch.fx.GraphModule) -> list[torch.fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "call_function" and "quantize" in str(n.target)]


def _attr_owner(gm: nn.Module, target: str) -> tuple[nn.Module, str]:
    prefix, _, name = target.rpartition(".")
    return (gm.get_submodule(prefix) if prefix else gm), name


def _static_payload(gm: torch.fx.GraphModule) -> dict:
    consts = {}
    for n in gm.graph.nodes:
        if n.op == "get_attr":
            owner, name = _attr_owner(gm, n.target)
            consts[n.target] = getattr(owner, name).detach()
    qparams = [[[i, a] for i, a in enumerate(n.args) if type(a) in (int, float)] for n in _qnodes(gm)]
    return {"input_shape": list(gm.__dict__["quant_input_shape"]), "constants": consts, "qparams": qparams,
            "targets": [str(n.target) for n in _qnodes(gm)]}


def save(model: nn.Module, path: str | os.PathLike) -> None:
    """Save a model :func:`quantize` returned, as tensors and numbers only (see the module docstring)."""
    method = model.__dict__.get("quantization")
    if method not in METHODS:
        raise ValueError(f"save() takes a model quantize() returned (model.quantization in {list(METHODS)}); "
                         f"got {type(model).__name__} with quantization={method!r}.")
    payload = {"format": _FORMAT, "method": method}
    payload.update(_static_payload(model) if method == "int8-static" else {"state_dict": model.state_dict()})
    torch.save(payload, os.fspath(path))


def load(path: str | os.PathLike, float_model: nn.Module) -> nn.Module:
    """Read what :func:`save` wrote (``torch.load(weights_only=True)``: nothing in the file runs).

    Args:
        path: the saved file.
        float_model: the architecture, e.g. ``zoo.create(name, num_classes=k)`` (its weights do not
            matter): it is quantised the same way and the saved int8 tensors are put into it.

    Returns:
        The quantised model, equal in outputs to the one saved.

    Raises:
        ValueError: not a file :func:`save` wrote, or saved from another architecture.
    """
    payload = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a quantised model written by zoo.compress.quantize.save().")
    method = payload["method"]
    _check_method(method)
    with warnings.catch_warnings():  # quantize() warned when this was saved; zero-calibrated observers warn
        warnings.simplefilter("ignore")
        if method != "int8-static":
            m = quantize(float_model, method)
            m.load_state_dict(payload["state_dict"], assign=True)
            return m
        m = quantize(float_model, method, calib=[torch.zeros(2, *payload["input_shape"])])  # qparams replaced below
    nodes = _qnodes(m)
    if [str(n.target) for n in nodes] != payload["targets"]:
        raise ValueError(f"{path} was saved from another architecture than {type(float_model).__name__}: "
                         "its quantised graph differs.")
    with torch.no_grad():
        for target, value in payload["constants"].items():
            owner, name = _attr_owner(m, target)
            old = getattr(owner, name)
            if old.shape != value.shape or old.dtype != value.dtype:
                raise ValueError(f"{path}: {target} is {tuple(value.shape)} {value.dtype}, the architecture "
                                 f"has {tuple(old.shape)} {old.dtype}: saved from another model.")
            old.copy_(value)
    for node, params in zip(nodes, payload["qparams"]):
        args = list(node.args)
        for i, a in params:
            args[i] = a
        node.args = tuple(args)
    m.recompile()
    return m


def saved_bytes(model: nn.Module) -> int:
    """Bytes on disk: :func:`save`'s file for a quantised model, ``torch.save(state_dict)`` for a float one."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.pt")
        if model.__dict__.get("quantization") in METHODS:
            save(model, path)
        else:
            torch.save(model.state_dict(), path)
        return os.path.getsize(path)
