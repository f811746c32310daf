"""zoo.export: deployable forms of any model ``zoo.create`` returns, each checked against eager.

=============  ==================================================================================
``onnx``       an ONNX file for onnxruntime (``onnx.py``); needs the ``export`` extra
               (``pip install attention-zoo[export]``: onnx, onnxruntime, onnxscript)
``program``    a ``torch.export.ExportedProgram`` (``program.py``), saved with ``torch.export.save``
=============  ==================================================================================

Both work on the plain model: the accelerator (``zoo.accel``) is undone on a copy first, so the
caller's model is left as it was. Importing this package never imports onnx or onnxruntime.
"""
from __future__ import annotations

from .onnx import export_onnx as onnx
from .program import export_program as program

__all__ = ["onnx", "program"]
