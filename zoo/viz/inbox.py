"""Does the attention look at the object? In-box mass and the pointing game on cluttered digits.

Pointing game: Zhang et al., Top-down Neural Attention by Excitation Backprop, 2016
(arXiv:1608.00507): a map "hits" when its maximum lies inside the object's box. The in-box share
is the fraction of the map's mass inside the box; a uniform map scores the box's area fraction.

``python -m zoo.viz.inbox CKPT [CKPT ...] [--split val] [--limit 200] [--cam gradcam] [--layers all]``
prints a markdown table, one row per (checkpoint, map): the deepest captured attention map (ViT:
the rollout), every captured spatial map with ``--layers all``, and the CAM.
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from .capture import AttentionMaps, capture_attention

__all__ = ["box_mask", "score_maps", "summary_map", "score_checkpoint", "score_model", "markdown_table", "main"]

# Spatial kinds that summarise a layer as one [B, h, w] map (queries need a choice of query).
_SUMMARY_KINDS = ("spatial", "context", "received", "window", "rollout")


def box_mask(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[B, 4]`` boxes ``(x0, y0, x1, y1)`` in pixels (x1, y1 exclusive) -> ``[B, H, W]`` bool."""
    h, w = size
    ys = torch.arange(h, device=boxes.device)[None, :, None]
    xs = torch.arange(w, device=boxes.device)[None, None, :]
    b = boxes[:, :, None, None]
    return (xs >= b[:, 0]) & (xs < b[:, 2]) & (ys >= b[:, 1]) & (ys < b[:, 3])


def score_maps(maps: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """In-box share and pointing-game hit of each map.

    Args:
        maps: ``[B, h, w]`` non-negative maps at any resolution (bilinearly resized to ``size``).
        boxes: ``[B, 4]`` ``(x0, y0, x1, y1)`` pixels of the ``size`` image.
        size: ``(H, W)`` of the image.

    Returns:
        ``share`` ``[B]`` in [0, 1] and ``hit`` ``[B]`` bool.
    """
    m = F.interpolate(maps.float()[:, None], size=size, mode="bilinear", align_corners=False)[:, 0].clamp_min(0)
    inside = box_mask(boxes.to(m.device), size)
    share = (m * inside).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1e-12)
    hit = inside.flatten(1).gather(1, m.flatten(1).argmax(1, keepdim=True))[:, 0]
    return share, hit


def summary_map(maps: AttentionMaps) -> tuple[str, torch.Tensor] | None:
    """The map that stands for a model's attention: ViT's rollout, else the deepest spatial map
    (head mean), as ``(key, [B, h, w])``; None for a model without spatial attention."""
    roll = maps.of_kind("rollout")
    if roll:
        key = next(iter(roll))
        return key, roll[key]
    keys = list(maps.of_kind(*_SUMMARY_KINDS))
    if not keys:
        return None
    return keys[-1], _head_mean(maps[keys[-1]])


def _head_mean(m: torch.Tensor) -> torch.Tensor:
    """``[B, heads, h, w]`` -> ``[B, h, w]``; a ``[B, h, w]`` map unchanged."""
    return m.mean(1) if m.ndim == 4 else m


def _cluttered_root(root: str | os.PathLike | None) -> Path:
    if root:
        return Path(root)
    from ..data.embedded import ensure_embedded

    return ensure_embedded("cluttered_digits")


def score_checkpoint(
    ckpt_path: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    split: str = "val",
    limit: int | None = 200,
    cam: str | None = "gradcam",
    batch_size: int = 50,
    layers: str = "deepest",
) -> list[dict]:
    """Score one train.py checkpoint on ``cluttered_digits``; see :func:`score_model`."""
    from .load import load_model

    model, info = load_model(ckpt_path=ckpt_path)
    return score_model(model, info["data_config"], name=info["name"], root=root, split=split, limit=limit,
                       cam=cam, batch_size=batch_size, layers=layers)


