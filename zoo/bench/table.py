"""The README model table: every registered model with params, MACs, and bench numbers if given.

``python -m zoo.bench.table [--pattern P] [--exclude P] [--bench-csv bench_results/bench.csv ...] [--readme README.md]``
prints the table, or rewrites the README region between the two marker comments.

Models are built on the ``meta`` device (no memory, no init), so counting all of them is quick;
a model that cannot be built there falls back to the CPU.
"""
from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from ..builder import create
from ..flops import count_macs
from ..registry import list_models
from .harness import NO_TWIN
from .report import read_csv
from .twins import native_img_size

__all__ = ["START", "END", "catalog_top1", "model_stats", "bench_lookup", "build_table", "rewrite_readme", "main"]

START = "<!-- models-table:start -->"
END = "<!-- models-table:end -->"


def model_stats(name: str) -> dict:
    """``{"params": int, "macs": int, "img_size": int}`` of registered model ``name`` at native size."""
    try:
        with torch.device("meta"):
            model = create(name)
    except Exception:  # a constructor that needs real values (e.g. .item()) builds on CPU
        model = create(name)
    size = native_img_size(name, model)
    try:
        macs = count_macs(model, (1, 3, size, size))
    except Exception:  # a forward that needs real values
        if next(model.parameters()).device.type != "meta":
            raise
        model = create(name)
        macs = count_macs(model, (1, 3, size, size))
    return {"params": sum(p.numel() for p in model.parameters()), "macs": macs, "img_size": size}


def bench_lookup(csv_paths: Iterable[str | Path], precision: str = "fp32", mode: str = "infer") -> dict:
    """Zoo rows of bench CSVs on CPU for one precision and mode, by model name (last file wins)."""
    found = {}
    for path in csv_paths:
        for r in read_csv(path):
            if (r["library"], r["device"], r["precision"], r["mode"]) == ("zoo", "cpu", precision, mode):
                found[r["model"]] = r
    return found


def _ratio_cell(row: dict | None) -> str:
    if row is None:
        return "-"
    if row["vs"] == NO_TWIN or row["ratio"] is None:
        return NO_TWIN
    return f"{row['ratio']:.2f}x {row['vs']}"


def build_table(
    names: list[str] | None = None,
    *,
    bench: dict | None = None,
    stats_fn: Callable[[str], dict] = model_stats,
    top1: Callable[[str], tuple[float, str] | None] | None = None,
) -> str:
    """Markdown table, one line per model.

    Args:
        names: models to list; default every registered model.
        bench: ``{model: zoo row}`` from :func:`bench_lookup`; its img/s and ratio fill the last columns.
        stats_fn: ``name -> {"params", "macs", "img_size"}`` (tests pass a cheap one).
        top1: ``name -> (ImageNet top-1 %, weight tag)`` or None (default: :func:`catalog_top1`).
    """
    names = list_models() if names is None else names
    bench = bench or {}
    top1 = catalog_top1 if top1 is None else top1
    lines = [
        "| Model | Params (M) | GMACs | Input | ImageNet top-1 (weights) | CPU img/s | vs twin |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name in names:
        s = stats_fn(name)
        acc = top1(name)
        row = bench.get(name)
        acc_cell = "-" if acc is None else f"{acc[0]:.1f} ({acc[1]})"
        speed_cell = "-" if row is None else f"{row['img_s']:.1f}"
        lines.append(
            f"| `{name}` | {s['params'] / 1e6:.1f} | {s['macs'] / 1e9:.2f} | {s['img_size']} | "
            f"{acc_cell} | {speed_cell} | {_ratio_cell(row)} |"
        )
    return "\n".join(lines) + "\n"


def catalog_top1(name: str) -> tuple[float, str] | None:
    """ImageNet top-1 reported for ``name``'s default catalogued weights, with their tag; None if none."""
    from ..weights.catalog import find_entry

    entry = find_entry(name)
    return None if entry is None or entry.top1 is None else (entry.top1, entry.tag)


def rewrite_readme(path: str | Path, table: str) -> None:
    """Replace what lies between :data:`START` and :data:`END` in ``path`` with ``table``."""
    path = Path(path)
    text = path.read_text()
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise ValueError(f"{path} has no '{START}' ... '{END}' region to rewrite.")
    path.write_text(pattern.sub(lambda _: f"{START}\n{table}{END}", text, count=1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m zoo.bench.table", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pattern", default="*", help="fnmatch pattern(s) of models to list")
    p.add_argument("--exclude", default="", help="fnmatch pattern(s) of models to leave out (comma-separated)")
    p.add_argument("--bench-csv", nargs="*", default=[], help="bench CSVs for the img/s and ratio columns")
    p.add_argument("--readme", default=None, help="rewrite this file's models-table region")
    args = p.parse_args(argv)
    left_out = set(list_models(args.exclude)) if args.exclude.strip() else set()
    names = [n for n in list_models(args.pattern) if n not in left_out]
    table = build_table(names, bench=bench_lookup(args.bench_csv))
    if args.readme:
        rewrite_readme(args.readme, table)
        print(f"rewrote the models table in {args.readme}", file=sys.stderr)
    else:
        print(table, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
