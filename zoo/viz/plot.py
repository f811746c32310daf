"""Pictures of captured attention and CAMs (Grad-CAM, arXiv:1610.02391): overlays, bar plots, index.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend change), so
it works headless and inside notebooks alike. ``visualize`` is the one-call API that
``python -m zoo.viz`` uses.
"""
from __future__ import annotations

import html
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .capture import AttentionMaps, capture_attention

__all__ = ["to_image", "map_scale", "plot_map", "plot_channel_weights", "plot_cams", "plot_overview", "write_index", "visualize"]

_SPATIAL = ("spatial", "context", "query", "received", "cls", "rollout", "window", "modulation")
_CHANNEL = ("channel", "channel_add")
_GATES = ("spatial",)  # sigmoid gates: their scale is their range, [0, 1]


def to_image(x: torch.Tensor, mean: Sequence[float] = (0.5,) * 3, std: Sequence[float] = (0.5,) * 3) -> np.ndarray:
    """Undo normalisation: ``[C, H, W]`` tensor -> ``[H, W, 3]`` float array in [0, 1]."""
    c = x.shape[0]
    m = torch.as_tensor(mean, dtype=torch.float32)[:c, None, None]
    s = torch.as_tensor(std, dtype=torch.float32)[:c, None, None]
    img = (x.detach().float().cpu() * s + m).clamp(0, 1)
    if c == 1:
        img = img.expand(3, -1, -1)
    return img[:3].permute(1, 2, 0).numpy()


def map_scale(kind: str, values) -> tuple[float, float]:
    """The colour scale ``(vmin, vmax)`` a map of ``kind`` is drawn on.

    A gate is drawn on its range [0, 1]; the other maps are attention weights (>= 0), drawn from 0
    to their largest value. Never min-max: a map that hardly varies (a CBAM gate at 0.5 everywhere)
    would be stretched into speckle noise, so it is drawn flat, as it is. Signed values get a
    scale symmetric around 0.
    """
    if kind in _GATES:
        return 0.0, 1.0
    v = np.asarray(values, dtype=np.float64)
    lo, hi = float(v.min()), float(v.max())
    if lo < 0:
        a = max(-lo, hi)
        return -a, a
    return 0.0, hi if hi > 0 else 1.0


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def _upsample(heat: torch.Tensor | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``[h, w]`` map -> ``[H, W]`` (bilinear), values kept (the colour scale is chosen by the caller)."""
    t = torch.as_tensor(np.asarray(heat, dtype=np.float32))[None, None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def _overlay(ax, img: np.ndarray, heat, title: str = "", alpha: float = 0.5,
             scale: tuple[float, float] = (0.0, 1.0), colorbar: bool = False) -> None:
    """The map over the image on the colour scale ``scale``; with ``colorbar`` its scale and the
    map's own range (marked flat when it spans under 1% of the scale) are shown."""
    ax.imshow(img)
    im = ax.imshow(_upsample(heat, img.shape[:2]), cmap="jet", alpha=alpha, vmin=scale[0], vmax=scale[1])
    if colorbar:
        cb = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.02, ticks=list(scale))
        cb.ax.set_yticklabels([_fmt(scale[0]), _fmt(scale[1])])
        cb.ax.tick_params(labelsize=5, length=2)
        h = np.asarray(heat, dtype=np.float64)
        lo, hi = float(h.min()), float(h.max())
        flat = hi - lo <= 0.01 * (scale[1] - scale[0])
        title = f"{title}\n{'flat ' + _fmt((lo + hi) / 2) if flat else _fmt(lo) + ' to ' + _fmt(hi)}"
    ax.set_title(title, fontsize=6 if colorbar else 7)
    ax.axis("off")


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def _grid(rows: int, cols: int, cell: float = 1.6) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(cell * cols, cell * rows + 0.3))
    axes = np.array(fig.subplots(rows, cols, squeeze=False))
    return fig, axes


