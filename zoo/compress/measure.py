"""Measure int8 quantisation against float32 and bf16, side by side in one process.

``python -m zoo.compress.measure --models resnet50,vit_s_16,swin_t --size 224 --batch 8`` (random
weights, ImageNet size) or ``--ckpt <train.py checkpoint>`` (a trained model, its val split). For
each model: seconds per batch of float32 (``zoo.create``'s default, accelerated), bf16 autocast,
the plain float32 model the quantisers start from (``zoo.accel`` undone), ``int8-dynamic``, ``int8-weight`` and ``int8-static`` (eager; ``--compile-static`` adds it through
``torch.compile``, which lowers it to int8 oneDNN kernels), timed round-robin (medians of the
per-round ratios); size on disk; top-1 agreement and logit cosine with float32 (and top-1 on the
val split for a checkpoint). Prints a markdown table.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from .quantize import METHODS, quantize, saved_bytes


def _bf16(model: nn.Module):
    def run(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x).float()
    return run


def _bf16_bytes(model: nn.Module) -> int:
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        torch.save({k: v.bfloat16() if v.is_floating_point() else v for k, v in model.state_dict().items()}, f"{d}/m.pt")
        return os.path.getsize(f"{d}/m.pt")


@torch.inference_mode()
def measure(name: str, model: nn.Module, x: torch.Tensor, evals: list[tuple], calib: list[torch.Tensor], *,
            rounds: int = 5, compile_static: bool = False, log=print) -> list[dict]:
    """One row per variant: ``speed_vs_fp32``, ``speed_vs_bf16``, ``ms``, ``mb``, ``top1_agree``, ``cos``
    (min over images) and, when ``evals`` carry targets, ``top1``."""
    from .. import accel

    # The quantisers start from the plain model (accel undone): "float32 plain" is what they changed.
    plain = accel.undo(copy.deepcopy(model))
    variants = {"float32": model, "bf16 autocast": _bf16(model), "float32 plain": plain}
    sizes = {"float32": saved_bytes(model), "bf16 autocast": _bf16_bytes(model), "float32 plain": saved_bytes(model)}
    for method in METHODS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = quantize(model, method, calib=calib)
        variants[method] = q
        sizes[method] = saved_bytes(q)
        log(f"{name}: {method} ready")
    if compile_static:
        with torch._inductor.config.patch(freezing=True):
            comp = torch.compile(variants["int8-static"])
            comp(x)  # compiles here, not inside the timed rounds
        variants["int8-static compiled"] = comp
        sizes["int8-static compiled"] = sizes["int8-static"]
        log(f"{name}: compiled")
    fns = list(variants.values())
    for f in fns:
        f(x)  # warm-up
    times = [[] for _ in fns]
    for _ in range(rounds):
        for i, f in enumerate(fns):
            t0 = time.perf_counter()
            f(x)
            times[i].append(time.perf_counter() - t0)
    ref_out = [model(b) for b, _ in evals]
    rows = []
    for (label, f), t in zip(variants.items(), times):
        outs = [f(b) for b, _ in evals]
        agree = torch.cat([(o.argmax(1) == r.argmax(1)) for o, r in zip(outs, ref_out)]).float().mean().item()
        cos = min(F.cosine_similarity(o.float(), r).min().item() for o, r in zip(outs, ref_out))
        row = {"model": name, "variant": label, "ms": 1e3 * statistics.median(t),
               "speed_vs_fp32": statistics.median(a / b for a, b in zip(times[0], t)),
               "speed_vs_bf16": statistics.median(a / b for a, b in zip(times[1], t)),
               "mb": sizes[label] / 2**20, "top1_agree": agree, "cos": cos}
        if evals[0][1] is not None:
            row["top1"] = torch.cat([(o.argmax(1) == y) for o, (_, y) in zip(outs, evals)]).float().mean().item()
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    top1 = "top1" in rows[0]
    head = "| model | variant | ms / batch | speed vs fp32 | speed vs bf16 | MB on disk | top-1 agree | min cos |" + (" top-1 |" if top1 else "")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(f"| {r['model']} | {r['variant']} | {r['ms']:.1f} | {r['speed_vs_fp32']:.2f}x | {r['speed_vs_bf16']:.2f}x "
                     f"| {r['mb']:.1f} | {r['top1_agree']:.1%} | {r['cos']:.4f} |" + (f" {r['top1']:.1%} |" if top1 else ""))
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet50,vit_s_16,swin_t")
    p.add_argument("--ckpt", default=None, help="a train.py checkpoint: measured on its val split instead")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--eval-batches", type=int, default=4, help="random batches for agreement (random weights)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--compile-static", action="store_true")
    a = p.parse_args(argv)
    import zoo

    torch.manual_seed(0)
    rows = []
    if a.ckpt:
        from ..checkpoint import load_checkpoint
        from ..data import ImageFolderDataModule
        from .evaluate import calibration_batches

        model, meta = load_checkpoint(a.ckpt)
        dm = ImageFolderDataModule(embedded="digits", data_config=meta["data_config"], eval_batch_size=a.batch)
        dm.prepare_data()
        dm.setup("validate")
        evals = [(b["image"], b["target"]) for b in dm.val_dataloader()]
        calib = [x for x, _ in calibration_batches(dm, 8, 32)]
        rows += measure(meta["model_name"], model, evals[0][0], evals, calib, rounds=a.rounds, compile_static=a.compile_static)
    else:
        for name in a.models.split(","):
            model = zoo.create(name).eval()
            evals = [(torch.randn(a.batch, 3, a.size, a.size), None) for _ in range(a.eval_batches)]
            calib = [torch.randn(a.batch, 3, a.size, a.size) for _ in range(2)]
            rows += measure(name, model, evals[0][0], evals, calib, rounds=a.rounds, compile_static=a.compile_static)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(table(rows))


if __name__ == "__main__":
    main()
