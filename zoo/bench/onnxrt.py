"""The onnxruntime backend of the benchmark: a zoo model's exported ONNX graph next to eager.

``python -m zoo.bench resnet50 --backend onnxruntime`` adds a row per model: ``zoo.export.onnx`` writes
the plain model's graph (dynamic batch, checked against eager in float32), and an
:class:`OrtModule` runs it in onnxruntime's CPU execution provider with as many intra-op threads as
torch uses, so both sides get the same cores. onnxruntime runs the float32 graph whatever the
precision asked for: torch's autocast does not reach it, and its CPU provider has no bfloat16
MatMul / Conv kernels, so a bf16 row of this backend is float32 (its ``note`` says so).

``python -m zoo.bench.onnxrt MODELS`` is the side-by-side table of eager, ``torch.compile`` and
onnxruntime for inference (interleaved rounds, medians), as in the README.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn

from .twins import Impl

__all__ = ["OrtModule", "ort_impl", "held_lock", "ORT_LIBRARY", "BF16_NOTE"]

ORT_LIBRARY = "onnxruntime"
BF16_NOTE = "onnxruntime runs float32 (no bf16 kernels on its CPU provider)"


@contextlib.contextmanager
def held_lock(path: str | None):
    """Hold an exclusive ``flock`` on ``path`` (None: no lock) while timing on a shared machine;
    exports and compilation happen before it is taken."""
    if path is None:
        yield
        return
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class OrtModule(nn.Module):
    """An onnxruntime session behind an ``nn.Module`` call: ``[B, C, H, W]`` float -> logits (float32).

    Args:
        path: the ``.onnx`` file.
        model: the eager model it was exported from; kept (not run) so parameter and FLOP counts
            report the model the graph computes.
        threads: intra-op threads (default: ``torch.get_num_threads()``).
    """

    def __init__(self, path: str | Path, model: nn.Module | None = None, threads: int | None = None):
        super().__init__()
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.flop_model = model  # what count_macs and the parameter count read (never run here)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float().contiguous().cpu().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: x})[0])


def _build_ort(name: str, img_size: int, workdir: str) -> OrtModule:
    from .. import create
    from ..export import onnx as export_onnx

    model = create(name, fast=False).eval()
    path = export_onnx(model, Path(workdir) / f"{name}_{img_size}.onnx", torch.randn(2, 3, img_size, img_size))
    return OrtModule(path, model)


def ort_impl(name: str, workdir: str | None = None) -> Impl:
    """The zoo model ``name`` exported to ONNX and run in onnxruntime, as an :class:`Impl`."""
    workdir = workdir or tempfile.mkdtemp(prefix="zoo_ort_")
    return Impl(ORT_LIBRARY, f"ort:{name}", partial(_build_ort, name, workdir=workdir))


def compare(name: str, *, batch: int = 8, precisions=("fp32", "bf16"), repeats: int = 7, warmup: int = 2,
            img_size: int | None = None, lock: str | None = None) -> list[dict]:
    """Eager (zoo.accel), ``torch.compile`` (inductor) and onnxruntime for one model, inference,
    timed in interleaved rounds; one row per (precision, backend) with the median ms per batch and
    throughput relative to eager. The export and the compilation run before ``lock`` is taken."""
    from .. import create
    from .measure import make_step, paired_ratio, time_interleaved
    from .twins import native_img_size

    size = img_size or native_img_size(name)
    x = torch.randn(batch, 3, size, size)
    eager = create(name).eval()
    compiled = torch.compile(create(name).eval())
    ort_model = ort_impl(name).factory(size)
    steps = {p: [make_step(m, "infer", p, x) for m in (eager, compiled, ort_model)] for p in precisions}
    for p in precisions:
        steps[p][1]()  # compiles for this precision
    rows = []
    with held_lock(lock):
        for precision in precisions:
            for step in steps[precision]:
                for _ in range(warmup):
                    step()
            times = time_interleaved(steps[precision], device="cpu", repeats=repeats)
            for backend, t in zip(("eager", "torch.compile", "onnxruntime"), times):
                rows.append(dict(model=name, precision=precision, backend=backend, batch=batch, img_size=size,
                                 ms=1e3 * statistics.median(t), vs_eager=paired_ratio(t, times[0]),
                                 note=BF16_NOTE if backend == "onnxruntime" and precision != "fp32" else ""))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m zoo.bench.onnxrt", description=compare.__doc__.splitlines()[0])
    p.add_argument("models", help="comma-separated registered names")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--precision", default="fp32,bf16")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--lock", default=None, help="flock this file while timing (after export and compilation)")
    args = p.parse_args(argv)
    print("| model | precision | backend | ms / batch | throughput vs eager |\n|---|---|---|---|---|")
    for name in args.models.split(","):
        for r in compare(name, batch=args.batch, precisions=args.precision.split(","), repeats=args.repeats,
                         img_size=args.img_size, lock=args.lock):
            note = f" ({r['note']})" if r["note"] else ""
            print(f"| {r['model']} | {r['precision']} | {r['backend']}{note} | {r['ms']:.1f} | {r['vs_eager']:.2f}x |",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
