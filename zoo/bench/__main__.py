"""``python -m zoo.bench MODELS [options]``: benchmark zoo models next to their twins.

MODELS is comma-separated registry names with fnmatch wildcards (``"resnet50,se_*,swin_t"``).
"""
from __future__ import annotations

import argparse
import sys

import torch

from .harness import cases_from_registry, run_bench
from .onnxrt import ort_impl
from .measure import machine_info, matmul_ceiling_gflops
from .report import markdown_report, write_outputs


def _csv(choices: set[str]):
    def parse(s: str) -> list[str]:
        items = [x.strip() for x in s.split(",") if x.strip()]
        bad = [x for x in items if x not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {sorted(choices)}, comma-separated; got {s!r}")
        return items

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m zoo.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", help="comma-separated model names / fnmatch patterns from zoo.list_models()")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--img-size", type=int, default=None, help="default: each model's native size")
    p.add_argument("--precision", type=_csv({"fp32", "bf16"}), default=["fp32"])
    p.add_argument("--mode", type=_csv({"infer", "train"}), default=["infer"])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--backend", choices=["eager", "onnxruntime"], default="eager",
                   help="onnxruntime: also run each zoo model's exported ONNX graph (zoo.export.onnx) in "
                        "onnxruntime's CPU provider, threads as torch's; inference only, float32")
    p.add_argument("--compile", action="store_true", help="torch.compile every model (inductor)")
    p.add_argument("--freeze", action="store_true",
                   help="--compile with inductor freezing for inference (weights as constants; CPU inference advice)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--no-fast", action="store_true",
                   help="build the zoo models plain (zoo.create(..., fast=False)): no zoo.accel speedups")
    p.add_argument("--compare-plain", action="store_true",
                   help="also time each zoo model plain; its row's ratio is accelerated / plain (what zoo.accel buys)")
    p.add_argument("--repeats", type=int, default=5, help="timed interleaved rounds (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    p.add_argument("--iters", type=int, default=1, help="steps per model per round")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="glibc keeps freed blocks for reuse, as train.py and eval.py do (zoo/accel/allocator.py); "
                        "process-wide, so every model and twin in the run gets it")
    p.add_argument("--out", default="bench_results", help="output folder for bench.csv/.md/.png")
    p.add_argument("--list", action="store_true", help="print each model's twins and exit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cases = cases_from_registry(args.models, fast=not args.no_fast, compare_plain=args.compare_plain)
    if args.backend == "onnxruntime":
        if "train" in args.mode or args.device != "cpu":
            raise SystemExit("--backend onnxruntime times CPU inference only: use --mode infer --device cpu.")
        for c in cases:
            c.twins.append(ort_impl(c.name))
    if args.list:
        for c in cases:
            print(f"{c.name} ({c.img_size}px): {', '.join(t.name for t in c.twins) or 'no twin'}")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = machine_info(args.device)
    if args.keep_freed_memory:
        from ..accel.allocator import keep_freed_memory

        machine["keep_freed_memory"] = str(keep_freed_memory())
    ceilings = {p: matmul_ceiling_gflops(p, args.device) for p in args.precision}
    rows = run_bench(
        cases, batch=args.batch, img_size=args.img_size, precisions=args.precision, modes=args.mode,
        device=args.device, compile=args.compile, freeze=args.freeze, channels_last=args.channels_last,
        repeats=args.repeats, warmup=args.warmup, iters=args.iters, ceilings=ceilings,
    )
    paths = write_outputs(rows, machine, ceilings, args.out)
    print(markdown_report(rows, machine, ceilings))
    print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
