"""Benchmark harness: zoo models against their torchvision / timm twins, in one process.

``python -m zoo.bench resnet50,swin_t --precision fp32,bf16 --mode infer,train`` writes
``bench_results/bench.{csv,md,png}``; ``python -m zoo.bench.table`` builds the README model table.
"""
from .harness import COLUMNS, NO_TWIN, BenchCase, cases_from_registry, run_bench
from .measure import machine_info, matmul_ceiling_gflops
from .report import read_csv, write_outputs
from .twins import Impl, native_img_size, twins_for, zoo_impl

__all__ = [
    "COLUMNS",
    "NO_TWIN",
    "BenchCase",
    "Impl",
    "cases_from_registry",
    "machine_info",
    "matmul_ceiling_gflops",
    "native_img_size",
    "read_csv",
    "run_bench",
    "twins_for",
    "write_outputs",
    "zoo_impl",
]
