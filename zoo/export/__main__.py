"""``python -m zoo.export NAME [--pretrained TAG] [--dynamic-size] [--img-size N] --out model.onnx``.

Builds ``zoo.create(NAME)``, exports it to ONNX and checks it in onnxruntime against eager
(``zoo.export.onnx``); prints the file written.
"""
from __future__ import annotations

import argparse

import torch

from .. import create
from .onnx import export_onnx


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m zoo.export", description=__doc__.splitlines()[0])
    p.add_argument("name", help="a registered model name (zoo.list_models())")
    p.add_argument("--pretrained", default=None, help="weight tag from the catalog (default: random init)")
    p.add_argument("--img-size", type=int, default=None, help="export input size (default: the model's)")
    p.add_argument("--batch", type=int, default=2, help="export example batch (the batch stays dynamic)")
    p.add_argument("--dynamic-size", action="store_true", help="keep H and W symbolic (CNNs, ViT, Swin; refused where "
                   "the graph cannot follow the size)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier outputs (default: the model's)")
    p.add_argument("--opset", type=int, default=None)
    p.add_argument("--out", required=True, help="the .onnx file to write")
    args = p.parse_args(argv)
    kw = {} if args.num_classes is None else {"num_classes": args.num_classes}
    model = create(args.name, pretrained=args.pretrained or False, **kw).eval()
    example = None
    if args.img_size is not None:
        example = torch.randn(args.batch, getattr(model, "in_chans", 3), args.img_size, args.img_size)
    path = export_onnx(model, args.out, example, dynamic_size=args.dynamic_size, opset=args.opset)
    print(f"wrote {path} (onnxruntime matches eager within 1e-4 x max|out|)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
