"""Head pruning of a trained ViT / DeiT / Swin: top-1, parameters, MACs and speed per ratio.

``python -m zoo.bench.prune <run>/checkpoints/last.ckpt --ratios 0.25,0.5`` rebuilds the model of a
train.py checkpoint, measures its top-1 on the run's validation split, then for every ratio prunes
a copy by data-driven importance (:func:`zoo.compress.head_importance` on ``--batches`` training
batches) and by random scores (``--random-seeds`` draws, mean top-1), without fine-tuning. Speed
is the inference throughput of each pruned model over the full one at batch ``--batch``, timed
interleaved in one process (median of per-round ratios, :mod:`zoo.bench.measure`).
"""
from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path

import torch

from ..checkpoint import load_checkpoint
from ..compress.prune import head_importance, head_modules, prune_heads
from ..flops import count_macs
from .measure import make_step, paired_ratio, time_interleaved


def _datamodule(meta: dict, embedded: str, batch: int):
    from ..data import ImageFolderDataModule

    # The run's own preprocessing (saved in the checkpoint); the training split without augmentation
    # would be nicer for the importance, but the run's training transform is what the model saw.
    dm = ImageFolderDataModule(embedded=embedded, batch_size=batch, eval_batch_size=256,
                               data_config=meta.get("data_config") or None)
    dm.prepare_data()
    dm.setup("fit")
    return dm


@torch.inference_mode()
def top1(model, loader) -> float:
    model.eval()
    hit = n = 0
    for b in loader:
        hit += int((model(b["image"]).argmax(-1) == b["target"]).sum())
        n += len(b["target"])
    return hit / n


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt")
    ap.add_argument("--data", default="digits", help="embedded dataset of the run (zoo.data.ensure_embedded)")
    ap.add_argument("--ratios", default="0.25,0.5")
    ap.add_argument("--batches", type=int, default=8, help="training batches for the importance")
    ap.add_argument("--random-seeds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64, help="batch size of importance data and timing")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--save", default=None, help="folder for the pruned state dicts (p25_data.pth, p25_random.pth ...), "
                    "to fine-tune with train.py pretrained=<file>")
    args = ap.parse_args(argv)
    if args.save:
        Path(args.save).mkdir(parents=True, exist_ok=True)

    model, meta = load_checkpoint(args.ckpt)
    dm = _datamodule(meta, args.data, args.batch)
    val = dm.val_dataloader()
    it = iter(dm.train_dataloader())
    data = [(b["image"], b["target"]) for b, _ in zip(it, range(args.batches))]
    size = tuple(data[0][0].shape[1:])
    scores = head_importance(model, data)
    total = sum(m.num_heads for m in head_modules(model).values())

    def row(name, m, acc):
        return dict(model=name, heads=sum(h.num_heads for h in head_modules(m).values()), top1=acc,
                    params=sum(p.numel() for p in m.parameters()), macs=count_macs(m, (1, *size)))

    rows, models = [row("full", model, top1(model, val))], [model]
    for r in (float(v) for v in args.ratios.split(",")):
        pruned = prune_heads(copy.deepcopy(model), ratio=r, importance=scores)
        rows.append(row(f"{r:.0%} data", pruned, top1(pruned, val)))
        models.append(pruned)
        accs = []
        for s in range(args.random_seeds):
            g = torch.Generator().manual_seed(s)
            rand = {n: torch.rand(m.num_heads, generator=g) for n, m in head_modules(model).items()}
            rm = prune_heads(copy.deepcopy(model), ratio=r, importance=rand)
            accs.append(top1(rm, val))
            if args.save and s == 0:
                torch.save(rm.state_dict(), Path(args.save) / f"p{round(r * 100)}_random.pth")
        if args.save:
            torch.save(pruned.state_dict(), Path(args.save) / f"p{round(r * 100)}_data.pth")
        rows.append({**row(f"{r:.0%} random", rm, statistics.mean(accs)), "top1_min": min(accs), "top1_max": max(accs)})

    x = torch.randn(args.batch, *size)
    steps = [make_step(m, "infer", "fp32", x) for m in models]
    for s in steps:
        s()  # warm-up
    times = time_interleaved(steps, device="cpu", repeats=args.repeats)
    speed = [paired_ratio(times[i], times[0]) for i in range(len(models))]
    k = 0
    print(f"total heads {total}; importance on {args.batches} x {args.batch} training images")
    print("| model | heads | val top-1 | params | MACs | speed |")
    print("|---|---|---|---|---|---|")
    for rw in rows:
        if "random" not in rw["model"]:
            rw["speed"] = speed[k]
            k += 1
        extra = f" ({rw['top1_min']:.3f}-{rw['top1_max']:.3f})" if "top1_min" in rw else ""
        sp = f"{rw['speed']:.2f}x" if "speed" in rw else "as data"
        print(f"| {rw['model']} | {rw['heads']} | {rw['top1']:.3f}{extra} | {rw['params'] / 1e6:.3f}M | "
              f"{rw['macs'] / 1e6:.1f}M | {sp} |")
    return rows


if __name__ == "__main__":
    main()