def plot_map(img: np.ndarray, maps: AttentionMaps, key: str, path: Path, sample: int = 0) -> Path:
    """Overlay one captured spatial map on the image: one panel per head (and query).

    Args:
        img: ``[H, W, 3]`` in [0, 1] (:func:`to_image`).
        maps: the capture.
        key: a key of ``maps`` with a spatial kind.
        path: PNG to write.
        sample: which batch element.
    """
    kind, m = maps.kinds[key], maps[key][sample].float().cpu()
    scale = map_scale(kind, m)  # one scale for all heads and queries, so they can be compared
    if kind == "query":  # heads, Q, h, w: rows heads, columns queries, query marked
        heads, nq = m.shape[:2]
        fig, axes = _grid(heads, nq)
        q = maps.meta[key]["queries"][sample].cpu()
        h, w = m.shape[-2:]
        for i in range(heads):
            for j in range(nq):
                ax = axes[i, j]
                _overlay(ax, img, m[i, j], f"head {i} query ({int(q[j, 0])},{int(q[j, 1])})", scale=scale,
                         colorbar=True)
                ax.plot((q[j, 1] + 0.5) * img.shape[1] / w - 0.5, (q[j, 0] + 0.5) * img.shape[0] / h - 0.5,
                        "w*", markersize=8, markeredgecolor="k")
    elif m.ndim == 3:  # heads, h, w
        heads = m.shape[0]
        fig, axes = _grid(1, heads + 1)
        _overlay(axes[0, 0], img, m.mean(0), "head mean", scale=scale, colorbar=True)
        for i in range(heads):
            _overlay(axes[0, i + 1], img, m[i], f"head {i}", scale=scale, colorbar=True)
    else:  # h, w
        fig, axes = _grid(1, 1, cell=3.0)
        _overlay(axes[0, 0], img, m, kind, scale=scale, colorbar=True)
    fig.suptitle(f"{key} ({kind})", fontsize=8)
    return _save(fig, path)


