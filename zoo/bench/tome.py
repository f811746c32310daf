"""Token merging (``zoo.accel.token_merge``, ToMe arXiv:2210.09461) measured: throughput against the
unmerged model, and the top-1 change on a train.py checkpoint.

``python -m zoo.bench.tome vit_s_16 --r 0,8,13,16 --precision fp32 --batch 16``: one model at each
``r`` (0 is the unmerged model), all in one process, timed in interleaved rounds (median; ratios
are the median over rounds of the per-round ratio).

``python -m zoo.bench.tome --ckpt <run>/checkpoints/last.ckpt --r 0,2,4,8``: top-1 of the
checkpoint's model on its data's validation split at each ``r`` (no timing).
"""
from __future__ import annotations

import argparse
import copy
import statistics

import torch

from .. import accel, create
from ..accel.token_merge import merged_token_counts
from .measure import make_step, paired_ratio, time_interleaved
from .onnxrt import held_lock

__all__ = ["throughput", "top1"]


def _merged(model, r: int):
    return copy.deepcopy(model) if r == 0 else accel.token_merge(copy.deepcopy(model), r)


def throughput(name: str, rs=(0, 8, 13, 16), *, precision: str = "fp32", batch: int = 16, repeats: int = 5,
               warmup: int = 1, lock: str | None = None) -> list[dict]:
    """Rows ``{model, precision, batch, r, tokens, ms, vs_r0}`` (tokens: after the last block); the
    models are built before ``lock`` (a file to ``flock``) is taken for the warm-up and timing."""
    from .twins import native_img_size

    size = native_img_size(name)
    base = create(name).eval()
    models = [_merged(base, r) for r in rs]
    x = torch.randn(batch, 3, size, size)
    steps = [make_step(m, "infer", precision, x) for m in models]
    with held_lock(lock):
        for step in steps:
            for _ in range(warmup):
                step()
        times = time_interleaved(steps, device="cpu", repeats=repeats)
    n0 = base.num_prefix_tokens + base.grid_size[0] * base.grid_size[1]
    rows = []
    for r, t in zip(rs, times):
        tokens = merged_token_counts(n0, [r] * len(base.blocks), base.num_prefix_tokens)[-1]
        rows.append(dict(model=name, precision=precision, batch=batch, r=r, tokens=tokens,
                         ms=1e3 * statistics.median(t), vs_r0=paired_ratio(t, times[0])))
    return rows


def top1(ckpt: str, rs=(0, 2, 4, 8), *, use_ema: bool = False, embedded: str = "digits") -> list[dict]:
    """Validation top-1 of a train.py checkpoint's ViT at each ``r`` on an embedded data set's
    validation split, preprocessed as in training: rows ``{r, top1, n}``."""
    from ..checkpoint import load_checkpoint
    from ..data import ImageFolderDataModule

    model, meta = load_checkpoint(ckpt, use_ema=use_ema)
    dm = ImageFolderDataModule(embedded=embedded, data_config=meta["data_config"])
    dm.prepare_data()
    dm.setup("validate")
    rows = []
    for r in rs:
        m = _merged(model, r)
        correct = total = 0
        with torch.inference_mode():
            for batch in dm.val_dataloader():
                pred = m(batch["image"]).argmax(-1)
                correct += int((pred == batch["target"]).sum())
                total += len(pred)
        rows.append(dict(r=r, top1=correct / total, n=total))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m zoo.bench.tome", description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="?", default="vit_s_16", help="comma-separated ViT / DeiT names")
    p.add_argument("--r", default="0,8,13,16", help="comma-separated r (0: unmerged)")
    p.add_argument("--precision", default="fp32", help="fp32, bf16 or both, comma-separated")
    p.add_argument("--batch", default="16", help="comma-separated batch sizes")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--lock", default=None, help="flock this file while timing (after building the models)")
    p.add_argument("--ckpt", default=None, help="a train.py checkpoint: report top-1 per r instead of timing")
    p.add_argument("--ema", action="store_true", help="with --ckpt: the EMA weights")
    args = p.parse_args(argv)
    rs = [int(v) for v in args.r.split(",")]
    if args.ckpt:
        print("| r | top-1 | images |\n|---|---|---|")
        for row in top1(args.ckpt, rs, use_ema=args.ema):
            print(f"| {row['r']} | {row['top1']:.4f} | {row['n']} |")
        return 0
    print("| model | precision | batch | r | tokens out | ms / batch | throughput vs r=0 |\n|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        for precision in args.precision.split(","):
            for batch in (int(b) for b in args.batch.split(",")):
                for row in throughput(name, rs, precision=precision, batch=batch, repeats=args.repeats,
                                      lock=args.lock):
                    print(f"| {row['model']} | {row['precision']} | {row['batch']} | {row['r']} | {row['tokens']} | "
                          f"{row['ms']:.1f} | {row['vs_r0']:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