def score_model(
    model: torch.nn.Module,
    data_config: dict,
    *,
    name: str = "model",
    root: str | os.PathLike | None = None,
    split: str = "val",
    limit: int | None = 200,
    cam: str | None = "gradcam",
    batch_size: int = 50,
    layers: str = "deepest",
) -> list[dict]:
    """Score a model's maps on ``cluttered_digits``: a row per scored map.

    Args:
        model: a classifier trained on cluttered_digits (put in eval mode).
        data_config: its preprocessing (``img_size``, ``mean``, ``std``, ...); the crop is dropped.
        name: model name for the rows.
        root: the dataset root (default: the embedded cache, written on first use).
        split: ``"val"`` or ``"train"``.
        limit: images scored (the first ``limit`` paths in sorted order); None for all.
        cam: a CAM method scored too, or None.
        batch_size: images per forward.
        layers: ``"deepest"`` scores :func:`summary_map` (ViT: the rollout); ``"all"`` adds a row
            for every captured spatial map (head mean), to see where in depth the attention finds
            the object.

    Returns:
        Rows ``{model, map, kind, share, baseline, hit, top1, n}``: map kind (a
        :data:`zoo.viz.KINDS` key or ``"gradcam"``...), mean in-box share, mean box area fraction
        (the uniform map's share, also a random point's hit rate), pointing hit rate, and the
        model's top-1 on the same ``n`` images.
    """
    from ..data.embedded import read_boxes
    from .load import load_images

    if layers not in ("deepest", "all"):
        raise ValueError(f"layers must be 'deepest' or 'all', got {layers!r}")
    model.eval()
    root = _cluttered_root(root)
    boxes = read_boxes(root, split)
    items = sorted(boxes.items())[:limit] if limit else sorted(boxes.items())
    # No crop, so the box only scales with the resize (the canvas is square).
    data = {**dict(data_config), "crop_pct": 1.0}
    acc: dict[str, dict] = {}
    correct = 0
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        x = load_images([root / split / p for p, _ in chunk], data, in_chans=getattr(model, "in_chans", 3))
        canvas = _image_size(root / split / chunk[0][0])
        size = tuple(x.shape[-2:])
        b = torch.tensor([bx for _, bx in chunk], dtype=torch.float32)
        b = (b * torch.tensor([size[1] / canvas[1], size[0] / canvas[0]] * 2)).round().long()
        with torch.no_grad(), capture_attention(model) as maps:
            logits = model(x)
        labels = torch.tensor([int(Path(p).parts[0]) for p, _ in chunk])  # class folders 0-9, sorted
        correct += int((logits.argmax(-1).cpu() == labels).sum())
        scored = []
        summ = summary_map(maps)
        if summ is not None:
            scored.append((f"attn {summ[0]}", maps.kinds[summ[0]], summ[1]))
        if layers == "all":
            scored += [(f"attn {k}", maps.kinds[k], _head_mean(maps[k])) for k in maps.of_kind(*_SUMMARY_KINDS)
                       if summ is None or k != summ[0]]
        if cam:
            from .cam import compute_cam

            cams = compute_cam(model, x, cam, targets=logits.argmax(-1).tolist())
            scored.append((f"cam {cam}", cam, torch.from_numpy(cams)))
        area = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).float() / (size[0] * size[1])
        for key, kind, m in scored:
            share, hit = score_maps(m.cpu(), b, size)
            a = acc.setdefault(key, {"kind": kind, "share": 0.0, "hit": 0.0, "baseline": 0.0, "n": 0})
            a["share"] += float(share.sum())
            a["hit"] += float(hit.float().sum())
            a["baseline"] += float(area.sum())
            a["n"] += len(chunk)
    n = len(items)
    return [{"model": name, "map": k, "kind": v["kind"], **{s: v[s] / v["n"] for s in ("share", "hit", "baseline")},
             "top1": correct / max(n, 1), "n": v["n"]} for k, v in acc.items()]


def _image_size(path: Path) -> tuple[int, int]:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return img.shape[:2]


def markdown_table(rows: Sequence[dict]) -> str:
    """Rows of :func:`score_checkpoint` as a markdown table."""
    lines = ["| model | map | type | in-box share | uniform share | pointing hit | top-1 | n |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['map']} | {r['kind']} | {r['share']:.3f} | {r['baseline']:.3f} "
                     f"| {r['hit']:.3f} | {r['top1']:.3f} | {r['n']} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> str:
    p = argparse.ArgumentParser(prog="python -m zoo.viz.inbox", description=__doc__.splitlines()[0])
    p.add_argument("ckpts", nargs="+", help="train.py checkpoints of models trained on cluttered_digits")
    p.add_argument("--root", default=None, help="cluttered_digits root (default: the embedded cache)")
    p.add_argument("--split", default="val")
    p.add_argument("--limit", type=int, default=200, help="images scored per model (0: all)")
    p.add_argument("--cam", default="gradcam", help="CAM method, or 'none'")
    p.add_argument("--layers", choices=["deepest", "all"], default="deepest",
                   help="score the deepest attention map only, or every captured spatial map")
    args = p.parse_args(argv)
    rows = []
    for c in args.ckpts:
        rows += score_checkpoint(c, root=args.root, split=args.split, limit=args.limit or None,
                                 cam=None if args.cam == "none" else args.cam, layers=args.layers)
    table = markdown_table(rows)
    print(table)
    return table


if __name__ == "__main__":
    main()
