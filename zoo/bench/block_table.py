"""The README block table: parameters and MACs of registered attention blocks on one feature map.

``python -m zoo.bench.block_table [NAME ...] [--channels 256] [--size 56]`` prints a markdown table:
each block built with its defaults for a ``[1, channels, size, size]`` map, parameters counted from
the module, MACs by :func:`zoo.flops.count_macs` (convolutions and matmuls; elementwise work such as
pooling, the gate multiply or SimAM's energy is not a MAC and counts zero there), and *element ops*:
every other aten op of the forward, each counted by the elements of its largest tensor, a rough
measure of the memory-bound work (a gate that pools once and multiplies once: 2 per map element).
"""
from __future__ import annotations

import argparse
import inspect

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..flops import count_macs
from ..registry import create_block, list_blocks

__all__ = ["block_stats", "block_paper", "main"]


def block_paper(name: str) -> str:
    """The paper a block's file opens with: the first paragraph of its module docstring, one line."""
    from ..registry import get_block

    doc = inspect.getmodule(get_block(name)).__doc__ or ""
    return " ".join(doc.strip().split("\n\n")[0].split())


_aten = torch.ops.aten
_COUNTED_AS_MACS = {_aten.mm, _aten.addmm, _aten.bmm, _aten.baddbmm, _aten.convolution, _aten._convolution}


class _ElementOps(TorchDispatchMode):
    """Sums, over the aten ops that are neither matmuls/convs nor views, the largest tensor's numel."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket not in _COUNTED_AS_MACS and not func.is_view:
            self.total += max((t.numel() for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)),
                              default=0)
        return out


def block_stats(name: str, channels: int = 256, size: int = 56, **kw) -> dict:
    """``{"params", "macs", "element_ops"}`` of block ``name`` (eval) on a ``[1, channels, size, size]`` map."""
    block = create_block(name, channels, **kw).eval()
    params = sum(p.numel() for p in block.parameters())
    x = torch.randn(1, channels, size, size)
    with torch.no_grad():
        macs = count_macs(block, x)
        with _ElementOps() as ops:
            block(x)
    return {"params": params, "macs": macs, "element_ops": ops.total}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="block names (default: all registered)")
    ap.add_argument("--channels", type=int, default=256)
    ap.add_argument("--size", type=int, default=56)
    args = ap.parse_args(argv)
    print(f"| block | paper | params (C={args.channels}) | MACs ({args.size}x{args.size}) | element ops |")
    print("|---|---|---:|---:|---:|")
    for name in args.names or list_blocks():
        s = block_stats(name, args.channels, args.size)
        print(f"| `{name}` | {block_paper(name)} | {s['params']:,} | {s['macs']:,} | {s['element_ops']:,} |")


if __name__ == "__main__":
    main()