def plot_channel_weights(maps: AttentionMaps, path: Path, sample: int = 0) -> Path | None:
    """Bar plot of every channel-attention vector (one row per module); None if there are none."""
    keys = list(maps.of_kind(*_CHANNEL))
    if not keys:
        return None
    fig = Figure(figsize=(8, 1.3 * len(keys) + 0.3))
    axes = fig.subplots(len(keys), 1, squeeze=False)[:, 0]
    for ax, key in zip(axes, keys):
        v = maps[key][sample].float().cpu().numpy()
        ax.bar(np.arange(len(v)), v, width=1.0, color="tab:blue" if maps.kinds[key] == "channel" else "tab:orange")
        if maps.kinds[key] == "channel":
            ax.set_ylim(0, max(1.0, float(v.max())))
        ax.set_xlim(-0.5, len(v) - 0.5)
        ax.set_title(f"{key} ({maps.kinds[key]}, C={len(v)})", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.tight_layout()
    return _save(fig, path)


def plot_cams(img: np.ndarray, cams: dict[str, np.ndarray], path: Path, title: str = "") -> Path:
    """The input next to each CAM overlay. ``cams``: method -> ``[H, W]`` in [0, 1]."""
    fig, axes = _grid(1, len(cams) + 1, cell=2.4)
    axes[0, 0].imshow(img)
    axes[0, 0].set_title("input", fontsize=7)
    axes[0, 0].axis("off")
    for ax, (name, cam) in zip(axes[0, 1:], cams.items()):
        _overlay(ax, img, cam, name)
    if title:
        fig.suptitle(title, fontsize=8)
    return _save(fig, path)


def plot_overview(img: np.ndarray, maps: AttentionMaps, path: Path, sample: int = 0, max_panels: int = 24,
                  label: str | None = None) -> Path | None:
    """One PNG grid: the input (titled with ``label``, the predicted class), then the head-mean of
    every spatial map (capture order), each on its colour scale (:func:`map_scale`) with a colour
    bar and the map's range; None if there are no spatial maps."""
    keys = list(maps.of_kind(*_SPATIAL))
    if not keys:
        return None
    if len(keys) > max_panels:  # keep the first and last ones: stem and head of the network
        keys = keys[: max_panels // 2] + keys[-(max_panels - max_panels // 2):]
    n = len(keys) + 1
    cols = min(6, n)
    rows = -(-n // cols)
    fig, axes = _grid(rows, cols, cell=1.9)
    for ax in axes.flat[n:]:
        ax.axis("off")
    first = axes.flat[0]
    first.imshow(img)
    first.set_title("input" + (f"\npredicted {label}" if label else ""), fontsize=7)
    first.axis("off")
    for ax, key in zip(axes.flat[1:], keys):
        kind, m = maps.kinds[key], maps[key][sample].float().cpu()
        if kind == "query":
            m = m[:, 0]  # first query
        m = m.mean(0) if m.ndim == 3 else m
        _overlay(ax, img, m, key, scale=map_scale(kind, m), colorbar=True)
    return _save(fig, path)


def write_index(out_dir: Path, sections: dict[str, list[Path]], title: str = "zoo.viz") -> Path:
    """An HTML page showing every PNG, grouped by section (one per input image)."""
    out_dir = Path(out_dir)
    parts = [f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    for name, paths in sections.items():
        parts.append(f"<h2>{html.escape(name)}</h2>")
        for p in paths:
            rel = Path(p).relative_to(out_dir).as_posix()
            parts.append(f"<figure style='display:inline-block'><img src='{html.escape(rel)}' style='max-width:900px'>"
                         f"<figcaption>{html.escape(Path(p).stem)}</figcaption></figure>")
    parts.append("</body></html>")
    path = out_dir / "index.html"
    path.write_text("\n".join(parts))
    return path


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "model"


def visualize(
    model: nn.Module,
    x: torch.Tensor,
    out_dir: str | Path,
    *,
    names: Sequence[str] | None = None,
    mean: Sequence[float] = (0.5,) * 3,
    std: Sequence[float] = (0.5,) * 3,
    cam_methods: Sequence[str] = ("gradcam", "eigencam"),
    queries: Sequence = ("centre", "argmax"),
    class_names: Sequence[str] | None = None,
    per_layer: bool = True,
) -> dict[str, list[Path]]:
    """Capture attention and CAMs for a batch and write PNGs plus ``index.html`` to ``out_dir``.

    Per input image (a sub-folder named after it): ``overview.png`` (every spatial map),
    ``cam.png`` (input and CAM overlays), ``channels.png`` (channel-attention bars, when the
    model has any), and with ``per_layer`` one PNG per attention module with all heads.

    Args:
        model: a zoo classifier (set to eval mode here).
        x: ``[B, C, H, W]`` normalised input.
        out_dir: output folder (created).
        names: one name per image (default ``img0, img1, ...``).
        mean, std: the normalisation of ``x``, to show the image.
        cam_methods: keys of :data:`zoo.viz.cam.CAM_METHODS`; empty for none.
        queries: query positions for non-local / self-attention maps.
        class_names: label names for the predicted class in titles.
        per_layer: write one PNG per captured module too.

    Returns:
        ``{image name: [written PNG paths]}``; the index is ``out_dir / "index.html"``.
    """
    out_dir = Path(out_dir)
    model.eval()
    names = list(names) if names is not None else [f"img{i}" for i in range(x.shape[0])]
    with torch.no_grad(), capture_attention(model, queries=queries) as maps:
        logits = model(x)
    prob, pred = logits.float().softmax(-1).max(-1)
    prob, pred = prob.tolist(), pred.tolist()
    cams = {}
    if cam_methods:
        from .cam import compute_cam

        cams = {m: compute_cam(model, x, m, targets=pred) for m in cam_methods}
    sections: dict[str, list[Path]] = {}
    for i, name in enumerate(names):
        d = out_dir / _safe(Path(name).stem)
        img = to_image(x[i], mean, std)
        label = class_names[pred[i]] if class_names and pred[i] < len(class_names) else str(pred[i])
        written = []
        if cams:
            written.append(plot_cams(img, {m: c[i] for m, c in cams.items()}, d / "cam.png", f"{name}: predicted {label}"))
        overview = plot_overview(img, maps, d / "overview.png", i, label=f"{label} (p={prob[i]:.2f})")
        for p in (overview, plot_channel_weights(maps, d / "channels.png", i)):
            if p is not None:
                written.append(p)
        if per_layer:
            for key in maps.of_kind(*_SPATIAL):
                written.append(plot_map(img, maps, key, d / "layers" / f"{_safe(key)}.png", i))
        sections[f"{name} (predicted {label})"] = written
    write_index(out_dir, sections, title=f"zoo.viz: {type(model).__name__}")
    return sections
