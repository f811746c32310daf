"""ONNX export for onnxruntime, checked against eager before the file is handed back.

``torch.onnx.export(dynamo=True)`` (torch.export, then onnxscript) is tried first; where it fails
for a family the TorchScript exporter (``dynamo=False``) is the fallback. Either way the written
graph is run in onnxruntime (CPU) and compared with the eager model in float32: at the export
batch, at another batch, and with ``dynamic_size`` at two other input sizes. A graph whose numbers
are wrong is deleted and the export raises, rather than leaving a file that is wrong at another
size (the TorchScript exporter bakes Python-level size arithmetic into constants). Swin's window
clamp, padding, shift and masks are such arithmetic: with ``dynamic_size`` a copy that computes them
in the graph is exported instead (``swin_graph.py``), so Swin follows the input size too.
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from ._common import example_input, plain_copy
from .swin_graph import graph_geometry

__all__ = ["export_onnx", "check_onnx", "TOLERANCE"]

TOLERANCE = 1e-4  # of max|eager output|, float32: the zoo's fidelity bar


def _require_onnxruntime():
    try:
        import onnx  # noqa: F401
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ImportError(f"zoo.export.onnx needs onnx, onnxruntime and onnxscript ({e.name} is missing): "
                          f"pip install 'attention-zoo[export]'") from e
    return onnxruntime


def _static_refusal(model: nn.Module) -> str | None:
    """Why a model cannot take ``dynamic_size``, known without exporting (None: try and check)."""
    from ..blocks.self_attn import BottleneckSelfAttn

    if any(isinstance(m, BottleneckSelfAttn) for m in model.modules()):
        return ("its 'sa' (BoTNet) blocks hold relative-position tables for one feature size, cropped or "
                "resampled per input size in Python")
    return None


def _export(model: nn.Module, x: torch.Tensor, path: Path, dynamic_batch: bool, dynamic_size: bool,
            opset: int | None, dynamo: bool) -> None:
    axes = ([0] if dynamic_batch else []) + ([2, 3] if dynamic_size else [])
    kw = {} if opset is None else {"opset_version": opset}
    # Both exporters are chatty (progress lines, tracer warnings); the numbers check below is what counts.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if dynamo:
            shapes = ({a: torch.export.Dim.DYNAMIC for a in axes},) if axes else None
            torch.onnx.export(model, (x,), str(path), dynamo=True, dynamic_shapes=shapes, input_names=["input"],
                              output_names=["output"], external_data=False, verbose=False, **kw)
        else:
            names = {0: "batch", 2: "height", 3: "width"}
            dyn = {"input": {a: names[a] for a in axes}, "output": {0: "batch"} if dynamic_batch else {}}
            torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["input"], output_names=["output"],
                              dynamic_axes=dyn, **kw)


def _check_inputs(x: torch.Tensor, dynamic_batch: bool, dynamic_size: bool, stride: int) -> list[torch.Tensor]:
    B, C, H, W = x.shape
    gen = torch.Generator().manual_seed(0)
    shapes = [(B, C, H, W)] + ([(B + 1, C, H, W)] if dynamic_batch else [])
    if dynamic_size:  # one larger square, one non-square: a different padding / window regime each
        shapes += [(1, C, H + stride, W + stride), (1, C, H + 2 * stride, W)]
    return [x] + [torch.randn(s, generator=gen) for s in shapes[1:]]


def check_onnx(model: nn.Module, path: str | os.PathLike, inputs: list[torch.Tensor]) -> list[float]:
    """Run the ONNX file in onnxruntime (CPU) on each input; return ``max|ort - eager| / max|eager|``."""
    ort = _require_onnxruntime()
    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # a shape the graph cannot take is reported below as inf, not logged
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    errors = []
    for x in inputs:
        with torch.inference_mode():
            ref = model(x).float()
        try:
            out = torch.from_numpy(sess.run(None, {name: x.numpy()})[0])
        except Exception:  # onnxruntime rejects a shape the graph fixed: as wrong as wrong numbers
            errors.append(float("inf"))
            continue
        errors.append(float("inf") if out.shape != ref.shape else
                      float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12)))
    return errors


def export_onnx(model: nn.Module, path: str | os.PathLike, example: torch.Tensor | None = None, *,
                dynamic_batch: bool = True, dynamic_size: bool = False, opset: int | None = None,
                stride: int = 32) -> Path:
    """Write ``model`` as an ONNX graph at ``path``, checked in onnxruntime against eager float32.

    Args:
        model: any model in eval mode (``zoo.create`` output; the accelerator is undone on a copy).
        path: the ``.onnx`` file to write.
        example: ``[B, C, H, W]`` float input the graph is traced with (default: random, batch 2, at
            the model's ``img_size``).
        dynamic_batch: the batch dimension stays symbolic.
        dynamic_size: H and W stay symbolic; checked at two other sizes (``+stride`` and ``+2*stride``).
        opset: ONNX opset (default: the exporter's).
        stride: the step between the ``dynamic_size`` check sizes when the model has no
            ``feature_info`` (zoo models do: their largest reduction, 32 or the ViT patch, is used).

    Returns:
        ``Path(path)``.

    Raises:
        ValueError: a model in training mode, an example that is not rank 4, or ``dynamic_size=True``
            on a model whose graph cannot follow the input size (nothing is left at ``path``).
        RuntimeError: neither exporter gives a graph matching eager at the export size.
        ImportError: the ``export`` extra is not installed.
    """
    _require_onnxruntime()
    plain = plain_copy(model)
    x = example_input(plain, example)
    path = Path(path)
    name = type(model).__name__
    if dynamic_size and (why := _static_refusal(plain)):
        raise ValueError(f"dynamic_size=True is not supported for this {name}: {why}. Export one graph per "
                         f"input size (dynamic_size=False).")
    if dynamic_size and getattr(plain, "feature_info", None):  # the model's own total downsampling
        stride = max(f["reduction"] for f in plain.feature_info)
    inputs = _check_inputs(x, dynamic_batch, dynamic_size, stride)
    # Swin's window geometry is Python arithmetic on the size: with dynamic_size a copy computing it
    # in the graph is exported (zoo.export.swin_graph), and checked against the eager model.
    graph = graph_geometry(copy.deepcopy(plain)) if dynamic_size else plain
    failures, fixed_ok = [], False
    for dynamo in (True, False):
        try:
            _export(graph, x, path, dynamic_batch, dynamic_size, opset, dynamo)
        except Exception as e:  # noqa: BLE001 - the next exporter may manage; all reasons are reported
            failures.append(f"dynamo={dynamo}: export failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
            continue
        errors = check_onnx(plain, path, inputs)
        if all(e <= TOLERANCE for e in errors):
            return path
        fixed_ok |= errors[0] <= TOLERANCE
        failures.append(f"dynamo={dynamo}: onnxruntime differs from eager by {[f'{e:.1e}' for e in errors]} "
                        f"(x max|out|) at input shapes {[list(t.shape) for t in inputs]}")
    path.unlink(missing_ok=True)
    if dynamic_size:
        raise ValueError(f"dynamic_size=True is not supported for this {name}: no exporter gives a graph that "
                         f"follows the input size ({'; '.join(failures)}). Export one graph per input size "
                         f"(dynamic_size=False)." + (" The export size itself was right." if fixed_ok else ""))
    raise RuntimeError(f"ONNX export of {name} does not match eager: {'; '.join(failures)}")
