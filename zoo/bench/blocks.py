"""The attention-block table: ``python -m zoo.bench.blocks`` prints one markdown row per registered block.

Columns: name | paper (year) | taxonomy group | parameters and multiply-adds on one ``[1, 256, 56, 56]``
map | the reference implementation the zoo block is checked against.

* Paper and year are read from the first paragraph of the block's module docstring (the citation every
  block file opens with: ``Title. Authors, Venue Year. arXiv:ID.``); the year falls back to the arXiv id's.
* Group and reference come from :data:`BLOCK_INFO`, one entry per block. Groups are those of Guo et al.,
  "Attention Mechanisms in Computer Vision: A Survey" (arXiv:2111.07624): channel, spatial, branch and
  channel & spatial; blocks the survey does not list are placed by the same criterion and starred. A
  registered block missing from :data:`BLOCK_INFO` gets ``?`` (and ``tests/test_bench_blocks.py`` fails).
* Parameters and MACs are the block built with its defaults for 256 channels; MACs by
  :func:`zoo.flops.count_macs` on a 56 x 56 map: convolutions, matmuls / einsums and
  ``scaled_dot_product_attention`` (every CPU kernel included). Elementwise work (pooling, gating,
  softmax, an ``(x * w).sum()``) is not a MAC there and counts zero. Blocks that replace a 3x3
  convolution (sk, splat, sa, lambda, halo, aa, psa) include the work of that convolution; the table's
  last line gives a plain 3x3 convolution on the same map for scale.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..flops import count_macs
from ..registry import create_block, get_block, list_blocks

__all__ = ["BlockInfo", "BLOCK_INFO", "GROUPS", "paper_of", "block_stats", "block_rows", "markdown_table", "main"]

GROUPS = ("channel", "spatial", "branch", "channel & spatial")


@dataclass(frozen=True)
class BlockInfo:
    """What the table says about one block that the code cannot tell.

    Attributes:
        group: one of :data:`GROUPS`.
        reference: what the zoo block is checked against: ``"timm X"`` (``timm.layers.X``) where timm has
            it, else the authors' repository (``owner/name``) or what exists.
        title_word: a word of the paper's title; a test checks the block's docstring cites that paper.
        in_survey: the survey lists the paper (else the group is by the survey's criterion, starred).
    """

    group: str
    reference: str
    title_word: str
    in_survey: bool = True


BLOCK_INFO: dict[str, BlockInfo] = {
    # channel: a gate per channel from pooled statistics
    "se": BlockInfo("channel", "timm SEModule", "Squeeze-and-Excitation"),
    "ese": BlockInfo("channel", "timm EffectiveSEModule", "CenterMask", False),
    "eca": BlockInfo("channel", "timm EcaModule", "ECA-Net"),
    "ceca": BlockInfo("channel", "timm CecaModule", "ECA-Net", False),
    "fca": BlockInfo("channel", "cfzd/FcaNet", "FcaNet"),
    "gct": BlockInfo("channel", "z-x-yang/GCT", "Gated Channel Transformation"),
    "srm": BlockInfo("channel", "hyunjaelee410/style-based-recalibration-module", "SRM"),
    # spatial: where to look (non-local / self-attention and context pooling over positions)
    "nl": BlockInfo("spatial", "timm NonLocalAttn", "Non-local"),
    "gc": BlockInfo("spatial", "timm GlobalContext", "GCNet"),
    "a2": BlockInfo("spatial", "paper (no authors' code)", "Double Attention"),
    "aa": BlockInfo("spatial", "paper (its appendix code)", "Attention Augmented"),
    "ea": BlockInfo("spatial", "MenghaoGuo/EANet", "External Attention"),
    "cc": BlockInfo("spatial", "speedinghzl/CCNet", "Criss-Cross", False),
    "ge": BlockInfo("spatial", "timm GatherExcite", "Gather-Excite", False),
    "sa": BlockInfo("spatial", "timm BottleneckAttn", "Bottleneck Transformers", False),
    "lambda": BlockInfo("spatial", "timm LambdaLayer", "LambdaNetworks", False),
    "halo": BlockInfo("spatial", "timm HaloAttn", "Scaling Local Self-Attention", False),
    "bat": BlockInfo("spatial", "timm BatNonLocalAttn", "Bilinear Attentional Transforms", False),
    "sge": BlockInfo("spatial", "implus/PytorchInsight", "Spatial Group-wise Enhance", False),
    # branch: a soft choice among parallel branches (kernel sizes, splits)
    "sk": BlockInfo("branch", "timm SelectiveKernel", "Selective Kernel"),
    "splat": BlockInfo("branch", "timm SplitAttn", "ResNeSt"),
    "psa": BlockInfo("branch", "murufeng/EPSANet", "Pyramid", False),  # softmax across scales, as SK
    # channel & spatial
    "cbam": BlockInfo("channel & spatial", "timm CbamModule", "CBAM"),
    "bam": BlockInfo("channel & spatial", "Jongchan/attention-module", "BAM"),
    "scse": BlockInfo("channel & spatial", "ai-med/squeeze_and_excitation", "Squeeze & Excitation"),
    "danet": BlockInfo("channel & spatial", "junfu1115/DANet", "Dual Attention"),
    "triplet": BlockInfo("channel & spatial", "landskape-ai/triplet-attention", "Triplet Attention"),
    "coord": BlockInfo("channel & spatial", "timm CoordAttn", "Coordinate Attention"),
    "simam": BlockInfo("channel & spatial", "ZjjConan/SimAM", "SimAM"),
    "shuffle": BlockInfo("channel & spatial", "wofmanaf/SA-Net", "Shuffle Attention", False),
    "lka": BlockInfo("channel & spatial", "Visual-Attention-Network/VAN-Classification", "Visual Attention Network", False),
}

_ARXIV = re.compile(r"arXiv:\s*(\d{4})\.(\d{4,5})(?:v\d+)?", re.I)
_YEAR = re.compile(r"\b(19[5-9]\d|20\d\d)\b")


def paper_of(name: str) -> dict | None:
    """``{"title", "year", "arxiv"}`` cited in the first paragraph of block ``name``'s module docstring,
    or None when it names no title or no year (and no arXiv id to take the year from)."""
    module = sys.modules.get(get_block(name).__module__)
    doc = (getattr(module, "__doc__", None) or "").strip()
    para = " ".join(doc.split("\n\n", 1)[0].split())
    m = _ARXIV.search(para)
    arxiv = f"{m.group(1)}.{m.group(2)}" if m else None
    title = re.split(r"\.\s|\s\(arXiv|\.$", para, maxsplit=1)[0].strip()
    years = _YEAR.findall(_ARXIV.sub("", para))
    year = int(years[0]) if years else (2000 + int(arxiv[:2]) if arxiv else None)
    if not title or year is None:
        return None
    return {"title": title, "year": year, "arxiv": arxiv}


def block_stats(name: str, channels: int = 256, size: int = 56) -> dict:
    """``{"params": int, "macs": int}`` of block ``name`` (defaults) on a ``[1, channels, size, size]`` map.

    Counted on the ``meta`` device (no memory, no compute); a block whose code needs real tensors is
    built and run on the CPU instead.
    """
    try:
        with torch.device("meta"):
            block = create_block(name, channels)
            macs = count_macs(block, (1, channels, size, size))
    except (NotImplementedError, RuntimeError):
        block = create_block(name, channels)
        with torch.no_grad():
            macs = count_macs(block, (1, channels, size, size))
    return {"params": sum(p.numel() for p in block.parameters()), "macs": macs}


def _si(n: float) -> str:
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.0f}"


def block_rows(names=None, channels: int = 256, size: int = 56) -> list[dict]:
    """One dict per block (registered ones by default): name, paper, year, arxiv, group, reference, params,
    macs; ``"?"`` where :data:`BLOCK_INFO` or the docstring has nothing."""
    rows = []
    for name in names if names is not None else list_blocks():
        info, paper = BLOCK_INFO.get(name), paper_of(name)
        group = "?" if info is None else info.group + ("" if info.in_survey else "*")
        rows.append({"name": name, **(paper or {"title": "?", "year": "?", "arxiv": None}),
                     "group": group, "reference": "?" if info is None else info.reference,
                     **block_stats(name, channels, size)})
    return rows


def markdown_table(names=None, channels: int = 256, size: int = 56) -> str:
    """The table as markdown (header, a row per block, footnotes)."""
    lines = [f"| block | paper (year) | group | params ({channels} ch) | MACs ({size}x{size}) | reference |",
             "|---|---|---|---:|---:|---|"]
    for r in block_rows(names, channels, size):
        title = f"[{r['title']}](https://arxiv.org/abs/{r['arxiv']})" if r["arxiv"] else r["title"]
        lines.append(f"| `{r['name']}` | {title} ({r['year']}) | {r['group']} | {_si(r['params'])} | "
                     f"{_si(r['macs'])} | {r['reference']} |")
    with torch.device("meta"):
        conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        conv_macs = count_macs(conv, (1, channels, size, size))
    lines += ["", f"\\* not in the survey's lists; grouped by its criterion. For scale: a 3x3 convolution "
                  f"{channels} -> {channels} has {_si(conv.weight.numel())} parameters and {_si(conv_macs)} MACs "
                  f"on this map."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import zoo  # noqa: F401  (registers every block)

    ap = argparse.ArgumentParser(prog="python -m zoo.bench.blocks", description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="block names (default: every registered block)")
    ap.add_argument("--channels", type=int, default=256)
    ap.add_argument("--size", type=int, default=56)
    args = ap.parse_args(argv)
    unknown = [n for n in args.names if n not in list_blocks()]
    if unknown:
        ap.error(f"unknown blocks {unknown}; choices: {list_blocks()}")
    print(markdown_table(args.names or None, args.channels, args.size))


if __name__ == "__main__":
    main()
